"""Gram matrices, style losses and style distances (StEP's Gatys style distance).

Public API (all registered with ``torch.library`` so that ``torch.compile`` traces them, with
autograd).  Backends (chosen by :mod:`fastep._ext` from the routes registered below; ``fastep
info`` prints them): on CUDA, ``gram`` and ``pairwise_style_distance`` run one cuBLAS GEMM plus an
epilogue, ``style_loss``/``style_distance`` the fused Triton kernels of :mod:`fastep.kernels.gram`
for fp16/bf16 and cuBLAS for float32; CPU tensors run the plain-PyTorch definitions of
:mod:`fastep.ops.reference`.

* :func:`gram`                     G = F F^T / (C H W) of (N, C, H, W) features.
* :func:`style_loss`               sum_l w_l mean((G_l(x) - G_l(y))^2), or against fixed target Grams.
* :func:`style_distance`           the same per image pair: a (N,) tensor.
* :func:`gram_vectors`             packed, scaled upper triangles: |v_x - v_y|^2 = style distance.
* :func:`gram_vector_dim`          length of those vectors for given channel counts.
* :func:`pairwise_style_distance`  N x M distance matrix from Gram vectors (GEMM identity).

What the Triton kernels fuse:

* ``gram`` computes only the upper-triangle tiles of G (mirror-written), split over H*W when
  there are too few tiles to fill the GPU; float32 accumulation for fp16/bf16 features.
* ``style_loss``/``style_distance`` compute the tiles of G(x) - G(y) in one kernel (both Grams
  accumulate into the same registers; neither is written), so the forward reads every feature
  map exactly once.  The backward is one GEMM per input, dF = (4 w / (N C^2 CHW)) (G_x - G_y) F,
  written straight in F's memory layout (channels_last stays channels_last); the eager
  ``bmm + mse`` version runs three GEMMs per layer (forward, and two for the backward of bmm)
  plus an addition of two full-size gradients.
* ``pairwise_style_distance`` is a GEMM whose epilogue adds the squared norms (accumulated from
  the tiles the GEMM loads anyway), clamps at 0 and, for the self-distance, computes only the
  upper-triangle tiles and writes an exactly-zero diagonal.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .. import _ext
from . import reference as _ref
from ._checks import _check_features, _check_layers, _check_targets, _check_weights, _pair_layers
from .gram_cublas import _gram_cublas, _pairwise_cublas

__all__ = ["gram", "style_loss", "style_distance", "gram_vectors", "gram_vector_dim",
           "pairwise_style_distance"]

DEFAULT_BLOCK = 8192
_HALF = _ext.HALF_TYPES


def _kernels():
    from ..kernels import gram as kg  # imported lazily: triton is optional

    return kg


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------
# backward helper: coef * S @ F for a symmetric (N, C, C) S, in F's memory layout
# ----------------------------------------------------------------------------------------------

def _sym_times_features(S: Tensor, F: Tensor, coef: float) -> Tensor:
    """coef * S @ F.reshape(N, C, HW) for symmetric S (float32/64), shaped and laid out like F."""
    n, c, h, w = F.shape
    hw = h * w
    cdt = F.dtype
    if cdt == torch.float16:  # fp16 could underflow S; compute in fp32, round once at the end
        cdt = torch.float32
    S = S.to(cdt)
    if F.dim() == 4 and F.stride(1) == 1 and F.is_contiguous(memory_format=torch.channels_last) and c > 1:
        ft = F.permute(0, 2, 3, 1).reshape(n, hw, c).to(cdt)       # a view for bf16/fp32
        zero = ft.new_zeros(()).expand(n, hw, c)
        out = torch.baddbmm(zero, ft, S, beta=0, alpha=coef)        # (F^T S) = (S F)^T, S symmetric
        return out.to(F.dtype).view(n, h, w, c).permute(0, 3, 1, 2)
    fv = F.reshape(n, c, hw).to(cdt)
    zero = fv.new_zeros(()).expand(n, c, hw)
    out = torch.baddbmm(zero, S, fv, beta=0, alpha=coef)
    return out.to(F.dtype).view(n, c, h, w)


# ----------------------------------------------------------------------------------------------
# fastep::gram
# ----------------------------------------------------------------------------------------------

def _gram_triton(features: Tensor, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    return _kernels().gram_launch(features, out_dtype=out_dtype)


GRAM = _ext.register_op(
    "gram", cuda=[("triton", (torch.float32,)), "cublas"],  # why, in fastep/ops/gram_cublas.py
    impls={"cublas": _gram_cublas, "triton": _gram_triton, "reference": _ref.gram_reference},
    doc="F F^T / (C H W): one cuBLAS bmm with fp32 accumulation (Triton: upper-triangle tiles, "
        "split-K)")


@torch.library.custom_op("fastep::gram", mutates_args=())
def _gram_op(features: Tensor, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    return GRAM.dispatch(features)(features, out_dtype)


@_gram_op.register_fake
def _(features, out_dtype=None):
    n, c = features.shape[:2]
    return features.new_empty((n, c, c), dtype=out_dtype or features.dtype)


def _gram_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _gram_backward(ctx, grad):
    (features,) = ctx.saved_tensors
    n, c, h, w = features.shape
    g = grad.to(_acc_dtype(features.dtype))
    return _sym_times_features(g + g.transpose(1, 2), features, 1.0 / (c * h * w)), None


_gram_op.register_autograd(_gram_backward, setup_context=_gram_setup)


def gram(features: Tensor) -> Tensor:
    """Batched Gram matrix ``G = F F^T / (C H W)`` of (N, C, H, W) features -> (N, C, C).

    Accumulates in float32 (float64 for float64 input); the result has the input's dtype.
    Any memory layout (contiguous, channels_last, strided views).  Differentiable.

    >>> g = gram(torch.randn(2, 64, 32, 32))   # (2, 64, 64)
    """
    _check_features(features, "features")
    return _gram_op(features, None)


def _gram_f32(features: Tensor) -> Tensor:
    """Gram in float32 (float64 for float64) whatever the feature dtype."""
    return _gram_op(features, _acc_dtype(features.dtype))


# ----------------------------------------------------------------------------------------------
# fastep::gram_diff  (G(x) - G(y), or G(x) - target, float32): behind style_loss / style_distance
# ----------------------------------------------------------------------------------------------

def _gram_diff_triton(x: Tensor, y: Optional[Tensor] = None, target: Optional[Tensor] = None) -> Tensor:
    acc = _acc_dtype(x.dtype)
    kg = _kernels()
    if y is not None and y.shape == x.shape and y.dtype == x.dtype:
        return kg.gram_launch(x, y, out_dtype=acc)
    gx = kg.gram_launch(x, out_dtype=acc)
    if y is not None:
        return gx.sub_(kg.gram_launch(y, out_dtype=acc))
    return gx.sub_(target.to(acc))


def _gram_diff_with(gram_fn):
    def gram_diff(x: Tensor, y: Optional[Tensor] = None, target: Optional[Tensor] = None) -> Tensor:
        acc = _acc_dtype(x.dtype)
        gx = gram_fn(x, acc)
        return gx - (gram_fn(y, acc) if y is not None else target.to(acc))
    return gram_diff


_STYLE_ROUTES = ["triton", "cublas"]  # every float dtype: why, in fastep/ops/gram_cublas.py
GRAM_DIFF = _ext.register_op(
    "gram_diff", cuda=_STYLE_ROUTES,
    impls={"triton": _gram_diff_triton, "cublas": _gram_diff_with(_gram_cublas),
           "reference": _gram_diff_with(_ref.gram_reference)},
    doc="G(x) - G(y) (or - target) in one kernel; behind style_distance")


@torch.library.custom_op("fastep::gram_diff", mutates_args=())
def _gram_diff_op(x: Tensor, y: Optional[Tensor] = None, target: Optional[Tensor] = None) -> Tensor:
    tensors = [t for t in (x, y) if t is not None]
    return GRAM_DIFF.dispatch(*tensors)(x, y, target)


@_gram_diff_op.register_fake
def _(x, y=None, target=None):
    n, c = x.shape[:2]
    return x.new_empty((n, c, c), dtype=_acc_dtype(x.dtype))


def _gram_diff_setup(ctx, inputs, output):
    x, y, target = inputs
    ctx.has_y = y is not None
    ctx.target_shape = None if target is None else target.shape
    ctx.target_dtype = None if target is None else target.dtype
    ctx.save_for_backward(x, y if y is not None else None)


def _gram_diff_backward(ctx, grad):
    x, y = ctx.saved_tensors
    g = grad.to(_acc_dtype(x.dtype))
    s = g + g.transpose(1, 2)
    dx = dy = dt = None
    if ctx.needs_input_grad[0]:
        n, c, h, w = x.shape
        dx = _sym_times_features(s, x, 1.0 / (c * h * w))
    if ctx.has_y and ctx.needs_input_grad[1]:
        n, c, h, w = y.shape
        dy = _sym_times_features(s, y, -1.0 / (c * h * w))
    if ctx.target_shape is not None and ctx.needs_input_grad[2]:
        dt = -grad
        while dt.dim() > len(ctx.target_shape):
            dt = dt.sum(0)
        if dt.dim() == 3 and ctx.target_shape[0] == 1 and grad.shape[0] != 1:
            dt = dt.sum(0, keepdim=True)
        dt = dt.to(ctx.target_dtype)
    return dx, dy, dt


_gram_diff_op.register_autograd(_gram_diff_backward, setup_context=_gram_diff_setup)


def _layer_diffs(feats_x, feats_y, target_grams) -> List[Tensor]:
    fx = _check_layers(feats_x, "feats_x")
    if (feats_y is None) == (target_grams is None):
        raise ValueError("feats_y / target_grams: give exactly one of them (the features of the "
                         "other images, or their precomputed Gram matrices)")
    if target_grams is None:
        fy = _pair_layers(fx, feats_y)
        return [_gram_diff_op(a, b, None) for a, b in zip(fx, fy)]
    tg = _check_targets(target_grams, fx)
    return [_gram_diff_op(a, None, t) for a, t in zip(fx, tg)]


# ----------------------------------------------------------------------------------------------
# fastep::style_loss  (all layers in one op: one fused Gram-difference kernel per layer, the
# differences kept in one flat float32 buffer for the backward, one GEMM per input in backward)
# ----------------------------------------------------------------------------------------------

def _gram_diff_into_triton(out: Tensor, x: Tensor, y: Optional[Tensor], target: Optional[Tensor]) -> None:
    kg = _kernels()
    if y is not None and y.shape == x.shape and y.dtype == x.dtype:
        kg.gram_launch(x, y, out=out)
        return
    kg.gram_launch(x, out=out)
    out.sub_(kg.gram_launch(y, out_dtype=out.dtype) if y is not None else target.to(out.dtype))


def _gram_diff_into_with(gram_fn):
    def gram_diff_into(out: Tensor, x: Tensor, y: Optional[Tensor], target: Optional[Tensor]) -> None:
        acc = out.dtype
        torch.sub(gram_fn(x, acc), gram_fn(y, acc) if y is not None else target.to(acc), out=out)
    return gram_diff_into


STYLE_LOSS = _ext.register_op(
    "style_loss", cuda=_STYLE_ROUTES,
    impls={"triton": _gram_diff_into_triton, "cublas": _gram_diff_into_with(_gram_cublas),
           "reference": _gram_diff_into_with(_ref.gram_reference)},
    doc="all layers in one op: fused G(x) - G(y) per layer, one GEMM per input in backward")


def _gram_diff_into(out: Tensor, x: Tensor, y: Optional[Tensor], target: Optional[Tensor]) -> None:
    """out[:] = G(x) - G(y)  (or G(x) - target), accumulated in out's dtype (float32/64)."""
    tensors = [t for t in (x, y) if t is not None]
    STYLE_LOSS.dispatch(*tensors)(out, x, y, target)


