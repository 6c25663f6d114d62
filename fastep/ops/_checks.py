"""Input validation shared by the Gram ops: one-line errors that name the argument and the index."""
from __future__ import annotations

from typing import List

from torch import Tensor


def _check_features(f, name: str) -> Tensor:
    if not isinstance(f, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (N, C, H, W), got {type(f).__name__}")
    if f.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D (N, C, H, W) tensor, got shape {tuple(f.shape)}")
    if not f.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {f.dtype}")
    if f.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (N = 0) in shape {tuple(f.shape)}")
    if f.shape[1] == 0 or f.shape[2] == 0 or f.shape[3] == 0:
        raise ValueError(f"{name}: C, H and W must be positive, got shape {tuple(f.shape)}")
    return f


def _check_layers(feats, name: str) -> List[Tensor]:
    if isinstance(feats, Tensor):
        feats = [feats]
    if not isinstance(feats, (list, tuple)):
        raise TypeError(f"{name}: expected a sequence of (N, C, H, W) tensors, got {type(feats).__name__}")
    if len(feats) == 0:
        raise ValueError(f"{name}: expected at least one layer, got an empty sequence")
    out = [_check_features(f, f"{name}[{i}]") for i, f in enumerate(feats)]
    n = out[0].shape[0]
    for i, f in enumerate(out):
        if f.shape[0] != n:
            raise ValueError(f"{name}[{i}]: batch size {f.shape[0]} differs from {name}[0]'s {n}")
        if f.device != out[0].device:
            raise ValueError(f"{name}[{i}]: on {f.device}, but {name}[0] is on {out[0].device}")
    return out


def _check_weights(weights, n_layers: int) -> List[float]:
    if weights is None:
        return [1.0] * n_layers
    if isinstance(weights, Tensor):
        weights = weights.tolist()
    try:
        weights = [float(w) for w in weights]
    except TypeError:
        raise TypeError(f"weights: expected a sequence of {n_layers} numbers, got {type(weights).__name__}") from None
    if len(weights) != n_layers:
        raise ValueError(f"weights: expected {n_layers} layer weights (one per layer), got {len(weights)}")
    return weights


def _pair_layers(fx: List[Tensor], feats_y, name_y: str = "feats_y") -> List[Tensor]:
    fy = _check_layers(feats_y, name_y)
    if len(fy) != len(fx):
        raise ValueError(f"{name_y}: expected {len(fx)} layers like feats_x, got {len(fy)}")
    out = []
    n = fx[0].shape[0]
    for i, (a, b) in enumerate(zip(fx, fy)):
        if b.shape[1] != a.shape[1]:
            raise ValueError(f"{name_y}[{i}]: {b.shape[1]} channels, but feats_x[{i}] has {a.shape[1]}")
        if b.device != a.device:
            raise ValueError(f"{name_y}[{i}]: on {b.device}, but feats_x[{i}] is on {a.device}")
        if b.shape[0] != n:
            if b.shape[0] != 1:
                raise ValueError(f"{name_y}[{i}]: batch size {b.shape[0]}, expected {n} (as feats_x) or 1")
            b = b.expand(n, *b.shape[1:])
        if b.dtype != a.dtype:
            b = b.to(a.dtype)
        out.append(b)
    return out


def _check_targets(target_grams, fx: List[Tensor]) -> List[Tensor]:
    if isinstance(target_grams, Tensor):
        target_grams = [target_grams]
    if not isinstance(target_grams, (list, tuple)):
        raise TypeError(f"target_grams: expected a sequence of (C, C) or (N, C, C) tensors, got "
                        f"{type(target_grams).__name__}")
    if len(target_grams) != len(fx):
        raise ValueError(f"target_grams: expected {len(fx)} layers like feats_x, got {len(target_grams)}")
    n = fx[0].shape[0]
    out = []
    for i, (t, f) in enumerate(zip(target_grams, fx)):
        c = f.shape[1]
        if not isinstance(t, Tensor):
            raise TypeError(f"target_grams[{i}]: expected a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"target_grams[{i}]: expected a floating-point tensor, got {t.dtype}")
        ok = (t.dim() == 2 and tuple(t.shape) == (c, c)) or \
             (t.dim() == 3 and tuple(t.shape[1:]) == (c, c) and t.shape[0] in (1, n))
        if not ok:
            raise ValueError(f"target_grams[{i}]: expected shape ({c}, {c}), (1, {c}, {c}) or "
                             f"({n}, {c}, {c}) for feats_x[{i}] of shape {tuple(f.shape)}, got {tuple(t.shape)}")
        if t.device != f.device:
            raise ValueError(f"target_grams[{i}]: on {t.device}, but feats_x[{i}] is on {f.device}")
        out.append(t)
    return out
