"""Benchmarks of exact neighbour mining (fastep.ops.mining.mine_neighbours) against eager
PyTorch on the same data, in the same dtype, in the same run.

    python -m pytest benchmarks/test_bench_mining.py                      # CUDA if present, else CPU
    python -m pytest benchmarks/test_bench_mining.py --fastep-results benchmarks/results

Groups (k_near = 5, k_far = 13, D = 305,888 = the VGG16 relu{1..5}_2 Gram vectors):

* ``mine``      synthetic style-like Gram vectors (a low-rank "style" part + noise, positive,
                correlated like real Gram vectors).  CUDA: N = 1k, 10k (bf16 vectors on the GPU)
                and 100k (bf16 vectors in pinned host memory: 61 GB, streamed under the memory
                budget; no baseline, it would take minutes).  CPU (fp32): N = 500 at D = 32,768,
                and the issue's target size N = 2k at D = 305,888 (FASTEP_BENCH_MINING_CPU_BIG=0
                skips it).  Impls, all in fastep's dtype (CPU fp32, CUDA bf16 inputs with fp32
                accumulation and fp32 distances):

                - ``baseline``: chunked ``torch.cdist`` + ``topk`` of both ends (CPU; cdist has
                  no bf16 kernel) or chunked ``torch.mm`` (bf16 in, fp32 out) + norms + ``topk``
                  (CUDA): what a user writes; it computes all N^2 pairs;
                - ``mm_topk`` (CPU): the same chunked ``torch.mm`` formulation in fp32;
                - ``matmul``: the GEMM-rate yardstick, a row block times all rows
                  (``torch.mm``, same dtype), no selection;
                - ``fastep``.

``flops`` is the work each impl does: 2 N^2 D for the baselines; for fastep the tile pairs it
computes (the upper triangle of blocks, 2 r_I r_J D each; on CUDA half of each diagonal tile),
about N^2 D; for ``matmul`` its block.  So TFLOP/s is each impl's own rate, and fastep's
``pct_of_matmul`` (its TFLOP/s over the yardstick's) compares equal work rates.  Before any
timing each case checks that the baseline's neighbours equal fastep's (exact) ones within the
baseline's rounding: position by position, the exact distances of the baseline's picks equal
fastep's within the bound (the index sets may differ only inside near-ties the baseline cannot
resolve; ``rows_differing`` counts those rows).  ``pairs_per_s`` in the extra columns is
N^2 / time.  Env FASTEP_BENCH_MINING_N="1000,10000" overrides the CUDA sizes.
"""
from __future__ import annotations

import os

import pytest
import torch

from fastep.ops import reference as R
from fastep.ops.gram import gram_vector_dim
from fastep.ops.mining import mine_neighbours

D_VGG16 = gram_vector_dim((64, 128, 256, 512, 512))
K_NEAR, K_FAR = 5, 13


def _env_list(name, default):
    v = os.environ.get(name)
    return [int(s) for s in v.split(",") if s.strip()] if v else list(default)


def synthetic_gram_vectors(n, d, *, device="cpu", dtype=torch.float32, out=None, seed=0, rank=32,
                           chunk=2048):
    """Style-like vectors: positive mean + low-rank style variation + small noise (rows chunked)."""
    g = torch.Generator(device=device).manual_seed(seed)
    base = torch.rand(d, generator=g, device=device) + 0.5
    basis = torch.randn(rank, d, generator=g, device=device) / rank ** 0.5
    if out is None:
        out = torch.empty((n, d), dtype=dtype, device=device)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        z = torch.randn(e - s, rank, generator=g, device=device)
        x = base + 0.3 * (z @ basis) + 0.05 * torch.randn(e - s, d, generator=g, device=device)
        out[s:e].copy_(x.to(dtype), non_blocking=out.is_pinned())
        del x
    if device == "cuda":
        torch.cuda.synchronize()
    return out


def _cpu_cases():
    cases = [(500, 32768)]
    if os.environ.get("FASTEP_BENCH_MINING_CPU_BIG", "1") != "0":
        cases.append((2000, D_VGG16))
    return cases


_DATA = {}


def _data(key, make):
    """One data set alive at a time, shared by the impls of a case."""
    if key not in _DATA:
        _DATA.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _DATA[key] = make()
    return _DATA[key]


def mm_topk_baseline(x, k_near=K_NEAR, k_far=K_FAR, block=1024):
    """Chunked GEMM formulation: |x_i|^2 + |x_j|^2 - 2 x_i.x_j with ``torch.mm`` in x's dtype
    (bf16 inputs -> fp32 output on CUDA), self masked, ``topk`` of both ends; all N^2 pairs."""
    sq = x.float().square().sum(1)

    def row_distances(s, e):
        if x.is_cuda and x.dtype != torch.float32:
            g = torch.mm(x[s:e], x.t(), out_dtype=torch.float32)
        else:
            g = torch.mm(x[s:e], x.t()).float()
        return (sq[s:e, None] + sq[None, :] - 2 * g).clamp_min_(0)

    return R.chunked_topk_baseline(x, row_distances, k_near, k_far, block)


