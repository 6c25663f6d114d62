"""The cuBLAS routes of the Gram ops: ``gram`` as one batched GEMM and ``pairwise_style_distance``
as one GEMM plus a float32 epilogue (correct on any device; on CUDA they are cuBLAS calls).

Half precision, measured on an H100 (benchmarks/results/h100-2026-11-23): cuBLAS beats the
Triton kernels on both plain GEMM-shaped ops -- gram 1.2-4x faster than kernels/gram.py at
VGG16 shapes, and the N x D x N GEMM of pairwise_style_distance reaches 748 TFLOP/s against
the Triton kernel's 289.  So fp16/bf16 `gram` and `pairwise_style_distance` on CUDA run a
cuBLAS GEMM with float32 accumulation plus a small epilogue; `style_loss` keeps its fused
G(x) - G(y) Triton kernel (no cuBLAS equivalent).

Float32 `gram` and `style_loss` on CUDA run the Triton kernels (tf32x3 dots): on an H200
(benchmarks/results/h200-2026-12-04) every float32 case of
tests/ops/test_gram.py::test_cuda_autotuned_vgg_like and test_cuda_style_loss_vgg_like matched
float64 in both dot modes, and the float32 Gram at batch 8, 256 x 256 VGG16 shapes took 1.10 ms
against 3.18 ms for this module's IEEE cuBLAS route.  (An H100 run of 2026-11-23 had failed
that test, most likely on its 60 s per-test timeout: README "fp32 Gram on CUDA".)  Float32
`pairwise_style_distance` stays here until its IEEE case and its speed are measured on a GPU.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from .._ext import HALF_TYPES as _HALF


@functools.lru_cache(maxsize=None)
def _has_out_dtype(device_type: str) -> bool:
    """torch.mm/bmm(..., out_dtype=float32) for half operands (CUDA, torch >= 2.8)."""
    try:
        a = torch.ones((2, 2), dtype=torch.bfloat16, device=device_type)
        ok = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        ok = ok and torch.bmm(a[None], a[None], out_dtype=torch.float32).dtype == torch.float32
        return bool(ok)
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def _mm_f32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with float32 accumulation and a float32 result, for half or float32 operands."""
    if a.dtype in _HALF and _has_out_dtype(a.device.type):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


def _gram_cublas(features: Tensor, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``gram`` as one batched GEMM (cuBLAS on CUDA), float32 accumulation; any layout.

    The fast path for fp16/bf16 features on CUDA; correct on any device (the tests run it on
    CPU too).  With ``out_dtype`` equal to the input's the scale is applied before the single
    rounding (``baddbmm``'s alpha); float32 output from half input needs ``out_dtype`` support.
    """
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w)  # a view for contiguous and channels_last layouts
    scale = 1.0 / (c * h * w)
    out_dtype = out_dtype or features.dtype
    if out_dtype != features.dtype:
        if features.dtype in _HALF and out_dtype == torch.float32 and _has_out_dtype(features.device.type):
            return torch.bmm(f, f.transpose(1, 2), out_dtype=torch.float32).mul_(scale)
        f = f.to(out_dtype)
    return torch.baddbmm(f.new_zeros(()), f, f.transpose(1, 2), beta=0.0, alpha=scale)


def _pairwise_cublas(x: Tensor, y: Optional[Tensor] = None) -> Tensor:
    """``pairwise_style_distance`` as one GEMM (cuBLAS on CUDA) plus a float32 epilogue.

    Self-distance (``y=None``): the squared norms are the GEMM's own diagonal (so d_ii is
    exactly 0 and the norms match the dot products' rounding) and the result is made exactly
    symmetric from its upper triangle.  Cross-distance: norms in float32 from one extra read.
    """
    if y is None:
        dots = _mm_f32(x, x.T)
        nx = dots.diagonal().clone()
        d = (nx[:, None] + nx[None, :]).sub_(dots, alpha=2.0).clamp_min_(0.0)
        d = torch.triu(d, 1)
        return d + d.T
    dots = _mm_f32(x, y.T)
    nx = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).square_()
    ny = torch.linalg.vector_norm(y, dim=1, dtype=torch.float32).square_()
    return (nx[:, None] + ny[None, :]).sub_(dots, alpha=2.0).clamp_min_(0.0)
