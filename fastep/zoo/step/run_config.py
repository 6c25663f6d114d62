"""StEP's run configuration: every setting of ``fastep train``, resolved once into one frozen object.

Resolution order: the preset (``paper`` on CUDA, ``cpu`` otherwise, unless named) -> overrides
(command-line flags, ``--set KEY=VALUE``, or keyword arguments) -> :class:`RunConfig`, which
validates itself.  The dataclass defaults are the paper's run (256 px, batch 8, stage 2 to
250 kimg and stage 3 to 700 kimg; docs/step.md); :data:`PRESETS` lists what each
named preset changes.  Nothing else holds a default: the stages read their settings from this
object.  Keys are the field names; ``model.<field>`` sets a :class:`ModelConfig` field.  An
unknown key or preset is an error naming it and listing the valid ones.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ...config import ConfigError, choose, override, resolve_preset
from .config import PRESETS as APPROACH_NAMES
from .config import _DEFAULT_KIMG, DEFAULT_LR_DECAY_START, ModelConfig, TrainConfig, canonical_approach

# The step's settings that a run also names take their defaults from TrainConfig, their one home.
_STEP_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

__all__ = ["RunConfig", "PRESETS", "STAGES", "resolve_run_config", "parse_value"]

STAGES = ("1", "2", "3", "mapper")


@dataclass(frozen=True)
class RunConfig:
    """Everything one StEP run needs (``fastep train --print-config`` shows the resolved values).

    Stages and data: ``stages`` any of 1, 2, 3, mapper, in that order; ``data`` "builtin" (the
    generated set, ``n_train``/``n_val`` images made once under ``out``/data) or a folder.
    Lengths: ``stage2_kimg``/``stage3_kimg`` (thousands of images), ``stage1_epochs``,
    ``mapper_epochs``; the learning rate decays linearly to 0 over the last
    ``1 - lr_decay_start`` of each GAN stage.  Intervals: ``ckpt_every``/``image_every`` (kimg;
    0: only at the end), ``log_every`` (steps); ``keep`` checkpoints per stage.  Speed:
    ``compile``, ``amp`` (bf16 autocast, CUDA), ``channels_last``, ``cuda_graphs``.
    ``vgg_weights``: the perceptual loss's VGG16 ("auto": ImageNet if on disk, else seeded random).
    ``init``: checkpoint a single stage starts from (default: the previous stage's final.pt).
    ``loss``: :class:`~fastep.zoo.step.config.LossConfig` fields changed on top of the approach's
    preset (``--set loss.lambda_pixel=10``; the paper preset changes none); ``optim``:
    :class:`~fastep.zoo.step.config.OptimConfig` fields (``--set optim.lr_ge=3e-3``); ``ema``: the EMA decay
    of G and E per step; ``mining_layers``: the VGG16 layers whose Gram matrices stage 1 mines
    with (default all five of the paper).
    """

    out: str = "runs/fastep"
    data: str = "builtin"
    approach: str = _STEP_DEFAULTS["approach"]
    stages: Tuple[str, ...] = STAGES
    device: str = _STEP_DEFAULTS["device"]
    seed: int = _STEP_DEFAULTS["seed"]
    resume: bool = False
    init: Optional[str] = None
    progress: bool = True
    vgg_weights: str = "auto"
    batch: int = _STEP_DEFAULTS["batch_size"]
    stage2_kimg: float = _DEFAULT_KIMG[2]
    stage3_kimg: float = _DEFAULT_KIMG[3]
    lr_decay_start: float = DEFAULT_LR_DECAY_START
    n_train: int = 5000
    n_val: int = 500
    stage1_epochs: int = 20
    mapper_epochs: int = 500
    ckpt_every: float = 10.0
    image_every: float = 10.0
    log_every: int = 50
    workers: int = 8
    keep: int = 3
    compile: bool = _STEP_DEFAULTS["compile"]
    amp: bool = _STEP_DEFAULTS["amp"]
    channels_last: bool = _STEP_DEFAULTS["channels_last"]
    cuda_graphs: bool = _STEP_DEFAULTS["cuda_graphs"]
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: Dict[str, Any] = field(default_factory=dict)
    optim: Dict[str, Any] = field(default_factory=dict)
    ema: float = _STEP_DEFAULTS["ema"]
    mining_layers: Optional[Tuple[str, ...]] = None
    stage1: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        def bad(name, what):
            raise ConfigError(f"run config {name} must be {what}, got {getattr(self, name)!r}")

        for name in ("out", "data", "approach", "device", "vgg_weights"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                bad(name, "a non-empty string")
        object.__setattr__(self, "approach", canonical_approach(self.approach))
        choose(self.approach, APPROACH_NAMES, "approach")
        stages = tuple(str(s) for s in (self.stages if isinstance(self.stages, (list, tuple)) else [self.stages]))
        for s in stages:
            choose(s, STAGES, "stage")
        if not stages or list(stages) != sorted(set(stages), key=STAGES.index):
            bad("stages", f"distinct stages in the order {', '.join(STAGES)}")
        object.__setattr__(self, "stages", stages)
        for name in ("seed", "batch", "n_train", "n_val", "stage1_epochs", "mapper_epochs", "log_every", "workers",
                     "keep"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                bad(name, "an integer")
        for name in ("batch", "n_train", "n_val", "log_every", "keep"):
            if getattr(self, name) < 1:
                bad(name, ">= 1")
        for name in ("stage1_epochs", "mapper_epochs", "workers", "seed"):
            if getattr(self, name) < 0:
                bad(name, ">= 0")
        for name in ("stage2_kimg", "stage3_kimg", "ckpt_every", "image_every", "lr_decay_start"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                bad(name, "a number >= 0")
        for name in ("stage2_kimg", "stage3_kimg"):
            if getattr(self, name) <= 0:
                bad(name, "> 0")
        if self.lr_decay_start > 1:
            bad("lr_decay_start", "a fraction of the stage in [0, 1]")
        for name in ("resume", "progress", "compile", "amp", "channels_last", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "true or false")
        if self.init is not None and not isinstance(self.init, str):
            bad("init", "a checkpoint path")
        if not isinstance(self.model, ModelConfig):
            bad("model", "a ModelConfig")
        if not isinstance(self.loss, Mapping):
            bad("loss", "a mapping of LossConfig fields")
        self.loss_config()  # validates the keys and values now, not when stage 2 starts
        if not isinstance(self.optim, Mapping):
            bad("optim", "a mapping of OptimConfig fields")
        self.optim_config()
        if not isinstance(self.ema, (int, float)) or isinstance(self.ema, bool) or not 0 <= self.ema < 1:
            bad("ema", "a number in [0, 1)")
        if self.mining_layers is not None:
            if isinstance(self.mining_layers, list):
                object.__setattr__(self, "mining_layers", tuple(self.mining_layers))
            if not (isinstance(self.mining_layers, tuple) and self.mining_layers
                    and all(isinstance(x, str) for x in self.mining_layers)):
                bad("mining_layers", "a list of VGG16 layer names")
        if not isinstance(self.stage1, Mapping):
            bad("stage1", "a mapping of Stage1Config fields")
        self.stage1_config()

    def loss_config(self, **extra: Any):
        """The approach's :class:`~fastep.zoo.step.config.LossConfig` with ``loss`` applied."""
        from .config import LossConfig

        try:
            return override(LossConfig.preset(self.approach, **extra), dict(self.loss), what="StEP loss config")
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"run config loss: {err}") from None

    def optim_config(self):
        """The :class:`~fastep.zoo.step.config.OptimConfig` (the paper's Adams) with ``optim`` applied."""
        from .config import OptimConfig

        try:
            return override(OptimConfig(), dict(self.optim), what="StEP optimizer config")
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"run config optim: {err}") from None

    def stage1_config(self, vgg_weights: str = "random"):
        """The :class:`~fastep.zoo.step.stage1.Stage1Config` of this run: ``stage1_epochs``,
        ``seed`` and ``mining_layers`` from their run-config keys, ``stage1`` applied on top."""
        from .stage1 import Stage1Config

        owned = {"epochs": "stage1_epochs", "seed": "seed", "style_layers": "mining_layers",
                 "vgg_weights": "vgg_weights"}
        for key in self.stage1:
            if key in owned:
                raise ConfigError(f"run config stage1.{key}: set it with the run-config key {owned[key]!r}")
        base = Stage1Config(epochs=self.stage1_epochs, seed=self.seed, vgg_weights=vgg_weights,
                            **({"style_layers": self.mining_layers} if self.mining_layers else {}))
        try:
            return override(base, dict(self.stage1), what="StEP stage-1 config")
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"run config stage1: {err}") from None

    @property
    def resolution(self) -> int:
        """The training resolution (its one home is ``model.resolution``)."""
        return self.model.resolution

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


