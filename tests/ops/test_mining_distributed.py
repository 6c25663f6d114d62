"""Distributed exact mining (``mine_neighbours(..., process_group=...)``) with 2 and 3 gloo
processes on CPU: the result equals one process's bit for bit (N not divisible by the world size,
duplicated vectors, ranks without a full tile or without any tile), a rank stopped mid-run
resumes from its checkpoint while the finished ranks redo nothing, ranks that see different
inputs stop with one line, and a rank that dies makes the others fail with a message."""
import datetime
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastep.ops import mining as M
from fastep.ops import mining_distributed as MD

sys.path.insert(0, str(Path(__file__).parent))

BUDGET = 1 << 20


def _cases(root):
    """name -> (npy path, k_near, k_far, kwargs): written once by the parent."""
    g = torch.Generator().manual_seed(7)
    base = torch.rand(37, generator=g) + 1
    cases = {
        # N = 61: not divisible by 2 or 3; strongly correlated like Gram vectors
        "gram_like": (base + 0.05 * torch.rand(61, 37, generator=g), 5, 13, dict(block_rows=16)),
        # every vector three times: ties broken by index, exact re-ranking and fallbacks
        "dups": (torch.randn(17, 9, generator=g).repeat(3, 1)[torch.randperm(51, generator=g)], 4, 6,
                 dict(block_rows=12, margin=2)),
        # 2 row blocks (8 + 2 rows), 3 tile pairs: with 3 ranks one of them gets only the 2 x 2 tile
        "edge": (torch.randn(10, 5, generator=g), 3, 4, dict(block_rows=8)),
        # 1 tile pair: the other ranks compute nothing and only merge and certify
        "one_tile": (torch.randn(7, 4, generator=g), 2, 3, dict(block_rows=8)),
        # other options: a transform (cosine), every pair re-ranked exactly, no near list
        "cosine_all_far_only": (torch.randn(45, 11, generator=g), 0, 5,
                                dict(block_rows=10, distance="cosine", rerank="all")),
    }
    out = {}
    for name, (x, kn, kf, kw) in cases.items():
        path = Path(root) / f"{name}.npy"
        np.save(path, x.numpy())
        out[name] = (str(path), kn, kf, dict(kw, memory_budget=BUDGET, device="cpu"))
    return out


def _flat(nb):
    return [nb.near_idx, nb.near_dist, nb.far_idx, nb.far_dist]


