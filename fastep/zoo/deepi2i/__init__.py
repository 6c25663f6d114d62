"""DeepI2I (Wang, Yu, van de Weijer, NeurIPS 2020): hierarchical image-to-image translation
by transfer from a pretrained BigGAN.  ``fastep train --system deepi2i`` runs the stages
``biggan`` (a class-conditional BigGAN on the built-in data, the stand-in for a pretrained one)
and ``transfer`` (:mod:`.pipeline`); ``fastep.zoo.load`` returns a :class:`Translator`.

* :class:`DeepI2IConfig` and :data:`PRESETS` (``paper``, ``gpu``, ``cpu``) (:mod:`.config`);
* spectrally normalised layers with BigGAN's state-dict names (:mod:`.sn`);
* the BigGAN generator and projection discriminator (:mod:`.biggan`);
* the encoder, the adaptor and :func:`build_nets` (:mod:`.nets`);
* :func:`load_biggan` / :func:`save_biggan`: BigGAN-PyTorch checkpoint folders (:mod:`.weights`);
* :class:`Translator`, what ``fastep.zoo.load`` returns for a DeepI2I checkpoint (:mod:`.translator`);
* the training steps :class:`BigGANStep`, :class:`TransferStep` and :class:`StepConfig`
  (:mod:`.train_step`), the labelled built-in data (:mod:`.data`), the run configuration
  (:mod:`.run_config`) and the stages (:mod:`.pipeline`).
"""
from __future__ import annotations

from ..system import System
from .biggan import (BatchNorm, ConditionalBatchNorm, DBlock, Discriminator, GBlock, Generator, SelfAttention,
                     init_weights)
from .config import PRESETS, SCRATCH_FUSION, TRANSFER_FUSION, DeepI2IConfig
from .nets import Adaptor, Encoder, build_nets, trunk_parameters
from .sn import SNConv2d, SNEmbedding, SNLinear
from .translator import Translator, config_from_checkpoint, load_translator
from .train_step import BigGANStep, StepConfig, TransferStep
from .weights import BigGANFormatError, BigGANWeights, config_from_biggan, load_biggan, save_biggan

__all__ = ["DeepI2IConfig", "PRESETS", "TRANSFER_FUSION", "SCRATCH_FUSION", "SNConv2d", "SNLinear", "SNEmbedding",
           "ConditionalBatchNorm", "BatchNorm", "GBlock", "DBlock", "SelfAttention", "Generator", "Discriminator",
           "Encoder", "Adaptor", "build_nets", "trunk_parameters", "init_weights", "BigGANFormatError",
           "BigGANWeights", "load_biggan", "save_biggan", "config_from_biggan", "Translator", "load_translator",
           "config_from_checkpoint", "StepConfig", "BigGANStep", "TransferStep", "SYSTEM"]

SYSTEM = System(
    name="deepi2i",
    summary="DeepI2I: translation by transfer from a pretrained BigGAN (stand-in BigGAN, then encoder, "
            "adaptor and fused generator)",
    config_type=DeepI2IConfig,
    presets=PRESETS,
    build=lambda cfg: build_nets(cfg),
    load=load_translator,
    config_from_checkpoint=config_from_checkpoint,
    stages=("biggan", "transfer"),
    run_config=lambda preset=None, overrides=None: _run_config(preset, overrides),
    train=lambda run: _train(run),
    extra={"evaluates_in_train": True},  # --no-eval sets the run config's eval to false
)


def _run_config(preset, overrides):
    from .run_config import resolve_run_config

    return resolve_run_config(preset, overrides)


def _train(run):
    from .pipeline import run_pipeline

    return run_pipeline(run)
