"""StEP's inference object: a trained checkpoint as ``encode`` / ``translate`` / ``sample``."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .config import ModelConfig

__all__ = ["Translator", "sample_grid"]

SAMPLERS = ("mapper", "gaussian")


class Translator:
    """A trained StEP model (the checkpoint's EMA weights by default), in eval mode, on one device.

    Every method takes and returns float images in [-1, 1] of shape (N, 3, H, W) with H and W
    multiples of ``model_cfg.min_multiple``, runs under ``torch.no_grad()`` and expects its
    inputs on :attr:`device` (nothing is moved between devices silently).

    * :meth:`encode` ``(b) -> codes (N, z_dim)``;
    * :meth:`translate` ``(a, style)``: ``style`` images (N or 1, 3, H, W) or codes (N or 1,
      z_dim); one style per input, or one style broadcast to all inputs;
    * :meth:`sample` ``(a, n, seed=0, how="mapper"|"gaussian") -> (N, n, 3, H, W)``: ``n``
      random styles (the same ``n`` for every input) from the IMLE mapper or from N(mu, sigma)
      of the training codes.

    Attributes: ``G``, ``E``, ``mapper`` (or ``None``), ``z_stats`` (``{"mu", "sigma"}`` or
    ``None``), ``model_cfg``, ``extras`` (stage, step, kimg, train_cfg, metrics, path, mapper,
    z_stats), ``device``.
    """

    system = "step"

    def __init__(self, G, E, model_cfg: ModelConfig, *, mapper=None, z_stats: Optional[Dict[str, Tensor]] = None,
                 extras: Optional[Dict[str, Any]] = None):
        self.G, self.E, self.model_cfg = G.eval(), E.eval(), model_cfg
        self.mapper = None if mapper is None else mapper.eval()
        self.z_stats = z_stats
        self.device = next(G.parameters()).device
        self.extras = dict(extras or {})
        self.extras.setdefault("mapper", self.mapper)
        self.extras.setdefault("z_stats", self.z_stats)

    @property
    def z_dim(self) -> int:
        return int(self.model_cfg.z_dim)

    # ------------------------------------------------------------------ checks
    def _images(self, x, name: str, channels: int) -> Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a float tensor (N, {channels}, H, W) in [-1, 1], got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor (N, {channels}, H, W) in [-1, 1], got "
                             f"{x.dtype} {tuple(x.shape)}")
        m = self.model_cfg.min_multiple
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"{name}: height and width must be multiples of {m}, got {tuple(x.shape[2:])}")
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device}, the model on {self.device}: move it with .to({str(self.device)!r})")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"{name}: expected values in [-1, 1], got [{lo:.3g}, {hi:.3g}] "
                             "(images in [0, 1]? use x * 2 - 1)")
        return x.float()

    def _codes(self, z, name: str) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim or not z.is_floating_point():
            raise ValueError(f"{name}: expected float codes (N, {self.z_dim}), got {z.dtype} {tuple(z.shape)}")
        if z.device != self.device:
            raise ValueError(f"{name} is on {z.device}, the model on {self.device}")
        return z.float()

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def encode(self, b: Tensor) -> Tensor:
        """Style codes E(b), shape (N, z_dim) (the mean code for a VAE encoder)."""
        z = self.E(self._images(b, "b", self.model_cfg.out_ch))
        return (z[0] if isinstance(z, (tuple, list)) else z).float()

    @torch.no_grad()
    def translate(self, a: Tensor, style: Tensor) -> Tensor:
        """G(a, style): ``style`` is images (N or 1, 3, H, W) or codes (N or 1, z_dim)."""
        a = self._images(a, "a", self.model_cfg.in_ch)
        if isinstance(style, torch.Tensor) and style.dim() == 4:
            z = self.encode(style)
        elif isinstance(style, torch.Tensor):
            z = self._codes(style, "style")
        else:
            raise TypeError(f"style: expected images (N, 3, H, W) or codes (N, {self.z_dim}), "
                            f"got {type(style).__name__}")
        if z.shape[0] == 1 and a.shape[0] != 1:
            z = z.expand(a.shape[0], -1)
        if z.shape[0] != a.shape[0]:
            raise ValueError(f"style: give one style per input ({a.shape[0]}) or one for all, got {z.shape[0]}")
        return self.G(a, z).float()

    def sample_codes(self, n: int, seed: int = 0, how: str = "mapper") -> Tensor:
        """``n`` random codes (n, z_dim) from the mapper or from N(mu, sigma), seeded by ``seed``."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive integer, got {n!r}")
        if how not in SAMPLERS:
            raise ValueError(f"how: unknown sampler {how!r}; valid: {', '.join(SAMPLERS)}")
        noise_dim = int(self.mapper.noise_dim) if how == "mapper" and self.mapper is not None else self.z_dim
        noise = torch.randn(n, noise_dim, generator=torch.Generator().manual_seed(int(seed))).to(self.device)
        with torch.no_grad():
            if how == "mapper":
                if self.mapper is None:
                    raise ValueError(f"checkpoint {self.extras.get('path')}: no mapper (train the mapper stage, "
                                     "or sample with how='gaussian')")
                return self.mapper(noise).float()
            if self.z_stats is None:
                raise ValueError(f"checkpoint {self.extras.get('path')}: no code statistics (train the mapper "
                                 "stage first)")
            return self.z_stats["mu"] + self.z_stats["sigma"] * noise

    @torch.no_grad()
    def sample(self, a: Tensor, n: int, seed: int = 0, how: str = "mapper") -> Tensor:
        """``n`` random translations of every input: (N, n, 3, H, W); the same ``n`` codes for all inputs."""
        a = self._images(a, "a", self.model_cfg.in_ch)
        z = self.sample_codes(n, seed, how)
        out = [self.G(a, zi.expand(a.shape[0], -1)).float() for zi in z]
        return torch.stack(out, 1)


@torch.no_grad()
def sample_grid(G, E, A: torch.Tensor, B: torch.Tensor, z_dim: Optional[int] = None,
                seed: int = 0) -> torch.Tensor:
    """A [3, H', W'] grid in [0, 1]: rows A, B, G(A, E(B)) (reconstruction), G(A, E(B rolled))
    (style transfer from the next column's B) and, with ``z_dim``, G(A, z ~ N(0, I)); each row
    is named at its left (input, target, reconstruction, transfer, samples)."""
    from ...train.outputs import labelled_grid

    was_g, was_e = G.training, E.training
    G.eval()
    E.eval()
    try:
        dev = next(G.parameters()).device
        A = A.to(dev, torch.float32)
        B = B.to(dev, torch.float32)
        z = E(B)
        if isinstance(z, (tuple, list)):
            z = z[0]
        rows = [A, B, G(A, z), G(A, z.roll(1, 0))]
        if z_dim:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            zr = torch.randn(A.shape[0], z_dim, generator=gen).to(dev)
            rows.append(G(A, zr))
        labels = ["input", "target", "reconstruction", "transfer", "samples"][:len(rows)]
        return labelled_grid([(r.float().clamp(-1, 1) + 1) / 2 for r in rows], labels, padding=2)
    finally:
        G.train(was_g)
        E.train(was_e)