#: What each preset changes from the dataclass defaults (the paper's run).
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": {},
    # The main job on a 2-core CPU in under 10 minutes (README, "The CPU preset": the search that
    # chose these values and one protocol ablation row per deviation from the paper).  32 x 32
    # with 16-wide nets; offline the perceptual loss has only a random-weight VGG, whose feature
    # distance does not pull colours and layout into place at this scale, so the reconstruction
    # is a pixel L1 term instead (and without the VGG passes a step is about 4x cheaper).
    "cpu": dict(batch=16, stage2_kimg=4.0, stage3_kimg=20.0, n_train=800, n_val=200, stage1_epochs=20,
                mapper_epochs=60, ckpt_every=8.0, image_every=8.0, log_every=25, workers=0, compile=False,
                amp=False, channels_last=False, ema=0.99,
                mining_layers=("relu1_2", "relu2_2", "relu3_2"),
                # random-VGG Gram distances are ruled by colour: mine on the high-pass image too,
                # with semi-hard negatives, and train E longer (stage 1 costs seconds at 32 px)
                stage1={"mining_features": "gram+highpass", "negatives": "band", "negative_band": (20, 60)},
                loss={"lambda_rec": 0.0, "lambda_pixel": 10.0},
                # plain (not equalized learning-rate) convs at 3x the paper's Adam steps: a few
                # thousand steps are all a CPU run has, and equalized convs learn ~2x slower here
                optim={"lr_ge": 3e-3, "lr_d": 3e-3},
                model={"resolution": 32, "g_nf": 16, "e_nf": 16, "d_nf": 16, "n_res": 2, "d_scales": 2,
                       "equalized_lr": False}),
}

def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, true/false, null, lists) or else the plain string."""
    low = text.strip().lower()
    if low in ("true", "false", "null", "none"):
        return {"true": True, "false": False}.get(low)
    try:
        return json.loads(text)
    except ValueError:
        return text


def resolve_run_config(preset: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                       **kw: Any) -> RunConfig:
    """Preset -> overrides -> one validated :class:`RunConfig`.

    ``preset`` None picks ``paper`` on CUDA (the ``device`` override, or ``auto``), else ``cpu``.
    Overrides may be given as a mapping (keys like ``"model.g_nf"``) and/or keywords.
    """
    return resolve_preset(RunConfig, PRESETS, preset, {**dict(overrides or {}), **kw}, system="StEP",
                          configs={"model": lambda base: override(ModelConfig(), base or {},
                                                                  what="StEP model config")},
                          dicts={"loss": "field", "optim": "field", "stage1": "field"})
