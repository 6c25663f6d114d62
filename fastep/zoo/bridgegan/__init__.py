"""BridgeGAN (Huang, Zheng, Hu, Sun, Li, "Bridging the Gap between Label- and Reference-based
Synthesis in Multi-attribute Image-to-Image Translation", ICCV 2021): label-based (a noise
vector and the attribute difference, through a mapping network) and reference-based (a style
encoder on a reference image) codes in one spatial style space, fused additively and fed to a
SPADE generator.

Training: ``fastep train --system bridgegan --preset cpu`` (:mod:`.run_config`, :mod:`.pipeline`,
the step :class:`~.train_step.BridgeTrainStep`: ``n_critic`` WGAN-GP critic updates on as many
batches per generator update); inference: :class:`~.inference.BridgeModel` (what
``fastep.zoo.load`` returns; ``fastep sample`` with ``--set`` / ``--ref``); evaluation on the
built-in data: :mod:`.evaluate`.

* :class:`BridgeConfig` and its presets ``paper`` (128 px, 14 attributes), ``cpu`` (32 px, the
  built-in set's 15 attributes, narrow), ``half`` (64 px, widths halved), ``tiny`` (:mod:`.config`);
* the networks G, M, E, D/C (:mod:`.networks`), :func:`build_networks`;
* the codes and losses, :class:`LossWeights` presets ``paper`` and ``code``, the release's
  :class:`LatentBank` update (:mod:`.losses`);
* :class:`RunConfig` and its run presets ``paper`` and ``cpu`` (:mod:`.run_config`);
* :class:`AttributeSpace`, :class:`BuiltinAttributes`, :class:`CelebAAttributes` (:mod:`.attributes`).
"""
from __future__ import annotations

from ..system import System
from .attributes import AttributeSpace, BuiltinAttributes, CelebAAttributes, LabelError, builtin_space
from .config import PRESETS, BridgeConfig
from .losses import LatentBank, LossWeights, discriminator_loss, generator_losses, gradient_penalty, make_codes
from .networks import DiscriminatorClassifier, Generator, MappingNetwork, StyleEncoder, build_networks

__all__ = ["SYSTEM", "BridgeConfig", "PRESETS", "build_networks", "Generator", "MappingNetwork", "StyleEncoder",
           "DiscriminatorClassifier", "LossWeights", "LatentBank", "make_codes", "generator_losses", "discriminator_loss",
           "gradient_penalty", "AttributeSpace", "BuiltinAttributes", "CelebAAttributes", "LabelError",
           "builtin_space", "config_from_checkpoint"]


def config_from_checkpoint(ckpt) -> BridgeConfig:
    """The :class:`BridgeConfig` a checkpoint's networks were built with (``configs['model']``)."""
    from ...config import ConfigError
    from ...train.checkpoint import CheckpointError, checkpoint_config

    data = checkpoint_config(ckpt)
    try:
        return BridgeConfig.from_dict(data)
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"the checkpoint's BridgeGAN model config is invalid: {err}") from None


def _load(ckpt, device, ema=True, source="the checkpoint"):
    from .inference import load_model

    return load_model(ckpt, device, ema, source)


def _run_config(preset=None, overrides=None):
    from .run_config import resolve_run_config

    return resolve_run_config(preset, overrides)


def _train(run):
    from .pipeline import run_training

    return run_training(run)


SYSTEM = System(
    name="bridgegan",
    summary="BridgeGAN: label- and reference-based multi-attribute translation (SPADE G, mapping M, "
            "style encoder E, WGAN-GP critic/classifier)",
    config_type=BridgeConfig,
    presets=PRESETS,
    build=build_networks,
    load=_load,
    config_from_checkpoint=config_from_checkpoint,
    stages=("train",),
    run_config=_run_config,
    train=_train,
    extra={"evaluates_in_train": True},  # --no-eval sets the run config's eval to false
)
