"""fastep.losses.LPIPS against the lpips package (v0.1 heads), same seeded random backbone."""
import warnings

import pytest
import torch

import fastep.losses as L
from fastep.nets.alexnet import AlexNetFeatures
from fastep.nets.weights import random_state_dict
from fastep.ops.reference import no_tf32

lpips = pytest.importorskip("lpips")

SEED = 11


ARCH = {"alex": "alexnet", "vgg": "vgg16"}
SIZE = {"alex": 64, "vgg": 16}


def _reference(net):
    """lpips.LPIPS with the v0.1 heads and fastep's random backbone copied in (no download)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    sd = random_state_dict(ARCH[net], SEED)
    own = ref.net.state_dict()  # keys "sliceK.<torchvision index>.weight"
    ref.net.load_state_dict({k: sd["features." + k.split(".", 1)[1]] for k in own})
    return ref.eval()


@pytest.fixture(scope="module")
def pair():
    cache = {}

    def get(net):
        if net not in cache:
            cache[net] = (L.LPIPS(net, backbone_weights="random", seed=SEED), _reference(net))
        return cache[net]

    return get


def _images(net, n=3):
    s = SIZE[net]
    return torch.rand(n, 3, s, s) * 2 - 1, torch.rand(n, 3, s, s) * 2 - 1


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_package(pair, net):
    fast, ref = pair(net)
    a, b = _images(net)
    with torch.no_grad():
        got, exp = fast(a, b), ref(a, b)
    assert got.shape == exp.shape == (3, 1, 1, 1)
    torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-7)
    # identical inputs: exactly 0 like lpips
    with torch.no_grad():
        assert torch.equal(fast(a, a), torch.zeros(3, 1, 1, 1))
    # [0, 1] inputs with normalize=True; per-layer values
    with torch.no_grad():
        a01, b01 = (a + 1) / 2, (b + 1) / 2
        torch.testing.assert_close(fast(a01, b01, normalize=True), ref(a01, b01, normalize=True),
                                   rtol=1e-5, atol=1e-7)
        v, per = fast(a, b, retPerLayer=True)
        v_ref, per_ref = ref(a, b, retPerLayer=True)
        for x, y in zip(per, per_ref):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_gradients_equal_package(pair, net):
    fast, ref = pair(net)
    a, b = _images(net, n=2)
    go = torch.rand(2, 1, 1, 1)
    # both inputs require grad (one joint backbone pass) and only one (separate no_grad pass)
    for both in (True, False):
        a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_(both)
        a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_(both)
        fast(a1, b1).backward(go)
        ref(a2, b2).backward(go)
        torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-3, atol=1e-5 * a2.grad.abs().max().item())
        if both:
            torch.testing.assert_close(b1.grad, b2.grad, rtol=1e-3, atol=1e-5 * b2.grad.abs().max().item())
        else:
            assert b1.grad is None


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_positional_order_and_per_layer_shape(pair, net):
    """lpips' signature is forward(in0, in1, retPerLayer=False, normalize=False)."""
    fast, ref = pair(net)
    a, b = _images(net)
    a01, b01 = (a + 1) / 2, (b + 1) / 2
    with torch.no_grad():
        got, exp = fast(a, b, True), ref(a, b, True)  # third positional = retPerLayer
        assert isinstance(got, tuple) and isinstance(exp, tuple) and len(got) == len(exp) == 2
        torch.testing.assert_close(got[0], exp[0], rtol=1e-5, atol=1e-7)
        assert len(got[1]) == len(exp[1]) == 5
        for x, y in zip(got[1], exp[1]):
            assert x.shape == y.shape == (3, 1, 1, 1)
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(got[0], sum(got[1]), rtol=1e-6, atol=1e-8)
        # fourth positional = normalize ([0, 1] inputs)
        torch.testing.assert_close(fast(a01, b01, False, True), ref(a01, b01, False, True), rtol=1e-5, atol=1e-7)
        v, per = fast(a01, b01, True, True)
        v_ref, per_ref = ref(a01, b01, True, True)
        torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_batch_one_broadcasts_like_package(pair, net):
    fast, ref = pair(net)
    a, b = _images(net, n=3)
    one = b[:1]
    with torch.no_grad():
        for x, y in ((a, one), (one, a)):
            got, exp = fast(x, y), ref(x, y)
            assert got.shape == exp.shape == (3, 1, 1, 1)
            torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-7)
        v, per = fast(a, one, retPerLayer=True)
        v_ref, per_ref = ref(a, one, retPerLayer=True)
        for x, y in zip(per, per_ref):
            assert x.shape == y.shape == (3, 1, 1, 1)
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)
    # gradients: into the many (batch 3) and into the one (summed over the batch)
    go = torch.rand(3, 1, 1, 1)
    a1, o1 = a.clone().requires_grad_(), one.clone().requires_grad_()
    a2, o2 = a.clone().requires_grad_(), one.clone().requires_grad_()
    fast(a1, o1).backward(go)
    ref(a2, o2).backward(go)
    for g, h in ((a1.grad, a2.grad), (o1.grad, o2.grad)):
        assert g.shape == h.shape
        torch.testing.assert_close(g, h, rtol=1e-3, atol=1e-5 * h.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_half_precision_input_like_package(pair, net, dtype):
    """lpips accepts bf16 / fp16 images (its float32 scaling layer upcasts them); so does fastep:
    inputs are cast to the module's float32, the result is float32, equal to lpips'."""
    fast, ref = pair(net)
    a, b = (t.to(dtype) for t in _images(net))
    with torch.no_grad():
        got, exp = fast(a, b), ref(a, b)
        assert got.dtype == exp.dtype == torch.float32
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(fast(a, b.float()), exp, rtol=1e-5, atol=1e-7)  # mixed dtypes
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    fast(a1, b).sum().backward()
    ref(a2, b).sum().backward()
    assert a1.grad.dtype == a2.grad.dtype == dtype
    torch.testing.assert_close(a1.grad.float(), a2.grad.float(), rtol=2e-2, atol=2e-2 * a2.grad.float().abs().max().item())


def test_lpips_float64_gradient_of_fused_tail(pair):
    fast, _ = pair("alex")
    a, b = _images("alex", n=1)
    fast.double()
    try:
        a64 = a.double().requires_grad_()
        v = fast(a64, b.double())
        assert v.dtype == torch.float64
        # the same function composed of plain ops (lpips' formula) on the same features
        a64b = a.double().requires_grad_()
        f0 = fast.net((a64b - fast.shift) / fast.scale)
        f1 = fast.net((b.double() - fast.shift) / fast.scale)
        exp = sum(((lpips.normalize_tensor(x) - lpips.normalize_tensor(y)) ** 2 * w.view(1, -1, 1, 1))
                  .sum(1).mean((1, 2)) for x, y, w in zip(f0, f1, fast.lin_weights))
        torch.testing.assert_close(v.view(-1), exp, rtol=1e-12, atol=1e-15)
        v.sum().backward()
        exp.sum().backward()
        torch.testing.assert_close(a64.grad, a64b.grad, rtol=1e-9, atol=1e-15)
    finally:
        fast.float()


def test_lpips_functional_and_heads(pair):
    fast, _ = pair("alex")
    a, b = _images("alex", n=2)
    with torch.no_grad():
        v = L.lpips(a, b, "alex", backbone_weights="random", seed=SEED)
        torch.testing.assert_close(v, fast(a, b).view(-1))
    # heads are read from the installed lpips package (not copied into fastep)
    path = L.lpips_head_path("alex")
    assert path.endswith("weights/v0.1/alex.pth") and "lpips" in path
    sd = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(fast.lin0, sd["lin0.model.1.weight"].view(-1))


def test_lpips_v00_matches_package():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(pretrained=True, net="alex", version="0.0", pnet_rand=True, verbose=False)
    sd = random_state_dict("alexnet", SEED)
    ref.net.load_state_dict({k: sd["features." + k.split(".", 1)[1]] for k in ref.net.state_dict()})
    fast = L.LPIPS("alex", version="0.0", backbone_weights="random", seed=SEED)
    a, b = _images("alex", n=2)
    with torch.no_grad():
        torch.testing.assert_close(fast(a, b), ref(a, b), rtol=1e-5, atol=1e-7)


def test_alexnet_features_match_torchvision_layout():
    tv = pytest.importorskip("torchvision")
    m = tv.models.alexnet()
    sd = random_state_dict("alexnet", 3)
    m.features.load_state_dict({k[len("features."):]: v for k, v in sd.items()})
    ours = AlexNetFeatures(weights="random", seed=3)
    x = torch.randn(1, 3, 64, 64)
    got = ours(x)
    h, exp = x, []
    with torch.no_grad():
        for i, layer in enumerate(m.features):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):
                exp.append(h.clone())
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e)
    assert ours.channels == [64, 192, 384, 256, 256]
    pre = AlexNetFeatures(layers=("conv2", "relu2"), weights="random", seed=3)(x)
    assert (pre[0] < 0).any() and torch.equal(pre[1], pre[0].clamp_min(0))
    with pytest.raises(ValueError, match="layers"):
        AlexNetFeatures(layers=("relu9",), weights="random")
    with pytest.raises(ValueError, match="layers"):
        AlexNetFeatures(layers=("relu3", "relu1"), weights="random")