def _layer_numel(x: Tensor) -> int:
    return x.shape[0] * x.shape[1] * x.shape[1]


def _layer_views(flat: Tensor, xs: Sequence[Tensor]) -> List[Tensor]:
    views, off = [], 0
    for x in xs:
        n, c = x.shape[:2]
        views.append(flat[off:off + n * c * c].view(n, c, c))
        off += n * c * c
    return views


@torch.library.custom_op("fastep::style_loss", mutates_args=())
def _style_loss_op(xs: List[Tensor], ys: List[Optional[Tensor]], targets: List[Optional[Tensor]],
                   weights: List[float]) -> tuple[Tensor, Tensor]:
    """-> (loss, flat buffer of the per-layer G(x) - G(y), kept for the backward)."""
    acc = _acc_dtype(xs[0].dtype)
    flat = torch.empty(sum(_layer_numel(x) for x in xs), dtype=acc, device=xs[0].device)
    views = _layer_views(flat, xs)
    for l, (x, view) in enumerate(zip(xs, views)):
        _gram_diff_into(view, x, ys[l] if ys else None, targets[l] if targets else None)
    coefs = [w / _layer_numel(x) for w, x in zip(weights, xs)]
    if flat.is_cuda and hasattr(torch, "_foreach_norm"):
        norms = torch._foreach_norm(views)                       # one launch for all layers
        terms = torch._foreach_mul(torch._foreach_mul(norms, norms), coefs)
        loss = torch.stack(terms).sum()
    else:
        loss = sum(c * torch.dot(v.reshape(-1), v.reshape(-1)) for c, v in zip(coefs, views))
    return loss, flat


