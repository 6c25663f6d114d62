"""fastep.ops.reductions: weighted_feature_distance and lpips_distance (op, reference, Triton)."""
import os

import pytest
import torch

from fastep.ops import reference as ref
from fastep.ops.reductions import lpips_distance, weighted_feature_distance

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# odd shapes: C not a multiple of 16, H = W = 1, batch 1
SHAPES = [(2, 5, 7, 9), (2, 16, 4, 3), (2, 33, 2, 2), (2, 3, 1, 1)]
LP_SHAPES = [(3, 40, 5, 6), (3, 17, 1, 1), (3, 64, 3, 7)]


def _feats(shapes, dtype=torch.float32, device="cpu", channels_last=(1,)):
    xs, ys = [], []
    for i, s in enumerate(shapes):
        x, y = torch.randn(s, device=device, dtype=dtype), torch.randn(s, device=device, dtype=dtype)
        if i in channels_last:
            x, y = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
        xs.append(x)
        ys.append(y)
    return xs, ys


def _wfd64(xs, ys, w, p):
    """float64 definition (autograd-able)."""
    return sum(wi * ((x.double() - y.double()).abs() ** p).mean() for wi, x, y in zip(w, xs, ys))


def _lpips64(f0s, f1s, ws, eps=1e-10):
    import lpips

    total = 0
    for a, b, w in zip(f0s, f1s, ws):
        d = (lpips.normalize_tensor(a.double(), eps) - lpips.normalize_tensor(b.double(), eps)) ** 2
        conv = torch.nn.functional.conv2d(d, w.double().view(1, -1, 1, 1))
        total = total + conv.mean((2, 3)).view(-1)
    return total


# --------------------------------------------------------------------------------------------
# weighted_feature_distance: op (CPU backend) and reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("impl", ["op", "reference"])
def test_wfd_forward_backward(p, impl):
    xs, ys = _feats(SHAPES)
    xs[0] = torch.randn(2, 9, 7, 5).transpose(1, 3)  # non-contiguous
    ys[0] = torch.randn(2, 5, 7, 9)
    w = [0.5, 1.0, 2.0, 0.25]
    x64 = [x.detach().double().requires_grad_() for x in xs]
    y64 = [y.detach().double().requires_grad_() for y in ys]
    expected = _wfd64(x64, y64, w, p)
    expected.backward(torch.tensor(1.7, dtype=torch.float64))
    xr = [x.clone().requires_grad_() for x in xs]
    yr = [y.clone().requires_grad_() for y in ys]
    if impl == "op":
        out = weighted_feature_distance(xr, yr, w, p)
        out.backward(torch.tensor(1.7))
        gx, gy = [x.grad for x in xr], [y.grad for y in yr]
    else:
        out = ref.weighted_feature_distance_reference(xs, ys, w, p)
        gx, gy = ref.weighted_feature_distance_backward_reference(torch.tensor(1.7), xs, ys, w, p, True, True)
    assert out.dtype == torch.float32 and out.dim() == 0
    n = sum(x.numel() for x in xs)
    torch.testing.assert_close(out.double(), expected.detach(), rtol=1e-6 * n ** 0.5, atol=1e-6)
    for a, b in zip(gx, x64):
        torch.testing.assert_close(a.double(), b.grad, rtol=1e-5, atol=1e-7)
    for a, b in zip(gy, y64):
        torch.testing.assert_close(a.double(), b.grad, rtol=1e-5, atol=1e-7)


def test_wfd_float64_and_grad_only_where_needed():
    xs, ys = _feats(SHAPES[:2], dtype=torch.float64)
    xs = [x.requires_grad_() for x in xs]
    out = weighted_feature_distance(xs, ys, [1.0, 3.0], 2)
    assert out.dtype == torch.float64
    out.backward()
    assert all(y.grad is None for y in ys)
    assert torch.autograd.gradcheck(lambda a, b: weighted_feature_distance([a, b], ys, [1.0, 3.0], 2),
                                    [x.detach().requires_grad_() for x in xs])


def test_wfd_many_layers_and_mixed_dtypes_are_chunked():
    xs, ys = _feats([(2, 3, 4, 4)] * 8)
    xs[5], ys[5] = xs[5].double(), ys[5].double()
    w = [float(i + 1) for i in range(8)]
    out = weighted_feature_distance(xs, ys, w, 1)
    torch.testing.assert_close(out.double(), _wfd64(xs, ys, w, 1), rtol=1e-5, atol=1e-6)


def test_wfd_bad_input():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="ys"):
        weighted_feature_distance([x], [x, x])
    with pytest.raises(ValueError, match="ys\\[0\\]"):
        weighted_feature_distance([x], [x[:1]])
    with pytest.raises(ValueError, match="weights"):
        weighted_feature_distance([x], [x], [1.0, 2.0])
    with pytest.raises(ValueError, match="p"):
        weighted_feature_distance([x], [x], p=3)
    with pytest.raises(TypeError, match="xs\\[0\\]"):
        weighted_feature_distance([x.long()], [x])
    with pytest.raises(ValueError, match="xs"):
        weighted_feature_distance([], [])


