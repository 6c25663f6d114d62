"""One StEP training step for every approach (Bicycle v1/v2, Ours v1..v4) and stage (2, 3).

``step = make_train_step(TrainConfig(stage=3, approach="ours_v3"), ModelConfig(), "cuda")``;
``losses = step(A, B)`` does one discriminator update and one generator(/encoder) update on the
batch and returns a dict of detached 0-d float32 loss tensors on the device (no host sync).

How the step works
------------------
All loss terms of the LossConfig come out of ONE forward function and ONE backward pass:

* codes ``z = E(B)`` (mean; VAE baselines sample ``mu + sigma * eps``), content features of A
  computed once by ``G.encode`` and decoded for every code needed;
* ``dir_recon``: perceptual(G(A, z), B); ``cyc_recon``: swap codes with the next pair of the
  batch, re-encode, swap back, perceptual(cycle, B) (the target's VGG features are computed once
  and shared); ``z_l2``: mean(z^2); ``z_kl``: KL(N(mu, sigma) || N(0, I));
* ``d_dir``/``d_rand_z``: LSGAN over all D scales; the D loss sees detached fakes, the G loss
  sees D through *detached parameters* (``torch.func.functional_call``), so one backward of
  ``loss_D + loss_GE + loss_G2`` gives each optimizer exactly its own gradients;
* the paper's third Adam (G alone, lr 1e-4) carries the random-z terms (GAN on G(A, z_rand) and
  ``z_recon`` = L1(E(G(A, z_rand)), z_rand)), as in the official code.  That branch runs G
  through *shadow parameters*: leaf tensors that share storage with G's parameters, owned by the
  G-only optimizer -- their ``.grad`` is the G-only gradient and their in-place Adam update
  updates G.  E and D are frozen (detached parameters) inside it.

Then the three Adams step (fused on CUDA), the EMA of G and E is updated with
``torch._foreach_lerp_``, and the step count advances.  Stage 2 freezes E (``requires_grad``
off; it is bit-identical afterwards); stage 3 trains G, E and D.

Speed: ``TrainConfig.compile`` compiles with ``torch.compile(fullgraph=True)`` (AOTAutograd
compiles the backward too; no graph breaks): with ``compile_scope="network"`` (default) every
network call of the forward -- G.encode, G.decode, E, D, D/G/E through other parameters, the
VGG backbone -- is its own graph (the same graphs in every approach, so approaches share them
through the on-disk cache, :mod:`fastep.compiler`); ``"step"`` compiles the whole forward as one
graph.  ``amp`` runs it under bf16 autocast (norms, losses and the code in float32),
``channels_last`` converts nets and inputs, ``aligned_convs`` turns on the networks' exact conv
rewrites (:mod:`fastep.nn.aligned`), ``fused_adam`` uses ``torch.optim.Adam(fused=True)`` on
CUDA, ``cuda_graphs`` compiles with ``mode="reduce-overhead"`` (the batch is copied into static
buffers), ``combo_kernels`` passes inductor's combo-kernel option.  The learning rate changes through ``set_lr_scale(s)`` by editing
the param groups (outside the compiled region: no recompiles).
``TrainConfig(eager_fp32=True)`` is the plain-PyTorch baseline: no compile, float32,
channels-first, non-fused Adam, and every fastep op on its reference backend
(``fastep._ext.force_backend("reference")``).

Distributed: when ``torch.distributed`` is initialized with more than one process, parameters
are broadcast from rank 0 at construction and the gradients of all trainable parameters are
averaged with one bucketed ``all_reduce`` after the backward pass (what DistributedDataParallel
does; DDP's module wrappers cannot express the several forwards per backward, the frozen-D
branches and the shadow G-only parameters of this step).
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ...losses import lsgan_g_loss
from ...nn.aligned import set_fast_convs
from ...train.distributed import average_grads_, broadcast_from_rank0_
from .config import LossConfig, ModelConfig, TrainConfig
from .nets import Models, build_models

__all__ = ["TrainStep", "make_train_step", "step_conv_census", "LOSS_KEYS", "LossTerm", "G_TERMS", "G2_TERMS"]

#: keys of the dict a step returns (always all of them; terms that are off are 0)
LOSS_KEYS = ("loss_d", "loss_d_real", "loss_d_fake", "loss_g", "loss_g2", "g_gan", "g2_gan", "rec", "cyc",
             "z_recon", "z_l2", "z_kl", "pixel", "texture", "cyc_pixel")
#: what the progress bar shows (the totals of both players and the reconstruction / code terms;
#: terms that are off in an approach are zero and left out)
HEADLINE_LOSSES = ("loss_g", "loss_d", "rec", "pixel", "texture", "cyc", "cyc_pixel", "z_recon", "z_l2", "z_kl")


# ----------------------------------------------------------------------------- helpers

def _detached(module: nn.Module) -> Dict[str, Tensor]:
    return {n: p.detach() for n, p in module.named_parameters()}


class _Nets:
    """Every network call of the step's forward, each through ``wrap``: the plain calls, or
    (``compile_scope="network"``) each its own compiled graph.  Graphs of one network are the
    same in every approach, so approaches share them through inductor's on-disk cache."""

    def __init__(self, G: nn.Module, E: nn.Module, D: nn.Module, features, wrap=None):
        wrap = wrap or (lambda f: f)

        def g_with(params, a, z):  # G through other parameters (the G-only optimizer's shadows)
            return torch.func.functional_call(G, params, (a, z))

        def d_with(params, a, b):  # D through detached parameters (its gradient goes to G only)
            return torch.func.functional_call(D, params, (a, b))

        def e_with(params, x):
            return torch.func.functional_call(E, params, (x,))

        self.encode, self.decode = wrap(G.encode), wrap(G.decode)
        self.E, self.E_stats, self.D, self.features = wrap(E), wrap(E.stats), wrap(D), wrap(features)
        self.G_with, self.D_with, self.E_with = wrap(g_with), wrap(d_with), wrap(e_with)


