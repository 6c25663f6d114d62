"""Benchmarks of the Gram / style-distance ops against eager PyTorch.

    python -m pytest benchmarks/test_bench_gram.py                      # CUDA if present, else CPU
    python -m pytest benchmarks/test_bench_gram.py --fastep-results benchmarks/results

Shapes: the five VGG16 style layers (relu1_2 .. relu5_2) of 256 x 256 images, batch 8, 32 and 64
on CUDA (fp32 and bf16 features); 32 x 32 images, batch 2, on CPU (a quick smoke run).

* ``gram``           all five layers' Grams.  baseline: ``torch.bmm(F, F^T) / CHW`` per layer.
* ``style_loss``     forward + backward of sum_l mean((G_l(x) - G_l(y))^2) w.r.t. x (y fixed).
                     baseline: ``bmm`` Grams + ``mse_loss`` + autograd (``bmm + mse``).
* ``style_loss_tgt`` the same against precomputed target Grams (fixed style image).
* ``pairwise``       N x N style distances of Gram vectors (D = 305,888).  baseline:
                     ``torch.cdist(x, y) ** 2``; impl "matmul" is ``x @ y.T`` on the same shapes,
                     the GEMM-rate yardstick (fastep's TFLOP/s / matmul's TFLOP/s is the ratio).

FLOP counts are those of the full GEMMs (2 N C^2 HW per Gram, 2 N M D per distance matrix), so
the TFLOP/s column compares implementations doing the same mathematical work.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as Fn

import fastep
from fastep.ops.gram import gram_vector_dim

VGG16_CHANNELS = (64, 128, 256, 512, 512)
VGG16_DOWN = (1, 2, 4, 8, 16)  # spatial down-sampling of relu1_2 .. relu5_2


def _cases(device):
    if device == "cuda":
        return [(n, res, dt) for dt in (torch.float32, torch.bfloat16) for n in (8, 32, 64) for res in (256,)]
    return [(2, 32, torch.float32)]


def _features(n, res, dtype, device, requires_grad=False):
    feats = []
    for c, d in zip(VGG16_CHANNELS, VGG16_DOWN):
        f = torch.randn(n, c, res // d, res // d, device=device).relu_().to(dtype)
        if dtype != torch.float32:  # the autocast/bf16 pipeline runs VGG channels_last
            f = f.contiguous(memory_format=torch.channels_last)
        feats.append(f.requires_grad_(requires_grad))
    return feats


def _gram_flops(feats):
    return sum(2.0 * f.shape[0] * f.shape[1] ** 2 * f.shape[2] * f.shape[3] for f in feats)


def _eager_gram(f):
    n, c, h, w = f.shape
    v = f.reshape(n, c, h * w)
    return torch.bmm(v, v.transpose(1, 2)) / (c * h * w)


def _eager_style_loss(fx, fy=None, targets=None):
    total = 0.0
    for i, a in enumerate(fx):
        gx = _eager_gram(a)
        if targets is not None:
            gy = targets[i].expand_as(gx)
        else:
            with torch.no_grad():
                gy = _eager_gram(fy[i])
        total = total + Fn.mse_loss(gx.float(), gy.float())
    return total


def _tag(dtype):
    return str(dtype).replace("torch.", "")


def _id(case):
    n, res, dt = case
    return f"N{n}_{res}px_{_tag(dt)}"


def _half_triton_route(impl, device, dtype, monkeypatch):
    """impl "fastep_triton": fastep with gram and pairwise forced onto the Triton kernels (the
    routes send them to cuBLAS on CUDA; fastep info lists the routes)."""
    if impl != "fastep_triton":
        return impl
    if device != "cuda":
        pytest.skip("the Triton/cuBLAS choice exists only on CUDA")
    monkeypatch.setenv("FASTEP_BACKEND", "gram=triton,pairwise_style_distance=triton")
    return "fastep"


@pytest.mark.parametrize("impl", ["baseline", "fastep", "fastep_triton"])
@pytest.mark.parametrize("case_idx", range(6))
def test_bench_gram(fastep_bench, device, case_idx, impl, monkeypatch):
    cases = _cases(device)
    if case_idx >= len(cases):
        pytest.skip("no such case on this device")
    n, res, dtype = cases[case_idx]
    run = _half_triton_route(impl, device, dtype, monkeypatch)
    feats = _features(n, res, dtype, device)
    flops = _gram_flops(feats)
    fn = {"baseline": lambda: [_eager_gram(f) for f in feats],
          "fastep": lambda: [fastep.gram(f) for f in feats]}[run]
    fastep_bench(fn, group="gram", case=_id(cases[case_idx]), impl=impl, device=device, flops=flops)


def _backward_runner(loss_fn, leaves):
    def run():
        for f in leaves:
            f.grad = None
        loss = loss_fn()
        loss.backward()
        return loss
    return run


@pytest.mark.parametrize("impl", ["baseline", "fastep"])
@pytest.mark.parametrize("case_idx", range(6))
def test_bench_style_loss(fastep_bench, device, case_idx, impl):
    cases = _cases(device)
    if case_idx >= len(cases):
        pytest.skip("no such case on this device")
    n, res, dtype = cases[case_idx]
    fx = _features(n, res, dtype, device, requires_grad=True)
    fy = _features(n, res, dtype, device)
    # useful work: Grams of x and y forward, one GEMM per layer for dL/dx
    flops = 3 * _gram_flops(fx)
    fn = {"baseline": lambda: _eager_style_loss(fx, fy), "fastep": lambda: fastep.style_loss(fx, fy)}[impl]
    fastep_bench(_backward_runner(fn, fx), group="style_loss", case=_id(cases[case_idx]), impl=impl,
                 device=device, flops=flops)


@pytest.mark.parametrize("impl", ["baseline", "fastep"])
@pytest.mark.parametrize("case_idx", range(6))
def test_bench_style_loss_target(fastep_bench, device, case_idx, impl):
    cases = _cases(device)
    if case_idx >= len(cases):
        pytest.skip("no such case on this device")
    n, res, dtype = cases[case_idx]
    fx = _features(n, res, dtype, device, requires_grad=True)
    style = _features(1, res, dtype, device)
    targets = [fastep.gram(s)[0].float() for s in style]
    flops = 2 * _gram_flops(fx)
    fn = {"baseline": lambda: _eager_style_loss(fx, targets=targets),
          "fastep": lambda: fastep.style_loss(fx, target_grams=targets)}[impl]
    fastep_bench(_backward_runner(fn, fx), group="style_loss_tgt", case=_id(cases[case_idx]), impl=impl,
                 device=device, flops=flops)


def _pair_cases(device):
    if device == "cuda":
        # batch sizes, plus mining-sized blocks (1024 rows; 4096 in bf16) where the GEMM is compute-bound
        return [(n, torch.float32) for n in (8, 64, 1024)] + [(n, torch.bfloat16) for n in (8, 64, 1024, 4096)]
    return [(8, torch.float32)]


@pytest.mark.parametrize("impl", ["baseline", "matmul", "fastep", "fastep_triton"])
@pytest.mark.parametrize("case_idx", range(7))
@pytest.mark.parametrize("mode", ["cross", "self"])
def test_bench_pairwise(fastep_bench, device, case_idx, mode, impl, monkeypatch):
    cases = _pair_cases(device)
    if case_idx >= len(cases):
        pytest.skip("no such case on this device")
    n, dtype = cases[case_idx]
    run = _half_triton_route(impl, device, dtype, monkeypatch)
    d = gram_vector_dim(VGG16_CHANNELS)
    x = torch.randn(n, d, device=device).to(dtype)
    y = x if mode == "self" else torch.randn(n, d, device=device).to(dtype)
    flops = 2.0 * n * n * d
    kw = dict(group=f"pairwise_{mode}", case=f"N{n}_D{d}_{_tag(dtype)}", device=device, flops=flops)

    def baseline():
        xf, yf = (x, y) if dtype == torch.float32 else (x.float(), y.float())  # cdist: no bf16 path
        return torch.cdist(xf, yf).square_()

    fns = {"baseline": baseline, "matmul": lambda: torch.matmul(x, y.T),
           "fastep": (lambda: fastep.pairwise_style_distance(x)) if mode == "self"
           else (lambda: fastep.pairwise_style_distance(x, y))}
    fastep_bench(fns[run], impl=impl, **kw)
