"""Scaling of fastep's training step: time/kimg against batch size and resolution (Ours v3).

    python benchmarks/scaling.py --out benchmarks/results            # CUDA: batch 8..128 at 256,
                                                                     # resolution 128/256/512 at 8
    fastep bench --scaling ...                                       # the same, after the suite

Every point builds a fresh fast-path step (torch.compile, bf16, channels_last, fused Adam; no
memory cap: this is the unconstrained throughput), compiles it for that shape, then times
``--steps`` synchronised steps after ``--warmup`` (median).  A point that runs out of memory is
recorded as such.  Writes ``scaling_<tag>.json`` and ``scaling_<tag>.png`` (matplotlib, Agg)
with the arithmetic floor (0.38 s/kimg at 256 x 256 on an H100, scaled with the pixel count;
``fastep.bench.paper.FLOOR_S_PER_KIMG``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(HERE.parent))


def _paper():
    from fastep.bench import paper
    return paper


def measure_point(approach: str, batch: int, resolution: int, device: str, *, warmup: int,
                  steps: int, compile: Optional[bool] = None, impl: str = "fastep",
                  model_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Time one (batch, resolution) point; OOM is recorded, not raised."""
    from fastep import bench

    bench.reset_compiler()
    bench.free_memory()
    point: Dict[str, Any] = {"approach": approach, "impl": impl, "batch": batch,
                             "resolution": resolution}
    step = A = B = None
    try:
        step = bench.timing.make_step(approach, batch, resolution, impl, device, compile=compile,
                               model_overrides=model_overrides)
        A, B = bench.random_batch(batch, resolution, device)
        point.update(bench.time_steps(step, A, B, device, warmup=warmup, repeats=steps))
        point["status"] = "ok"
    except Exception as err:  # noqa: BLE001
        if not bench.is_oom(err):
            point["status"] = "error"
            point["error"] = f"{type(err).__name__}: {err}"[:300]
        else:
            point["status"] = "OOM"
    finally:
        del step, A, B
        bench.reset_compiler()
        bench.free_memory()
    return point


def run_sweep(*, device: str, batches: List[int], resolutions: List[int], base_resolution: int,
              base_batch: int, warmup: int, steps: int, compile: Optional[bool] = None,
              approach: str = "ours_v3", deadline: Optional[float] = None,
              model_overrides: Optional[Dict[str, Any]] = None, log=print) -> Dict[str, Any]:
    """Batch sweep at ``base_resolution`` and resolution sweep at ``base_batch``."""
    todo = [("batch", b, base_resolution) for b in batches]
    todo += [("resolution", base_batch, r) for r in resolutions]
    done: Dict[tuple, Dict[str, Any]] = {}
    points = []
    last = 0.0  # wall seconds of the previous point (compile included)
    for sweep, b, r in todo:
        if (b, r) in done:  # shared point of both sweeps: measure once
            points.append({**done[(b, r)], "sweep": sweep})
            continue
        if deadline and time.time() + last > deadline:
            points.append({"sweep": sweep, "approach": approach, "batch": b, "resolution": r,
                           "status": "skipped (time budget)"})
            continue
        t0 = time.time()
        p = measure_point(approach, b, r, device, warmup=warmup, steps=steps, compile=compile,
                          model_overrides=model_overrides)
        last = p["wall_s"] = time.time() - t0
        done[(b, r)] = p
        points.append({**p, "sweep": sweep})
        log(f"scaling {approach} batch {b} res {r}: {p['status']}"
            + (f" {p['s_per_kimg']:.4g} s/kimg (first call {p['first_call_s']:.1f} s)"
               if p["status"] == "ok" else ""))
    paper = _paper()
    return {"approach": approach, "impl": "fastep", "device": device,
            "base_resolution": base_resolution, "base_batch": base_batch,
            "warmup": warmup, "steps": steps, "model_overrides": model_overrides or {},
            "floor_s_per_kimg_256": paper.FLOOR_S_PER_KIMG, "points": points}


