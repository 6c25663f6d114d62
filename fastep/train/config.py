"""Moved: StEP's configuration dataclasses are in :mod:`fastep.zoo.step.config` (this name
stays for the benchmark harness until it imports from there)."""
from ..zoo.step.config import (APPROACHES, PRESETS, LossConfig, ModelConfig, OptimConfig,  # noqa: F401
                               TrainConfig)
