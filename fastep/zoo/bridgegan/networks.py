"""The BridgeGAN networks (Huang et al., "Bridging the Gap between Label- and Reference-based
Synthesis in Multi-attribute Image-to-Image Translation", ICCV 2021; supplementary section B).

* :class:`Generator` G(x, S): a residual encoder-decoder; three instance-norm down blocks, one
  instance-norm and one SPADE block at the bottleneck, three SPADE up blocks.  The spatial style
  code S (``style_ch`` x R/2 x R/2) enters every SPADE norm, resized (nearest) to its side.
* :class:`MappingNetwork` M(r, Delta): noise r and the attribute difference Delta -> a style map
  (label-based codes).
* :class:`StyleEncoder` E(x, Delta): an image and a Delta tiled as channels -> a style map
  (reference-based codes); E(x, -Delta) extracts what x keeps, E(x_t, Delta) what x_t gives.
* :class:`DiscriminatorClassifier` D/C(x): a shared trunk of four down blocks, then two unshared
  heads: the critic D -> [N, 1] (WGAN) and the attribute classifier C -> [N, n] (logits).

Residual blocks are pre-activation: ``norm - act - (up2) - conv3 - norm - act - conv3 - (avgpool2)``
plus a shortcut (a 1x1 conv when the channels change or the block resamples: up2 then conv on the
way up, conv then pool on the way down), summed without rescaling.  Instance norms are affine with
TF-slim's epsilon (1e-6); convolutions have biases; weights start Xavier-uniform with zero biases
(TF-slim's defaults, as in the authors' TensorFlow release).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.layers import InstanceNorm, instance_norm
from .config import BridgeConfig

__all__ = ["SPADE", "ResBlock", "SPADEResBlock", "Generator", "MappingNetwork", "StyleEncoder",
           "DiscriminatorClassifier", "build_networks", "init_weights"]


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


def init_weights(module: nn.Module) -> nn.Module:
    """TF-slim defaults: Xavier-uniform conv/linear weights, zero biases (norms keep 1 / 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class _ParameterFreeNorm(nn.Module):
    """A code norm without parameters: per channel (an instance norm, ``code_norm="plain"``) or
    over each sample's whole code, channels and positions together (``code_norm="sample"``)."""

    def __init__(self, per_channel: bool, eps: float = 1e-6):
        super().__init__()
        self.per_channel, self.eps = per_channel, eps

    def forward(self, x: Tensor) -> Tensor:
        if self.per_channel:
            return instance_norm(x, None, None, self.eps)
        return F.layer_norm(x, x.shape[1:], eps=self.eps)

    def extra_repr(self) -> str:
        return f"per_channel={self.per_channel}, eps={self.eps}"


def _code_norm(cfg: BridgeConfig) -> nn.Module:
    """The norm before M's and E's final ReLU (``cfg.code_norm``)."""
    if cfg.code_norm == "affine":
        return InstanceNorm(cfg.style_ch, cfg.eps)
    if cfg.code_norm == "none":
        return nn.Identity()
    return _ParameterFreeNorm(per_channel=cfg.code_norm == "plain", eps=cfg.eps)


def _check(x, name: str, dims: int, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() != dims or x.shape[1] != channels:
        want = "[N, %d]" % channels if dims == 2 else "[N, %d, H, W]" % channels
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: parameter-free instance norm, then ``x * (1 + gamma) + beta``
    with gamma, beta predicted per pixel from the style map (resized, nearest, to x's side) by a
    shared conv3 + ReLU and one conv3 each."""

    def __init__(self, channels: int, style_ch: int, hidden: int = 128, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.shared = _conv(style_ch, hidden, 3)
        self.gamma = _conv(hidden, channels, 3)
        self.beta = _conv(hidden, channels, 3)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        normed = instance_norm(x, None, None, self.eps)
        s = F.interpolate(style, size=x.shape[2:], mode="nearest") if style.shape[2:] != x.shape[2:] else style
        h = F.relu(self.shared(s))
        return normed * (1 + self.gamma(h)) + self.beta(h)


class ResBlock(nn.Module):
    """Pre-activation residual block with an optional affine instance norm.

    Args:
        resample: ``"down"`` (average-pool by 2 at the end), ``"up"`` (nearest up by 2 before the
            first conv) or ``None``.
        norm: affine instance norm (True) or none (D/C).
        slope: 0 for ReLU, else the leaky-ReLU slope.
    """

    def __init__(self, cin: int, cout: int, resample: Optional[str] = None, norm: bool = True,
                 slope: float = 0.0, eps: float = 1e-6):
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be 'up', 'down' or None, got {resample!r}")
        self.resample, self.slope = resample, slope
        self.norm1 = InstanceNorm(cin, eps) if norm else nn.Identity()
        self.conv1 = _conv(cin, cout, 3)
        self.norm2 = InstanceNorm(cout, eps) if norm else nn.Identity()
        self.conv2 = _conv(cout, cout, 3)
        self.shortcut = _conv(cin, cout, 1) if (cin != cout or resample is not None) else None

    def _act(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.slope) if self.slope else F.relu(x)

    def forward(self, x: Tensor) -> Tensor:
        h = self._act(self.norm1(x))
        if self.resample == "up":
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv2(self._act(self.norm2(self.conv1(h))))
        if self.resample == "down":
            h = F.avg_pool2d(h, 2)
        return h + self._short(x)

    def _short(self, x: Tensor) -> Tensor:
        if self.shortcut is None:
            return x
        if self.resample == "up":
            return self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))
        s = self.shortcut(x)
        return F.avg_pool2d(s, 2) if self.resample == "down" else s


class SPADEResBlock(nn.Module):
    """:class:`ResBlock` with SPADE norms (ReLU); the shortcut is a plain 1x1 conv (no norm)."""

    def __init__(self, cin: int, cout: int, style_ch: int, hidden: int, up: bool = False, eps: float = 1e-6):
        super().__init__()
        self.up = up
        self.norm1 = SPADE(cin, style_ch, hidden, eps)
        self.conv1 = _conv(cin, cout, 3)
        self.norm2 = SPADE(cout, style_ch, hidden, eps)
        self.conv2 = _conv(cout, cout, 3)
        self.shortcut = _conv(cin, cout, 1) if (cin != cout or up) else None

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        h = F.relu(self.norm1(x, style))
        if self.up:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), style)))
        return h + (x if self.shortcut is None else self.shortcut(x))


class Generator(nn.Module):
    """G(x, S) -> image in [-1, 1] of x's size.

    x: [N, 3, H, W] with H, W multiples of ``2^g_n_down``; S: [N, style_ch, h, w] (any side: it is
    resized, nearest, to each SPADE norm's side; R/2 as M and E make it).
    """

    def __init__(self, cfg: BridgeConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.g_widths()
        self.stem = _conv(3, w[0], 1)
        self.down = nn.ModuleList(ResBlock(w[i], w[i + 1], "down", eps=cfg.eps) for i in range(cfg.g_n_down))
        self.middle = ResBlock(w[-1], w[-1], None, eps=cfg.eps)
        self.middle_spade = SPADEResBlock(w[-1], w[-1], cfg.style_ch, cfg.spade_hidden, eps=cfg.eps)
        self.up = nn.ModuleList(SPADEResBlock(w[i + 1], w[i], cfg.style_ch, cfg.spade_hidden, up=True, eps=cfg.eps)
                                for i in reversed(range(cfg.g_n_down)))
        self.to_rgb = _conv(w[0], 3, 1)
        init_weights(self)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        _check(x, "G: x", 4, 3)
        _check(style, "G: style", 4, self.cfg.style_ch)
        m = 2 ** self.cfg.g_n_down
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"G: x's height and width must be multiples of {m}, got {tuple(x.shape[2:])}")
        if style.shape[0] != x.shape[0]:
            raise ValueError(f"G: x and style have different batch sizes ({x.shape[0]} and {style.shape[0]})")
        h = self.stem(x)
        for blk in self.down:
            h = blk(h)
        h = self.middle_spade(self.middle(h), style)
        for blk in self.up:
            h = blk(h, style)
        return torch.tanh(self.to_rgb(F.relu(h)))


class MappingNetwork(nn.Module):
    """M(r, Delta) -> style map [N, style_ch, R/2, R/2]: FC(r ++ Delta) -> m_nf x 4 x 4, up blocks
    (instance norm, ReLU), ReLU, conv1, the code norm (``cfg.code_norm``; affine instance norm in the
    paper), ReLU."""

    def __init__(self, cfg: BridgeConfig):
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(cfg.noise_dim + cfg.n_attrs, cfg.m_nf * 16)
        chans = [cfg.m_nf] + [cfg.style_ch] * cfg.m_n_up
        self.blocks = nn.Sequential(*(ResBlock(chans[i], chans[i + 1], "up", eps=cfg.eps) for i in range(cfg.m_n_up)))
        self.out = _conv(cfg.style_ch, cfg.style_ch, 1)
        self.out_norm = _code_norm(cfg)
        init_weights(self)

    def forward(self, r: Tensor, delta: Tensor) -> Tensor:
        _check(r, "M: r", 2, self.cfg.noise_dim)
        _check(delta, "M: delta", 2, self.cfg.n_attrs)
        if r.shape[0] != delta.shape[0]:
            raise ValueError(f"M: r and delta have different batch sizes ({r.shape[0]} and {delta.shape[0]})")
        h = self.fc(torch.cat([r, delta.to(r.dtype)], 1)).view(r.shape[0], self.cfg.m_nf, 4, 4)
        h = self.blocks(h)
        return F.relu(self.out_norm(self.out(F.relu(h))))


class StyleEncoder(nn.Module):
    """E(x, Delta) -> style map [N, style_ch, H/2, W/2]: conv1 on x ++ tiled Delta, one down block,
    ``e_n_res`` blocks (instance norm, ReLU), ReLU, conv1, the code norm (``cfg.code_norm``), ReLU."""

    def __init__(self, cfg: BridgeConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = _conv(3 + cfg.n_attrs, cfg.e_nf, 1)
        blocks = [ResBlock(cfg.e_nf, cfg.style_ch, "down", eps=cfg.eps)]
        blocks += [ResBlock(cfg.style_ch, cfg.style_ch, None, eps=cfg.eps) for _ in range(cfg.e_n_res)]
        self.blocks = nn.Sequential(*blocks)
        self.out = _conv(cfg.style_ch, cfg.style_ch, 1)
        self.out_norm = _code_norm(cfg)
        init_weights(self)

    def forward(self, x: Tensor, delta: Tensor) -> Tensor:
        _check(x, "E: x", 4, 3)
        _check(delta, "E: delta", 2, self.cfg.n_attrs)
        if x.shape[0] != delta.shape[0]:
            raise ValueError(f"E: x and delta have different batch sizes ({x.shape[0]} and {delta.shape[0]})")
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"E: x's height and width must be even, got {tuple(x.shape[2:])}")
        n, _, hh, ww = x.shape
        d = delta.to(x.dtype)[:, :, None, None].expand(n, delta.shape[1], hh, ww)
        h = self.blocks(self.stem(torch.cat([x, d], 1)))
        return F.relu(self.out_norm(self.out(F.relu(h))))


class DiscriminatorClassifier(nn.Module):
    """D/C(x) -> (critic score [N, 1], attribute logits [N, n_attrs]) from one shared trunk.

    Trunk: conv1, ``d_n_down`` down blocks (no norm, leaky ReLU), leaky ReLU.  Each head: a valid
    conv whose kernel is the trunk's output side (8 x 8 at 128), leaky ReLU, a linear layer.
    x must be ``resolution`` x ``resolution``.
    """

    def __init__(self, cfg: BridgeConfig):
        super().__init__()
        self.cfg = cfg
        w, k, s = cfg.d_widths(), cfg.d_head_kernel, cfg.d_slope
        self.stem = _conv(3, w[0], 1)
        self.trunk = nn.Sequential(*(ResBlock(w[i], w[i + 1], "down", norm=False, slope=s)
                                     for i in range(cfg.d_n_down)))
        self.d_conv = nn.Conv2d(w[-1], w[-1], k)
        self.d_fc = nn.Linear(w[-1], 1)
        self.c_conv = nn.Conv2d(w[-1], w[-1], k)
        self.c_fc = nn.Linear(w[-1], cfg.n_attrs)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        """The shared trunk's output (after its final leaky ReLU)."""
        _check(x, "D/C: x", 4, 3)
        r = self.cfg.resolution
        if tuple(x.shape[2:]) != (r, r):
            raise ValueError(f"D/C: x must be {r} x {r} (the config's resolution), got {tuple(x.shape[2:])}")
        return F.leaky_relu(self.trunk(self.stem(x)), self.cfg.d_slope)

    def critic(self, x: Tensor) -> Tensor:
        """D(x) only, [N, 1] (what the gradient penalty differentiates)."""
        return self._head(self.features(x), self.d_conv, self.d_fc)

    def _head(self, h: Tensor, conv: nn.Module, fc: nn.Module) -> Tensor:
        return fc(F.leaky_relu(conv(h), self.cfg.d_slope).flatten(1))

    def forward(self, x: Tensor):
        h = self.features(x)
        return self._head(h, self.d_conv, self.d_fc), self._head(h, self.c_conv, self.c_fc)


def build_networks(cfg: BridgeConfig) -> Dict[str, nn.Module]:
    """``{"G", "M", "E", "D"}`` (D is the shared discriminator/classifier), float32, train mode, CPU."""
    if not isinstance(cfg, BridgeConfig):
        raise TypeError(f"build_networks takes a BridgeConfig, got {type(cfg).__name__}")
    return {"G": Generator(cfg), "M": MappingNetwork(cfg), "E": StyleEncoder(cfg), "D": DiscriminatorClassifier(cfg)}
