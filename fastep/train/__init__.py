"""The system-agnostic training machinery every zoo system uses.

* :mod:`fastep.train.trainer`     -- the loop (LR schedule, kimg, NaN stop, signals, resume);
* :mod:`fastep.train.checkpoint`  -- the one checkpoint schema (:class:`Checkpoint`), its writer,
  its reader (``weights_only``), RNG capture and the numbered-checkpoint manager;
* :mod:`fastep.train.outputs`     -- TensorBoard, PNG grids, JSON;
* :mod:`fastep.train.distributed` -- torchrun process groups;
* :mod:`fastep.train.cli`         -- ``fastep train``.

A system's own networks, configs, steps and stages live in ``fastep.zoo.<system>`` (StEP:
:mod:`fastep.zoo.step`).  Names are imported lazily from their home modules on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Trainer": "trainer", "NonFiniteLossError": "trainer", "TrainingInterrupted": "trainer",
    "Checkpoint": "checkpoint", "CheckpointError": "checkpoint", "CheckpointManager": "checkpoint",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
