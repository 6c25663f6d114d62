"""Tests of fastep.ops.gram (gram, style_loss, style_distance, gram_vectors, pairwise distance)
and of the Triton launchers in fastep.kernels.gram.

Every result is compared with the float64 evaluation of the reference definition on fresh random
inputs.  Tolerances are derived from the arithmetic: a float32-accumulated sum of K products
is off by about eps32 * sqrt(K) (times a safety constant) relative to the sum of the absolute
products; results stored in fp16/bf16 add one rounding of that format.
"""
import importlib
import math
import os

import pytest
import torch

import fastep
from fastep import _ext
G = importlib.import_module("fastep.ops.gram")  # (fastep.ops.gram is also the function's name)
from fastep.ops import reference as R

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", "cuda"]  # the cuda items carry the cuda marker (conftest) and skip without a GPU
EPS32 = torch.finfo(torch.float32).eps

not_interpreted = pytest.mark.skipif(INTERPRET, reason="torch.library/compile tests don't run under TRITON_INTERPRET")


def _eps_out(dtype):
    return 0.0 if dtype in (torch.float32, torch.float64) else torch.finfo(dtype).eps


def _acc_tol(k):
    """Relative error of a float32 accumulation of k terms (w.r.t. the sum of |terms|)."""
    return EPS32 * (4.0 * math.sqrt(k) + 16.0)


def assert_elementwise(actual, expected64, mag64, k, out_dtype):
    """|actual - expected| <= eps_out |expected| + acc_tol(k) * mag, elementwise."""
    a = actual.double()
    sub = 0.0 if out_dtype in (torch.float32, torch.float64) else torch.finfo(out_dtype).tiny * _eps_out(out_dtype)
    bound = _eps_out(out_dtype) * expected64.abs() + _acc_tol(k) * mag64 + sub + 1e-30
    err = (a - expected64).abs()
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"error {err.max().item():.3g} exceeds the bound by {worst:.3g}x"


def assert_normwise(actual, expected64, k, out_dtype, factor=1.0):
    """max |actual - expected| <= (eps_out + acc_tol(k)) * factor * max |expected|."""
    a = actual.double()
    scale = expected64.abs().max().item() + 1e-30
    err = (a - expected64).abs().max().item()
    tol = (4 * _eps_out(out_dtype) + _acc_tol(k)) * factor
    sub = 0.0 if out_dtype in (torch.float32, torch.float64) else torch.finfo(out_dtype).tiny * _eps_out(out_dtype)
    assert err <= tol * scale + sub, f"relative error {err / scale:.3g} > {tol:.3g}"


def make_features(shape, dtype=torch.float32, device="cpu", layout="contiguous", requires_grad=False):
    n, c, h, w = shape
    if layout == "contiguous":
        f = torch.randn(shape, device=device).to(dtype)
    elif layout == "channels_last":
        f = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":  # every other channel and column of a larger tensor
        f = torch.randn(n, 2 * c, h, 2 * w + 1, device=device).to(dtype)[:, ::2, :, 1::2]
    elif layout == "transposed_hw":  # (h, w) strides not collapsible
        f = torch.randn(n, c, w, h, device=device).to(dtype).transpose(2, 3)
    else:
        raise AssertionError(layout)
    assert f.shape == shape
    return f.requires_grad_(requires_grad)


def gram_mag(f64):
    n, c, h, w = f64.shape
    a = f64.abs().reshape(n, c, h * w)
    return a @ a.transpose(1, 2) / (c * h * w)


SHAPES = [(2, 3, 4, 5), (1, 17, 1, 1), (3, 70, 3, 5), (1, 16, 8, 8)]
LAYOUTS = ["contiguous", "channels_last", "sliced", "transposed_hw"]


def _dtypes(device):
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


# ----------------------------------------------------------------------------------------------
# gram
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gram_forward_backward(device, shape, layout):
    for dtype in _dtypes(device):
        f = make_features(shape, dtype, device, layout, requires_grad=True)
        g = fastep.gram(f)
        assert g.shape == (shape[0], shape[1], shape[1]) and g.dtype == dtype
        f64 = f.detach().double().requires_grad_(True)
        g64 = R.gram_reference(f64)
        k = shape[2] * shape[3]
        assert_elementwise(g, g64, gram_mag(f64.detach()), k, dtype)
        assert torch.equal(g, g.transpose(1, 2)), "Gram must be exactly symmetric"
        # backward against float64 autograd of the reference
        dg = torch.randn(g.shape, device=device)
        g.backward(dg.to(dtype))
        g64.backward(dg.to(dtype).double())
        assert f.grad.shape == f.shape and f.grad.dtype == dtype
        assert_normwise(f.grad, f64.grad, shape[1], dtype, factor=4.0)


