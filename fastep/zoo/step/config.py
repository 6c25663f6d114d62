"""Small typed configuration dataclasses for fastep training.

* :class:`ModelConfig`  -- resolution and widths of G, E, D (docs/step.md, "Networks").
* :class:`LossConfig`   -- which loss terms are on, and their weights; the six approaches of the
  paper's Table 4 as presets: ``LossConfig.preset("ours_v3")``.
* :class:`OptimConfig`  -- the paper's three Adam optimizers (G+E, D, G alone).
* :class:`TrainConfig`  -- stage, approach, batch, kimg, LR schedule, EMA and the speed switches
  (compile, bf16 autocast, channels_last, fused Adam, CUDA graphs, the eager fp32 baseline).

Every config validates itself in ``__post_init__`` and raises ``ValueError``/``TypeError``
naming the offending field.  ``dataclasses.asdict(cfg)`` round-trips through ``Cfg(**d)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Tuple

from ...config import from_dict

__all__ = ["ModelConfig", "LossConfig", "OptimConfig", "TrainConfig", "RETIRED_TRAIN_KEYS", "PRESETS", "APPROACHES", "APPROACH_TABLE",
           "LOSS_FLAGS", "canonical_approach"]


def _check_type(obj, name: str, types, what: str) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise TypeError(f"{type(obj).__name__}.{name} must be {what}, got {value!r}")
    if not isinstance(value, types):
        raise TypeError(f"{type(obj).__name__}.{name} must be {what}, got {value!r}")


def _positive(obj, *names: str, allow_zero: bool = False) -> None:
    for n in names:
        _check_type(obj, n, (int, float), "a number")
        v = getattr(obj, n)
        if v < 0 or (v == 0 and not allow_zero):
            raise ValueError(f"{type(obj).__name__}.{n} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


def _bools(obj, *names: str) -> None:
    for n in names:
        if not isinstance(getattr(obj, n), bool):
            raise TypeError(f"{type(obj).__name__}.{n} must be a bool, got {getattr(obj, n)!r}")


# ----------------------------------------------------------------------------- model

@dataclass
class ModelConfig:
    """Sizes of the StEP networks (defaults: the official 256 x 256 models, docs/step.md).

    ``resolution`` is the training crop; the nets are fully convolutional, it is used to
    validate divisibility (G needs multiples of 2^g_n_down, E of 16, D of
    2^(d_layers + d_scales - 1)).  ``ModelConfig.tiny()`` is a CPU-test size.
    """

    resolution: int = 256
    in_ch: int = 3
    out_ch: int = 3
    z_dim: int = 8
    g_nf: int = 32
    g_n_down: int = 3
    n_res: int = 4
    g_max_nf: int = 512
    g_skips: bool = True
    g_z_all: bool = True
    e_nf: int = 64
    e_logvar: bool = False
    e_pixelnorm: bool = True
    d_nf: int = 32
    d_layers: int = 3
    d_scales: int = 3
    d_mbstd: bool = True
    d_conditional: bool = True
    equalized_lr: bool = True

    def __post_init__(self):
        for n in ("resolution", "in_ch", "out_ch", "z_dim", "g_nf", "g_n_down", "g_max_nf", "e_nf", "d_nf",
                  "d_layers", "d_scales"):
            _check_type(self, n, int, "an int")
            if getattr(self, n) <= 0:
                raise ValueError(f"ModelConfig.{n} must be > 0, got {getattr(self, n)}")
        _check_type(self, "n_res", int, "an int")
        if self.n_res < 0:
            raise ValueError(f"ModelConfig.n_res must be >= 0, got {self.n_res}")
        _bools(self, "g_skips", "g_z_all", "e_logvar", "e_pixelnorm", "d_mbstd", "d_conditional", "equalized_lr")
        m = self.min_multiple
        if self.resolution % m:
            raise ValueError(f"ModelConfig.resolution must be a multiple of {m} (G: 2^g_n_down, E: 16, "
                             f"D: 2^(d_layers + d_scales - 1)), got {self.resolution}")

    @property
    def min_multiple(self) -> int:
        return max(2 ** self.g_n_down, 16, 2 ** (self.d_layers + self.d_scales - 1))

    @classmethod
    def tiny(cls, resolution: int = 32, **kw) -> "ModelConfig":
        """A small model for CPU tests (same structure, narrow widths, 2 D scales)."""
        base = dict(resolution=resolution, g_nf=8, n_res=1, e_nf=8, d_nf=8, d_scales=2)
        base.update(kw)
        return cls(**base)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        """``cls(**d)`` for a dict from ``dataclasses.asdict``; an unknown key is an error naming it."""
        return from_dict(cls, d)


# ----------------------------------------------------------------------------- losses

#: The loss terms an approach can switch on (the columns of the paper's Table 4).
LOSS_FLAGS = ("dir_recon", "cyc_recon", "d_dir", "d_rand_z", "z_recon", "z_l2", "z_kl", "vae", "pretrained_e")

#: The approaches of the paper's Table 4 as named rows: the flags each one switches on (every
#: other flag of :data:`LOSS_FLAGS` is off).  A new approach is one row here.
APPROACH_TABLE: Dict[str, Dict[str, bool]] = {
    "bicycle_v1": dict(dir_recon=True, d_dir=True, d_rand_z=True, z_recon=True, z_kl=True, vae=True),
    "bicycle_v2": dict(dir_recon=True, cyc_recon=True, d_dir=True, d_rand_z=True, z_recon=True, z_kl=True,
                       vae=True),
    "ours_v1": dict(dir_recon=True, cyc_recon=True, d_dir=True, d_rand_z=True, z_recon=True, z_l2=True,
                    pretrained_e=True),
    "ours_v2": dict(dir_recon=True, d_dir=True, d_rand_z=True, z_recon=True, z_l2=True, pretrained_e=True),
    "ours_v3": dict(dir_recon=True, d_dir=True, z_l2=True, pretrained_e=True),
    "ours_v4": dict(dir_recon=True, d_dir=True, pretrained_e=True),
    # the intermediate ablations of Table 4 (not part of the timing table)
    "bicycle_v1_2": dict(dir_recon=True, d_dir=True, d_rand_z=True, z_recon=True, z_kl=True),
    "bicycle_v2_2": dict(dir_recon=True, cyc_recon=True, d_dir=True, d_rand_z=True, z_recon=True, z_kl=True),
    "bicycle_v1_3": dict(dir_recon=True, d_dir=True, d_rand_z=True, z_recon=True, z_l2=True),
    "bicycle_v2_3": dict(dir_recon=True, cyc_recon=True, d_dir=True, d_rand_z=True, z_recon=True, z_l2=True),
}
for _name, _row in APPROACH_TABLE.items():
    if set(_row) - set(LOSS_FLAGS):
        raise ValueError(f"APPROACH_TABLE[{_name!r}]: unknown flag(s) {sorted(set(_row) - set(LOSS_FLAGS))}")
APPROACHES = ("bicycle_v1", "bicycle_v2", "ours_v1", "ours_v2", "ours_v3", "ours_v4")
PRESETS = tuple(APPROACH_TABLE)
_ALIASES = {"munit_p": "bicycle_v2", "munit-p": "bicycle_v2"}


def canonical_approach(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_").replace(".", "_").replace(" ", "_")
    return _ALIASES.get(key, key)


@dataclass
class LossConfig:
    """Loss terms (paper Table 4, docs/step.md) and weights.

    Flags: ``dir_recon`` perceptual reconstruction of B from G(A, E(B)); ``cyc_recon`` cross-cycle
    reconstruction (swap the codes of two pairs, re-encode, swap back); ``d_dir`` GAN on direct
    reconstructions; ``d_rand_z`` GAN on G(A, random z); ``z_recon`` L1 between a random z and
    E(G(A, z)); ``z_l2`` mean(z^2); ``z_kl`` KL(N(mu, sigma) || N(0, I)); ``vae`` sample
    z = mu + sigma * eps; ``pretrained_e`` E comes from stage 1 (informational: the trainer uses
    it; the step only needs the stage).

    Random z: with a prior (``z_kl``) it is N(0, ``z_std``^2); without one it is "the code of
    another random training image" (the code of the next image of the batch, detached), as in the
    paper's Bicycle v1.3/v2.3 and Ours v1/v2.  ``random_z="prior"|"batch"`` overrides.

    Weights (paper A.1 / official code): ``lambda_gan`` 1, ``lambda_rec`` 0.02 (cycle uses
    ``lambda_cyc``, default the same), ``lambda_z_l2`` 0.01, ``lambda_z_kl`` 0.01 (KL summed over
    code dims and batch, as in the official code), ``lambda_z_recon`` 10 (L1).

    Perceptual loss (D's :class:`fastep.losses.PerceptualLoss`): VGG16 conv{1..5}_2, layer weights
    1/32 .. 1, ``perceptual_distance`` "mse" (official) or "l1"; the official code scales the
    activations by ``perceptual_act_scale`` = 0.1 before the squared error, i.e. the mse is
    multiplied by 0.01 (by 0.1 for l1).  ``perceptual_backbone`` "imagenet" | "random" | path.
    ``perceptual_layers`` (default None: conv{1..5}_2) names the VGG layers explicitly, one weight
    each; the backbone runs only up to the deepest one.

    ``lambda_pixel`` (not in the paper; default 0) adds a pixel-space L1 term
    ``lambda_pixel * mean|G(A, E(B)) - B|`` (images in [-1, 1]) to the direct reconstruction:
    offline the perceptual loss runs on a random-weight VGG, and at CPU scale that alone does not
    pull colours and layout into place (see the README's CPU preset section).  With
    ``cyc_recon`` the cycle reconstruction gets the same pixel term.
    ``lambda_texture`` (not in the paper; default 0) adds a Gram-matrix texture term on the same
    backbone's layers, ``lambda_texture * sum_l w_l mean((gram(F_l(G(A, E(B)))) - gram(F_l(B)))^2)``:
    unlike the pixel and perceptual distances it does not depend on where a texture's stripes or
    dots fall (random-weight convolutions still give usable Gram statistics).
    """

    dir_recon: bool = True
    cyc_recon: bool = False
    d_dir: bool = True
    d_rand_z: bool = False
    z_recon: bool = False
    z_l2: bool = True
    z_kl: bool = False
    vae: bool = False
    pretrained_e: bool = True
    lambda_gan: float = 1.0
    lambda_rec: float = 0.02
    lambda_cyc: Optional[float] = None
    lambda_z_l2: float = 0.01
    lambda_z_kl: float = 0.01
    lambda_z_recon: float = 10.0
    random_z: str = "auto"
    z_std: float = 1.0
    perceptual_net: str = "vgg16"
    perceptual_distance: str = "mse"
    perceptual_weights: Tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    perceptual_act_scale: float = 0.1
    perceptual_backbone: str = "imagenet"
    perceptual_layers: Optional[Tuple[str, ...]] = None
    lambda_pixel: float = 0.0
    lambda_texture: float = 0.0
    name: str = "custom"

    def __post_init__(self):
        _bools(self, *LOSS_FLAGS)
        _positive(self, "lambda_gan", "lambda_rec", "lambda_z_l2", "lambda_z_kl", "lambda_z_recon",
                  "lambda_pixel", "lambda_texture", allow_zero=True)
        if self.perceptual_layers is not None:
            if isinstance(self.perceptual_layers, (list, str)):
                self.perceptual_layers = (tuple(self.perceptual_layers) if isinstance(self.perceptual_layers, list)
                                          else (self.perceptual_layers,))
            if len(self.perceptual_layers) != len(self.perceptual_weights):
                raise ValueError(f"LossConfig.perceptual_layers names {len(self.perceptual_layers)} layers but "
                                 f"perceptual_weights has {len(self.perceptual_weights)} weights (one per layer)")
        _positive(self, "z_std", "perceptual_act_scale")
        if self.lambda_cyc is not None:
            _positive(self, "lambda_cyc", allow_zero=True)
        if self.random_z not in ("auto", "prior", "batch"):
            raise ValueError(f"LossConfig.random_z must be 'auto', 'prior' or 'batch', got {self.random_z!r}")
        if self.perceptual_distance not in ("mse", "l1"):
            raise ValueError(f"LossConfig.perceptual_distance must be 'mse' or 'l1', got {self.perceptual_distance!r}")
        if isinstance(self.perceptual_weights, list):
            self.perceptual_weights = tuple(self.perceptual_weights)
        if not isinstance(self.perceptual_weights, tuple) or not self.perceptual_weights:
            raise TypeError(f"LossConfig.perceptual_weights must be a non-empty tuple of floats, "
                            f"got {self.perceptual_weights!r}")
        if not (self.dir_recon or self.cyc_recon or self.d_dir or self.d_rand_z):
            raise ValueError("LossConfig: at least one of dir_recon, cyc_recon, d_dir, d_rand_z must be on "
                             "(nothing would train the generator)")
        if self.vae and not self.z_kl:
            raise ValueError("LossConfig.vae=True needs z_kl=True (a sampled code without a prior drifts)")
        if self.z_kl and not self.vae:
            # KL on (mu, logvar) still needs the log-variance head; allowed, the code is mu.
            pass

    # --- derived
    @property
    def uses_random_z(self) -> bool:
        return self.d_rand_z or self.z_recon

    @property
    def random_z_mode(self) -> str:
        if self.random_z != "auto":
            return self.random_z
        return "prior" if self.z_kl else "batch"

    @property
    def needs_logvar(self) -> bool:
        return self.vae or self.z_kl

    @property
    def uses_g_only_optimizer(self) -> bool:
        """The paper's third Adam (G alone, lr 1e-4) carries the random-z GAN and z_recon terms."""
        return self.uses_random_z

    @property
    def cyc_weight(self) -> float:
        return self.lambda_rec if self.lambda_cyc is None else self.lambda_cyc

    @classmethod
    def preset(cls, name: str, **overrides) -> "LossConfig":
        """One of ``PRESETS`` (``bicycle_v1``, ``bicycle_v2`` (alias ``munit_p``), ``ours_v1`` ..
        ``ours_v4``, and the ablations ``bicycle_v1_2/v2_2/v1_3/v2_3``); keyword overrides apply."""
        key = canonical_approach(name)
        if key not in APPROACH_TABLE:
            raise ValueError(f"unknown approach {name!r}; expected one of {PRESETS}")
        flags = {f: APPROACH_TABLE[key].get(f, False) for f in LOSS_FLAGS}
        flags["name"] = key
        flags.update(overrides)
        return cls(**flags)

    def table_row(self) -> Dict[str, bool]:
        return {f: getattr(self, f) for f in LOSS_FLAGS}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LossConfig":
        """``cls(**d)`` for a dict from ``dataclasses.asdict``; an unknown key is an error naming it."""
        return from_dict(cls, d)


# ----------------------------------------------------------------------------- optimizers

@dataclass
class OptimConfig:
    """Paper A.1: three Adams, betas (0, 0.99): G+E lr 1e-3, D lr 1e-3, G alone lr 1e-4."""

    lr_ge: float = 1e-3
    lr_d: float = 1e-3
    lr_g: float = 1e-4
    betas: Tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        _positive(self, "lr_ge", "lr_d", "lr_g", "eps")
        _positive(self, "weight_decay", allow_zero=True)
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        if (not isinstance(self.betas, tuple) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas)):
            raise ValueError(f"OptimConfig.betas must be two numbers in [0, 1), got {self.betas!r}")


# ----------------------------------------------------------------------------- training

_DEFAULT_KIMG = {1: 100.0, 2: 250.0, 3: 700.0}
#: where the LR starts its linear decay, as a fraction of a GAN stage (the official 600 of 900 kimg)
DEFAULT_LR_DECAY_START = 2.0 / 3.0

#: Keys that ``train_cfg`` / ``configs["train"]`` of older checkpoints hold and TrainConfig no
#: longer has: the loop settings, whose one home is the run configuration
#: (:class:`fastep.zoo.step.run_config.RunConfig`: ``out``, ``workers``, ``log_every``,
#: ``ckpt_every``, ``keep``; checkpoints record it as ``configs["run"]``).
RETIRED_TRAIN_KEYS = ("out_dir", "num_workers", "log_every", "ckpt_every_kimg", "keep_ckpts")


@dataclass
class TrainConfig:
    """One training run (stage 2 or 3 for :class:`~fastep.zoo.step.train_step.TrainStep`).

    Speed switches: ``compile`` (torch.compile the step's forward/backward pieces; ``compile_mode``
    and ``compile_backend`` pass through, e.g. "aot_eager" for fast CPU checks), ``amp``
    (bf16 autocast on CUDA; ignored on CPU unless ``amp_cpu``), ``channels_last``, ``fused_adam``
    (CUDA only), ``cuda_graphs`` (CUDA only; compile mode "reduce-overhead").  ``eager_fp32=True``
    is the plain-PyTorch baseline: it turns all of them off and forces the reference backends.
    ``aligned_convs`` runs the networks' exact conv rewrites (:mod:`fastep.nn.aligned`: aligned
    channel counts, upsample + conv as one transposed conv; same function, same checkpoints).
    ``compile_scope``: ``"network"`` compiles G.encode, G.decode, E, D and the VGG backbone as
    separate graphs (approaches share them through the on-disk cache); ``"step"`` compiles the
    whole forward as one graph.  ``combo_kernels`` asks inductor to batch small independent
    kernels (the per-parameter casts) into combined Triton launches (CUDA; off until measured).

    The loop settings (output folder, workers, logging, checkpoint intervals) are not here: they
    belong to the run configuration (:class:`~fastep.zoo.step.run_config.RunConfig`) and the
    :class:`~fastep.train.trainer.Trainer` that it drives.
    """

    stage: int = 2
    approach: str = "ours_v3"
    batch_size: int = 8
    resolution: int = 256
    kimg: Optional[float] = None
    lr_decay_start_kimg: Optional[float] = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: float = 0.999
    compile: bool = True
    compile_mode: Optional[str] = None
    compile_backend: str = "inductor"
    amp: bool = True
    amp_dtype: str = "bfloat16"
    amp_cpu: bool = False
    channels_last: bool = True
    fused_adam: bool = True
    cuda_graphs: bool = False
    aligned_convs: bool = True
    compile_scope: str = "network"
    combo_kernels: bool = False
    eager_fp32: bool = False
    device: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        if not isinstance(self.optim, OptimConfig):
            raise TypeError(f"TrainConfig.optim must be an OptimConfig, got {type(self.optim).__name__}")
        if isinstance(self.stage, str) and self.stage.isdigit():
            self.stage = int(self.stage)
        if self.stage not in (1, 2, 3):
            raise ValueError(f"TrainConfig.stage must be 1, 2 or 3, got {self.stage!r}")
        if canonical_approach(self.approach) not in APPROACH_TABLE:
            raise ValueError(f"TrainConfig.approach must be one of {PRESETS}, got {self.approach!r}")
        self.approach = canonical_approach(self.approach)
        for n in ("batch_size", "resolution", "seed"):
            _check_type(self, n, int, "an int")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.resolution < 16 or self.resolution % 16:
            raise ValueError(f"TrainConfig.resolution must be a multiple of 16 (>= 16), got {self.resolution}")
        if self.kimg is not None:
            _positive(self, "kimg")
        if self.lr_decay_start_kimg is not None:
            _positive(self, "lr_decay_start_kimg", allow_zero=True)
        _check_type(self, "ema", (int, float), "a number")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"TrainConfig.ema must be in [0, 1) (0 disables EMA), got {self.ema}")
        _bools(self, "compile", "amp", "amp_cpu", "channels_last", "fused_adam", "cuda_graphs", "aligned_convs",
               "combo_kernels", "eager_fp32")
        if self.compile_scope not in ("network", "step"):
            raise ValueError(f"TrainConfig.compile_scope must be 'network' or 'step', got {self.compile_scope!r}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise TypeError(f"TrainConfig.compile_backend must be a backend name, got {self.compile_backend!r}")
        if self.amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"TrainConfig.amp_dtype must be 'bfloat16' or 'float16', got {self.amp_dtype!r}")
        if not isinstance(self.device, str):
            self.device = str(self.device)
        if self.eager_fp32:
            # the plain-PyTorch baseline: every speed switch off
            self.compile = self.amp = self.channels_last = self.fused_adam = self.cuda_graphs = False
            self.aligned_convs = self.combo_kernels = False

    @property
    def total_kimg(self) -> float:
        return float(self.kimg) if self.kimg is not None else _DEFAULT_KIMG[self.stage]

    @property
    def decay_start_kimg(self) -> float:
        """LR decay start (default: two thirds of the run, as the official 600 of 900 kimg)."""
        if self.lr_decay_start_kimg is not None:
            return float(self.lr_decay_start_kimg)
        return self.total_kimg * DEFAULT_LR_DECAY_START

    def resolved_device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """``cls(**d)`` for a dict from ``dataclasses.asdict``; an unknown key is an error naming it
        (the :data:`RETIRED_TRAIN_KEYS` of older checkpoints are dropped)."""
        return from_dict(cls, d, retired=RETIRED_TRAIN_KEYS)

    def replace(self, **kw) -> "TrainConfig":
        return replace(self, **kw)


def asdict(cfg) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)
