"""Shared machinery of fastep's pytest-benchmark suites.

Every benchmark file uses the ``fastep_bench`` fixture::

    def test_gram(fastep_bench, device):
        x = ...
        fastep_bench(lambda: fastep.gram(x), group="gram", case="N8_C64_256", impl="fastep",
                     device=device, flops=2 * N * C * C * H * W)

``impl`` is "fastep" or "baseline" (or any name); at the end of the session the runner pairs
every (group, case) and prints the speedup of each impl over "baseline" together with the median
time, peak memory and achieved rates.  ``--fastep-results DIR`` writes the same table as JSON
and markdown (device, versions, commit, date) into DIR, e.g. benchmarks/results/.

Times are steady state: warm-up calls first (compilation, autotuning, caches), the device
synchronised around every timed call, the median of the rounds reported.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
# every benchmark lets cuDNN time its algorithms for each shape (as training does): the heuristic
# choice is weakest on exactly the odd shapes these networks have
torch.backends.cudnn.benchmark = True


def pytest_addoption(parser):
    group = parser.getgroup("fastep")
    group.addoption("--fastep-results", default=None,
                    help="write the benchmark table (JSON + markdown) into this folder")
    group.addoption("--fastep-device", default=None, choices=("cpu", "cuda"),
                    help="benchmark only this device (default: cuda if available, else cpu)")


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--fastep-device")
        devices = [chosen] if chosen else (["cuda"] if HAS_CUDA else ["cpu"])
        metafunc.parametrize("device", devices)


@dataclass
class BenchRecord:
    group: str
    case: str
    impl: str
    device: str
    median_s: float
    mean_s: float
    rounds: int
    peak_mem_bytes: Optional[int]
    peak_mem_kind: str
    flops: Optional[float] = None
    bytes_moved: Optional[float] = None
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def tflops(self) -> Optional[float]:
        return None if not self.flops else self.flops / self.median_s / 1e12


_RECORDS: List[BenchRecord] = []


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _RssPeak:
    """Peak resident-set growth of this process while the body runs (CPU memory, approximate)."""

    def __init__(self, interval: float = 0.0005):
        self.interval, self.peak, self._stop = interval, 0, False

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.base = self._rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.base)


def measure_peak_memory(fn: Callable[[], object], device: str) -> tuple[Optional[int], str]:
    """Peak memory of one call of ``fn`` above what was allocated before it.

    CUDA: exact, from the caching allocator's high-water mark.  CPU: resident-set growth sampled
    every 0.5 ms (approximate; allocator caching can hide re-used memory).
    """
    if device.startswith("cuda"):
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated() - before, "cuda_allocated"
    if not os.path.exists("/proc/self/statm"):
        return None, "unavailable"
    with _RssPeak() as rss:
        fn()
    return rss.growth, "cpu_rss_growth"


def _append_jsonl(rec: "BenchRecord") -> None:
    """With FASTEP_BENCH_JSONL set, append every record as it is measured, so a run that is cut
    short (a time limit on a lent GPU) still leaves its figures."""
    path = os.environ.get("FASTEP_BENCH_JSONL")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({**asdict(rec), "tflops": rec.tflops}, default=str) + "\n")


@pytest.fixture
def fastep_bench(benchmark):
    """Time ``fn`` (steady state, synchronised, median) and record it for the speedup table."""

    def run(fn: Callable[[], object], *, group: str, case: str, impl: str, device: str,
            flops: Optional[float] = None, bytes_moved: Optional[float] = None,
            warmup: int = 2, rounds: Optional[int] = None, **extra) -> BenchRecord:
        def call():
            out = fn()
            _sync(device)
            return out

        for _ in range(warmup):
            call()
        peak, kind = measure_peak_memory(call, device)
        if rounds is None:
            # Aim at ~1 s of timing per benchmark, at least 3 and at most 50 rounds.
            t0 = time.perf_counter()
            call()
            one = max(time.perf_counter() - t0, 1e-6)
            rounds = int(min(50, max(3, 1.0 / one)))
        benchmark.group = f"{group}:{case}"
        benchmark.extra_info.update(dict(impl=impl, case=case, device=device, peak_mem_bytes=peak,
                                         peak_mem_kind=kind, flops=flops, **extra))
        benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
        stats = benchmark.stats.stats
        rec = BenchRecord(group, case, impl, device, stats.median, stats.mean, rounds, peak, kind,
                          flops, bytes_moved, dict(extra))
        _RECORDS.append(rec)
        _append_jsonl(rec)
        return rec

    return run


def _env_info() -> Dict[str, object]:
    info: Dict[str, object] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if HAS_CUDA else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        info["triton"] = None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, check=True,
                                        cwd=Path(__file__).parent).stdout.strip()
    except Exception:  # noqa: BLE001
        info["commit"] = os.environ.get("FASTEP_COMMIT", "unknown")
    return info


def speedup_table(records: List[BenchRecord]) -> List[Dict[str, object]]:
    """One row per record, with its speedup over the "baseline" impl of the same group/case."""
    baseline = {(r.group, r.case, r.device): r for r in records if r.impl == "baseline"}
    rows = []
    for r in records:
        base = baseline.get((r.group, r.case, r.device))
        rows.append({
            "group": r.group, "case": r.case, "impl": r.impl, "device": r.device,
            "median_ms": r.median_s * 1e3,
            "speedup_vs_baseline": (base.median_s / r.median_s) if base else None,
            "peak_mem_MiB": None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20,
            "mem_vs_baseline": (r.peak_mem_bytes / base.peak_mem_bytes
                                if base and base.peak_mem_bytes and r.peak_mem_bytes is not None
                                else None),
            "TFLOP/s": r.tflops,
            "GB/s": (r.bytes_moved / r.median_s / 1e9) if r.bytes_moved else None,
            **{k: v for k, v in r.extra.items() if isinstance(v, (int, float, str, bool, type(None)))},
        })
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: List[Dict[str, object]]) -> str:
    cols = ["group", "case", "impl", "device", "median_ms", "speedup_vs_baseline", "peak_mem_MiB",
            "mem_vs_baseline", "TFLOP/s", "GB/s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RECORDS:
        return
    rows = speedup_table(_RECORDS)
    terminalreporter.write_sep("=", "fastep benchmark table")
    terminalreporter.write_line(markdown_table(rows))
    train = [r for r in _RECORDS if r.group == "train_time" and "s_per_kimg" in r.extra]
    if train:  # the training-time suite: `fastep bench` adds the paper's numbers
        terminalreporter.write_sep("=", "fastep training time (s/kimg, median)")
        for r in train:
            e = r.extra
            terminalreporter.write_line(f"{e.get('approach', '?'):<11} {e.get('which', ''):<4} "
                                        f"{r.impl:<9} batch {e.get('batch', '?'):>4}: "
                                        f"{e['s_per_kimg']:.4g} s/kimg")
    out = config.getoption("--fastep-results")
    if out:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        env = _env_info()
        tag = f"kernels_{'cuda' if HAS_CUDA else 'cpu'}"
        (out_dir / f"{tag}.json").write_text(json.dumps(
            {"env": env, "rows": rows, "records": [asdict(r) for r in _RECORDS]}, indent=2, default=str))
        header = "\n".join(f"- {k}: {v}" for k, v in env.items())
        (out_dir / f"{tag}.md").write_text(f"# fastep kernel benchmarks\n\n{header}\n\n"
                                            f"{markdown_table(rows)}\n")
        terminalreporter.write_line(f"wrote {out_dir / (tag + '.json')} and .md")