@_style_loss_op.register_fake
def _(xs, ys, targets, weights):
    acc = _acc_dtype(xs[0].dtype)
    total = sum(_layer_numel(x) for x in xs)
    return xs[0].new_empty((), dtype=acc), xs[0].new_empty((total,), dtype=acc)


def _style_loss_setup(ctx, inputs, output):
    xs, ys, targets, weights = inputs
    ctx.set_materialize_grads(False)
    ctx.n_layers = len(xs)
    ctx.n_ys, ctx.n_ts = len(ys), len(targets)
    ctx.weights = list(weights)
    ctx.y_mask = [y is not None for y in (ys or [None] * len(xs))]
    ctx.t_info = [None if t is None else (t.shape, t.dtype) for t in (targets or [None] * len(xs))]
    ys_saved = [y for y in (ys or []) if y is not None]
    ctx.save_for_backward(*xs, *ys_saved, output[1])


def _style_loss_backward(ctx, dloss, dflat):
    saved = ctx.saved_tensors
    nl = ctx.n_layers
    xs = saved[:nl]
    ys_saved = list(saved[nl:-1])
    flat = saved[-1]
    views = _layer_views(flat, xs)
    dviews = _layer_views(dflat, xs) if dflat is not None else [None] * nl
    need = ctx.needs_input_grad
    need_x = need[0] if isinstance(need[0], (list, tuple)) else [need[0]] * nl
    need_y = list(need[1]) + [False] * nl if isinstance(need[1], (list, tuple)) else [need[1]] * nl
    need_t = list(need[2]) + [False] * nl if isinstance(need[2], (list, tuple)) else [need[2]] * nl
    dxs, dys, dts = [], [], []
    yi = 0
    for l in range(nl):
        x, d, w = xs[l], views[l], ctx.weights[l]
        n, c = x.shape[:2]
        y = None
        if ctx.y_mask[l]:
            y = ys_saved[yi]
            yi += 1
        # dL/dD = 2 w / (N C^2) * dloss * D (+ the gradient of the returned buffer, if any)
        g = None
        gscale = 2.0 * w / (n * c * c)
        if dloss is not None:
            g = d * dloss.to(d.dtype)          # symmetric; dL/dD = gscale * g
        if dviews[l] is not None:
            g = dviews[l] if g is None else g * gscale + dviews[l]
            gscale = 1.0                       # now dL/dD = g, not necessarily symmetric
            sym, sscale = g + g.transpose(1, 2), 1.0
        elif g is not None and ctx.t_info[l] is not None:
            sym, sscale = g + g.transpose(1, 2), gscale   # a target need not be symmetric
        elif g is not None:
            sym, sscale = g, 2.0 * gscale      # G(x) - G(y) is symmetric: g + g^T = 2 g
        if g is None:
            dxs.append(None)
            dys.append(None)
            dts.append(None)
            continue
        dx = dy = dt = None
        if need_x[l]:
            dx = _sym_times_features(sym, x, sscale / (c * x.shape[2] * x.shape[3]))
        if y is not None and need_y[l]:
            dy = _sym_times_features(sym, y, -sscale / (c * y.shape[2] * y.shape[3]))
        if ctx.t_info[l] is not None and need_t[l]:
            tshape, tdtype = ctx.t_info[l]
            dt = g * (-gscale)                 # dL/dT = -dL/dD
            if len(tshape) == 2:
                dt = dt.sum(0)
            elif tshape[0] == 1 and n != 1:
                dt = dt.sum(0, keepdim=True)
            dt = dt.to(tdtype)
        dxs.append(dx)
        dys.append(dy)
        dts.append(dt)
    return dxs, dys[:ctx.n_ys], dts[:ctx.n_ts], None