def _d_real_half(d_real: List[Tensor]) -> Tensor:
    """LSGAN's real half of the D loss, 0.5 * sum over scales of mean((D(real) - 1)^2): half of
    :func:`fastep.losses.lsgan_g_loss` on the real outputs (the scaling by 1/2 is exact)."""
    return 0.5 * lsgan_g_loss(d_real)


def _d_fake_half(d_fake: List[Tensor]) -> Tensor:
    """LSGAN's fake half of the D loss, 0.5 * sum over scales of mean(D(fake)^2)."""
    total = None
    for f in d_fake:
        t = f.float().square().mean()
        total = t if total is None else total + t
    return 0.5 * total


class _Perceptual:
    """The step's perceptual term: the target's features once, a distance for every generated
    image (:meth:`fastep.losses.PerceptualLoss.distance`), times the official code's activation
    scale (``perceptual_act_scale``^2 for mse, ^1 for l1).  The module comes from fastep's one
    backbone cache (:func:`fastep.losses.shared_perceptual_loss`, keyed by the channels_last and
    amp settings used here).  Features are the backbone's own call: the inputs already have the
    step's dtype, memory format and autocast (also on the meta device of the conv census), and
    the loss's range check (a host sync) is not used."""

    def __init__(self, loss_cfg: LossConfig, channels_last: bool, amp_dtype: Optional[torch.dtype],
                 device: torch.device):
        from ...losses import shared_perceptual_loss

        layers = None if loss_cfg.perceptual_layers is None else tuple(loss_cfg.perceptual_layers)
        self.loss = shared_perceptual_loss(loss_cfg.perceptual_net, loss_cfg.perceptual_weights,
                                           loss_cfg.perceptual_distance, loss_cfg.perceptual_backbone, layers=layers,
                                           amp=amp_dtype if amp_dtype is not None else False,
                                           channels_last=channels_last, device=device)
        if channels_last and not self.loss.vgg.channels_last:
            self.loss.vgg.to(memory_format=torch.channels_last)
            self.loss.vgg.channels_last = True
        p = 1 if loss_cfg.perceptual_distance == "l1" else 2
        s = loss_cfg.perceptual_act_scale
        self.scale = float(s * s if p == 2 else s)

    def features(self, x: Tensor) -> List[Tensor]:
        return self.loss.vgg(x)

    def texture_distance(self, feats_x: List[Tensor], feats_y: List[Tensor]) -> Tensor:
        """Weighted mean squared difference of the layers' Gram matrices (fastep.ops.gram): a
        texture statistic that does not depend on where a pattern's stripes or dots fall."""
        from ...ops.gram import gram

        total = None
        for w, fx, fy in zip(self.loss.weights, feats_x, feats_y):
            if w == 0:
                continue
            d = (gram(fx.float()) - gram(fy.float())).square().mean() * w
            total = d if total is None else total + d
        return total if total is not None else feats_x[0].new_zeros(())

    def distance(self, feats_x: List[Tensor], feats_y: List[Tensor]) -> Tensor:
        return self.scale * self.loss.distance(feats_x, feats_y)


# ----------------------------------------------------------------------------- the step

