"""A trained BridgeGAN, ready to use: :class:`BridgeModel` (what ``fastep.zoo.load`` returns).

    >>> m = fastep.zoo.load("runs/bridgegan/final.pt")
    >>> y_s = m.predict_labels(x)                           # the classifier C's attributes of x
    >>> out = m.edit_labels(x, {"palette": "pastel"})        # label-based (LEM), noise r ~ N(0, I)
    >>> out = m.edit_reference(x, ref, groups=["texture"])   # reference-based (REM): ref's texture

Images are float tensors in [-1, 1], (N, 3, R, R) at the model's resolution.  A source's
attributes ``y_s`` are needed for ``delta = y_t - y_s``; by default they are predicted by the
model's own attribute classifier C (the second head of the trained discriminator), or given.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor

from .config import BridgeConfig

__all__ = ["BridgeModel", "load_model"]


class BridgeModel:
    """G, M, E and D/C of a BridgeGAN checkpoint in eval mode, with the attribute space."""

    system = "bridgegan"

    def __init__(self, nets: Dict[str, torch.nn.Module], cfg: BridgeConfig, space, device,
                 extras: Optional[Dict[str, Any]] = None):
        self.G, self.M, self.E, self.D = (nets[k].to(device).eval() for k in ("G", "M", "E", "D"))
        self.cfg, self.space, self.device = cfg, space, torch.device(device)
        self.extras = dict(extras or {})

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    def _x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be a tensor [N, 3, H, W], got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        r = self.cfg.resolution
        if tuple(x.shape[2:]) != (r, r):
            raise ValueError(f"images must be {r} x {r} (the model's resolution), got {tuple(x.shape[2:])}")
        return x.to(self.device, torch.float32)

    @torch.no_grad()
    def predict_labels(self, x: Tensor) -> Tensor:
        """Valid label vectors [N, n] from the classifier C: per group the most likely value
        (a group that may be off is off when no value has probability > 0.5)."""
        logits = self.D(self._x(x))[1].float().cpu()
        y = torch.zeros_like(logits)
        for g in self.space.groups:
            sl = self.space.slice(g)
            part = logits[:, sl]
            best = part.argmax(1)
            on = torch.ones_like(best, dtype=torch.bool) if g in self.space.one_hot else part.max(1).values > 0
            rows = on.nonzero().flatten()
            y[rows, sl.start + best[rows]] = 1
        return y

    def _labels(self, x: Tensor, y_s: Optional[Tensor]) -> Tensor:
        if y_s is None:
            return self.predict_labels(x)
        y_s = torch.as_tensor(y_s, dtype=torch.float32)
        y_s = y_s[None].expand(x.shape[0], -1) if y_s.dim() == 1 else y_s
        self.space.validate(y_s, "source labels")
        return y_s.cpu()

    @torch.no_grad()
    def lem(self, x: Tensor, y_s: Tensor, y_t: Tensor, r: Optional[Tensor] = None, seed: int = 0) -> Tensor:
        """Label-based outputs ``G(x, E(x, -delta) + M(r, delta))`` for targets ``y_t``."""
        x = self._x(x)
        delta = (torch.as_tensor(y_t, dtype=torch.float32) - torch.as_tensor(y_s, dtype=torch.float32)).to(self.device)
        if r is None:
            gen = torch.Generator().manual_seed(seed)
            r = torch.randn(x.shape[0], self.cfg.noise_dim, generator=gen)
        r = r.to(self.device, torch.float32)
        return self.G(x, self.E(x, -delta) + self.M(r, delta)).clamp(-1, 1)

    @torch.no_grad()
    def rem(self, x: Tensor, y_s: Tensor, ref: Tensor, y_t: Tensor) -> Tensor:
        """Reference-based outputs ``G(x, E(x, -delta) + E(ref, delta))``."""
        x, ref = self._x(x), self._x(ref)
        delta = (torch.as_tensor(y_t, dtype=torch.float32) - torch.as_tensor(y_s, dtype=torch.float32)).to(self.device)
        return self.G(x, self.E(x, -delta) + self.E(ref, delta)).clamp(-1, 1)

    @torch.no_grad()
    def mix(self, x: Tensor, y_s: Tensor, ref: Tensor, y_t: Tensor, alpha: float, r: Tensor) -> Tensor:
        """The bridge: ``G(x, E(x, -delta) + a M(r, delta) + (1 - a) E(ref, delta))``."""
        x, ref = self._x(x), self._x(ref)
        delta = (torch.as_tensor(y_t, dtype=torch.float32) - torch.as_tensor(y_s, dtype=torch.float32)).to(self.device)
        keep = self.E(x, -delta)
        code = keep + alpha * self.M(r.to(self.device), delta) + (1 - alpha) * self.E(ref, delta)
        return self.G(x, code).clamp(-1, 1)

    def target_from_edits(self, y_s: Tensor, edits: Mapping[str, Optional[str]]) -> Tensor:
        """``y_s`` with ``edits`` ({group: value or None}) applied to every row."""
        return torch.stack([self.space.encode(dict(edits), base=row) for row in y_s])

    def target_from_reference(self, y_s: Tensor, y_ref: Tensor, groups: Sequence[str]) -> Tensor:
        """``y_s`` with the groups ``groups`` copied from ``y_ref`` (row by row)."""
        y_t = torch.as_tensor(y_s, dtype=torch.float32).clone()
        for g in groups:
            sl = self.space.slice(g)
            y_t[:, sl] = torch.as_tensor(y_ref, dtype=torch.float32)[:, sl]
        return y_t

    def edit_labels(self, x: Tensor, edits: Mapping[str, Optional[str]], y_s: Optional[Tensor] = None,
                    seed: int = 0) -> Tensor:
        """Label-based edit: ``edits`` such as ``{"palette": "pastel"}`` (see ``space.parse_edits``)."""
        y_s = self._labels(x, y_s)
        return self.lem(x, y_s, self.target_from_edits(y_s, edits), seed=seed)

    def edit_reference(self, x: Tensor, ref: Tensor, groups: Sequence[str], y_s: Optional[Tensor] = None,
                       y_ref: Optional[Tensor] = None) -> Tensor:
        """Reference-based edit: the groups ``groups`` of ``ref`` ([N] or [1] images) onto ``x``."""
        for g in groups:
            self.space.slice(g)
        ref = ref.expand(x.shape[0], -1, -1, -1) if ref.shape[0] == 1 else ref
        y_s = self._labels(x, y_s)
        y_ref = self._labels(ref, y_ref)
        return self.rem(x, y_s, ref, self.target_from_reference(y_s, y_ref, groups))


def load_model(ckpt, device, ema: bool = True, source: str = "the checkpoint") -> BridgeModel:
    """A :class:`BridgeModel` from a BridgeGAN :class:`~fastep.train.checkpoint.Checkpoint`
    (BridgeGAN keeps no EMA copies: ``ema`` is accepted and ignored)."""
    from ...train.checkpoint import CheckpointError
    from . import config_from_checkpoint
    from .networks import build_networks
    from .pipeline import space_from_dict

    src = f"checkpoint {source!r}"
    cfg = config_from_checkpoint(ckpt)
    nets = build_networks(cfg)
    for name, net in nets.items():
        sd = ckpt.weights.get(name)
        if sd is None:
            raise CheckpointError(f"{src} has no weights for {name}")
        try:
            net.load_state_dict(sd)
        except RuntimeError as err:
            raise CheckpointError(f"{src}: the {name} weights do not fit its model config "
                                  f"({str(err).splitlines()[0]})") from None
    attrs = ckpt.extras.get("attributes")
    if not attrs:
        raise CheckpointError(f"{src} records no attribute space (extras['attributes'])")
    space = space_from_dict(attrs)
    if len(space) != cfg.n_attrs:
        raise CheckpointError(f"{src}: its attribute space has {len(space)} attributes, its model {cfg.n_attrs}")
    extras = {"step": ckpt.step, "kimg": ckpt.kimg, "metrics": ckpt.metrics, "path": source,
              "run": ckpt.configs.get("run")}
    return BridgeModel(nets, cfg, space, device, extras)
