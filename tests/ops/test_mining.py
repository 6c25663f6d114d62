"""Exact neighbour mining: fastep.ops.mining against the float64 brute force."""
import math

import numpy as np
import pytest
import torch

from fastep import _ext
from fastep.ops import mining as M
from fastep.ops import reference as R

HAS_CUDA = torch.cuda.is_available()
EMPTY = torch.iinfo(torch.int64).max


def _check(nb, x, k_near, k_far, exact_dist=False):
    ni, nd, fi, fd = R.mine_neighbours_reference(x, k_near, k_far)
    assert torch.equal(nb.near_idx, ni), "near sets/order differ from float64 brute force"
    assert torch.equal(nb.far_idx, fi), "far sets/order differ from float64 brute force"
    tol = 1e-9 * (1 + nd.abs().max().item()) if exact_dist else nb.info["eps_max"] + 1e-12
    assert (nb.near_dist - nd).abs().max().item() <= tol if nd.numel() else True
    assert (nb.far_dist - fd).abs().max().item() <= tol if fd.numel() else True


def _data(kind, n, d, gen):
    if kind == "gauss":
        return torch.randn(n, d, generator=gen)
    if kind == "gram_like":  # strongly correlated positive vectors, as Gram vectors are
        base = torch.rand(d, generator=gen) + 1
        return base + 0.05 * torch.rand(n, d, generator=gen)
    if kind == "ties":  # small integers: many exact ties, exact in every precision
        return torch.randint(0, 3, (n, d), generator=gen).float()
    if kind == "dups":  # every vector three times, shuffled
        x = torch.randn(n // 3 + 1, d, generator=gen).repeat(3, 1)[:n]
        return x[torch.randperm(n, generator=gen)]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,n,d,block", [("gauss", 97, 33, 20), ("gram_like", 150, 300, 64),
                                            ("ties", 120, 5, 32), ("dups", 101, 17, 25),
                                            ("gauss", 64, 1, None), ("gram_like", 60, 4500, 25),
                                            # D > 8192: several float32 GEMM segments summed in float64
                                            ("gauss", 48, 2 * M._CPU_SEG_K + 100, 16)])
def test_matches_float64_brute_force(kind, n, d, block):
    gen = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    x = _data(kind, n, d, gen)
    nb = M.mine_neighbours(x, 5, 13, block_rows=block)
    _check(nb, x, 5, 13)
    assert nb.near_idx.dtype == torch.int64 and nb.near_dist.dtype == torch.float64
    assert not (nb.near_idx == torch.arange(n)[:, None]).any()
    assert not (nb.far_idx == torch.arange(n)[:, None]).any()
    if kind in ("gauss", "gram_like"):
        # The certified fast path decided: no row recomputed against all N - 1 others, exact
        # float64 distances only inside near-tied groups: a few per row (measured: at most 1.4 n
        # up to D = 4500, 3.1 n at D = 16,484 where the distances of 48 random vectors concentrate
        # within the bound), against N (N - 1) for the brute force.
        info = nb.info
        assert info["fallback_rows_near"] == 0 and info["fallback_rows_far"] == 0, info
        assert info["exact_pairs"] <= (5 if d > M._CPU_SEG_K else 2) * n, info
        assert 0 <= info["reranked_rows_near"] + info["reranked_rows_far"] <= min(2 * n, info["exact_pairs"])


def test_rerank_all_gives_float64_distances():
    x = torch.randn(80, 50, dtype=torch.float64)
    nb = M.mine_neighbours(x, 4, 6, rerank="all", block_rows=30)
    _check(nb, x, 4, 6, exact_dist=True)


@pytest.mark.parametrize("bound", ["probabilistic", "rigorous"])
def test_bf16_inputs_with_certified_rerank(bound):
    # bf16 GEMM inputs (emulated on CPU): the candidates + exact re-rank still give exact sets.
    x = _data("gram_like", 120, 200, torch.Generator().manual_seed(3))
    nb = M.mine_neighbours(x, 5, 13, compute_dtype=torch.bfloat16, bound=bound, block_rows=50)
    _check(nb, x, 5, 13)


