"""fastep.nets.VGGFeatures against torchvision's VGG loaded with the same (random) weights."""
import pytest
import torch

from fastep.nets import LAYER_PRESETS, VGGFeatures, random_state_dict, vgg_layer_names
from fastep.nets.vgg import IMAGENET_MEAN, IMAGENET_STD

_SD = {}


def _sd(arch):
    if arch not in _SD:
        _SD[arch] = random_state_dict(arch, seed=11)
    return _SD[arch]


def _torchvision_features(arch, x01, upto=None):
    """Intermediate outputs of torchvision's VGG features on images in [0, 1] (to index upto)."""
    from torchvision.models.vgg import cfgs, make_layers

    feats = make_layers(cfgs["D" if arch == "vgg16" else "E"]).eval()
    feats.load_state_dict({k[len("features."):]: v for k, v in _sd(arch).items()})
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    h = (x01 - mean) / std
    outs = []
    with torch.no_grad():
        for i, m in enumerate(feats):
            if upto is not None and i > upto:
                break
            h = m(h)
            outs.append(h.clone())
    return outs


def _index(arch, name):
    return vgg_layer_names(arch).index(name)  # names are listed in module-index order


def _check(net, outs, ref, names, rtol=2e-5):
    assert len(outs) == len(names)
    for name, o in zip(names, outs):
        r = ref[_index(net.arch, name)]
        assert o.shape == r.shape, name
        scale = r.abs().max().clamp_min(1e-12)
        assert ((o - r).abs().max() / scale).item() < rtol, name


@pytest.mark.parametrize("preset", sorted(LAYER_PRESETS))
def test_presets_match_torchvision(preset):
    arch, names = LAYER_PRESETS[preset]
    net = VGGFeatures(layers=preset, weights=_sd(arch))
    assert net.arch == arch and net.layers == names
    x = torch.rand(2, 3, 35, 42) * 2 - 1
    outs = net(x)
    _check(net, outs, _torchvision_features(arch, (x + 1) / 2, upto=max(map(lambda n: _index(arch, n), names))), names)
    assert net.channels == [o.shape[1] for o in outs]


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_mixed_pre_and_post_relu_layers_in_any_order(arch):
    names = ["relu3_1", "conv1_1", "relu1_1", "pool2", "conv3_1", "conv2_2"]
    net = VGGFeatures(arch, names, weights="random", seed=11)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    outs = net(x)
    _check(net, outs, _torchvision_features(arch, (x + 1) / 2, upto=_index(arch, "relu3_1")), names)
    conv, relu = outs[1], outs[2]
    assert (conv < 0).any(), "pre-ReLU output was clobbered by an in-place ReLU"
    torch.testing.assert_close(relu, conv.clamp_min(0))
    torch.testing.assert_close(outs[0], outs[4].clamp_min(0))
    # truncated right after the deepest layer (relu3_1)
    assert len(net.features) == _index(arch, "relu3_1") + 1
    assert net.channels == [256, 64, 64, 128, 256, 128]


def test_truncation_and_defaults():
    net = VGGFeatures(weights="random")
    assert net.arch == "vgg16" and net.layers == LAYER_PRESETS["vgg16"][1]
    assert len(net.features) == _index("vgg16", "relu5_2") + 1
    net19 = VGGFeatures("vgg19", weights="random")
    assert net19.layers == LAYER_PRESETS["gatys"][1]
    assert len(net19.features) == _index("vgg19", "relu5_1") + 1
    assert net19.channels == [64, 128, 256, 512, 512]
    shallow = VGGFeatures("vgg16", ["relu1_2"], weights="random")
    assert len(shallow.features) == 4 and shallow.min_size == 1
    assert set(shallow.state_dict()) == {"features.0.weight", "features.0.bias",
                                         "features.2.weight", "features.2.bias"}


