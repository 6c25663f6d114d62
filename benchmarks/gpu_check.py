"""The Python parts of ``benchmarks/gpu_check.sh``: environment record, the Ours v3 training-step
comparison, and the summary of a results folder.

    python benchmarks/gpu_check.py env     --out DIR
    python benchmarks/gpu_check.py train   --out DIR [--batch 8] [--resolution 256] [--steps 10]
    python benchmarks/gpu_check.py summary --out DIR

``train`` times one stage-3 Ours v3 step (D update + G/E update + EMA) for each implementation:

* ``eager_fp32``: the plain-PyTorch baseline in true fp32 (TF32 off for convolutions and matmuls);
* ``eager_bf16``: the fast path's switches (bf16 autocast, channels_last, fused Adam, fused ops,
  the exact conv rewrites) without torch.compile -- what compilation and fusion add on their own;
* ``fast``: the fast path (torch.compile);
* ``fast_graphs``: the fast path with CUDA graphs (compile mode "reduce-overhead").

``torch.backends.cudnn.benchmark`` is on for all of them.  Each record (one JSON line in
``train.jsonl``, written as soon as it is measured) has the first-call (compile) time, the median
step time over ``--steps`` synchronised steps, s/kimg, peak memory, CUDA kernels per step (from
torch.profiler, with the top kernels by time), the kernels of the compiled graphs (read from
inductor's generated code) and the unaligned-channel conv GFLOP of the step.  ``--smoke`` runs
the same code on CPU at a toy size without compilation (a check that the script works).
``summary`` also tabulates ``zoo.jsonl``, the zoo's training steps that ``gpu_check.sh`` measures.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
IMPLS = ("eager_fp32", "eager_bf16", "fast", "fast_graphs")


def _write_jsonl(path: Path, rec: Dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec, default=str) + "\n")


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def _commit() -> str:
    """The git commit, or (in a copy without .git) a hash of the source files."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if sha:
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    h = hashlib.sha256()
    for sub in ("fastep", "kernels", "csrc", "benchmarks", "tests", "setup.py"):
        root = REPO / sub
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                      and p.suffix in (".py", ".cpp", ".cu", ".h", ".sh"))
        for p in files:
            h.update(str(p.relative_to(REPO)).encode())
            h.update(p.read_bytes())
    return "no-git-tree-sha256:" + h.hexdigest()[:16]


# ----------------------------------------------------------------------------- env

