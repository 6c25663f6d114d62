"""The StEP generator G(A, z): a pix2pixHD-style encoder-decoder with concatenated skips.

Architecture (official StEP code, ``g_nf = 32``, 256 x 256, z of 8 dims):

content encoder (instance norm + ReLU after every conv)
    7x7 conv 3 -> 32                                   256 x 256
    3x3 stride-2 convs 32 -> 64 -> 128 -> 256         128, 64, 32
    4 residual blocks at 256 channels                  32 x 32
decoder
    tile z, concat -> 264 channels; 4 residual blocks at 264 channels (IN + ReLU)
    3 upsampling blocks; each first concatenates the same-resolution encoder feature (skip) and
    the tiled z, then nearest x2, 3x3 conv, ReLU, pixel norm, 3x3 conv, ReLU, pixel norm:
        [264 + 256 + 8 = 528] -> 128 @ 64,  [128 + 128 + 8] -> 64 @ 128,  [64 + 64 + 8] -> 32 @ 256
    concat skip (the 7x7 conv's output) and z: [32 + 32 + 8 = 72] -> 1x1 conv -> 3, tanh.
All convs use equalized learning rate.  Forward cost at 256 x 256: 20.5 GMAC per image
(content encoder 6.0, decoder residual blocks 5.1, upsampling path 9.4), matching the ~20.6
GMAC of docs/step.md; ``tests/models/test_models.py`` checks it with torch.utils.flop_counter.

``fast_convs = True`` (set by :func:`fastep.nn.aligned.set_fast_convs`) computes the same
function faster: each upsampling block's nearest x2 + first 3x3 conv as one stride-2 transposed
conv with a 4x4 kernel (16/36 of the multiply-accumulates), and ``to_rgb`` padded to 8 outputs.

``encode(A)`` and ``decode(features, z)`` are exposed separately so that a training step can
reuse one content encoding for several codes (direct, random-z and cross-cycle outputs).
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from ...nn.aligned import aligned_conv, is_aligned, upsample_conv
from ...nn.layers import EqConv2d, InstanceNorm, check_codes, check_images, pixel_norm, tile_concat

__all__ = ["Generator", "ResBlock"]


class ResBlock(nn.Module):
    """conv3x3 - IN - ReLU - conv3x3 - IN, plus identity (official ``ResBlock``)."""

    def __init__(self, channels: int, equalized: bool = True):
        super().__init__()
        self.conv0 = EqConv2d(channels, channels, 3, slope=1.0, equalized=equalized)
        self.norm0 = InstanceNorm(channels)
        self.conv1 = EqConv2d(channels, channels, 3, slope=1.0, equalized=equalized)
        self.norm1 = InstanceNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.norm0(self.conv0(x)))
        return x + self.norm1(self.conv1(y))


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, equalized: bool):
        super().__init__()
        self.conv = EqConv2d(cin, cout, kernel, stride, slope=0.2, equalized=equalized)
        self.norm = InstanceNorm(cout)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm(self.conv(x)))


class _Up(nn.Module):
    """nearest x2, conv3x3, ReLU, pixel norm, conv3x3, ReLU, pixel norm."""

    def __init__(self, cin: int, cout: int, equalized: bool):
        super().__init__()
        self.conv0 = EqConv2d(cin, cout, 3, slope=0.2, equalized=equalized)
        self.conv1 = EqConv2d(cout, cout, 3, slope=0.2, equalized=equalized)
        self.fast_convs = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fast_convs:  # the same function as one stride-2 transposed conv (fastep.nn.aligned)
            x = upsample_conv(x, self.conv0)
        else:
            x = self.conv0(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = pixel_norm(torch.relu(x))
        return pixel_norm(torch.relu(self.conv1(x)))


class Generator(nn.Module):
    """StEP generator ``G(A, z) -> B'`` in [-1, 1].

    Args:
        in_ch, out_ch: image channels of A and of the output.
        z_dim: style code size (8).
        nf: width of the first conv (``g_nf``, 32); doubles at every downsampling (cap ``max_nf``).
        n_down: stride-2 convs / upsampling blocks (3).
        n_res: residual blocks in the encoder and in the decoder (4 each).
        skips: concatenate encoder features in the decoder (official default True).
        z_all: concatenate z at every upsampling block and the final conv (default True);
            z is always concatenated at the bottleneck.
        equalized: equalized learning-rate convs.
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, z_dim: int = 8, nf: int = 32, n_down: int = 3,
                 n_res: int = 4, max_nf: int = 512, skips: bool = True, z_all: bool = True,
                 equalized: bool = True):
        super().__init__()
        if z_dim <= 0:
            raise ValueError(f"z_dim must be positive, got {z_dim}")
        if n_down < 1:
            raise ValueError(f"n_down must be >= 1, got {n_down}")
        self.in_ch, self.out_ch, self.z_dim, self.n_down, self.n_res = in_ch, out_ch, z_dim, n_down, n_res
        self.skips, self.z_all = skips, z_all
        # content encoder
        self.stem = _Down(in_ch, nf, 7, 1, equalized)
        widths = [nf]
        down = []
        for _ in range(n_down):
            cout = min(widths[-1] * 2, max_nf)
            down.append(_Down(widths[-1], cout, 3, 2, equalized))
            widths.append(cout)
        self.down = nn.ModuleList(down)
        bottleneck = widths[-1]
        self.enc_res = nn.Sequential(*[ResBlock(bottleneck, equalized) for _ in range(n_res)])
        # decoder
        self.dec_res = nn.Sequential(*[ResBlock(bottleneck + z_dim, equalized) for _ in range(n_res)])
        ups = []
        cur = bottleneck + z_dim  # x entering the first upsampling block
        for i in range(n_down):
            skip = widths[n_down - i] if skips else 0
            cin = cur + skip + (z_dim if z_all else 0)
            cout = widths[n_down - i - 1]
            ups.append(_Up(cin, cout, equalized))
            cur = cout
        self.up = nn.ModuleList(ups)
        cin = cur + (widths[0] if skips else 0) + (z_dim if z_all else 0)
        self.to_rgb = EqConv2d(cin, out_ch, 1, slope=1.0, equalized=equalized)
        self.widths = widths
        self.fast_convs = False

    @property
    def min_multiple(self) -> int:
        return 2 ** self.n_down

    def encode(self, a: Tensor) -> List[Tensor]:
        """Content features of A: ``[stem, down_1, ..., down_n, bottleneck]``."""
        feats = [self.stem(a)]
        for blk in self.down:
            feats.append(blk(feats[-1]))
        feats.append(self.enc_res(feats[-1]))
        return feats

    def decode(self, feats: List[Tensor], z: Tensor) -> Tensor:
        """Image from content features (``encode``'s output) and codes ``z[N, z_dim]``."""
        zz = z if self.z_all else None
        x = self.dec_res(tile_concat(feats[-1], z))
        for i, blk in enumerate(self.up):
            if self.skips:
                x = torch.cat([feats[self.n_down - i], x], dim=1)
            x = blk(tile_concat(x, zz))
        if self.skips:
            x = torch.cat([feats[0], x], dim=1)
        x = tile_concat(x, zz)
        pad = self.fast_convs and not (is_aligned(x.shape[1]) and is_aligned(self.to_rgb.out_ch))
        return torch.tanh(aligned_conv(x, self.to_rgb) if pad else self.to_rgb(x))

    def forward(self, a: Tensor, z: Tensor) -> Tensor:
        if not torch.compiler.is_compiling():
            check_images(a, "A", self.in_ch, self.min_multiple)
            check_codes(z, "z", a.shape[0], self.z_dim)
        return self.decode(self.encode(a), z)

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, widths={self.widths}, n_res={self.n_res}, skips={self.skips}, z_all={self.z_all}"