def test_lpips_bad_input(pair, tmp_path):
    fast, _ = pair("alex")
    a, b = _images("alex", n=2)
    with pytest.raises(TypeError, match="in0"):
        fast((a * 127).to(torch.uint8), b)
    with pytest.raises(ValueError, match="in1"):
        fast(a, _images("alex", n=3)[1])  # batch 2 against 3: neither is 1
    with pytest.raises(ValueError, match="in1"):
        fast(a, b[..., :40, :40])
    with pytest.raises(ValueError, match="in0"):
        fast(a[:, :2], b[:, :2])
    with pytest.raises(ValueError, match="in0"):
        fast(a[..., :24, :24], b[..., :24, :24])
    with torch.no_grad():
        assert fast(a[..., :31, :31], b[..., :31, :31]).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="net"):
        L.LPIPS("squeeze", backbone_weights="random")
    with pytest.raises(ValueError, match="version"):
        L.LPIPS("alex", version="0.2", backbone_weights="random")
    bad = tmp_path / "heads.pth"
    torch.save({"lin0.model.1.weight": torch.ones(1, 3, 1, 1)}, bad)
    with pytest.raises(ValueError, match="lin_path"):
        L.LPIPS("alex", lin_path=str(bad), backbone_weights="random")
    L._RANGE_WARNED.clear()
    with pytest.warns(UserWarning, match="LPIPS"):
        with torch.no_grad():
            fast(a * 2, b)


