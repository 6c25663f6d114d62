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


# ---------------------------------------------------------------------------------------------
# Multi-layer reductions behind PerceptualLoss / LPIPS (engineer D; fastep.ops.reductions).
# ---------------------------------------------------------------------------------------------
import torch as _red_torch  # noqa: E402


def _red_acc_dtype(dtype):
    return _red_torch.promote_types(dtype, _red_torch.float32)


def weighted_feature_distance_reference(xs, ys, weights, p=1):
    """sum_l weights[l] * mean(|x_l - y_l|^p), p in {1, 2} (pix2pixHD's VGGLoss with L1, StEP's
    perceptual loss with p=2); accumulated in >= float32, returns a 0-d tensor."""
    total = None
    for x, y, w in zip(xs, ys, weights):
        acc = _red_acc_dtype(x.dtype)
        d = x.to(acc) - y.to(acc)
        term = (d.abs() if int(p) == 1 else d * d).mean() * float(w)
        total = term if total is None else total + term
    return total


def weighted_feature_distance_backward_reference(grad, xs, ys, weights, p=1, need_gx=True, need_gy=False):
    """(gxs, gys): gradients of :func:`weighted_feature_distance_reference` (lists or None)."""
    gxs, gys = ([] if need_gx else None), ([] if need_gy else None)
    for x, y, w in zip(xs, ys, weights):
        acc = _red_acc_dtype(x.dtype)
        d = x.to(acc) - y.to(acc)
        scale = grad.to(acc) * (float(w) / x.numel())
        g = (_red_torch.sign(d) if int(p) == 1 else 2.0 * d) * scale
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
        acc = _red_acc_dtype(f0.dtype)
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
        acc = _red_acc_dtype(f0.dtype)
        a, b = f0.to(acc), f1.to(acc)
        hw = a.shape[2] * a.shape[3]
        na = a.square().sum(1, keepdim=True).sqrt()
        nb = b.square().sum(1, keepdim=True).sqrt()
        ia, ib = 1.0 / (na + eps), 1.0 / (nb + eps)
        q = (2.0 / hw) * grad.to(acc).reshape(-1, 1, 1, 1) * w.to(acc).reshape(1, -1, 1, 1) * (a * ia - b * ib)
        if need_g0:
            ca = _red_torch.where(na > 0, (q * a).sum(1, keepdim=True) * ia * ia / na.clamp_min(1e-300), 0.0)
            g0s.append((q * ia - a * ca).to(f0.dtype))
        if need_g1:
            cb = _red_torch.where(nb > 0, (q * b).sum(1, keepdim=True) * ib * ib / nb.clamp_min(1e-300), 0.0)
            g1s.append((b * cb - q * ib).to(f1.dtype))
    return g0s, g1s


# ---------------------------------------------------------------------------------------------
# Exact neighbour mining (engineer C; fastep.ops.mining).  Brute force: the definition the tests
# compare against (in float64) and the eager "chunked cdist + topk" baseline of the benchmarks.
# ---------------------------------------------------------------------------------------------
import torch as _mine_torch  # noqa: E402


def _mine_lexsort(d, idx, descending):
    """Sort each row by distance (descending for the far end), ties by ascending index."""
    order = _mine_torch.argsort(idx, dim=1, stable=True)
    d, idx = d.gather(1, order), idx.gather(1, order)
    order = _mine_torch.sort(d, dim=1, descending=descending, stable=True).indices
    return d.gather(1, order), idx.gather(1, order)


