"""The model zoo: every image-to-image system fastep trains, behind one registry.

    >>> import fastep.zoo as zoo
    >>> zoo.systems()                                    # ('step', 'bridgegan', 'deepi2i', 'biggan')
    >>> nets = zoo.build("step", preset="cpu", z_dim=16)  # {"G": ..., "E": ..., "D": ...}
    >>> tr = zoo.load("runs/fastep/final.pt")             # StEP: a Translator
    >>> y = tr.translate(a, style=b)                      # images in [-1, 1], (N, 3, H, W)

A system is a folder ``fastep/zoo/<name>/`` defining ``SYSTEM`` (a :class:`System`) and one
line in :data:`ENTRIES` below; see :mod:`fastep.zoo.system` for the interface.  Entries are
imported on first use, so ``import fastep.zoo`` is cheap.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Dict, Tuple, Union

from ..config import ConfigError, choose, override
from .system import Inference, System, TrainingStep

__all__ = ["systems", "get", "build", "resolve_config", "load", "register", "System", "TrainingStep",
           "Inference", "ENTRIES", "ConfigError"]

#: system name -> module defining ``SYSTEM`` (the registration lines)
ENTRIES: Dict[str, str] = {
    "step": "fastep.zoo.step",
    "bridgegan": "fastep.zoo.bridgegan",
    "deepi2i": "fastep.zoo.deepi2i",
    "biggan": "fastep.zoo.biggan",
}

_LOADED: Dict[str, System] = {}


def register(system: System) -> System:
    """Add ``system`` at run time (e.g. from a plugin); its name must be new."""
    if not isinstance(system, System):
        raise TypeError(f"register() takes a fastep.zoo.System, got {type(system).__name__}")
    if system.name in ENTRIES or system.name in _LOADED:
        raise ValueError(f"a system named {system.name!r} is already registered")
    _LOADED[system.name] = system
    return system


def systems() -> Tuple[str, ...]:
    """The names of every registered system."""
    return tuple(dict.fromkeys([*ENTRIES, *_LOADED]))


def get(name: str) -> System:
    """The :class:`System` called ``name`` (an unknown name lists the valid ones)."""
    if name in _LOADED:
        return _LOADED[name]
    choose(name, systems(), "system")
    system = importlib.import_module(ENTRIES[name]).SYSTEM
    if system.name != name:
        raise RuntimeError(f"{ENTRIES[name]}.SYSTEM is named {system.name!r}, registered as {name!r}")
    _LOADED[name] = system
    return system


def resolve_config(system: str, preset: str = "paper", **overrides: Any):
    """The system's network configuration: preset ``preset`` with ``overrides`` applied."""
    sys_ = get(system)
    choose(preset, sys_.presets, f"{system} preset")
    return override(sys_.presets[preset](), overrides, what=f"{system} model config")


def build(system: str, preset: str = "paper", **overrides: Any) -> Dict[str, Any]:
    """The networks of ``system`` (a dict of modules, float32, train mode, CPU) from one resolved config."""
    return dict(get(system).build(resolve_config(system, preset, **overrides)))


def load(path: Union[str, os.PathLike], device="cpu", *, ema: bool = True):
    """Read any fastep checkpoint and return its system's inference object (on ``device``,
    eval mode; the EMA weights when ``ema`` and the checkpoint has them)."""
    import torch

    from ..train.checkpoint import CheckpointError, load_checkpoint

    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.system not in systems():
        raise CheckpointError(f"checkpoint {str(path)!r} was written by system {ckpt.system!r}, which this "
                              f"fastep does not have; valid: {', '.join(systems())}")
    return get(ckpt.system).load(ckpt, torch.device(device), ema, str(path))

