"""DeepI2I as a zoo entry: build through the registry, the checkpoint -> Translator path, and
the registration of its stages (the training runs are in test_deepi2i_pipeline)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import fastep.zoo as zoo
from fastep.train.checkpoint import Checkpoint, CheckpointError
from fastep.zoo.deepi2i import PRESETS, Translator


def test_registry_builds_every_preset():
    assert "deepi2i" in zoo.systems()
    system = zoo.get("deepi2i")
    assert set(system.presets) == {"paper", "gpu", "cpu"} and system.stages == ("biggan", "transfer")
    assert system.train is not None and zoo.get("biggan").stages == ("biggan",)
    nets = zoo.build("deepi2i", "cpu", n_classes=4)
    assert set(nets) == {"G", "D", "E", "A"} and nets["G"].shared.weight.shape == (4, 128)
    assert zoo.resolve_config("deepi2i", "gpu") == PRESETS["gpu"]()
    with pytest.raises(zoo.ConfigError, match="unknown deepi2i model config key 'ch'"):
        zoo.build("deepi2i", "cpu", ch=4)
    with pytest.raises(zoo.ConfigError, match="unknown deepi2i preset 'tiny'; valid: paper, gpu, cpu"):
        zoo.build("deepi2i", "tiny")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = PRESETS["cpu"]()
    nets = zoo.build("deepi2i", "cpu")
    G_ema = zoo.build("deepi2i", "cpu")["G"]
    ckpt = Checkpoint(system="deepi2i", stage="2", step=10, configs={"model": dataclasses.asdict(cfg)},
                      weights={**{k: v.state_dict() for k, v in nets.items()}, "G_ema": G_ema.state_dict()})
    path = tmp_path_factory.mktemp("deepi2i") / "final.pt"
    ckpt.save(path)
    return path, nets, G_ema


def test_load_gives_a_translator(checkpoint):
    path, nets, G_ema = checkpoint
    tr = zoo.load(path)
    assert isinstance(tr, Translator) and tr.system == "deepi2i" and tr.extras["step"] == 10
    assert tr.cfg == PRESETS["cpu"]()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = torch.randn(2, 120)
    out = tr.translate(x, 3, z)
    G_ema.eval(), nets["E"].eval(), nets["A"].eval()
    with torch.no_grad():
        want = G_ema(z, torch.tensor([3, 3]), nets["A"](nets["E"](x)))
    assert torch.equal(out, want)
    assert torch.equal(tr.translate(x, torch.tensor([1, 2]), seed=5), tr.translate(x, torch.tensor([1, 2]), seed=5))
    raw = zoo.load(path, ema=False)
    assert torch.equal(raw.G.linear.weight, nets["G"].linear.weight)
    with pytest.raises(ValueError, match="x: expected a float tensor"):
        tr.translate(torch.zeros(2, 64, 64), 0)


def test_bad_checkpoints(tmp_path, checkpoint):
    cfg = dataclasses.asdict(PRESETS["cpu"]())
    nets = zoo.build("deepi2i", "cpu")
    weights = {k: v.state_dict() for k, v in nets.items()}
    cases = [({"model": {**cfg, "g_ch": 16}}, weights, "the G weights do not fit its model config"),
             ({"model": cfg}, {k: v for k, v in weights.items() if k != "A"}, "has no weights for A"),
             ({"model": {**cfg, "depth": 3}}, weights, "unknown DeepI2I model config key 'depth'"),
             ({}, weights, "no model configuration")]
    for i, (configs, w, msg) in enumerate(cases):
        path = tmp_path / f"bad{i}.pt"
        Checkpoint(system="deepi2i", stage="2", configs=configs, weights=w).save(path)
        with pytest.raises(CheckpointError) as err:
            zoo.load(path)
        assert msg in str(err.value) and "\n" not in str(err.value)
