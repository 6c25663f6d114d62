"""Building blocks shared by the StEP networks (generator, style encoder, discriminator).

All blocks are plain PyTorch (no custom ops), so they trace cleanly under ``torch.compile``
(``fullgraph=True``) and run unchanged in the eager fp32 baseline.

* :class:`EqConv2d` -- convolution with equalized learning rate (ProGAN / the official StEP
  code's ``use_scaling``): weights are stored ~N(0, 1) and multiplied at run time by the He
  constant ``sqrt(2 / ((1 + slope^2) * fan_in))``.  ``padding="same"`` matches TensorFlow's SAME
  output size for every kernel/stride used here (4x4 stride-1 convs pad 1 before, 2 after).
* :func:`pixel_norm`, :func:`instance_norm`, :func:`minibatch_stddev` -- computed in float32
  and cast back to the input dtype, so the nets are safe under bf16 autocast.
* :func:`tile_concat` -- concatenate a per-sample code ``z[N, Z]`` as ``Z`` constant channels.
* :func:`count_macs` -- multiply-accumulates of a forward pass (torch.utils.flop_counter),
  on the meta device so no memory or time is spent.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EqConv2d", "EqLinear", "pixel_norm", "instance_norm", "InstanceNorm", "minibatch_stddev",
           "minibatch_stddev_value",
           "tile_concat", "count_macs", "he_gain"]


def he_gain(slope: float = 1.0) -> float:
    """The He constant's numerator ``sqrt(2 / (1 + slope^2))`` (``slope=1`` gives 1)."""
    return math.sqrt(2.0 / (1.0 + slope * slope))


class EqConv2d(nn.Module):
    """2-d convolution with equalized learning rate and TensorFlow-SAME padding.

    Args:
        in_ch, out_ch: channel counts.
        kernel: square kernel size.
        stride: 1 or 2.
        slope: slope of the (leaky) ReLU that follows; sets the He constant (official code:
            0.2 for plain convs, 1.0 inside residual/basic blocks).
        equalized: if False, the weights are initialised with the He std and used as-is.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, slope: float = 0.2,
                 equalized: bool = True, bias: bool = True):
        super().__init__()
        if in_ch <= 0 or out_ch <= 0:
            raise ValueError(f"EqConv2d: in_ch and out_ch must be positive, got {in_ch}, {out_ch}")
        if stride not in (1, 2):
            raise ValueError(f"EqConv2d: stride must be 1 or 2, got {stride}")
        self.in_ch, self.out_ch, self.kernel, self.stride = in_ch, out_ch, kernel, stride
        fan_in = in_ch * kernel * kernel
        std = he_gain(slope) / math.sqrt(fan_in)
        self.equalized = equalized
        self.scale = std if equalized else 1.0
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel) * (1.0 if equalized else std))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        # SAME padding: total = kernel - stride (inputs are even-sized for stride 2).
        total = max(kernel - stride, 0)
        before, after = total // 2, total - total // 2
        if before == after:
            self._sym, self._pad = before, None
        else:
            self._sym, self._pad = 0, (before, after, before, after)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight * self.scale if self.equalized else self.weight
        if self._pad is not None:
            x = F.pad(x, self._pad)
        return F.conv2d(x, w, self.bias, stride=self.stride, padding=self._sym)

    def extra_repr(self) -> str:
        return (f"{self.in_ch}, {self.out_ch}, kernel={self.kernel}, stride={self.stride}, "
                f"equalized={self.equalized}")


class EqLinear(nn.Module):
    """Fully connected layer; weights N(0, std) (official FC: std 0.02, no run-time scaling)."""

    def __init__(self, in_features: int, out_features: int, std: float = 0.02):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * std)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``x / sqrt(mean_c(x^2) + eps)`` per pixel, computed in float32."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().mean(dim=1, keepdim=True) + eps)).to(x.dtype)


def instance_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5) -> Tensor:
    """Instance normalisation over (H, W) per sample and channel, statistics in float32."""
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=(2, 3), keepdim=True, correction=0)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.float().view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.float().view(1, -1, 1, 1)
    return y.to(x.dtype)


class InstanceNorm(nn.Module):
    """Affine instance norm (TF ``instance_norm(center=True, scale=True)``), fp32 statistics."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return instance_norm(x, self.weight, self.bias, self.eps)


def minibatch_stddev(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Append one channel holding the batch's mean feature std (official StEP/PGGAN variant).

    std over the batch per (c, h, w), averaged to one scalar, broadcast as an extra channel.
    """
    n, _, h, w = x.shape
    return torch.cat([x, minibatch_stddev_value(x, eps).expand(n, 1, h, w)], dim=1)


def minibatch_stddev_value(x: Tensor, eps: float = 1e-8) -> Tensor:
    """The value of :func:`minibatch_stddev`'s extra channel: a 0-d tensor of ``x``'s dtype."""
    xf = x.float()
    return torch.sqrt(xf.var(dim=0, correction=0) + eps).mean().to(x.dtype)


def tile_concat(x: Tensor, z: Optional[Tensor]) -> Tensor:
    """Concatenate ``z[N, Z]`` to ``x[N, C, H, W]`` as ``Z`` spatially constant channels."""
    if z is None:
        return x
    n, _, h, w = x.shape
    zt = z.to(x.dtype)[:, :, None, None].expand(n, z.shape[1], h, w)
    return torch.cat([x, zt], dim=1)


def count_macs(fn: Callable, *args, **kwargs) -> int:
    """Multiply-accumulates of ``fn(*args, **kwargs)`` (forward only), via FlopCounterMode.

    Pass meta-device modules/tensors to count without computing.  Returns FLOPs / 2.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args, **kwargs)
    return counter.get_total_flops() // 2


def check_images(x, name: str, channels: int, resolution: Optional[int] = None) -> None:
    """Raise TypeError/ValueError naming ``name`` unless ``x`` is a float tensor [N, channels, H, W]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape [N, {channels}, H, W], got {tuple(x.shape)}")
    if resolution is not None and (x.shape[2] % resolution or x.shape[3] % resolution):
        raise ValueError(f"{name}: height and width must be multiples of {resolution}, got "
                         f"{tuple(x.shape[2:])}")


def check_codes(z, name: str, n: int, z_dim: int) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2 or z.shape[0] != n or z.shape[1] != z_dim:
        raise ValueError(f"{name} must have shape [{n}, {z_dim}], got {tuple(z.shape)}")
