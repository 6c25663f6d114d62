"""Benchmarks of exact neighbour mining (fastep.ops.mining.mine_neighbours) against chunked
``torch.cdist`` + ``topk`` on the same data in the same run.

    python -m pytest benchmarks/test_bench_mining.py                      # CUDA if present, else CPU
    python -m pytest benchmarks/test_bench_mining.py --fastep-results benchmarks/results

Groups (k_near = 5, k_far = 13, D = 305,888 = the VGG16 relu{1..5}_2 Gram vectors):

* ``mine``      synthetic style-like Gram vectors (a low-rank "style" part + noise, positive,
                correlated like real Gram vectors).  CUDA: N = 1k, 10k (bf16 vectors on the GPU)
                and 100k (bf16 vectors in pinned host memory: 61 GB, streamed under the memory
                budget; no baseline, it would take minutes).  CPU: N = 500 at D = 32,768, and the
                issue's target size N = 2k at D = 305,888 (FASTEP_BENCH_MINING_CPU_BIG=0 skips it).
                baseline: ``cdist_topk_baseline`` (fp32, 1024-row chunks: cdist, square, self
                masked, topk of both ends) -- the same definition fastep computes exactly.
* ``mine_e2e``  end to end from images on CUDA: N generated 256 x 256 images -> VGG16 (random
                weights unless ImageNet weights are present; same cost) -> Gram vectors (bf16)
                -> mining.  N = 1k, 10k (FASTEP_BENCH_MINING_E2E="1000,10000,100000" adds 100k).

``flops`` = 2 N N D (the full all-pairs GEMM, what the baseline computes); fastep does about half
(symmetric tiles), so its TFLOP/s column is "effective" all-pairs throughput.  ``pairs_per_s`` in
the extra columns is N^2 / time.  Env FASTEP_BENCH_MINING_N="1000,10000" overrides the CUDA sizes.
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


@pytest.mark.parametrize("impl", ["fastep", "baseline"])
@pytest.mark.parametrize("n,d", _cpu_cases())
def test_mine_cpu(fastep_bench, device, n, d, impl):
    if device != "cpu":
        pytest.skip("CPU sizes")
    x = _data(("cpu", n, d), lambda: synthetic_gram_vectors(n, d))
    big = n * d > 1 << 28
    kw = dict(group="mine", case=f"N{n}_D{d}_fp32", device="cpu", flops=2.0 * n * n * d,
              warmup=0, rounds=3, N=n, D=d)  # median of 3: the first (cold) call is an outlier
    res = {}
    if impl == "fastep":
        def fn():
            res["nb"] = mine_neighbours(x, K_NEAR, K_FAR, device="cpu")
            return res["nb"]
    else:
        def fn():
            return R.cdist_topk_baseline(x, K_NEAR, K_FAR)
    rec = fastep_bench(fn, impl=impl, **kw)
    rec.extra.update(pairs_per_s=n * n / rec.median_s)
    if impl == "fastep":
        rec.extra.update(exact_pairs=res["nb"].info["exact_pairs"],
                         fallback_rows=res["nb"].info["fallback_rows_near"] + res["nb"].info["fallback_rows_far"])


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


@pytest.mark.parametrize("impl", ["fastep", "baseline", "matmul_bf16"])
@pytest.mark.parametrize("n", _env_list("FASTEP_BENCH_MINING_N", (1000, 10000, 100000)))
def test_mine_cuda(fastep_bench, device, n, impl):
    if device != "cuda":
        pytest.skip("CUDA sizes")
    d = D_VGG16
    x, host = _data(("cuda", n), lambda: _cuda_data(n))
    if host and impl != "fastep":
        pytest.skip("no baseline at host-streaming sizes (minutes)")
    case = f"N{n}_D{d}_bf16{'_host' if host else ''}"
    kw = dict(group="mine", case=case, device="cuda", N=n, D=d, warmup=1 if n >= 10000 else 2,
              rounds=1 if n >= 100000 else (3 if n >= 10000 else None))
    res = {}
    if impl == "fastep":
        def fn():
            res["nb"] = mine_neighbours(x, K_NEAR, K_FAR, device="cuda")
            return res["nb"]
        flops = 2.0 * n * n * d
    elif impl == "baseline":
        xf = x.float()

        def fn():
            return R.cdist_topk_baseline(xf, K_NEAR, K_FAR)
        flops = 2.0 * n * n * d
    else:  # the bf16 GEMM-rate yardstick: a 4096-row block against all rows
        blk = x[: min(n, 4096)]

        def fn():
            return blk @ x.t()
        flops = 2.0 * blk.shape[0] * n * d
    rec = fastep_bench(fn, impl=impl, flops=flops, **kw)
    rec.extra.update(pairs_per_s=(n * n if impl != "matmul_bf16" else min(n, 4096) * n) / rec.median_s)
    if impl == "fastep":
        info = res["nb"].info
        rec.extra.update(host_streaming=host, exact_pairs=info["exact_pairs"],
                         fallback_rows=info["fallback_rows_near"] + info["fallback_rows_far"],
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
