"""DeepI2I's run configuration: every setting of ``fastep train --system deepi2i`` (and
``--system biggan``), resolved once into one frozen object.

Resolution order as for every zoo system: the preset (``paper``, ``gpu``, ``cpu``; default
``cpu`` without CUDA, else ``gpu``) -> overrides (flags, ``--set KEY=VALUE``; ``model.<field>``
for :class:`~fastep.zoo.deepi2i.DeepI2IConfig`, ``step.<field>`` for
:class:`~fastep.zoo.deepi2i.train_step.StepConfig`) -> :class:`RunConfig`, which validates itself.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ...config import ConfigError, choose, override, resolve_preset
from .config import PRESETS as MODEL_PRESETS
from .config import DeepI2IConfig
from .data import CLASS_FACTORS, n_classes_of
from .train_step import StepConfig

__all__ = ["RunConfig", "PRESETS", "STAGES", "resolve_run_config"]

#: the stages, in order: the BigGAN stand-in (skipped when ``biggan`` names real weights), the transfer
STAGES = ("biggan", "transfer")


@dataclass(frozen=True)
class RunConfig:
    """Everything one DeepI2I run needs (``--print-config`` shows the resolved values).

    Data: ``data`` "builtin": the source set (``n_source`` images, seed ``seed + 1``, stage
    ``biggan``) and a disjoint target set (``n_train``/``n_val`` images, seed ``seed``) are made
    once under ``out``/data; ``classes`` is the class scheme (``palette`` 6 or ``style`` 120; it
    must match ``model.n_classes``); ``target_fraction`` keeps that share of every target class
    (0.1: the paper's 10 % setting).  ``biggan``: a BigGAN-PyTorch folder to transfer from
    (default: the one stage ``biggan`` writes, ``out``/biggan/weights); ``class_map`` "first"
    takes the folder's first ``model.n_classes`` class rows when it has more (as DeepI2I does).  Lengths in thousands of
    images: ``biggan_kimg``, ``transfer_kimg``; the learning rate stays constant (as in
    BigGAN and DeepI2I).  Intervals: ``ckpt_every``/``image_every`` (kimg; 0 only at the end),
    ``log_every`` (updates).  ``step``: the transfer's optimisation, ``biggan_step`` the stand-in's
(its ``mode``, phase and reconstruction settings are unused); ``model``: the networks.
    ``eval``: at the end, evaluate the transfer's translator (and its step 0) on the first
    ``eval_n`` validation images (:mod:`~fastep.zoo.deepi2i.evaluate`; ``--no-eval`` skips it).
    """

    out: str = "runs/deepi2i"
    data: str = "builtin"
    stages: Tuple[str, ...] = STAGES
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    progress: bool = True
    classes: str = "palette"
    n_source: int = 2000
    n_train: int = 600
    n_val: int = 200
    target_fraction: float = 1.0
    biggan: Optional[str] = None
    class_map: Optional[str] = None
    # BigGAN-PyTorch's ImageNet run: 138k updates of 2048 images; DeepI2I does not state its length
    # (the released code: 100 epochs): about 100 epochs of the 10 % Animal-faces set's size here
    biggan_kimg: float = 282_624.0
    transfer_kimg: float = 1_000.0
    ckpt_every: float = 100.0
    image_every: float = 100.0
    log_every: int = 50
    keep: int = 3
    workers: int = 0
    eval: bool = True
    eval_n: int = 200
    model: DeepI2IConfig = field(default_factory=DeepI2IConfig)
    step: StepConfig = field(default_factory=StepConfig)
    biggan_step: StepConfig = field(default_factory=StepConfig)

    def __post_init__(self):
        def bad(name, what):
            raise ConfigError(f"deepi2i run config {name} must be {what}, got {getattr(self, name)!r}")

        for name in ("out", "data", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                bad(name, "a non-empty string")
        if self.data != "builtin":
            bad("data", "'builtin' (DeepI2I trains on the built-in labelled set; other folders are not read yet)")
        stages = tuple(str(s) for s in (self.stages if isinstance(self.stages, (list, tuple)) else [self.stages]))
        for s in stages:
            choose(s, STAGES, "deepi2i stage")
        if not stages or list(stages) != sorted(set(stages), key=STAGES.index):
            bad("stages", f"distinct stages in the order {', '.join(STAGES)}")
        object.__setattr__(self, "stages", stages)
        choose(self.classes, CLASS_FACTORS, "deepi2i class scheme")
        positive = ("n_source", "n_train", "log_every", "keep", "eval_n")
        for name in ("seed", "n_source", "n_train", "n_val", "log_every", "keep", "workers", "eval_n"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name in positive else 0):
                bad(name, "an integer >= 1" if name in positive else "an integer >= 0")
        for name in ("biggan_kimg", "transfer_kimg", "ckpt_every", "image_every", "target_fraction"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                bad(name, "a number >= 0")
        for name in ("biggan_kimg", "transfer_kimg"):
            if getattr(self, name) <= 0:
                bad(name, "> 0")
        if not 0 < self.target_fraction <= 1:
            bad("target_fraction", "a share of every class in (0, 1]")
        for name in ("resume", "progress", "eval"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "true or false")
        if self.biggan is not None and (not isinstance(self.biggan, str) or not self.biggan):
            bad("biggan", "a BigGAN-PyTorch folder")
        if self.class_map is not None:
            choose(self.class_map, ("first",), "deepi2i class_map")
        if not isinstance(self.model, DeepI2IConfig):
            bad("model", "a DeepI2IConfig")
        for name in ("step", "biggan_step"):
            if not isinstance(getattr(self, name), StepConfig):
                bad(name, "a StepConfig")
        want = n_classes_of(self.classes)
        if self.model.n_classes != want:
            raise ConfigError(f"deepi2i run config: classes {self.classes!r} has {want} classes on the built-in "
                              f"data but model.n_classes is {self.model.n_classes}; set model.n_classes={want} "
                              f"or another classes")
        if self.step.mode == "scratch" and "biggan" in self.stages and len(self.stages) > 1:
            object.__setattr__(self, "stages", ("transfer",))  # scratch mode starts from fresh nets

    @property
    def resolution(self) -> int:
        return self.model.resolution

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


#: What each preset changes from the dataclass defaults (the paper's run).
PRESETS: Dict[str, Dict[str, Any]] = {
    # transfer from a real BigGAN-PyTorch folder (--set biggan=DIR): ImageNet's 1000 classes
    "paper": {"stages": ("transfer",), "classes": "style", "class_map": "first", "model": {"n_classes": 120}},
    # the GPU stand-in: 64 px, ch 32, 120 style classes
    "gpu": {"classes": "style", "n_source": 20000, "n_train": 6000, "n_val": 600, "biggan_kimg": 500.0,
            "transfer_kimg": 200.0, "ckpt_every": 50.0, "image_every": 25.0, "model": "gpu"},
    # a CPU run on 2 cores in minutes: 64 px (BigGAN's smallest architecture here), ch 8, the 6
    # palette classes; the stand-in at batch 8 with an EMA that starts after 200 of its 500
    # updates, the transfer at 4 x 2 accumulated with phase 1 scaled to 50 of its 375 updates
    "cpu": {"classes": "palette", "n_source": 2000, "n_train": 600, "n_val": 200, "biggan_kimg": 4.0,
            "transfer_kimg": 3.0, "ckpt_every": 1.0, "image_every": 1.0, "log_every": 25, "model": "cpu",
            # reconstruction x 30 (DeepI2I's weights x 30): at ch 8 the discriminator features are
            # small, so the paper's weights made L_rec ~0.03 against an adversarial term ~1 and
            # the input's structure had no pull (with the cpu fusion: boundary F 0.23 -> 0.32,
            # content IoU 0.26 -> 0.29 after 100 updates)
            "step": {"micro_batch": 4, "accumulations": 2, "phase1_steps": 50,
                     "rec_weights": ((4, 3.0), (8, 3.0), (16, 3.0), (32, 0.3))},
            "biggan_step": {"micro_batch": 8, "accumulations": 1, "g_ema": 0.99, "ema_start": 200}},
}

def resolve_run_config(preset: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                       **kw: Any) -> RunConfig:
    """Preset -> overrides -> one validated :class:`RunConfig` (``preset`` None: ``gpu`` when
    CUDA is available, else ``cpu``)."""
    def pick_default(device: str) -> str:
        import torch

        return "gpu" if torch.cuda.is_available() and device != "cpu" else "cpu"

    def model(base):
        return MODEL_PRESETS[base]() if isinstance(base, str) else override(DeepI2IConfig(), base or {})

    return resolve_preset(RunConfig, PRESETS, preset, {**dict(overrides or {}), **kw}, system="deepi2i",
                          configs={"model": model, "step": lambda base: override(StepConfig(), base or {}),
                                   "biggan_step": lambda base: override(StepConfig(), base or {})},
                          pick_default=pick_default)