def fastep_flops(n, d, block_rows, half_diagonal):
    """The GEMM work of fastep's tile pairs (upper triangle of B x B blocks)."""
    total = 0.0
    for si in range(0, n, block_rows):
        ri = min(n, si + block_rows) - si
        for sj in range(si, n, block_rows):
            rj = min(n, sj + block_rows) - sj
            total += 2.0 * ri * rj * d * (0.5 if half_diagonal and si == sj else 1.0)
    return total


def check_same_neighbours(nb, base, x):
    """The baseline's picks equal fastep's exact neighbours within the baseline's rounding.

    Position by position, the float64 distances of the baseline's picks equal fastep's (sets
    may differ only where distances tie within the bound); returns the rows whose index lists
    differ."""
    from fastep.ops.mining import error_bound, pair_sqdist

    n = x.shape[0]
    norms = x.float().square().sum(1).double().sqrt().cpu()  # the baseline does not centre
    q4 = x.float().pow(4).sum(1).double().pow(0.25).cpu()
    dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32
    eps = error_bound(norms, q4, float(norms.max()), float(q4.max()), x.shape[1], dtype,
                      x.device.type if dtype != torch.float32 else "cpu")
    tol = (2 * eps + nb.info["eps_max"])[:, None]
    differing = 0
    for got_i, got_d, base_i, far in ((nb.near_idx, nb.near_dist, base[0], False),
                                      (nb.far_idx, nb.far_dist, base[2], True)):
        bi = base_i.cpu().long()
        rows = torch.arange(n)[:, None].expand_as(bi)
        bd = pair_sqdist(x, x, rows.reshape(-1).to(x.device), bi.reshape(-1).to(x.device)).cpu().view_as(bi)
        bd = bd.sort(1, descending=far).values
        assert ((bd - got_d).abs() <= tol).all(), \
            f"{'far' if far else 'near'} neighbours of the baseline differ from fastep's beyond the bound"
        differing += int((bi != got_i).any(1).sum())
    return differing


_YARDSTICK = {}


def _record_pct(rec, key, impl):
    if impl == "matmul":
        _YARDSTICK[key] = rec.tflops
    elif impl == "fastep" and _YARDSTICK.get(key):
        rec.extra.update(pct_of_matmul=100.0 * rec.tflops / _YARDSTICK[key])


@pytest.mark.parametrize("impl", ["matmul", "fastep", "baseline", "mm_topk"])
@pytest.mark.parametrize("n,d", _cpu_cases())
def test_mine_cpu(fastep_bench, device, n, d, impl):
    if device != "cpu":
        pytest.skip("CPU sizes")
    x = _data(("cpu", n, d), lambda: synthetic_gram_vectors(n, d))
    kw = dict(group="mine", case=f"N{n}_D{d}_fp32", device="cpu", warmup=0, rounds=3, N=n, D=d)
    # median of 3 (no warm-up): the first (cold) call is an outlier
    res = {}
    if impl == "fastep":
        res["nb"] = mine_neighbours(x, K_NEAR, K_FAR, device="cpu")
        rows = check_same_neighbours(res["nb"], R.cdist_topk_baseline(x, K_NEAR, K_FAR), x)

        def fn():
            res["nb"] = mine_neighbours(x, K_NEAR, K_FAR, device="cpu")
            return res["nb"]
        flops = fastep_flops(n, d, res["nb"].info["block_rows"], half_diagonal=False)
    elif impl in ("baseline", "mm_topk"):
        base = R.cdist_topk_baseline if impl == "baseline" else mm_topk_baseline
        rows = check_same_neighbours(mine_neighbours(x, K_NEAR, K_FAR, device="cpu"), base(x), x)

        def fn():
            return base(x, K_NEAR, K_FAR)
        flops = 2.0 * n * n * d
    else:
        blk = x[: min(n, 512)]

        def fn():
            return torch.mm(blk, x.t())
        flops = 2.0 * blk.shape[0] * n * d
    rec = fastep_bench(fn, impl=impl, flops=flops, **kw)
    _record_pct(rec, ("cpu", n, d), impl)
    if impl != "matmul":
        rec.extra.update(pairs_per_s=n * n / rec.median_s, rows_differing=rows)
    if impl == "fastep":
        info = res["nb"].info
        rec.extra.update(exact_pairs=info["exact_pairs"],
                         fallback_rows=info["fallback_rows_near"] + info["fallback_rows_far"],
                         reranked_rows=info["reranked_rows_near"] + info["reranked_rows_far"])


def _cuda_data(n):
    d = D_VGG16
    host = n * d * 2 > 0.5 * torch.cuda.mem_get_info()[0]
    if host:
        try:
            x = torch.empty((n, d), dtype=torch.bfloat16, pin_memory=True)
        except RuntimeError as err:
            pytest.skip(f"cannot pin {n * d * 2 / 2**30:.0f} GiB of host memory: {err}")
        return synthetic_gram_vectors(n, d, device="cuda", dtype=torch.bfloat16, out=x), host
    return synthetic_gram_vectors(n, d, device="cuda", dtype=torch.bfloat16), host


