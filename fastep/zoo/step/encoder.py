"""The StEP style encoder E(B) -> z (DRIT-style "concat" appearance encoder).

Architecture (official StEP code, ``e_nf = 64``, 256 x 256):
    4x4 stride-2 conv 3 -> 64                                       128 x 128
    basic block 64 -> 128, pixel norm                               64 x 64
    basic block 128 -> 192, pixel norm                              32 x 32
    basic block 192 -> 256, pixel norm                              16 x 16
    LeakyReLU(0.2), global average pool, FC -> z (8)  [+ FC -> log-variance, VAE baselines]
Basic block (DRIT): ``avgpool2(conv3x3(lrelu(conv3x3(lrelu(x))))) + conv1x1(avgpool2(x))``.
Forward cost at 256 x 256: 7.07 GMAC per image (docs/step.md: ~7.1).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.layers import EqConv2d, EqLinear, check_images, pixel_norm

__all__ = ["StyleEncoder", "BasicBlock"]


class BasicBlock(nn.Module):
    """DRIT basic block: residual path of two 3x3 convs + 2x2 average pool, 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, equalized: bool = True):
        super().__init__()
        self.conv0 = EqConv2d(cin, cout, 3, slope=1.0, equalized=equalized)
        self.conv1 = EqConv2d(cout, cout, 3, slope=1.0, equalized=equalized)
        self.shortcut = EqConv2d(cin, cout, 1, slope=1.0, equalized=equalized)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv0(F.leaky_relu(x, 0.2))
        y = self.conv1(F.leaky_relu(y, 0.2))
        y = F.avg_pool2d(y, 2)
        return y + self.shortcut(F.avg_pool2d(x, 2))


class StyleEncoder(nn.Module):
    """Style encoder: ``E(B) -> z[N, z_dim]`` (the mean code).

    Args:
        in_ch: image channels.
        z_dim: code size (8).
        nf: first width (``e_nf``, 64); blocks go to 2*nf, 3*nf, 4*nf (128, 192, 256).
        logvar: also build the FC log-variance head (VAE baselines, see :meth:`stats`).
        pixelnorm: pixel norm after every basic block (official ``normalize_drit_Ez``).
        equalized: equalized learning-rate convs.
    """

    def __init__(self, in_ch: int = 3, z_dim: int = 8, nf: int = 64, logvar: bool = False,
                 pixelnorm: bool = True, equalized: bool = True):
        super().__init__()
        if z_dim <= 0 or nf <= 0:
            raise ValueError(f"z_dim and nf must be positive, got z_dim={z_dim}, nf={nf}")
        self.in_ch, self.z_dim, self.pixelnorm = in_ch, z_dim, pixelnorm
        self.stem = EqConv2d(in_ch, nf, 4, 2, slope=0.2, equalized=equalized)
        widths = [nf, 2 * nf, 3 * nf, 4 * nf]
        self.blocks = nn.ModuleList([BasicBlock(widths[i], widths[i + 1], equalized) for i in range(3)])
        self.fc_mean = EqLinear(widths[-1], z_dim)
        self.fc_logvar = EqLinear(widths[-1], z_dim) if logvar else None
        self.widths = widths

    @property
    def has_logvar(self) -> bool:
        return self.fc_logvar is not None

    def features(self, x: Tensor) -> Tensor:
        """Pooled 4*nf-dim features before the FC heads (float32; float64 for float64 input)."""
        if not torch.compiler.is_compiling():
            check_images(x, "B", self.in_ch, 16)
        x = self.stem(x)
        for blk in self.blocks:
            x = blk(x)
            if self.pixelnorm:
                x = pixel_norm(x)
        x = F.leaky_relu(x, 0.2)
        return x.to(torch.promote_types(x.dtype, torch.float32)).mean(dim=(2, 3))

    def stats(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(mu, logvar)``; needs ``logvar=True`` at construction."""
        if self.fc_logvar is None:
            raise RuntimeError("StyleEncoder.stats needs the log-variance head: build it with logvar=True "
                               "(ModelConfig.e_logvar=True)")
        h = self.features(x)
        return self.fc_mean(h), self.fc_logvar(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_mean(self.features(x))

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, widths={self.widths}, logvar={self.has_logvar}"