def plot(sweep: Dict[str, Any], path) -> Path:
    """Two panels: s/kimg vs batch (log2 x) and vs resolution, with the arithmetic floor."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = sweep.get("floor_s_per_kimg_256")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, other in ((axes[0], "batch", "resolution"), (axes[1], "resolution", "batch")):
        pts = [p for p in sweep["points"] if p.get("sweep") == key]
        ok = [p for p in pts if p.get("status") == "ok"]
        xs = [p[key] for p in ok]
        ax.plot(xs, [p["s_per_kimg"] for p in ok], "o-", label=f"fastep {sweep['approach']}")
        for p in pts:
            if p.get("status") != "ok":
                ax.axvline(p[key], color="red", alpha=0.3, linestyle=":")
                ax.annotate(p.get("status", "?"), (p[key], 0.98), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", fontsize=7, color="red")
        if floor and pts:
            allx = sorted({p[key] for p in pts})
            if key == "batch":
                res = sweep.get("base_resolution", 256)
                ax.plot(allx, [floor * (res / 256) ** 2] * len(allx), "k--", label="arithmetic floor (H100 bf16)")
            else:
                ax.plot(allx, [floor * (x / 256) ** 2 for x in allx], "k--", label="arithmetic floor (H100 bf16)")
        if key == "batch":
            ax.set_xscale("log", base=2)
            ax.set_title(f"time/kimg vs batch ({sweep.get('base_resolution')} x "
                         f"{sweep.get('base_resolution')})")
        else:
            ax.set_xscale("log", base=2)
            ax.set_title(f"time/kimg vs resolution (batch {sweep.get('base_batch')})")
        if xs:
            ax.set_xticks(sorted(set(xs)))
            ax.set_xticklabels([str(x) for x in sorted(set(xs))])
        ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("s / 1000 images")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"fastep training step scaling ({sweep.get('device_name', sweep.get('device'))})",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ints(s: str) -> List[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--approach", default="ours_v3")
    ap.add_argument("--batches", type=_ints, default=[8, 16, 32, 64, 128])
    ap.add_argument("--resolutions", type=_ints, default=[128, 256, 512])
    ap.add_argument("--resolution", type=int, default=256, help="resolution of the batch sweep")
    ap.add_argument("--batch", type=int, default=8, help="batch of the resolution sweep")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", dest="compile", action="store_true", default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--deadline", type=float, default=None, help="epoch seconds")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds; points that would start later are skipped (and listed)")
    ap.add_argument("--model-overrides", type=json.loads, default=None,
                    help='ModelConfig fields as JSON, e.g. \'{"g_nf": 8}\' (the quick mode\'s narrow nets)')
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default=None, help="file name tag (default: the device)")
    args = ap.parse_args(argv)

    from fastep import bench

    if args.time_budget:
        args.deadline = min(args.deadline or float("inf"), time.time() + args.time_budget)
    sweep = run_sweep(device=args.device, batches=args.batches, resolutions=args.resolutions,
                      base_resolution=args.resolution, base_batch=args.batch, warmup=args.warmup,
                      steps=args.steps, compile=args.compile, approach=args.approach,
                      deadline=args.deadline, model_overrides=args.model_overrides)
    sweep["env"] = bench.env_info(args.device)
    sweep["device_name"] = sweep["env"].get("device")
    tag = args.tag or args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = plot(sweep, out / f"scaling_{tag}.png")
    sweep["png"] = str(png)
    (out / f"scaling_{tag}.json").write_text(json.dumps(sweep, indent=2, default=str))
    print(f"scaling: wrote {out / f'scaling_{tag}.json'} and {png}")
    return 0 if any(p.get("status") == "ok" for p in sweep["points"]) else 1


if __name__ == "__main__":
    sys.exit(main())