@pytest.mark.parametrize("impl", ["matmul", "fastep", "baseline"])
@pytest.mark.parametrize("n", _env_list("FASTEP_BENCH_MINING_N", (1000, 10000, 100000)))
def test_mine_cuda(fastep_bench, device, n, impl):
    if device != "cuda":
        pytest.skip("CUDA sizes")
    d = D_VGG16
    x, host = _data(("cuda", n), lambda: _cuda_data(n))
    if host and impl != "fastep":
        pytest.skip("no baseline or yardstick at host-streaming sizes (minutes)")
    case = f"N{n}_D{d}_bf16{'_host' if host else ''}"
    kw = dict(group="mine", case=case, device="cuda", N=n, D=d, warmup=1 if n >= 10000 else 2,
              rounds=1 if n >= 100000 else (3 if n >= 10000 else None))
    res, rows = {}, None
    if impl == "fastep":
        res["nb"] = mine_neighbours(x, K_NEAR, K_FAR, device="cuda")
        if not host:
            rows = check_same_neighbours(res["nb"], mm_topk_baseline(x), x)

        def fn():
            res["nb"] = mine_neighbours(x, K_NEAR, K_FAR, device="cuda")
            return res["nb"]
        flops = fastep_flops(n, d, res["nb"].info["block_rows"], half_diagonal=True)
    elif impl == "baseline":  # bf16 inputs, fp32 distances: fastep's precision
        rows = check_same_neighbours(mine_neighbours(x, K_NEAR, K_FAR, device="cuda"), mm_topk_baseline(x), x)

        def fn():
            return mm_topk_baseline(x)
        flops = 2.0 * n * n * d
    else:  # the bf16 GEMM-rate yardstick: a 4096-row block against all rows
        blk = x[: min(n, 4096)]

        def fn():
            return torch.mm(blk, x.t(), out_dtype=torch.float32)
        flops = 2.0 * blk.shape[0] * n * d
    rec = fastep_bench(fn, impl=impl, flops=flops, **kw)
    _record_pct(rec, ("cuda", n), impl)
    if impl != "matmul":
        rec.extra.update(pairs_per_s=n * n / rec.median_s, rows_differing=rows)
    if impl == "fastep":
        info = res["nb"].info
        rec.extra.update(host_streaming=host, exact_pairs=info["exact_pairs"],
                         fallback_rows=info["fallback_rows_near"] + info["fallback_rows_far"],
                         reranked_rows=info["reranked_rows_near"] + info["reranked_rows_far"],
                         block_rows=info["block_rows"])


def _images(n, res, device, seed=0, chunk=256):
    """Generated textured images in [-1, 1] (a few palettes), chunk by chunk."""
    g = torch.Generator(device=device).manual_seed(seed)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        pal = torch.rand(m, 3, 1, 1, generator=g, device=device) * 2 - 1
        freq = torch.rand(m, 1, 1, 1, generator=g, device=device) * 0.5 + 0.05
        yy = torch.arange(res, device=device).view(1, 1, res, 1).float()
        xx = torch.arange(res, device=device).view(1, 1, 1, res).float()
        img = pal * torch.sin(freq * xx + 2 * freq * yy) + 0.2 * torch.randn(m, 3, res, res, generator=g, device=device)
        yield img.clamp(-1, 1)


@pytest.mark.parametrize("n", _env_list("FASTEP_BENCH_MINING_E2E", (1000, 10000)))
def test_mine_end_to_end_cuda(fastep_bench, device, n):
    if device != "cuda":
        pytest.skip("CUDA end to end")
    _DATA.clear()
    from fastep.features import get_style_net, style_features
    from fastep.nets.weights import imagenet_search_paths

    weights = "imagenet" if any(p.exists() for p in imagenet_search_paths("vgg16")) else "random"
    net = get_style_net("vgg16", weights=weights, device="cuda")
    if True:
        d = D_VGG16
        host = n * d * 2 > 0.4 * torch.cuda.mem_get_info()[0]

        def e2e():
            vec = torch.empty((n, d), dtype=torch.bfloat16, device="cpu" if host else "cuda",
                              pin_memory=host)
            s = 0
            for img in _images(n, 256, "cuda"):
                v = style_features(img, net=net, output="vectors", batch_size=64,
                                   out_dtype=torch.bfloat16, autocast_dtype=torch.bfloat16)
                vec[s:s + v.shape[0]].copy_(v, non_blocking=host)
                s += v.shape[0]
            return mine_neighbours(vec, K_NEAR, K_FAR, device="cuda")

        rec = fastep_bench(e2e, group="mine_e2e", case=f"N{n}_256px_vgg16_{weights}", impl="fastep",
                           device="cuda", flops=2.0 * n * n * d, warmup=1, rounds=1 if n > 10000 else 3,
                           N=n)
        rec.extra.update(pairs_per_s=n * n / rec.median_s, images_per_s=n / rec.median_s)
