"""DeepI2I's training steps: the BigGAN stand-in (stage ``biggan``) and the transfer (stage
``transfer``), both with BigGAN's recipe.

One call ``step(x, y)`` takes a batch of ``micro_batch * accumulations`` real images x in
[-1, 1] with their class indices y, and does one discriminator update and one generator update,
each the mean of ``accumulations`` micro-batch gradients (batch norm statistics per micro-batch,
as BigGAN-PyTorch's accumulation does).  It returns detached 0-d loss tensors (no host sync).

:class:`BigGANStep` (class-conditional BigGAN, the pretrained GAN DeepI2I starts from)::

    L_D = mean(relu(1 - D(x, y))) + mean(relu(1 + D(G(z, y'), y')))      y' ~ U{0..N-1}
    L_G = -mean(D(G(z, y'), y'))                                            + an EMA of G

:class:`TransferStep` (DeepI2I, with x' = G(z, y', A(E(x_in))))::

    L_D = mean(relu(1 - D(x, y))) + mean(relu(1 + D(x', y')))
    L_G = -mean(D(x', y')) + sum_s a_s * MSE(D_s(x'), D_s(x_in))

D_s are D's block outputs at the encoder's tap sides.  The inputs x_in of micro-batch i are the
images of micro-batch i + 1 (cyclically), so the real images a D update sees are not the ones
it judges the translations of (with one micro-batch they coincide).  ``rec_pairing="paired"``
compares every translation with its own input; ``"code"`` reproduces DeepI2I's released code,
which compares sample 0 with sample 1 of the concatenated [translations; inputs] features.

Phases (transfer mode): for the first ``phase1_steps`` updates only the adaptor A (through
L_G) and D learn; G is frozen, its batch-norm and spectral-norm buffers included (G still
normalises with batch statistics).  Then G, A and D all learn.  The encoder E is frozen (eval
mode: its spectral-norm state never moves) in transfer mode and trained in scratch mode
(``train_encoder``), where phase 1 is skipped: a fresh G has nothing to keep.

Adam with BigGAN's settings: G at ``g_lr`` (1e-4); D, A and E at ``d_lr`` (4e-4);
betas (0, 0.999), eps 1e-6.  The noise (z, y') comes from the global torch RNG, which the
trainer checkpoints, so a resumed run continues bit for bit.

Under torch.distributed (``torchrun``) each rank takes its own batch of ``micro_batch *
accumulations`` images: the nets start from rank 0's weights, every optimizer step averages the
gradients over the ranks first (one all_reduce), and the buffers follow rank 0's after each
update, so every rank holds the same model (as DistributedDataParallel would).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ConfigError, choose
from ...train.distributed import average_grads_, broadcast_from_rank0_

__all__ = ["StepConfig", "BigGANStep", "TransferStep", "MODES", "REC_PAIRINGS", "hinge_d", "hinge_g",
           "rec_loss"]

MODES = ("transfer", "scratch")
REC_PAIRINGS = ("paired", "code")
#: DeepI2I's weights of the discriminator-feature reconstruction per side
REC_WEIGHTS: Tuple[Tuple[int, float], ...] = ((4, 0.1), (8, 0.1), (16, 0.1), (32, 0.01))


@dataclass(frozen=True)
class StepConfig:
    """The optimisation of both DeepI2I stages (defaults: the paper's).

    Attributes:
        mode: ``transfer`` (start from a BigGAN, E frozen) or ``scratch`` (fresh nets, E trained).
        g_lr, d_lr: Adam learning rates of G, and of D, the adaptor and the encoder.
        beta1, beta2, adam_eps: Adam's settings.
        micro_batch, accumulations: one update averages ``accumulations`` micro-batch gradients
            (the paper: 4 x 8 = 32 images).
        phase1_steps: updates of phase 1 (adaptor and D only) in transfer mode.
        rec_weights: ``((side, weight), ...)`` of the reconstruction loss (sides without an
            encoder tap are ignored).
        rec_pairing: ``paired`` (each translation against its own input) or ``code``.
        train_encoder: train E (``None``: only in scratch mode).
        g_ema: decay of the EMA of G per update in stage ``biggan`` (0: no EMA; DeepI2I keeps none).
        ema_start: updates before the EMA starts averaging (until then it copies G), as
            BigGAN-PyTorch's ``--ema_start``.
    """

    mode: str = "transfer"
    g_lr: float = 1e-4
    d_lr: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.999
    adam_eps: float = 1e-6
    micro_batch: int = 4
    accumulations: int = 8
    phase1_steps: int = 500
    rec_weights: Tuple[Tuple[int, float], ...] = REC_WEIGHTS
    rec_pairing: str = "paired"
    train_encoder: Optional[bool] = None
    g_ema: float = 0.999
    ema_start: int = 20000

    def __post_init__(self):
        choose(self.mode, MODES, "DeepI2I step mode")
        choose(self.rec_pairing, REC_PAIRINGS, "DeepI2I rec_pairing")
        for n in ("micro_batch", "accumulations"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"DeepI2I step {n} must be an int >= 1, got {v!r}")
        for n in ("phase1_steps", "ema_start"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"DeepI2I step {n} must be an int >= 0, got {v!r}")
        for n in ("g_lr", "d_lr", "adam_eps"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"DeepI2I step {n} must be a number > 0, got {v!r}")
        for n in ("beta1", "beta2", "g_ema"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ConfigError(f"DeepI2I step {n} must be a number in [0, 1), got {v!r}")
        for n in ("g_lr", "d_lr", "adam_eps", "beta1", "beta2", "g_ema"):  # Adam refuses int betas
            object.__setattr__(self, n, float(getattr(self, n)))
        try:
            object.__setattr__(self, "rec_weights", tuple((int(s), float(w)) for s, w in self.rec_weights))
        except (TypeError, ValueError):
            raise ConfigError(f"DeepI2I step rec_weights must be ((side, weight), ...), "
                              f"got {self.rec_weights!r}") from None
        if self.train_encoder is not None and not isinstance(self.train_encoder, bool):
            raise ConfigError(f"DeepI2I step train_encoder must be true, false or null, got {self.train_encoder!r}")

    @property
    def batch(self) -> int:
        """Images per update (what the data loader delivers per call)."""
        return self.micro_batch * self.accumulations

    @property
    def trains_encoder(self) -> bool:
        return self.mode == "scratch" if self.train_encoder is None else self.train_encoder

    @property
    def phase1(self) -> int:
        """Updates of phase 1 (0 in scratch mode)."""
        return self.phase1_steps if self.mode == "transfer" else 0


# ----------------------------------------------------------------------------- the losses

def hinge_d(real: Tensor, fake: Tensor) -> Tuple[Tensor, Tensor]:
    """BigGAN's hinge loss of D, as its two halves: mean(relu(1 - real)), mean(relu(1 + fake))."""
    return F.relu(1.0 - real).mean(), F.relu(1.0 + fake).mean()


def hinge_g(fake: Tensor) -> Tensor:
    """BigGAN's generator loss: -mean(D(fake))."""
    return -fake.mean()


def rec_loss(fake_feats: Dict[int, Tensor], input_feats: Dict[int, Tensor], weights: Dict[int, float],
             pairing: str = "paired") -> Dict[int, Tensor]:
    """DeepI2I's reconstruction terms ``{side: weight * MSE}`` of discriminator features.

    ``paired``: MSE over the batch of ``fake_feats[s][i]`` against ``input_feats[s][i]``;
    ``code``: the released code's form, MSE of rows 0 and 1 of ``cat([fake, input])``.
    """
    out: Dict[int, Tensor] = {}
    for s, w in weights.items():
        f, x = fake_feats[s], input_feats[s]
        if pairing == "paired":
            d = F.mse_loss(f, x)
        elif pairing == "code":
            both = torch.cat([f, x])
            d = F.mse_loss(both[0], both[1])
        else:
            raise ValueError(f"pairing must be one of {', '.join(REC_PAIRINGS)}, got {pairing!r}")
        out[s] = w * d
    return out


@contextlib.contextmanager
def kept_buffers(module: nn.Module):
    """Restore every buffer of ``module`` on exit: a frozen net run in train mode (batch
    statistics) leaves its running statistics and spectral-norm vectors unchanged."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


# ----------------------------------------------------------------------------- common machinery

class _GANStep:
    """What both steps share: the micro-batch split, the optimizers, the LR scale and the state."""

    nets_trained: Tuple[str, ...] = ()
    headline_losses: Tuple[str, ...] = ("d_loss", "g_adv")

    def __init__(self, nets: Dict[str, nn.Module], cfg: StepConfig, device="cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.nets = {k: v.to(self.device) for k, v in nets.items()}
        self.n_classes = self.nets["G"].cfg.n_classes
        self.resolution = self.nets["G"].cfg.resolution
        self.dim_z = self.nets["G"].cfg.dim_z
        self.step_count = 0
        self.lr_scale = 1.0
        self.opts: Dict[str, torch.optim.Adam] = {}
        self.base_lrs: Dict[str, List[float]] = {}

    def _sync_from_rank0(self) -> None:
        """Under torch.distributed: every net's parameters and buffers from rank 0 (the end of
        each step's construction), so all ranks start identical and, with averaged gradients,
        stay so (spectral norm's u0/sv0 depend on the weights alone)."""
        broadcast_from_rank0_(p for net in self.nets.values() for p in net.parameters())
        self._sync_buffers()

    def _sync_buffers(self) -> None:
        """Under torch.distributed: every buffer from rank 0 after an update (what DDP's
        broadcast_buffers does).  The batch-norm statistics are each rank's own batches'; the
        spectral-norm vectors are equal already."""
        broadcast_from_rank0_(b for net in self.nets.values() for b in net.buffers())

    def _opt_step(self, name: str) -> None:
        """``opts[name].step()``; under torch.distributed the gradients are first averaged over
        the ranks with one all_reduce (what DistributedDataParallel does: its module wrapper
        cannot express the several forwards per backward and the frozen-D passes here)."""
        opt = self.opts[name]
        average_grads_(p for g in opt.param_groups for p in g["params"])
        opt.step()

    def _add_opt(self, name: str, groups: List[Tuple[List[nn.Parameter], float]]) -> None:
        groups = [(list(p), lr) for p, lr in groups]  # lists first: the arguments may be generators
        groups = [(p, lr) for p, lr in groups if p]
        if not groups:
            return
        opt = torch.optim.Adam([{"params": p, "lr": lr} for p, lr in groups],
                               betas=(self.cfg.beta1, self.cfg.beta2), eps=self.cfg.adam_eps)
        self.opts[name] = opt
        self.base_lrs[name] = [lr for _, lr in groups]

    def _check_batch(self, x: Tensor, y: Tensor) -> None:
        b, r = self.cfg.batch, self.resolution
        if not isinstance(x, Tensor) or tuple(x.shape) != (b, 3, r, r):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [{b}, 3, {r}, {r}] (micro_batch x accumulations images), got {got}")
        if not isinstance(y, Tensor) or tuple(y.shape) != (b,) or y.is_floating_point():
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y must be [{b}] class indices, got {got}")

    def draw_noise(self) -> Dict[str, Tensor]:
        """The latents and target classes of one update (global RNG): D pass and G pass."""
        n, k = self.cfg.micro_batch, self.cfg.accumulations
        dev = self.device
        return {"z_d": torch.randn(k, n, self.dim_z, device=dev),
                "y_d": torch.randint(0, self.n_classes, (k, n), device=dev),
                "z_g": torch.randn(k, n, self.dim_z, device=dev),
                "y_g": torch.randint(0, self.n_classes, (k, n), device=dev)}

    def __call__(self, x: Tensor, y: Tensor) -> Dict[str, Tensor]:
        self._check_batch(x, y)
        return self.update(x.to(self.device), y.to(self.device).long(), self.draw_noise())

    def update(self, x: Tensor, y: Tensor, noise: Dict[str, Tensor]) -> Dict[str, Tensor]:
        raise NotImplementedError

    def _micro(self, t: Tensor) -> List[Tensor]:
        return list(torch.split(t, self.cfg.micro_batch))

    def _zero(self) -> None:
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)

    def set_lr_scale(self, scale: float) -> None:
        """Multiply every optimizer's base learning rate by ``scale``."""
        scale = float(scale)
        if not scale >= 0.0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.lr_scale = scale
        for name, opt in self.opts.items():
            for group, base in zip(opt.param_groups, self.base_lrs[name]):
                group["lr"] = base * scale

    def networks(self) -> Dict[str, nn.Module]:
        return dict(self.nets)

    def state_dict(self) -> Dict[str, Any]:
        """Every network, every optimizer, the update count and the LR scale."""
        return {"nets": {k: v.state_dict() for k, v in self.networks().items()},
                "opts": {k: o.state_dict() for k, o in self.opts.items()},
                "step": self.step_count, "lr_scale": self.lr_scale}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k, net in self.networks().items():
            if k not in state["nets"]:
                raise KeyError(f"the step state has no weights for {k!r}")
            net.load_state_dict(state["nets"][k])
        for k, opt in self.opts.items():
            if k not in state["opts"]:
                raise KeyError(f"the step state has no optimizer {k!r}")
            # deep copy: the loaded moments must not be shared with the optimizer they came from
            opt.load_state_dict(copy.deepcopy(state["opts"][k]))
        self.step_count = int(state["step"])
        self.set_lr_scale(float(state.get("lr_scale", 1.0)))

    def _d_update(self, x: Tensor, y: Tensor, fakes) -> Dict[str, Tensor]:
        """One D update from the micro-batches of (x, y) and ``fakes(i) -> (image, class)``."""
        D, k = self.nets["D"], self.cfg.accumulations
        D.requires_grad_(True)
        self._zero()
        real_sum = fake_sum = 0.0
        for i, (xr, yr) in enumerate(zip(self._micro(x), self._micro(y))):
            with torch.no_grad():
                xf, yf = fakes(i)
            real, fake = hinge_d(D(xr, yr), D(xf, yf))
            ((real + fake) / k).backward()
            real_sum, fake_sum = real_sum + real.detach(), fake_sum + fake.detach()
        self._opt_step("D")
        return {"d_real": real_sum / k, "d_fake": fake_sum / k, "d_loss": (real_sum + fake_sum) / k}


# ----------------------------------------------------------------------------- stage biggan

class BigGANStep(_GANStep):
    """Class-conditional BigGAN training (the stand-in for a pretrained BigGAN): nets ``G``, ``D``
    and, when ``cfg.g_ema > 0``, an EMA copy ``G_ema`` (parameters averaged from update
    ``cfg.ema_start`` on, copied before; buffers copied)."""

    def __init__(self, nets: Dict[str, nn.Module], cfg: StepConfig, device="cpu"):
        super().__init__({"G": nets["G"], "D": nets["D"]}, cfg, device)
        if cfg.g_ema > 0:
            self.nets["G_ema"] = copy.deepcopy(self.nets["G"]).eval().requires_grad_(False)
        self._add_opt("G", [(self.nets["G"].parameters(), cfg.g_lr)])
        self._add_opt("D", [(self.nets["D"].parameters(), cfg.d_lr)])
        self._sync_from_rank0()

    def update(self, x: Tensor, y: Tensor, noise: Dict[str, Tensor]) -> Dict[str, Tensor]:
        G, D, k = self.nets["G"], self.nets["D"], self.cfg.accumulations
        G.train(), D.train()
        out = self._d_update(x, y, lambda i: (G(noise["z_d"][i], noise["y_d"][i]), noise["y_d"][i]))
        D.requires_grad_(False)
        self._zero()
        g_sum = 0.0
        for i in range(k):
            yg = noise["y_g"][i]
            g = hinge_g(D(G(noise["z_g"][i], yg), yg))
            (g / k).backward()
            g_sum = g_sum + g.detach()
        self._opt_step("G")
        D.requires_grad_(True)
        if "G_ema" in self.nets:
            with torch.no_grad():
                ema = self.nets["G_ema"]
                w = 1.0 - self.cfg.g_ema if self.step_count >= self.cfg.ema_start else 1.0
                for pe, p in zip(ema.parameters(), G.parameters()):
                    pe.lerp_(p, w)
                for be, b in zip(ema.buffers(), G.buffers()):
                    be.copy_(b)
        self._sync_buffers()
        self.step_count += 1
        out["g_adv"] = g_sum / k
        return out

    def preview(self, x: Tensor, y: Tensor, seed: int = 0) -> Tensor:
        """A labelled grid: real images, then one row of samples per class (rows named)."""
        from ...train.outputs import labelled_grid

        G = self.nets.get("G_ema", self.nets["G"])
        n = x.shape[0]
        gen = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n, self.dim_z, generator=gen).to(self.device)
        rows, labels = [x.cpu()], ["real"]
        was = G.training
        G.eval()
        with torch.no_grad():  # eval forwards store no batch-norm or spectral-norm state
            for c in range(min(self.n_classes, 8)):
                rows.append(G(z, torch.full((n,), c, dtype=torch.long, device=self.device)).cpu())
                labels.append(f"class {c}")
        G.train(was)
        return labelled_grid([(r.float().clamp(-1, 1) + 1) / 2 for r in rows], labels)


