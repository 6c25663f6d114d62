"""Spectrally normalised layers with BigGAN's parameter and buffer names.

Each layer keeps its raw ``weight`` (and ``bias``) as parameters and two buffers: ``u0``
[1, out] (the running left singular vector estimate) and ``sv0`` [1] (the last estimate of the
largest singular value, kept for logging).  Every forward divides the weight by sigma, where
one power iteration from ``u0`` gives

    v = normalize(u0 W),  u = normalize(v W^T),  sigma = v W^T u^T

(W is the weight flattened to [out, -1]; u and v carry no gradient, sigma does).  In training
mode the forward stores ``u`` and ``sigma`` into ``u0``/``sv0``; in eval mode it stores nothing,
so an eval forward is a pure function of the state dict (Miyato et al., "Spectral
Normalization for GANs", ICLR 2018, Algorithm 1; the layout is the one BigGAN's released
checkpoints use, so ``G.pth``/``D.pth`` load with ``strict=True``).

``torch.nn.utils.spectral_norm`` would name the same tensors ``weight_orig``, ``weight_u`` and
``weight_v``; these layers exist so that BigGAN checkpoints load key for key.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SpectralNorm", "SNConv2d", "SNLinear", "SNEmbedding", "power_iteration"]


def power_iteration(w: Tensor, u: Tensor, eps: float):
    """One power iteration on the matrix ``w`` [out, in] from ``u`` [1, out].

    Returns ``(sigma, u_new)``: sigma (0-d, differentiable in ``w``) and the new u [1, out].
    """
    with torch.no_grad():
        v = F.normalize(torch.matmul(u, w), dim=1, eps=eps)
        u_new = F.normalize(torch.matmul(v, w.t()), dim=1, eps=eps)
    sigma = torch.matmul(torch.matmul(v, w.t()), u_new.t()).squeeze()
    return sigma, u_new


class SpectralNorm:
    """Mixin: ``self.sn_weight()`` is ``self.weight / sigma`` (see the module docstring)."""

    def _init_sn(self, out_features: int, eps: float) -> None:
        self.sn_eps = float(eps)
        self.register_buffer("u0", torch.randn(1, out_features, device=self.weight.device))
        self.register_buffer("sv0", torch.ones(1, device=self.weight.device))

    def sn_weight(self) -> Tensor:
        w = self.weight
        dev = w.device.type
        if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
            # the estimate is kept in float32 even under bf16/fp16 autocast (it is a running state)
            with torch.autocast(dev, enabled=False):
                sigma, u = power_iteration(w.reshape(w.shape[0], -1).float(), self.u0.float(), self.sn_eps)
        else:
            sigma, u = power_iteration(w.reshape(w.shape[0], -1), self.u0.to(w.dtype), self.sn_eps)
        if self.training:
            with torch.no_grad():
                self.u0.copy_(u)
                self.sv0.copy_(sigma.detach().reshape(1))
        return w / sigma

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sn_eps={self.sn_eps:g}"


class SNConv2d(SpectralNorm, nn.Conv2d):
    """``nn.Conv2d`` (3 x 3, padding 1 unless told) with a spectrally normalised weight."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 bias: bool = True, eps: float = 1e-6, **kwargs):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, padding=padding, bias=bias, **kwargs)
        self._init_sn(out_channels, eps)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.sn_weight(), self.bias)


class SNLinear(SpectralNorm, nn.Linear):
    """``nn.Linear`` with a spectrally normalised weight."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, eps: float = 1e-6, **kwargs):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, **kwargs)
        self._init_sn(out_features, eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.sn_weight(), self.bias)


class SNEmbedding(SpectralNorm, nn.Embedding):
    """``nn.Embedding`` whose [num_embeddings, dim] table is spectrally normalised
    (``u0`` is [1, num_embeddings])."""

    def __init__(self, num_embeddings: int, embedding_dim: int, eps: float = 1e-6, **kwargs):
        nn.Embedding.__init__(self, num_embeddings, embedding_dim, **kwargs)
        self._init_sn(num_embeddings, eps)

    def forward(self, idx: Tensor) -> Tensor:
        return F.embedding(idx, self.sn_weight())
