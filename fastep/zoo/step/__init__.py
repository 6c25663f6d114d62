"""StEP (Meshry et al., "StEP: Style-based Encoder Pre-training for Multi-modal Image
Synthesis", CVPR 2021): the first system of the zoo.

* networks: :class:`Generator`, :class:`StyleEncoder`, :class:`MultiScaleDiscriminator`
  (:mod:`.generator`, :mod:`.encoder`, :mod:`.discriminator`), the IMLE :class:`Mapper`;
* :class:`ModelConfig` with the presets ``paper`` (256 px, the official widths), ``cpu`` (64 px)
  and ``tiny`` (32 px, narrow: tests); :func:`build_models` (:mod:`.nets`);
* :class:`LossConfig` and the approach table of the paper's Table 4 (:mod:`.config`);
* the training step :class:`TrainStep` (:mod:`.train_step`), stage 1 (:mod:`.stage1`), the
  mapper (:mod:`.imle`) and the stage pipeline (:mod:`.pipeline`);
* inference: :class:`Translator` (:mod:`.translator`), what ``fastep.zoo.load`` returns.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..system import System
from .config import ModelConfig
from .discriminator import MultiScaleDiscriminator, PatchDiscriminator
from .encoder import StyleEncoder
from .generator import Generator
from .mapper import Mapper
from .nets import Models, as_dict, build_models
from .translator import Translator

__all__ = ["SYSTEM", "ModelConfig", "Generator", "StyleEncoder", "MultiScaleDiscriminator", "PatchDiscriminator",
           "Mapper", "Models", "build_models", "Translator", "model_config_from_checkpoint", "load_translator"]

PRESETS = {
    "paper": ModelConfig,
    "cpu": lambda: ModelConfig(resolution=64),
    "tiny": ModelConfig.tiny,
}


def model_config_from_checkpoint(ckpt) -> ModelConfig:
    """The :class:`ModelConfig` a checkpoint's networks were built with."""
    from ...config import from_dict
    from ...train.checkpoint import checkpoint_config

    return from_dict(ModelConfig, checkpoint_config(ckpt), what="StEP model config")


_MAPPER_ARGS = ("z_dim", "noise_dim", "hidden", "n_hidden")


def load_translator(ckpt, device: torch.device, ema: bool = True, source: str = "the checkpoint") -> Translator:
    """A :class:`Translator` from a StEP :class:`~fastep.train.checkpoint.Checkpoint`."""
    from ...config import ConfigError
    from ...train.checkpoint import CheckpointError

    src = f"checkpoint {source!r}"
    try:
        model_cfg = model_config_from_checkpoint(ckpt)
    except ConfigError as err:
        raise CheckpointError(f"{src}: {err}") from None
    models = build_models(model_cfg, device)
    for name in ("G", "E"):
        sd = ckpt.weights_for(name, ema=ema)
        if sd is None:
            if name == "G" and ckpt.stage == "1":
                continue  # a stage-1 checkpoint has only E
            raise CheckpointError(f"{src} has no weights for {name} (stage {ckpt.stage})")
        try:
            getattr(models, name).load_state_dict(sd)
        except RuntimeError as err:
            raise CheckpointError(f"{src}: the {name} weights do not fit its model config "
                                  f"({str(err).splitlines()[0]})") from None
    mapper = None
    if ckpt.weights.get("mapper") is not None:
        args = dict(ckpt.configs.get("mapper_net") or {})
        unknown = sorted(set(args) - set(_MAPPER_ARGS))
        if unknown:
            raise CheckpointError(f"{src}: unknown mapper key(s) {unknown}; valid: {', '.join(_MAPPER_ARGS)}")
        mapper = Mapper(**args)
        mapper.load_state_dict(ckpt.weights["mapper"])
        mapper = mapper.to(device)
    zs = ckpt.extras.get("z_stats")
    z_stats = None if zs is None else {k: torch.as_tensor(v).to(device) for k, v in zs.items()}
    extras: Dict[str, Any] = {"stage": ckpt.stage, "step": ckpt.step, "kimg": ckpt.kimg,
                              "train_cfg": ckpt.configs.get("train"), "metrics": ckpt.metrics, "path": source}
    return Translator(models.G, models.E, model_cfg, mapper=mapper, z_stats=z_stats, extras=extras)


SYSTEM = System(
    name="step",
    summary="StEP: style-based encoder pre-training (triplet-trained E, then G/E/D, IMLE mapper)",
    config_type=ModelConfig,
    presets=PRESETS,
    build=lambda cfg: as_dict(build_models(cfg)),
    load=load_translator,
    config_from_checkpoint=model_config_from_checkpoint,
    stages=("1", "2", "3", "mapper"),
    run_config=lambda preset=None, overrides=None: _run_config(preset, overrides),
    train=lambda run: _train(run),
)


def _run_config(preset, overrides):
    from .run_config import resolve_run_config

    return resolve_run_config(preset, overrides)


def _train(run):
    from .pipeline import run_pipeline

    return run_pipeline(run)
