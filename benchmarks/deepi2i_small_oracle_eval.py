"""DeepI2I run folders judged by a small style oracle (32 px, palette-grade: trains in about half
a minute on one core, where the default 64-px oracle takes ten minutes or more), at step 0 and
after the transfer:

    OMP_NUM_THREADS=1 python benchmarks/deepi2i_small_oracle_eval.py runs/v2-cpu runs/v2-cpu-tuned \\
        --max-inputs 100 --out benchmarks/results/deepi2i-cpu-small-oracle.json

Every folder is a finished ``fastep train --system deepi2i`` run; each is judged on its own
target set (the same one when the runs share seed and sizes).  The small oracle's mask head is
weak (held-out IoU ~0.6): the oracle-free boundary F-score is the sharper content measure.
"""
from __future__ import annotations

import argparse
import os
import time


def small_oracle_config():
    """The small oracle's settings (palette-grade, about half a minute on one core)."""
    from fastep.eval.oracle import OracleConfig

    return OracleConfig(n_images=1200, steps=300, width=16, max_resolution=32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished deepi2i run folders")
    p.add_argument("--max-inputs", type=int, default=100)
    p.add_argument("--out", default=None, help="JSON file for the results")
    a = p.parse_args(argv)
    import fastep.zoo as zoo
    from fastep.config import from_dict
    from fastep.eval.oracle import load_or_train_oracle
    from fastep.io import write_json_atomic
    from fastep.train.checkpoint import checkpoint_config, load_checkpoint
    from fastep.zoo.deepi2i.evaluate import _step0_translator, evaluate_translator, format_table
    from fastep.zoo.deepi2i.pipeline import prepare_data
    from fastep.zoo.deepi2i.run_config import RunConfig

    small = small_oracle_config()
    rows, walls = {}, {}
    for out in a.runs:
        t0 = time.perf_counter()
        run = from_dict(RunConfig, checkpoint_config(load_checkpoint(os.path.join(out, "final.pt")), "run"),
                        what="deepi2i run config")
        _, target = prepare_data(run)
        oracle = load_or_train_oracle(target, small)
        kw = dict(max_inputs=a.max_inputs)
        if run.step.mode == "transfer":
            rows[f"{out} step 0"] = evaluate_translator(_step0_translator(run), target, run.classes, oracle, **kw)
        rows[f"{out} final"] = evaluate_translator(zoo.load(os.path.join(out, "final.pt")), target, run.classes,
                                                   oracle, **kw)
        walls[out] = time.perf_counter() - t0
        print(f"{out}: {walls[out]:.0f} s (oracle held-out {oracle.held_out})", flush=True)
    table = format_table(rows)
    print(table)
    r = next(iter(rows.values()))
    print(f"references: chance {r['chance']:.3f}; content IoU unrelated {r['content_random']:.3f}, input "
          f"{r['content_input']:.3f}; boundary F unrelated {r['boundary_f_random']:.3f}, input "
          f"{r['boundary_f_input']:.3f}")
    if a.out:
        write_json_atomic({"runs": a.runs, "oracle": small.__dict__, "wall_s": walls, "results": rows,
                           "table": table, "load_avg": os.getloadavg()}, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
