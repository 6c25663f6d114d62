"""BigGAN-PyTorch folders: strict reading, one-line errors, class maps, the bit-exact round trip,
and the refusal of generator-only formats."""
from __future__ import annotations

import dataclasses

import json

import pytest
import torch
from torch import nn

from fastep.zoo.deepi2i.config import TRANSFER_FUSION
from fastep.zoo.deepi2i import (PRESETS, BigGANFormatError, DeepI2IConfig, build_nets, config_from_biggan,
                                load_biggan, save_biggan)
from fastep.zoo.deepi2i.weights import biggan_run_config


def _trained_nets(cfg, seed=0):
    """Nets whose buffers (u0, sv0, BN statistics) have moved off their initial values."""
    torch.manual_seed(seed)
    nets = build_nets(cfg)
    G, D = nets["G"], nets["D"]
    with torch.no_grad():
        for _ in range(2):
            y = torch.randint(0, cfg.n_classes, (4,))
            D(G(torch.randn(4, cfg.dim_z), y), y)
    return G, D


@pytest.fixture(scope="module")
def cfg():
    return PRESETS["cpu"]()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, cfg):
    G, D = _trained_nets(cfg)
    G_ema, _ = _trained_nets(cfg, seed=1)
    path = tmp_path_factory.mktemp("biggan")
    save_biggan(path, G, D, G_ema=G_ema, itr=1234, epoch=5)
    return path, G, D, G_ema


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _one_line_error(fn, *parts):
    with pytest.raises(BigGANFormatError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg
    return msg


# ----------------------------------------------------------------------------- round trip

def test_round_trip_is_bit_exact(folder, cfg):
    path, G, D, G_ema = folder
    assert sorted(p.name for p in path.iterdir()) == ["D.pth", "G.pth", "G_ema.pth", "state_dict.pth"]
    w = load_biggan(path)
    # a BigGAN folder holds no adaptor fusion: read without a config, the fusion is DeepI2I's own
    assert w.config == dataclasses.replace(cfg, fusion=TRANSFER_FUSION)
    assert (w.itr, w.epoch) == (1234, 5) and w.generator_file == "G_ema.pth"
    assert _same(w.G.state_dict(), G_ema.state_dict())
    assert _same(w.D.state_dict(), D.state_dict())
    raw = load_biggan(path, generator="raw")
    assert _same(raw.G.state_dict(), G.state_dict())
    assert not _same(raw.G.state_dict(), w.G.state_dict())
    # the files themselves are plain BigGAN-PyTorch objects, readable with weights_only=True
    sd = torch.load(path / "G.pth", weights_only=True)
    assert _same(dict(sd), G.state_dict())
    state = torch.load(path / "state_dict.pth", weights_only=True)
    assert state["itr"] == 1234 and state["config"]["G_ch"] == cfg.g_ch and state["config"]["G_attn"] == "32"
    # and the loaded nets compute what the saved ones did
    w.D.eval(), D.eval()
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.tensor([0, 5])
    assert torch.equal(w.D(x, y), D(x, y))
    D.train()


def test_save_load_save_gives_identical_files(folder, tmp_path):
    path = folder[0]
    w = load_biggan(path)
    save_biggan(tmp_path, load_biggan(path, generator="raw").G, w.D, G_ema=w.G, itr=w.itr, epoch=w.epoch)
    for name in ("G.pth", "G_ema.pth", "D.pth"):
        a, b = (dict(torch.load(p / name, weights_only=True)) for p in (path, tmp_path))
        assert _same(a, b)
    assert torch.load(path / "state_dict.pth", weights_only=True) == torch.load(tmp_path / "state_dict.pth",
                                                                                weights_only=True)


def test_transfer_nets(folder, cfg):
    w = load_biggan(folder[0])
    nets = w.transfer_nets()
    assert set(nets) == {"G", "D", "E", "A"}
    assert _same(nets["E"].state_dict(), w.D.state_dict())
    assert nets["G"] is w.G and nets["D"] is w.D
    feats = nets["E"](torch.rand(1, 3, 64, 64))
    assert set(nets["A"](feats)) == set(cfg.taps)


# ----------------------------------------------------------------------------- strict errors

def test_width_mismatch_names_the_key_and_both_shapes(folder, cfg):
    wide = DeepI2IConfig(**{**cfg.__dict__, "g_ch": 16})
    _one_line_error(lambda: load_biggan(folder[0], wide), "G_ema.pth", "linear.weight", "[2048, 24] in the file",
                    "[4096, 24] in the model", "G_ch 16")


def test_missing_and_unexpected_keys(folder, tmp_path):
    path, G, D, G_ema = folder
    g = dict(G_ema.state_dict())
    shape = list(g.pop("blocks.1.0.conv1.u0").shape)
    d = dict(D.state_dict())
    d["blocks.0.2.weight"] = torch.zeros(3)
    state = torch.load(path / "state_dict.pth", weights_only=True)
    for name, obj in (("G_ema.pth", g), ("D.pth", D.state_dict()), ("state_dict.pth", state)):
        torch.save(obj, tmp_path / name)
    _one_line_error(lambda: load_biggan(tmp_path), "G_ema.pth", "key blocks.1.0.conv1.u0", f"shape {shape}",
                    "missing from the file")
    torch.save(G_ema.state_dict(), tmp_path / "G_ema.pth")
    torch.save(d, tmp_path / "D.pth")
    _one_line_error(lambda: load_biggan(tmp_path), "D.pth", "unexpected key blocks.0.2.weight", "shape [3]")


def test_wrong_resolution(folder, cfg):
    big = DeepI2IConfig(**{**cfg.__dict__, "resolution": 128, "g_attention": (64,), "d_attention": (64,)})
    _one_line_error(lambda: load_biggan(folder[0], big), "4 generator blocks", "64 x 64", "the config builds 5")


def test_folder_problems(folder, tmp_path):
    path = folder[0]
    _one_line_error(lambda: load_biggan(tmp_path / "nope"), "no such folder", "BigGAN-PyTorch folder")
    _one_line_error(lambda: load_biggan(path / "G.pth"), "single file", "discriminator")
    (tmp_path / "only_g").mkdir()
    torch.save(folder[1].state_dict(), tmp_path / "only_g" / "G.pth")
    _one_line_error(lambda: load_biggan(tmp_path / "only_g"), "has no D.pth", "encoder is the discriminator's trunk")
    (tmp_path / "no_ema").mkdir()
    for name in ("G.pth", "D.pth", "state_dict.pth"):
        (tmp_path / "no_ema" / name).write_bytes((path / name).read_bytes())
    _one_line_error(lambda: load_biggan(tmp_path / "no_ema"), "has no G_ema.pth", "generator='raw'")
    assert load_biggan(tmp_path / "no_ema", generator="raw").itr == 1234
    (tmp_path / "no_state").mkdir()
    for name in ("G_ema.pth", "D.pth"):
        (tmp_path / "no_state" / name).write_bytes((path / name).read_bytes())
    _one_line_error(lambda: load_biggan(tmp_path / "no_state"), "no state_dict.pth", "config=")
    assert load_biggan(tmp_path / "no_state", PRESETS["cpu"]()).itr == 0
    (tmp_path / "torn").mkdir()
    for name in ("G_ema.pth", "D.pth", "state_dict.pth"):
        (tmp_path / "torn" / name).write_bytes((path / name).read_bytes())
    (tmp_path / "torn" / "D.pth").write_bytes((path / "D.pth").read_bytes()[:1000])
    _one_line_error(lambda: load_biggan(tmp_path / "torn"), "D.pth", "unreadable")


def test_generator_only_formats_are_refused(tmp_path):
    hf = tmp_path / "biggan-deep-128"
    hf.mkdir()
    torch.save({"generator.gen_z.weight_orig": torch.zeros(2, 2)}, hf / "pytorch_model.bin")
    (hf / "config.json").write_text(json.dumps({"output_dim": 128, "z_dim": 128}))
    msg = _one_line_error(lambda: load_biggan(hf), "pytorch-pretrained-BigGAN", "no discriminator",
                          "encoder is the discriminator's trunk")
    assert "G_ema.pth" in msg
    _one_line_error(lambda: load_biggan(hf / "pytorch_model.bin"), "pytorch-pretrained-BigGAN generator")
    # torch.nn.utils.spectral_norm names inside a BigGAN-looking folder
    sn = tmp_path / "torch_sn"
    sn.mkdir()
    torch.save({"linear.weight_orig": torch.zeros(2, 2), "linear.weight_u": torch.zeros(2)}, sn / "G_ema.pth")
    torch.save({"linear.weight_orig": torch.zeros(2, 2)}, sn / "D.pth")
    _one_line_error(lambda: load_biggan(sn, PRESETS["cpu"]()), "spectral_norm names", "weight/u0/sv0")


def test_state_dict_with_pickled_objects(folder, tmp_path):
    path = folder[0]
    for name in ("G_ema.pth", "D.pth"):
        (tmp_path / name).write_bytes((path / name).read_bytes())
    run = torch.load(path / "state_dict.pth", weights_only=True)
    # BigGAN-PyTorch's train.py stores its activation modules in the saved config
    run["config"]["G_activation"] = nn.ReLU(inplace=False)
    run["config"]["D_activation"] = nn.ReLU(inplace=True)
    torch.save(run, tmp_path / "state_dict.pth")
    w = load_biggan(tmp_path)
    assert w.run_config["G_activation"] == "ReLU" and w.itr == 1234
    run["config"]["G_activation"] = nn.Tanh()              # anything else is refused, never unpickled
    torch.save(run, tmp_path / "state_dict.pth")
    _one_line_error(lambda: load_biggan(tmp_path), "state_dict.pth", "torch.nn.modules.activation.Tanh", "refused",
                    "read_state=False")
    w = load_biggan(tmp_path, PRESETS["cpu"](), read_state=False)
    assert w.itr == 0 and _same(w.D.state_dict(), folder[2].state_dict())
    _one_line_error(lambda: load_biggan(tmp_path, read_state=False), "needs config=")


# ----------------------------------------------------------------------------- class counts

def test_class_count_change_needs_a_choice(folder, cfg):
    three = DeepI2IConfig(**{**cfg.__dict__, "n_classes": 3})
    _one_line_error(lambda: load_biggan(folder[0], three), "6 classes, the config 3", "class_map",
                    "reinit_embedding=True")
    _one_line_error(lambda: load_biggan(folder[0], three, class_map=[0, 1]), "3 integer rows")
    _one_line_error(lambda: load_biggan(folder[0], three, class_map=[0, 1, 6]), "row 6 is outside")
    _one_line_error(lambda: load_biggan(folder[0], three, class_map="first", reinit_embedding=True), "not both")
    ten = DeepI2IConfig(**{**cfg.__dict__, "n_classes": 10})
    _one_line_error(lambda: load_biggan(folder[0], ten, class_map="first"), "at most 6 classes")


def test_class_map_picks_rows(folder, cfg):
    path, _, D, G_ema = folder
    three = DeepI2IConfig(**{**cfg.__dict__, "n_classes": 3})
    w = load_biggan(path, three, class_map=[5, 0, 3])
    assert w.class_map == (5, 0, 3)
    rows = torch.tensor([5, 0, 3])
    assert torch.equal(w.G.shared.weight, G_ema.shared.weight[rows])
    assert torch.equal(w.D.embed.weight, D.embed.weight[rows])
    assert torch.equal(w.D.embed.u0, D.embed.u0[:, rows])
    rest = lambda sd: {k: v for k, v in sd.items() if not k.startswith(("shared.", "embed."))}  # noqa: E731
    assert _same(rest(w.G.state_dict()), rest(G_ema.state_dict()))
    assert _same(rest(w.D.state_dict()), rest(D.state_dict()))
    first = load_biggan(path, three, class_map="first")
    assert torch.equal(first.G.shared.weight, G_ema.shared.weight[:3])
    # class 0 of the mapped G is class 5 of the checkpoint's
    w.G.eval(), G_ema.eval()
    z = torch.randn(2, 120)
    assert torch.equal(w.G(z, torch.tensor([0, 2])), G_ema(z, torch.tensor([5, 3])))
    G_ema.train()


def test_reinit_embedding(folder, cfg):
    path, _, D, G_ema = folder
    nine = DeepI2IConfig(**{**cfg.__dict__, "n_classes": 9})
    w = load_biggan(path, nine, reinit_embedding=True)
    assert w.class_map == () and w.G.shared.weight.shape == (9, 128) and w.D.embed.weight.shape == (9, 16 * cfg.d_ch)
    assert w.D.embed.u0.shape == (1, 9)
    rest = lambda sd: {k: v for k, v in sd.items() if not k.startswith(("shared.", "embed."))}  # noqa: E731
    assert _same(rest(w.G.state_dict()), rest(G_ema.state_dict()))
    assert _same(rest(w.D.state_dict()), rest(D.state_dict()))


# ----------------------------------------------------------------------------- run configuration

def test_run_config_round_trip_and_unsupported_variants():
    for preset in ("paper", "gpu", "cpu"):
        cfg = PRESETS[preset]()
        # BigGAN's run config has no adaptor fusion: it comes back as DeepI2I's own
        assert config_from_biggan(biggan_run_config(cfg)) == dataclasses.replace(cfg, fusion=TRANSFER_FUSION)
    # BigGAN-PyTorch's own launch arguments for the ImageNet 128 model
    run = {"resolution": 128, "n_classes": 1000, "G_ch": 96, "D_ch": 96, "dim_z": 120, "shared_dim": 128,
           "hier": True, "G_shared": True, "G_attn": "64", "D_attn": "64", "SN_eps": 1e-6, "BN_eps": 1e-5,
           "G_nl": "inplace_relu", "D_nl": "inplace_relu", "num_G_SVs": 1, "norm_style": "bn"}
    assert config_from_biggan(run) == PRESETS["paper"]()
    for key, value, msg in (("hier", False, "config['hier'] = False"), ("model", "BigGANdeep", "'BigGAN'"),
                            ("num_D_SVs", 2, "num_D_SVs"), ("G_attn", "x", "'_'-separated")):
        with pytest.raises(BigGANFormatError, match=None) as err:
            config_from_biggan({**run, key: value})
        assert msg in str(err.value)
    with pytest.raises(BigGANFormatError, match="lacks G_ch"):
        config_from_biggan({k: v for k, v in run.items() if k != "G_ch"})