def test_k_limits():
    n = 23
    x = torch.randn(n, 7)
    nb = M.mine_neighbours(x, n - 1, n - 1, block_rows=8)
    _check(nb, x, n - 1, n - 1)
    nb = M.mine_neighbours(x, 0, 1)
    assert nb.near_idx.shape == (n, 0) and nb.far_idx.shape == (n, 1)
    _check(nb, x, 0, 1)
    x2 = torch.randn(2, 3)
    nb = M.mine_neighbours(x2, 1, 1)
    assert nb.near_idx.tolist() == [[1], [0]] and nb.far_idx.tolist() == [[1], [0]]


def test_more_duplicates_than_candidates_falls_back_exactly():
    x = torch.randn(4, 9).repeat(12, 1)  # each vector 12 times; margin 0 -> no certain boundary
    nb = M.mine_neighbours(x, 3, 3, margin=0, block_rows=16)
    _check(nb, x, 3, 3)
    assert nb.info["fallback_rows_near"] > 0


def test_identical_vectors_all_ties():
    x = torch.ones(10, 4)
    nb = M.mine_neighbours(x, 3, 2)
    for i in range(10):
        others = [j for j in range(10) if j != i]
        assert nb.near_idx[i].tolist() == others[:3] and nb.far_idx[i].tolist() == others[:2]
    assert (nb.near_dist == 0).all()


def test_memmap_streaming_tiny_budget(tmp_path):
    x = torch.randn(90, 40)
    path = tmp_path / "vecs.npy"
    np.save(path, x.numpy())
    mm = np.load(path, mmap_mode="r")
    budget = 40 * 4 * 60  # ~15 rows per block (two blocks + conversion buffers)
    nb = M.mine_neighbours(mm, 5, 13, memory_budget=budget, device="cpu")
    assert nb.info["block_rows"] < 20 and nb.info["tiles"] >= 15
    _check(nb, x, 5, 13)
    nb2 = M.mine_neighbours(str(path), 5, 13, memory_budget=budget, device="cpu")
    assert torch.equal(nb2.near_idx, nb.near_idx) and torch.equal(nb2.far_idx, nb.far_idx)


def test_pluggable_distance():
    x = torch.randn(60, 12)
    w = torch.randn(12, 5, dtype=torch.float64)
    embed = lambda v: v.double() @ w  # noqa: E731 - any embedding network
    nb = M.mine_neighbours(x, 4, 4, distance=embed)
    _check(nb, x.double() @ w, 4, 4)
    nb = M.mine_neighbours(x, 4, 4, distance="cosine")
    _check(nb, torch.nn.functional.normalize(x.double(), dim=1), 4, 4)


def test_error_bound_holds():
    gen = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.bfloat16):
        x = _data("gram_like", 64, 500, gen).double()
        mu32 = x.mean(0).float()
        c = x - mu32.double()
        ct = (x.float() - mu32).to(dtype).float()
        sq = (c * c).sum(1)
        approx = (sq[:, None] + sq[None, :] - 2 * (ct @ ct.t()).double()).clamp_min(0).float().double()
        exact = torch.cdist(x, x).square()
        norms, q4 = sq.sqrt(), (c ** 4).sum(1).pow(0.25)
        for mode, least in (("probabilistic", 5e-3), ("rigorous", 2e-3)):
            eps = M.error_bound(norms, q4, norms[None, :], q4[None, :], 500, dtype, "cpu", mode)
            assert ((approx - exact).abs() <= eps).all(), (dtype, mode)
            # the bound is not vacuous: the worst observed error reaches a fair part of it
            # (measured over seeds: >= 0.023 / 0.0087 in fp32, >= 0.09 / 0.043 in bf16)
            ratio = ((approx - exact).abs().max() / eps.max()).item()
            assert ratio > least, (dtype, mode, ratio)


def test_bad_inputs():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k_near"):
        M.mine_neighbours(x, 5, 1)
    with pytest.raises(ValueError, match="k_far"):
        M.mine_neighbours(x, 1, 9)
    with pytest.raises(TypeError, match="k_near"):
        M.mine_neighbours(x, 1.5, 1)
    with pytest.raises(ValueError, match="vectors"):
        M.mine_neighbours(torch.randn(5), 1, 1)
    with pytest.raises(ValueError, match="vectors"):
        M.mine_neighbours(torch.randn(1, 3), 0, 0)
    with pytest.raises(TypeError, match="vectors"):
        M.mine_neighbours(torch.ones(5, 3, dtype=torch.int64), 1, 1)
    with pytest.raises(ValueError, match="distance"):
        M.mine_neighbours(x, 1, 1, distance="manhattan")
    with pytest.raises(ValueError, match="memory_budget"):
        M.mine_neighbours(x, 1, 1, memory_budget=0)
    with pytest.raises(TypeError, match="compute_dtype"):
        M.mine_neighbours(x, 1, 1, compute_dtype=torch.float64)


