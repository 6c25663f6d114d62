"""The DeepI2I network configuration and its presets.

Sizes follow the BigGAN architecture DeepI2I transfers from (Brock et al., "Large Scale GAN
Training", ICLR 2019, appendix B; DeepI2I, Wang et al., NeurIPS 2020, supplementary section A):
a width multiplier ``ch`` for G and D, a hierarchical latent of ``dim_z`` split into one chunk
per generator block plus one for the first linear layer, a shared class embedding, and
self-attention at the listed sides.

Presets (``PRESETS``):

* ``paper`` -- 128 x 128, ch 96, 1000 classes: the ImageNet BigGAN DeepI2I starts from
  (G 70,433,988 parameters, D 87,982,370; encoder trunk 86,444,833; adaptor 85,830,528);
* ``gpu``   -- 64 x 64, ch 32, 120 classes, attention at 32 (the GPU stand-in);
* ``cpu``   -- 64 x 64, ch 8, 6 classes, attention at 32, heavier adaptor fusion (CPU runs and tests).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Tuple

from ...config import ConfigError, choose

__all__ = ["DeepI2IConfig", "PRESETS", "TRANSFER_FUSION", "CPU_FUSION", "SCRATCH_FUSION", "INITS",
           "G_ARCH", "D_ARCH", "RESOLUTIONS"]

#: adaptor weight per generator side (DeepI2I: a transferred G gets a light touch at every side)
TRANSFER_FUSION: Tuple[Tuple[int, float], ...] = ((4, 0.1), (8, 0.1), (16, 0.1), (32, 0.1))
#: the CPU preset's adaptor weights (64 px, ch 8): the spectrally normalised adaptor cannot amplify,
#: and at this width its outputs vary across the image ~0.1 where the stand-in generator's
#: features vary 0.15 / 0.5 / 0.8 at sides 4 / 8 / 16, so DeepI2I's 0.1 made the input 1-2 % of
#: the generator's spatial signal and the translations ignored it (a swapped input moved the
#: output 0.03, a new z 0.28).  Rising with the side: the input's layout enters at 16 x 16, while
#: light weights at 4 and 8 leave the class to the generator (palette RC 0.73 vs 0.51 with 10
#: at every side, 100 updates)
CPU_FUSION: Tuple[Tuple[int, float], ...] = ((4, 1.0), (8, 3.0), (16, 10.0), (32, 0.1))
#: adaptor weights when G is trained from scratch (the released code's scratch setting)
SCRATCH_FUSION: Tuple[Tuple[int, float], ...] = ((4, 1.0), (8, 1.0), (16, 1.0), (32, 0.1))

#: weight initialisations of fresh layers (BigGAN's names): orthogonal, N(0, 0.02), Glorot, PyTorch's own
INITS = ("ortho", "N02", "glorot", "default")

#: BigGAN generator channel multipliers per resolution: (in multipliers, out multipliers); block i
#: doubles the side from 4 * 2**i to 8 * 2**i
G_ARCH: Dict[int, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
}
#: BigGAN discriminator: out-channel multipliers per block (the first block takes RGB); every
#: block halves the side except the last, which stays at 4 x 4
D_ARCH: Dict[int, Tuple[int, ...]] = {
    64: (1, 2, 4, 8, 16),
    128: (1, 2, 4, 8, 16, 16),
}
RESOLUTIONS = tuple(sorted(G_ARCH))


def _int(cfg, name: str, minimum: int = 1) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"DeepI2IConfig.{name} must be an int >= {minimum}, got {v!r}")


@dataclass
class DeepI2IConfig:
    """Sizes of DeepI2I's four networks (defaults: the paper's 128 x 128 ImageNet BigGAN).

    Attributes:
        resolution: image side (64 or 128).
        g_ch, d_ch: BigGAN width multipliers of the generator and the discriminator/encoder.
        n_classes: rows of the class embeddings (the generator's shared one and D's projection).
        dim_z: latent size; split evenly into ``len(generator blocks) + 1`` chunks (hierarchical z).
        shared_dim: size of the shared class embedding.
        g_attention, d_attention: sides after whose block a self-attention layer sits.
        sn_eps: epsilon of the spectral-norm power iteration's normalisations.
        bn_eps: epsilon of the generator's conditional batch norms (its output layer's plain
            batch norm keeps 1e-5, as in BigGAN).
        init: initialisation of fresh G, D and encoder layers (one of :data:`INITS`).
        adaptor_init: initialisation of the adaptor (``default``: PyTorch's, as when the
            adaptor is added to a pretrained BigGAN).
        fusion: ``((side, weight), ...)``: the generator adds ``weight * adaptor[side]`` to its
            features at ``side``; sides without an encoder tap are ignored.
    """

    resolution: int = 128
    g_ch: int = 96
    d_ch: int = 96
    n_classes: int = 1000
    dim_z: int = 120
    shared_dim: int = 128
    g_attention: Tuple[int, ...] = (64,)
    d_attention: Tuple[int, ...] = (64,)
    sn_eps: float = 1e-6
    bn_eps: float = 1e-5
    init: str = "ortho"
    adaptor_init: str = "default"
    fusion: Tuple[Tuple[int, float], ...] = TRANSFER_FUSION

    def __post_init__(self):
        _int(self, "resolution")
        choose(self.resolution, RESOLUTIONS, "DeepI2IConfig.resolution")
        for n in ("g_ch", "d_ch", "n_classes", "dim_z", "shared_dim"):
            _int(self, n)
        if self.dim_z % self.z_chunks:
            raise ConfigError(f"DeepI2IConfig.dim_z must be a multiple of {self.z_chunks} (one chunk per "
                              f"generator block plus one) at resolution {self.resolution}, got {self.dim_z}")
        for n in ("g_ch", "d_ch"):
            if getattr(self, n) % 8:
                raise ConfigError(f"DeepI2IConfig.{n} must be a multiple of 8 (self-attention uses ch/8), "
                                  f"got {getattr(self, n)}")
        self.g_attention = tuple(self.g_attention)
        self.d_attention = tuple(self.d_attention)
        for n, sides in (("g_attention", self.g_sides), ("d_attention", self.d_sides)):
            for s in getattr(self, n):
                if s not in sides:
                    raise ConfigError(f"DeepI2IConfig.{n}: no block ends at side {s!r}; valid: "
                                      f"{', '.join(map(str, sorted(set(sides))))}")
        for n in ("sn_eps", "bn_eps"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"DeepI2IConfig.{n} must be a number > 0, got {v!r}")
        choose(self.init, INITS, "DeepI2IConfig.init")
        choose(self.adaptor_init, INITS, "DeepI2IConfig.adaptor_init")
        try:
            self.fusion = tuple((int(s), float(w)) for s, w in self.fusion)
        except (TypeError, ValueError):
            raise ConfigError(f"DeepI2IConfig.fusion must be ((side, weight), ...), got {self.fusion!r}") from None
        if len({s for s, _ in self.fusion}) != len(self.fusion):
            raise ConfigError(f"DeepI2IConfig.fusion names a side twice: {self.fusion!r}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def g_in(self) -> Tuple[int, ...]:
        """Input channels of the generator blocks."""
        return tuple(m * self.g_ch for m in G_ARCH[self.resolution][0])

    @property
    def g_out(self) -> Tuple[int, ...]:
        """Output channels of the generator blocks."""
        return tuple(m * self.g_ch for m in G_ARCH[self.resolution][1])

    @property
    def g_sides(self) -> Tuple[int, ...]:
        """Output side of every generator block."""
        return tuple(8 * 2 ** i for i in range(len(self.g_in)))

    @property
    def z_chunks(self) -> int:
        """Number of latent chunks: one for the first linear layer, one per generator block."""
        return len(G_ARCH[self.resolution][0]) + 1

    @property
    def z_chunk(self) -> int:
        return self.dim_z // self.z_chunks

    @property
    def d_out(self) -> Tuple[int, ...]:
        """Output channels of the discriminator blocks."""
        return tuple(m * self.d_ch for m in D_ARCH[self.resolution])

    @property
    def d_in(self) -> Tuple[int, ...]:
        return (3,) + self.d_out[:-1]

    @property
    def d_sides(self) -> Tuple[int, ...]:
        """Output side of every discriminator block (all halve the side but the last)."""
        n = len(D_ARCH[self.resolution])
        return tuple(max(self.resolution // 2 ** (i + 1), 4) for i in range(n))

    @property
    def taps(self) -> Dict[int, int]:
        """``{side: discriminator block index}``: the encoder's feature levels.

        DeepI2I takes the block outputs whose side lies in [R/32, R/4]; of two blocks at one
        side the later one is the tap.  Ordered from the largest side down.
        """
        taps: Dict[int, int] = {}
        for i, s in enumerate(self.d_sides):
            if self.resolution // 32 <= s <= self.resolution // 4:
                taps[s] = i
        return dict(sorted(taps.items(), reverse=True))

    def g_channels_at(self, side: int) -> int:
        """Channels of the generator's features at ``side`` (4: after the first linear layer)."""
        if side == 4:
            return self.g_in[0]
        return self.g_out[self.g_sides.index(side)]

    @property
    def fusion_weights(self) -> Dict[int, float]:
        """``{side: weight}`` for every tap side (0 where ``fusion`` names none)."""
        w = dict(self.fusion)
        return {s: w.get(s, 0.0) for s in self.taps}


def _paper() -> DeepI2IConfig:
    return DeepI2IConfig()


def _gpu() -> DeepI2IConfig:
    return DeepI2IConfig(resolution=64, g_ch=32, d_ch=32, n_classes=120, g_attention=(32,), d_attention=(32,))


def _cpu() -> DeepI2IConfig:
    return replace(_gpu(), g_ch=8, d_ch=8, n_classes=6, fusion=CPU_FUSION)


PRESETS = {"paper": _paper, "gpu": _gpu, "cpu": _cpu}
