"""Fused weighted multi-layer reductions: the arithmetic tail of PerceptualLoss and LPIPS.

* :func:`weighted_feature_distance` (op ``fastep::weighted_feature_distance``):
  ``sum_l w_l * mean(|x_l - y_l|^p)`` over a list of feature-map pairs, p = 1 (L1, pix2pixHD's
  VGGLoss) or 2 (MSE, StEP).  On CUDA one Triton launch reduces every layer, and the backward
  launch writes the gradient of each x_l (and y_l, only if it requires grad) directly.
* :func:`lpips_distance` (op ``fastep::lpips_distance``): LPIPS's per-sample distance
  ``sum_l mean_hw sum_c w_lc (n(f0_l) - n(f1_l))_c^2`` with n the unit-normalisation over
  channels, fused per layer (normalise, difference, 1x1 channel weighting, spatial mean).

Both are ``torch.library.custom_op`` with fake (meta) kernels and autograd, so torch.compile
traces through them.  Backends: Triton on CUDA (and on CPU under ``TRITON_INTERPRET=1``), the
plain-PyTorch definitions of :mod:`fastep.ops.reference` elsewhere or when float64 is used.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

from .. import _ext
from . import reference as _ref

__all__ = ["weighted_feature_distance", "lpips_distance"]

def _kernels():
    from ..kernels import reductions as K  # imported lazily: Triton is optional

    return K


def _like(g: Tensor, x: Tensor) -> Tensor:
    """``g`` with exactly the layout ``torch.empty_like(x)`` has (what the fake kernels promise)."""
    out = torch.empty_like(x)
    if g.stride() == out.stride() and g.dtype == out.dtype:
        return g
    return out.copy_(g)


def _out_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


# ---------------------------------------------------------------------------------------------
# weighted_feature_distance
# ---------------------------------------------------------------------------------------------
WFD = _ext.register_op(
    "weighted_feature_distance", cuda=["triton"],
    impls={"triton": lambda *a: _kernels().weighted_feature_distance_fwd(*a),
           "reference": _ref.weighted_feature_distance_reference},
    doc="sum_l w_l mean|x_l - y_l|^p over layers in one launch (PerceptualLoss)")
WFD_BACKWARD = _ext.register_op(
    "weighted_feature_distance_backward", follows="weighted_feature_distance",
    impls={"triton": lambda *a: _kernels().weighted_feature_distance_bwd(*a),
           "reference": _ref.weighted_feature_distance_backward_reference})


@torch.library.custom_op("fastep::weighted_feature_distance", mutates_args=())
def _wfd(xs: List[Tensor], ys: List[Tensor], weights: List[float], p: int) -> Tensor:
    return WFD.dispatch(*xs, *ys)(xs, ys, weights, p).to(_out_dtype(xs[0]))


@_wfd.register_fake
def _wfd_fake(xs, ys, weights, p):
    return xs[0].new_empty((), dtype=_out_dtype(xs[0]))


@torch.library.custom_op("fastep::weighted_feature_distance_backward", mutates_args=())
def _wfd_bwd(grad: Tensor, xs: List[Tensor], ys: List[Tensor], weights: List[float], p: int,
             need_gx: bool, need_gy: bool) -> List[Tensor]:
    gxs, gys = WFD_BACKWARD.dispatch(*xs, *ys)(grad, xs, ys, weights, p, need_gx, need_gy)
    return [_like(g, x) for g, x in zip(gxs or [], xs)] + [_like(g, y) for g, y in zip(gys or [], ys)]


@_wfd_bwd.register_fake
def _wfd_bwd_fake(grad, xs, ys, weights, p, need_gx, need_gy):
    return ([torch.empty_like(x) for x in xs] if need_gx else []) + \
           ([torch.empty_like(y) for y in ys] if need_gy else [])


def _wfd_setup(ctx, inputs, output):
    xs, ys, weights, p = inputs
    ctx.save_for_backward(*xs, *ys)
    ctx.n = len(xs)
    ctx.weights, ctx.p = list(weights), int(p)
    ctx.need_gx = any(x.requires_grad for x in xs)
    ctx.need_gy = any(y.requires_grad for y in ys)


def _wfd_backward(ctx, grad):
    saved = ctx.saved_tensors
    xs, ys = list(saved[:ctx.n]), list(saved[ctx.n:])
    none = [None] * ctx.n
    if not (ctx.need_gx or ctx.need_gy):
        return none, none, None, None
    gs = _wfd_bwd(grad, xs, ys, ctx.weights, ctx.p, ctx.need_gx, ctx.need_gy)
    gxs = gs[:ctx.n] if ctx.need_gx else none
    gys = (gs[ctx.n:] if ctx.need_gx else gs[:ctx.n]) if ctx.need_gy else none
    return gxs, gys, None, None


_wfd.register_autograd(_wfd_backward, setup_context=_wfd_setup)


def _check_float_list(name: str, ts) -> List[Tensor]:
    if isinstance(ts, Tensor):
        ts = [ts]
    ts = list(ts)
    if not ts:
        raise ValueError(f"{name}: expected at least one feature map, got an empty list")
    for i, t in enumerate(ts):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{i}]: expected a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}[{i}]: expected a floating-point tensor, got {t.dtype}")
    return ts


def weighted_feature_distance(xs: Sequence[Tensor], ys: Sequence[Tensor],
                              weights: Sequence[float] | None = None, p: int = 1) -> Tensor:
    """``sum_l weights[l] * mean(|xs[l] - ys[l]|^p)`` as a 0-d tensor (fused, with autograd).

    Args:
        xs, ys: lists of feature maps (any shape per layer; x_l and y_l of equal shape).
        weights: one float per layer (default all 1).
        p: 1 for the L1 distance, 2 for the mean squared error.

    The result is float32 (float64 for float64 inputs) whatever the feature dtype, so bf16
    features from an autocast backbone are reduced in float32.  Gradients flow to every x_l and
    y_l that requires grad; nothing is computed for the others.
    """
    xs = _check_float_list("xs", xs)
    ys = _check_float_list("ys", ys)
    if len(xs) != len(ys):
        raise ValueError(f"ys: expected {len(xs)} feature maps (one per entry of xs), got {len(ys)}")
    weights = [1.0] * len(xs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(xs):
        raise ValueError(f"weights: expected {len(xs)} layer weights, got {len(weights)}")
    if p not in (1, 2):
        raise ValueError(f"p: expected 1 (L1) or 2 (MSE), got {p!r}")
    for i, (x, y) in enumerate(zip(xs, ys)):
        if x.shape != y.shape:
            raise ValueError(f"ys[{i}]: shape {tuple(y.shape)} does not match xs[{i}] {tuple(x.shape)}")
        if x.device != y.device or x.device != xs[0].device:
            raise ValueError(f"ys[{i}]: all feature maps must be on one device")
        if x.numel() == 0:
            raise ValueError(f"xs[{i}]: empty feature map {tuple(x.shape)}")
    dtype = xs[0].dtype
    ys = [y if y.dtype == x.dtype else y.to(x.dtype) for x, y in zip(xs, ys)]
    if len(xs) <= 6 and all(x.dtype == dtype for x in xs):
        return _wfd(xs, ys, weights, int(p))
    # the fused kernel takes up to 6 layers of one dtype per launch: group consecutive layers
    total, start = None, 0
    while start < len(xs):
        end = start + 1
        while end < len(xs) and end - start < 6 and xs[end].dtype == xs[start].dtype:
            end += 1
        t = _wfd(xs[start:end], ys[start:end], weights[start:end], int(p))
        total = t if total is None else total + t.to(total.dtype)
        start = end
    return total


# ---------------------------------------------------------------------------------------------
# lpips_distance
# ---------------------------------------------------------------------------------------------
def _lpips_bwd_triton(grad, f0s, f1s, lin_weights, eps, need_g0, need_g1):
    K = _kernels()
    g0s, g1s = [], []
    for f0, f1, w in zip(f0s, f1s, lin_weights):
        g0, g1 = K.lpips_layer_bwd(grad, f0, f1, w, eps, need_g0, need_g1)
        g0s.append(g0)
        g1s.append(g1)
    return g0s, g1s


LPIPS = _ext.register_op(
    "lpips_distance", cuda=["triton"],
    impls={"triton": lambda *a: _kernels().lpips_fwd(*a),
           "reference": lambda *a: _ref.lpips_distance_reference(*a).contiguous()},
    doc="LPIPS normalise/diff/lin/mean over layers")
LPIPS_BACKWARD = _ext.register_op(
    "lpips_distance_backward", follows="lpips_distance",
    impls={"triton": _lpips_bwd_triton, "reference": _ref.lpips_distance_backward_reference})


@torch.library.custom_op("fastep::lpips_distance", mutates_args=())
def _lpips(f0s: List[Tensor], f1s: List[Tensor], lin_weights: List[Tensor], eps: float) -> Tensor:
    return LPIPS.dispatch(*f0s, *f1s)(f0s, f1s, lin_weights, eps).to(_out_dtype(f0s[0]))


@_lpips.register_fake
def _lpips_fake(f0s, f1s, lin_weights, eps):
    return f0s[0].new_empty((f0s[0].shape[0],), dtype=_out_dtype(f0s[0]))


@torch.library.custom_op("fastep::lpips_distance_backward", mutates_args=())
def _lpips_bwd(grad: Tensor, f0s: List[Tensor], f1s: List[Tensor], lin_weights: List[Tensor], eps: float,
               need_g0: bool, need_g1: bool) -> List[Tensor]:
    g0s, g1s = LPIPS_BACKWARD.dispatch(*f0s, *f1s)(grad, f0s, f1s, lin_weights, eps, need_g0, need_g1)
    return ([_like(g, f) for g, f in zip(g0s, f0s)] if need_g0 else []) + \
           ([_like(g, f) for g, f in zip(g1s, f1s)] if need_g1 else [])


@_lpips_bwd.register_fake
def _lpips_bwd_fake(grad, f0s, f1s, lin_weights, eps, need_g0, need_g1):
    return ([torch.empty_like(f) for f in f0s] if need_g0 else []) + \
           ([torch.empty_like(f) for f in f1s] if need_g1 else [])


def _lpips_setup(ctx, inputs, output):
    f0s, f1s, lin_weights, eps = inputs
    ctx.save_for_backward(*f0s, *f1s, *lin_weights)
    ctx.n, ctx.eps = len(f0s), float(eps)
    ctx.need_g0 = any(f.requires_grad for f in f0s)
    ctx.need_g1 = any(f.requires_grad for f in f1s)


def _lpips_backward(ctx, grad):
    s, n = ctx.saved_tensors, ctx.n
    f0s, f1s, ws = list(s[:n]), list(s[n:2 * n]), list(s[2 * n:])
    none = [None] * n
    if not (ctx.need_g0 or ctx.need_g1):
        return none, none, [None] * len(ws), None
    gs = _lpips_bwd(grad, f0s, f1s, ws, ctx.eps, ctx.need_g0, ctx.need_g1)
    g0s = gs[:n] if ctx.need_g0 else none
    g1s = (gs[n:] if ctx.need_g0 else gs[:n]) if ctx.need_g1 else none
    return g0s, g1s, [None] * len(ws), None


_lpips.register_autograd(_lpips_backward, setup_context=_lpips_setup)


def lpips_distance(f0s: Sequence[Tensor], f1s: Sequence[Tensor], lin_weights: Sequence[Tensor],
                   eps: float = 1e-10) -> Tensor:
    """Per-sample LPIPS distance (N,) from per-layer backbone features (fused, with autograd).

    ``sum_l mean_{h,w} sum_c lin_weights[l][c] * (n(f0_l) - n(f1_l))_c^2`` with
    ``n(f) = f / (sqrt(sum_c f^2) + eps)``: exactly the lpips package's formula, its 1x1 "lin"
    convolutions given as channel-weight vectors (C_l,) (or their (1, C_l, 1, 1) conv weights).
    Gradients flow to the features (not to the lin weights, which LPIPS keeps frozen).
    """
    f0s = _check_float_list("f0s", f0s)
    f1s = _check_float_list("f1s", f1s)
    if isinstance(lin_weights, Tensor):
        lin_weights = [lin_weights]
    lin_weights = list(lin_weights)
    if not (len(f0s) == len(f1s) == len(lin_weights)):
        raise ValueError(f"f1s/lin_weights: expected {len(f0s)} entries each (one per layer of f0s), "
                         f"got {len(f1s)} and {len(lin_weights)}")
    ws = []
    for i, (a, b, w) in enumerate(zip(f0s, f1s, lin_weights)):
        if a.dim() != 4 or a.shape != b.shape:
            raise ValueError(f"f1s[{i}]: expected (N, C, H, W) feature maps of one shape, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        if a.shape[0] != f0s[0].shape[0]:
            raise ValueError(f"f0s[{i}]: batch {a.shape[0]} differs from layer 0's {f0s[0].shape[0]}")
        if not isinstance(w, Tensor) or w.numel() != a.shape[1]:
            raise ValueError(f"lin_weights[{i}]: expected {a.shape[1]} channel weights, got "
                             f"{getattr(w, 'shape', type(w).__name__)}")
        ws.append(w.detach().reshape(-1).to(device=a.device, dtype=_out_dtype(a)))
    dtype = f0s[0].dtype
    f1s = [b if b.dtype == a.dtype else b.to(a.dtype) for a, b in zip(f0s, f1s)]
    if any(a.dtype != dtype for a in f0s):
        f0s = [a.to(dtype) for a in f0s]
        f1s = [b.to(dtype) for b in f1s]
    return _lpips(f0s, f1s, ws, float(eps))