class TrainStep:
    """One D update + one G(/E) update per call, for any LossConfig and stage 2 or 3.

    Args:
        models: :class:`Models` (G, E, D) on the target device (float32).  The step converts
            them to channels_last when ``train_cfg.channels_last``.
        loss_cfg: the loss terms (``LossConfig.preset(name)``).
        train_cfg: optimizers, EMA, speed switches.
        stage: 2 (E frozen) or 3 (G, E, D together); default ``train_cfg.stage``.

    Attributes: ``models``, ``G``, ``E``, ``D``, ``G_ema``, ``E_ema`` (EMA copies, eval mode),
    ``opt_ge``, ``opt_d``, ``opt_g2`` (``None`` when the approach has no random-z terms),
    ``step_count``, ``lr_scale``, ``images_per_call`` (= batch size given at construction).
    """

    def __init__(self, models: Models, loss_cfg: LossConfig, train_cfg: TrainConfig,
                 stage: Optional[int] = None):
        if not isinstance(loss_cfg, LossConfig):
            raise TypeError(f"loss_cfg must be a LossConfig, got {type(loss_cfg).__name__}")
        if not isinstance(train_cfg, TrainConfig):
            raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
        stage = train_cfg.stage if stage is None else stage
        if isinstance(stage, str) and stage.isdigit():
            stage = int(stage)
        if stage not in (2, 3):
            raise ValueError(f"stage must be 2 (G, D; E frozen) or 3 (G, E, D), got {stage!r}")
        G, E, D = models.G, models.E, models.D
        if loss_cfg.needs_logvar and not E.has_logvar:
            raise ValueError(f"approach {loss_cfg.name!r} uses a VAE/KL code and needs the encoder's log-variance "
                             "head: build the models with ModelConfig(e_logvar=True) (make_train_step does this)")
        if stage == 2 and not loss_cfg.pretrained_e:
            warnings.warn(f"approach {loss_cfg.name!r} trains E jointly from scratch; stage 2 keeps E frozen",
                          stacklevel=2)
        self.models, self.G, self.E, self.D = models, G, E, D
        self.loss_cfg, self.train_cfg, self.stage = loss_cfg, train_cfg, stage
        self.device = next(G.parameters()).device
        self.images_per_call = train_cfg.batch_size
        self.train_e = stage == 3
        self.eager_fp32 = train_cfg.eager_fp32
        is_cuda = self.device.type == "cuda"
        use_amp = train_cfg.amp and not train_cfg.eager_fp32 and (is_cuda or train_cfg.amp_cpu)
        self.amp_dtype = (torch.bfloat16 if train_cfg.amp_dtype == "bfloat16" else torch.float16) if use_amp else None
        self.channels_last = train_cfg.channels_last and not train_cfg.eager_fp32
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

        self.aligned_convs = bool(train_cfg.aligned_convs and not train_cfg.eager_fp32)
        for m in (G, E, D):
            m.train()
            if self.channels_last:
                m.to(memory_format=torch.channels_last)
            set_fast_convs(m, self.aligned_convs)  # (before the EMA copies: they inherit it)
        G.requires_grad_(True)
        D.requires_grad_(True)
        E.requires_grad_(self.train_e)
        # the random-z branch of a VAE E without KL would never use logvar: fine.

        self.perceptual = _Perceptual(loss_cfg, self.channels_last, self.amp_dtype, self.device)

        # distributed: same initial weights everywhere
        self.world = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.world = torch.distributed.get_world_size()
        if self.world > 1:
            broadcast_from_rank0_(p for m in (G, E, D) for p in m.parameters())

        # optimizers (paper A.1)
        oc = train_cfg.optim
        fused = bool(train_cfg.fused_adam and is_cuda and not train_cfg.eager_fp32)
        opt_kw: Dict[str, Any] = dict(betas=tuple(oc.betas), eps=oc.eps, weight_decay=oc.weight_decay)
        if fused:
            opt_kw["fused"] = True
        ge_params = list(G.parameters()) + (list(E.parameters()) if self.train_e else [])
        self.opt_ge = torch.optim.Adam(ge_params, lr=oc.lr_ge, **opt_kw)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=oc.lr_d, **opt_kw)
        self.use_g2 = loss_cfg.uses_g_only_optimizer
        self._g_shadow: Dict[str, Tensor] = {}
        self.opt_g2 = None
        if self.use_g2:
            self._make_shadows()
            self.opt_g2 = torch.optim.Adam(list(self._g_shadow.values()), lr=oc.lr_g, **opt_kw)
        self.base_lrs = [[g["lr"] for g in o.param_groups] for o in self.optimizers]
        self.lr_scale = 1.0

        # EMA copies
        self.ema_decay = float(train_cfg.ema)
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        self.E_ema = copy.deepcopy(E).eval().requires_grad_(False)
        self._refresh_ema_lists()

        self.step_count = 0
        self._trainable = [p for m in ((G, E, D) if self.train_e else (G, D)) for p in m.parameters()]
        fn = self._forward
        self.compiled = bool(train_cfg.compile and not train_cfg.eager_fp32)
        self.compile_scope = train_cfg.compile_scope if self.compiled else None
        self._cudagraphs = False
        self._static_batch: Optional[Tuple[Tensor, Tensor]] = None
        self._nets = _Nets(G, E, D, self.perceptual.features)
        if self.compiled:
            mode = train_cfg.compile_mode
            if mode is None and train_cfg.cuda_graphs and is_cuda:
                mode = "reduce-overhead"
            self._cudagraphs = mode == "reduce-overhead" and is_cuda
            if mode == "reduce-overhead":
                # CUDA graphs: the shadow G parameters never move; do not copy them every replay
                for t in self._g_shadow.values():
                    torch._dynamo.mark_static_address(t)
            kw: Dict[str, Any] = dict(fullgraph=True, dynamic=False, backend=train_cfg.compile_backend)
            if train_cfg.combo_kernels and train_cfg.compile_backend == "inductor":
                from torch._inductor import list_mode_options
                kw["options"] = {**(list_mode_options(mode) if mode else {}), "combo_kernels": True}
            else:
                kw["mode"] = mode

            def wrap(f):
                return torch.compile(f, **kw)

            if self.compile_scope == "network":
                self._nets = _Nets(G, E, D, self.perceptual.features, wrap)
            else:
                fn = wrap(fn)
        elif train_cfg.cuda_graphs and is_cuda:
            warnings.warn("TrainConfig.cuda_graphs needs compile=True; running without CUDA graphs", stacklevel=2)
        self._fn = fn

    # ------------------------------------------------------------------ plumbing
    @property
    def optimizers(self) -> List[torch.optim.Optimizer]:
        return [o for o in (self.opt_ge, self.opt_d, self.opt_g2) if o is not None]

    def _make_shadows(self) -> None:
        """Leaf tensors aliasing G's parameter storage (the G-only optimizer's parameters)."""
        old = self._g_shadow
        new = {}
        for n, p in self.G.named_parameters():
            s = old.get(n)
            if s is None or s.data_ptr() != p.data_ptr() or s.shape != p.shape or s.stride() != p.stride():
                s = p.detach()
                s.requires_grad_(True)
            new[n] = s
        self._g_shadow = new
        if getattr(self, "opt_g2", None) is not None:
            self.opt_g2.param_groups[0]["params"] = list(new.values())

    def _refresh_ema_lists(self) -> None:
        self._ema_pairs_g = ([p for p in self.G_ema.parameters()], [p.detach() for p in self.G.parameters()])
        self._ema_pairs_e = ([p for p in self.E_ema.parameters()], [p.detach() for p in self.E.parameters()])

    def _backend_ctx(self):
        if self.eager_fp32:
            from ..._ext import force_backend
            return force_backend("reference")
        return contextlib.nullcontext()

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ the losses
    def _codes(self, B: Tensor, eps: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """(z used by G, mu, logvar) for images B."""
        cfg = self.loss_cfg
        if cfg.needs_logvar:
            mu, logvar = self._nets.E_stats(B)
            mu, logvar = mu.float(), logvar.float()
        else:
            mu, logvar = self._nets.E(B).float(), None
        z = mu
        if cfg.vae and eps is not None:
            z = mu + eps * torch.exp(0.5 * logvar)
        return z, mu, logvar

    def _forward(self, A: Tensor, B: Tensor, noise: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Every enabled loss term of :data:`G_TERMS`, :data:`G2_TERMS` and the D loss, in one graph.

        The loops over the term tables are plain Python at trace time: ``torch.compile`` sees one
        graph with exactly the enabled terms."""
        cfg = self.loss_cfg
        zero = torch.zeros((), device=A.device, dtype=torch.float32)
        out = {k: zero for k in LOSS_KEYS}
        with self._autocast():
            if self.train_e:
                z, mu, logvar = self._codes(B, noise.get("eps"))
            else:
                with torch.no_grad():
                    z, mu, logvar = self._codes(B, noise.get("eps"))
            nets = self._nets
            feats = nets.encode(A)
            p = _Pass(A=A, B=B, noise=noise, z=z, mu=mu, logvar=logvar, feats=feats, fake=nets.decode(feats, z),
                      d_frozen=_detached(self.D))
            d_real = nets.D(A, B)
            loss_g = zero
            for term in G_TERMS:  # G (and E in stage 3), through the first Adam
                if term.on(cfg):
                    value = term.fn(self, p)
                    out[term.key] = value
                    loss_g = loss_g + term.weight(cfg) * value
            loss_g2 = zero
            if self.use_g2:  # the random-z branch: G alone, through the shadow parameters
                p.z_rand = noise["z_prior"] if cfg.random_z_mode == "prior" else z.detach().roll(1, 0)
                p.fake_rand = nets.G_with(self._g_shadow, A, p.z_rand)
                for term in G2_TERMS:
                    if term.on(cfg):
                        value = term.fn(self, p)
                        out[term.key] = value
                        loss_g2 = loss_g2 + term.weight(cfg) * value
            loss_d_real, loss_d_fake = _d_loss(d_real, p.d_fakes, zero)
            loss_d = cfg.lambda_gan * (loss_d_real + loss_d_fake)

        out["loss_d"], out["loss_d_real"], out["loss_d_fake"] = loss_d, loss_d_real, loss_d_fake
        out["loss_g"], out["loss_g2"] = loss_g, loss_g2
        total = loss_d + loss_g + loss_g2
        return total, {k: v.detach().float() for k, v in out.items()}

    # ------------------------------------------------------------------ one step
    def _noise(self, n: int) -> Dict[str, Tensor]:
        cfg = self.loss_cfg
        noise: Dict[str, Tensor] = {}
        zd = self.G.z_dim
        if cfg.vae:
            noise["eps"] = torch.randn(n, zd, device=self.device)
            if cfg.cyc_recon:
                noise["eps_cyc"] = torch.randn(n, zd, device=self.device)
        if self.use_g2 and cfg.random_z_mode == "prior":
            noise["z_prior"] = torch.randn(n, zd, device=self.device) * cfg.z_std
        return noise

    def _check_batch(self, A: Tensor, B: Tensor) -> None:
        for name, x in (("A", A), ("B", B)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
            if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
                raise ValueError(f"{name} must be a float tensor [N, 3, H, W] in [-1, 1], got "
                                 f"{x.dtype} {tuple(x.shape)}")
        if A.shape != B.shape:
            raise ValueError(f"A and B must have the same shape, got {tuple(A.shape)} and {tuple(B.shape)}")
        if self.loss_cfg.cyc_recon or (self.use_g2 and self.loss_cfg.random_z_mode == "batch"):
            if A.shape[0] < 2:
                raise ValueError(f"approach {self.loss_cfg.name!r} pairs images within the batch: batch size "
                                 f"must be >= 2, got {A.shape[0]}")

    def __call__(self, A: Tensor, B: Tensor) -> Dict[str, Tensor]:
        """One D update and one G(/E) update on the batch (A, B); returns detached losses."""
        self._check_batch(A, B)
        A = A.to(self.device, torch.float32, non_blocking=True).contiguous(memory_format=self.memory_format)
        B = B.to(self.device, torch.float32, non_blocking=True).contiguous(memory_format=self.memory_format)
        if self._cudagraphs:
            A, B = self._static_batch_of(A, B)
        noise = self._noise(A.shape[0])
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        with self._backend_ctx():
            if self._cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            total, logs = self._fn(A, B, noise)
            total.backward()
        if self._cudagraphs:  # graph outputs are overwritten by the next replay: keep a copy (one kernel)
            logs = dict(zip(logs.keys(), torch.stack(list(logs.values())).unbind()))
        if self.world > 1:
            self._allreduce_grads()
        for opt in self.optimizers:
            opt.step()
        self._update_ema()
        self.step_count += 1
        return logs

    step = __call__

    def _static_batch_of(self, A: Tensor, B: Tensor) -> Tuple[Tensor, Tensor]:
        """The batch copied into buffers that keep their address from step to step (CUDA graphs
        read inputs from fixed addresses; marked static, the graphs do not copy them again)."""
        buf = self._static_batch
        if buf is None or buf[0].shape != A.shape or buf[0].stride() != A.stride():
            buf = (torch.empty_like(A), torch.empty_like(B))
            for t in buf:
                torch._dynamo.mark_static_address(t)
            self._static_batch = buf
        buf[0].copy_(A, non_blocking=True)
        buf[1].copy_(B, non_blocking=True)
        return buf

    def explain(self, A: Tensor, B: Tensor):
        """``torch._dynamo.explain`` of the step's forward on a batch (graph count, graph breaks)."""
        self._check_batch(A, B)
        A = A.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)
        B = B.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)
        return torch._dynamo.explain(self._forward)(A, B, self._noise(A.shape[0]))

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_decay <= 0.0:
            torch._foreach_copy_(self._ema_pairs_g[0], self._ema_pairs_g[1])
            if self.train_e:
                torch._foreach_copy_(self._ema_pairs_e[0], self._ema_pairs_e[1])
            return
        w = 1.0 - self.ema_decay
        torch._foreach_lerp_(self._ema_pairs_g[0], self._ema_pairs_g[1], w)
        if self.train_e:
            torch._foreach_lerp_(self._ema_pairs_e[0], self._ema_pairs_e[1], w)

    def _allreduce_grads(self) -> None:
        average_grads_(list(self._trainable) + list(self._g_shadow.values()))

    # ------------------------------------------------------------------ LR, state
    def set_lr_scale(self, scale: float) -> None:
        """Multiply every optimizer's base learning rate by ``scale`` (no recompilation)."""
        scale = float(scale)
        if not scale >= 0.0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.lr_scale = scale
        for opt, bases in zip(self.optimizers, self.base_lrs):
            for group, base in zip(opt.param_groups, bases):
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(base * scale)
                else:
                    group["lr"] = base * scale

    def networks(self) -> Dict[str, nn.Module]:
        """The modules a checkpoint holds: G, E, D and the EMA copies G_ema, E_ema."""
        return {"G": self.G, "E": self.E, "D": self.D, "G_ema": self.G_ema, "E_ema": self.E_ema}

    headline_losses = HEADLINE_LOSSES  # what the trainer's progress bar shows

    def preview(self, A: Tensor, B: Tensor, seed: int = 0) -> Tensor:
        """A sample grid of the EMA networks (:func:`~fastep.zoo.step.translator.sample_grid`)."""
        from .translator import sample_grid

        return sample_grid(self.G_ema, self.E_ema, A, B, z_dim=self.G.z_dim, seed=seed)

    def state_dict(self) -> Dict[str, Any]:
        """Models, EMA copies, optimizers, step count and LR scale."""
        return {
            "G": self.G.state_dict(), "E": self.E.state_dict(), "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(), "E_ema": self.E_ema.state_dict(),
            "opt_ge": self.opt_ge.state_dict(), "opt_d": self.opt_d.state_dict(),
            "opt_g2": None if self.opt_g2 is None else self.opt_g2.state_dict(),
            "step": self.step_count, "lr_scale": self.lr_scale, "stage": self.stage,
            "approach": self.loss_cfg.name,
        }

    def load_state_dict(self, state: Dict[str, Any], *, strict: bool = True) -> None:
        """Restore :meth:`state_dict`'s output (weights are copied in place)."""
        for key in ("G", "E", "D", "G_ema", "E_ema"):
            if key in state and state[key] is not None:
                getattr(self, key).load_state_dict(state[key], strict=strict)
            elif strict:
                raise KeyError(f"state dict has no {key!r} entry")
        self._make_shadows()
        self._refresh_ema_lists()
        for key in ("opt_ge", "opt_d", "opt_g2"):
            opt = getattr(self, key)
            sd = state.get(key)
            if opt is not None and sd is not None:
                # deep copy: torch keeps (and later mutates in place) the loaded state tensors, which
                # must not be shared with another live optimizer the state dict came from
                opt.load_state_dict(copy.deepcopy(sd))
            elif opt is not None and strict and key != "opt_g2":
                raise KeyError(f"state dict has no {key!r} entry")  # (opt_g2 may start fresh)
        self.step_count = int(state.get("step", 0))
        self.base_lrs = [[g.get("initial_lr", b) for g, b in zip(o.param_groups, bases)]
                         for o, bases in zip(self.optimizers, self.base_lrs)]
        self.set_lr_scale(float(state.get("lr_scale", 1.0)))


