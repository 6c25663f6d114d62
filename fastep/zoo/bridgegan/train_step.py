"""BridgeGAN's training step: ``n_critic`` critic updates on ``n_critic`` distinct batches, then
one generator-side update (G, M and E together), as the authors' release alternates them.

One call ``step(x, y, index)`` takes a *super-batch* of ``n_critic * batch`` labelled images
(the trainer reads them as one batch, so kimg counts every image read).  It is split into
``n_critic`` consecutive batches; batch k is the critic's k-th batch, and the generator update
runs on the last of them:

* reference / target: ``x_t`` is a random permutation of the batch (its labels are the target,
  ``delta = y_t - y_s`` changes every group in which the two images differ), noise ``r ~ N(0, I)``;
* critic update (D and C share one Adam): :func:`~.losses.discriminator_loss` on the three
  fakes (LEM, REM, interpolated; made under ``no_grad``) -- WGAN + ``gp`` x gradient penalty on
  real/fake interpolates + attribute BCE on the reals;
* generator update (G, M, E share one Adam; D/C frozen): :func:`~.losses.generator_losses`
  weighted by the :class:`~.losses.LossWeights` preset (``paper`` or ``code``).

``latent_bank=True`` switches on the release's per-image noise table (:class:`~.losses.LatentBank`,
undocumented in the paper): the generator update takes ``r`` from the rows of the references'
data-set indices, moved by the bank's gradient step and written back; critic updates read the
same rows without moving them.

The step returns detached 0-d loss tensors (no host sync); ``state_dict`` holds the networks,
both optimizers, the bank and the counters, so a resumed run continues bit for bit (the
trainer restores the RNG streams).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from .losses import G_TERMS, LatentBank, LossWeights, discriminator_loss, generator_losses, make_codes, \
    weighted_total

__all__ = ["BridgeTrainStep", "LOSS_KEYS", "HEADLINE_LOSSES"]

#: keys of the dict a step returns
LOSS_KEYS = ("loss_d", "wgan", "gp", "cls_real", "loss_g") + G_TERMS
#: what the progress bar shows
HEADLINE_LOSSES = ("loss_d", "loss_g", "cls_real", "cls", "rec", "ak")


class BridgeTrainStep:
    """One generator-side update and ``n_critic`` critic updates per call.

    Args:
        nets: ``{"G", "M", "E", "D"}`` (:func:`~.networks.build_networks`), on the target device.
        weights: the generator-side loss weights (and the penalty weight ``gp``).
        n_critic: critic updates (and batches) per generator update (5 in the release).
        lr, betas: Adam's settings for both optimizers (2e-4, (0.5, 0.999) in the paper).
        latent_bank: use the release's noise table (needs ``n_images``: the training set size).
        generator: RNG of the bank's initial table (the global stream otherwise).

    Attributes: ``G``, ``M``, ``E``, ``D``, ``opt_g`` (G, M, E), ``opt_d`` (D/C), ``bank``
    (``None`` when off), ``step_count`` (generator updates), ``critic_count``, ``lr_scale``,
    ``batches_seen`` (the number of critic batches so far: ``n_critic`` per call).
    """

    headline_losses = HEADLINE_LOSSES

    def __init__(self, nets: Dict[str, nn.Module], weights: LossWeights, *, n_critic: int = 5,
                 lr: float = 2e-4, betas=(0.5, 0.999), latent_bank: bool = False, n_images: Optional[int] = None,
                 generator: Optional[torch.Generator] = None):
        missing = [k for k in ("G", "M", "E", "D") if k not in nets]
        if missing:
            raise KeyError(f"BridgeTrainStep needs the networks G, M, E, D; missing {missing}")
        if not isinstance(weights, LossWeights):
            raise TypeError(f"weights must be a LossWeights, got {type(weights).__name__}")
        if isinstance(n_critic, bool) or not isinstance(n_critic, int) or n_critic < 1:
            raise ValueError(f"n_critic must be an integer >= 1, got {n_critic!r}")
        self.G, self.M, self.E, self.D = nets["G"], nets["M"], nets["E"], nets["D"]
        self.weights, self.n_critic = weights, n_critic
        self.noise_dim = self.M.cfg.noise_dim
        self.g_params = [p for m in (self.G, self.M, self.E) for p in m.parameters()]
        self.d_params = list(self.D.parameters())
        self.opt_g = torch.optim.Adam(self.g_params, lr=lr, betas=tuple(betas))
        self.opt_d = torch.optim.Adam(self.d_params, lr=lr, betas=tuple(betas))
        self.optimizers = (self.opt_g, self.opt_d)
        self.base_lr = float(lr)
        self.bank: Optional[LatentBank] = None
        if latent_bank:
            if not n_images:
                raise ValueError("latent_bank needs n_images (the size of the training set)")
            dev = next(self.G.parameters()).device
            self.bank = LatentBank(int(n_images), self.noise_dim, generator=generator).to(dev)
        self.step_count = 0
        self.critic_count = 0
        self.batches_seen = 0
        self.lr_scale = 1.0

    # -- the protocol ------------------------------------------------------------------------
    def networks(self) -> Dict[str, nn.Module]:
        return {"G": self.G, "M": self.M, "E": self.E, "D": self.D}

    def set_lr_scale(self, scale: float) -> None:
        self.lr_scale = float(scale)
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = self.base_lr * self.lr_scale

    def state_dict(self) -> Dict[str, Any]:
        """Networks, optimizers, the latent bank and the counters."""
        return {"G": self.G.state_dict(), "M": self.M.state_dict(), "E": self.E.state_dict(),
                "D": self.D.state_dict(), "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "bank": None if self.bank is None else self.bank.state_dict(), "step": self.step_count,
                "critic_steps": self.critic_count, "batches_seen": self.batches_seen, "lr_scale": self.lr_scale,
                "n_critic": self.n_critic}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (weights copied in place)."""
        for k in ("G", "M", "E", "D"):
            if state.get(k) is None:
                raise KeyError(f"BridgeGAN training state has no {k!r} weights")
            getattr(self, k).load_state_dict(state[k])
        for k in ("opt_g", "opt_d"):
            if state.get(k) is None:
                raise KeyError(f"BridgeGAN training state has no {k!r} optimizer state")
            getattr(self, k).load_state_dict(copy.deepcopy(state[k]))
        if (state.get("bank") is None) != (self.bank is None):
            raise ValueError("the checkpoint and this run disagree on latent_bank (one has the noise table, "
                             "the other not)")
        if self.bank is not None:
            self.bank.load_state_dict(state["bank"])
        self.step_count = int(state.get("step", 0))
        self.critic_count = int(state.get("critic_steps", 0))
        self.batches_seen = int(state.get("batches_seen", 0))
        self.set_lr_scale(float(state.get("lr_scale", 1.0)))

    # -- one call ----------------------------------------------------------------------------
    def _split(self, x: Tensor, y: Tensor, index: Optional[Tensor]):
        n = x.shape[0]
        if n % self.n_critic:
            raise ValueError(f"a BridgeGAN step takes n_critic x batch images ({self.n_critic} x B), got {n}")
        b = n // self.n_critic
        if b < 2:
            raise ValueError(f"each of the {self.n_critic} critic batches needs >= 2 images (a reference is "
                             f"another image of the batch), got {b}")
        idx = index if index is not None else torch.arange(n, device=x.device)
        return [(x[k * b:(k + 1) * b], y[k * b:(k + 1) * b].to(x.dtype), idx[k * b:(k + 1) * b])
                for k in range(self.n_critic)]

    def _pair(self, x: Tensor, y: Tensor, idx: Tensor):
        """The references (a random permutation of the batch) and the noise."""
        perm = torch.randperm(x.shape[0], device=x.device)
        r = torch.randn(x.shape[0], self.noise_dim, device=x.device, dtype=x.dtype)
        return x[perm], y[perm], idx[perm], r

    def critic_update(self, x_s: Tensor, y_s: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        """One D/C update on one batch."""
        x_t, y_t, idx_t, r = self._pair(x_s, y_s, idx)
        if self.bank is not None:
            r = self.bank.r[idx_t.long()].to(x_s.dtype)
        with torch.no_grad():
            c = make_codes(self.E, self.M, x_s, y_s, x_t, y_t, r)
            fakes = {"rand": self.G(x_s, c.S_rand), "ref": self.G(x_s, c.S_ref), "int": self.G(x_s, c.S_int)}
        self.opt_d.zero_grad(set_to_none=True)
        out = discriminator_loss(self.D, x_s, y_s, fakes, gp_weight=self.weights.gp,
                                 cls_weight=self.weights.cls_real)
        out["total"].backward()
        self.opt_d.step()
        self.critic_count += 1
        return {k: v.detach() for k, v in out.items()}

    def generator_update(self, x_s: Tensor, y_s: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        """One G/M/E update on one batch (D/C frozen)."""
        x_t, y_t, idx_t, r = self._pair(x_s, y_s, idx)
        if self.bank is not None:
            r = self.bank.step(idx_t, self.E, self.M, x_t, (y_t - y_s).to(x_s.dtype))
        r1 = torch.randn_like(r)
        self.D.requires_grad_(False)
        try:
            terms = generator_losses(self.G, self.M, self.E, self.D, x_s, y_s, x_t, y_t, r, r1)
            total = weighted_total(terms, self.weights)
            self.opt_g.zero_grad(set_to_none=True)
            total.backward()
        finally:
            self.D.requires_grad_(True)
        self.opt_g.step()
        self.step_count += 1
        out = {t: terms[t].detach() for t in G_TERMS}
        out["loss_g"] = total.detach()
        return out

    def __call__(self, x: Tensor, y: Tensor, index: Optional[Tensor] = None) -> Dict[str, Tensor]:
        batches = self._split(x, y, index)
        d_logs = []
        for xs, ys, ids in batches:
            d_logs.append(self.critic_update(xs, ys, ids))
            self.batches_seen += 1
        out = self.generator_update(*batches[-1])
        for k, name in (("total", "loss_d"), ("wgan", "wgan"), ("gp", "gp"), ("cls_real", "cls_real")):
            out[name] = torch.stack([d[k] for d in d_logs]).mean()
        return out

    # -- sample grid -------------------------------------------------------------------------
    @torch.no_grad()
    def preview(self, x: Tensor, y: Tensor, index: Optional[Tensor] = None, seed: int = 0) -> Tensor:
        """A labelled [3, H, W] grid: sources, references (the next column's image), REM outputs
        (the reference's attributes), LEM outputs for the same targets with two noise draws, and
        the reconstructions (delta = 0)."""
        from ...train.outputs import labelled_grid

        nets = (self.G, self.M, self.E)
        modes = [m.training for m in nets]
        for m in nets:
            m.eval()
        try:
            dev = next(self.G.parameters()).device
            x = x.to(dev, torch.float32)
            y = y.to(dev, torch.float32)
            x_t, y_t = x.roll(1, 0), y.roll(1, 0)
            gen = torch.Generator(device="cpu").manual_seed(seed)
            r = [torch.randn(x.shape[0], self.noise_dim, generator=gen).to(dev) for _ in range(2)]
            c = make_codes(self.E, self.M, x, y, x_t, y_t, r[0], alpha=torch.full((x.shape[0],), 0.5, device=dev))
            lem2 = c.keep_src + self.M(r[1], c.delta)
            rows = [x, x_t, self.G(x, c.S_ref), self.G(x, c.S_rand), self.G(x, lem2), self.G(x, c.S0_ref)]
            labels = ["source", "reference", "REM", "LEM r1", "LEM r2", "recon"]
            return labelled_grid([(t.float().clamp(-1, 1) + 1) / 2 for t in rows], labels, padding=2)
        finally:
            for m, was in zip(nets, modes):
                m.train(was)