@pytest.mark.cuda
def test_lpips_cuda_equals_package(pair):
    with no_tf32():
        _lpips_cuda_equals_package(pair)


def _lpips_cuda_equals_package(pair):
    fast, ref = pair("alex")
    fast, ref = fast.cuda(), ref.cuda()
    try:
        a, b = (t.cuda() for t in _images("alex", n=4))
        with torch.no_grad():
            torch.testing.assert_close(fast(a, b), ref(a, b), rtol=1e-3, atol=1e-5)
        a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
        fast(a1, b).sum().backward()
        ref(a2, b).sum().backward()
        err = (a1.grad - a2.grad).norm() / a2.grad.norm()
        assert err < 1e-2
    finally:
        fast.cpu()
        ref.cpu()


@pytest.mark.triton
def test_lpips_through_triton_backend_equals_package(triton_device):
    """End to end through the fused op on its Triton backend (CUDA, or CPU interpreter)."""
    from fastep import _ext

    with _ext.force_backend("triton"), no_tf32():  # CPU ops default to the reference
        assert _ext.backend_for("lpips_distance", triton_device) == "triton"
        fast = L.LPIPS("alex", backbone_weights="random", seed=SEED, channels_last=True).to(triton_device)
        ref = _reference("alex").to(triton_device)
        a, b = (t.to(triton_device) for t in _images("alex", n=2))
        a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
        v, v_ref = fast(a1, b), ref(a2, b)
        torch.testing.assert_close(v, v_ref, rtol=1e-4, atol=1e-6)
        v.sum().backward()
        v_ref.sum().backward()
        err = (a1.grad - a2.grad).norm() / a2.grad.norm()
        assert err < 1e-3


def test_lpips_documented_differences(pair):
    """README's differences table, LPIPS row: frozen buffer heads (lpips: trainable parameters),
    no spatial / baseline modes, lin_path for model_path."""
    import inspect

    fast, ref = pair("alex")
    assert not any(p.requires_grad for p in fast.parameters())
    assert {f"lin{l}" for l in range(5)} <= {n for n, _ in fast.named_buffers()}
    assert all(p.requires_grad for n, p in ref.named_parameters() if n.startswith("lin"))
    params = inspect.signature(L.LPIPS).parameters
    assert "lin_path" in params and not {"spatial", "lpips", "pnet_tune", "model_path"} & set(params)
    with pytest.raises(TypeError, match="spatial"):
        L.LPIPS("alex", backbone_weights="random", spatial=True)


@pytest.mark.triton
def test_lpips_batch_one_broadcast_through_triton_backend(triton_device):
    """One image against many through the fused Triton op: values and both gradients as lpips."""
    from fastep import _ext

    with _ext.force_backend("triton"), no_tf32():
        fast = L.LPIPS("alex", backbone_weights="random", seed=SEED).to(triton_device)
        ref = _reference("alex").to(triton_device)
        a, b = (t.to(triton_device) for t in _images("alex", n=3))
        one = b[:1]
        a1, o1 = a.clone().requires_grad_(), one.clone().requires_grad_()
        a2, o2 = a.clone().requires_grad_(), one.clone().requires_grad_()
        v, v_ref = fast(a1, o1), ref(a2, o2)
        torch.testing.assert_close(v, v_ref, rtol=1e-4, atol=1e-6)
        v.sum().backward()
        v_ref.sum().backward()
        for g, h in ((a1.grad, a2.grad), (o1.grad, o2.grad)):
            assert (g - h).norm() / h.norm() < 1e-3
