"""StEP's networks from one :class:`~fastep.zoo.step.config.ModelConfig`: the factory of the system."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Union

import torch
from torch import nn

from .config import ModelConfig
from .discriminator import MultiScaleDiscriminator
from .encoder import StyleEncoder
from .generator import Generator

__all__ = ["Models", "build_models", "as_dict"]


@dataclass
class Models:
    """The three networks of a StEP run."""

    G: Generator
    E: StyleEncoder
    D: MultiScaleDiscriminator

    def __iter__(self) -> Iterator[nn.Module]:
        return iter((self.G, self.E, self.D))

    def to(self, *args, **kwargs) -> "Models":
        for m in self:
            m.to(*args, **kwargs)
        return self


def build_models(model_cfg: ModelConfig, device: Union[str, torch.device] = "cpu", *,
                 seed: Optional[int] = None) -> Models:
    """Build G, E and D from ``model_cfg`` on ``device`` (float32, train mode).

    ``seed`` (optional) seeds the initialisation without touching the global RNG stream.
    """
    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    c = model_cfg
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(seed)
        G = Generator(c.in_ch, c.out_ch, c.z_dim, c.g_nf, c.g_n_down, c.n_res, c.g_max_nf, c.g_skips, c.g_z_all,
                      c.equalized_lr)
        E = StyleEncoder(c.out_ch, c.z_dim, c.e_nf, logvar=c.e_logvar, pixelnorm=c.e_pixelnorm,
                         equalized=c.equalized_lr)
        D = MultiScaleDiscriminator(c.in_ch, c.out_ch, c.d_nf, c.d_layers, c.d_scales, c.d_mbstd,
                                    c.d_conditional, c.equalized_lr)
    return Models(G, E, D).to(torch.device(device))



def as_dict(models: Models) -> Dict[str, nn.Module]:
    """``{"G": ..., "E": ..., "D": ...}``."""
    return {"G": models.G, "E": models.E, "D": models.D}
