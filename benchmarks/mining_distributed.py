"""Distributed exact mining against one process: time, bytes exchanged, equal output.

    python benchmarks/mining_distributed.py --n 2000 --d 8192 --world 2 [--json out.json]

Writes synthetic style-like vectors (the generator of benchmarks/test_bench_mining.py) to a
float32 .npy, mines it in one process and then with ``--world`` gloo processes on this machine
(``mine_neighbours(..., process_group=...)``, the same memory budget), each timed between
barriers without process start-up, and checks that both results are byte-identical.  Reports
seconds, the payload the ranks sent each other (``info["bytes_exchanged"]``) and the tiles per
rank.  On CPU the ranks share the machine's cores, so the time shows the overhead of sharding
(merge, exchange, per-rank streaming), not a speed-up; on K GPUs the candidate pass divides by K.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

K_NEAR, K_FAR = 5, 13


def _flat(nb):
    return b"".join(t.numpy().tobytes() for t in (nb.near_idx, nb.near_dist, nb.far_idx, nb.far_dist))


def _worker(rank, world, rdv, path, budget, threads, result):
    from fastep.ops.mining import mine_neighbours

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    try:
        dist.barrier()
        t0 = time.perf_counter()
        nb = mine_neighbours(path, K_NEAR, K_FAR, device="cpu", memory_budget=budget,
                             process_group=dist.group.WORLD)
        dist.barrier()
        seconds = time.perf_counter() - t0
        if rank == 0:
            torch.save(dict(seconds=seconds, flat=_flat(nb), info=nb.info), result)
        tiles = torch.tensor([nb.info["tiles_rank"]])
        gathered = [torch.zeros_like(tiles) for _ in range(world)]
        dist.all_gather(gathered, tiles)
        if rank == 0:
            r = torch.load(result, weights_only=False)
            r["tiles_per_rank"] = [int(t) for t in gathered]
            torch.save(r, result)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--d", type=int, default=8192)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--budget-mib", type=float, default=512.0, help="memory budget of every process")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from fastep.ops.mining import mine_neighbours
    from test_bench_mining import synthetic_gram_vectors

    budget = int(args.budget_mib * (1 << 20))
    threads = max(1, torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vectors.npy")
        np.save(path, synthetic_gram_vectors(args.n, args.d).numpy())
        t0 = time.perf_counter()
        one = mine_neighbours(path, K_NEAR, K_FAR, device="cpu", memory_budget=budget)
        t_one = time.perf_counter() - t0
        result = os.path.join(tmp, "dist.pt")
        mp.spawn(_worker, args=(args.world, os.path.join(tmp, "rdv"), path, budget,
                                max(1, threads // args.world), result), nprocs=args.world, join=True)
        r = torch.load(result, weights_only=False)
    same = r["flat"] == _flat(one)
    info = r["info"]
    rep = dict(n=args.n, d=args.d, world=args.world, block_rows=info["block_rows"], tiles=info["tiles"],
               tiles_per_rank=r["tiles_per_rank"], seconds_one_process=round(t_one, 3),
               seconds_distributed=round(r["seconds"], 3), bytes_exchanged=info["bytes_exchanged"],
               bytes_exchanged_per_row=round(info["bytes_exchanged"] / args.n, 1),
               byte_identical=same, threads_per_process=max(1, threads // args.world),
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    print(json.dumps(rep, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1) + "\n")
    if not same:
        print("mining_distributed: the distributed result differs from one process's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
