"""BigGAN's generator and projection discriminator (Brock et al., ICLR 2019), the networks
DeepI2I transfers from, with module names that match BigGAN's released checkpoints.

Generator (``Generator``):

    z [N, dim_z] -> chunks z_0 .. z_B (hierarchical latent, one chunk per block plus one)
    c_i = [shared(y), z_i]                          class embedding + latent chunk, per block
    linear(z_0) -> [N, 16 ch, 4, 4]                  ``linear``           (SNLinear)
    block i: GBlock(c_i) (+ SelfAttention)           ``blocks.i.0`` (``blocks.i.1``)
    BN - ReLU - conv3x3 -> 3, tanh                   ``output_layer.{0,2}``

GBlock = ccbn - ReLU - nearest x2 - conv3 - ccbn - ReLU - conv3, plus nearest x2 - conv1
shortcut; ccbn is batch norm without affine whose gain ``1 + W_g c`` and bias ``W_b c`` come
from bias-free SN linear layers of the block's condition c.

Discriminator (``Discriminator``):

    block i: DBlock (+ SelfAttention)                ``blocks.i.0`` (``blocks.i.1``)
    ReLU, sum over H x W -> h [N, C]
    linear(h) + <embed(y), h>                        ``linear``, ``embed`` (SNEmbedding)

DBlock (wide) = [ReLU unless first] - conv3 - ReLU - conv3 - [avgpool 2], plus a conv1
shortcut (pooled after the conv in pre-activation blocks, before it in the first block).
Every conv, linear and embedding of both nets is spectrally normalised (:mod:`.sn`).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.layers import check_codes, check_images
from .config import DeepI2IConfig
from .sn import SNConv2d, SNEmbedding, SNLinear

__all__ = ["ConditionalBatchNorm", "BatchNorm", "GBlock", "DBlock", "SelfAttention", "Generator",
           "Discriminator", "init_weights"]


class ConditionalBatchNorm(nn.Module):
    """Batch norm without affine, then ``x * (1 + gain(c)) + bias(c)`` (BigGAN's ``ccbn``).

    ``gain``/``bias`` are bias-free SN linear maps of the condition c [N, cond_dim]; with both
    weights zero this is plain batch norm.  Running statistics are ``stored_mean``/``stored_var``.
    """

    def __init__(self, channels: int, cond_dim: int, eps: float = 1e-5, sn_eps: float = 1e-6,
                 momentum: float = 0.1):
        super().__init__()
        self.gain = SNLinear(cond_dim, channels, bias=False, eps=sn_eps)
        self.bias = SNLinear(cond_dim, channels, bias=False, eps=sn_eps)
        self.eps, self.momentum = float(eps), float(momentum)
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        gain = (1 + self.gain(c)).view(c.shape[0], -1, 1, 1)
        bias = self.bias(c).view(c.shape[0], -1, 1, 1)
        out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None, self.training, self.momentum,
                           self.eps)
        return out * gain + bias


class BatchNorm(nn.Module):
    """Batch norm with affine ``gain``/``bias`` and ``stored_mean``/``stored_var`` (BigGAN's names)."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps, self.momentum = float(eps), float(momentum)
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias, self.training,
                            self.momentum, self.eps)


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al., 2019) as in BigGAN: 1x1 SN convs ``theta``, ``phi``
    (C/8), ``g`` (C/2), ``o`` (back to C), keys and values max-pooled 2x2, output
    ``x + gamma * o(...)`` with ``gamma`` starting at 0."""

    def __init__(self, channels: int, sn_eps: float = 1e-6):
        super().__init__()
        if channels % 8:
            raise ValueError(f"SelfAttention needs channels divisible by 8, got {channels}")
        self.channels = channels
        c8, c2 = channels // 8, channels // 2
        self.theta = SNConv2d(channels, c8, 1, padding=0, bias=False, eps=sn_eps)
        self.phi = SNConv2d(channels, c8, 1, padding=0, bias=False, eps=sn_eps)
        self.g = SNConv2d(channels, c2, 1, padding=0, bias=False, eps=sn_eps)
        self.o = SNConv2d(c2, channels, 1, padding=0, bias=False, eps=sn_eps)
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: Tensor, c: Optional[Tensor] = None) -> Tensor:
        n, ch, h, w = x.shape
        theta = self.theta(x).view(n, ch // 8, h * w)
        phi = F.max_pool2d(self.phi(x), 2).view(n, ch // 8, h * w // 4)
        g = F.max_pool2d(self.g(x), 2).view(n, ch // 2, h * w // 4)
        attn = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)   # [N, HW, HW/4]
        out = self.o(torch.bmm(g, attn.transpose(1, 2)).view(n, ch // 2, h, w))
        return x + self.gamma * out


class GBlock(nn.Module):
    """BigGAN generator residual block: doubles the side (see the module docstring)."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, bn_eps: float = 1e-5, sn_eps: float = 1e-6):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(in_ch, cond_dim, bn_eps, sn_eps)
        self.conv1 = SNConv2d(in_ch, out_ch, eps=sn_eps)
        self.bn2 = ConditionalBatchNorm(out_ch, cond_dim, bn_eps, sn_eps)
        self.conv2 = SNConv2d(out_ch, out_ch, eps=sn_eps)
        self.conv_sc = SNConv2d(in_ch, out_ch, 1, padding=0, eps=sn_eps)  # always learnable: the side changes

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = F.relu(self.bn1(x, c))
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(h)
        h = self.conv2(F.relu(self.bn2(h, c)))
        return h + self.conv_sc(x)


