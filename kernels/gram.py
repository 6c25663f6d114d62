"""Triton kernels for Gram matrices, fused Gram differences and pairwise style distances.

Kernels (all accumulate in float32; fp16/bf16 operands go through the tensor cores, fp32
operands use IEEE fp32 FMAs unless ``torch.get_float32_matmul_precision() != "highest"``, when
TF32 is allowed, exactly like ``torch.matmul``):

``_gram_kernel``      one program = one (i <= j) tile pair of one image's Gram matrix (only the
                      upper-triangle tiles are computed; the transpose is mirror-written), over
                      one split of the H*W reduction.  Optionally a second feature map Y: the tile
                      of s*(X X^T - Y Y^T) is accumulated in the same registers, so the difference
                      of two Grams is produced without either Gram ever being written.  Arbitrary
                      strides (channels_last, slices, permutes): the reduction index k = h*W + w is
                      turned into an offset with the tensor's own strides.
``_pdist_kernel``     one program = one (BM x BN) tile of the dot products x_i . y_j over one split
                      of D (partial sums into a workspace, or straight into the output when D is
                      not split), plus the squared norms: for the cross distance the programs of
                      tile column/row 0 accumulate them from the tiles they load anyway (no extra
                      pass over the data); for the self-distance (``SYM``) only the upper-triangle
                      tiles run and the norms are the diagonal of the dot products themselves.
``_pdist_finish_kernel``  sums the splits and applies the epilogue
                      clamp(|x|^2 + |y|^2 - 2 x.y, 0) (diagonal exactly 0 for SYM), in place.

Launchers: :func:`gram_launch`, :func:`pairwise_launch`.  They accept CUDA tensors, or CPU
tensors under ``TRITON_INTERPRET=1`` (autotuning is off there).
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from fastep._ext import fp32_dot_mode, triton_interpret

INTERPRET = triton_interpret()

# PREC constexpr: how tl.dot treats float32 operands (fastep._ext.fp32_dot_mode): "tf32x3"
# (default: three TF32 tensor-core products per multiply-add, hi*hi + hi*lo + lo*hi, ~2^-21
# relative error per product, float32-level results at about 2-3x the speed of IEEE FMAs on an
# H100), "ieee" (FASTEP_FP32_DOT=ieee: plain FMAs), or plain TF32 when
# torch.set_float32_matmul_precision("high"/"medium") allows it, as for torch.matmul.
PREC_NATIVE, PREC_TF32, PREC_IEEE, PREC_TF32X3 = 0, 1, 2, 3
_TF32X3_BROKEN = False  # set when this Triton cannot compile tf32x3 (falls back to IEEE)

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _dot(a, b, acc, PREC: tl.constexpr):
    if PREC == 1:
        acc = tl.dot(a, b, acc, input_precision="tf32")
    elif PREC == 2:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    elif PREC == 3:
        acc = tl.dot(a, b, acc, input_precision="tf32x3")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _tri_decode(t):
    """Tile pair index t -> (i, j), i <= j, enumerated column by column (j-major)."""
    tf = t.to(tl.float32)
    j = ((tl.sqrt(8.0 * tf + 1.0) - 1.0) * 0.5).to(tl.int32)
    # fix the float rounding of the square root either way
    j = tl.where((j + 1) * (j + 2) // 2 <= t, j + 1, j)
    j = tl.where(j * (j + 1) // 2 > t, j - 1, j)
    i = t - j * (j + 1) // 2
    return i, j


@triton.jit
def _gram_kernel(X, Y, OUT, C, W, K, K_SPLIT, scale,
                 sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                 sos, son, soi, soj,
                 HAS_Y: tl.constexpr, FLAT: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr = False):
    # ONE_TILE (C <= BLOCK_M): the only tile is diagonal, its B operand is A transposed (no reload)
    t = tl.program_id(0)
    s = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    ti, tj = _tri_decode(t)
    rm = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tj * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = rm < C
    mask_n = rn < C
    rk = tl.arange(0, BLOCK_K)
    k_lo = s * K_SPLIT
    k_hi = tl.minimum(K, k_lo + K_SPLIT)
    xb = X + n * sxn
    yb = Y + n * syn
    acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + rk
        mk = k < k_hi
        if FLAT:
            kx = k * sxw
        else:
            kx = (k // W) * sxh + (k % W) * sxw
        a = tl.load(xb + rm[:, None] * sxc + kx[None, :], mask=mask_m[:, None] & mk[None, :], other=0.0)
        if ONE_TILE:
            b = tl.trans(a)
        else:
            b = tl.load(xb + rn[None, :] * sxc + kx[:, None], mask=mask_n[None, :] & mk[:, None], other=0.0)
        acc = _dot(a, b, acc, PREC)
        if HAS_Y:
            if FLAT:
                ky = k * syw
            else:
                ky = (k // W) * syh + (k % W) * syw
            a2 = tl.load(yb + rm[:, None] * syc + ky[None, :], mask=mask_m[:, None] & mk[None, :], other=0.0)
            if ONE_TILE:
                b2 = tl.trans(a2)
            else:
                b2 = tl.load(yb + rn[None, :] * syc + ky[:, None], mask=mask_n[None, :] & mk[:, None], other=0.0)
            acc = _dot(-a2, b2, acc, PREC)
    if ti == tj:  # exact symmetry: diagonal tiles take their lower half from the upper half
        acc = tl.where(rm[:, None] <= rn[None, :], acc, tl.trans(acc))
    acc = acc * scale
    val = acc.to(OUT.dtype.element_ty)
    ob = OUT + s.to(tl.int64) * sos + n * son
    mask = mask_m[:, None] & mask_n[None, :]
    tl.store(ob + rm[:, None] * soi + rn[None, :] * soj, val, mask=mask)
    # mirror: G[j, i] = G[i, j] for the strictly-upper tiles
    tl.store(ob + rn[None, :] * soi + rm[:, None] * soj, val, mask=mask & (ti < tj))


@triton.jit
def _pdist_kernel(X, Y, WS, NXW, NYW, M, N, K, K_SPLIT, TILES_N,
                  sxm, sxk, sym, syk, sws, swm, swn, snxs, snys,
                  SYM: tl.constexpr, PREC: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Partial (one K split) dot products x_i . y_j of one tile, plus the partial squared norms.

    SYM (y is x): only tiles pm <= pn run; the norms are the diagonal of the diagonal tiles'
    dot products (so d_ii is exactly 0 and the norms are consistent with the dots).  Otherwise the
    programs of tile column 0 accumulate |x_i|^2 and those of tile row 0 |y_j|^2 from the tiles
    they load anyway (no extra pass over the data, no extra work in the other programs).
    """
    pid = tl.program_id(0)
    s = tl.program_id(1)
    if SYM:
        pm, pn = _tri_decode(pid)
    else:
        pm = pid // TILES_N
        pn = pid % TILES_N
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = rm < M
    mask_n = rn < N
    rk = tl.arange(0, BLOCK_K)
    k_lo = s * K_SPLIT
    k_hi = tl.minimum(K, k_lo + K_SPLIT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    nx = tl.zeros((BLOCK_M,), dtype=tl.float32)
    ny = tl.zeros((BLOCK_N,), dtype=tl.float32)
    xrow = X + rm[:, None].to(tl.int64) * sxm
    yrow = Y + rn[None, :].to(tl.int64) * sym
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + rk
        mk = k < k_hi
        a = tl.load(xrow + k[None, :] * sxk, mask=mask_m[:, None] & mk[None, :], other=0.0)
        b = tl.load(yrow + k[:, None] * syk, mask=mask_n[None, :] & mk[:, None], other=0.0)
        acc = _dot(a, b, acc, PREC)
        if not SYM:
            if pn == 0:
                af = a.to(tl.float32)
                nx += tl.sum(af * af, axis=1)
            if pm == 0:
                bf = b.to(tl.float32)
                ny += tl.sum(bf * bf, axis=0)
    mask = mask_m[:, None] & mask_n[None, :]
    wb = WS + s.to(tl.int64) * sws
    rm = rm.to(tl.int64)  # M x N outputs may exceed 2^31 elements
    rn = rn.to(tl.int64)
    if SYM:
        diag = rm[:, None] == rn[None, :]
        if pm == pn:  # exact symmetry of the diagonal tiles
            acc = tl.where(rm[:, None] <= rn[None, :], acc, tl.trans(acc))
        tl.store(wb + rn[None, :] * swm + rm[:, None] * swn, acc, mask=mask & (pm < pn))
        nx = tl.sum(tl.where(diag, acc, 0.0), axis=1)
        tl.store(NXW + s * snxs + rm, nx, mask=mask_m & (pm == pn))
    else:
        tl.store(NXW + s * snxs + rm, nx, mask=mask_m & (pn == 0))
        tl.store(NYW + s * snys + rn, ny, mask=mask_n & (pm == 0))
    tl.store(wb + rm[:, None] * swm + rn[None, :] * swn, acc, mask=mask)


@triton.jit
def _pdist_finish_kernel(WS, NXW, NYW, OUT, M, N, S, sws, swm, swn, snxs, snys, som, son,
                         SYM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = rm < M
    mask_n = rn < N
    mask = mask_m[:, None] & mask_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    nx = tl.zeros((BLOCK_M,), dtype=tl.float32)
    ny = tl.zeros((BLOCK_N,), dtype=tl.float32)
    wp = WS + rm[:, None] * swm + rn[None, :] * swn
    xp = NXW + rm
    yp = NYW + rn
    for _ in range(0, S):  # (pointer increments: 64-bit, whatever S * M * N is)
        acc += tl.load(wp, mask=mask, other=0.0)
        nx += tl.load(xp, mask=mask_m, other=0.0)
        ny += tl.load(yp, mask=mask_n, other=0.0)
        wp += sws
        xp += snxs
        yp += snys
    d = tl.maximum(nx[:, None] + ny[None, :] - 2.0 * acc, 0.0)
    if SYM:
        d = tl.where(rm[:, None] == rn[None, :], 0.0, d)
    tl.store(OUT + rm[:, None] * som + rn[None, :] * son, d, mask=mask)


# ----------------------------------------------------------------------------------------------
# autotuned variants (CUDA only: never under the interpreter)
# ----------------------------------------------------------------------------------------------

def _configs(bks, warps=(4, 8), stages=(3, 4)):
    return [triton.Config({"BLOCK_K": bk}, num_warps=w, num_stages=st)
            for bk in bks for w in warps for st in stages]


if INTERPRET:
    _gram_kernel_tuned = None
    _pdist_kernel_tuned = None
else:
    _gram_kernel_tuned = triton.autotune(
        configs=_configs((32, 64)) + [triton.Config({"BLOCK_K": 32}, num_warps=4, num_stages=2),
                                      triton.Config({"BLOCK_K": 128}, num_warps=8, num_stages=3)],
        key=["C", "K_SPLIT", "HAS_Y", "FLAT", "PREC", "BLOCK_M", "ONE_TILE"],
    )(_gram_kernel)
    _pdist_kernel_tuned = triton.autotune(
        configs=_configs((32, 64)) + [triton.Config({"BLOCK_K": 128}, num_warps=8, num_stages=3),
                                      triton.Config({"BLOCK_K": 32}, num_warps=4, num_stages=2)],
        key=["M", "N", "K_SPLIT", "SYM", "PREC", "BLOCK_M", "BLOCK_N"],
    )(_pdist_kernel)

# Problems smaller than this many multiply-adds run a fixed config (no autotuning pass).
AUTOTUNE_MIN_MACS = 1 << 26


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _programs_target(device: torch.device) -> int:
    if device.type == "cuda":
        return 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


def _prec(dtype: torch.dtype) -> int:
    if dtype != torch.float32:
        return PREC_NATIVE
    mode = fp32_dot_mode()
    if mode == "tf32":
        return PREC_TF32
    if _TF32X3_BROKEN or mode == "ieee":
        return PREC_IEEE
    return PREC_TF32X3


#: Pipelining depths a fixed-config launch tries, deepest first: a BLOCK_K = 128 float32 tile at
#: 3 stages needs 288-320 KB of shared memory, more than an H200's 227 KB (Triton raises
#: OutOfResources at launch), and the next depth down fits.
_FIXED_STAGES = (1,) if INTERPRET else (3, 2, 1)


def _launch_fixed(kernel, grid, args, meta, **config) -> None:
    """kernel[grid](*args, **meta, **config, num_stages=s) at the deepest ``_FIXED_STAGES`` that fits."""
    for i, stages in enumerate(_FIXED_STAGES):
        try:
            kernel[grid](*args, **meta, **config, num_stages=stages)
            return
        except OutOfResources:
            if i == len(_FIXED_STAGES) - 1:
                raise


def _launch(run, prec: int) -> None:
    """run(prec); if this Triton can't compile tf32x3, remember it and use IEEE fp32 instead.
    A tile too big for the device (OutOfResources) is no compile failure: it is raised as is."""
    global _TF32X3_BROKEN
    try:
        run(prec)
    except Exception as err:  # noqa: BLE001 - only Triton's own compile errors are retried
        if (prec != PREC_TF32X3 or not type(err).__module__.startswith("triton")
                or isinstance(err, OutOfResources)):
            raise
        warnings.warn(f"fastep: Triton could not compile tf32x3 dots ({type(err).__name__}: {err}); "
                      "using IEEE float32 FMAs", RuntimeWarning)
        _TF32X3_BROKEN = True
        run(PREC_IEEE)


def choose_split(programs: int, k: int, target: int, min_chunk: int = 1024, align: int = 128) -> tuple[int, int]:
    """Split-K: enough programs to fill the device, each reducing at least ``min_chunk``."""
    if programs >= target or k <= min_chunk:
        split = 1
    else:
        split = min(-(-target // programs), max(1, k // min_chunk))
    chunk = -(-k // split)
    chunk = -(-chunk // align) * align
    split = -(-k // chunk)
    return split, chunk


def _check(t: torch.Tensor, name: str):
    if t.dtype not in _SUPPORTED:
        raise TypeError(f"{name}: Triton kernels take float16/bfloat16/float32, got {t.dtype}")
    if t.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"{name}: Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1), got {t.device}")


def _hw_strides(f: torch.Tensor):
    """Strides (n, c, h, w) and whether (h, w) collapses to one stride (k = h*W + w)."""
    sn, sc, sh, sw = f.stride()
    h, w = f.shape[2], f.shape[3]
    flat = h == 1 or sh == w * sw
    if w == 1 and not flat:
        flat, sw = True, sh
    return sn, sc, sh, sw, flat


def gram_launch(x: torch.Tensor, y: Optional[torch.Tensor] = None, *, scale: Optional[float] = None,
                out_dtype: Optional[torch.dtype] = None, split_k: Optional[int] = None,
                block_m: Optional[int] = None, block_k: Optional[int] = None,
                autotune: Optional[bool] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """scale * (X X^T - Y Y^T) per image (Y optional) of (N, C, H, W) features -> (N, C, C).

    ``scale`` defaults to 1 / (C H W); ``out_dtype`` to x's dtype (float32 accumulation always).
    Any strides.  ``out``: an (N, C, C) tensor to write into (any strides; its dtype wins).
    ``split_k``/``block_m``/``block_k``/``autotune`` override the heuristics (tests).
    """
    _check(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x: expected (N, C, H, W), got shape {tuple(x.shape)}")
    if y is not None:
        _check(y, "y")
        if y.shape != x.shape or y.dtype != x.dtype or y.device != x.device:
            raise ValueError(f"y: expected shape {tuple(x.shape)} {x.dtype} on {x.device}, got "
                             f"{tuple(y.shape)} {y.dtype} on {y.device}")
    n, c, h, w = x.shape
    k = h * w
    scale = 1.0 / (c * h * w) if scale is None else float(scale)
    if out is not None:
        if out.shape != (n, c, c) or out.device != x.device:
            raise ValueError(f"out: expected shape {(n, c, c)} on {x.device}, got {tuple(out.shape)} on {out.device}")
        out_dtype = out.dtype
    out_dtype = out_dtype or x.dtype
    if INTERPRET:
        bm = block_m or (16 if c <= 16 else 32)
        bk = block_k or 16
        tune = False
    else:
        # fp32 operands (tf32x3 / FMA dots) need more registers per product: 64 x 64 tiles.
        # Half types: one 128 x 128 tile for C <= 128 (its B operand is A transposed: each row
        # block is read once; the extra MMA work is free in these memory-bound layers).
        bm = block_m or (64 if c <= 64 or x.dtype == torch.float32 else 128)
        bk = block_k or 32
        tune = (n * c * c * k >= AUTOTUNE_MIN_MACS) if autotune is None else autotune
        tune = tune and block_k is None
    tiles = -(-c // bm)
    pairs = tiles * (tiles + 1) // 2
    if split_k is None:
        split, chunk = choose_split(pairs * n, k, _programs_target(x.device), min_chunk=512)
    else:
        split = max(1, min(int(split_k), k))
        chunk = -(-k // split)
        split = -(-k // chunk)
    if out is None:
        out = torch.empty((n, c, c), dtype=out_dtype, device=x.device)
    if split > 1:
        target = torch.empty((split, n, c, c), dtype=torch.float32, device=x.device)
    else:
        target = out.unsqueeze(0)
    sxn, sxc, sxh, sxw, flat_x = _hw_strides(x)
    if y is not None:
        syn, syc, syh, syw, flat_y = _hw_strides(y)
    else:
        syn, syc, syh, syw, flat_y = sxn, sxc, sxh, sxw, flat_x
    flat = flat_x and flat_y
    if not flat:  # the general path needs the true (h, w) strides of both
        sxn, sxc, sxh, sxw = x.stride()
        if y is not None:
            syn, syc, syh, syw = y.stride()
        else:
            syn, syc, syh, syw = sxn, sxc, sxh, sxw
    grid = (pairs, split, n)
    args = (x, x if y is None else y, target, c, w, k, chunk, scale,
            sxn, sxc, sxh, sxw, syn, syc, syh, syw,
            target.stride(0), target.stride(1), target.stride(2), target.stride(3))
    meta = dict(HAS_Y=y is not None, FLAT=flat, BLOCK_M=bm, ONE_TILE=tiles == 1)

    def run(prec):
        if tune:
            _gram_kernel_tuned[grid](*args, **meta, PREC=prec)
        else:
            _launch_fixed(_gram_kernel, grid, args, meta, PREC=prec, BLOCK_K=bk, num_warps=4)

    _launch(run, _prec(x.dtype))
    if split > 1:
        if out_dtype == torch.float32:
            torch.sum(target, dim=0, out=out)
        else:
            out.copy_(target.sum(0))
    return out


def pairwise_launch(x: torch.Tensor, y: Optional[torch.Tensor] = None, *, split_k: Optional[int] = None,
                    block_m: Optional[int] = None, block_k: Optional[int] = None,
                    autotune: Optional[bool] = None) -> torch.Tensor:
    """clamp(|x_i|^2 + |y_j|^2 - 2 x_i . y_j, 0) of (M, D) x against (N, D) y -> (M, N) float32.

    ``y=None`` means y is x: only the upper-triangle tiles are computed and the diagonal is 0.
    """
    _check(x, "gx")
    if x.dim() != 2:
        raise ValueError(f"gx: expected (N, D), got shape {tuple(x.shape)}")
    if y is not None:
        _check(y, "gy")
        if y.dim() != 2 or y.shape[1] != x.shape[1] or y.dtype != x.dtype or y.device != x.device:
            raise ValueError(f"gy: expected (M, {x.shape[1]}) {x.dtype} on {x.device}, got "
                             f"{tuple(y.shape)} {y.dtype} on {y.device}")
    if x.stride(1) != 1:  # rows must be contiguous (k * stride would overflow int32 for big D)
        x = x.contiguous()
    if y is not None and y.stride(1) != 1:
        y = y.contiguous()
    sym = y is None
    yy = x if sym else y
    m, kdim = x.shape
    nn_ = yy.shape[0]
    if INTERPRET:
        bm = block_m or (16 if max(m, nn_) <= 16 else 32)
        bk = block_k or 32
        tune = False
    else:
        small = max(m, nn_) if sym else min(m, nn_)
        big = 64 if x.dtype == torch.float32 else 128
        bm = block_m or (16 if small <= 16 else 32 if small <= 32 else 64 if small <= 64 else big)
        bk = block_k or 32
        tune = (m * nn_ * kdim >= AUTOTUNE_MIN_MACS) if autotune is None else autotune
        tune = tune and block_k is None
    bn = bm
    tiles_m, tiles_n = -(-m // bm), -(-nn_ // bn)
    programs = tiles_m * (tiles_m + 1) // 2 if sym else tiles_m * tiles_n
    if split_k is None:
        split, chunk = choose_split(programs, kdim, _programs_target(x.device), min_chunk=2048)
    else:
        split = max(1, min(int(split_k), kdim))
        chunk = -(-kdim // split)
        split = -(-kdim // chunk)
    out = torch.empty((m, nn_), dtype=torch.float32, device=x.device)
    # dots (split, M, N) and norms: with split == 1 the dot products go straight into `out` and
    # the epilogue below turns them into distances in place
    ws = torch.empty((split, m, nn_), dtype=torch.float32, device=x.device) if split > 1 else out.unsqueeze(0)
    nxw = torch.empty((split, m), dtype=torch.float32, device=x.device)
    nyw = nxw if sym else torch.empty((split, nn_), dtype=torch.float32, device=x.device)
    grid = (programs, split)
    args = (x, yy, ws, nxw, nyw, m, nn_, kdim, chunk, tiles_n,
            x.stride(0), x.stride(1), yy.stride(0), yy.stride(1),
            ws.stride(0), ws.stride(1), ws.stride(2), nxw.stride(0), nyw.stride(0))
    meta = dict(SYM=sym, BLOCK_M=bm, BLOCK_N=bn)

    def run(prec):
        if tune:
            _pdist_kernel_tuned[grid](*args, **meta, PREC=prec)
        else:
            _launch_fixed(_pdist_kernel, grid, args, meta, PREC=prec, BLOCK_K=bk, num_warps=4)

    _launch(run, _prec(x.dtype))
    fb = 32
    _pdist_finish_kernel[(-(-m // fb), -(-nn_ // fb))](
        ws, nxw, nyw, out, m, nn_, split, ws.stride(0), ws.stride(1), ws.stride(2),
        nxw.stride(0), nyw.stride(0), out.stride(0), out.stride(1),
        SYM=sym, BLOCK_M=fb, BLOCK_N=fb, num_warps=4)
    return out


__all__ = ["gram_launch", "pairwise_launch", "choose_split", "INTERPRET"]