# --------------------------------------------------------------------------------------------
# lpips_distance: op (CPU backend) and reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["op", "reference"])
def test_lpips_distance_forward_backward(impl):
    f0s = [torch.randn(s) for s in LP_SHAPES]
    f1s = [torch.randn(s) for s in LP_SHAPES]
    f1s[0] = f1s[0].to(memory_format=torch.channels_last)
    f0s[2] = torch.randn(3, 7, 3, 64).permute(0, 3, 2, 1)  # non-contiguous
    ws = [torch.rand(s[1]) for s in LP_SHAPES]
    a64 = [f.double().requires_grad_() for f in f0s]
    b64 = [f.double().requires_grad_() for f in f1s]
    expected = _lpips64(a64, b64, ws)
    go = torch.randn(3, dtype=torch.float64)
    expected.backward(go)
    if impl == "op":
        a = [f.clone().requires_grad_() for f in f0s]
        b = [f.clone().requires_grad_() for f in f1s]
        out = lpips_distance(a, b, ws)
        out.backward(go.float())
        g0, g1 = [t.grad for t in a], [t.grad for t in b]
    else:
        out = ref.lpips_distance_reference(f0s, f1s, ws)
        g0, g1 = ref.lpips_distance_backward_reference(go.float(), f0s, f1s, ws)
    assert out.shape == (3,) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected.detach(), rtol=1e-5, atol=1e-7)
    for g, t in zip(g0 + g1, a64 + b64):
        torch.testing.assert_close(g.double(), t.grad, rtol=1e-4, atol=1e-6)


def test_lpips_distance_gradcheck_float64():
    f0 = torch.randn(2, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    f1 = torch.randn(2, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: lpips_distance([a], [b], [w]), [f0, f1])


def test_lpips_distance_bad_input():
    a = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="lin_weights"):
        lpips_distance([a], [a], [torch.ones(5)])
    with pytest.raises(ValueError, match="f1s"):
        lpips_distance([a], [a[:, :2]], [torch.ones(4)])
    with pytest.raises(ValueError, match="f1s"):
        lpips_distance([a, a], [a], [torch.ones(4)])
    with pytest.raises(TypeError, match="f0s"):
        lpips_distance([a.int()], [a], [torch.ones(4)])


# --------------------------------------------------------------------------------------------
# opcheck and torch.compile (normal run only: fake tensors would hit the interpreter)
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(INTERPRET, reason="opcheck/compile run in the normal run only")
def test_opcheck():
    xs, ys = _feats(SHAPES[:3])
    xs = [x.requires_grad_() for x in xs]
    torch.library.opcheck(torch.ops.fastep.weighted_feature_distance.default, (xs, ys, [1.0, 0.5, 2.0], 1))
    torch.library.opcheck(torch.ops.fastep.weighted_feature_distance.default, (xs, ys, [1.0, 0.5, 2.0], 2))
    f0 = [torch.randn(2, 5, 3, 4, requires_grad=True), torch.randn(2, 7, 2, 2, requires_grad=True)]
    f1 = [torch.randn(2, 5, 3, 4, requires_grad=True), torch.randn(2, 7, 2, 2)]
    ws = [torch.rand(5), torch.rand(7)]
    torch.library.opcheck(torch.ops.fastep.lpips_distance.default, (f0, f1, ws, 1e-10))


@pytest.mark.skipif(INTERPRET, reason="opcheck/compile run in the normal run only")
def test_torch_compile_traces_ops():
    torch._dynamo.reset()
    xs, ys = _feats(SHAPES[:2])
    ws = [torch.rand(5), torch.rand(16)]

    def f(a, b, c, d):
        return weighted_feature_distance([a, b], [c, d], [0.5, 2.0], 1) + lpips_distance([a], [c], [ws[0]]).sum()

    a, b = xs[0].clone().requires_grad_(), xs[1].clone().requires_grad_()
    out = torch.compile(f, backend="aot_eager", fullgraph=True)(a, b, ys[0], ys[1])
    out.backward()
    a2, b2 = xs[0].clone().requires_grad_(), xs[1].clone().requires_grad_()
    expected = f(a2, b2, ys[0], ys[1])
    expected.backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


