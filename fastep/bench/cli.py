"""The ``fastep bench`` command: options, the pytest child running the suite, the report."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .config import (BENCH_DIR, CONFIG_ENV, DEFAULT_CUDA_BUDGET_S, REPO_ROOT, TRAIN_BENCH_FILE,
                     BenchConfig, default_out, quick_config)
from .paper import APPROACHES
from .report import build_report, cfg_device, read_header, read_records, report_markdown, write_report


def _csv_ints(s: str) -> List[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")

def _approaches(s: str) -> List[str]:
    if s.strip().lower() == "all":
        return list(APPROACHES)
    names = [x.strip().lower().replace("-", "_") for x in s.split(",") if x.strip()]
    bad = [n for n in names if n not in APPROACHES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"--approaches: unknown {', '.join(bad) or '(empty)'}; expected 'all' or a comma list "
            f"of {', '.join(APPROACHES)}")
    return names

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fastep bench``."""
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke mode: Ours v3 + Bicycle v2 at 64x64 with narrow nets, "
                             "batch 2, 2 timed steps, max-batch ceiling 4, no compile (checks the "
                             "suite end to end, not speeds)")
    parser.add_argument("--preset", choices=("full", "h100-fast"), default=None,
                        help="h100-fast: 3 warm-up + 10 timed steps, probes of 1 step, the fast "
                             "path's max batch predicted and verified (--fast-max-batch predict); "
                             "full: the defaults (5 + 20 steps, exact searches)")
    parser.add_argument("--approaches", type=_approaches, default=None,
                        help="comma list of " + ", ".join(APPROACHES) + " or 'all' (default)")
    parser.add_argument("--batch", type=int, default=None, help="the fixed batch size (default 8)")
    parser.add_argument("--resolution", type=int, default=None, help="image size (default 256; quick 64)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (median)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps after the first call")
    parser.add_argument("--no-baseline", action="store_true", help="skip both eager baselines")
    parser.add_argument("--no-bf16-baseline", action="store_true",
                        help="skip the eager bf16 baseline (keep the eager fp32 one)")
    parser.add_argument("--no-max-batch", action="store_true", help="skip the max-batch search")
    parser.add_argument("--mem-cap-gib", type=float, default=12.0,
                        help="memory cap of the max-batch search (default 12 GiB)")
    parser.add_argument("--max-batch-limit", type=int, default=None,
                        help="ceiling of the max-batch search (default 1024; quick 4)")
    parser.add_argument("--probe", choices=("inprocess", "subprocess"), default="inprocess",
                        help="run every max-batch probe in this process (default) or a fresh one")
    parser.add_argument("--fast-max-batch", choices=("exact", "predict"), default=None,
                        help="fast path max batch: exact search (a compile per probe; default) or "
                             "the batch predicted from the memory per image at batch 8, verified "
                             "by the timed run (one compile; --preset h100-fast)")
    parser.add_argument("--from-records", nargs="+", default=None, metavar="JSONL",
                        help="measure nothing: rebuild the table and results files from the "
                             "records files of earlier runs (e.g. two GPU calls)")
    parser.add_argument("--compile", dest="compile", action="store_true", default=None,
                        help="force torch.compile on the fast path (default: on CUDA only)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--cuda-graphs", action="store_true", help="fast path with CUDA graphs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda if available (quick: cpu)")
    parser.add_argument("--kernels", action="store_true",
                        help="also run the kernel benchmarks (benchmarks/test_bench_*.py)")
    parser.add_argument("--scaling", action="store_true",
                        help="also sweep Ours v3 (fast path) over batch and resolution -> PNG")
    parser.add_argument("--scaling-batches", type=_csv_ints, default=None,
                        help="default 8,16,32,64,128 (quick: 2,4)")
    parser.add_argument("--scaling-resolutions", type=_csv_ints, default=None,
                        help="default 128,256,512 (quick: 32,64)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for the whole run; cases that cannot finish in time are "
                             "skipped and listed (default 540 on CUDA: one 10-minute GPU call "
                             "always returns a report; 0: no limit)")
    parser.add_argument("--merge", action="store_true",
                        help="keep earlier records in --out for approaches not run now "
                             "(split a long run over several calls)")
    parser.add_argument("--out", default=None,
                        help=f"results folder (default {default_out()}; committed results: "
                             "benchmarks/results/<device>-<date>)")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments (one string)")

