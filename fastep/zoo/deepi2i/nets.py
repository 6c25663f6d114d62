"""DeepI2I's networks (Wang, Yu, van de Weijer, "DeepI2I: Enabling Deep Hierarchical
Image-to-Image Translation by Transferring from GANs", NeurIPS 2020, section 3 and
supplementary section A):

* encoder Y: the BigGAN discriminator's trunk; its block outputs at the sides in [R/32, R/4]
  are the hierarchical features (at 128: 32, 16, 8, 4; at 64: 16, 8, 4);
* adaptor L: one residual block per level that maps Y's channels at that side to the
  generator's channels there (pre-activation, no pooling: ReLU - conv3 - ReLU - conv3, plus a
  1x1 shortcut when the channels change);
* generator F: the BigGAN generator, adding ``weight * L_s`` to its features at each side s;
* discriminator P: the BigGAN projection discriminator (its tap features give the
  reconstruction loss).

:func:`build_nets` returns ``{"G": F, "D": P, "E": Y, "A": L}``.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import Tensor, nn

from .biggan import DBlock, Discriminator, Generator, init_weights
from .config import DeepI2IConfig

__all__ = ["Encoder", "Adaptor", "build_nets", "trunk_parameters"]


class Encoder(Discriminator):
    """DeepI2I's encoder Y: a BigGAN discriminator used for its features.

    ``forward(x)`` returns ``{side: features}`` at ``cfg.taps``.  The projection head
    (``linear``, ``embed``) is kept, unused, so that a discriminator's state dict (``D.pth``)
    loads into the encoder strictly; :func:`trunk_parameters` counts the blocks only.
    """

    def forward(self, x: Tensor) -> Dict[int, Tensor]:  # type: ignore[override]
        return self.trunk(x)[1]


def trunk_parameters(d: Discriminator) -> int:
    """Parameters of the discriminator's blocks (the encoder's trunk, without the head)."""
    return sum(p.numel() for p in d.blocks.parameters())


class Adaptor(nn.Module):
    """DeepI2I's adaptor L: ``forward({side: Y_s}) -> {side: L_s}`` with one
    pre-activation block per tap side (``levels["32"]`` etc.), channels mapped from the
    encoder's to the generator's at that side."""

    def __init__(self, cfg: DeepI2IConfig):
        super().__init__()
        self.cfg = cfg
        self.levels = nn.ModuleDict()
        for side, block in cfg.taps.items():
            self.levels[str(side)] = DBlock(cfg.d_out[block], cfg.g_channels_at(side), preactivation=True,
                                            downsample=False, sn_eps=cfg.sn_eps)

    def forward(self, features: Mapping[int, Tensor]) -> Dict[int, Tensor]:
        want = set(self.cfg.taps)
        if set(features) != want:
            raise ValueError(f"Adaptor takes encoder features at sides {sorted(want, reverse=True)}, "
                             f"got {sorted(features, reverse=True)}")
        return {s: self.levels[str(s)](features[s]) for s in self.cfg.taps}


def build_nets(cfg: DeepI2IConfig, device=None) -> Dict[str, nn.Module]:
    """DeepI2I's four networks, fresh: ``{"G": Generator, "D": Discriminator, "E": Encoder,
    "A": Adaptor}`` (float32, train mode).  G, D and E get ``cfg.init``, A ``cfg.adaptor_init``;
    on the meta device (shape and size checks) no initialisation runs."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    with device:
        nets: Dict[str, nn.Module] = {"G": Generator(cfg), "D": Discriminator(cfg), "E": Encoder(cfg),
                                      "A": Adaptor(cfg)}
    if device.type != "meta":
        for name, net in nets.items():
            init_weights(net, cfg.adaptor_init if name == "A" else cfg.init)
    return nets
