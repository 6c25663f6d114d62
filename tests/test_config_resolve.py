"""The shared run-config resolution (fastep.config.resolve_preset) every zoo system uses."""
from dataclasses import dataclass, field
from typing import Any, Dict

import pytest

from fastep.config import ConfigError, default_preset, nest_overrides, override, resolve_preset


@dataclass(frozen=True)
class _Net:
    width: int = 8
    depth: int = 2


@dataclass(frozen=True)
class _Run:
    device: str = "auto"
    batch: int = 4
    net: _Net = field(default_factory=_Net)
    weights: Dict[str, Any] = field(default_factory=dict)


_PRESETS = {"paper": {}, "cpu": {"batch": 2, "net": {"width": 4}, "weights": {"a": 1.0}}}


def _resolve(preset, overrides):
    return resolve_preset(_Run, _PRESETS, preset, overrides, system="Toy",
                          configs={"net": lambda base: override(_Net(), base or {})}, dicts={"weights": "term"})


def test_nest_overrides_splits_dotted_keys_and_merges_mappings():
    got = nest_overrides({"net.width": 3, "net": {"depth": 1}, "batch": 2}, ("net", "batch"), {"net": "field"}, "Toy")
    assert got == {"net": {"width": 3, "depth": 1}, "batch": 2}
    with pytest.raises(ConfigError, match=r"unknown Toy key 'nope'; valid: net, batch \(and net.<field>\)"):
        nest_overrides({"nope": 1}, ("net", "batch"), {"net": "field"}, "Toy")
    with pytest.raises(ConfigError, match="only net.<field> have sub-keys"):
        nest_overrides({"batch.x": 1}, ("net", "batch"), {"net": "field"}, "Toy")


def test_resolve_preset_applies_preset_then_overrides():
    run = _resolve("cpu", {"net.depth": 5, "weights.b": 2.0, "batch": 3})
    assert run == _Run(batch=3, net=_Net(width=4, depth=5), weights={"a": 1.0, "b": 2.0})
    assert _resolve("paper", {}) == _Run()
    assert _resolve(None, {"device": "cpu"}).batch == 2  # no preset named: the CPU one on a CPU device


def test_resolve_preset_errors_name_the_system():
    with pytest.raises(ConfigError, match="unknown Toy run preset 'huge'"):
        _resolve("huge", {})
    with pytest.raises(ConfigError, match="unknown Toy net config key 'nope'"):
        _resolve("cpu", {"net.nope": 1})
    with pytest.raises(ConfigError, match="unknown Toy run config key 'x'"):
        _resolve("cpu", {"x": 1})


def test_default_preset_by_device():
    assert default_preset("cpu") == "cpu"
    assert default_preset("cuda:0") == "paper"
    assert default_preset("cuda", cuda="gpu") == "gpu"
