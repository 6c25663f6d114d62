"""Triton kernels of exact neighbour mining: squared-distance tiles from the Gram-vector GEMM.

``sqdist_tile(a, b, a_sq, b_sq)`` computes, for row blocks a [M, K] and b [N, K] (bf16/fp16/fp32,
float32 accumulation), ``D = max(a_sq[:, None] + b_sq[None, :] - 2 a b^T, 0)`` in float32 with the
distance formed in the GEMM epilogue, and optionally also writes D^T (the symmetric half of a
tile pair: the rows of b get their candidates from the same GEMM).  The k-selection that
consumes these tiles is the CUDA kernel in csrc/mining_cuda.cu (``torch.ops.fastep_C.topk_update_``).
No torch.library code here: fastep.ops.mining wraps the launcher.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: columns accumulated in float32 before a Kahan-compensated add (multiple of every BLOCK_K)
SEG_K = 2048


def _configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4},
                              num_warps=4, num_stages=1)]
    cfgs = []
    for bm, bn, bk, w, s in [(128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
                             (128, 128, 128, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4)]:
        cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                  num_warps=w, num_stages=s))
    return cfgs


@triton.jit
def _sqdist_tile_kernel(a_ptr, b_ptr, asq_ptr, bsq_ptr, out_ptr, outt_ptr, M, N, K,
                        stride_am, stride_ak, stride_bn, stride_bk, stride_om, stride_tn,
                        WRITE_T: tl.constexpr, DIAG: tl.constexpr, SEG_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering: GROUP_M row blocks share the b tiles in L2.
    width = GROUP_M * num_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    if DIAG:
        # a tile of x against itself: compute the sub-tiles on/above the diagonal only and
        # mirror them (half the GEMM work)
        if (pid_n + 1) * BLOCK_N <= pid_m * BLOCK_M:
            return
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mask_m = rm < M
    mask_n = rn < N
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rn[None, :].to(tl.int64) * stride_bn + rk[:, None] * stride_bk
    # Segmented accumulation: float32 inside segments of SEG_K columns, segments summed with
    # Kahan compensation, so the float32 rounding error grows with SEG_K, not with K (the
    # error bound of fastep.ops.mining.error_bound uses acc_len=SEG_K).
    total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    comp = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s0 in range(0, K, SEG_K):
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(s0, tl.minimum(s0 + SEG_K, K), BLOCK_K):
            kmask = (k0 + rk) < K
            a = tl.load(a_ptrs, mask=mask_m[:, None] & kmask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=kmask[:, None] & mask_n[None, :], other=0.0)
            acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
        y = acc - comp
        t = total + y
        comp = (t - total) - y
        total = t
    acc = total
    asq = tl.load(asq_ptr + rm, mask=mask_m, other=0.0)
    bsq = tl.load(bsq_ptr + rn, mask=mask_n, other=0.0)
    d = asq[:, None] + bsq[None, :] - 2.0 * acc
    d = tl.maximum(d, 0.0)
    omask = mask_m[:, None] & mask_n[None, :]
    if DIAG:  # upper part (incl. the diagonal) written here; the lower part only by mirroring
        smask = omask & (rn[None, :] >= rm[:, None])
    else:
        smask = omask
    tl.store(out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :], d, mask=smask)
    if WRITE_T:
        tl.store(outt_ptr + rn[None, :].to(tl.int64) * stride_tn + rm[:, None], d, mask=omask)
    if DIAG:
        # mirror: out[n, m] = d[m, n] for the strictly-lower part this program owns
        lower = omask & (rn[None, :] > rm[:, None])
        tl.store(out_ptr + rn[None, :].to(tl.int64) * stride_om + rm[:, None], d, mask=lower)


# Tuned once per tile kind (self / pair / pair + transpose), not per shape: mining calls it with
# a few large shapes and the best configuration does not depend on them.
_autotuned = triton.autotune(configs=_configs(), key=["WRITE_T", "DIAG"])(_sqdist_tile_kernel)


def sqdist_tile(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor, *,
                out: Optional[torch.Tensor] = None, out_t: Optional[torch.Tensor] = None,
                write_t: bool = False, diagonal: bool = False):
    """Float32 tile max(a_sq + b_sq - 2 a b^T, 0) of shape [M, N] (and its transpose if write_t).

    a [M, K], b [N, K]: same dtype (float16/bfloat16/float32), unit stride along K; a_sq [M] and
    b_sq [N] float32 (squared norms of the exact vectors).  Returns (out, out_t or None).
    ``diagonal=True`` declares b is a (the self tile): only sub-tiles on or above the diagonal
    are computed and mirrored into the lower part (half the work; out is then symmetric).
    """
    if diagonal and (a.data_ptr() != b.data_ptr() or a.shape != b.shape):
        raise ValueError("diagonal: a and b must be the same tensor")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a, b: expected [M, K] and [N, K], got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"a, b: dtypes differ ({a.dtype} vs {b.dtype})")
    M, K = a.shape
    N = b.shape[0]
    if a.stride(1) != 1:
        a = a.contiguous()
    if b.stride(1) != 1:
        b = b.contiguous()
    a_sq = a_sq.to(torch.float32).contiguous()
    b_sq = b_sq.to(torch.float32).contiguous()
    if out is None:
        out = torch.empty((M, N), device=a.device, dtype=torch.float32)
    if write_t and out_t is None:
        out_t = torch.empty((N, M), device=a.device, dtype=torch.float32)
    if M == 0 or N == 0:
        return out, (out_t if write_t else None)
    tptr = out_t if write_t else out
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _autotuned[grid](a, b, a_sq, b_sq, out, tptr, M, N, K, a.stride(0), a.stride(1), b.stride(0),
                     b.stride(1), out.stride(0), tptr.stride(0), WRITE_T=bool(write_t),
                     DIAG=bool(diagonal), SEG_K=SEG_K)
    return out, (out_t if write_t else None)
