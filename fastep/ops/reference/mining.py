"""Plain-PyTorch definitions of exact neighbour mining (:mod:`fastep.ops.mining`): brute
force, the definition the tests compare against (in float64), and the eager
"chunked cdist + topk" baseline of the benchmarks."""
import torch


def _lexsort(d, idx, descending):
    """Sort each row by distance (descending for the far end), ties by ascending index."""
    order = torch.argsort(idx, dim=1, stable=True)
    d, idx = d.gather(1, order), idx.gather(1, order)
    order = torch.sort(d, dim=1, descending=descending, stable=True).indices
    return d.gather(1, order), idx.gather(1, order)


def mine_neighbours_reference(x, k_near=5, k_far=13, block=256):
    """Float64 brute force: for every row of x [N, D] the k_near nearest and k_far furthest other
    rows under |x_i - x_j|^2 (computed directly from the differences, in float64), ties broken by
    the smaller index.  Returns (near_idx, near_dist, far_idx, far_dist)."""
    x = x.to(torch.float64)
    n = x.shape[0]
    near_i, near_d, far_i, far_d = [], [], [], []
    cols = torch.arange(n, device=x.device)
    for s in range(0, n, block):
        xb = x[s:s + block]
        d = (xb[:, None, :] - x[None, :, :]).square().sum(-1) if x.shape[1] * n * xb.shape[0] <= 2**26 \
            else torch.stack([(x - r).square().sum(-1) for r in xb])
        idx = cols.expand(xb.shape[0], n)
        rows = torch.arange(s, s + xb.shape[0], device=x.device)[:, None]
        keep = idx != rows
        d = d[keep].reshape(xb.shape[0], n - 1)
        idx = idx[keep].reshape(xb.shape[0], n - 1)
        dn, inn = _lexsort(d, idx, descending=False)
        df, inf = _lexsort(d, idx, descending=True)
        near_d.append(dn[:, :k_near]); near_i.append(inn[:, :k_near])
        far_d.append(df[:, :k_far]); far_i.append(inf[:, :k_far])
    return (torch.cat(near_i), torch.cat(near_d), torch.cat(far_i),
            torch.cat(far_d))


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
    rows = torch.arange(row_start, row_start + r, device=d.device)
    idx = torch.arange(col_start, col_start + c, device=d.device).expand(r, c)
    self_mask = idx == rows[:, None]
    for dl, il, desc in ((near_d, near_i, False), (far_d, far_i, True)):
        k = dl.shape[1]
        if k == 0:
            continue
        fill = float("-inf") if desc else float("inf")
        dd = torch.cat([dl[row_start:row_start + r], d.masked_fill(self_mask, fill)], 1)
        ii = torch.cat([il[row_start:row_start + r],
                              idx.masked_fill(self_mask, torch.iinfo(torch.int64).max)], 1)
        ds, is_ = _lexsort(dd, ii, descending=desc)
        dl[row_start:row_start + r] = ds[:, :k]
        il[row_start:row_start + r] = is_[:, :k]


def pair_sqdist_reference(x, y, i, j):
    """sum_k (x[i_p, k] - y[j_p, k])^2 in float64 for every pair p."""
    return (x[i].double() - y[j].double()).square().sum(-1)


def chunked_topk_baseline(x, row_distances, k_near=5, k_far=13, block=1024):
    """An eager all-pairs baseline: for each block of ``block`` rows starting at ``s``,
    ``row_distances(s, e)`` gives their squared distances to every row, (e - s, N); self is
    excluded and ``topk`` takes both ends.  Returns (near_idx, near_d, far_idx, far_d)."""
    n = x.shape[0]
    out = [[], [], [], []]
    for s in range(0, n, block):
        d = row_distances(s, min(s + block, n))
        r = torch.arange(d.shape[0], device=x.device)
        d[r, r + s] = float("inf")
        dn, inn = torch.topk(d, k_near, dim=1, largest=False)
        d[r, r + s] = float("-inf")
        df, inf = torch.topk(d, k_far, dim=1, largest=True)
        for lst, v in zip(out, (inn, dn, inf, df)):
            lst.append(v)
    return tuple(torch.cat(v) for v in out)


def cdist_topk_baseline(x, k_near=5, k_far=13, block=1024):
    """The eager baseline: chunked torch.cdist + topk of both ends (self excluded), same dtype as x."""
    return chunked_topk_baseline(x, lambda s, e: torch.cdist(x[s:e], x).square_(), k_near, k_far, block)


__all__ = ['mine_neighbours_reference', 'topk_update_reference', 'pair_sqdist_reference',
           'chunked_topk_baseline', 'cdist_topk_baseline']
