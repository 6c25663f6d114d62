"""BridgeGAN's codes and losses as pure functions (Huang et al., ICCV 2021, section 3 and
supplementary sections A and C; the objectives as the authors' TensorFlow release computes them).

Notation: labels ``y`` in {0, 1}^n, ``delta = y_t - y_s``.  The reference ``x_t`` is another
image of the batch, whose labels are the target.

* codes (:func:`make_codes`): label-based (LEM) ``S_rand = E(x_s, -delta) + M(r, delta)``,
  reference-based (REM) ``S_ref = E(x_s, -delta) + E(x_t, delta)``, interpolated
  ``S_int = a S_rand + (1 - a) S_ref`` (a ~ U(0, 1) per sample: the bridge between the two),
  and the reconstruction codes ``S0_rand = E(x_s, 0) + M(r, 0)``, ``S0_ref = E(x_s, 0) + E(x_t, 0)``;
* :func:`attribute_keeping_vector` ``a_ak = (1 - |delta|) * (1 - 2 y_s)`` (supplementary eq. 11);
* :func:`discriminator_loss`: WGAN critic loss + 10 x gradient penalty (:func:`gradient_penalty`)
  over the three kinds of fakes + the classifier's BCE on real labels;
* :func:`generator_losses`: every generator-side term (adv, cls, rec, cyc1, cyc2, ak, sty, ms),
  combined by :func:`weighted_total` with a :class:`LossWeights` preset (``paper`` or ``code``).

All terms are means; ``sg`` (stop-gradient) is ``.detach()``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Mapping, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...config import choose

__all__ = ["Codes", "make_codes", "attribute_keeping_vector", "gradient_penalty", "attribute_bce",
           "discriminator_loss", "generator_losses", "LossWeights", "LOSS_PRESETS", "weighted_total",
           "mode_seeking_loss", "G_TERMS", "LatentBank"]

#: every generator-side term :func:`generator_losses` returns, in order
G_TERMS = ("adv", "cls", "rec", "cyc1", "cyc2", "ak", "sty", "ms")


class Codes(NamedTuple):
    """The style codes of one batch (all [N, style_ch, h, w]) and the tensors they came from."""

    delta: Tensor       # y_t - y_s, [N, n]
    keep_src: Tensor    # E(x_s, -delta): what the source keeps
    S_rand: Tensor      # LEM
    S_ref: Tensor       # REM
    S_int: Tensor       # the interpolated code
    S0_rand: Tensor     # reconstruction codes (delta = 0)
    S0_ref: Tensor
    alpha: Tensor       # [N] the interpolation weights


def _bcast(a: Tensor, like: Tensor) -> Tensor:
    return a.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def make_codes(E, M, x_s: Tensor, y_s: Tensor, x_t: Tensor, y_t: Tensor, r: Tensor,
               alpha: Optional[Tensor] = None) -> Codes:
    """The LEM, REM, interpolated and reconstruction codes of a batch (module docstring).

    ``alpha`` ([N], in [0, 1]) defaults to a fresh U(0, 1) draw per sample.
    """
    if y_s.shape != y_t.shape:
        raise ValueError(f"y_s and y_t must have the same shape, got {tuple(y_s.shape)} and {tuple(y_t.shape)}")
    delta = (y_t - y_s).to(x_s.dtype)
    zero = torch.zeros_like(delta)
    keep_src = E(x_s, -delta)
    S_rand = keep_src + M(r, delta)
    S_ref = keep_src + E(x_t, delta)
    if alpha is None:
        alpha = torch.rand(x_s.shape[0], device=x_s.device, dtype=x_s.dtype)
    a = _bcast(alpha, S_rand)
    S_int = a * S_rand + (1 - a) * S_ref
    e0 = E(x_s, zero)
    return Codes(delta, keep_src, S_rand, S_ref, S_int, e0 + M(r, zero), e0 + E(x_t, zero), alpha)


def attribute_keeping_vector(delta: Tensor, y_s: Tensor) -> Tensor:
    """``(1 - |delta|) * (1 - 2 y_s)``: +1 for a kept attribute the source lacks, -1 for a kept
    attribute it has, 0 for a changed one (supplementary eq. 11: part A selects the kept
    attributes, part B flips their direction so that E extracts them)."""
    return (1 - delta.abs()) * (1 - 2 * y_s.to(delta.dtype))


def gradient_penalty(critic, real: Tensor, fake: Tensor, u: Optional[Tensor] = None) -> Tensor:
    """WGAN-GP: ``mean((||grad_xhat critic(xhat)||_2 - 1)^2)`` at ``xhat = real + u (fake - real)``,
    ``u ~ U(0, 1)`` per sample (or the given [N]); the graph is kept so the penalty trains the critic."""
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if u is None:
        u = torch.rand(real.shape[0], device=real.device, dtype=real.dtype)
    xhat = (real + _bcast(u, real) * (fake - real)).detach().requires_grad_(True)
    out = critic(xhat)
    (grad,) = torch.autograd.grad(out.sum(), xhat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).square().mean()


def attribute_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean binary cross-entropy of attribute logits against {0, 1} labels."""
    if logits.shape != labels.shape:
        raise ValueError(f"logits and labels must have the same shape, got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def discriminator_loss(DC, x_s: Tensor, y_s: Tensor, fakes: Mapping[str, Tensor], gp_weight: float = 10.0,
                       u: Optional[Mapping[str, Tensor]] = None, cls_weight: float = 1.0) -> Dict[str, Tensor]:
    """The critic/classifier objective of one D step.

    ``L_D = -(mean D(x_s) - mean_k mean D(x_k)) + gp_weight * mean_k GP(x_s, x_k) +
    cls_weight * BCE(C(x_s), y_s)`` (``cls_weight`` 1 in the paper and the release)
    over the fakes ``x_k`` (``{"rand", "ref", "int"}``: detached here).  ``DC(x)`` returns
    ``(critic [N, 1], logits [N, n])``; ``DC.critic`` (when present) is used for the penalty.
    ``u`` optionally fixes the interpolation weights per fake.  Returns
    ``{"total", "wgan", "gp", "cls_real"}``.
    """
    if not fakes:
        raise ValueError("discriminator_loss needs at least one fake batch")
    critic = getattr(DC, "critic", None) or (lambda x: DC(x)[0])
    n, k = x_s.shape[0], len(fakes)
    fake = torch.cat([f.detach() for f in fakes.values()])
    # one D/C call on the reals and every fake (D/C has no batch statistics, so this is exact);
    # equal-sized fakes make the mean over all of them the mean over k of the per-fake means
    d_all, c_all = DC(torch.cat([x_s, fake]))
    wgan = -(d_all[:n].mean() - d_all[n:].mean())
    uu = None if u is None else torch.cat([torch.as_tensor(u[name]).reshape(-1) for name in fakes])
    gp = gradient_penalty(critic, x_s.detach().repeat(k, *([1] * (x_s.dim() - 1))), fake, uu)
    cls_real = attribute_bce(c_all[:n], y_s)
    return {"total": wgan + gp_weight * gp + cls_weight * cls_real, "wgan": wgan, "gp": gp, "cls_real": cls_real}


