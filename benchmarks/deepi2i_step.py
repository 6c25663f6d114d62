"""DeepI2I's phase-2 training step: seconds per kimg and peak memory at a run preset.

    OMP_NUM_THREADS=1 python benchmarks/deepi2i_step.py --preset cpu --out benchmarks/results/deepi2i-step-cpu.json

One :class:`~fastep.zoo.deepi2i.TransferStep` update = one D update and one G/adaptor update,
each over ``micro_batch x accumulations`` images (the preset's), on random images, after the
phase-1 updates (``phase1_steps`` is set to 0 here).  Peak memory: CUDA's allocator peak on a
GPU; on CPU the process's peak resident set (``ru_maxrss``) after the timed updates, next to
the value before the step was built (the difference is the step's share, roughly).  On a
shared machine the times are inflated: the JSON records the load average.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", help="deepi2i run preset (paper, gpu, cpu)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    p.add_argument("--jsonl", default=None, help="also append the result as one JSON line to this file")
    a = p.parse_args(argv)
    from fastep.zoo.deepi2i import TransferStep, build_nets
    from fastep.zoo.deepi2i.run_config import resolve_run_config

    run = resolve_run_config(a.preset)
    cfg = dataclasses.replace(run.step, phase1_steps=0)
    dev = torch.device(a.device)
    rss0 = _rss_mib()
    torch.manual_seed(0)
    step = TransferStep(build_nets(run.model), cfg, dev)
    g = torch.Generator().manual_seed(0)
    r = run.model.resolution
    x = (torch.rand(cfg.batch, 3, r, r, generator=g) * 2 - 1).to(dev)
    y = torch.randint(0, run.model.n_classes, (cfg.batch,), generator=g).to(dev)
    for _ in range(a.warmup):
        step(x, y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        losses = step(x, y)
    float(losses["d_loss"])  # one sync at the end
    dt = time.perf_counter() - t0
    res = {
        "preset": a.preset, "device": str(dev), "resolution": r, "g_ch": run.model.g_ch,
        "n_classes": run.model.n_classes, "micro_batch": cfg.micro_batch, "accumulations": cfg.accumulations,
        "steps": a.steps, "s_per_update": dt / a.steps, "s_per_kimg": dt / (a.steps * cfg.batch) * 1000,
        "img_per_s": a.steps * cfg.batch / dt, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "load_avg": os.getloadavg(),
    }
    if dev.type == "cuda":
        res["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        res["peak_rss_mib"], res["rss_before_mib"] = _rss_mib(), rss0
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    if a.jsonl:
        with open(a.jsonl, "a") as f:
            f.write(json.dumps({"system": "deepi2i", **res}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