# ----------------------------------------------------------------------------- the loss terms

@dataclass
class _Pass:
    """What one forward pass has computed so far (shared by the loss terms)."""

    A: Tensor
    B: Tensor
    noise: Dict[str, Tensor]
    z: Tensor  #: the codes G decodes (sampled for VAE approaches)
    mu: Tensor
    logvar: Optional[Tensor]
    feats: List[Tensor]  #: G's content encoding of A, decoded for every code
    fake: Tensor  #: G(A, z), the direct reconstruction
    d_frozen: Dict[str, Tensor]  #: D's parameters, detached (G's GAN terms do not train D)
    d_fakes: List[List[Tensor]] = field(default_factory=list)  #: D on each kind of (detached) fake
    target: Optional[List[Tensor]] = None  #: perceptual features of B, computed once
    fake_features: Optional[List[Tensor]] = None  #: perceptual features of G(A, E(B)), computed once
    cyc_img: Optional[Tensor] = None  #: the cross-cycle reconstruction, computed once
    z_rand: Optional[Tensor] = None
    fake_rand: Optional[Tensor] = None


def _target_features(step: "TrainStep", p: _Pass) -> List[Tensor]:
    if p.target is None:
        with torch.no_grad():
            p.target = step._nets.features(p.B)
    return p.target


