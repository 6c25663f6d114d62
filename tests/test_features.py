"""fastep.style_features: Grams / Gram vectors of VGG features, batching, grad, autocast, errors."""
import math

import pytest
import torch

import fastep
from fastep.features import clear_net_cache, get_style_net, style_features
from fastep.nets import VGGFeatures, random_state_dict

LAYERS = ["relu1_2", "relu2_1", "relu3_1"]  # shallow: keeps the CPU tests quick


def _gram64(f):
    f = f.double()
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def _vectors64(feats, w=None):
    parts = []
    for l, f in enumerate(feats):
        g = _gram64(f)
        c = g.shape[1]
        iu = torch.triu_indices(c, c)
        s = torch.where(iu[0] == iu[1], 1.0, math.sqrt(2.0)).double()
        parts.append(g[:, iu[0], iu[1]] * s * math.sqrt(1.0 if w is None else w[l]) / c)
    return torch.cat(parts, 1)


@pytest.fixture(scope="module")
def net():
    return VGGFeatures("vgg16", LAYERS, weights=random_state_dict("vgg16", seed=2))


def test_is_reexported():
    assert fastep.style_features is style_features
    assert fastep.VGGFeatures is VGGFeatures


def test_grams_and_vectors_match_float64(net):
    x = torch.rand(5, 3, 20, 17) * 2 - 1
    feats = net(x)
    grams = style_features(x, net=net)
    assert [tuple(g.shape) for g in grams] == [(5, c, c) for c in net.channels]
    for g, f in zip(grams, feats):
        assert g.dtype == torch.float32
        ref = _gram64(f)
        torch.testing.assert_close(g.double(), ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())
    w = [0.5, 1.0, 2.0]
    v = style_features(x, net=net, output="vectors", layer_weights=w)
    ref = _vectors64(feats, w)
    assert v.shape == ref.shape == (5, sum(c * (c + 1) // 2 for c in net.channels)) and v.dtype == torch.float32
    torch.testing.assert_close(v.double(), ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())
    # |v_x - v_y|^2 is the style distance: sum_l w_l mean((G_x - G_y)^2)
    d = sum(wl * (_gram64(f)[0] - _gram64(f)[1]).square().mean() for wl, f in zip(w, feats))
    assert abs((v[0].double() - v[1].double()).square().sum().item() / d.item() - 1) < 1e-3


def test_batching_is_exact(net):
    x = torch.rand(7, 3, 16, 16) * 2 - 1
    whole = style_features(x, net=net, output="vectors")
    chunked = style_features(x, net=net, output="vectors", batch_size=3)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)
    g_whole = style_features(x, net=net)
    g_chunk = style_features(x, net=net, batch_size=2)
    for a, b in zip(g_chunk, g_whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    one = style_features(x[:1], net=net, output="vectors")  # batch of one
    torch.testing.assert_close(one, whole[:1], rtol=1e-4, atol=1e-7)


def test_builds_cached_random_net_from_preset():
    clear_net_cache()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    a = style_features(x, LAYERS, weights="random", seed=2, output="vectors")
    net = get_style_net(LAYERS, weights="random", seed=2)
    assert get_style_net(LAYERS, weights="random", seed=2) is net  # cached
    assert net.channels_last
    b = style_features(x, net=VGGFeatures("vgg16", LAYERS, weights="random", seed=2), output="vectors")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())
    g = style_features(x, "gatys", weights="random", output="gram")  # VGG19 preset
    assert [t.shape[1] for t in g] == [64, 128, 256, 512, 512]
    clear_net_cache()


def test_cached_net_from_file_is_refreshed_when_the_file_changes(tmp_path):
    clear_net_cache()
    path = tmp_path / "w.pth"
    torch.save(random_state_dict("vgg16", seed=1), path)
    a = get_style_net(["relu1_1"], weights=path)
    assert get_style_net(["relu1_1"], weights=str(path)) is a
    torch.save(random_state_dict("vgg16", seed=2), path)
    import os
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    b = get_style_net(["relu1_1"], weights=path)
    assert b is not a and not torch.equal(a.features[0].weight, b.features[0].weight)
    clear_net_cache()


def test_imagenet_default_is_not_silently_random(tmp_path, monkeypatch):
    clear_net_cache()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("FASTEP_WEIGHTS_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        style_features(torch.zeros(1, 3, 32, 32))


def test_no_grad_by_default_grad_when_images_require_it(net):
    x = torch.rand(2, 3, 12, 12) * 2 - 1
    v = style_features(x, net=net, output="vectors")
    assert not v.requires_grad
    xg = x.clone().requires_grad_()
    grams = style_features(xg, net=net)
    assert grams[0].requires_grad
    sum(g.square().sum() for g in grams).backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_bf16_autocast_and_storage_dtype(net):
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    ref = style_features(x, net=net, output="vectors")
    v = style_features(x, net=net, output="vectors", autocast_dtype=torch.bfloat16)
    assert v.dtype == torch.float32
    assert ((v - ref).norm() / ref.norm()).item() < 5e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grams = style_features(x, net=net)
    assert all(g.dtype == torch.float32 for g in grams)
    v16 = style_features(x, net=net, output="vectors", out_dtype=torch.bfloat16)
    assert v16.dtype == torch.bfloat16


def test_channels_last_input(net):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    a = style_features(x, net=net, output="vectors")
    b = style_features(x.contiguous(memory_format=torch.channels_last), net=net, output="vectors")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * a.abs().max().item())


def test_bad_inputs(net):
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="images.*rank 3"):
        style_features(x[0], net=net)
    with pytest.raises(ValueError, match="images.*channels"):
        style_features(x[:, :2], net=net)
    with pytest.raises(TypeError, match="images.*floating"):
        style_features((x * 255).to(torch.uint8), net=net)
    with pytest.raises(ValueError, match="images.*empty"):
        style_features(x[:0], net=net)
    with pytest.raises(TypeError, match="images"):
        style_features(x.numpy(), net=net)
    with pytest.raises(ValueError, match="output"):
        style_features(x, net=net, output="grams")
    with pytest.raises(ValueError, match="batch_size"):
        style_features(x, net=net, batch_size=0)
    with pytest.raises(ValueError, match="layers.*relu9_9"):
        style_features(x, ["relu9_9"], weights="random")
    with pytest.raises(ValueError, match="layers"):
        style_features(x, "gatys", net=net)
    with pytest.raises(ValueError, match="weights"):
        style_features(x, net=net, weights="random")
    with pytest.raises(ValueError, match="layer_weights"):
        style_features(x, net=net, output="vectors", layer_weights=[1.0])
    with pytest.raises(TypeError, match="net"):
        style_features(x, net=3)


@pytest.mark.cuda
def test_cuda_vectors_match_cpu(net):
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    ref = style_features(x, net=net, output="vectors")
    net_cuda = VGGFeatures("vgg16", LAYERS, weights=random_state_dict("vgg16", seed=2), channels_last=True).cuda()
    v = style_features(x.cuda(), net=net_cuda, output="vectors", batch_size=4)
    assert v.device.type == "cuda"
    assert ((v.cpu() - ref).norm() / ref.norm()).item() < 1e-2  # TF32 convs allowed
    vb = style_features(x.cuda(), net=net_cuda, output="vectors", autocast_dtype=torch.bfloat16)
    assert vb.dtype == torch.float32 and ((vb.cpu() - ref).norm() / ref.norm()).item() < 5e-2