def _worker(rank, world, rdv, root):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        out = {}
        for name, (path, kn, kf, kw) in _load_cases(root).items():
            nb = M.mine_neighbours(path, kn, kf, process_group=dist.group.WORLD, **kw)
            out[name] = (_flat(nb), {k: nb.info[k] for k in ("tiles", "tiles_rank", "tiles_computed", "bytes_exchanged")})
        # different k on one rank: every rank stops with the same one-line error
        path, kn, kf, kw = _load_cases(root)["gram_like"]
        try:
            M.mine_neighbours(path, kn, kf + (rank == world - 1), process_group=dist.group.WORLD, **kw)
            out["mismatch"] = "no error"
        except ValueError as err:
            out["mismatch"] = str(err)
        # resume: the last rank stops after one tile (checkpointed); the others finish their run
        # and fail at the merge (8 s timeout: long enough for a loaded machine to reach it); then
        # everybody runs again
        work = Path(root) / "work"
        short = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=8))
        MD._STOP_AFTER_TILES = 1 if rank == world - 1 else None
        try:
            M.mine_neighbours(path, kn, kf, process_group=short, work_dir=work, **kw)
            out["stopped"] = "no error"
        except (MD._Stopped, MD.DistributedMiningError) as err:
            out["stopped"] = f"{type(err).__name__}: {err}"
        MD._STOP_AFTER_TILES = None
        again = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=60))
        nb = M.mine_neighbours(path, kn, kf, process_group=again, work_dir=work, **kw)
        out["resumed"] = (_flat(nb), {k: nb.info[k] for k in ("tiles_rank", "tiles_computed")})
        torch.save(out, os.path.join(root, f"out{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _load_cases(root):
    import json
    return {k: tuple(v) for k, v in json.loads((Path(root) / "cases.json").read_text()).items()}


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def dist_run(request, tmp_path_factory):
    import json
    world = request.param
    root = tmp_path_factory.mktemp(f"mine_dist{world}")
    cases = _cases(root)
    (root / "cases.json").write_text(json.dumps(cases))
    mp.spawn(_worker, args=(world, str(root / "rdv"), str(root)), nprocs=world, join=True)
    outs = [torch.load(root / f"out{r}.pt", weights_only=False) for r in range(world)]
    return world, cases, outs


def _single(path, kn, kf, kw):
    return M.mine_neighbours(path, kn, kf, **kw)


@pytest.mark.parametrize("name", ["gram_like", "dups", "edge", "one_tile", "cosine_all_far_only"])
def test_equals_one_process_bit_for_bit(dist_run, name):
    world, cases, outs = dist_run
    path, kn, kf, kw = cases[name]
    want = _flat(_single(path, kn, kf, kw))
    for rank, out in enumerate(outs):
        got, info = out[name]
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert g.numpy().tobytes() == w.numpy().tobytes(), (name, rank)
    tiles = [out[name][1]["tiles_rank"] for out in outs]
    assert sum(tiles) == outs[0][name][1]["tiles"]  # every tile computed once
    if name == "one_tile":
        assert sorted(tiles) == [0] * (world - 1) + [1]
    assert outs[0][name][1]["bytes_exchanged"] > 0


def test_a_rank_with_no_full_tile():
    # the "edge" case's split: 3 tile pairs of 64, 16 and 4 cells; with 3 ranks rank 1 gets
    # nothing and rank 2 only the two edge tiles, with 2 ranks rank 1 only the edge tiles
    pairs = [(0, 0), (0, 8), (8, 8)]
    assert MD.tile_shares(pairs, 10, 8, 3) == [(0, 1), (1, 1), (1, 3)]
    assert MD.tile_shares(pairs, 10, 8, 2) == [(0, 1), (1, 3)]
    assert MD.tile_shares([(0, 0)], 7, 8, 3) == [(0, 1), (1, 1), (1, 1)]
    # equal work: 10 equal tiles over 3 ranks
    assert MD.tile_shares([(0, 8 * j) for j in range(10)], 80, 8, 3) == [(0, 4), (4, 7), (7, 10)]
    assert MD.row_shares(61, 3) == [(0, 20), (20, 40), (40, 61)]
    assert MD.row_shares(61, 2, align=16) == [(0, 32), (32, 61)]


def test_different_inputs_stop_every_rank_with_one_line(dist_run):
    world, _, outs = dist_run
    for out in outs:
        msg = out["mismatch"]
        assert "see different inputs" in msg and str(world - 1) in msg and "\n" not in msg


def test_stopped_rank_resumes_and_finished_ranks_redo_nothing(dist_run):
    world, cases, outs = dist_run
    path, kn, kf, kw = cases["gram_like"]
    want = _flat(_single(path, kn, kf, kw))
    assert outs[-1]["stopped"].startswith("_Stopped")
    for out in outs[:-1]:  # the others waited at the merge and got a message, not a hang
        assert out["stopped"].startswith("DistributedMiningError") and "merging" in out["stopped"]
    for rank, out in enumerate(outs):
        got, info = out["resumed"]
        assert all(g.numpy().tobytes() == w.numpy().tobytes() for g, w in zip(got, want))
        expect = info["tiles_rank"] - 1 if rank == world - 1 else 0
        assert info["tiles_computed"] == expect, (rank, info)


# ---- a rank that dies -------------------------------------------------------------------------
def _dying_worker(rank, world, rdv, path, result):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    if rank == 1:
        def die(*a, **k):
            os._exit(17)
        M._candidate_pass = die
    t0 = time.monotonic()
    try:
        M.mine_neighbours(path, 3, 3, process_group=dist.group.WORLD, block_rows=8, device="cpu",
                          memory_budget=BUDGET)
        msg = "no error"
    except MD.DistributedMiningError as err:
        msg = str(err)
    Path(result).write_text(f"{time.monotonic() - t0:.1f}\n{msg}")
    os._exit(0)


def test_a_dead_rank_makes_the_others_fail_with_a_message(tmp_path):
    x = torch.randn(40, 6)
    np.save(tmp_path / "x.npy", x.numpy())
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_dying_worker, args=(r, 2, str(tmp_path / "rdv"), str(tmp_path / "x.npy"),
                                                      str(tmp_path / "result.txt"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung after its peer died"
    assert procs[1].exitcode == 17
    seconds, msg = (tmp_path / "result.txt").read_text().split("\n", 1)
    assert "rank 0" in msg and "another rank stopped, died or timed out" in msg, msg
    assert "\n" not in msg
