"""fastep.nets.weights: offline ImageNet lookup, seeded random init, file loading/validation."""
import math
import os

import pytest
import torch

from fastep.nets import weights as W


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    """An empty torch hub cache and no FASTEP_WEIGHTS_DIR; downloads are forbidden."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("FASTEP_WEIGHTS_DIR", raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("resolve_state_dict tried to download without download=True")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return tmp_path


def _tv_feature_keys(arch):
    import torchvision.models as tvm
    from torchvision.models.vgg import cfgs, make_layers

    if arch == "alexnet":
        feats = tvm.AlexNet().features
    else:
        feats = make_layers(cfgs["D" if arch == "vgg16" else "E"])
    return {f"features.{k}": tuple(v.shape) for k, v in feats.state_dict().items()}


@pytest.mark.parametrize("arch", W.ARCHS)
def test_random_matches_torchvision_layout_and_is_deterministic(arch):
    sd = W.random_state_dict(arch, seed=3)
    assert {k: tuple(v.shape) for k, v in sd.items()} == _tv_feature_keys(arch)
    assert W.feature_shapes(arch) == _tv_feature_keys(arch)
    again = W.random_state_dict(arch, seed=3)
    torch.manual_seed(12345)  # the global RNG must not matter
    third = W.random_state_dict(arch, seed=3)
    other = W.random_state_dict(arch, seed=4)
    for k in sd:
        assert sd[k].dtype == torch.float32
        assert torch.equal(sd[k], again[k]) and torch.equal(sd[k], third[k])
    assert not torch.equal(sd["features.0.weight"], other["features.0.weight"])


# Recorded once (torch 2.14.1, CPU): the first weights of the first conv and sum |w| over all
# tensors for seed 0.  "The same on every run and machine" means these never change; a new
# generator, init scheme or tensor order would (and must then be a deliberate, documented change,
# since it changes every random-backbone figure).
GOLDEN_SEED0 = {
    "vgg16": ([-0.0663408, -0.0679035, -0.0147655], 259538.20807667938),
    "vgg19": ([-0.0663408, -0.0679035, -0.0147655], 351813.134334835),
    "alexnet": ([-0.000393, 0.028156, -0.0431987], 26123.580308643126),
}


@pytest.mark.parametrize("arch", W.ARCHS)
def test_random_weights_match_recorded_values(arch):
    first, total = GOLDEN_SEED0[arch]
    sd = W.random_state_dict(arch, seed=0)
    assert sd["features.0.weight"].flatten()[:3].tolist() == pytest.approx(first, abs=5e-8)
    assert sum(v.double().abs().sum().item() for v in sd.values()) == pytest.approx(total, rel=1e-9)


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_random_vgg_init_scheme(arch):
    sd = W.random_state_dict(arch, seed=0)
    for k, v in sd.items():
        if k.endswith("bias"):
            assert torch.count_nonzero(v) == 0
        else:
            fan_out = v.shape[0] * v.shape[2] * v.shape[3]
            expected = math.sqrt(2.0 / fan_out)  # kaiming normal, fan_out, relu
            assert abs(v.std().item() / expected - 1) < 0.1, k
            assert abs(v.mean().item()) < 0.1 * expected, k


def test_random_alexnet_full_loads_into_torchvision():
    import torchvision.models as tvm

    sd = W.random_state_dict("alexnet", seed=0, features_only=False)
    tvm.AlexNet().load_state_dict(sd, strict=True)
    w = sd["features.3.weight"]
    bound = 1.0 / math.sqrt(64 * 5 * 5)  # default init: kaiming_uniform(a=sqrt 5) -> 1/sqrt(fan_in)
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


@pytest.mark.parametrize("arch", W.ARCHS)
def test_urls_match_torchvision_enums(arch):
    import torchvision.models as tvm

    enum = {"vgg16": tvm.VGG16_Weights, "vgg19": tvm.VGG19_Weights, "alexnet": tvm.AlexNet_Weights}[arch]
    assert W.IMAGENET_URLS[arch] == enum.IMAGENET1K_V1.url
    assert W.imagenet_filename(arch) == os.path.basename(enum.IMAGENET1K_V1.url)


def test_imagenet_missing_says_how_to_get_it(fake_home):
    with pytest.raises(FileNotFoundError) as info:
        W.resolve_state_dict("vgg16", "imagenet")
    msg = str(info.value)
    hub = os.path.join(str(fake_home / "torch_home"), "hub", "checkpoints")
    assert "vgg16-397923af.pth" in msg
    assert W.IMAGENET_URLS["vgg16"] in msg
    assert hub in msg and "FASTEP_WEIGHTS_DIR" in msg and "download=True" in msg
    assert "\n" not in msg  # one line


@pytest.mark.parametrize("arch", ["vgg16", "vgg19", "alexnet"])
def test_imagenet_missing_names_options_that_exist(fake_home, arch):
    """Every command-line flag and Python argument the message names exists."""
    import inspect
    import re

    import fastep.features
    import fastep.losses
    import fastep.nets
    from fastep.cli import build_parser

    with pytest.raises(FileNotFoundError) as info:
        W.resolve_state_dict(arch, "imagenet")
    msg = str(info.value)
    assert W.WEIGHTS_OPTIONS[arch] in msg and "\n" not in msg
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    flags = re.findall(r"fastep ([a-z/]+) (--[a-z-]+)", msg)
    assert flags or arch == "vgg19"
    for commands, flag in flags:
        for cmd in commands.split("/"):
            assert flag in sub[cmd]._option_string_actions, f"fastep {cmd} has no {flag}"
    for extra in re.findall(r"\(with (--[a-z-]+)", msg):
        assert extra in sub["eval"]._option_string_actions
    if "backbone_weights=" in msg:
        for cls in (fastep.losses.PerceptualLoss, fastep.losses.StyleLoss, fastep.losses.LPIPS):
            assert "backbone_weights" in inspect.signature(cls).parameters
    if "weights=" in msg.replace("backbone_weights=", ""):
        assert "weights" in inspect.signature(fastep.nets.VGGFeatures).parameters
        assert "weights" in inspect.signature(fastep.features.style_features).parameters


def test_unreadable_file_is_one_line(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError) as info:
        W.resolve_state_dict("vgg16", tmp_path / "junk.pth")
    assert "\n" not in str(info.value) and "junk.pth" in str(info.value)


def _fake_checkpoint(arch, path, seed=1):
    sd = W.random_state_dict(arch, seed=seed)
    sd["classifier.0.bias"] = torch.zeros(7)  # extra keys of a full torchvision file are ignored
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return sd


@pytest.mark.parametrize("arch", ["vgg19", "alexnet"])
def test_imagenet_from_hub_cache(fake_home, arch):
    path = fake_home / "torch_home" / "hub" / "checkpoints" / W.imagenet_filename(arch)
    sd = _fake_checkpoint(arch, path)
    got = W.resolve_state_dict(arch, "imagenet")
    assert set(got) == set(W.feature_shapes(arch))
    for k in got:
        assert torch.equal(got[k], sd[k])
    full = W.resolve_state_dict(arch, "imagenet", features_only=False)
    assert "classifier.0.bias" in full


def test_imagenet_from_weights_dir_takes_precedence(fake_home, monkeypatch):
    hub_sd = _fake_checkpoint("vgg16", fake_home / "torch_home" / "hub" / "checkpoints" / "vgg16-397923af.pth", seed=1)
    d1, d2 = fake_home / "w1", fake_home / "w2"
    d1.mkdir()
    dir_sd = _fake_checkpoint("vgg16", d2 / "vgg16.pth", seed=2)  # the short name works too
    monkeypatch.setenv("FASTEP_WEIGHTS_DIR", os.pathsep.join([str(d1), str(d2)]))
    got = W.resolve_state_dict("vgg16", "imagenet")
    assert torch.equal(got["features.0.weight"], dir_sd["features.0.weight"])
    assert not torch.equal(got["features.0.weight"], hub_sd["features.0.weight"])


def test_download_only_when_asked(fake_home, monkeypatch):
    calls = []
    sd = W.random_state_dict("vgg16", seed=5)

    def fake_download(url, **kwargs):
        calls.append(url)
        return sd

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    with pytest.raises(FileNotFoundError):
        W.resolve_state_dict("vgg16", "imagenet")
    assert calls == []
    got = W.resolve_state_dict("vgg16", "imagenet", download=True)
    assert calls == [W.IMAGENET_URLS["vgg16"]]
    assert torch.equal(got["features.28.weight"], sd["features.28.weight"])


def test_path_and_wrappers(tmp_path):
    sd = W.random_state_dict("vgg16", seed=7)
    p = tmp_path / "a.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, p)
    for spec in (p, str(p)):
        got = W.resolve_state_dict("vgg16", spec)
        assert all(torch.equal(got[k], sd[k]) for k in sd)
    got = W.resolve_state_dict("vgg16", dict(sd))
    assert set(got) == set(sd)


def test_path_errors(tmp_path):
    sd = W.random_state_dict("vgg16", seed=0)
    with pytest.raises(FileNotFoundError, match="no_such"):
        W.resolve_state_dict("vgg16", tmp_path / "no_such.pth")
    missing = dict(sd)
    del missing["features.10.weight"]
    torch.save(missing, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"features\.10\.weight"):
        W.resolve_state_dict("vgg16", tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"vgg19 state dict: missing 12 key.*features\.16\.weight"):
        W.resolve_state_dict("vgg19", sd)  # vgg16 file for vgg19: missing deeper convs
    wrong = dict(sd)
    wrong["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(ValueError, match=r"shape \(64, 3, 5, 5\)"):
        W.resolve_state_dict("vgg16", wrong)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        W.resolve_state_dict("vgg16", tmp_path / "junk.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        W.resolve_state_dict("vgg16", tmp_path / "list.pth")


def test_bad_arguments():
    with pytest.raises(ValueError, match="arch"):
        W.resolve_state_dict("resnet50", "random")
    with pytest.raises(ValueError, match="weights"):
        W.resolve_state_dict("vgg16", "imagnet")
    with pytest.raises(TypeError, match="weights"):
        W.resolve_state_dict("vgg16", 3)
    with pytest.raises(TypeError, match="seed"):
        W.random_state_dict("vgg16", seed=1.5)