def mode_seeking_loss(r: Tensor, r1: Tensor, x: Tensor, x1: Tensor, eps: float = 1e-5) -> Tensor:
    """``mean|r1 - r| / (mean|sg(x1) - x| + eps)``: small when different noise gives different images."""
    return (r1 - r).abs().mean() / ((x1.detach() - x).abs().mean() + eps)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator-side terms: ``L_G = sum_t weight_t * term_t`` over :data:`G_TERMS`.

    The two cycle terms and the attribute-keeping term carry separate weights so both presets are
    exact: ``paper`` (supplementary section C): ``L_adv + 10 L_cls + 100 L_rec + 100 L_cyc +
    50 L_sty + 0.005 L_ms + 100 L_ak`` with ``L_cyc = (cyc1 + cyc2) / 2``; ``code`` (the authors'
    release): ``L_adv + 10 L_cls + 100 L_rec + 50 (cyc1 + cyc2 + L_ak) / 3 + 50 L_sty + 0.005 L_ms``.
    ``gp`` is the critic's gradient-penalty weight (10 in both) and ``cls_real`` the weight of
    the classifier's BCE on real images in the critic objective (1 in both).
    """

    adv: float = 1.0
    cls: float = 10.0
    rec: float = 100.0
    cyc1: float = 50.0
    cyc2: float = 50.0
    ak: float = 100.0
    sty: float = 50.0
    ms: float = 0.005
    gp: float = 10.0
    cls_real: float = 1.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"LossWeights.{f.name} must be a non-negative number, got {v!r}")

    @classmethod
    def preset(cls, name: str) -> "LossWeights":
        """``paper`` or ``code`` (see the class docstring)."""
        return LOSS_PRESETS[choose(name, LOSS_PRESETS, "BridgeGAN loss preset")]()


LOSS_PRESETS = {
    "paper": lambda: LossWeights(),
    "code": lambda: LossWeights(cyc1=50.0 / 3, cyc2=50.0 / 3, ak=50.0 / 3),
}


def weighted_total(terms: Mapping[str, Tensor], weights: LossWeights) -> Tensor:
    """``sum_t weights.t * terms[t]`` over :data:`G_TERMS` (terms of weight 0 are skipped)."""
    missing = [t for t in G_TERMS if getattr(weights, t) and t not in terms]
    if missing:
        raise KeyError(f"weighted_total: missing term(s) {missing}")
    parts = [getattr(weights, t) * terms[t] for t in G_TERMS if getattr(weights, t)]
    return torch.stack(parts).sum() if parts else torch.zeros(())


def generator_losses(G, M, E, DC, x_s: Tensor, y_s: Tensor, x_t: Tensor, y_t: Tensor, r: Tensor, r1: Tensor,
                     alpha: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """Every generator-side term of one G/M/E step (means; sg = detach):

    * ``adv = -mean_k mean D(x_k)``, ``cls = mean_k BCE(C(x_k), y_t)`` over k in {rand, ref, int};
    * ``rec = (|x_s - G(x_s, S0_rand)| + |x_s - G(x_s, S0_ref)|) / 2``;
    * ``cyc1 = |S_rand - (E(sg x_rand, delta) + E(x_s, -delta))|``, ``cyc2`` the same for REM
      (the stop-gradient keeps G out of the cycle: it trains M and E);
    * ``ak = |E(x_rand, a_ak) - E(x_s, a_ak)|`` (no stop-gradient: G is trained to keep the
      untouched attributes);
    * ``sty = |S_rand - S_ref|``;
    * ``ms = |r1 - r| / (|sg G(x_s, E(x_s, -delta) + M(r1, delta)) - x_rand| + 1e-5)`` (mode seeking).

    Also returns the fakes (``x_rand``, ``x_ref``, ``x_int``, detached) and ``codes`` for logging.
    """
    c = make_codes(E, M, x_s, y_s, x_t, y_t, r, alpha)
    n = x_s.shape[0]

    def rep(t: Tensor, k: int) -> Tensor:
        return t.repeat(k, *([1] * (t.dim() - 1)))

    # G, E and D/C normalise per sample (instance norm, no batch statistics), so each runs once
    # on the concatenation of what it is applied to: the same values as separate calls, faster
    S1 = c.keep_src + M(r1, c.delta)
    out_g = G(rep(x_s, 6), torch.cat([c.S_rand, c.S_ref, c.S_int, S1, c.S0_rand, c.S0_ref]))
    x_rand, x_ref, x_int, x1, rec_rand, rec_ref = out_g.split(n)
    fakes = {"rand": x_rand, "ref": x_ref, "int": x_int}
    d, logits = DC(out_g[:3 * n])
    adv = -d.mean()
    cls = attribute_bce(logits, rep(y_t, 3))
    rec = ((x_s - rec_rand).abs().mean() + (x_s - rec_ref).abs().mean()) / 2
    a_ak = attribute_keeping_vector(c.delta, y_s)
    e_out = E(torch.cat([x_rand.detach(), x_ref.detach(), x_rand, x_s]),
              torch.cat([c.delta, c.delta, a_ak, a_ak]))
    e_cyc_rand, e_cyc_ref, e_ak_fake, e_ak_src = e_out.split(n)
    cyc1 = (c.S_rand - (e_cyc_rand + c.keep_src)).abs().mean()
    cyc2 = (c.S_ref - (e_cyc_ref + c.keep_src)).abs().mean()
    ak = (e_ak_fake - e_ak_src).abs().mean()
    sty = (c.S_rand - c.S_ref).abs().mean()
    ms = mode_seeking_loss(r, r1, x_rand, x1)
    out: Dict[str, Tensor] = {"adv": adv, "cls": cls, "rec": rec, "cyc1": cyc1, "cyc2": cyc2, "ak": ak,
                              "sty": sty, "ms": ms}
    out.update({f"x_{k}": v.detach() for k, v in fakes.items()})
    out["codes"] = c  # type: ignore[assignment]
    return out


class LatentBank(torch.nn.Module):
    """The authors' release's per-image noise table (undocumented in the paper; off in ``paper``).

    A buffer ``r`` [n_images, noise_dim] drawn from N(0, 1).  :meth:`step` takes the rows of the
    references' data-set indices, ``r0``, moves them along ``g = d MSE(E(x_t, delta), M(r0, delta)) / d r0``
    as the release writes it, ``r = clip(r0 + (0.9 / rms(g) + 5) g, -1, 1)`` (a step *up* that
    gradient: kept as written), writes ``r`` back and returns it detached: the LEM code then uses
    ``M(sg(r), delta)``.  ``rms`` is over the whole batch; a zero gradient leaves the rows at
    ``clip(r0)``.  A repeated index keeps the update of its last occurrence.
    """

    def __init__(self, n_images: int, noise_dim: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        if n_images < 1 or noise_dim < 1:
            raise ValueError(f"LatentBank needs n_images >= 1 and noise_dim >= 1, got {n_images}, {noise_dim}")
        self.register_buffer("r", torch.randn(n_images, noise_dim, generator=generator))

    def step(self, index: Tensor, E, M, x_t: Tensor, delta: Tensor) -> Tensor:
        index = torch.as_tensor(index, device=self.r.device).long()
        if index.dim() != 1 or index.numel() != x_t.shape[0]:
            raise ValueError(f"index must be [N] with N = {x_t.shape[0]}, got {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.r.shape[0]):
            raise IndexError(f"LatentBank index out of range [0, {self.r.shape[0]})")
        r0 = self.r[index].to(x_t.dtype).requires_grad_(True)
        with torch.enable_grad():
            target = E(x_t, delta).detach()
            (g,) = torch.autograd.grad(F.mse_loss(M(r0, delta), target), r0)
        rms = g.square().mean().sqrt()
        step = torch.where(rms > 0, 0.9 / rms.clamp_min(torch.finfo(g.dtype).tiny) + 5, torch.zeros_like(rms))
        r = (r0.detach() + step * g).clamp(-1, 1)
        self.r[index] = r.to(self.r.dtype)
        return r.detach()