_style_loss_op.register_autograd(_style_loss_backward, setup_context=_style_loss_setup)


def style_loss(feats_x: Sequence[Tensor], feats_y: Optional[Sequence[Tensor]] = None,
               weights: Optional[Sequence[float]] = None, *,
               target_grams: Optional[Sequence[Tensor]] = None) -> Tensor:
    """Gatys style loss ``sum_l w_l * mean((G_l(x) - G_l(y))^2)`` -> scalar (float32).

    The mean runs over the batch and the C_l x C_l entries (``mse_loss`` of the Grams), so the
    loss is the batch mean of :func:`style_distance`.  ``feats_y`` may have batch 1 (broadcast);
    its spatial size may differ from ``feats_x``'s.  Instead of ``feats_y``, pass
    ``target_grams`` (per layer (C, C), broadcast over the batch, or (N, C, C)), e.g. from
    ``gram(style_feats)`` of a fixed style image computed once.  Gradients flow to ``feats_x``,
    to ``feats_y`` if it requires grad, and to ``target_grams`` if they do.

    >>> loss = style_loss(vgg(x), vgg(y), weights=[1, 1, 1, 1, 1])
    >>> loss = style_loss(vgg(x), target_grams=[gram(f)[0] for f in vgg(style_image)])
    """
    fx = _check_layers(feats_x, "feats_x")
    if (feats_y is None) == (target_grams is None):
        raise ValueError("feats_y / target_grams: give exactly one of them (the features of the "
                         "other images, or their precomputed Gram matrices)")
    w = _check_weights(weights, len(fx))
    if target_grams is None:
        ys: List[Optional[Tensor]] = list(_pair_layers(fx, feats_y))
        ts: List[Optional[Tensor]] = []
    else:
        ys, ts = [], list(_check_targets(target_grams, fx))
    loss, _ = _style_loss_op(fx, ys, ts, w)
    return loss