def _fake_features(step: "TrainStep", p: _Pass) -> List[Tensor]:
    if p.fake_features is None:
        p.fake_features = step._nets.features(p.fake)
    return p.fake_features


def _dir_recon(step: "TrainStep", p: _Pass) -> Tensor:
    """Perceptual distance of G(A, E(B)) to B."""
    target = _target_features(step, p)
    return step.perceptual.distance(_fake_features(step, p), target)


def _texture(step: "TrainStep", p: _Pass) -> Tensor:
    """Gram-matrix distance of G(A, E(B)) to B on the perceptual backbone's layers."""
    target = _target_features(step, p)
    return step.perceptual.texture_distance(_fake_features(step, p), target)


def _pixel(step: "TrainStep", p: _Pass) -> Tensor:
    """L1 of G(A, E(B)) to B."""
    return (p.fake.float() - p.B.float()).abs().mean()


def _gan_direct(step: "TrainStep", p: _Pass) -> Tensor:
    """LSGAN G loss of the direct reconstruction (D sees the detached fake in the D loss)."""
    p.d_fakes.append(step._nets.D(p.A, p.fake.detach()))
    return lsgan_g_loss(step._nets.D_with(p.d_frozen, p.A, p.fake))


def _cycle_image(step: "TrainStep", p: _Pass) -> Tensor:
    """Cross-cycle: image i takes the code of image i-1, is re-encoded, takes its code back."""
    if p.cyc_img is not None:
        return p.cyc_img
    cfg, nets = step.loss_cfg, step._nets
    swap = nets.decode(p.feats, p.z.roll(1, 0))
    if cfg.needs_logvar:
        mu2, logvar2 = nets.E_stats(swap)
        mu2, logvar2 = mu2.float(), logvar2.float()
        z_back = mu2 + p.noise["eps_cyc"] * torch.exp(0.5 * logvar2) if cfg.vae else mu2
    else:
        z_back = nets.E(swap).float()
    p.cyc_img = nets.decode(p.feats, z_back.roll(-1, 0))
    return p.cyc_img