def test_frozen_eval_and_input_gradients():
    net = VGGFeatures("vgg16", ["relu1_2", "conv2_1"], weights="random")
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training
    x = (torch.rand(2, 3, 8, 8) * 2 - 1).requires_grad_()
    a, b = net(x)
    (a.square().mean() + b.square().mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_same_seed_same_features():
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    a = VGGFeatures("vgg16", ["relu2_2"], weights="random", seed=5)(x)[0]
    b = VGGFeatures("vgg16", ["relu2_2"], weights="random", seed=5)(x)[0]
    c = VGGFeatures("vgg16", ["relu2_2"], weights="random", seed=6)(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_input_ranges_agree():
    sd = _sd("vgg16")
    x01 = torch.rand(2, 3, 12, 12)
    ref = VGGFeatures("vgg16", ["conv1_2", "relu2_1"], weights=sd)(x01 * 2 - 1)
    got01 = VGGFeatures("vgg16", ["conv1_2", "relu2_1"], weights=sd, input_range="[0,1]")(x01)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    gotn = VGGFeatures("vgg16", ["conv1_2", "relu2_1"], weights=sd,
                       input_range="imagenet_normalized")((x01 - mean) / std)
    for r, a, b in zip(ref, got01, gotn):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b, r, rtol=1e-5, atol=1e-5)


def test_weights_from_file(tmp_path):
    torch.save(_sd("vgg16"), tmp_path / "vgg16.pth")
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    a = VGGFeatures("vgg16", ["relu2_2"], weights=tmp_path / "vgg16.pth")(x)[0]
    b = VGGFeatures("vgg16", ["relu2_2"], weights=_sd("vgg16"))(x)[0]
    assert torch.equal(a, b)


def test_imagenet_found_offline_in_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FASTEP_WEIGHTS_DIR", str(tmp_path))
    torch.save(_sd("vgg16"), tmp_path / "vgg16-397923af.pth")  # torchvision's file name
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    a = VGGFeatures("vgg16", ["relu1_2"])(x)[0]  # weights="imagenet" is the default
    b = VGGFeatures("vgg16", ["relu1_2"], weights=_sd("vgg16"))(x)[0]
    assert torch.equal(a, b)


def test_imagenet_absent_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("FASTEP_WEIGHTS_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="vgg19-dcbb9e9d.pth"):
        VGGFeatures("vgg19")


def test_channels_last_and_noncontiguous_input():
    sd = _sd("vgg16")
    names = ["relu1_2", "relu2_2", "relu3_2"]
    x = torch.rand(2, 3, 20, 20) * 2 - 1
    ref = VGGFeatures("vgg16", names, weights=sd)(x)
    net_cl = VGGFeatures("vgg16", names, weights=sd, channels_last=True)
    assert net_cl.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        for o, r in zip(net_cl(inp), ref):
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
    xt = (torch.rand(2, 3, 20, 20) * 2 - 1).transpose(2, 3)  # non-contiguous
    for o, r in zip(VGGFeatures("vgg16", names, weights=sd)(xt), VGGFeatures("vgg16", names, weights=sd)(xt.contiguous())):
        torch.testing.assert_close(o, r)


def test_bf16_autocast_cpu():
    net = VGGFeatures("vgg16", ["relu1_2", "relu2_2", "relu3_2"], weights=_sd("vgg16"), channels_last=True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = net(x)
    for o, r in zip(outs, ref):
        assert o.dtype == torch.bfloat16
        rel = ((o.float() - r).norm() / r.norm()).item()
        assert rel < 5e-2
    # half images into the fp32 network are computed in fp32
    o16 = net(x.bfloat16())
    assert o16[0].dtype == torch.float32
    torch.testing.assert_close(o16[0], net(x.bfloat16().float())[0])
    # a bf16 model on bf16 input also works
    outs16 = VGGFeatures("vgg16", ["relu2_2"], weights=_sd("vgg16")).to(torch.bfloat16)(x.bfloat16())
    assert outs16[0].dtype == torch.bfloat16


def test_bad_inputs():
    net = VGGFeatures("vgg16", ["relu1_2", "relu3_1"], weights="random")
    with pytest.raises(ValueError, match="images.*rank 3"):
        net(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="images.*3 \\(RGB\\) channels"):
        net(torch.rand(1, 1, 8, 8))
    with pytest.raises(TypeError, match="images.*floating"):
        net(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="images"):
        net([[0.0]])
    with pytest.raises(ValueError, match="images.*empty"):
        net(torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match="images.*>= 4"):
        net(torch.rand(1, 3, 3, 8))


def test_bad_construction():
    with pytest.raises(ValueError, match="layers.*relu6_1"):
        VGGFeatures("vgg16", ["relu6_1"], weights="random")
    with pytest.raises(ValueError, match="layers.*conv3_4"):
        VGGFeatures("vgg16", ["conv3_4"], weights="random")  # exists in vgg19 only
    with pytest.raises(ValueError, match="layers.*nonsense"):
        VGGFeatures(layers="nonsense", weights="random")
    with pytest.raises(ValueError, match="layers.*empty"):
        VGGFeatures(layers=[], weights="random")
    with pytest.raises(ValueError, match="layers.*duplicate"):
        VGGFeatures(layers=["relu1_1", "relu1_1"], weights="random")
    with pytest.raises(TypeError, match="layers"):
        VGGFeatures(layers=[3], weights="random")
    with pytest.raises(ValueError, match="arch.*conflicts"):
        VGGFeatures("vgg16", "gatys", weights="random")
    with pytest.raises(ValueError, match="arch"):
        VGGFeatures("vgg11", weights="random")
    with pytest.raises(ValueError, match="input_range"):
        VGGFeatures(weights="random", input_range="0-255")


@pytest.mark.cuda
def test_cuda_matches_cpu_fp32_and_bf16_autocast():
    names = list(LAYER_PRESETS["vgg16"][1])
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    ref = VGGFeatures("vgg16", names, weights=_sd("vgg16"))(x)
    net = VGGFeatures("vgg16", names, weights=_sd("vgg16"), channels_last=True).cuda()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # exact fp32 convs
        outs = net(x.cuda())
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o.cpu(), r, rtol=1e-3, atol=1e-3 * r.abs().max().item())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outs = net(x.cuda())
    for o, r in zip(outs, ref):
        assert o.dtype == torch.bfloat16
        assert ((o.float().cpu() - r).norm() / r.norm()).item() < 5e-2