def style_distance(feats_x: Sequence[Tensor], feats_y: Sequence[Tensor],
                   weights: Optional[Sequence[float]] = None) -> Tensor:
    """Style distance per image pair: ``d_n = sum_l w_l * mean_{C x C}((G_l(x_n) - G_l(y_n))^2)``.

    The direct definition (two Grams per layer, in one fused kernel on CUDA) -> (N,) float32.
    ``feats_y`` may have batch 1 (one reference image).  Differentiable.
    """
    if feats_y is None:
        raise ValueError("feats_y: required (the features of the images to compare with)")
    diffs = _layer_diffs(feats_x, feats_y, None)
    w = _check_weights(weights, len(diffs))
    total = None
    for wl, d in zip(w, diffs):
        term = d.square().mean(dim=(1, 2)) * wl
        total = term if total is None else total + term
    return total


# ----------------------------------------------------------------------------------------------
# Gram vectors
# ----------------------------------------------------------------------------------------------

def gram_vector_dim(channels: Sequence[int]) -> int:
    """Length of :func:`gram_vectors` for layers with these channel counts: sum C (C + 1) / 2.

    >>> gram_vector_dim([64, 128, 256, 512, 512])
    305888

    (VGG16: 2080 + 8256 + 32896 + 2 * 131328 = 305,888.)
    """
    if isinstance(channels, int):
        channels = [channels]
    try:
        chans = [int(c) for c in channels]
    except TypeError:
        raise TypeError(f"channels: expected a sequence of ints, got {type(channels).__name__}") from None
    for i, c in enumerate(chans):
        if c <= 0:
            raise ValueError(f"channels[{i}]: expected a positive channel count, got {c}")
    return _ref.gram_vector_dim_reference(chans)