def config_from_args(args: argparse.Namespace, device: str) -> BenchConfig:
    cfg = quick_config() if args.quick else BenchConfig()
    if args.preset == "h100-fast":
        cfg.warmup, cfg.steps, cfg.probe_steps, cfg.fast_max_batch = 3, 10, 1, "predict"
    if args.fast_max_batch:
        cfg.fast_max_batch = args.fast_max_batch
    if args.approaches:
        cfg.approaches = args.approaches
    for name in ("batch", "resolution", "steps", "warmup", "max_batch_limit"):
        v = getattr(args, name)
        if v is not None:
            low = 0 if name == "warmup" else 1
            if v < low:
                raise SystemExit(f"fastep bench: --{name.replace('_', '-')} must be >= {low}, got {v}")
            setattr(cfg, name, v)
    cfg.baseline = not args.no_baseline
    cfg.baseline_bf16 = not (args.no_baseline or args.no_bf16_baseline)
    cfg.max_batch = not args.no_max_batch
    cfg.mem_cap_gib = args.mem_cap_gib
    cfg.probe = args.probe
    if args.compile is not None:
        cfg.compile = args.compile
    cfg.cuda_graphs = args.cuda_graphs
    budget = args.time_budget
    if budget is None and device == "cuda":
        budget = DEFAULT_CUDA_BUDGET_S
    if budget:
        cfg.deadline = time.time() + budget
    return cfg

def _device_tag(device: str, quick: bool) -> str:
    return device + ("_quick" if quick else "")

def _report_and_print(records, cfg: BenchConfig, env_rec: Dict[str, Any], out: Path, tag: str,
                      scaling=None, rc=None, kern=None) -> int:
    rep = build_report(records, cfg, env_rec, scaling, rc, kern)
    jp, mp = write_report(rep, out, tag)
    print()
    print(report_markdown(rep))
    print(f"fastep bench: wrote {jp} and {mp}")
    if not any(r.get("status", "ok") == "ok" for r in records):
        print("fastep bench: nothing was measured (see the pytest output above)", file=sys.stderr)
        return 1
    return 0 if rc in (None, 0, 5) else 1

def _from_records(args: argparse.Namespace) -> int:
    """``--from-records``: merge the records files of earlier runs into one report."""
    files = [Path(f) for f in args.from_records]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        print(f"fastep bench: --from-records: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    records = read_records(*files)
    head = read_header(*files) or {}
    known = {f.name for f in dataclasses.fields(BenchConfig)}
    cfg = BenchConfig(**{k: v for k, v in (head.get("config") or {}).items() if k in known})
    present = {r.get("approach") for r in records}
    cfg.approaches = [a for a in APPROACHES if a in present]
    env_rec = head.get("env") or {"device": cfg_device(records)}
    device = cfg_device(records)
    tag = _device_tag("cuda" if device.startswith("cuda") else "cpu", cfg.quick)
    scaling = None
    for f in files:
        cand = f.parent / f"scaling_{tag}.json"
        if cand.exists():
            scaling = json.loads(cand.read_text())
    out = Path(args.out) if args.out else default_out()
    # keep the merged records next to the report
    out.mkdir(parents=True, exist_ok=True)
    merged = out / f"train_{tag}.records.jsonl"
    lines = ([json.dumps(head)] if head else []) + [json.dumps(r, default=str) for r in records]
    tmp = merged.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, merged)
    return _report_and_print(records, cfg, env_rec, out, tag, scaling)

