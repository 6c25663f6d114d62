"""BridgeGAN (Huang, Zheng, Hu, Sun, Li, "Bridging the Gap between Label- and Reference-based
Synthesis in Multi-attribute Image-to-Image Translation", ICCV 2021): label-based (a noise
vector and the attribute difference, through a mapping network) and reference-based (a style
encoder on a reference image) codes in one spatial style space, fused additively and fed to a
SPADE generator.

In progress: the networks, the codes and every loss, and the labelled data exist; the training
step (5 critic updates per generator update), the trainer integration, checkpoints, sampling and
evaluation do not yet.  Hence ``SYSTEM`` builds networks from its presets but has no training
entry, and loading a checkpoint is an error that says so.

* :class:`BridgeConfig` and its presets ``paper`` (128 px, 14 attributes), ``cpu`` (64 px, the
  built-in set's 15 attributes, widths halved), ``tiny`` (:mod:`.config`);
* the networks G, M, E, D/C (:mod:`.networks`), :func:`build_networks`;
* the codes and losses, :class:`LossWeights` presets ``paper`` and ``code``, the release's
  :class:`LatentBank` update (:mod:`.losses`);
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
    from ...train.checkpoint import CheckpointError

    raise CheckpointError(f"checkpoint {source!r}: this fastep cannot use BridgeGAN checkpoints yet "
                          f"(the system has networks and losses but no trainer or inference object)")


SYSTEM = System(
    name="bridgegan",
    summary="BridgeGAN: label- and reference-based multi-attribute translation (networks and losses; "
            "no training entry yet)",
    config_type=BridgeConfig,
    presets=PRESETS,
    build=build_networks,
    load=_load,
    config_from_checkpoint=config_from_checkpoint,
)