def _random_lists(n, kn, kf):
    return (torch.full((n, kn), math.inf), torch.full((n, kn), EMPTY), torch.full((n, kf), -math.inf),
            torch.full((n, kf), EMPTY))


def _sorted_lists(d, kn, kf):
    """The definition, independently of any implementation: per row, the (distance, index)
    pairs of the other columns sorted ascending (near) / by descending distance then ascending
    index (far), padded with the empty slots."""
    n = d.shape[0]
    lists = _random_lists(n, kn, kf)
    for i in range(n):
        cand = [(float(d[i, j]), j) for j in range(d.shape[1]) if j != i]
        near = sorted(cand)[:kn]
        far = sorted(cand, key=lambda t: (-t[0], t[1]))[:kf]
        for col, (v, j) in enumerate(near):
            lists[0][i, col], lists[1][i, col] = v, j
        for col, (v, j) in enumerate(far):
            lists[2][i, col], lists[3][i, col] = v, j
    return lists


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_topk_update_op_matches_definition(backend):
    # Both implementations (the reference is the fallback route for long lists) merged tile by
    # tile, transposed tiles included, against sorted() of the whole distance matrix.
    if backend == "cpp" and not _ext.has_C():
        pytest.skip("fastep._C not built")
    n, kn, kf = 40, 6, 9
    x = torch.randint(0, 4, (n, 3)).float()  # ties
    sq = (x.double() ** 2).sum(1)
    got = _random_lists(n, kn, kf)
    blocks = [(0, 17), (17, 40)]
    with _ext.force_backend(backend):
        for a, b in blocks:
            for c, d in blocks:
                if c < a:
                    continue
                dots = x[a:b] @ x[c:d].t()
                M.topk_update_(dots, sq[a:b], sq[c:d], a, c, *got)
                if c != a:
                    M.topk_update_(dots, sq[a:b], sq[c:d], a, c, *got, transpose=True)
    full = (sq[:, None] + sq[None, :] - 2 * (x @ x.t()).double()).clamp_min(0).float()
    for g, w in zip(got, _sorted_lists(full, kn, kf)):
        assert torch.equal(g, w)


def test_pair_sqdist_op():
    x = torch.randn(7, 1001)
    i = torch.tensor([0, 3, 6, 6])
    j = torch.tensor([1, 3, 0, 2])
    want = R.pair_sqdist_reference(x, x, i, j)
    got = M.pair_sqdist(x, x, i, j)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-12)
    xb = x.bfloat16()
    torch.testing.assert_close(M.pair_sqdist(xb, xb, i, j), R.pair_sqdist_reference(xb, xb, i, j),
                               rtol=1e-13, atol=1e-12)


