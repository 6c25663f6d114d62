"""Plain-PyTorch definitions of the multi-layer reductions behind PerceptualLoss and LPIPS
(:mod:`fastep.ops.reductions`)."""
import torch


def _acc_dtype(dtype):
    return torch.promote_types(dtype, torch.float32)


def weighted_feature_distance_reference(xs, ys, weights, p=1):
    """sum_l weights[l] * mean(|x_l - y_l|^p), p in {1, 2} (pix2pixHD's VGGLoss with L1, StEP's
    perceptual loss with p=2); accumulated in >= float32, returns a 0-d tensor."""
    total = None
    for x, y, w in zip(xs, ys, weights):
        acc = _acc_dtype(x.dtype)
        d = x.to(acc) - y.to(acc)
        term = (d.abs() if int(p) == 1 else d * d).mean() * float(w)
        total = term if total is None else total + term
    return total


def weighted_feature_distance_backward_reference(grad, xs, ys, weights, p=1, need_gx=True, need_gy=False):
    """(gxs, gys): gradients of :func:`weighted_feature_distance_reference` (lists or None)."""
    gxs, gys = ([] if need_gx else None), ([] if need_gy else None)
    for x, y, w in zip(xs, ys, weights):
        acc = _acc_dtype(x.dtype)
        d = x.to(acc) - y.to(acc)
        scale = grad.to(acc) * (float(w) / x.numel())
        g = (torch.sign(d) if int(p) == 1 else 2.0 * d) * scale
        if need_gx:
            gxs.append(g.to(x.dtype))
        if need_gy:
            gys.append((-g).to(y.dtype))
    return gxs, gys


def lpips_normalize_reference(f, eps=1e-10):
    """LPIPS's unit-normalisation over channels: f / (sqrt(sum_c f^2) + eps)."""
    return f / (f.square().sum(dim=1, keepdim=True).sqrt() + eps)


def lpips_distance_reference(f0s, f1s, lin_weights, eps=1e-10):
    """LPIPS distance per sample (N,): sum_l mean_hw sum_c w_lc (n(f0_l) - n(f1_l))_c^2, n the
    channel unit-normalisation; the lpips package's formula (its 1x1 'lin' conv = channel weights)."""
    total = None
    for f0, f1, w in zip(f0s, f1s, lin_weights):
        acc = _acc_dtype(f0.dtype)
        d = lpips_normalize_reference(f0.to(acc), eps) - lpips_normalize_reference(f1.to(acc), eps)
        term = (d.square() * w.to(acc).reshape(1, -1, 1, 1)).sum(dim=1).mean(dim=(1, 2))
        total = term if total is None else total + term
    return total


def lpips_distance_backward_reference(grad, f0s, f1s, lin_weights, eps=1e-10, need_g0=True, need_g1=True):
    """(g0s, g1s): gradients of :func:`lpips_distance_reference` for a per-sample grad (N,).

    With u = a / (|a| + eps): dL/da = q/(|a|+eps) - a (q.a) / (|a| (|a|+eps)^2), q = dL/du;
    defined as q/eps at |a| = 0 (where autograd of the formula gives NaN)."""
    g0s, g1s = ([] if need_g0 else None), ([] if need_g1 else None)
    for f0, f1, w in zip(f0s, f1s, lin_weights):
        acc = _acc_dtype(f0.dtype)
        a, b = f0.to(acc), f1.to(acc)
        hw = a.shape[2] * a.shape[3]
        na = a.square().sum(1, keepdim=True).sqrt()
        nb = b.square().sum(1, keepdim=True).sqrt()
        ia, ib = 1.0 / (na + eps), 1.0 / (nb + eps)
        q = (2.0 / hw) * grad.to(acc).reshape(-1, 1, 1, 1) * w.to(acc).reshape(1, -1, 1, 1) * (a * ia - b * ib)
        if need_g0:
            ca = torch.where(na > 0, (q * a).sum(1, keepdim=True) * ia * ia / na.clamp_min(1e-300), 0.0)
            g0s.append((q * ia - a * ca).to(f0.dtype))
        if need_g1:
            cb = torch.where(nb > 0, (q * b).sum(1, keepdim=True) * ib * ib / nb.clamp_min(1e-300), 0.0)
            g1s.append((b * cb - q * ib).to(f1.dtype))
    return g0s, g1s


__all__ = ['weighted_feature_distance_reference', 'weighted_feature_distance_backward_reference',
           'lpips_normalize_reference', 'lpips_distance_reference',
           'lpips_distance_backward_reference']