# --------------------------------------------------------------------------------------------
# Triton launchers, called directly (CUDA, or CPU under TRITON_INTERPRET=1)
# --------------------------------------------------------------------------------------------
@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("p", [1, 2])
def test_triton_wfd(triton_device, dtype, p):
    from fastep.kernels import reductions as K

    xs, ys = _feats(SHAPES + [(1, 3, 40, 41)], dtype=dtype, device=triton_device)
    w = [0.5, 1.0, 2.0, 0.25, 1 / 32]
    out = K.weighted_feature_distance_fwd(xs, ys, w, p)
    assert out.dtype == torch.float32
    expected = _wfd64(xs, ys, w, p)
    torch.testing.assert_close(out.double().cpu(), expected.cpu(), rtol=2e-5, atol=1e-6)
    go = torch.tensor(1.3, device=triton_device)
    gx, gy = K.weighted_feature_distance_bwd(go, xs, ys, w, p, need_gx=True, need_gy=True)
    gx_ref, gy_ref = ref.weighted_feature_distance_backward_reference(
        go.double(), [x.double() for x in xs], [y.double() for y in ys], w, p, True, True)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=2e-3, atol=1e-6)
    for a, b, x in zip(gx, gx_ref, xs):
        assert a.dtype == dtype and a.stride() == x.stride()
        torch.testing.assert_close(a.double().cpu(), b.cpu(), **tol)
    for a, b in zip(gy, gy_ref):
        torch.testing.assert_close(a.double().cpu(), b.cpu(), **tol)
    gx_only, none = K.weighted_feature_distance_bwd(go, xs, ys, w, p, need_gx=True, need_gy=False)
    assert none is None
    for a, b in zip(gx_only, gx):
        torch.testing.assert_close(a, b)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_lpips(triton_device, dtype):
    from fastep.kernels import reductions as K

    for i, s in enumerate(LP_SHAPES + [(2, 192, 4, 5)]):
        f0 = torch.randn(s, device=triton_device).to(dtype)
        f1 = torch.randn(s, device=triton_device).to(dtype)
        if i % 2:
            f1 = f1.to(memory_format=torch.channels_last)
        w = torch.rand(s[1], device=triton_device)
        out = K.lpips_layer_fwd(f0, f1, w)
        expected = _lpips64([f0.cpu()], [f1.cpu()], [w.cpu()])
        torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-5, atol=1e-6)
        go = torch.randn(s[0], device=triton_device)
        g0, g1 = K.lpips_layer_bwd(go, f0, f1, w)
        r0, r1 = ref.lpips_distance_backward_reference(go.double().cpu(), [f0.double().cpu()],
                                                       [f1.double().cpu()], [w.double().cpu()])
        tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-4)
        assert g0.dtype == dtype and g1.shape == f1.shape
        torch.testing.assert_close(g0.double().cpu(), r0[0], **tol)
        torch.testing.assert_close(g1.double().cpu(), r1[0], **tol)
        only0, none = K.lpips_layer_bwd(go, f0, f1, w, need_g0=True, need_g1=False)
        assert none is None
        torch.testing.assert_close(only0, g0)
    # all layers at once (one shared partial-sum buffer)
    f0s = [torch.randn(s, device=triton_device).to(dtype) for s in LP_SHAPES]
    f1s = [torch.randn(s, device=triton_device).to(dtype) for s in LP_SHAPES]
    ws = [torch.rand(s[1], device=triton_device) for s in LP_SHAPES]
    out = K.lpips_fwd(f0s, f1s, ws)
    expected = _lpips64([f.cpu() for f in f0s], [f.cpu() for f in f1s], [w.cpu() for w in ws])
    torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.triton
def test_triton_lpips_backward_of_expanded_batch(triton_device):
    """A batch of one expanded to N (stride 0) gets one gradient per sample, as for a dense copy."""
    from fastep.kernels import reductions as K

    n, c, h, w_ = 3, 16, 5, 6
    f0 = torch.randn(1, c, h, w_, device=triton_device).expand(n, c, h, w_)
    f1 = torch.randn(n, c, h, w_, device=triton_device)
    w = torch.rand(c, device=triton_device)
    go = torch.randn(n, device=triton_device)
    g0, g1 = K.lpips_layer_bwd(go, f0, f1, w)
    r0, r1 = ref.lpips_distance_backward_reference(go.double().cpu(), [f0.double().cpu().contiguous()],
                                                   [f1.double().cpu()], [w.double().cpu()])
    torch.testing.assert_close(g0.double().cpu(), r0[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g1.double().cpu(), r1[0], rtol=1e-4, atol=1e-6)


@pytest.mark.cuda
def test_cuda_ops_use_triton_and_match_reference():
    from fastep import _ext

    assert _ext.backend_for("weighted_feature_distance", "cuda") == "triton"
    xs, ys = _feats(SHAPES, device="cuda")
    xs = [x.requires_grad_() for x in xs]
    out = weighted_feature_distance(xs, ys, [1, 2, 3, 4], 1)
    out.backward()
    with _ext.force_backend("reference"):
        xr = [x.detach().clone().requires_grad_() for x in xs]
        expected = weighted_feature_distance(xr, ys, [1, 2, 3, 4], 1)
        expected.backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(xs, xr):
        torch.testing.assert_close(a.grad, b.grad)