def cmd_env(out: Path) -> int:
    import torch

    info: Dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(), "python": platform.python_version(), "host_cpus": os.cpu_count(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as err:  # noqa: BLE001
        info["triton"] = f"unavailable ({type(err).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                    sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2 ** 30, 1))
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,"
                                  "power.draw,temperature.gpu", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
            info["nvidia_smi"] = smi
        except (OSError, subprocess.SubprocessError) as err:
            info["nvidia_smi"] = f"unavailable ({err})"
        try:
            nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=20).stdout
            info["nvcc"] = nvcc.strip().splitlines()[-1] if nvcc.strip() else None
        except (OSError, subprocess.SubprocessError):
            info["nvcc"] = None
    else:
        info["device"] = "cpu" + (f" ({platform.processor()})" if platform.processor() else "")
    try:
        import fastep._ext as ext
        info["fastep_C"] = ext.has_C()
        info["fastep_C_cuda"] = ext.C_has_cuda()
        info["fastep_C_error"] = ext.C_error()
    except Exception as err:  # noqa: BLE001
        info["fastep_C"] = f"import failed ({type(err).__name__}: {err})"
    (out / "env.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    print(json.dumps(info, indent=1, default=str))
    return 0


# ----------------------------------------------------------------------------- train

#: gpu_check's implementations -> (the bench package's impl, CUDA graphs)
_BENCH_IMPL = {"eager_fp32": ("baseline", False), "eager_bf16": ("baseline_bf16", False),
               "fast": ("fastep", False), "fast_graphs": ("fastep", True)}


def _make_step(impl: str, batch: int, resolution: int, device: str, model_overrides, compile_on: bool):
    """The bench package's step: true fp32 (TF32 off) for eager_fp32, reference ops for both
    eager baselines, cudnn.benchmark on for all (fastep.bench.timing.BenchStep)."""
    from fastep import bench

    name, graphs = _BENCH_IMPL[impl]
    return bench.make_step("ours_v3", batch, resolution, name, device, model_overrides=model_overrides,
                           compile=compile_on and name == "fastep", cuda_graphs=graphs)


def _kernels_per_step(step, A, B, device) -> Dict[str, Any]:
    """CUDA kernels launched by one step (torch.profiler), and the top ones by device time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if not device.startswith("cuda"):
        return {}
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(A, B)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: Dict[str, List[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time_total)
    top = sorted(((sum(v), len(v), k) for k, v in by_name.items()), reverse=True)[:15]
    total_us = sum(e.device_time_total for e in kernels)
    return {"cuda_kernels_per_step": len(kernels), "cuda_kernel_time_ms": total_us / 1e3,
            "top_kernels": [{"name": k[:120], "calls": n, "ms": t / 1e3} for t, n, k in top]}


def _conv_proxy(batch: int, resolution: int, model_overrides) -> Dict[str, Any]:
    """Unaligned-channel conv GFLOP of the step, with and without the rewrites (meta tensors)."""
    from fastep.zoo.step.config import ModelConfig, TrainConfig
    from fastep.zoo.step.train_step import step_conv_census

    model_cfg = ModelConfig(resolution=resolution, **(model_overrides or {}))
    out = {}
    for on in (False, True):
        cfg = TrainConfig(stage=3, approach="ours_v3", batch_size=batch, resolution=resolution, aligned_convs=on)
        out["rewritten" if on else "original"] = step_conv_census(cfg, model_cfg).summary()
    return out


def cmd_train(out: Path, batch: int, resolution: int, steps: int, warmup: int, impls: List[str],
              smoke: bool) -> int:
    import torch

    from fastep import bench
    from fastep.bench.config import QUICK_MODEL
    from fastep.compiler import count_kernels, generated_code, use_cache_dir

    use_cache_dir()  # $FASTEP_CACHE: the compiled graphs of one implementation serve the next
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    overrides = dict(QUICK_MODEL) if smoke else None
    compile_on = not smoke
    torch.backends.cudnn.benchmark = True
    path = out / "train.jsonl"
    try:
        _write_jsonl(path, {"kind": "conv_proxy", "batch": batch, "resolution": resolution,
                            **_conv_proxy(batch, resolution, overrides)})
    except Exception as err:  # noqa: BLE001
        _write_jsonl(path, {"kind": "conv_proxy", "status": "error", "error": f"{type(err).__name__}: {err}"})
    failures = 0
    for impl in impls:
        if impl == "fast_graphs" and device != "cuda":
            _write_jsonl(path, {"kind": "train", "impl": impl, "status": "skipped (CUDA graphs need CUDA)"})
            print(f"{impl}: skipped (CUDA graphs need CUDA)", flush=True)
            continue
        rec: Dict[str, Any] = {"kind": "train", "impl": impl, "approach": "ours_v3", "batch": batch,
                               "resolution": resolution, "device": device, "smoke": smoke}
        step = A = B = None
        try:
            bench.reset_compiler()
            bench.free_memory()
            step = _make_step(impl, batch, resolution, device, overrides, compile_on)
            A, B = bench.random_batch(batch, resolution, device)
            bench.sync(device)
            t0 = time.perf_counter()
            with generated_code() as codes:
                step(A, B)
                bench.sync(device)
            rec["first_call_s"] = time.perf_counter() - t0
            if codes:
                rec.update(count_kernels(codes).as_dict())
            for _ in range(warmup):
                step(A, B)
            bench.sync(device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                step(A, B)
                bench.sync(device)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            rec.update(status="ok", median_s=med, min_s=min(times), steps=steps,
                       s_per_kimg=med * 1000.0 / batch, times_s=times,
                       switches=bench.effective_switches(step, _BENCH_IMPL[impl][0], device,
                                                         compile_on and impl.startswith("fast"),
                                                         impl == "fast_graphs"))
            if device == "cuda":
                rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
                rec.update(_kernels_per_step(step, A, B, device))
            rec["numerics"] = bench.timing.numerics(_BENCH_IMPL[impl][0])
        except Exception as err:  # noqa: BLE001 - record it, go on with the next implementation
            failures += 1
            rec.update(status="error", error=f"{type(err).__name__}: {err}"[:600],
                       traceback=traceback.format_exc()[-4000:])
        finally:
            step = A = B = None  # noqa: F841
            bench.reset_compiler()
            bench.free_memory()
        _write_jsonl(path, rec)
        if rec.get("status") == "ok":
            print(f"{impl:12s} {rec['s_per_kimg']:8.3f} s/kimg  median {rec['median_s'] * 1e3:8.2f} ms  "
                  f"first call {rec['first_call_s']:6.1f} s  kernels/step {rec.get('cuda_kernels_per_step', '-')}",
                  flush=True)
        else:
            print(f"{impl:12s} {rec.get('status')}: {rec.get('error', '')}", flush=True)
    return 1 if failures else 0


# ----------------------------------------------------------------------------- summary

_STATUS = r"(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)"
_VERBOSE_LINE = re.compile(r"^(\S+\.py::.*?) " + _STATUS + r"\b")
_SUMMARY_LINE = re.compile(r"^" + _STATUS + r" (\S+\.py::.*?)(?: - .*)?$")
_XDIST_LINE = re.compile(r"^\[gw\d+\] \[\s*\d+%\] " + _STATUS + r" (\S+\.py::.*?)\s*$")


def _tests_table(out: Path) -> List[str]:
    log = out / "tests.log"
    collected = out / "tests_collected.txt"
    if not log.is_file():
        return ["(no tests.log)"]
    status: Dict[str, str] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _VERBOSE_LINE.match(line)  # -v: "tests/x.py::t[a b] PASSED [ 1%]"
        if m:
            status.setdefault(m.group(1), m.group(2))
            continue
        m = _XDIST_LINE.match(line)  # -v -n K: "[gw0] [  1%] PASSED tests/x.py::t[a b]"
        if m:
            status.setdefault(m.group(2), m.group(1))
            continue
        m = _SUMMARY_LINE.match(line)  # -rA: "FAILED tests/x.py::t[a b] - message"
        if m:
            status[m.group(2)] = m.group(1)
    names = [ln.strip() for ln in collected.read_text().splitlines() if "::" in ln] if collected.is_file() else []
    for n in names:
        status.setdefault(n, "NOT RUN (time limit)")
    counts: Dict[str, int] = {}
    for v in status.values():
        counts[v] = counts.get(v, 0) + 1
    lines = ["CUDA/Triton tests: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) if status
             else "CUDA/Triton tests: none listed"]
    lines += [f"  {v:22s} {k}" for k, v in sorted(status.items()) if v not in ("PASSED",)]
    return lines


def cmd_summary(out: Path) -> int:
    lines: List[str] = [f"# gpu_check results: {out.name}", ""]
    env = out / "env.json"
    if env.is_file():
        e = json.loads(env.read_text())
        lines += [f"device: {e.get('device')}  capability {e.get('capability', '-')}  smi: {e.get('nvidia_smi', '-')}",
                  f"torch {e.get('torch')} (CUDA {e.get('torch_cuda')}, cuDNN {e.get('cudnn')}), "
                  f"triton {e.get('triton')}, python {e.get('python')}",
                  f"commit {e.get('commit')}  date {e.get('date_utc')}", ""]
    lines += ["## tests"] + _tests_table(out) + [""]
    train = _read_jsonl(out / "train.jsonl")
    if train:
        lines += ["## Ours v3 training step", "",
                  "| impl | s/kimg | median ms | first call s | CUDA kernels/step | compiled-graph kernels | peak GiB |",
                  "|---|---|---|---|---|---|---|"]
        base = {r["impl"]: r for r in train if r.get("kind") == "train" and r.get("status") == "ok"}
        for r in train:
            if r.get("kind") == "conv_proxy":
                continue
            if r.get("status") != "ok":
                lines.append(f"| {r.get('impl')} | {r.get('status')}: {str(r.get('error', ''))[:80]} | | | | | |")
                continue
            lines.append(f"| {r['impl']} | {r['s_per_kimg']:.3f} | {r['median_s'] * 1e3:.2f} | "
                         f"{r['first_call_s']:.1f} | {r.get('cuda_kernels_per_step', '-')} | "
                         f"{r.get('kernels_total', '-')} | "
                         + (f"{r['peak_mem_gib']:.2f}" if r.get("peak_mem_gib") is not None else "-") + " |")
        for fast in ("fast", "fast_graphs", "eager_bf16"):
            for ref in ("eager_fp32", "eager_bf16"):
                if fast in base and ref in base and fast != ref:
                    lines.append(f"- {fast} vs {ref}: {base[ref]['median_s'] / base[fast]['median_s']:.2f}x")
        for r in train:
            if r.get("kind") == "conv_proxy" and "original" in r:
                lines.append(f"- unaligned-channel conv GFLOP/step: {r['original']['unaligned_conv_gflop']} -> "
                             f"{r['rewritten']['unaligned_conv_gflop']} (all conv GFLOP {r['original']['conv_gflop']}"
                             f" -> {r['rewritten']['conv_gflop']})")
        lines.append("")
    zoo = _read_jsonl(out / "zoo.jsonl")
    if zoo:
        lines += ["## zoo training steps", "", "| system | preset | res | batch | bf16 | s/kimg | peak MiB |",
                  "|---|---|---|---|---|---|---|"]
        for r in zoo:
            if r.get("system") == "deepi2i":
                batch = f"{r['micro_batch']} x {r['accumulations']}"
                kimg, mem, amp = r["s_per_kimg"], r.get("peak_mem_mib", r.get("peak_rss_mib")), "-"
            else:  # bridgegan: images read by the critic updates per kimg
                batch = f"{r['batch']} (n_critic {r['n_critic']})"
                kimg, mem, amp = r["s_per_kimg_read"], r.get("peak_mem_mib"), "yes" if r.get("amp_bf16") else "-"
            lines.append(f"| {r['system']} | {r['preset']} | {r['resolution']} | {batch} | {amp} | {kimg:.3f} | "
                         + (f"{mem:.0f}" if mem is not None else "-") + " |")
        lines.append("")
    conv = _read_jsonl(out / "conv.jsonl")
    if conv:
        lines += ["## conv rewrites (fwd+bwd, median ms)", "", "| case | variant | ms | x original | max rel diff |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['variant']} | {r['median_ms']:.3f} | {r['speedup_vs_original']:.2f} | "
                  f"{r['max_rel_diff_vs_original']:.1e} |" for r in conv]
        lines.append("")
    losses = _read_jsonl(out / "losses.jsonl")
    if losses:
        lines += ["## losses / kernels (benchmark records)", ""]
        for r in losses:
            if "median_s" in r or "median" in r:
                med = r.get("median_s", r.get("median"))
                lines.append(f"- {r.get('group', '')} {r.get('case', '')} {r.get('impl', '')}: "
                             f"{float(med) * 1e3:.3f} ms" + (f", {r['tflops']:.3g} TFLOP/s" if r.get("tflops") else ""))
        lines.append("")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("env", "train", "summary"):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True, help="results folder (created if missing)")
        if name == "train":
            s.add_argument("--batch", type=int, default=8)
            s.add_argument("--resolution", type=int, default=256)
            s.add_argument("--steps", type=int, default=10)
            s.add_argument("--warmup", type=int, default=2)
            s.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
            s.add_argument("--smoke", action="store_true", help="CPU, toy size, no compile")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.cmd == "env":
        return cmd_env(out)
    if a.cmd == "train":
        if a.batch < 2 or a.steps < 1 or a.warmup < 0:
            p.error("train: --batch must be >= 2, --steps >= 1, --warmup >= 0")
        if a.resolution < 32 or a.resolution % 32:
            p.error(f"train: --resolution must be a multiple of 32, got {a.resolution}")
        return cmd_train(out, a.batch, a.resolution, a.steps, a.warmup, a.impls, a.smoke)
    return cmd_summary(out)


if __name__ == "__main__":
    sys.exit(main())
