"""Moved: StEP's configuration dataclasses are in :mod:`fastep.zoo.step.config` (this name
stays for the benchmark harness until it imports from there)."""
from ..zoo.step.config import (_FLAGS, _TABLE, APPROACHES, PRESETS, LossConfig, ModelConfig,  # noqa: F401
                               OptimConfig, TrainConfig)
