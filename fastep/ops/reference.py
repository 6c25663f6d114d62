"""Plain-PyTorch reference implementations of every fastep op (the definitions)."""


# ---------------------------------------------------------------------------------------------
# Gram / style distance (engineer A; fastep.ops.gram).  Everything here is eager PyTorch: the
# definition used by the tests (in float64) and the baseline of the benchmarks.
# ---------------------------------------------------------------------------------------------
import math as _gram_math  # noqa: E402

import torch as _gram_torch  # noqa: E402


def _gram_acc_dtype(dtype):
    return dtype if dtype in (_gram_torch.float32, _gram_torch.float64) else _gram_torch.float32


def gram_reference(features, out_dtype=None):
    """G = F F^T / (C H W) of (N, C, H, W) features, accumulated in >= float32 (eager bmm)."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w).to(_gram_acc_dtype(features.dtype))
    g = _gram_torch.bmm(f, f.transpose(1, 2)) / (c * h * w)
    return g.to(out_dtype or features.dtype)


def style_loss_reference(feats_x, feats_y=None, weights=None, target_grams=None):
    """sum_l w_l * mean((G_l(x) - G_l(y))^2) (mean over batch and the C x C entries): bmm + mse."""
    weights = [1.0] * len(feats_x) if weights is None else list(weights)
    total = None
    for l, fx in enumerate(feats_x):
        gx = gram_reference(fx, out_dtype=_gram_acc_dtype(fx.dtype))
        if target_grams is not None:
            gy = target_grams[l].to(gx.dtype).expand_as(gx)
        else:
            fy = feats_y[l]
            gy = gram_reference(fy, out_dtype=_gram_acc_dtype(fy.dtype)).to(gx.dtype)
        term = weights[l] * _gram_torch.nn.functional.mse_loss(gx, gy)
        total = term if total is None else total + term
    return total


def style_distance_reference(feats_x, feats_y, weights=None):
    """Per pair n: sum_l w_l * mean over C x C of (G_l(x_n) - G_l(y_n))^2  -> (N,)."""
    weights = [1.0] * len(feats_x) if weights is None else list(weights)
    total = None
    for l, (fx, fy) in enumerate(zip(feats_x, feats_y)):
        acc = _gram_acc_dtype(fx.dtype)
        d = gram_reference(fx, out_dtype=acc) - gram_reference(fy, out_dtype=acc).to(acc)
        term = weights[l] * d.square().mean(dim=(1, 2))
        total = term if total is None else total + term
    return total


def gram_vector_dim_reference(channels):
    return int(sum(int(c) * (int(c) + 1) // 2 for c in channels))


def gram_vectors_reference(features, weights=None, out_dtype=None):
    """Upper triangles (row-major, i <= j) of each layer's Gram, off-diagonals * sqrt(2), layer l
    scaled by sqrt(w_l) / C_l, concatenated: |v_x - v_y|^2 == style distance."""
    weights = [1.0] * len(features) if weights is None else list(weights)
    parts = []
    for l, f in enumerate(features):
        c = f.shape[1]
        g = gram_reference(f, out_dtype=_gram_acc_dtype(f.dtype))
        iu = _gram_torch.triu_indices(c, c, device=f.device)
        scale = _gram_torch.full((iu.shape[1],), _gram_math.sqrt(2.0), dtype=g.dtype, device=f.device)
        scale[iu[0] == iu[1]] = 1.0
        parts.append(g[:, iu[0], iu[1]] * (scale * (_gram_math.sqrt(weights[l]) / c)))
    out = _gram_torch.cat(parts, dim=1)
    if out_dtype is not None:
        return out.to(out_dtype)
    return out if out.dtype == _gram_torch.float64 else out.float()


def pairwise_style_distance_reference(gx, gy=None, block=None):
    """clamp(|x|^2 + |y|^2 - 2 x.y, 0) for all rows of gx against all rows of gy (or gx)."""
    acc = _gram_acc_dtype(gx.dtype)
    x = gx.to(acc)
    y = x if gy is None else gy.to(acc)
    d = (x.square().sum(1)[:, None] + y.square().sum(1)[None, :] - 2.0 * (x @ y.T)).clamp_min(0)
    if gy is None:
        d.fill_diagonal_(0)
    return d


def pairwise_style_distance_direct(gx, gy=None):
    """The direct definition sum_k (x_k - y_k)^2 (slow, O(N M D) memory-light loop; for tests)."""
    x = gx.double()
    y = x if gy is None else gy.double()
    return _gram_torch.stack([(xi[None, :] - y).square().sum(1) for xi in x])
