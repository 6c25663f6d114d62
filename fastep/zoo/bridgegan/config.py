"""The BridgeGAN network configuration and its presets.

:class:`BridgeConfig` holds every size of the four networks (generator G, mapping network M,
style encoder E, shared discriminator/classifier D/C).  Presets:

* ``paper`` -- 128 x 128, 14 CelebA attributes, noise 16, style maps 32 x 64 x 64 (the
  architecture tables of the paper's supplementary, section B);
* ``cpu``   -- 32 x 32, the 15 attributes of the built-in data set, narrow (G 111 k parameters),
  parameter-free code norms (``code_norm="plain"``): what ``fastep train --system bridgegan
  --preset cpu`` trains in about ten minutes on 2 cores;
* ``half``  -- 64 x 64, the built-in set's 15 attributes, every width halved (about 5 s per
  generator update at batch 4 on one CPU thread: too slow for a CPU run);
* ``tiny``  -- 32 x 32, very narrow: unit tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from ...config import from_dict

__all__ = ["BridgeConfig", "PRESETS", "CODE_NORMS"]

#: the choices of :attr:`BridgeConfig.code_norm`
CODE_NORMS = ("affine", "plain", "sample", "none")


def _is_pow2(v: int) -> bool:
    return v > 0 and (v & (v - 1)) == 0


@dataclass
class BridgeConfig:
    """Sizes of the BridgeGAN networks (defaults: the paper's 128 x 128 CelebA model).

    Attributes:
        resolution: image side (a power of two >= 16); the style maps have side ``resolution / 2``,
            M grows them from 4 x 4 with ``log2(resolution / 8)`` up-sampling blocks.
        n_attrs: length of the label vector y (and of Delta = y_t - y_s).
        noise_dim: length of M's noise input r.
        style_ch: channels of a style code S (M's and E's output, SPADE's input).
        g_nf: G's stem width; each of the ``g_n_down`` down blocks doubles it (capped at ``g_max_nf``),
            the up blocks mirror them back.
        spade_hidden: channels of SPADE's shared hidden conv.
        m_nf: channels of M's 4 x 4 start (its FC layer has ``16 * m_nf`` outputs).
        e_nf: E's stem width.
        e_n_res: E's same-size residual blocks after its down block.
        d_nf: D/C stem width; each of the ``d_n_down`` down blocks doubles it (capped at ``d_max_nf``).
        d_slope: negative slope of D/C's leaky ReLUs.
        eps: instance-norm epsilon (TF-slim's default, 1e-6).
        code_norm: the norm before the final ReLU of M and E (their style codes): ``"affine"`` (the
            paper: an affine instance norm), ``"plain"`` (a parameter-free instance norm: every
            code channel keeps zero mean and unit variance before the ReLU, so the codes cannot be
            scaled down towards zero, but no per-sample global statistic survives either),
            ``"sample"`` (parameter-free, over each sample's whole code: a fixed overall scale, and
            per-channel means free to carry a global attribute) or ``"none"``.
    """

    resolution: int = 128
    n_attrs: int = 14
    noise_dim: int = 16
    style_ch: int = 32
    g_nf: int = 32
    g_n_down: int = 3
    g_max_nf: int = 256
    spade_hidden: int = 128
    m_nf: int = 64
    e_nf: int = 16
    e_n_res: int = 3
    d_nf: int = 16
    d_n_down: int = 4
    d_max_nf: int = 256
    d_slope: float = 0.2
    eps: float = 1e-6
    code_norm: str = "affine"

    def __post_init__(self):
        ints = ("resolution", "n_attrs", "noise_dim", "style_ch", "g_nf", "g_n_down", "g_max_nf", "spade_hidden",
                "m_nf", "e_nf", "d_nf", "d_n_down", "d_max_nf")
        for n in ints + ("e_n_res",):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"BridgeConfig.{n} must be an int, got {v!r}")
            if v < (0 if n == "e_n_res" else 1):
                raise ValueError(f"BridgeConfig.{n} must be {'>= 0' if n == 'e_n_res' else '> 0'}, got {v}")
        for n in ("d_slope", "eps"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (n == "eps" and v == 0):
                raise ValueError(f"BridgeConfig.{n} must be a {'positive' if n == 'eps' else 'non-negative'} "
                                 f"number, got {v!r}")
        if self.code_norm not in CODE_NORMS:
            raise ValueError(f"BridgeConfig.code_norm must be one of {', '.join(CODE_NORMS)}, got {self.code_norm!r}")
        if not _is_pow2(self.resolution) or self.resolution < 16:
            raise ValueError(f"BridgeConfig.resolution must be a power of two >= 16, got {self.resolution}")
        for n, depth in (("g_n_down", self.g_n_down), ("d_n_down", self.d_n_down)):
            if self.resolution % (2 ** depth) or self.resolution // 2 ** depth < 1:
                raise ValueError(f"BridgeConfig.{n}={depth} halves the image too often for resolution "
                                 f"{self.resolution}")

    @property
    def style_side(self) -> int:
        """Side of the style maps S (half the image side)."""
        return self.resolution // 2

    @property
    def m_n_up(self) -> int:
        """M's up-sampling blocks: 4 x 4 -> ``style_side``."""
        return (self.style_side // 4).bit_length() - 1

    @property
    def d_head_kernel(self) -> int:
        """Side of D/C's trunk output, the kernel of their valid head conv (8 at 128)."""
        return self.resolution // 2 ** self.d_n_down

    def g_widths(self):
        """G's channels after the stem and each down block: (32, 64, 128, 256) at ``paper``."""
        return tuple(min(self.g_nf * 2 ** i, self.g_max_nf) for i in range(self.g_n_down + 1))

    def d_widths(self):
        """D/C's channels after the stem and each down block: (16, 32, 64, 128, 256) at ``paper``."""
        return tuple(min(self.d_nf * 2 ** i, self.d_max_nf) for i in range(self.d_n_down + 1))

    @classmethod
    def paper(cls) -> "BridgeConfig":
        return cls()

    @classmethod
    def cpu(cls, **kw) -> "BridgeConfig":
        """32 x 32, 15 attributes (the built-in set), narrow: two down blocks in G (8 -> 16 -> 32
        channels), style maps 8 x 16 x 16, SPADE hidden 16, D/C 8 -> 32 channels over three down
        blocks; ``code_norm="plain"`` (a deviation from the paper: with the affine norm the code
        losses shrink the codes towards zero within the short CPU run; README, "BridgeGAN")."""
        base: Dict[str, Any] = dict(resolution=32, n_attrs=15, noise_dim=16, style_ch=8, g_nf=8, g_n_down=2,
                                    g_max_nf=32, spade_hidden=16, m_nf=16, e_nf=8, e_n_res=1, d_nf=8, d_n_down=3,
                                    d_max_nf=32, code_norm="plain")
        base.update(kw)
        return cls(**base)

    @classmethod
    def half(cls, **kw) -> "BridgeConfig":
        """64 x 64, 15 attributes (the built-in set), every width of ``paper`` halved."""
        base: Dict[str, Any] = dict(resolution=64, n_attrs=15, style_ch=16, g_nf=16, g_max_nf=128,
                                    spade_hidden=64, m_nf=32, e_nf=8, d_nf=8, d_max_nf=128)
        base.update(kw)
        return cls(**base)

    @classmethod
    def tiny(cls, **kw) -> "BridgeConfig":
        """32 x 32, 5 attributes, narrow: unit tests."""
        base: Dict[str, Any] = dict(resolution=32, n_attrs=5, noise_dim=4, style_ch=4, g_nf=4, g_n_down=2,
                                    g_max_nf=16, spade_hidden=8, m_nf=8, e_nf=4, e_n_res=1, d_nf=4, d_n_down=2,
                                    d_max_nf=16)
        base.update(kw)
        return cls(**base)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BridgeConfig":
        """``cls(**d)`` for a dict from ``dataclasses.asdict``; an unknown key is an error naming it."""
        return from_dict(cls, d, what="BridgeGAN model config")


PRESETS = {"paper": BridgeConfig.paper, "cpu": BridgeConfig.cpu, "half": BridgeConfig.half, "tiny": BridgeConfig.tiny}