def _cyc_recon(step: "TrainStep", p: _Pass) -> Tensor:
    """Perceptual distance of the cross-cycle reconstruction to B."""
    target = _target_features(step, p)
    return step.perceptual.distance(step._nets.features(_cycle_image(step, p)), target)


def _cyc_pixel(step: "TrainStep", p: _Pass) -> Tensor:
    """L1 of the cross-cycle reconstruction to B (the cycle reconstructs B too)."""
    return (_cycle_image(step, p).float() - p.B.float()).abs().mean()


def _z_l2(step: "TrainStep", p: _Pass) -> Tensor:
    return p.z.square().mean()


def _z_kl(step: "TrainStep", p: _Pass) -> Tensor:
    """KL(N(mu, sigma) || N(0, I)), summed over code dimensions and batch (official code)."""
    return 0.5 * (p.mu.square() + p.logvar.exp() - 1.0 - p.logvar).sum()


def _gan_random_z(step: "TrainStep", p: _Pass) -> Tensor:
    """LSGAN G loss of G(A, z_rand) (through the G-only optimizer's shadow parameters)."""
    p.d_fakes.append(step._nets.D(p.A, p.fake_rand.detach()))
    return lsgan_g_loss(step._nets.D_with(p.d_frozen, p.A, p.fake_rand))


