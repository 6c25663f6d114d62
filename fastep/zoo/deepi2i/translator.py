"""DeepI2I's inference object and its checkpoint reader (what ``fastep.zoo.load`` returns).

A DeepI2I checkpoint is a fastep :class:`~fastep.train.checkpoint.Checkpoint` with
``system="deepi2i"``, the network configuration in ``configs["model"]`` (a
:class:`DeepI2IConfig` as a dict) and the state dicts ``weights["G"]`` (and ``"G_ema"``),
``weights["E"]`` and ``weights["A"]`` (``"D"`` too while training; translation needs no D).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor

from .biggan import Generator
from .config import DeepI2IConfig
from .nets import Adaptor, Encoder

__all__ = ["Translator", "config_from_checkpoint", "load_translator"]


class Translator:
    """A trained DeepI2I model in eval mode on one device.

    ``translate(x, y, z=None, seed=None)``: x [N, 3, R, R] in [-1, 1] (any class), y the
    target class (an int for all, or [N] indices), z [N, dim_z] or ``None`` to draw
    z ~ N(0, I) (from ``seed`` when given); returns [N, 3, R, R] in [-1, 1], under no_grad.
    Attributes: ``G``, ``E``, ``A``, ``cfg``, ``device``, ``extras``.
    """

    system = "deepi2i"

    def __init__(self, G: Generator, E: Encoder, A: Adaptor, cfg: DeepI2IConfig,
                 extras: Optional[Dict[str, Any]] = None):
        self.G, self.E, self.A, self.cfg = G.eval(), E.eval(), A.eval(), cfg
        self.device = next(G.parameters()).device
        self.extras = dict(extras or {})

    @torch.no_grad()
    def translate(self, x: Tensor, y: Union[int, Tensor], z: Optional[Tensor] = None,
                  seed: Optional[int] = None) -> Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a float tensor (N, 3, {self.cfg.resolution}, {self.cfg.resolution}) "
                             f"in [-1, 1], got {got}")
        n = x.shape[0]
        if isinstance(y, int) and not isinstance(y, bool):
            y = torch.full((n,), y, dtype=torch.long, device=x.device)
        if z is None:
            gen = None if seed is None else torch.Generator(device=x.device).manual_seed(int(seed))
            z = torch.randn(n, self.cfg.dim_z, generator=gen, device=x.device, dtype=x.dtype)
        return self.G(z, y, self.A(self.E(x)))


def config_from_checkpoint(ckpt) -> DeepI2IConfig:
    """The :class:`DeepI2IConfig` a checkpoint's networks were built with."""
    from ...config import from_dict
    from ...train.checkpoint import checkpoint_config

    return from_dict(DeepI2IConfig, checkpoint_config(ckpt), what="DeepI2I model config")


def load_translator(ckpt, device: torch.device, ema: bool = True, source: str = "the checkpoint") -> Translator:
    """A :class:`Translator` from a DeepI2I checkpoint (G's EMA weights when ``ema`` and present)."""
    from ...config import ConfigError
    from ...train.checkpoint import CheckpointError

    src = f"checkpoint {source!r}"
    try:
        cfg = config_from_checkpoint(ckpt)
    except ConfigError as err:
        raise CheckpointError(f"{src}: {err}") from None
    except CheckpointError as err:
        raise CheckpointError(f"{src}: {err}") from None
    with torch.device(device):
        nets = {"G": Generator(cfg), "E": Encoder(cfg), "A": Adaptor(cfg)}
    for name, net in nets.items():
        sd = ckpt.weights_for(name, ema=ema and name == "G")
        if sd is None:
            raise CheckpointError(f"{src} has no weights for {name} (stage {ckpt.stage})")
        try:
            net.load_state_dict(sd)
        except RuntimeError as err:
            raise CheckpointError(f"{src}: the {name} weights do not fit its model config "
                                  f"({str(err).splitlines()[0]})") from None
    extras = {"stage": ckpt.stage, "step": ckpt.step, "kimg": ckpt.kimg, "metrics": ckpt.metrics, "path": source}
    return Translator(nets["G"], nets["E"], nets["A"], cfg, extras)