@pytest.mark.cuda
def test_gram_cuda_routes():
    """On CUDA gram runs Triton in float32 and cuBLAS in half precision, pairwise cuBLAS for every
    float dtype, style_loss the fused Triton kernels for every float dtype; float64 the reference."""
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        assert _ext.backend_for("gram", "cuda", dt) == ("triton" if dt == torch.float32 else "cublas")
        assert _ext.backend_for("pairwise_style_distance", "cuda", dt) == "cublas"
        assert _ext.backend_for("style_loss", "cuda", dt) == "triton"
    assert _ext.backend_for("gram", "cuda", torch.float64) == "reference"
    f = torch.randn(2, 64, 16, 16, device="cuda")
    with _ext.force_backend("reference"):
        ref = fastep.gram(f)
    assert_elementwise(fastep.gram(f), ref.double(), gram_mag(f.double()), 256, torch.float32)


@pytest.mark.cuda
def test_gram_cuda_split_k_large_hw():
    # one 64x64 tile per image and H*W = 4096: the launcher splits the reduction
    f = torch.randn(2, 64, 64, 64, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    f64 = f.double()
    assert_elementwise(fastep.gram(f), R.gram_reference(f64), gram_mag(f64), 4096, torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gram_cublas_route(device, dtype, layout):
    """The cuBLAS route (half precision on CUDA) called directly: correct on any device."""
    for shape in SHAPES:
        f = make_features(shape, dtype, device, layout)
        f64 = f.double()
        k = shape[2] * shape[3]
        g = G._gram_cublas(f)
        assert g.dtype == dtype and g.shape == (shape[0], shape[1], shape[1])
        assert_elementwise(g, R.gram_reference(f64), gram_mag(f64), k, dtype)
        g32 = G._gram_cublas(f, torch.float32)
        assert g32.dtype == torch.float32
        assert_elementwise(g32, R.gram_reference(f64), gram_mag(f64), k, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pairwise_cublas_route(device, dtype):
    m, n, d = 23, 9, 257
    x = torch.randn(m, d, device=device).to(dtype)
    y = torch.randn(n, d, device=device).to(dtype)
    y[0] = x[2]
    out = G._pairwise_cublas(x, y)
    assert out.shape == (m, n) and out.dtype == torch.float32 and (out >= 0).all()
    assert ((out.double() - R.pairwise_style_distance_direct(x, y)).abs() <= _pairwise_bound(x, y)).all()
    ds = R.pairwise_style_distance_direct(x)
    for s in (G._pairwise_cublas(x), G._pairwise_blocks(G._pairwise_cublas, x, None, 5)):
        assert (s.diagonal() == 0).all() and torch.equal(s, s.T)
        assert ((s.double() - ds).abs() <= _pairwise_bound(x, None)).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_registered_cublas_impls(device, dtype):
    """The cuBLAS implementations the routes take on CUDA (float32 Gram differences and style loss,
    every pairwise distance), called through the registry on any device, against float64."""
    x = make_features((2, 70, 5, 6), dtype, device, "channels_last")
    y = make_features((2, 70, 5, 6), dtype, device, "channels_last")
    x64, y64 = x.double(), y.double()
    d64 = R.gram_reference(x64) - R.gram_reference(y64)
    mag = gram_mag(x64) + gram_mag(y64)
    assert_elementwise(G.GRAM_DIFF.impls["cublas"](x, y, None), d64, mag, 30, torch.float32)
    t = R.gram_reference(y64).float()
    assert_elementwise(G.GRAM_DIFF.impls["cublas"](x, None, t), d64, mag, 30, torch.float32)
    out = torch.empty((2, 70, 70), device=device)
    G.STYLE_LOSS.impls["cublas"](out, x, y, None)
    assert_elementwise(out, d64, mag, 30, torch.float32)
    a = torch.randn(13, 257, device=device).to(dtype)
    s = G.PAIRWISE.impls["cublas"](a, None, 5)  # blocks of 5 rows: diagonal and mirrored blocks
    assert (s.diagonal() == 0).all() and torch.equal(s, s.T)
    assert ((s.double() - R.pairwise_style_distance_direct(a)).abs() <= _pairwise_bound(a, None)).all()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gemm_routing_cuda(dtype, monkeypatch):
    """On CUDA gram takes the Triton kernel in float32 and cuBLAS in half precision, pairwise
    cuBLAS; FASTEP_BACKEND forces either (gram=cublas / gram=triton,pairwise_style_distance=triton)."""
    from fastep.kernels.gram import gram_launch, pairwise_launch

    f = make_features((2, 96, 12, 12), dtype, "cuda", "channels_last")
    x = torch.randn(40, 333, device="cuda").to(dtype)
    assert torch.equal(fastep.gram(f), (gram_launch if dtype == torch.float32 else G._gram_cublas)(f))
    assert torch.equal(fastep.pairwise_style_distance(x), G._pairwise_cublas(x))
    monkeypatch.setenv("FASTEP_BACKEND", "gram=triton,pairwise_style_distance=triton")
    assert torch.equal(fastep.gram(f), gram_launch(f))
    assert torch.equal(fastep.pairwise_style_distance(x), pairwise_launch(x))
    monkeypatch.setenv("FASTEP_BACKEND", "gram=cublas")
    assert torch.equal(fastep.gram(f), G._gram_cublas(f))


# ----------------------------------------------------------------------------------------------
# style_loss / style_distance
# ----------------------------------------------------------------------------------------------

def _layers(n, chans_hw, dtype, device, layout="contiguous", requires_grad=False):
    return [make_features((n, c, h, w), dtype, device, layout, requires_grad) for c, h, w in chans_hw]


LAYER_SET = [(3, 4, 4), (17, 3, 5), (70, 2, 2), (8, 1, 1)]


def _d_mag(fx64, fy64):
    return gram_mag(fx64) + gram_mag(fy64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_style_loss_forward_backward(device, layout):
    n = 3
    for dtype in _dtypes(device):
        fx = _layers(n, LAYER_SET, dtype, device, layout, requires_grad=True)
        fy = _layers(n, LAYER_SET, dtype, device, layout, requires_grad=True)
        w = torch.rand(len(LAYER_SET)).add(0.1).tolist()
        loss = fastep.style_loss(fx, fy, w)
        assert loss.dim() == 0 and loss.dtype == torch.float32
        fx64 = [f.detach().double().requires_grad_(True) for f in fx]
        fy64 = [f.detach().double().requires_grad_(True) for f in fy]
        ref = R.style_loss_reference(fx64, fy64, w)
        # error bound: d(loss) = sum_l w_l mean(2 |D| dD), |dD| <= acc_tol(k) * (|Fx||Fx|^T + |Fy||Fy|^T)/CHW
        bound = 0.0
        for wl, a, b in zip(w, fx64, fy64):
            d = R.gram_reference(a.detach()) - R.gram_reference(b.detach())
            k = a.shape[2] * a.shape[3]
            bound += wl * (2 * d.abs() * _acc_tol(k) * _d_mag(a.detach(), b.detach())).mean().item()
        assert abs(loss.item() - ref.item()) <= 2 * bound + 1e-12
        loss.backward()
        ref.backward()
        for a, a64 in zip(fx + fy, fx64 + fy64):
            k = a.shape[1] * a.shape[2] * a.shape[3]
            assert a.grad.dtype == dtype and a.grad.shape == a.shape
            assert_normwise(a.grad, a64.grad, k, dtype, factor=8.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("target_kind", ["CC", "1CC", "NCC"])
def test_style_loss_target_grams(device, target_kind):
    n = 2
    fx = _layers(n, LAYER_SET, torch.float32, device, requires_grad=True)
    style = _layers(1 if target_kind != "NCC" else n, LAYER_SET, torch.float32, device)
    targets = [R.gram_reference(s) for s in style]
    if target_kind == "CC":
        targets = [t[0] for t in targets]
    targets = [t.clone().requires_grad_(True) for t in targets]
    loss = fastep.style_loss(fx, target_grams=targets, weights=[1, 2, 3, 4])
    fx64 = [f.detach().double().requires_grad_(True) for f in fx]
    t64 = [t.detach().double().requires_grad_(True) for t in targets]
    ref = R.style_loss_reference(fx64, None, [1, 2, 3, 4], target_grams=t64)
    assert abs(loss.item() - ref.item()) <= 1e-4 * ref.item()
    loss.backward()
    ref.backward()
    for a, a64 in zip(fx + targets, fx64 + t64):
        assert a.grad.shape == a.shape
        assert_normwise(a.grad, a64.grad, 70 * 16, torch.float32, factor=8.0)
    # the same as comparing with the style features themselves (broadcast batch-1 features)
    if target_kind != "NCC":
        loss2 = fastep.style_loss([f.detach() for f in fx], style, weights=[1, 2, 3, 4])
        assert abs(loss2.item() - loss.item()) <= 1e-4 * loss.item()


@pytest.mark.parametrize("device", DEVICES)
def test_style_loss_other_spatial_size(device):
    fx = _layers(2, [(5, 6, 4), (9, 3, 3)], torch.float32, device, requires_grad=True)
    fy = _layers(2, [(5, 3, 7), (9, 1, 1)], torch.float32, device)
    loss = fastep.style_loss(fx, fy)
    fx64 = [f.detach().double().requires_grad_(True) for f in fx]
    ref = R.style_loss_reference(fx64, [f.double() for f in fy])
    assert abs(loss.item() - ref.item()) <= 1e-4 * ref.item()
    loss.backward()
    ref.backward()
    for a, a64 in zip(fx, fx64):
        assert_normwise(a.grad, a64.grad, 100, torch.float32, factor=8.0)


@pytest.mark.parametrize("device", DEVICES)
def test_style_distance(device):
    n = 4
    fx = _layers(n, LAYER_SET, torch.float32, device, "channels_last", requires_grad=True)
    fy = _layers(1, LAYER_SET, torch.float32, device)  # one reference image, broadcast
    w = [0.5, 1.0, 2.0, 1.5]
    d = G.style_distance(fx, fy, w)
    assert d.shape == (n,) and d.dtype == torch.float32
    fx64 = [f.detach().double().requires_grad_(True) for f in fx]
    ref = R.style_distance_reference(fx64, [f.double().expand(n, -1, -1, -1) for f in fy], w)
    assert_normwise(d, ref.detach(), 1000, torch.float32, factor=8.0)
    # batch mean of the per-pair distance is the style loss
    assert abs(fastep.style_loss(fx, fy, w).item() - d.mean().item()) <= 1e-5 * d.mean().item()
    gd = torch.rand(n, device=device)
    d.backward(gd)
    ref.backward(gd.double())
    for a, a64 in zip(fx, fx64):
        assert_normwise(a.grad, a64.grad, 1000, torch.float32, factor=8.0)


# ----------------------------------------------------------------------------------------------
# gram_vectors / gram_vector_dim / pairwise_style_distance
# ----------------------------------------------------------------------------------------------

def test_gram_vector_dim():
    assert G.gram_vector_dim([64, 128, 256, 512, 512]) == 305888
    assert G.gram_vector_dim([3]) == 6 and G.gram_vector_dim((1, 2)) == 4
    c = [int(v) for v in torch.randint(1, 100, (4,))]
    assert G.gram_vector_dim(c) == sum(x * (x + 1) // 2 for x in c)


@pytest.mark.parametrize("device", DEVICES)
def test_gram_vectors(device):
    n = 3
    fx = _layers(n, LAYER_SET, torch.float32, device, "channels_last", requires_grad=True)
    fy = _layers(n, LAYER_SET, torch.float32, device)
    w = torch.rand(len(LAYER_SET)).add(0.1).tolist()
    vx = fastep.gram_vectors(fx, w)
    assert vx.shape == (n, G.gram_vector_dim([c for c, _, _ in LAYER_SET])) and vx.dtype == torch.float32
    fx64 = [f.detach().double().requires_grad_(True) for f in fx]
    v64 = R.gram_vectors_reference(fx64, w)
    assert_normwise(vx, v64.detach(), 16, torch.float32, factor=4.0)
    # |v_x - v_y|^2 is the style distance (float64, to rounding)
    vy64 = R.gram_vectors_reference([f.double() for f in fy], w)
    direct = R.style_distance_reference([f.double() for f in fx], [f.double() for f in fy], w)
    torch.testing.assert_close((v64.detach() - vy64).square().sum(1), direct, rtol=1e-10, atol=0)
    # storage dtype
    vb = fastep.gram_vectors([f.detach() for f in fx], w, out_dtype=torch.bfloat16)
    assert vb.dtype == torch.bfloat16
    torch.testing.assert_close(vb.float(), vx.detach(), rtol=1e-2, atol=1e-2 * vx.abs().max().item())
    # backward
    gv = torch.randn_like(vx)
    vx.backward(gv)
    v64.backward(gv.double())
    for a, a64 in zip(fx, fx64):
        assert_normwise(a.grad, a64.grad, 1000, torch.float32, factor=8.0)


def _pairwise_bound(x, y):
    """|d - d_direct| <= c * eps32 * (|x|^2 + |y|^2): the documented cancellation bound."""
    k = x.shape[1]
    nx = x.double().square().sum(1)
    ny = (x if y is None else y).double().square().sum(1)
    return _acc_tol(k) * 2 * (nx[:, None] + ny[None, :])


@pytest.fixture(params=["cublas", "triton"])
def gemm_route(request, monkeypatch):
    """Both routes of pairwise_style_distance on CUDA (cuBLAS, or the Triton kernel forced);
    CPU has one route."""
    if request.param == "triton":
        monkeypatch.setenv("FASTEP_BACKEND", "pairwise_style_distance=triton")
    return request.param


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pairwise_style_distance(device, dtype, gemm_route):
    if device == "cpu" and gemm_route == "triton":
        pytest.skip("the Triton route of CUDA tensors")
    m, n, d = 19, 7, 300
    x = torch.randn(m, d, device=device).to(dtype)
    y = torch.randn(n, d, device=device).to(dtype)
    y[0] = x[3]                         # an exact duplicate ...
    y[1] = (x[5].float() + 1e-3 * torch.randn(d, device=device)).to(dtype)  # ... and a near one
    out = fastep.pairwise_style_distance(x, y)
    assert out.shape == (m, n) and out.dtype == torch.float32
    direct = R.pairwise_style_distance_direct(x, y)
    err = (out.double() - direct).abs()
    assert (err <= _pairwise_bound(x, y)).all(), (err / _pairwise_bound(x, y)).max()
    assert (out >= 0).all()
    # self-distance: exact-zero diagonal, symmetric, blockwise == one block
    s = fastep.pairwise_style_distance(x)
    assert (s.diagonal() == 0).all()
    torch.testing.assert_close(s, s.T, rtol=0, atol=0)
    ds = R.pairwise_style_distance_direct(x)
    assert ((s.double() - ds).abs() <= _pairwise_bound(x, None)).all()
    sb = fastep.pairwise_style_distance(x, block=5)
    assert ((sb.double() - ds).abs() <= _pairwise_bound(x, None)).all()
    assert (sb.diagonal() == 0).all()
    ob = fastep.pairwise_style_distance(x, y, block=4)
    assert ((ob.double() - direct).abs() <= _pairwise_bound(x, y)).all()


@pytest.mark.parametrize("device", DEVICES)
def test_pairwise_backward(device):
    m, n, d = 6, 5, 40
    x = torch.randn(m, d, device=device, requires_grad=True)
    y = torch.randn(n, d, device=device, requires_grad=True)
    out = fastep.pairwise_style_distance(x, y)
    x64 = x.detach().double().requires_grad_(True)
    y64 = y.detach().double().requires_grad_(True)
    ref = R.pairwise_style_distance_direct(x64, y64)
    g = torch.randn(m, n, device=device)
    out.backward(g)
    ref.backward(g.double())
    assert_normwise(x.grad, x64.grad, d, torch.float32, factor=8.0)
    assert_normwise(y.grad, y64.grad, d, torch.float32, factor=8.0)
    # self-distance
    x.grad = None
    x64.grad = None
    s = fastep.pairwise_style_distance(x)
    gs = torch.randn(m, m, device=device)
    s.backward(gs)
    R.pairwise_style_distance_direct(x64).backward(gs.double())
    assert_normwise(x.grad, x64.grad, d, torch.float32, factor=8.0)


@pytest.mark.parametrize("device", DEVICES)
def test_vectors_then_pairwise_equals_style_distance(device):
    n = 5
    fx = _layers(n, LAYER_SET, torch.float32, device)
    v = fastep.gram_vectors(fx)
    dmat = fastep.pairwise_style_distance(v)
    perm = torch.randperm(n)
    direct = G.style_distance(fx, [f[perm] for f in fx])
    picked = dmat[torch.arange(n), perm.to(device)]
    bound = _pairwise_bound(v, None)[torch.arange(n), perm.to(device)]
    assert ((picked.double() - direct.double()).abs() <= bound + 1e-6 * direct.abs().double()).all()


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------

def test_bad_inputs():
    f = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="features"):
        fastep.gram(torch.randn(4, 3, 3))
    with pytest.raises(TypeError, match="features"):
        fastep.gram(torch.ones(2, 4, 3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="features.*empty batch"):
        fastep.gram(torch.randn(0, 4, 3, 3))
    with pytest.raises(ValueError, match=r"feats_y: expected 2 layers"):
        fastep.style_loss([f, f], [f])
    with pytest.raises(ValueError, match=r"feats_y\[0\].*channels"):
        fastep.style_loss([f], [torch.randn(2, 5, 3, 3)])
    with pytest.raises(ValueError, match=r"feats_y\[0\].*batch"):
        fastep.style_loss([f], [torch.randn(3, 4, 3, 3)])
    with pytest.raises(ValueError, match=r"feats_x\[1\].*batch"):
        fastep.style_loss([f, torch.randn(3, 4, 3, 3)], [f, f])
    with pytest.raises(ValueError, match="weights"):
        fastep.style_loss([f], [f], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="feats_y / target_grams"):
        fastep.style_loss([f])
    with pytest.raises(ValueError, match=r"target_grams\[0\]"):
        fastep.style_loss([f], target_grams=[torch.randn(5, 5)])
    with pytest.raises(TypeError, match=r"feats_x\[0\]"):
        fastep.style_loss([f.long()], [f])
    with pytest.raises(ValueError, match=r"feats_x\[0\].*4-D"):
        G.style_distance([f[0]], [f])
    with pytest.raises(ValueError, match="features"):
        fastep.gram_vectors([])
    with pytest.raises(ValueError, match="channels"):
        G.gram_vector_dim([64, 0])
    with pytest.raises(ValueError, match="gx"):
        fastep.pairwise_style_distance(torch.randn(3))
    with pytest.raises(TypeError, match="gx"):
        fastep.pairwise_style_distance(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="gy"):
        fastep.pairwise_style_distance(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="gx"):
        fastep.pairwise_style_distance(torch.randn(0, 4))
    with pytest.raises(ValueError, match="block"):
        fastep.pairwise_style_distance(torch.randn(3, 4), block=0)


# ----------------------------------------------------------------------------------------------
# torch.library plumbing (normal run only)
# ----------------------------------------------------------------------------------------------

@not_interpreted
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    f = torch.randn(2, 5, 3, 4, device=device, requires_grad=True)
    y = torch.randn(2, 5, 3, 4, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastep.gram.default, (f.contiguous(memory_format=torch.channels_last), None))
    torch.library.opcheck(torch.ops.fastep.gram_diff.default, (f, y, None))
    t = torch.randn(5, 5, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastep.gram_diff.default, (f, None, t))
    f2 = torch.randn(2, 7, 2, 2, device=device, requires_grad=True)
    y2 = torch.randn(2, 7, 2, 2, device=device)
    torch.library.opcheck(torch.ops.fastep.style_loss.default, ([f, f2], [y, y2], [], [1.0, 0.5]))
    torch.library.opcheck(torch.ops.fastep.style_loss.default, ([f], [], [t], [2.0]))
    x = torch.randn(4, 30, device=device, requires_grad=True)
    z = torch.randn(3, 30, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastep.pairwise_style_distance.default, (x, z, 2))
    if device == "cuda":
        torch.library.opcheck(torch.ops.fastep.pairwise_style_distance.default, (x, None, 8192))


@not_interpreted
def test_gradcheck_float64():
    """torch.autograd.gradcheck of the custom ops' backward formulas (float64, CPU)."""
    kw = dict(dtype=torch.float64, requires_grad=True)
    x = [torch.randn(2, 3, 2, 3, **kw), torch.randn(2, 4, 1, 2, **kw)]
    y = [torch.randn(2, 3, 2, 3, **kw), torch.randn(2, 4, 3, 1, **kw)]
    t = [torch.randn(3, 3, **kw), torch.randn(1, 4, 4, **kw)]
    op = torch.ops.fastep.style_loss.default
    # both outputs (the loss and the flat G(x) - G(y) buffer) are differentiated
    assert torch.autograd.gradcheck(lambda a, b, c, d: op([a, b], [c, d], [], [0.7, 1.3]), (*x, *y))
    assert torch.autograd.gradcheck(lambda a, b, c, d: op([a, b], [], [c, d], [0.7, 1.3]), (*x, *t))
    assert torch.autograd.gradcheck(lambda a, c: torch.ops.fastep.gram_diff(a, c, None), (x[0], y[0]))
    assert torch.autograd.gradcheck(lambda a: torch.ops.fastep.gram(a, None), (x[1],))
    v = torch.randn(3, 5, **kw)
    w = torch.randn(4, 5, **kw)
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.fastep.pairwise_style_distance(a, b, 2), (v, w))
    assert torch.autograd.gradcheck(lambda a: torch.ops.fastep.pairwise_style_distance(a, None, 8), (v,))


@not_interpreted
def test_torch_compile_cpu():
    torch._dynamo.reset()

    def step(fx, fy):
        loss = fastep.style_loss(fx, fy, [1.0, 0.5])
        v = fastep.gram_vectors([f.detach() for f in fx])
        return loss, fastep.pairwise_style_distance(v)

    compiled = torch.compile(step, fullgraph=True)
    fx = [torch.randn(2, 6, 4, 4, requires_grad=True), torch.randn(2, 9, 2, 2, requires_grad=True)]
    fy = [torch.randn(2, 6, 4, 4), torch.randn(2, 9, 2, 2)]
    loss, dmat = compiled(fx, fy)
    loss.backward()
    grads = [f.grad.clone() for f in fx]
    for f in fx:
        f.grad = None
    loss_e, dmat_e = step(fx, fy)
    loss_e.backward()
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(dmat, dmat_e)
    for g, f in zip(grads, fx):
        torch.testing.assert_close(g, f.grad)


def test_split_heuristic():
    from fastep.kernels.gram import choose_split

    assert choose_split(1000, 65536, 264) == (1, 65536)
    split, chunk = choose_split(8, 65536, 264)
    assert split > 1 and chunk % 128 == 0 and split * chunk >= 65536 > (split - 1) * chunk
    assert choose_split(1, 100, 264) == (1, 128)


# ----------------------------------------------------------------------------------------------
# Triton launchers, called directly (CUDA, or CPU under TRITON_INTERPRET=1)
# ----------------------------------------------------------------------------------------------

LAUNCH_CASES = [  # shape, layout, split_k
    ((2, 3, 4, 5), "contiguous", None),
    ((1, 17, 1, 1), "contiguous", None),
    ((1, 70, 3, 5), "channels_last", 3),
    ((1, 40, 6, 4), "transposed_hw", 2),
    ((2, 20, 5, 3), "sliced", 1),
    ((1, 33, 8, 8), "channels_last", 4),
]


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", LAUNCH_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_gram_launch(triton_device, dtype, case):
    from fastep.kernels.gram import gram_launch

    shape, layout, split = case
    x = make_features(shape, dtype, triton_device, layout)
    y = make_features(shape, dtype, triton_device, layout)
    k = shape[2] * shape[3]
    x64, y64 = x.double(), y.double()
    g = gram_launch(x, split_k=split)
    assert g.dtype == dtype
    assert_elementwise(g, R.gram_reference(x64), gram_mag(x64), k, dtype)
    assert torch.equal(g, g.transpose(1, 2))
    d = gram_launch(x, y, split_k=split, out_dtype=torch.float32)
    assert d.dtype == torch.float32
    assert_elementwise(d, R.gram_reference(x64) - R.gram_reference(y64), gram_mag(x64) + gram_mag(y64),
                       k, torch.float32)
    if shape[1] > 32:
        return
    s = gram_launch(x, scale=0.5, split_k=split, out_dtype=torch.float32)
    assert_elementwise(s, 0.5 * shape[1] * k * R.gram_reference(x64),
                       0.5 * shape[1] * k * gram_mag(x64), k, torch.float32)


PAIR_CASES = [(5, 7, 100, None), (34, 33, 160, 3), (1, 1, 10, None), (37, 37, 64, 2), (18, 50, 129, None)]


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", PAIR_CASES, ids=str)
def test_pairwise_launch(triton_device, dtype, case):
    from fastep.kernels.gram import pairwise_launch

    m, n, d, split = case
    x = torch.randn(m, d, device=triton_device).to(dtype)
    y = torch.randn(n, d, device=triton_device).to(dtype)
    out = pairwise_launch(x, y, split_k=split)
    assert out.shape == (m, n) and out.dtype == torch.float32
    ref = R.pairwise_style_distance_direct(x, y)
    assert ((out.double() - ref).abs() <= _pairwise_bound(x, y)).all()
    s = pairwise_launch(x, split_k=split)
    assert (s.diagonal() == 0).all() and torch.equal(s, s.T)
    assert ((s.double() - R.pairwise_style_distance_direct(x)).abs() <= _pairwise_bound(x, None)).all()
    # a strided (non-contiguous) view
    xt = torch.randn(d, m, device=triton_device).to(dtype).T
    out_t = pairwise_launch(xt, y, split_k=split)
    assert ((out_t.double() - R.pairwise_style_distance_direct(xt, y)).abs() <= _pairwise_bound(xt, y)).all()


@pytest.mark.triton
def test_public_ops_on_triton_backend(triton_device):
    """The public ops through the Triton backend (on CPU: forced, under the interpreter)."""
    layers = [(3, 4, 4), (17, 2, 3)]
    fx = _layers(2, layers, torch.float32, triton_device, "channels_last", requires_grad=True)
    fy = _layers(2, layers, torch.float32, triton_device)
    with _ext.force_backend("triton"):
        assert _ext.backend_for("gram_diff", triton_device) == "triton"
        loss = fastep.style_loss(fx, fy, [1.0, 2.0])
        loss.backward()
        v = fastep.gram_vectors([f.detach() for f in fx])
        dmat = fastep.pairwise_style_distance(v, fastep.gram_vectors(fy))
    fx64 = [f.detach().double().requires_grad_(True) for f in fx]
    ref = R.style_loss_reference(fx64, [f.double() for f in fy], [1.0, 2.0])
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-4 * ref.item()
    for a, a64 in zip(fx, fx64):
        assert_normwise(a.grad, a64.grad, 100, torch.float32, factor=8.0)
    direct = R.style_distance_reference([f.double() for f in fx], [f.double() for f in fy])
    v64 = R.gram_vectors_reference([f.double() for f in fx])
    bound = _pairwise_bound(v64, R.gram_vectors_reference([f.double() for f in fy])).diagonal()
    assert ((dmat.diagonal().double() - direct).abs() <= bound + 1e-6 * direct).all()


# ----------------------------------------------------------------------------------------------
# CUDA only: autotuned kernels, VGG-like sizes (split-K, several tile pairs), fp32 dot modes
# ----------------------------------------------------------------------------------------------

# VGG-like shapes of the H100 run where the autotuned float32 kernels were reported FAILED
VGG_GRAM_CASES = [((2, 64, 96, 96), "channels_last"), ((3, 256, 24, 24), "contiguous"),
                  ((2, 512, 16, 16), "channels_last"), ((2, 130, 20, 20), "sliced")]
VGG_PAIR_CASES = [(8, 8), (64, 40), (300, 260)]
H100_PROGRAMS = 2 * 132  # what the launchers' split-K heuristic aims at on an H100


@pytest.mark.triton
@pytest.mark.parametrize("block_k", [32, 64, 128])  # every BLOCK_K of the autotune configs
@pytest.mark.parametrize("case", VGG_GRAM_CASES, ids=str)
def test_gram_kernel_autotune_configs_at_vgg_shapes(triton_device, case, block_k):
    """The float32 Gram kernel at the failing H100 shapes with the CUDA launcher's tile (64 x 64)
    and split-K choices and each autotuned BLOCK_K: masking, split partial sums, mirrored tiles
    and strided layouts against float64 (the interpreter cannot check GPU code generation)."""
    from fastep.kernels.gram import choose_split, gram_launch

    shape, layout = case
    n, c, h, w = shape
    k = h * w
    tiles = -(-c // 64)
    split, _ = choose_split(n * tiles * (tiles + 1) // 2, k, H100_PROGRAMS, min_chunk=512)
    x = make_features(shape, torch.float32, triton_device, layout)
    y = make_features(shape, torch.float32, triton_device, layout)
    x64, y64 = x.double(), y.double()
    g = gram_launch(x, block_m=64, block_k=block_k, split_k=split)
    assert_elementwise(g, R.gram_reference(x64), gram_mag(x64), k, torch.float32)
    assert torch.equal(g, g.transpose(1, 2))
    d = gram_launch(x, y, out_dtype=torch.float32, block_m=64, block_k=block_k, split_k=split)
    assert_elementwise(d, R.gram_reference(x64) - R.gram_reference(y64),
                       gram_mag(x64) + gram_mag(y64), k, torch.float32)


@pytest.mark.triton
@pytest.mark.parametrize("block_k", [32, 128])
@pytest.mark.parametrize("case", VGG_PAIR_CASES[:2], ids=str)
def test_pairwise_kernel_autotune_configs_at_vgg_shapes(triton_device, case, block_k):
    from fastep.kernels.gram import choose_split, pairwise_launch

    m, n = case
    d = G.gram_vector_dim([64, 128, 256])
    bm = 16 if min(m, n) <= 16 else 32 if min(m, n) <= 32 else 64
    tm, tn = -(-m // bm), -(-n // bm)
    split, _ = choose_split(tm * tn, d, H100_PROGRAMS, min_chunk=2048)
    a = torch.randn(m, d, device=triton_device)
    b = torch.randn(n, d, device=triton_device)
    out = pairwise_launch(a, b, block_m=bm, block_k=block_k, split_k=split)
    assert ((out.double() - R.pairwise_style_distance_direct(a, b)).abs() <= _pairwise_bound(a, b)).all()


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.parametrize("fp32_dot", ["tf32x3", "ieee"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", VGG_GRAM_CASES, ids=str)
def test_cuda_autotuned_vgg_like(monkeypatch, case, fp32_dot, dtype):
    """The autotuned Gram kernels at VGG-like sizes (one shape per test, so that a slow first
    autotuning compile cannot be mistaken for a wrong result)."""
    from fastep.kernels.gram import gram_launch

    if dtype != torch.float32 and fp32_dot != "tf32x3":
        pytest.skip("the fp32 dot mode only matters for float32")
    monkeypatch.setenv("FASTEP_FP32_DOT", fp32_dot)
    shape, layout = case
    x = make_features(shape, dtype, "cuda", layout)
    y = make_features(shape, dtype, "cuda", layout)
    x64, y64 = x.double(), y.double()
    k = shape[2] * shape[3]
    g = gram_launch(x, autotune=True)
    assert_elementwise(g, R.gram_reference(x64), gram_mag(x64), k, dtype)
    d = gram_launch(x, y, out_dtype=torch.float32, autotune=True)
    assert_elementwise(d, R.gram_reference(x64) - R.gram_reference(y64),
                       gram_mag(x64) + gram_mag(y64), k, torch.float32)


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.parametrize("fp32_dot", ["tf32x3", "ieee"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_autotuned_pairwise_vgg_like(monkeypatch, fp32_dot, dtype):
    from fastep.kernels.gram import pairwise_launch

    if dtype != torch.float32 and fp32_dot != "tf32x3":
        pytest.skip("the fp32 dot mode only matters for float32")
    monkeypatch.setenv("FASTEP_FP32_DOT", fp32_dot)
    d = G.gram_vector_dim([64, 128, 256])
    for m, n in VGG_PAIR_CASES:
        a = torch.randn(m, d, device="cuda").to(dtype)
        b = torch.randn(n, d, device="cuda").to(dtype)
        out = pairwise_launch(a, b, autotune=True)
        ref = R.pairwise_style_distance_direct(a, b)
        assert ((out.double() - ref).abs() <= _pairwise_bound(a, b)).all()
        s = pairwise_launch(a, autotune=True)
        assert (s.diagonal() == 0).all() and torch.equal(s, s.T)
        assert ((s.double() - R.pairwise_style_distance_direct(a)).abs() <= _pairwise_bound(a, None)).all()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_style_loss_vgg_like(dtype):
    """VGG16-like layers at 64 x 64 (relu1_2 takes the split-K path) against float64, fwd + bwd."""
    layers = [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]
    fx = _layers(2, layers, dtype, "cuda", "channels_last", requires_grad=True)
    fy = _layers(2, layers, dtype, "cuda", "channels_last")
    for f in fx + fy:
        f.data.relu_()
    loss = fastep.style_loss(fx, fy)
    fx64 = [f.detach().double().requires_grad_(True) for f in fx]
    ref = R.style_loss_reference(fx64, [f.double() for f in fy])
    assert abs(loss.item() - ref.item()) <= 1e-3 * ref.item()
    loss.backward()
    ref.backward()
    for a, a64 in zip(fx, fx64):
        assert a.grad.is_contiguous(memory_format=torch.channels_last)
        assert_normwise(a.grad, a64.grad, 4096, dtype, factor=8.0)


def test_fixed_config_launch_steps_down_the_pipelining_depth(monkeypatch):
    # On an H200 a BLOCK_K = 128 float32 tile at 3 stages asks for more shared memory than the
    # device has; the fixed-config launch then takes the next depth, and an OutOfResources is
    # never mistaken for a tf32x3 compile failure (which would switch the process to IEEE dots).
    from triton.runtime.errors import OutOfResources

    from fastep.kernels import gram as K

    monkeypatch.setattr(K, "_FIXED_STAGES", (3, 2, 1))
    calls = []

    class Kernel:
        def __init__(self, fits):
            self.fits = fits

        def __getitem__(self, grid):
            def launch(*args, num_stages, **kw):
                calls.append(num_stages)
                if num_stages > self.fits:
                    raise OutOfResources(98304 * num_stages, 232448, "shared memory")
            return launch

    K._launch_fixed(Kernel(fits=2), (1,), (), {}, PREC=K.PREC_TF32X3, BLOCK_K=128, num_warps=4)
    assert calls == [3, 2]
    calls.clear()
    with pytest.raises(OutOfResources):
        K._launch_fixed(Kernel(fits=0), (1,), (), {}, BLOCK_K=128)
    assert calls == [3, 2, 1]

    monkeypatch.setattr(K, "_TF32X3_BROKEN", False)

    def too_big(prec):
        raise OutOfResources(327680, 232448, "shared memory")

    with pytest.raises(OutOfResources):
        K._launch(too_big, K.PREC_TF32X3)
    assert K._TF32X3_BROKEN is False