class DBlock(nn.Module):
    """BigGAN discriminator residual block (wide: the hidden width is ``out_ch``).

    ``preactivation``: ReLU on the input of the residual branch (every block but the first);
    ``downsample``: 2x2 average pooling at the end of both branches.  The shortcut is a 1x1 conv
    when the channels change or the side halves, else the identity.
    """

    def __init__(self, in_ch: int, out_ch: int, preactivation: bool, downsample: bool, sn_eps: float = 1e-6):
        super().__init__()
        self.preactivation, self.downsample = bool(preactivation), bool(downsample)
        self.conv1 = SNConv2d(in_ch, out_ch, eps=sn_eps)
        self.conv2 = SNConv2d(out_ch, out_ch, eps=sn_eps)
        self.learnable_sc = in_ch != out_ch or self.downsample
        if self.learnable_sc:
            self.conv_sc = SNConv2d(in_ch, out_ch, 1, padding=0, eps=sn_eps)

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.preactivation:
            if self.learnable_sc:
                x = self.conv_sc(x)
            return F.avg_pool2d(x, 2) if self.downsample else x
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        return self.conv_sc(x) if self.learnable_sc else x

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(x) if self.preactivation else x   # out of place: the shortcut needs the raw x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        return h + self._shortcut(x)


def _check_labels(y, name: str, n: int, n_classes: int) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32) or y.shape != (n,):
        raise ValueError(f"{name} must be an integer tensor of shape [{n}], got {y.dtype} {tuple(y.shape)}")
    # the value check reads the tensor, so it runs on CPU only: on an accelerator it would cost a
    # host sync every forward (and a graph break under torch.compile); there an out-of-range index
    # fails in the embedding lookup instead
    if y.device.type == "cpu" and y.numel() and not torch.compiler.is_compiling() and \
            (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"{name} holds class indices outside [0, {n_classes}): "
                         f"min {int(y.min())}, max {int(y.max())}")


class Generator(nn.Module):
    """BigGAN generator G(z, y) (DeepI2I's F), with DeepI2I's adaptor fusion.

    ``forward(z, y, features=None)``: z [N, dim_z]; y class indices [N] (int64) or an already
    embedded class vector [N, shared_dim] (float, e.g. an interpolation of ``shared`` rows);
    ``features`` an optional ``{side: tensor}`` (the adaptor's outputs): the features at each
    listed side get ``fusion_weights[side] * features[side]`` added (at side 4 after the first
    linear layer, at larger sides after that side's block).  Returns [N, 3, R, R] in [-1, 1].
    """

    def __init__(self, cfg: DeepI2IConfig):
        super().__init__()
        self.cfg = cfg
        cond = cfg.shared_dim + cfg.z_chunk
        self.shared = nn.Embedding(cfg.n_classes, cfg.shared_dim)
        self.linear = SNLinear(cfg.z_chunk, cfg.g_in[0] * 16, eps=cfg.sn_eps)
        blocks = []
        for cin, cout, side in zip(cfg.g_in, cfg.g_out, cfg.g_sides):
            layers = [GBlock(cin, cout, cond, cfg.bn_eps, cfg.sn_eps)]
            if side in cfg.g_attention:
                layers.append(SelfAttention(cout, cfg.sn_eps))
            blocks.append(nn.ModuleList(layers))
        self.blocks = nn.ModuleList(blocks)
        # BigGAN's output norm keeps batch norm's default eps whatever bn_eps says (checkpoints rely on it)
        self.output_layer = nn.Sequential(BatchNorm(cfg.g_out[-1], 1e-5), nn.ReLU(),
                                          SNConv2d(cfg.g_out[-1], 3, eps=cfg.sn_eps))
        self.fusion_weights: Dict[int, float] = cfg.fusion_weights

    def _check_features(self, features: Mapping[int, Tensor], n: int) -> None:
        for side, f in features.items():
            if side not in self.fusion_weights:
                raise ValueError(f"features: the generator has no adaptor level at side {side!r}; "
                                 f"levels: {', '.join(map(str, self.fusion_weights))}")
            want = (n, self.cfg.g_channels_at(side), side, side)
            if not isinstance(f, torch.Tensor) or tuple(f.shape) != want:
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(f"features[{side}] must have shape {list(want)}, got {got}")

    def forward(self, z: Tensor, y: Tensor, features: Optional[Mapping[int, Tensor]] = None) -> Tensor:
        n = z.shape[0] if isinstance(z, torch.Tensor) and z.dim() >= 1 else 0
        check_codes(z, "z", n, self.cfg.dim_z)
        if isinstance(y, torch.Tensor) and y.is_floating_point():
            if tuple(y.shape) != (n, self.cfg.shared_dim):
                raise ValueError(f"y (embedded) must have shape [{n}, {self.cfg.shared_dim}], got {tuple(y.shape)}")
            emb = y
        else:
            _check_labels(y, "y", n, self.cfg.n_classes)
            emb = self.shared(y)
        features = dict(features or {})
        self._check_features(features, n)
        zs = torch.split(z, self.cfg.z_chunk, dim=1)
        h = self.linear(zs[0]).view(n, -1, 4, 4)
        if 4 in features:
            h = h + self.fusion_weights[4] * features[4]
        for i, layers in enumerate(self.blocks):
            c = torch.cat([emb, zs[i + 1]], dim=1)
            for layer in layers:
                h = layer(h, c)
            side = self.cfg.g_sides[i]
            if side in features:
                h = h + self.fusion_weights[side] * features[side]
        return torch.tanh(self.output_layer(h))