def _triu_pack(c: int, device: torch.device, dtype: torch.dtype):
    if torch.compiler.is_compiling():
        return _triu_pack_uncached(c, device, dtype)
    return _triu_pack_cached(c, device, dtype)


def _triu_pack_uncached(c: int, device: torch.device, dtype: torch.dtype):
    iu = torch.triu_indices(c, c, device=device)
    flat = iu[0] * c + iu[1]
    scale = torch.where(iu[0] == iu[1], 1.0, math.sqrt(2.0)).to(dtype)
    return flat, scale


_triu_pack_cached = functools.lru_cache(maxsize=64)(_triu_pack_uncached)


def gram_vectors(features: Sequence[Tensor], weights: Optional[Sequence[float]] = None,
                 out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """Packed style vectors (N, D): per layer the upper triangle (row-major, i <= j) of the Gram,
    off-diagonals times sqrt(2), times sqrt(w_l) / C_l, layers concatenated, so that
    ``|v_x - v_y|^2 == style_distance(x, y, weights)`` and
    :func:`pairwise_style_distance` gives all pairs at once.  D = :func:`gram_vector_dim`
    (305,888 for VGG16's 64, 128, 256, 512, 512 channels).  Computed in float32 (float64 for
    float64 input); ``out_dtype`` (e.g. bfloat16) only sets the storage type.  Differentiable.
    """
    feats = _check_layers(features, "features")
    w = _check_weights(weights, len(feats))
    if out_dtype is not None and (not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point):
        raise TypeError(f"out_dtype: expected a floating-point torch.dtype or None, got {out_dtype!r}")
    for i, wl in enumerate(w):
        if wl < 0:
            raise ValueError(f"weights[{i}]: layer weights must be >= 0 for Gram vectors, got {wl}")
    parts = []
    for f, wl in zip(feats, w):
        c = f.shape[1]
        g = _gram_f32(f)
        flat, scale = _triu_pack(c, f.device, g.dtype)
        parts.append(g.flatten(1)[:, flat] * (scale * (math.sqrt(wl) / c)))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    if out_dtype is not None and out_dtype != out.dtype:
        out = out.to(out_dtype)
    return out


# ----------------------------------------------------------------------------------------------
# fastep::pairwise_style_distance
# ----------------------------------------------------------------------------------------------

def _pairwise_blocks(launch, x: Tensor, y: Optional[Tensor], block: int) -> Tensor:
    """``launch(x_rows, y)`` on ``block`` rows of x at a time; the self-distance runs the
    diagonal blocks as self-distances and mirrors the blocks above them."""
    m = x.shape[0]
    if y is not None:
        if m <= block:
            return launch(x, y)
        return torch.cat([launch(x[r:r + block], y) for r in range(0, m, block)])
    if m <= block:
        return launch(x, None)
    out = torch.empty((m, m), dtype=torch.float32, device=x.device)
    for r in range(0, m, block):
        out[r:r + block, r:r + block] = launch(x[r:r + block], None)
        if r + block < m:
            blk = launch(x[r:r + block], x[r + block:])
            out[r:r + block, r + block:] = blk
            out[r + block:, r:r + block] = blk.T
    return out


PAIRWISE = _ext.register_op(
    "pairwise_style_distance", cuda=["cublas"],
    impls={"cublas": lambda x, y, block: _pairwise_blocks(_pairwise_cublas, x, y, block),
           "triton": lambda x, y, block: _pairwise_blocks(_kernels().pairwise_launch, x, y, block),
           "reference": _ref.pairwise_style_distance_reference},
    doc="clamp(|x|^2 + |y|^2 - 2 x.y, 0): one cuBLAS mm + epilogue (Triton: GEMM with a "
        "norm/clamp epilogue, upper-triangle tiles for the self-distance)")


@torch.library.custom_op("fastep::pairwise_style_distance", mutates_args=())
def _pairwise_op(gx: Tensor, gy: Optional[Tensor] = None, block: int = DEFAULT_BLOCK) -> Tensor:
    return PAIRWISE.dispatch(gx)(gx, gy, block)


@_pairwise_op.register_fake
def _(gx, gy=None, block=DEFAULT_BLOCK):
    m = gx.shape[0]
    n = m if gy is None else gy.shape[0]
    return gx.new_empty((m, n), dtype=_acc_dtype(gx.dtype))


def _pairwise_setup(ctx, inputs, output):
    gx, gy, _ = inputs
    ctx.sym = gy is None
    ctx.save_for_backward(gx, gy, output)


def _pairwise_backward(ctx, grad):
    gx, gy, out = ctx.saved_tensors
    acc = _acc_dtype(gx.dtype)
    wgt = torch.where(out > 0, grad.to(acc), torch.zeros((), dtype=acc, device=grad.device))
    x = gx.to(acc)
    if ctx.sym:
        wgt = wgt + wgt.T
        dx = 2.0 * (wgt.sum(1)[:, None] * x - wgt @ x)
        return dx.to(gx.dtype), None, None
    y = gy.to(acc)
    dx = dy = None
    if ctx.needs_input_grad[0]:
        dx = (2.0 * (wgt.sum(1)[:, None] * x - wgt @ y)).to(gx.dtype)
    if ctx.needs_input_grad[1]:
        dy = (2.0 * (wgt.sum(0)[:, None] * y - wgt.T @ x)).to(gy.dtype)
    return dx, dy, None


_pairwise_op.register_autograd(_pairwise_backward, setup_context=_pairwise_setup)


def pairwise_style_distance(gx: Tensor, gy: Optional[Tensor] = None, *, block: int = DEFAULT_BLOCK) -> Tensor:
    """All-pairs style distances from Gram vectors: ``clamp(|x_i|^2 + |y_j|^2 - 2 x_i . y_j, 0)``.

    ``gx`` (N, D) and ``gy`` (M, D) from :func:`gram_vectors` -> (N, M) float32 (float64 for
    float64 input); ``gy=None`` compares ``gx`` with itself (diagonal exactly 0; on CUDA only the
    upper-triangle tiles are computed).  Rows of ``gx`` are processed ``block`` at a time.
    fp16/bf16 vectors are multiplied with float32 accumulation.

    Accuracy: equal to the direct definition ``sum_k (x_k - y_k)^2`` up to float32 rounding of
    the three terms, i.e. an absolute error of order ``eps32 * (|x|^2 + |y|^2)`` (cancellation:
    near-identical vectors get a relative error that grows as their distance shrinks).
    """
    if not isinstance(gx, Tensor):
        raise TypeError(f"gx: expected a (N, D) tensor, got {type(gx).__name__}")
    if gx.dim() != 2:
        raise ValueError(f"gx: expected a 2-D (N, D) tensor, got shape {tuple(gx.shape)}")
    if not gx.is_floating_point():
        raise TypeError(f"gx: expected a floating-point tensor, got {gx.dtype}")
    if gx.shape[0] == 0 or gx.shape[1] == 0:
        raise ValueError(f"gx: empty tensor of shape {tuple(gx.shape)}")
    if gy is not None:
        if not isinstance(gy, Tensor):
            raise TypeError(f"gy: expected a (M, D) tensor or None, got {type(gy).__name__}")
        if gy.dim() != 2 or gy.shape[1] != gx.shape[1]:
            raise ValueError(f"gy: expected a 2-D (M, {gx.shape[1]}) tensor like gx, got shape {tuple(gy.shape)}")
        if not gy.is_floating_point():
            raise TypeError(f"gy: expected a floating-point tensor, got {gy.dtype}")
        if gy.shape[0] == 0:
            raise ValueError("gy: empty (M = 0)")
        if gy.device != gx.device:
            raise ValueError(f"gy: on {gy.device}, but gx is on {gx.device}")
        if gy.dtype != gx.dtype:
            gy = gy.to(torch.promote_types(gx.dtype, gy.dtype))
            gx = gx.to(gy.dtype)
    if not isinstance(block, int) or isinstance(block, bool) or block <= 0:
        raise ValueError(f"block: expected a positive int, got {block!r}")
    return _pairwise_op(gx, gy, block)