def test_opcheck():
    x = torch.randn(6, 9)
    i, j = torch.tensor([0, 1, 5]), torch.tensor([2, 2, 0])
    torch.library.opcheck(M.pair_sqdist, (x, x, i, j))
    sq = (x.double() ** 2).sum(1)
    torch.library.opcheck(M.sqdist_tile, (x, x, sq.float(), sq.float()))
    lists = _random_lists(6, 2, 3)
    torch.library.opcheck(M.topk_update_, (x @ x.t(), sq, sq, 0, 0, *lists),
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_pair_sqdist():
    x = torch.randn(5, 8)
    i, j = torch.tensor([0, 4]), torch.tensor([1, 2])
    f = torch.compile(lambda a, b, c: M.pair_sqdist(a, a, b, c) * 2, backend="eager", fullgraph=True)
    torch.testing.assert_close(f(x, i, j), 2 * R.pair_sqdist_reference(x, x, i, j))


def test_sqdist_tile_cpu():
    a, b = torch.randn(9, 20), torch.randn(7, 20)
    sa, sb = (a.double() ** 2).sum(1), (b.double() ** 2).sum(1)
    torch.testing.assert_close(M.sqdist_tile(a, b, sa.float(), sb.float()).double(),
                               torch.cdist(a.double(), b.double()).square(), rtol=1e-5, atol=1e-4)


def test_sample_triplets_reproducible():
    x = torch.randn(50, 6)
    nb = M.mine_neighbours(x, 5, 13)
    t1 = M.sample_triplets(nb, seed=7)
    t2 = M.sample_triplets(nb, seed=7)
    t3 = M.sample_triplets(nb, seed=8)
    assert torch.equal(t1, t2) and not torch.equal(t1, t3)
    assert t1.shape == (50, 3) and torch.equal(t1[:, 0], torch.arange(50))
    for a, p, q in t1.tolist():
        assert p in nb.near_idx[a].tolist() and q in nb.far_idx[a].tolist()
    t4 = M.sample_triplets({"near_idx": nb.near_idx.numpy(), "far_idx": nb.far_idx.numpy()}, n=500, seed=1)
    assert t4.shape == (500, 3)
    assert torch.equal(t4, M.sample_triplets(nb, n=500, seed=1))
    t5 = M.sample_triplets(nb, n=2000, seed=2, k_near=2)
    for a, p, _ in t5.tolist():
        assert p in nb.near_idx[a, :2].tolist()
    # uniform over the near / far sets: each rank position is drawn about equally often
    # (2000 draws: 400 per near position of 5, ~154 per far position of 13; the bounds are
    # ~5 standard deviations, and the seed is fixed)
    t6 = M.sample_triplets(nb, n=2000, seed=3)
    near_pos = (nb.near_idx[t6[:, 0]] == t6[:, 1:2]).float().argmax(1)
    far_pos = (nb.far_idx[t6[:, 0]] == t6[:, 2:3]).float().argmax(1)
    assert (torch.bincount(near_pos, minlength=5) - 400).abs().max() < 5 * (2000 * 0.2 * 0.8) ** 0.5
    assert (torch.bincount(far_pos, minlength=13) - 2000 / 13).abs().max() < 5 * (2000 / 13 * 12 / 13) ** 0.5
    with pytest.raises(ValueError, match="k_near"):
        M.sample_triplets(nb, k_near=6)


# ---- Triton (CUDA, or CPU under TRITON_INTERPRET=1) -----------------------------------------
@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_sqdist_tile(triton_device, dtype):
    from fastep.kernels import mining as K

    gen = torch.Generator().manual_seed(11)
    a = (torch.rand(37, 70, generator=gen) - 0.5)
    b = (torch.rand(45, 70, generator=gen) - 0.5)
    sa, sb = (a.double() ** 2).sum(1), (b.double() ** 2).sum(1)
    out, out_t = K.sqdist_tile(a.to(triton_device, dtype), b.to(triton_device, dtype),
                               sa.float().to(triton_device), sb.float().to(triton_device), write_t=True)
    exact = torch.cdist(a.double(), b.double()).square()
    assert out.dtype == torch.float32 and out.shape == (37, 45)
    torch.testing.assert_close(out_t.cpu(), out.cpu().t())
    # within the certified bound of mining's candidate pass (fp16 / tf32 inputs, fp32 accumulation)
    na, nbn = sa.sqrt(), sb.sqrt()
    qa, qb = (a.double() ** 4).sum(1).pow(0.25), (b.double() ** 4).sum(1).pow(0.25)
    eps = M.error_bound(na[:, None], qa[:, None], nbn[None, :], qb[None, :], 70, dtype, "cuda", "rigorous")
    assert ((out.cpu().double() - exact).abs() <= eps).all()


@pytest.mark.triton
def test_triton_sqdist_tile_diagonal(triton_device):
    from fastep.kernels import mining as K

    a = torch.rand(70, 24) - 0.5
    sa = (a.double() ** 2).sum(1)
    ad = a.to(triton_device)
    out, _ = K.sqdist_tile(ad, ad, sa.float().to(triton_device), sa.float().to(triton_device),
                           diagonal=True)
    out = out.cpu()
    assert torch.equal(out, out.t())  # mirrored, deterministic
    # Within the certified bound of mining's candidate pass: float32 operands go through TF32
    # tensor-core dots on a GPU (truncated operands: on an H200 the diagonal, exactly 0, came out
    # 4e-3 off, past a fixed 1e-3 tolerance), exactly rounded float32 under the interpreter.
    exact = torch.cdist(a.double(), a.double()).square()
    na, qa = sa.sqrt(), (a.double() ** 4).sum(1).pow(0.25)
    eps = M.error_bound(na[:, None], qa[:, None], na[None, :], qa[None, :], 24, torch.float32,
                        triton_device.type, "rigorous")
    assert ((out.double() - exact).abs() <= eps).all()
    if triton_device.type == "cuda":  # the bound is not vacuous: TF32-sized, well below the data
        assert eps.max() < 0.02 * exact.max()


@pytest.mark.triton
def test_triton_tile_feeds_selection(triton_device):
    # The CUDA pipeline's structure (Triton tile + its transpose -> selection), checked end to end.
    from fastep.kernels import mining as K

    x = torch.randint(0, 3, (50, 8)).float()
    sq = (x.double() ** 2).sum(1).float()
    lists = _random_lists(50, 5, 7)
    for a, b in [(0, 25), (25, 50)]:
        for c, d in [(0, 25), (25, 50)]:
            if c < a:
                continue
            t, tt = K.sqdist_tile(x[a:b].to(triton_device), x[c:d].to(triton_device),
                                  sq[a:b].to(triton_device), sq[c:d].to(triton_device), write_t=c != a)
            R.topk_update_reference(t.cpu(), None, None, a, c, *lists)
            if c != a:
                R.topk_update_reference(tt.cpu(), None, None, c, a, *lists)
    ni, nd, fi, fd = R.mine_neighbours_reference(x, 5, 7)
    assert torch.equal(lists[1], ni) and torch.equal(lists[3], fi)


# ---- CUDA (run on a GPU machine) ------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["gauss", "gram_like", "ties", "dups"])
def test_cuda_mining_matches_brute_force(kind):
    x = _data(kind, 700, 300, torch.Generator().manual_seed(1))
    nb = M.mine_neighbours(x.cuda(), 5, 13, block_rows=256)
    _check(nb, x, 5, 13)
    nb = M.mine_neighbours(x, 5, 13, device="cuda", memory_budget=300 * 4 * 200)  # host streaming
    _check(nb, x, 5, 13)


@pytest.mark.cuda
def test_cuda_topk_update_kernel_matches_reference():
    n, kn, kf = 300, 20, 45
    d = torch.randint(0, 50, (n, n)).float()
    got = [t.cuda() for t in _random_lists(n, kn, kf)]
    want = _random_lists(n, kn, kf)
    for a in range(0, n, 128):
        M.topk_update_(d[a:a + 128].cuda(), None, None, a, 0, *got)
    R.topk_update_reference(d, None, None, 0, 0, *want)
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w)


