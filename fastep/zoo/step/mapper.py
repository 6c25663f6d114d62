"""The mapper network M: N(0, I) noise -> style codes z, trained with IMLE (:mod:`fastep.zoo.step.imle`).

StEP (paper A.1, official code): an MLP with three 128-unit hidden layers and tanh activations,
output the 8-d style code (linear output layer).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["Mapper"]


class Mapper(nn.Module):
    """MLP ``noise[N, noise_dim] -> z[N, z_dim]``: ``n_hidden`` tanh layers of ``hidden`` units.

    Defaults (docs/step.md, official code): noise_dim = z_dim = 8, three hidden layers of 128, tanh.
    """

    def __init__(self, z_dim: int = 8, noise_dim: Optional[int] = None, hidden: int = 128, n_hidden: int = 3):
        super().__init__()
        noise_dim = z_dim if noise_dim is None else noise_dim
        for name, val in (("z_dim", z_dim), ("noise_dim", noise_dim), ("hidden", hidden)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: expected a positive integer, got {val!r}")
        if not isinstance(n_hidden, int) or n_hidden < 0:
            raise ValueError(f"n_hidden: expected a non-negative integer, got {n_hidden!r}")
        self.z_dim, self.noise_dim, self.hidden, self.n_hidden = z_dim, noise_dim, hidden, n_hidden
        layers = []
        width = noise_dim
        for _ in range(n_hidden):
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, z_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, noise: Tensor) -> Tensor:
        if noise.dim() != 2 or noise.shape[1] != self.noise_dim:
            raise ValueError(f"noise: expected [N, {self.noise_dim}], got {tuple(noise.shape)}")
        return self.net(noise)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None,
               device: Optional[torch.device] = None) -> Tensor:
        """``n`` style codes from fresh N(0, I) noise (on the mapper's device by default)."""
        device = torch.device(device) if device is not None else next(self.parameters()).device
        noise = torch.randn(n, self.noise_dim, generator=generator,
                            device=generator.device if generator is not None else device)
        return self(noise.to(device))

    def config(self) -> dict:
        """Constructor arguments, to rebuild the mapper from a checkpoint's state dict."""
        return {"z_dim": self.z_dim, "noise_dim": self.noise_dim, "hidden": self.hidden, "n_hidden": self.n_hidden}

    def extra_repr(self) -> str:
        return f"noise_dim={self.noise_dim}, z_dim={self.z_dim}, hidden={self.hidden}x{self.n_hidden}, tanh"
