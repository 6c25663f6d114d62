"""One BridgeGAN training call -- ``n_critic`` critic updates (WGAN-GP: three gradient penalties
each) and one generator-side update -- timed: seconds per call, seconds per kimg of images read
(``n_critic x batch`` per call) and per kimg of generator-side images (``batch`` per call), and
peak memory (CUDA: ``max_memory_allocated``; CPU: the process's peak resident set).

    OMP_NUM_THREADS=1 python benchmarks/bridgegan_step.py --preset cpu --out benchmarks/results/x.json
    python benchmarks/bridgegan_step.py --preset paper --model paper --batch 48 --n-critic 5 --device cuda

``--preset`` is the run preset (batch, n_critic, loss weights), ``--model`` the network preset
(default: the run preset's).  Random images and valid one-hot labels of the built-in set's 15
attributes (``model.n_attrs`` is set to 15).  On a shared machine the absolute numbers are
inflated: the load average at the start is recorded.
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


def _labels(n: int, g: torch.Generator) -> torch.Tensor:
    from fastep.zoo.bridgegan import builtin_space

    space = builtin_space()
    y = torch.zeros(n, len(space))
    for grp in space.groups:
        sl = space.slice(grp)
        y[torch.arange(n), sl.start + torch.randint(sl.stop - sl.start, (n,), generator=g)] = 1
    return y


def measure(preset: str, model: str, batch, n_critic, device: str, steps: int, warmup: int, amp: bool) -> dict:
    from fastep.zoo.bridgegan.config import PRESETS as MODELS
    from fastep.zoo.bridgegan.pipeline import build_step
    from fastep.zoo.bridgegan.run_config import resolve_run_config

    run = resolve_run_config(preset, {k: v for k, v in {"batch": batch, "n_critic": n_critic, "device": device}.items()
                                      if v is not None})
    from fastep.zoo.bridgegan import builtin_space

    # the labels are the built-in set's (15 attributes); the paper preset's nets have CelebA's 14
    n_attrs = len(builtin_space())
    cfg = MODELS[model](n_attrs=n_attrs) if model else dataclasses.replace(run.model, n_attrs=n_attrs)
    run = dataclasses.replace(run, model=cfg)
    dev = torch.device(device)
    step = build_step(run, dev, 1000)
    g = torch.Generator().manual_seed(0)
    n = run.images_per_step
    x = (torch.rand(n, 3, cfg.resolution, cfg.resolution, generator=g) * 2 - 1).to(dev)
    y = _labels(n, g).to(dev)
    idx = torch.arange(n, device=dev)
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if amp else torch.autocast(dev.type, enabled=False)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with ctx:
        for _ in range(warmup):
            step(x, y, idx)
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            out = step(x, y, idx)
        sync()
        dt = (time.perf_counter() - t0) / steps
    finite = all(bool(torch.isfinite(v)) for v in out.values())
    mem = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"preset": preset, "model": model or preset, "resolution": cfg.resolution, "batch": run.batch,
            "n_critic": run.n_critic, "device": str(dev), "amp_bf16": amp, "threads": torch.get_num_threads(),
            "s_per_call": dt, "s_per_kimg_read": dt / n * 1000, "s_per_kimg_generator": dt / run.batch * 1000,
            "peak_mem_mib": mem, "peak_mem_kind": "cuda_max_allocated" if dev.type == "cuda" else "process_max_rss",
            "losses_finite": finite}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", help="run preset (paper or cpu)")
    p.add_argument("--model", default=None, help="network preset (paper, cpu, half, tiny; default the run preset's)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--n-critic", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for the result (default: print only)")
    p.add_argument("--jsonl", default=None, help="also append the result as one JSON line to this file")
    a = p.parse_args(argv)
    res = measure(a.preset, a.model, a.batch, a.n_critic, a.device, a.steps, a.warmup, a.amp)
    res.update({"load_avg_at_start": os.getloadavg()[0], "torch": torch.__version__, "platform": platform.platform(),
                "cpu_count": os.cpu_count(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    if a.jsonl:
        with open(a.jsonl, "a") as f:
            f.write(json.dumps({"system": "bridgegan", **res}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
