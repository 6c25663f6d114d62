"""The CPU preset's training step, fast paths against eager: images/s of one stage-3 step of the
``cpu`` run preset (its model, batch and loss terms) with each CPU speed switch.

    OMP_NUM_THREADS=2 python benchmarks/cpu_step.py --out benchmarks/results/cpu-step.json

Variants: eager fp32 (the baseline), channels_last, torch.compile (inductor, CPU), both; each at
1 and 2 intra-op threads.  The compile time is reported separately (paid once per run).  On a
shared machine the absolute numbers are inflated: compare within one file.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def measure(run, *, channels_last: bool, compile: bool, threads: int, steps: int, warmup: int) -> dict:
    from fastep.zoo.step.config import TrainConfig
    from fastep.zoo.step.train_step import make_train_step

    torch.set_num_threads(threads)
    res = run.model.resolution
    loss = run.loss_config(perceptual_backbone="random")
    tc = TrainConfig(stage=3, approach=run.approach, batch_size=run.batch, resolution=res, device="cpu",
                     compile=compile, amp=False, channels_last=channels_last, ema=run.ema)
    torch.manual_seed(0)
    step = make_train_step(tc, run.model, "cpu", loss_cfg=loss)
    g = torch.Generator().manual_seed(0)
    A = torch.rand(run.batch, 3, res, res, generator=g) * 2 - 1
    B = torch.rand(run.batch, 3, res, res, generator=g) * 2 - 1
    t0 = time.perf_counter()
    for _ in range(warmup):
        step(A, B)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step(A, B)
    dt = time.perf_counter() - t0
    return {"channels_last": channels_last, "compile": compile, "threads": threads,
            "img_per_s": run.batch * steps / dt, "ms_per_step": 1000 * dt / steps, "warmup_s": first}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    a = p.parse_args(argv)
    from fastep.zoo.step.run_config import resolve_run_config

    run = resolve_run_config("cpu")
    rows = []
    for threads in (int(t) for t in a.threads.split(",")):
        for cl, comp in ((False, False), (True, False), (False, True), (True, True)):
            if comp and a.no_compile:
                continue
            r = measure(run, channels_last=cl, compile=comp, threads=threads, steps=a.steps, warmup=a.warmup)
            rows.append(r)
            print(f"threads {threads}  channels_last {cl!s:5}  compile {comp!s:5}  "
                  f"{r['img_per_s']:7.1f} img/s  {r['ms_per_step']:7.1f} ms/step  (warm-up {r['warmup_s']:.1f} s)",
                  flush=True)
    base = {t: next(r for r in rows if r["threads"] == t and not r["channels_last"] and not r["compile"])
            for t in {r["threads"] for r in rows}}
    for r in rows:
        r["speedup_vs_eager"] = r["img_per_s"] / base[r["threads"]]["img_per_s"]
    result = {"preset": "cpu", "batch": run.batch, "resolution": run.model.resolution, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "rows": rows}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