def _z_recon(step: "TrainStep", p: _Pass) -> Tensor:
    """L1 between z_rand and E(G(A, z_rand)) (E frozen inside this branch)."""
    z_hat = step._nets.E_with(_detached(step.E), p.fake_rand).float()
    return (z_hat - p.z_rand).abs().mean()


def _d_loss(d_real: List[Tensor], d_fakes: List[List[Tensor]], zero: Tensor) -> Tuple[Tensor, Tensor]:
    """(real half, fake half averaged over the kinds of fake) of the LSGAN D loss."""
    loss_real = _d_real_half(d_real)
    if not d_fakes:
        return loss_real, zero
    loss_fake = _d_fake_half(d_fakes[0])
    for t in d_fakes[1:]:
        loss_fake = loss_fake + _d_fake_half(t)
    return loss_real, loss_fake / len(d_fakes)


class LossTerm(NamedTuple):
    """One loss term: its log key, when it is on, its weight, and the function computing it."""

    key: str
    on: Callable[[LossConfig], bool]
    weight: Callable[[LossConfig], float]
    fn: Callable[["TrainStep", _Pass], Tensor]


#: The G (and, in stage 3, E) terms, in the order they are added (the first Adam).
#: A zero perceptual weight skips the backbone passes (the pixel term alone needs none).
G_TERMS: Tuple[LossTerm, ...] = (
    LossTerm("rec", lambda c: c.dir_recon and c.lambda_rec > 0, lambda c: c.lambda_rec, _dir_recon),
    LossTerm("pixel", lambda c: c.dir_recon and c.lambda_pixel > 0, lambda c: c.lambda_pixel, _pixel),
    LossTerm("g_gan", lambda c: c.d_dir, lambda c: c.lambda_gan, _gan_direct),
    LossTerm("texture", lambda c: c.dir_recon and c.lambda_texture > 0, lambda c: c.lambda_texture, _texture),
    LossTerm("cyc", lambda c: c.cyc_recon and c.cyc_weight > 0, lambda c: c.cyc_weight, _cyc_recon),
    LossTerm("cyc_pixel", lambda c: c.cyc_recon and c.lambda_pixel > 0, lambda c: c.lambda_pixel, _cyc_pixel),
    LossTerm("z_l2", lambda c: c.z_l2, lambda c: c.lambda_z_l2, _z_l2),
    LossTerm("z_kl", lambda c: c.z_kl, lambda c: c.lambda_z_kl, _z_kl),
)
#: The random-z terms of the paper's third Adam (G alone, lr 1e-4).
G2_TERMS: Tuple[LossTerm, ...] = (
    LossTerm("g2_gan", lambda c: c.d_rand_z, lambda c: c.lambda_gan, _gan_random_z),
    LossTerm("z_recon", lambda c: c.z_recon, lambda c: c.lambda_z_recon, _z_recon),
)


