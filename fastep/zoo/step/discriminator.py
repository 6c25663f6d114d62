"""The StEP multi-scale conditional PatchGAN discriminator D(A, B).

Per scale (official StEP code, ``d_nf = 32``, 3 layers), input concat(B, A) (6 channels):
    4x4 stride-2 conv 6 -> 32, LeakyReLU(0.2)
    4x4 stride-2 conv 32 -> 64, IN, LeakyReLU;  4x4 stride-2 conv 64 -> 128, IN, LeakyReLU
    minibatch-stddev channel (129), 4x4 stride-1 conv 129 -> 256, IN, LeakyReLU
    4x4 stride-1 conv 256 -> 1  (patch logits; 32 x 32 at the first scale for 256 x 256 input)
Three scales with 2x2 average pooling of the input between them.  Forward cost at 256 x 256:
1.13 GMAC per image for all three scales (docs/step.md: ~1.1).

``fast_convs = True`` (set by :func:`fastep.nn.aligned.set_fast_convs`) computes the same
function with tensor-core-aligned channel counts (:mod:`fastep.nn.aligned`): the input is built
with 8 channels (two zero channels, zero weights), the minibatch-stddev conv runs on the 128
feature channels plus a closed-form border map, and the logits conv is padded to 8 outputs.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.aligned import aligned, aligned_conv, is_aligned, stddev_conv
from ...nn.layers import EqConv2d, InstanceNorm, check_images, minibatch_stddev, minibatch_stddev_value

__all__ = ["PatchDiscriminator", "MultiScaleDiscriminator"]


class PatchDiscriminator(nn.Module):
    """One scale: ``n_layers`` stride-2 convs, minibatch stddev, two stride-1 convs."""

    def __init__(self, in_ch: int = 6, nf: int = 32, n_layers: int = 3, mbstd: bool = True,
                 max_nf: int = 512, equalized: bool = True):
        super().__init__()
        self.mbstd = mbstd
        self.fast_convs = False
        convs, norms = [EqConv2d(in_ch, nf, 4, 2, slope=0.2, equalized=equalized)], [None]
        cur = nf
        for _ in range(1, n_layers):
            nxt = min(cur * 2, max_nf)
            convs.append(EqConv2d(cur, nxt, 4, 2, slope=0.2, equalized=equalized))
            norms.append(InstanceNorm(nxt))
            cur = nxt
        nxt = min(cur * 2, max_nf)
        convs.append(EqConv2d(cur + (1 if mbstd else 0), nxt, 4, 1, slope=0.2, equalized=equalized))
        norms.append(InstanceNorm(nxt))
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList([n if n is not None else nn.Identity() for n in norms])
        self.logits = EqConv2d(nxt, 1, 4, 1, slope=0.2, equalized=equalized)

    def forward(self, x: Tensor) -> Tensor:
        if self.fast_convs:
            return self._forward_aligned(x)
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if i == last and self.mbstd:
                x = minibatch_stddev(x)
            x = F.leaky_relu(norm(conv(x)), 0.2)
        return self.logits(x)

    def _forward_aligned(self, x: Tensor) -> Tensor:
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if i == last and self.mbstd:
                y = stddev_conv(x, minibatch_stddev_value(x), conv)
            elif is_aligned(conv.in_ch) and is_aligned(conv.out_ch):
                y = conv(x)
            else:
                y = aligned_conv(x, conv)
            x = F.leaky_relu(norm(y), 0.2)
        return aligned_conv(x, self.logits)


class MultiScaleDiscriminator(nn.Module):
    """``D(A, B) -> [logits_scale0, logits_scale1, ...]`` (conditional: sees concat(B, A)).

    Args:
        in_ch: channels of A; out_ch: channels of B (D's input has in_ch + out_ch).
        nf: first width (``d_nf``, 32); n_layers: stride-2 convs per scale (3);
        scales: number of scales (3); mbstd: minibatch-stddev channel (True).
        conditional: if False, D sees B only.
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, nf: int = 32, n_layers: int = 3, scales: int = 3,
                 mbstd: bool = True, conditional: bool = True, equalized: bool = True):
        super().__init__()
        if scales < 1:
            raise ValueError(f"scales must be >= 1, got {scales}")
        self.in_ch, self.out_ch, self.conditional = in_ch, out_ch, conditional
        self.n_layers, self.n_scales = n_layers, scales
        cin = out_ch + (in_ch if conditional else 0)
        self.scales = nn.ModuleList([PatchDiscriminator(cin, nf, n_layers, mbstd, equalized=equalized)
                                     for _ in range(scales)])
        self.fast_convs = False

    @property
    def min_multiple(self) -> int:
        return 2 ** (self.n_layers + self.n_scales - 1)

    def forward(self, a: Tensor, b: Tensor) -> List[Tensor]:
        if not torch.compiler.is_compiling():
            check_images(b, "B", self.out_ch, self.min_multiple)
            if self.conditional:
                check_images(a, "A", self.in_ch, self.min_multiple)
                if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
                    raise ValueError(f"A and B must have the same batch and size, got {tuple(a.shape)} "
                                     f"and {tuple(b.shape)}")
        parts = [b, a.to(b.dtype)] if self.conditional else [b]
        cin = sum(p.shape[1] for p in parts)
        if self.fast_convs and not is_aligned(cin):  # zero channels meet zero weights (aligned_conv)
            n, _, h, w = b.shape
            parts.append(b.new_zeros(n, aligned(cin) - cin, h, w))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else b
        outs = []
        for i, d in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 2)
            outs.append(d(x))
        return outs
