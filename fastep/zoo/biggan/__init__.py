"""BigGAN (Brock et al., ICLR 2019) as a zoo entry: the class-conditional GAN DeepI2I transfers
from, trained on the built-in data as the stand-in for a pretrained BigGAN.

``fastep train --system biggan`` runs DeepI2I's stage ``biggan`` alone (the same run
configuration and presets as ``--system deepi2i``) and writes ``OUT/biggan/weights`` in the
BigGAN-PyTorch format, which :func:`fastep.zoo.deepi2i.load_biggan` reads like real weights;
``fastep.zoo.load(OUT/biggan/final.pt)`` returns a :class:`Sampler`.  The networks live with
DeepI2I (:mod:`fastep.zoo.deepi2i.biggan`).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import Tensor

from ..deepi2i.biggan import Discriminator, Generator
from ..deepi2i.config import PRESETS, DeepI2IConfig
from ..system import System

__all__ = ["SYSTEM", "Sampler", "load_sampler"]


class Sampler:
    """A trained class-conditional BigGAN generator in eval mode: ``sample(y, z=None, seed=None)``
    with ``y`` an int (with ``n``) or [N] class indices; images [N, 3, R, R] in [-1, 1]."""

    system = "biggan"

    def __init__(self, G: Generator, cfg: DeepI2IConfig, extras: Optional[Dict[str, Any]] = None):
        self.G, self.cfg = G.eval(), cfg
        self.device = next(G.parameters()).device
        self.extras = dict(extras or {})

    @torch.no_grad()
    def sample(self, y: Union[int, Tensor], z: Optional[Tensor] = None, seed: Optional[int] = None,
               n: int = 1) -> Tensor:
        if isinstance(y, int) and not isinstance(y, bool):
            y = torch.full((n if z is None else len(z),), y, dtype=torch.long, device=self.device)
        if z is None:
            gen = None if seed is None else torch.Generator(device=self.device).manual_seed(int(seed))
            z = torch.randn(len(y), self.cfg.dim_z, generator=gen, device=self.device)
        return self.G(z, y)


def _config(ckpt) -> DeepI2IConfig:
    from ...config import from_dict
    from ...train.checkpoint import checkpoint_config

    return from_dict(DeepI2IConfig, checkpoint_config(ckpt), what="BigGAN model config")


def load_sampler(ckpt, device: torch.device, ema: bool = True, source: str = "the checkpoint") -> Sampler:
    """A :class:`Sampler` from a stage-biggan checkpoint (``G_ema`` when ``ema`` and present)."""
    from ...config import ConfigError
    from ...train.checkpoint import CheckpointError

    src = f"checkpoint {source!r}"
    try:
        cfg = _config(ckpt)
    except (ConfigError, CheckpointError) as err:
        raise CheckpointError(f"{src}: {err}") from None
    sd = ckpt.weights_for("G", ema=ema)
    if sd is None:
        raise CheckpointError(f"{src} has no weights for G (stage {ckpt.stage})")
    with torch.device(device):
        G = Generator(cfg)
    try:
        G.load_state_dict(sd)
    except RuntimeError as err:
        raise CheckpointError(f"{src}: the G weights do not fit its model config "
                              f"({str(err).splitlines()[0]})") from None
    return Sampler(G, cfg, {"stage": ckpt.stage, "step": ckpt.step, "kimg": ckpt.kimg, "path": source})


def _run_config(preset, overrides: Optional[Mapping[str, Any]]):
    from ..deepi2i.run_config import resolve_run_config

    overrides = dict(overrides or {})
    stages = overrides.pop("stages", ("biggan",))
    if tuple(stages) != ("biggan",):
        from ...config import ConfigError

        raise ConfigError(f"system biggan has one stage, 'biggan'; got {', '.join(map(str, stages))}")
    return resolve_run_config(preset, {**overrides, "stages": ("biggan",)})


def _train(run):
    from ..deepi2i.pipeline import run_pipeline

    return run_pipeline(run)


SYSTEM = System(
    name="biggan",
    summary="BigGAN: class-conditional GAN on the built-in data (DeepI2I's pretrained-GAN stand-in; "
            "BigGAN-PyTorch folder format)",
    config_type=DeepI2IConfig,
    presets=PRESETS,
    build=lambda cfg: {"G": Generator(cfg), "D": Discriminator(cfg)},
    load=load_sampler,
    config_from_checkpoint=_config,
    stages=("biggan",),
    run_config=_run_config,
    train=_train,
)
