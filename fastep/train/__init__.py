"""StEP training: configs, the one training step, the trainer loop, stage 1 and the mapper.

* :mod:`fastep.train.config`  -- ``ModelConfig``, ``LossConfig`` (``LossConfig.preset("ours_v3")``),
  ``OptimConfig``, ``TrainConfig``;
* :mod:`fastep.train.step`    -- ``build_models``, ``TrainStep``, ``make_train_step``;
* :mod:`fastep.train.trainer` -- the loop (checkpoints, resume, logging, DDP);
* :mod:`fastep.train.stage1`, :mod:`fastep.train.mapper` -- encoder pre-training, IMLE mapper.

Names are imported lazily from their home modules on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "config", "LossConfig": "config", "OptimConfig": "config", "TrainConfig": "config",
    "PRESETS": "config", "APPROACHES": "config", "lr_scale_at": "config",
    "Models": "step", "build_models": "step", "TrainStep": "step", "make_train_step": "step",
    "LOSS_KEYS": "step",
    "Trainer": "trainer",
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
