"""Compile time of the training step, approach after approach, cold and warm.

    python benchmarks/compile_times.py --device cpu --out compile_times.json

Runs the six approaches (Ours v3 first) in one process, each a fresh step whose first call
compiles (``torch._dynamo.reset()`` between them, as the benchmark suite does), and records the
first-call time of each.  ``--runs 2`` repeats the whole sequence in a second process on the same
cache folder: the warm run.  The cache folder is ``--cache`` (a fresh temporary one by default,
so the first run is cold).  ``--scope`` picks TrainConfig.compile_scope ("network": G.encode,
G.decode, E, D and the VGG backbone as separate graphs, shared by the approaches; "step": one
graph per approach).  Sizes default to the CPU smoke model (narrow nets, full depth).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APPROACHES = ("ours_v3", "ours_v4", "ours_v2", "ours_v1", "bicycle_v1", "bicycle_v2")


def _one_run(device: str, resolution: int, batch: int, scope: str, approaches, full_width: bool):
    import torch

    from fastep.bench import random_batch, reset_compiler
    from fastep.compiler import use_cache_dir
    from fastep.zoo.step.config import LossConfig, ModelConfig, TrainConfig
    from fastep.zoo.step.train_step import make_train_step

    use_cache_dir()
    model = ModelConfig(resolution=resolution) if full_width else \
        ModelConfig(resolution=resolution, g_nf=8, e_nf=8, d_nf=8)
    out = []
    for name in approaches:
        reset_compiler()
        tc = TrainConfig(stage=3, approach=name, batch_size=batch, resolution=resolution, device=device,
                         compile=True, compile_scope=scope)
        step = make_train_step(tc, model, device, loss_cfg=LossConfig.preset(name, perceptual_backbone="random"))
        A, B = random_batch(batch, resolution, device)
        t0 = time.perf_counter()
        step(A, B)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        step(A, B)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out.append({"approach": name, "first_call_s": first, "second_call_s": time.perf_counter() - t0})
        print(json.dumps(out[-1]), flush=True)
    reset_compiler()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--scope", default="network", choices=["network", "step"])
    p.add_argument("--approaches", default=",".join(APPROACHES))
    p.add_argument("--full-width", action="store_true", help="the paper's widths (default: narrow nets)")
    p.add_argument("--runs", type=int, default=2, help="1: cold only; 2: cold, then warm in a new process")
    p.add_argument("--cache", help="cache folder (default: a fresh temporary one)")
    p.add_argument("--out", help="write the results here (JSON)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    approaches = [s.strip() for s in a.approaches.split(",") if s.strip()]
    unknown = [s for s in approaches if s not in APPROACHES]
    if unknown:
        p.error(f"--approaches: unknown {', '.join(unknown)} (choose from {', '.join(APPROACHES)})")
    if a.child:
        res = _one_run(a.device, a.resolution, a.batch, a.scope, approaches, a.full_width)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    cache = a.cache or tempfile.mkdtemp(prefix="fastep-compile-cache-")
    env = dict(os.environ, FASTEP_CACHE=cache)
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        env.pop(var, None)
    runs = []
    for i in range(a.runs):
        cmd = [sys.executable, __file__, "--child", "--device", a.device, "--resolution", str(a.resolution),
               "--batch", str(a.batch), "--scope", a.scope, "--approaches", ",".join(approaches)]
        if a.full_width:
            cmd.append("--full-width")
        print(f"== run {i + 1} ({'cold' if i == 0 and not a.cache else 'warm'}), cache {cache}", flush=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        sys.stderr.write(proc.stderr[-2000:] if proc.returncode else "")
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(proc.stdout[-2000:])
            return 1
        res = json.loads(line[len("RESULT "):])
        total = sum(r["first_call_s"] for r in res)
        first = res[0]["first_call_s"]
        runs.append({"run": i + 1, "cases": res, "total_first_call_s": total})
        for r in res:
            print(f"  {r['approach']:11s} first call {r['first_call_s']:7.1f} s  ({r['first_call_s'] / first:5.0%} of "
                  f"the first)  next step {r['second_call_s']:.2f} s", flush=True)
        print(f"  total {total:.1f} s", flush=True)
    report = {"device": a.device, "resolution": a.resolution, "batch": a.batch, "scope": a.scope,
              "full_width": a.full_width, "cache": cache, "runs": runs}
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