class Discriminator(nn.Module):
    """BigGAN projection discriminator D(x, y) (DeepI2I's P; its trunk is the encoder Y).

    ``forward(x, y, return_features=False)``: x [N, 3, R, R], y class indices [N]; returns the
    logits [N, 1], or ``(logits, {side: block output})`` at the encoder's tap sides
    (``cfg.taps``) when ``return_features``.
    """

    def __init__(self, cfg: DeepI2IConfig):
        super().__init__()
        self.cfg = cfg
        blocks = []
        for i, (cin, cout, side) in enumerate(zip(cfg.d_in, cfg.d_out, cfg.d_sides)):
            layers = [DBlock(cin, cout, preactivation=i > 0, downsample=i < len(cfg.d_out) - 1, sn_eps=cfg.sn_eps)]
            if side in cfg.d_attention:
                layers.append(SelfAttention(cout, cfg.sn_eps))
            blocks.append(nn.ModuleList(layers))
        self.blocks = nn.ModuleList(blocks)
        self.linear = SNLinear(cfg.d_out[-1], 1, eps=cfg.sn_eps)
        self.embed = SNEmbedding(cfg.n_classes, cfg.d_out[-1], eps=cfg.sn_eps)
        self._tap_blocks = {i: s for s, i in cfg.taps.items()}

    def trunk(self, x: Tensor) -> Tuple[Tensor, Dict[int, Tensor]]:
        """The blocks: ``(last block output, {tap side: block output})``."""
        check_images(x, "x", 3)
        if tuple(x.shape[2:]) != (self.cfg.resolution,) * 2:
            raise ValueError(f"x must be {self.cfg.resolution} x {self.cfg.resolution}, got "
                             f"{x.shape[2]} x {x.shape[3]}")
        taps: Dict[int, Tensor] = {}
        h = x
        for i, layers in enumerate(self.blocks):
            for layer in layers:
                h = layer(h)
            if i in self._tap_blocks:
                taps[self._tap_blocks[i]] = h
        return h, dict(sorted(taps.items(), reverse=True))

    def head(self, h: Tensor, y: Tensor) -> Tensor:
        """Logits [N, 1] from the last block's output: ``linear(h) + <embed(y), h>``, h pooled."""
        _check_labels(y, "y", h.shape[0], self.cfg.n_classes)
        h = torch.sum(F.relu(h), dim=(2, 3))
        return self.linear(h) + torch.sum(self.embed(y) * h, dim=1, keepdim=True)

    def forward(self, x: Tensor, y: Tensor, return_features: bool = False
                ) -> Union[Tensor, Tuple[Tensor, Dict[int, Tensor]]]:
        h, taps = self.trunk(x)
        out = self.head(h, y)
        return (out, taps) if return_features else out


def init_weights(module: nn.Module, style: str) -> nn.Module:
    """Initialise every conv, linear and embedding weight of ``module`` in BigGAN's ``style``
    (``ortho``, ``N02``, ``glorot``; ``default`` keeps PyTorch's initialisation)."""
    if style == "default":
        return module
    fn = {"ortho": nn.init.orthogonal_, "N02": lambda w: nn.init.normal_(w, 0.0, 0.02),
          "glorot": nn.init.xavier_uniform_}.get(style)
    if fn is None:
        raise ValueError(f"unknown init {style!r}; valid: ortho, N02, glorot, default")
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
                fn(m.weight)
    return module