def mine_neighbours_reference(x, k_near=5, k_far=13, block=256):
    """Float64 brute force: for every row of x [N, D] the k_near nearest and k_far furthest other
    rows under |x_i - x_j|^2 (computed directly from the differences, in float64), ties broken by
    the smaller index.  Returns (near_idx, near_dist, far_idx, far_dist)."""
    x = x.to(_mine_torch.float64)
    n = x.shape[0]
    near_i, near_d, far_i, far_d = [], [], [], []
    cols = _mine_torch.arange(n, device=x.device)
    for s in range(0, n, block):
        xb = x[s:s + block]
        d = (xb[:, None, :] - x[None, :, :]).square().sum(-1) if x.shape[1] * n * xb.shape[0] <= 2**26 \
            else _mine_torch.stack([(x - r).square().sum(-1) for r in xb])
        idx = cols.expand(xb.shape[0], n)
        rows = _mine_torch.arange(s, s + xb.shape[0], device=x.device)[:, None]
        keep = idx != rows
        d = d[keep].reshape(xb.shape[0], n - 1)
        idx = idx[keep].reshape(xb.shape[0], n - 1)
        dn, inn = _mine_lexsort(d, idx, descending=False)
        df, inf = _mine_lexsort(d, idx, descending=True)
        near_d.append(dn[:, :k_near]); near_i.append(inn[:, :k_near])
        far_d.append(df[:, :k_far]); far_i.append(inf[:, :k_far])
    return (_mine_torch.cat(near_i), _mine_torch.cat(near_d), _mine_torch.cat(far_i),
            _mine_torch.cat(far_d))


def topk_update_reference(tile, row_sq, col_sq, row_start, col_start, near_d, near_i, far_d, far_i,
                          transpose=False):
    """Plain-PyTorch version of fastep_C::topk_update_ (in place on the four lists)."""
    if transpose:
        tile, row_sq, col_sq = tile.t(), col_sq, row_sq
        row_start, col_start = col_start, row_start
    if row_sq is not None:
        d = (row_sq.double()[:, None] + col_sq.double()[None, :] - 2 * tile.double()).clamp_min(0)
    else:
        d = tile.double()
    d = d.float()
    r, c = d.shape
    rows = _mine_torch.arange(row_start, row_start + r, device=d.device)
    idx = _mine_torch.arange(col_start, col_start + c, device=d.device).expand(r, c)
    self_mask = idx == rows[:, None]
    for dl, il, desc in ((near_d, near_i, False), (far_d, far_i, True)):
        k = dl.shape[1]
        if k == 0:
            continue
        fill = float("-inf") if desc else float("inf")
        dd = _mine_torch.cat([dl[row_start:row_start + r], d.masked_fill(self_mask, fill)], 1)
        ii = _mine_torch.cat([il[row_start:row_start + r],
                              idx.masked_fill(self_mask, _mine_torch.iinfo(_mine_torch.int64).max)], 1)
        ds, is_ = _mine_lexsort(dd, ii, descending=desc)
        dl[row_start:row_start + r] = ds[:, :k]
        il[row_start:row_start + r] = is_[:, :k]


def pair_sqdist_reference(x, y, i, j):
    """sum_k (x[i_p, k] - y[j_p, k])^2 in float64 for every pair p."""
    return (x[i].double() - y[j].double()).square().sum(-1)


def cdist_topk_baseline(x, k_near=5, k_far=13, block=1024):
    """The eager baseline: chunked torch.cdist + topk of both ends (self excluded), same dtype as x."""
    n = x.shape[0]
    out = [[], [], [], []]
    for s in range(0, n, block):
        d = _mine_torch.cdist(x[s:s + block], x).square_()
        r = _mine_torch.arange(d.shape[0], device=x.device)
        d[r, r + s] = float("inf")
        dn, inn = _mine_torch.topk(d, k_near, dim=1, largest=False)
        d[r, r + s] = float("-inf")
        df, inf = _mine_torch.topk(d, k_far, dim=1, largest=True)
        for lst, v in zip(out, (inn, dn, inf, df)):
            lst.append(v)
    return tuple(_mine_torch.cat(v) for v in out)


# ---------------------------------------------------------------------------------------------
# pix2pixHD's VGGLoss: the eager fp32 definition fastep.losses.PerceptualLoss is tested against
# (tests/test_losses.py) and the baseline it is benchmarked against (benchmarks/test_bench_losses.py)
# ---------------------------------------------------------------------------------------------
import contextlib as _vgg_contextlib  # noqa: E402

