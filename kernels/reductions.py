"""Triton kernels for the fused multi-layer reductions behind PerceptualLoss and LPIPS.

Two families, each with a forward and a backward kernel and a launcher taking torch tensors:

``weighted_feature_distance``
    loss = sum_l s_l * sum_i phi(x_l[i] - y_l[i]),  phi = |.| (p=1) or (.)^2 (p=2),
    s_l = w_l / numel(x_l) (a weighted per-layer mean).  ONE launch covers all layers (up to
    ``MAX_LAYERS``): the grid is the concatenation of every layer's element blocks, each program
    finds its layer from the cumulative block offsets and writes one partial sum, so no per-layer
    temporaries exist.  The backward launch writes d loss / d x_l (and, if wanted, d / d y_l)
    straight into the gradient buffers, scaled by the incoming gradient read on device (no host
    synchronisation).  The kernels are layout-agnostic: they walk memory linearly, so x_l, y_l and
    the gradients only need identical strides and dense storage (contiguous or channels_last).

``lpips_layer``
    d[n] = 1/(H W) sum_{h,w} sum_c w_c (a_c / (|a| + eps) - b_c / (|b| + eps))^2,
    with a = f0[n, :, h, w], b = f1[n, :, h, w]: LPIPS's unit-normalisation over channels,
    squared difference, the 1x1 "lin" head and the spatial mean, fused.  A program holds a
    [BLOCK_P pixels x all C channels] tile in registers, so each feature element is read once.
    Arbitrary NCHW strides are supported as long as H and W collapse into one pixel stride
    (true for contiguous and channels_last tensors).

No torch.library code here; fastep.ops.reductions registers the ops and picks the backend.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import triton
import triton.language as tl

from fastep._ext import triton_interpret

MAX_LAYERS = 6
_INTERPRET = triton_interpret()


# --------------------------------------------------------------------------------------------
# weighted feature distance (PerceptualLoss)
# --------------------------------------------------------------------------------------------
@triton.jit
def _wfd_block_sum(x_ptr, y_ptr, n, blk, P: tl.constexpr, BLOCK: tl.constexpr):
    offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    d = x - y
    if P == 1:
        v = tl.abs(d)
    else:
        v = d * d
    return tl.sum(v, axis=0)


@triton.jit
def _wfd_fwd_kernel(part_ptr,
                    x0, y0, x1, y1, x2, y2, x3, y3, x4, y4, x5, y5,
                    n0, n1, n2, n3, n4, n5,
                    s0, s1, s2, s3, s4, s5,
                    b1, b2, b3, b4, b5,
                    NUM_LAYERS: tl.constexpr, P: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if pid < b1:
        tl.store(part_ptr + pid, s0 * _wfd_block_sum(x0, y0, n0, pid, P, BLOCK))
    if NUM_LAYERS > 1:
        if (pid >= b1) & (pid < b2):
            tl.store(part_ptr + pid, s1 * _wfd_block_sum(x1, y1, n1, pid - b1, P, BLOCK))
    if NUM_LAYERS > 2:
        if (pid >= b2) & (pid < b3):
            tl.store(part_ptr + pid, s2 * _wfd_block_sum(x2, y2, n2, pid - b2, P, BLOCK))
    if NUM_LAYERS > 3:
        if (pid >= b3) & (pid < b4):
            tl.store(part_ptr + pid, s3 * _wfd_block_sum(x3, y3, n3, pid - b3, P, BLOCK))
    if NUM_LAYERS > 4:
        if (pid >= b4) & (pid < b5):
            tl.store(part_ptr + pid, s4 * _wfd_block_sum(x4, y4, n4, pid - b4, P, BLOCK))
    if NUM_LAYERS > 5:
        if pid >= b5:
            tl.store(part_ptr + pid, s5 * _wfd_block_sum(x5, y5, n5, pid - b5, P, BLOCK))


@triton.jit
def _wfd_block_grad(x_ptr, y_ptr, gx_ptr, gy_ptr, n, blk, scale,
                    P: tl.constexpr, NEED_GX: tl.constexpr, NEED_GY: tl.constexpr,
                    BLOCK: tl.constexpr):
    offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    d = x - y
    if P == 1:
        g = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)) * scale
    else:
        g = d * (2.0 * scale)
    if NEED_GX:
        tl.store(gx_ptr + offs, g.to(gx_ptr.dtype.element_ty), mask=mask)
    if NEED_GY:
        tl.store(gy_ptr + offs, (-g).to(gy_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _wfd_bwd_kernel(gout_ptr,
                    x0, y0, x1, y1, x2, y2, x3, y3, x4, y4, x5, y5,
                    gx0, gy0, gx1, gy1, gx2, gy2, gx3, gy3, gx4, gy4, gx5, gy5,
                    n0, n1, n2, n3, n4, n5,
                    s0, s1, s2, s3, s4, s5,
                    b1, b2, b3, b4, b5,
                    NUM_LAYERS: tl.constexpr, P: tl.constexpr, NEED_GX: tl.constexpr,
                    NEED_GY: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    go = tl.load(gout_ptr).to(tl.float32)
    if pid < b1:
        _wfd_block_grad(x0, y0, gx0, gy0, n0, pid, go * s0, P, NEED_GX, NEED_GY, BLOCK)
    if NUM_LAYERS > 1:
        if (pid >= b1) & (pid < b2):
            _wfd_block_grad(x1, y1, gx1, gy1, n1, pid - b1, go * s1, P, NEED_GX, NEED_GY, BLOCK)
    if NUM_LAYERS > 2:
        if (pid >= b2) & (pid < b3):
            _wfd_block_grad(x2, y2, gx2, gy2, n2, pid - b2, go * s2, P, NEED_GX, NEED_GY, BLOCK)
    if NUM_LAYERS > 3:
        if (pid >= b3) & (pid < b4):
            _wfd_block_grad(x3, y3, gx3, gy3, n3, pid - b3, go * s3, P, NEED_GX, NEED_GY, BLOCK)
    if NUM_LAYERS > 4:
        if (pid >= b4) & (pid < b5):
            _wfd_block_grad(x4, y4, gx4, gy4, n4, pid - b4, go * s4, P, NEED_GX, NEED_GY, BLOCK)
    if NUM_LAYERS > 5:
        if pid >= b5:
            _wfd_block_grad(x5, y5, gx5, gy5, n5, pid - b5, go * s5, P, NEED_GX, NEED_GY, BLOCK)


def _wfd_block() -> int:
    return 1024 if _INTERPRET else 4096


def _same_dense_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.stride() == b.stride() and _dense(a)


def _linear_pair(x: torch.Tensor, y: torch.Tensor):
    """x, y with identical dense strides (copies only when the caller's layouts disagree)."""
    if _same_dense_layout(x, y):
        return x, y
    if _dense(x):
        return x, y.contiguous(memory_format=_fmt(x))
    x = x.contiguous()
    return x, y.contiguous()


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _fmt(t: torch.Tensor):
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _layer_grid(numels: Sequence[int], block: int):
    blocks = [triton.cdiv(n, block) for n in numels]
    starts, acc = [], 0
    for nb in blocks:
        starts.append(acc)
        acc += nb
    # b1..b5: first block of layers 1..5 (padded with the total for absent layers)
    bounds = (starts[1:] + [acc] * MAX_LAYERS)[:MAX_LAYERS - 1]
    return acc, bounds


def _check_layers(xs, ys):
    if len(xs) != len(ys) or not 1 <= len(xs) <= MAX_LAYERS:
        raise ValueError(f"xs/ys: expected 1..{MAX_LAYERS} layer pairs of equal count, got "
                         f"{len(xs)} and {len(ys)}")
    for i, (x, y) in enumerate(zip(xs, ys)):
        if x.shape != y.shape:
            raise ValueError(f"layer {i}: xs and ys shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.numel() == 0:
            raise ValueError(f"layer {i}: empty feature map")


def weighted_feature_distance_fwd(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
                                  weights: Sequence[float], p: int) -> torch.Tensor:
    """sum_l weights[l] * mean(|x_l - y_l|^p), p in {1, 2}; returns a float32 0-d tensor."""
    _check_layers(xs, ys)
    pairs = [_linear_pair(x, y) for x, y in zip(xs, ys)]
    numels = [x.numel() for x, _ in pairs]
    block = _wfd_block()
    total, bounds = _layer_grid(numels, block)
    dev = pairs[0][0].device
    part = torch.empty(total, device=dev, dtype=torch.float32)
    ptrs, ns, ss = [], [], []
    for (x, y), n, w in zip(pairs, numels, weights):
        ptrs += [x, y]
        ns.append(n)
        ss.append(float(w) / n)
    L = len(pairs)
    ptrs += [pairs[0][0], pairs[0][1]] * (MAX_LAYERS - L)
    ns += [1] * (MAX_LAYERS - L)
    ss += [0.0] * (MAX_LAYERS - L)
    _wfd_fwd_kernel[(total,)](part, *ptrs, *ns, *ss, *bounds, NUM_LAYERS=L, P=int(p), BLOCK=block,
                              num_warps=8 if not _INTERPRET else 4)
    return part.sum()


def weighted_feature_distance_bwd(grad: torch.Tensor, xs: Sequence[torch.Tensor],
                                  ys: Sequence[torch.Tensor], weights: Sequence[float], p: int,
                                  need_gx: bool = True, need_gy: bool = False):
    """Gradients (gxs, gys) of the forward, each a list (None where not needed).

    ``grad`` is the incoming gradient of the scalar loss (a 0-d tensor, read on device).
    """
    _check_layers(xs, ys)
    pairs = [_linear_pair(x, y) for x, y in zip(xs, ys)]
    numels = [x.numel() for x, _ in pairs]
    block = _wfd_block()
    total, bounds = _layer_grid(numels, block)
    gxs = [torch.empty_like(x) for x, _ in pairs] if need_gx else None
    gys = [torch.empty_like(y) for _, y in pairs] if need_gy else None
    L = len(pairs)
    ptrs, gptrs, ns, ss = [], [], [], []
    for i, ((x, y), n, w) in enumerate(zip(pairs, numels, weights)):
        ptrs += [x, y]
        gptrs += [gxs[i] if need_gx else x, gys[i] if need_gy else y]
        ns.append(n)
        ss.append(float(w) / n)
    ptrs += [pairs[0][0], pairs[0][1]] * (MAX_LAYERS - L)
    gptrs += [gptrs[0], gptrs[1]] * (MAX_LAYERS - L)
    ns += [1] * (MAX_LAYERS - L)
    ss += [0.0] * (MAX_LAYERS - L)
    g = grad.reshape(()).to(device=pairs[0][0].device, dtype=torch.float32).contiguous()
    if total > 0 and (need_gx or need_gy):
        _wfd_bwd_kernel[(total,)](g, *ptrs, *gptrs, *ns, *ss, *bounds, NUM_LAYERS=L, P=int(p),
                                  NEED_GX=bool(need_gx), NEED_GY=bool(need_gy), BLOCK=block,
                                  num_warps=8 if not _INTERPRET else 4)
    # restore the caller's layouts where _linear_pair had to copy
    if need_gx:
        gxs = [gx if gx.stride() == x.stride() else gx.contiguous(memory_format=_fmt(x))
               for gx, x in zip(gxs, xs)]
    if need_gy:
        gys = [gy if gy.stride() == y.stride() else gy.contiguous(memory_format=_fmt(y))
               for gy, y in zip(gys, ys)]
    return gxs, gys


# --------------------------------------------------------------------------------------------
# LPIPS layer distance
# --------------------------------------------------------------------------------------------
@triton.jit
def _lpips_tile(f0_ptr, f1_ptr, w_ptr, n, pblk, C, HW,
                s0n, s0c, s0p, s1n, s1c, s1p, eps,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_p = pblk * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    mp = offs_p < HW
    mc = offs_c < C
    m = mp[:, None] & mc[None, :]
    n64 = n.to(tl.int64)
    p64 = offs_p.to(tl.int64)
    c64 = offs_c.to(tl.int64)
    a = tl.load(f0_ptr + n64 * s0n + p64[:, None] * s0p + c64[None, :] * s0c, mask=m, other=0.0)
    b = tl.load(f1_ptr + n64 * s1n + p64[:, None] * s1p + c64[None, :] * s1c, mask=m, other=0.0)
    a = a.to(tl.float32)
    b = b.to(tl.float32)
    w = tl.load(w_ptr + offs_c, mask=mc, other=0.0).to(tl.float32)
    na = tl.sqrt(tl.sum(a * a, axis=1))
    nb = tl.sqrt(tl.sum(b * b, axis=1))
    ia = 1.0 / (na + eps)
    ib = 1.0 / (nb + eps)
    return a, b, w, na, nb, ia, ib, offs_p, mp, m, n64, p64, c64


@triton.jit
def _lpips_fwd_kernel(out_ptr, f0_ptr, f1_ptr, w_ptr, C, HW, NPB, out_stride, col0, scale,
                      s0n, s0c, s0p, s1n, s1c, s1p, eps,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // NPB
    pblk = pid % NPB
    a, b, w, na, nb, ia, ib, offs_p, mp, m, n64, p64, c64 = _lpips_tile(
        f0_ptr, f1_ptr, w_ptr, n, pblk, C, HW, s0n, s0c, s0p, s1n, s1c, s1p, eps, BLOCK_P, BLOCK_C)
    d = a * ia[:, None] - b * ib[:, None]
    v = tl.sum(d * d * w[None, :], axis=1)
    v = tl.where(mp, v, 0.0)
    tl.store(out_ptr + n64 * out_stride + col0 + pblk, tl.sum(v, axis=0) * scale)


@triton.jit
def _lpips_bwd_kernel(gout_ptr, g0_ptr, g1_ptr, f0_ptr, f1_ptr, w_ptr, C, HW, NPB,
                      s0n, s0c, s0p, s1n, s1c, s1p, eps, inv_hw,
                      NEED_G0: tl.constexpr, NEED_G1: tl.constexpr,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // NPB
    pblk = pid % NPB
    a, b, w, na, nb, ia, ib, offs_p, mp, m, n64, p64, c64 = _lpips_tile(
        f0_ptr, f1_ptr, w_ptr, n, pblk, C, HW, s0n, s0c, s0p, s1n, s1c, s1p, eps, BLOCK_P, BLOCK_C)
    go = tl.load(gout_ptr + n).to(tl.float32) * inv_hw
    d = a * ia[:, None] - b * ib[:, None]
    q = (2.0 * go) * w[None, :] * d  # dL/du; dL/dv = -q
    if NEED_G0:
        qa = tl.sum(q * a, axis=1)
        ca = tl.where(na > 0, qa * ia * ia / tl.where(na > 0, na, 1.0), 0.0)
        g0 = q * ia[:, None] - a * ca[:, None]
        tl.store(g0_ptr + n64 * s0n + p64[:, None] * s0p + c64[None, :] * s0c,
                 g0.to(g0_ptr.dtype.element_ty), mask=m)
    if NEED_G1:
        qb = tl.sum(q * b, axis=1)
        cb = tl.where(nb > 0, qb * ib * ib / tl.where(nb > 0, nb, 1.0), 0.0)
        g1 = b * cb[:, None] - q * ib[:, None]
        tl.store(g1_ptr + n64 * s1n + p64[:, None] * s1p + c64[None, :] * s1c,
                 g1.to(g1_ptr.dtype.element_ty), mask=m)


def _lpips_blocks(C: int, HW: int):
    block_c = triton.next_power_of_2(C)
    budget = 2048 if _INTERPRET else 4096
    block_p = max(1, min(budget // block_c, triton.next_power_of_2(HW)))
    num_warps = 4 if _INTERPRET else (8 if block_c * block_p >= 4096 else 4)
    return block_p, block_c, num_warps


def _pix_strides(t: torch.Tensor):
    n, c, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    if h == 1:
        return t, (sn, sc, sw)
    if w == 1 or sh == sw * w:
        return t, (sn, sc, sw if w > 1 else sh)
    t = t.contiguous()
    return t, (t.stride(0), t.stride(1), t.stride(3))


def _check_lpips(f0: torch.Tensor, f1: torch.Tensor, w: torch.Tensor):
    if f0.dim() != 4 or f0.shape != f1.shape:
        raise ValueError(f"f0/f1: expected two (N, C, H, W) tensors of one shape, got "
                         f"{tuple(f0.shape)} and {tuple(f1.shape)}")
    if w.numel() != f0.shape[1]:
        raise ValueError(f"w: expected {f0.shape[1]} channel weights, got {w.numel()}")
    if f0.shape[1] > 4096:
        raise ValueError(f"f0: at most 4096 channels supported, got {f0.shape[1]}")


def lpips_fwd(f0s: Sequence[torch.Tensor], f1s: Sequence[torch.Tensor], ws: Sequence[torch.Tensor],
              eps: float = 1e-10) -> torch.Tensor:
    """Per-sample LPIPS distance summed over layers (float32 (N,)).

    One launch per layer writes pre-scaled partial sums into one shared (N, sum of blocks)
    buffer; a single row sum finishes all layers (no per-layer temporaries or reductions)."""
    plans = []
    for f0, f1, w in zip(f0s, f1s, ws):
        _check_lpips(f0, f1, w)
        N, C, H, W = f0.shape
        f0, st0 = _pix_strides(f0)
        f1, st1 = _pix_strides(f1)
        block_p, block_c, nw = _lpips_blocks(C, H * W)
        plans.append((f0, f1, w.reshape(-1).to(torch.float32).contiguous(), C, H * W, st0, st1,
                      block_p, block_c, nw, triton.cdiv(H * W, block_p)))
    N = f0s[0].shape[0]
    cols = sum(p[-1] for p in plans)
    part = torch.empty(N, cols, device=f0s[0].device, dtype=torch.float32)
    col0 = 0
    for f0, f1, w, C, HW, st0, st1, block_p, block_c, nw, npb in plans:
        if f0.shape[0] != N:
            raise ValueError(f"f0s: batch sizes differ across layers ({f0.shape[0]} vs {N})")
        if N * npb > 0:
            _lpips_fwd_kernel[(N * npb,)](part, f0, f1, w, C, HW, npb, cols, col0, 1.0 / HW,
                                          *st0, *st1, float(eps),
                                          BLOCK_P=block_p, BLOCK_C=block_c, num_warps=nw)
        col0 += npb
    return part.sum(1)


def lpips_layer_fwd(f0: torch.Tensor, f1: torch.Tensor, w: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Per-sample LPIPS layer distance (float32 tensor of shape (N,))."""
    return lpips_fwd([f0], [f1], [w], eps)


def lpips_layer_bwd(grad: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, w: torch.Tensor,
                    eps: float = 1e-10, need_g0: bool = True, need_g1: bool = True):
    """Gradients (g0, g1) of :func:`lpips_layer_fwd` for an incoming per-sample gradient (N,)."""
    _check_lpips(f0, f1, w)
    N, C, H, W = f0.shape
    HW = H * W
    orig0, orig1 = f0, f1
    # The gradients are written with the inputs' strides, so an input whose elements overlap
    # (e.g. a batch of one expanded to N, stride 0) would make every sample write one buffer.
    f0 = f0 if _dense(f0) else f0.contiguous()
    f1 = f1 if _dense(f1) else f1.contiguous()
    f0, st0 = _pix_strides(f0)
    f1, st1 = _pix_strides(f1)
    w = w.reshape(-1).to(torch.float32).contiguous()
    g0 = torch.empty_like(f0) if need_g0 else None
    g1 = torch.empty_like(f1) if need_g1 else None
    if g0 is not None and g0.stride() != f0.stride():
        g0 = torch.empty_strided(f0.shape, f0.stride(), dtype=f0.dtype, device=f0.device)
    if g1 is not None and g1.stride() != f1.stride():
        g1 = torch.empty_strided(f1.shape, f1.stride(), dtype=f1.dtype, device=f1.device)
    block_p, block_c, nw = _lpips_blocks(C, HW)
    npb = triton.cdiv(HW, block_p)
    go = grad.reshape(-1).to(device=f0.device, dtype=torch.float32).contiguous()
    if go.numel() != N:
        raise ValueError(f"grad: expected {N} per-sample gradients, got {go.numel()}")
    if N * npb > 0 and (need_g0 or need_g1):
        _lpips_bwd_kernel[(N * npb,)](go, g0 if need_g0 else f0, g1 if need_g1 else f1, f0, f1, w,
                                      C, HW, npb, *st0, *st1, float(eps), 1.0 / HW,
                                      NEED_G0=bool(need_g0), NEED_G1=bool(need_g1),
                                      BLOCK_P=block_p, BLOCK_C=block_c, num_warps=nw)
    del orig0, orig1
    return g0, g1


__all__ = ["MAX_LAYERS", "weighted_feature_distance_fwd", "weighted_feature_distance_bwd",
           "lpips_fwd", "lpips_layer_fwd", "lpips_layer_bwd"]