@pytest.mark.cuda
def test_cuda_k_limits():
    x = torch.randn(40, 16)
    nb = M.mine_neighbours(x.cuda(), 39, 39)
    _check(nb, x, 39, 39)


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> the TF32 value a tensor core reads: the low 13 mantissa bits dropped."""
    return (x.view(torch.int32) & ~((1 << 13) - 1)).view(torch.float32)


def test_cuda_float32_bound_covers_tf32_truncation():
    # The CUDA candidate pass's float32 dots read TF32-truncated operands.  On a self tile's
    # diagonal every product is a square, so the truncation errors all have one sign and add up:
    # the worst case for the bound, emulated here exactly (products of TF32 values are exact in
    # float64, K is small).
    worst = 0.0
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        a = torch.rand(70, 24, generator=g) - 0.5
        sa = (a.double() ** 2).sum(1)
        t = _tf32(a).double()
        d = (sa.float().double()[:, None] + sa.float().double()[None, :] - 2 * (t @ t.T)).clamp_min(0)
        exact = torch.cdist(a.double(), a.double()).square()
        na, qa = sa.sqrt(), (a.double() ** 4).sum(1).pow(0.25)
        eps = M.error_bound(na[:, None], qa[:, None], na[None, :], qa[None, :], 24, torch.float32, "cuda",
                            "rigorous")
        worst = max(worst, ((d - exact).abs() / eps).max().item())
    assert worst <= 1.0, f"TF32 truncation exceeds the bound by {worst:.2f}x"
    assert worst > 0.2  # the emulation does exercise the bound (about 0.5 of it)