def run(args: argparse.Namespace) -> int:
    """Run the suite, print the table next to the paper's, write the results files."""
    if args.from_records:
        return _from_records(args)
    import torch  # noqa: F401  (the parent never initialises CUDA: the suite's child does)

    device = args.device or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        print("fastep bench: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    cfg = config_from_args(args, device)
    cfg.device = device
    out = Path(args.out) if args.out else default_out()
    suite = BENCH_DIR / TRAIN_BENCH_FILE
    if not suite.exists():
        print(f"fastep bench: the benchmark suite {suite} is not there: `fastep bench` runs from a "
              "source checkout of fastep", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    tag = _device_tag(device, cfg.quick)
    jsonl = out / f"train_{tag}.records.jsonl"
    old = read_records(jsonl) if args.merge else []
    if jsonl.exists():
        jsonl.unlink()
    if args.merge:
        keep = [r for r in old if r.get("approach") not in cfg.approaches]
        with jsonl.open("w") as f:
            for r in keep:
                f.write(json.dumps(r) + "\n")
    cfg.results_jsonl = str(jsonl)

    env = dict(os.environ)
    env[CONFIG_ENV] = cfg.to_env()
    # (the allocator is left at its defaults: the memory-fraction cap is enforced by the plain
    # caching allocator; every record carries the peak *reserved* memory to prove it)
    if cfg.quick:
        # one intra-op thread: on a shared 2-core machine OpenMP's spinning threads make a CPU
        # step 10-20x slower under load; the quick mode checks the suite, not speeds
        env.setdefault("OMP_NUM_THREADS", "1")
    files = [str(BENCH_DIR / TRAIN_BENCH_FILE)]
    if args.kernels:
        files += sorted(str(p) for p in BENCH_DIR.glob("test_bench_*.py") if p.name != TRAIN_BENCH_FILE)
    cmd = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider",
           "--rootdir", str(REPO_ROOT), "--fastep-device", device,
           "--benchmark-disable-gc", "--benchmark-columns=median,min,max,rounds"]
    if args.kernels:  # the shared summary (kernels_<device>.json/.md) of every suite that ran;
        # without --kernels it is not written, so a kernel run's files in --out stay intact
        cmd += ["--fastep-results", str(out)]
    if args.pytest_args:
        cmd += args.pytest_args.split()
    print(f"fastep bench: {' '.join(cfg.approaches)} on {device} at {cfg.resolution}x{cfg.resolution}"
          f" (batch {cfg.batch}, {cfg.warmup} warm-up + {cfg.steps} timed steps"
          f"{', eager fp32 baseline' if cfg.baseline else ''}"
          f"{', eager bf16 baseline' if cfg.baseline_bf16 else ''}"
          f"{', max batch (' + cfg.fast_max_batch + ')' if cfg.max_batch else ''})", flush=True)
    t0 = time.time()
    rc, interrupted = _run_child(cmd, env)
    print(f"fastep bench: suite {'interrupted' if interrupted else 'finished'} after "
          f"{time.time() - t0:.0f} s (pytest exit code {rc})", flush=True)

    scaling = None
    if args.scaling and not interrupted:
        scaling = run_scaling_subprocess(args, cfg, device, out, tag, env)
    records = read_records(jsonl)
    head = read_header(jsonl) or {}
    env_rec = head.get("env") or {"device": device}
    kern = str(out / f"kernels_{'cuda' if device == 'cuda' else 'cpu'}.md") if args.kernels else None
    return _report_and_print(records, cfg, env_rec, out, tag, scaling, rc, kern)

class _Terminated(Exception):
    pass

def _on_sigterm(signum, frame):  # pragma: no cover - exercised by a timeout on a GPU machine
    raise _Terminated()

def _run_child(cmd: List[str], env: Dict[str, str]) -> Tuple[int, bool]:
    """Run the suite in a child process.  SIGTERM (``timeout``) or Ctrl-C stops the child (it
    would otherwise keep the GPU busy as an orphan) and returns, so the caller still writes the
    report of what was measured (the records are appended as they come)."""
    import signal

    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT)
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return proc.wait(), False
    except (KeyboardInterrupt, _Terminated):
        print("fastep bench: stopping the suite, writing the report of what was measured",
              file=sys.stderr, flush=True)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return proc.returncode if proc.returncode is not None else -15, True
    finally:
        signal.signal(signal.SIGTERM, old)

def run_scaling_subprocess(args, cfg: BenchConfig, device: str, out: Path, tag: str, env
                           ) -> Optional[Dict[str, Any]]:
    batches = args.scaling_batches or ([2, 4] if cfg.quick else [8, 16, 32, 64, 128])
    resolutions = args.scaling_resolutions or ([32, 64] if cfg.quick else [128, 256, 512])
    base_res = cfg.resolution if cfg.resolution in resolutions or cfg.quick else 256
    cmd = [sys.executable, str(BENCH_DIR / "scaling.py"), "--device", device, "--out", str(out),
           "--tag", tag, "--batches", ",".join(map(str, batches)),
           "--resolutions", ",".join(map(str, resolutions)), "--resolution", str(base_res),
           "--batch", str(cfg.batch), "--warmup", str(cfg.warmup), "--steps", str(cfg.steps)]
    if cfg.compile is not None:
        cmd.append("--compile" if cfg.compile else "--no-compile")
    if cfg.model_overrides:
        cmd += ["--model-overrides", json.dumps(cfg.model_overrides)]
    if cfg.deadline:
        cmd += ["--deadline", str(cfg.deadline)]
    print("fastep bench: scaling sweep: " + " ".join(cmd[2:]), flush=True)
    rc = subprocess.run(cmd, env=env, cwd=REPO_ROOT).returncode
    path = out / f"scaling_{tag}.json"
    if not path.exists():
        print(f"fastep bench: scaling sweep failed (exit code {rc})", file=sys.stderr)
        return {"status": f"failed (exit code {rc})", "points": []}
    return json.loads(path.read_text())