def make_train_step(train_cfg: TrainConfig, model_cfg: Optional[ModelConfig] = None,
                    device: Union[str, torch.device, None] = None, *, loss_cfg: Optional[LossConfig] = None,
                    models: Optional[Models] = None, stage: Optional[int] = None) -> TrainStep:
    """Build models (unless given) and the :class:`TrainStep` for ``train_cfg``.

    The loss configuration defaults to ``LossConfig.preset(train_cfg.approach)``; the model's
    resolution follows ``train_cfg.resolution``; approaches with a VAE/KL code get the encoder's
    log-variance head.  ``step.images_per_call == train_cfg.batch_size``.  Stage 1 is not a
    G/D step: ``train_cfg.stage == 1`` defaults to stage 3 here.
    """
    if not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
    model_cfg = ModelConfig() if model_cfg is None else model_cfg
    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    loss_cfg = LossConfig.preset(train_cfg.approach) if loss_cfg is None else loss_cfg
    dev = train_cfg.resolved_device() if device is None else torch.device(device)
    if model_cfg.resolution != train_cfg.resolution or (loss_cfg.needs_logvar and not model_cfg.e_logvar):
        model_cfg = replace(model_cfg, resolution=train_cfg.resolution,
                            e_logvar=model_cfg.e_logvar or loss_cfg.needs_logvar)
    if models is None:
        models = build_models(model_cfg, dev, seed=train_cfg.seed)
    if stage is None:
        stage = train_cfg.stage if train_cfg.stage in (2, 3) else 3
    step = TrainStep(models, loss_cfg, train_cfg, stage)
    step.model_cfg = model_cfg
    return step


def step_conv_census(train_cfg: TrainConfig, model_cfg: Optional[ModelConfig] = None, *,
                     loss_cfg: Optional[LossConfig] = None):
    """Every convolution of one step's forward + backward (:func:`fastep.nn.aligned.conv_census`),
    counted on meta tensors at ``train_cfg``'s batch and resolution: nothing is computed.

    ``aligned_convs`` follows ``train_cfg`` (the fast path's rewrites, or the original layers).
    """
    from ...nn.aligned import conv_census

    cfg = replace(train_cfg, compile=False, device="cpu")
    if loss_cfg is None:
        loss_cfg = LossConfig.preset(cfg.approach, perceptual_backbone="random")
    step = make_train_step(cfg, model_cfg, "meta", loss_cfg=loss_cfg)
    for m in step.models:  # eager_fp32 leaves them off; the fast path's setting otherwise
        set_fast_convs(m, bool(train_cfg.aligned_convs and not train_cfg.eager_fp32))
    step._autocast = contextlib.nullcontext  # autocast has no meta backend; shapes are what count
    n, r = cfg.batch_size, cfg.resolution
    a = torch.empty(n, 3, r, r, device="meta")

    def run():
        total, _ = step._forward(a, a, step._noise(n))
        total.backward()

    return conv_census(run)
