"""BridgeGAN's run configuration: every setting of ``fastep train --system bridgegan``, resolved
once into one frozen object.

Resolution order: the preset (``paper`` on CUDA, ``cpu`` otherwise, unless named) -> overrides
(command-line flags, ``--set KEY=VALUE``) -> :class:`RunConfig`, which validates itself.  The
dataclass defaults are the paper's run; :data:`PRESETS` lists what each preset changes.
``model.<field>`` sets a :class:`~.config.BridgeConfig` field, ``weights.<term>`` a
:class:`~.losses.LossWeights` weight on top of the ``loss`` preset.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ...config import ConfigError, choose, override, resolve_preset
from .config import PRESETS as MODEL_PRESETS
from .config import BridgeConfig
from .losses import LOSS_PRESETS, LossWeights

__all__ = ["RunConfig", "PRESETS", "STAGES", "resolve_run_config"]

STAGES = ("train",)


@dataclass(frozen=True)
class RunConfig:
    """Everything one BridgeGAN run needs (``fastep train --system bridgegan --print-config``).

    Data: ``data`` "builtin" (the generated set: ``n_train``/``n_val`` images made once under
    ``out``/data, 15 one-hot attributes) or a CelebA-format folder (``img_align_celeba/`` +
    ``list_attr_celeba.txt``; the paper's 14 attributes).  ``model.n_attrs`` must match the data.
    Length: ``kimg`` thousands of images *read* -- a generator update reads ``n_critic x batch``
    images, one batch per critic update.  Optimisation: Adam ``lr``, ``beta1``, ``beta2`` for
    both players; ``lr_decay_start`` (fraction of the run; 1 = constant, as the release);
    ``loss`` the weight preset (``paper`` or ``code``) with ``weights`` overrides;
    ``latent_bank`` the release's per-image noise table (undocumented in the paper).
    Intervals: ``ckpt_every``/``image_every`` (kimg; 0: only at the end), ``log_every`` (steps);
    ``keep`` checkpoints; ``eval`` runs the evaluation on the validation split at the end
    (built-in data only) with ``eval_n`` images.
    """

    out: str = "runs/bridgegan"
    data: str = "builtin"
    stages: Tuple[str, ...] = STAGES
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    progress: bool = True
    batch: int = 48
    n_critic: int = 5
    kimg: float = 18200.0
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_start: float = 1.0
    loss: str = "paper"
    weights: Dict[str, Any] = field(default_factory=dict)
    latent_bank: bool = False
    n_train: int = 5000
    n_val: int = 500
    ckpt_every: float = 50.0
    image_every: float = 50.0
    log_every: int = 50
    workers: int = 4
    keep: int = 3
    eval: bool = True
    eval_n: int = 200
    model: BridgeConfig = field(default_factory=BridgeConfig)

    def __post_init__(self):
        def bad(name, what):
            raise ConfigError(f"BridgeGAN run config {name} must be {what}, got {getattr(self, name)!r}")

        for name in ("out", "data", "device", "loss"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                bad(name, "a non-empty string")
        choose(self.loss, LOSS_PRESETS, "BridgeGAN loss preset")
        stages = tuple(str(s) for s in (self.stages if isinstance(self.stages, (list, tuple)) else [self.stages]))
        for s in stages:
            choose(s, STAGES, "BridgeGAN stage")
        if not stages:
            bad("stages", "the stage 'train'")
        object.__setattr__(self, "stages", stages)
        for name in ("seed", "batch", "n_critic", "n_train", "n_val", "log_every", "workers", "keep", "eval_n"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                bad(name, "an integer")
        for name in ("batch", "n_critic", "n_train", "log_every", "keep", "eval_n"):
            if getattr(self, name) < 1:
                bad(name, ">= 1")
        if self.batch < 2:
            bad("batch", ">= 2 (a reference is another image of the batch)")
        for name in ("seed", "workers", "n_val"):
            if getattr(self, name) < 0:
                bad(name, ">= 0")
        for name in ("kimg", "lr", "beta1", "beta2", "lr_decay_start", "ckpt_every", "image_every"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                bad(name, "a number >= 0")
        for name in ("kimg", "lr"):
            if getattr(self, name) <= 0:
                bad(name, "> 0")
        for name in ("beta1", "beta2", "lr_decay_start"):
            if getattr(self, name) > 1:
                bad(name, "in [0, 1]")
        for name in ("resume", "progress", "latent_bank", "eval"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "true or false")
        if not isinstance(self.model, BridgeConfig):
            bad("model", "a BridgeConfig")
        if not isinstance(self.weights, Mapping):
            bad("weights", "a mapping of LossWeights fields")
        self.loss_weights()  # validates now, not when training starts

    def loss_weights(self) -> LossWeights:
        """The ``loss`` preset's :class:`LossWeights` with ``weights`` applied."""
        try:
            return override(LossWeights.preset(self.loss), dict(self.weights), what="BridgeGAN loss weights")
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"BridgeGAN run config weights: {err}") from None

    @property
    def images_per_step(self) -> int:
        """Images one generator update reads (one batch per critic update)."""
        return self.batch * self.n_critic

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


#: What each preset changes from the dataclass defaults (the paper's run).
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": {},
    # A run a 2-core CPU finishes in about 10 minutes (README, "BridgeGAN"): 32 x 32 narrow nets
    # (network preset cpu); two critic updates per generator update instead of five (each critic
    # update pays three gradient penalties' double backward); the release's weights with the
    # classification term x5 and lr 5e-4 (6 kimg so: keep-accuracy 0.73; the paper's weights at
    # 2e-4 for 8 kimg: 0.63; target accuracy 0.08 in both); 10 kimg read = 625 generator updates.
    "cpu": dict(batch=8, n_critic=2, kimg=10.0, lr=5e-4, loss="code", weights={"cls": 50.0}, n_train=2000,
                n_val=200, ckpt_every=2.5, image_every=2.5, log_every=25, workers=0, eval_n=120, model="cpu"),
}
# The paper preset trains on a CelebA folder (14 attributes) by default sizes; on the built-in
# set its model needs model.n_attrs=15 (the run says so).


def resolve_run_config(preset: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                       **kw: Any) -> RunConfig:
    """Preset -> overrides -> one validated :class:`RunConfig` (``preset`` None: ``paper`` on
    CUDA, else ``cpu``)."""
    # a run preset names its network preset (fastep.zoo.bridgegan.config.PRESETS), their one home
    return resolve_preset(RunConfig, PRESETS, preset, {**dict(overrides or {}), **kw}, system="BridgeGAN",
                          configs={"model": lambda name: MODEL_PRESETS[name or "paper"]()},
                          dicts={"weights": "term"})
