"""Benchmarks of the Gram / style-distance ops against eager PyTorch.

    python -m pytest benchmarks/test_bench_gram.py                      # CUDA if present, else CPU
    python -m pytest benchmarks/test_bench_gram.py --fastep-results benchmarks/results

Shapes: the five VGG16 style layers (relu1_2 .. relu5_2) of 256 x 256 images, batch 8, 32 and 64
on CUDA (fp32 and bf16 features); 32 x 32 images, batch 2, on CPU (a quick smoke run).

* ``gram``           all five layers' Grams.  baseline: ``torch.bmm(F, F^T) / CHW`` per layer.
* ``style_loss``     forward + backward of sum_l mean((G_l(x) - G_l(y))^2) w.r.t. x (y fixed).
                     baseline: ``bmm`` Grams + ``mse_loss`` + autograd (``bmm + mse``).
* ``style_loss_tgt`` the same against precomputed target Grams (fixed style image).
* ``pairwise``       N x N style distances of Gram vectors (D = 305,888).  baseline: the eager
                     expanded form ``|x|^2 + |y|^2 - 2 x y^T`` in the inputs' dtype and layout
                     (one GEMM with float32 accumulation and output, norms in float32, as fastep
                     returns); impl "cdist" (float32 only: ``torch.cdist`` has no bf16 path) is
                     ``torch.cdist(x, y) ** 2``; impl "matmul" is ``x @ y.T`` on the same shapes,
                     the GEMM-rate yardstick (fastep's TFLOP/s / matmul's TFLOP/s is the ratio).

Like with like: every baseline takes the same tensors (dtype, layout) as fastep, with no
conversion inside the timed call, and before anything is timed each test checks that fastep's
output equals its baseline's within the op's error bound (a fast wrong path is never timed).
FLOPs are the work each implementation does: a full GEMM is 2 M N K; fastep's Triton kernels
compute only the upper-triangle tiles of a Gram or self-distance matrix (their FLOPs count those
tiles, padding included); an autograd ``bmm`` backward is two GEMMs, fastep's is one.  So the
TFLOP/s column is each implementation's achieved rate, and "% of matmul" is not inflated by
work fastep skips (that saving shows in the time column instead).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as Fn

import fastep
from fastep import _ext
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
    """Full-GEMM FLOPs of the Grams of ``feats`` (2 N C^2 HW per layer)."""
    return sum(2.0 * f.shape[0] * f.shape[1] ** 2 * f.shape[2] * f.shape[3] for f in feats)


def _sym_tiles_fraction(c, device, dtype, block=None):
    """Fraction of a C x C product that fastep's Triton kernel computes: its upper-triangle tiles
    (T (T + 1) / 2 of T^2, T = ceil(C / block), padding included).  Block sizes as chosen by
    kernels/gram.py (64 for fp32 or C <= 64, else 128)."""
    bm = block or (64 if c <= 64 or dtype == torch.float32 else 128)
    t = -(-c // bm)
    return (t * (t + 1) / 2) * bm * bm / (c * c)


def _fastep_gram_flops(feats, op="gram"):
    """FLOPs of the Grams the way fastep computes them on this device and dtype."""
    f0 = feats[0]
    backend = _ext.backend_for(op, f0.device, f0.dtype)
    if backend != "triton":  # cuBLAS / reference: a full batched GEMM
        return _gram_flops(feats)
    return sum(2.0 * f.shape[0] * f.shape[1] ** 2 * f.shape[2] * f.shape[3]
               * _sym_tiles_fraction(f.shape[1], f.device, f.dtype) for f in feats)


_EPS = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def _assert_grams_match(fast, base, feats):
    """fastep's Grams equal the baseline's within the bound of two float32-accumulated dot
    products of length K (eps32 (4 sqrt(K) + 16) |F| |F|^T each) plus one output rounding each."""
    for a, b, f in zip(fast, base, feats):
        k = f.shape[2] * f.shape[3]
        v = f.detach().float().abs().reshape(f.shape[0], f.shape[1], k)
        mag = torch.bmm(v, v.transpose(1, 2)) / (f.shape[1] * k)
        out_eps = _EPS[a.dtype] + _EPS[b.dtype]
        bound = (2 * _EPS[torch.float32] * (4 * k ** 0.5 + 16) + out_eps) * mag + 1e-30
        err = ((a.float() - b.float()).abs() / bound).max().item()
        assert err <= 1.0, f"fastep's Gram differs from the baseline's by {err:.3g}x the bound ({tuple(f.shape)})"


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
    fns = {"baseline": lambda: [_eager_gram(f) for f in feats],
           "fastep": lambda: [fastep.gram(f) for f in feats]}
    _assert_grams_match(fns["fastep"](), fns["baseline"](), feats)  # with this impl's routes
    flops = _fastep_gram_flops(feats) if run == "fastep" else _gram_flops(feats)
    fastep_bench(fns[run], group="gram", case=_id(cases[case_idx]), impl=impl, device=device, flops=flops)


def _assert_losses_match(fns, leaves):
    """fastep's style loss and its gradient equal the baseline's before either is timed: the
    loss to 1e-3 relative (a sum of squared Gram differences, each Gram within its bound), the
    gradients to 1e-2 in relative norm (bf16 features: one bf16 rounding of each gradient)."""
    res = {}
    for name, fn in fns.items():
        for f in leaves:
            f.grad = None
        loss = fn()
        loss.backward()
        res[name] = (loss.detach().double(), [f.grad.double() for f in leaves])
    for f in leaves:
        f.grad = None
    (lf, gf), (lb, gb) = res["fastep"], res["baseline"]
    tol = 1e-2 if leaves[0].dtype != torch.float32 else 1e-4
    assert (lf - lb).abs() <= tol * lb.abs() + 1e-30, (float(lf), float(lb))
    for a, b in zip(gf, gb):
        err = ((a - b).norm() / b.norm()).item()
        assert err <= tol, f"style-loss gradient differs from the baseline's: relative {err:.3g} > {tol}"


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
    fns = {"baseline": lambda: _eager_style_loss(fx, fy), "fastep": lambda: fastep.style_loss(fx, fy)}
    _assert_losses_match(fns, fx)
    # work done: baseline = Grams of x and y + two GEMMs per layer in bmm's backward;
    # fastep = Grams of x and y (its routes) + one GEMM per layer for dL/dx
    full = _gram_flops(fx)
    flops = 4 * full if impl == "baseline" else 2 * _fastep_gram_flops(fx, "gram_diff") + full
    fastep_bench(_backward_runner(fns[impl], fx), group="style_loss", case=_id(cases[case_idx]), impl=impl,
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
    fns = {"baseline": lambda: _eager_style_loss(fx, targets=targets),
           "fastep": lambda: fastep.style_loss(fx, target_grams=targets)}
    _assert_losses_match(fns, fx)
    full = _gram_flops(fx)  # baseline: Gram of x + bmm's two backward GEMMs; fastep: Gram + one
    flops = 3 * full if impl == "baseline" else _fastep_gram_flops(fx, "gram_diff") + full
    fastep_bench(_backward_runner(fns[impl], fx), group="style_loss_tgt", case=_id(cases[case_idx]), impl=impl,
                 device=device, flops=flops)


def _pair_cases(device):
    if device == "cuda":
        # batch sizes, plus mining-sized blocks (1024 rows; 4096 in bf16) where the GEMM is compute-bound
        return [(n, torch.float32) for n in (8, 64, 1024)] + [(n, torch.bfloat16) for n in (8, 64, 1024, 4096)]
    return [(8, torch.float32)]


def _eager_pairwise(x, y):
    """Eager PyTorch in fastep's dtype and layout: one GEMM (float32 accumulation and output)
    and float32 norms, |x|^2 + |y|^2 - 2 x y^T clamped at 0."""
    if x.dtype == torch.float32:
        dots = x @ y.T
    else:
        dots = torch.mm(x, y.T, out_dtype=torch.float32)
    nx = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).square_()
    ny = nx if y is x else torch.linalg.vector_norm(y, dim=1, dtype=torch.float32).square_()
    return (nx[:, None] + ny[None, :]).sub_(dots, alpha=2.0).clamp_min_(0.0)


def _assert_distances_match(fast, base, x, y):
    """Both compute float32-accumulated dots of length D: each distance within
    2 eps32 (4 sqrt(D) + 16) (|x_i|^2 + |y_j|^2) of the other."""
    d = x.shape[1]
    nx = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).square()
    ny = torch.linalg.vector_norm(y, dim=1, dtype=torch.float32).square()
    bound = 2 * _EPS[torch.float32] * (4 * d ** 0.5 + 16) * (nx[:, None] + ny[None, :]) * 2 + 1e-30
    err = ((fast.float() - base.float()).abs() / bound).max().item()
    assert err <= 1.0, f"fastep's distances differ from the baseline's by {err:.3g}x the bound"


@pytest.mark.parametrize("impl", ["baseline", "cdist", "matmul", "fastep", "fastep_triton"])
@pytest.mark.parametrize("case_idx", range(7))
@pytest.mark.parametrize("mode", ["cross", "self"])
def test_bench_pairwise(fastep_bench, device, case_idx, mode, impl, monkeypatch):
    cases = _pair_cases(device)
    if case_idx >= len(cases):
        pytest.skip("no such case on this device")
    n, dtype = cases[case_idx]
    if impl == "cdist" and dtype != torch.float32:
        pytest.skip("torch.cdist has no bf16 path: the baseline is the eager expanded form")
    if dtype != torch.float32 and device == "cpu":
        pytest.skip("half-precision GEMMs with float32 output exist on CUDA only")
    run = _half_triton_route(impl, device, dtype, monkeypatch)
    d = gram_vector_dim(VGG16_CHANNELS)
    x = torch.randn(n, d, device=device).to(dtype)
    y = x if mode == "self" else torch.randn(n, d, device=device).to(dtype)
    full = 2.0 * n * n * d
    fast = (lambda: fastep.pairwise_style_distance(x)) if mode == "self" else (
        lambda: fastep.pairwise_style_distance(x, y))
    fns = {"baseline": lambda: _eager_pairwise(x, y), "cdist": lambda: torch.cdist(x, y).square_(),
           "matmul": lambda: torch.matmul(x, y.T), "fastep": fast}
    _assert_distances_match(fast(), fns["baseline"](), x, y)
    flops = full
    if run == "fastep" and mode == "self" and _ext.backend_for("pairwise_style_distance", x.device, dtype) == "triton":
        # upper-triangle tiles only (block size as kernels/gram.py picks it for M = N = n)
        bm = 16 if n <= 16 else 32 if n <= 32 else 64 if n <= 64 else (64 if dtype == torch.float32 else 128)
        flops = full * _sym_tiles_fraction(n, x.device, dtype, block=bm)
    fastep_bench(fns[run], group=f"pairwise_{mode}", case=f"N{n}_D{d}_{_tag(dtype)}", impl=impl, device=device,
                 flops=flops)