# ----------------------------------------------------------------------------- stage transfer

class TransferStep(_GANStep):
    """DeepI2I's translation training (see the module docstring): nets ``G``, ``D``, ``E``, ``A``."""

    headline_losses = ("d_loss", "g_adv", "g_rec")

    def __init__(self, nets: Dict[str, nn.Module], cfg: StepConfig, device="cpu"):
        super().__init__({k: nets[k] for k in ("G", "D", "E", "A")}, cfg, device)
        gcfg = self.nets["G"].cfg
        taps = set(gcfg.taps)
        self.rec_weights = {s: w for s, w in cfg.rec_weights if s in taps}
        e_params = list(self.nets["E"].parameters()) if cfg.trains_encoder else []
        if not cfg.trains_encoder:
            self.nets["E"].eval().requires_grad_(False)
        self._add_opt("G", [(self.nets["G"].parameters(), cfg.g_lr)])
        self._add_opt("A", [(list(self.nets["A"].parameters()) + e_params, cfg.d_lr)])
        self._add_opt("D", [(self.nets["D"].parameters(), cfg.d_lr)])
        self._sync_from_rank0()

    @property
    def phase(self) -> int:
        """1 while only the adaptor and D learn, then 2."""
        return 1 if self.step_count < self.cfg.phase1 else 2

    def _inputs(self, x: Tensor) -> List[Tensor]:
        """The translation inputs of each micro-batch: the next micro-batch's images."""
        m = self._micro(x)
        return m[1:] + m[:1]

    def _translate(self, x_in: Tensor, z: Tensor, y: Tensor) -> Tensor:
        G, E, A = self.nets["G"], self.nets["E"], self.nets["A"]
        return G(z, y, A(E(x_in)))

    def update(self, x: Tensor, y: Tensor, noise: Dict[str, Tensor]) -> Dict[str, Tensor]:
        G, D, E, A = (self.nets[k] for k in ("G", "D", "E", "A"))
        k, phase = self.cfg.accumulations, self.phase
        G.train(), D.train(), A.train()
        E.train(self.cfg.trains_encoder)
        inputs = self._inputs(x)
        G.requires_grad_(phase == 2)
        frozen_g = kept_buffers(G) if phase == 1 else contextlib.nullcontext()
        with frozen_g:
            out = self._d_update(x, y, lambda i: (self._translate(inputs[i], noise["z_d"][i], noise["y_d"][i]),
                                                  noise["y_d"][i]))
            D.requires_grad_(False)
            self._zero()
            adv_sum = 0.0
            rec_sums = {s: 0.0 for s in self.rec_weights}
            for i in range(k):
                yg = noise["y_g"][i]
                fake = self._translate(inputs[i], noise["z_g"][i], yg)
                logits, fake_feats = D(fake, yg, return_features=True)
                with torch.no_grad():
                    _, in_feats = D.trunk(inputs[i])
                adv = hinge_g(logits)
                rec = rec_loss(fake_feats, in_feats, self.rec_weights, self.cfg.rec_pairing)
                total = adv + sum(rec.values()) if rec else adv
                (total / k).backward()
                adv_sum = adv_sum + adv.detach()
                for s, v in rec.items():
                    rec_sums[s] = rec_sums[s] + v.detach()
            for name in ("G", "A"):
                if name in self.opts:
                    self._opt_step(name)
            D.requires_grad_(True)
        self._sync_buffers()
        self.step_count += 1
        out["g_adv"] = adv_sum / k
        rec_total = sum(rec_sums.values()) if rec_sums else torch.zeros((), device=self.device)
        out["g_rec"] = rec_total / k
        for s, v in rec_sums.items():
            out[f"rec_{s}"] = v / k
        out["phase"] = torch.tensor(float(phase), device=self.device)
        return out

    def preview(self, x: Tensor, y: Tensor, seed: int = 0) -> Tensor:
        """A labelled grid: the inputs, then their translations to each class (rows named)."""
        from ...train.outputs import labelled_grid

        G, E, A = self.nets["G"], self.nets["E"], self.nets["A"]
        n = x.shape[0]
        gen = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n, self.dim_z, generator=gen).to(self.device)
        x = x.to(self.device)
        rows, labels = [x.cpu()], ["input"]
        modes = {m: m.training for m in (G, E, A)}
        for m in modes:
            m.eval()
        with torch.no_grad():
            feats = A(E(x))
            for c in range(min(self.n_classes, 8)):
                rows.append(G(z, torch.full((n,), c, dtype=torch.long, device=self.device), feats).cpu())
                labels.append(f"to class {c}")
        for m, was in modes.items():
            m.train(was)
        return labelled_grid([(r.float().clamp(-1, 1) + 1) / 2 for r in rows], labels)
