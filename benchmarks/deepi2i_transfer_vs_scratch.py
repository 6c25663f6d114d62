"""DeepI2I on the built-in data: transfer from the stand-in BigGAN against training from
scratch, with all and with 10 % of the target images, judged by the style oracle.

    OMP_NUM_THREADS=1 python benchmarks/deepi2i_transfer_vs_scratch.py --base runs/deepi2i-cpu \\
        --kimg 2 --out benchmarks/results/deepi2i-cpu-transfer-vs-scratch.json

``--base`` is a finished ``fastep train --system deepi2i --preset cpu`` run: its stage-biggan
folder is what the transfer runs start from, and its target set (and cached oracle) is shared.
Each variant is the same preset's transfer stage, ``--kimg`` long, under ``BASE/compare/``.
The step-0 row is the transfer's start (the BigGAN with a fresh adaptor).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

VARIANTS = {"transfer, 100%": ("transfer", 1.0), "transfer, 10%": ("transfer", 0.1),
            "scratch, 100%": ("scratch", 1.0), "scratch, 10%": ("scratch", 0.1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="a finished deepi2i run folder (cpu preset)")
    p.add_argument("--kimg", type=float, default=2.0, help="transfer length of every variant")
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--small-oracle", action="store_true",
                   help="judge with the small 32-px oracle of deepi2i_small_oracle_eval.py (fast; weak mask head)")
    a = p.parse_args(argv)
    from fastep.io import write_json_atomic
    from fastep.zoo.deepi2i.evaluate import _step0_translator, evaluate_translator, format_table
    from fastep.zoo.deepi2i.pipeline import prepare_data, run_pipeline
    from fastep.zoo.deepi2i.run_config import resolve_run_config
    from fastep.eval.oracle import load_or_train_oracle
    import fastep.zoo as zoo

    from deepi2i_small_oracle_eval import small_oracle_config

    oracle_cfg = small_oracle_config() if a.small_oracle else None
    base = Path(a.base)
    results, walls = {}, {}
    for name, (mode, frac) in VARIANTS.items():
        out = base / "compare" / name.replace(", ", "-").replace("%", "pct")
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "data").exists():
            os.symlink(os.path.relpath(base / "data", out), out / "data")  # one target set, one oracle
        run = resolve_run_config("cpu", {"out": str(out), "stages": ("transfer",), "transfer_kimg": a.kimg,
                                         "biggan": str(base / "biggan" / "weights"), "step.mode": mode,
                                         "target_fraction": frac, "progress": a.progress,
                                         "resume": (out / "final.pt").is_file()})
        t0 = time.perf_counter()
        run_pipeline(run)
        walls[name] = time.perf_counter() - t0
        _, target = prepare_data(run)
        oracle = load_or_train_oracle(target, oracle_cfg) if oracle_cfg else load_or_train_oracle(target)
        results[name] = evaluate_translator(zoo.load(out / "final.pt"), target, run.classes, oracle)
        if name == "transfer, 100%":
            results["step 0 (BigGAN + fresh adaptor)"] = evaluate_translator(_step0_translator(run), target,
                                                                             run.classes, oracle)
        print(f"{name}: done in {walls[name]:.0f} s", flush=True)
    table = format_table(results)
    print(table)
    if a.out:
        write_json_atomic({"kimg": a.kimg, "small_oracle": a.small_oracle, "base": str(base), "wall_s": walls, "results": results,
                           "table": table, "load_avg": os.getloadavg()}, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
