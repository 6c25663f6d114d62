"""Plain-PyTorch definitions of the Gram / style-distance ops (:mod:`fastep.ops.gram`).

Eager PyTorch throughout: the definitions the tests compare against in float64, and the
baseline of the benchmarks."""
import math

import torch


def _acc_dtype(dtype):
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def gram_reference(features, out_dtype=None):
    """G = F F^T / (C H W) of (N, C, H, W) features, accumulated in >= float32 (eager bmm)."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w).to(_acc_dtype(features.dtype))
    g = torch.bmm(f, f.transpose(1, 2)) / (c * h * w)
    return g.to(out_dtype or features.dtype)


def style_loss_reference(feats_x, feats_y=None, weights=None, target_grams=None):
    """sum_l w_l * mean((G_l(x) - G_l(y))^2) (mean over batch and the C x C entries): bmm + mse."""
    weights = [1.0] * len(feats_x) if weights is None else list(weights)
    total = None
    for l, fx in enumerate(feats_x):
        gx = gram_reference(fx, out_dtype=_acc_dtype(fx.dtype))
        if target_grams is not None:
            gy = target_grams[l].to(gx.dtype).expand_as(gx)
        else:
            fy = feats_y[l]
            gy = gram_reference(fy, out_dtype=_acc_dtype(fy.dtype)).to(gx.dtype)
        term = weights[l] * torch.nn.functional.mse_loss(gx, gy)
        total = term if total is None else total + term
    return total


def style_distance_reference(feats_x, feats_y, weights=None):
    """Per pair n: sum_l w_l * mean over C x C of (G_l(x_n) - G_l(y_n))^2  -> (N,)."""
    weights = [1.0] * len(feats_x) if weights is None else list(weights)
    total = None
    for l, (fx, fy) in enumerate(zip(feats_x, feats_y)):
        acc = _acc_dtype(fx.dtype)
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
        g = gram_reference(f, out_dtype=_acc_dtype(f.dtype))
        iu = torch.triu_indices(c, c, device=f.device)
        scale = torch.full((iu.shape[1],), math.sqrt(2.0), dtype=g.dtype, device=f.device)
        scale[iu[0] == iu[1]] = 1.0
        parts.append(g[:, iu[0], iu[1]] * (scale * (math.sqrt(weights[l]) / c)))
    out = torch.cat(parts, dim=1)
    if out_dtype is not None:
        return out.to(out_dtype)
    return out if out.dtype == torch.float64 else out.float()


def pairwise_style_distance_reference(x, y=None, block=8192):
    """clamp(|x_i|^2 + |y_j|^2 - 2 x_i . y_j, 0) for all rows of x against all rows of y (or x),
    blockwise over the rows of x, accumulated in >= float32; for ``y=None`` exactly symmetric
    with an exactly zero diagonal.  The CPU backend of ``pairwise_style_distance``."""
    acc = _acc_dtype(x.dtype)
    yacc = (x if y is None else y).to(acc)
    ny = yacc.square().sum(1)
    out = torch.empty((x.shape[0], yacc.shape[0]), dtype=acc, device=x.device)
    yt = yacc.T
    for r in range(0, x.shape[0], block):
        xb = x[r:r + block].to(acc)
        ob = out[r:r + block]
        torch.mm(xb, yt, out=ob)
        ob.mul_(-2.0).add_(xb.square().sum(1)[:, None] + ny[None, :]).clamp_min_(0)
    if y is None:
        out = torch.triu(out, 1)
        out = out + out.T
    return out


def pairwise_style_distance_direct(gx, gy=None):
    """The direct definition sum_k (x_k - y_k)^2 (slow, O(N M D) memory-light loop; for tests)."""
    x = gx.double()
    y = x if gy is None else gy.double()
    return torch.stack([(xi[None, :] - y).square().sum(1) for xi in x])


__all__ = ['gram_reference', 'style_loss_reference', 'style_distance_reference',
           'gram_vector_dim_reference', 'gram_vectors_reference',
           'pairwise_style_distance_reference', 'pairwise_style_distance_direct']