from torch import nn as _vgg_nn  # noqa: E402


@_vgg_contextlib.contextmanager
def no_tf32():
    """Keep cuDNN / cuBLAS float32 convolutions and GEMMs off TF32 (10-bit mantissa) inside the
    block: float32 references must be float32 when compared on CUDA."""
    old = _gram_torch.backends.cudnn.allow_tf32, _gram_torch.backends.cuda.matmul.allow_tf32
    _gram_torch.backends.cudnn.allow_tf32 = _gram_torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        _gram_torch.backends.cudnn.allow_tf32, _gram_torch.backends.cuda.matmul.allow_tf32 = old


# torchvision vgg `features` module-index slices: pix2pixHD's Vgg19 (relu_i_1, L1) and StEP's
# VGG16 conv_i_2 (post-ReLU, MSE)
VGG_LOSS_SLICES = {"pix2pixhd": ("vgg19", ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30)), "l1"),
                   "vgg16": ("vgg16", ((0, 4), (4, 9), (9, 14), (14, 21), (21, 28)), "mse")}


def torchvision_vgg_features(arch: str, seed: int = 0):
    """torchvision-layout VGG ``features`` (``make_layers``) with fastep's seeded random weights."""
    from ..nets.weights import VGG_CFGS, random_state_dict

    layers, cin = [], 3
    for v in VGG_CFGS[arch]:
        if v == "M":
            layers.append(_vgg_nn.MaxPool2d(2, 2))
        else:
            layers += [_vgg_nn.Conv2d(cin, v, 3, padding=1), _vgg_nn.ReLU(inplace=True)]
            cin = v
    feats = _vgg_nn.Sequential(*layers)
    sd = random_state_dict(arch, seed)
    feats.load_state_dict({k[len("features."):]: v for k, v in sd.items()})
    return feats.requires_grad_(False).eval()


class VGGLossReference(_vgg_nn.Module):
    """pix2pixHD's ``VGGLoss``, its structure verbatim (slices, weights 1/32..1, criterion,
    detached target, two backbone passes, fp32, NCHW), fed ImageNet-normalised images like
    fastep's VGG features (``normalize=False``: the raw [-1, 1] images, as pix2pixHD does).

    ``net``: "pix2pixhd" (VGG19, L1) or "vgg16" (StEP, MSE); ``criterion`` overrides the
    distance; the backbone gets fastep's random weights for ``seed``.
    """

    def __init__(self, net: str = "pix2pixhd", criterion=None, *, seed: int = 0, normalize: bool = True):
        super().__init__()
        from ..nets.vgg import IMAGENET_MEAN, IMAGENET_STD

        arch, cuts, dist = VGG_LOSS_SLICES[net]
        f = torchvision_vgg_features(arch, seed)
        self.slices = _vgg_nn.ModuleList(_vgg_nn.Sequential(*[f[i] for i in range(a, b)]) for a, b in cuts)
        self.criterion = criterion if criterion is not None else (
            _vgg_nn.L1Loss() if dist == "l1" else _vgg_nn.MSELoss())
        self.normalize = normalize
        self.weights = [1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0]
        mean = _gram_torch.tensor(IMAGENET_MEAN, dtype=_gram_torch.float64)
        std = _gram_torch.tensor(IMAGENET_STD, dtype=_gram_torch.float64)
        self.register_buffer("a", (0.5 / std).float().view(1, 3, 1, 1))
        self.register_buffer("b", ((0.5 - mean) / std).float().view(1, 3, 1, 1))

    def vgg(self, x):
        h = x * self.a.to(x.dtype) + self.b.to(x.dtype) if self.normalize else x
        out = []
        for s in self.slices:
            h = s(h)
            out.append(h)
        return out

    def forward(self, x, y):
        x_vgg, y_vgg = self.vgg(x), self.vgg(y)
        loss = 0
        for i in range(len(x_vgg)):
            loss += self.weights[i] * self.criterion(x_vgg[i], y_vgg[i].detach())
        return loss
