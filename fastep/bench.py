"""``fastep bench``: the training-time benchmark suite and the paper's table side by side.

What it measures (per approach: Bicycle v1, v2, Ours v1..v4, SPEC.md's table):

* **time/kimg** = steady-state seconds per 1000 training images of ONE full optimisation step
  (D update + G/E update) on a fixed random batch: warm-up and compilation excluded, the
  device synchronised around every timed step, the median over the timed steps.  Data loading
  is not included (the step is what the approaches differ in).
* at **batch 8** and at the **max batch** that fits a memory cap (12 GiB, a GPU of the paper's
  era; ``torch.cuda.set_per_process_memory_fraction``), found by an exact search (doubling or a
  galloping search seeded by the memory per image at batch 8, then bisection; a probe that
  raises an out-of-memory error does not fit);
* **peak memory** per image (CUDA: the allocator's high-water mark of one step, weights and
  optimizer state included, divided by the batch);
* for fastep's **fast path** (torch.compile, bf16 autocast, channels_last, fused Adam, fused
  ops) and the **eager fp32 baseline** (plain PyTorch, reference ops), in the same run, with
  the speedup.

``fastep bench`` runs the pytest-benchmark suite (benchmarks/test_bench_training.py, and with
``--kernels`` every other benchmarks/test_bench_*.py) in a subprocess, then prints the table
next to the paper's numbers and writes ``train_<device>.json`` / ``.md`` (device, versions,
commit, date, the ordering check and the targets) under ``--out`` (benchmarks/results/).
``--scaling`` adds time/kimg against batch size and resolution (benchmarks/scaling.py, a PNG).

This module is imported by the CLI for every command, so torch is only imported inside the
functions that need it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "benchmarks"
TRAIN_BENCH_FILE = "test_bench_training.py"
CONFIG_ENV = "FASTEP_TRAIN_BENCH"  # JSON config handed from `fastep bench` to the suite
DEFAULT_CUDA_BUDGET_S = 540.0
GIB = 2 ** 30
MIB = 2 ** 20

APPROACHES: Tuple[str, ...] = ("bicycle_v1", "bicycle_v2", "ours_v1", "ours_v2", "ours_v3", "ours_v4")
IMPLS: Tuple[str, ...] = ("fastep", "baseline")


# --------------------------------------------------------------------------------------------
# The paper's table (benchmarks/paper.py; loaded by path: benchmarks/ is not an installed package)
# --------------------------------------------------------------------------------------------
def load_paper():
    """The ``benchmarks/paper.py`` module (the paper's table as data)."""
    mod = sys.modules.get("fastep_bench_paper")
    if mod is None:
        path = BENCH_DIR / "paper.py"
        if not path.exists():
            raise FileNotFoundError(f"benchmarks/paper.py not found at {path}: `fastep bench` runs "
                                    "from a source checkout (pip install -e .)")
        spec = importlib.util.spec_from_file_location("fastep_bench_paper", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["fastep_bench_paper"] = mod
        spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------
# Configuration of one suite run (CLI -> env var -> benchmarks/test_bench_training.py)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BenchConfig:
    """Everything the training suite needs; serialised to JSON in ``FASTEP_TRAIN_BENCH``."""

    approaches: List[str] = dataclasses.field(default_factory=lambda: list(APPROACHES))
    batch: int = 8
    resolution: int = 256
    warmup: int = 5  #: steps after the first (compiling) call, before timing
    steps: int = 20  #: timed steps (the median is reported)
    baseline: bool = True  #: also time the eager fp32 baseline
    max_batch: bool = True  #: search and time the max batch under the memory cap
    mem_cap_gib: float = 12.0
    max_batch_limit: int = 1024  #: search ceiling (CPU: no memory cap, the ceiling is reported)
    probe_steps: int = 2  #: steps per max-batch probe (the first one compiles)
    probe: str = "inprocess"  #: "inprocess" or "subprocess" (a fresh process per probe)
    #: "exact": search the fast path's max batch like the baseline's (a compile per probe);
    #: "predict": time the fast path at the batch predicted from its memory per image at batch 8
    #: (verified to fit by the timed run itself; one compile instead of ~3)
    fast_max_batch: str = "exact"
    perceptual_backbone: str = "random"  #: VGG weights of the perceptual loss (speed is the same)
    compile: Optional[bool] = None  #: None: TrainConfig's default on CUDA, off on CPU
    cuda_graphs: bool = False
    quick: bool = False
    device: Optional[str] = None  #: "cpu" / "cuda" (set by `fastep bench`)
    results_jsonl: Optional[str] = None  #: where the suite appends one JSON line per record
    deadline: Optional[float] = None  #: epoch seconds; later cases are skipped (and recorded)
    model_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls, default: Optional["BenchConfig"] = None) -> "BenchConfig":
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            return default if default is not None else cls()
        data = json.loads(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: The quick mode's default approaches: the paper's fastest and slowest (--approaches all: six).
QUICK_APPROACHES = ("ours_v3", "bicycle_v2")
#: Narrow widths of the quick CPU mode (ModelConfig.tiny()'s): same structure, small cost.
QUICK_MODEL = dict(g_nf=8, n_res=1, e_nf=8, d_nf=8, d_scales=2)


def quick_config(**overrides) -> BenchConfig:
    """The CPU smoke mode: Ours v3 and Bicycle v2 at 64 x 64, narrow nets, batch 2, 2 timed
    steps, max-batch ceiling 4, no compile (checks that the suite works end to end, not speeds)."""
    cfg = BenchConfig(approaches=list(QUICK_APPROACHES), batch=2, resolution=64, warmup=0, steps=2,
                      max_batch_limit=4, probe_steps=1, quick=True, compile=False,
                      model_overrides=dict(QUICK_MODEL))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


# --------------------------------------------------------------------------------------------
# Max-batch search
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SearchResult:
    """Outcome of :func:`find_max_batch`."""

    max_batch: int  #: largest batch that fits (0: not even batch 1 fits)
    probes: List[Tuple[int, bool]]  #: (batch, fits) in the order they were tried
    hit_limit: bool  #: the search ceiling fits (the true max batch may be larger)

    def to_dict(self) -> Dict[str, Any]:
        return {"max_batch": self.max_batch, "probes": [list(p) for p in self.probes],
                "hit_limit": self.hit_limit}


def find_max_batch(fits: Callable[[int], bool], *, start: int = 8, limit: int = 1024,
                   guess: Optional[int] = None) -> SearchResult:
    """The largest batch ``b`` in ``[1, limit]`` with ``fits(b)``, assuming ``fits`` is monotone.

    Without ``guess``: try ``start``, then double (or halve) until the answer changes, then
    bisect.  With ``guess`` (e.g. predicted from the memory per image): try it, then gallop
    (+1, +2, +4, ... or -1, -2, -4, ...) until the answer changes, then bisect; a good guess
    costs two probes.  Every batch is probed at most once.  Returns 0 when batch 1 does not fit.
    """
    if limit < 1:
        raise ValueError(f"limit: expected a positive batch ceiling, got {limit}")
    if start < 1:
        raise ValueError(f"start: expected a positive batch size, got {start}")
    probes: List[Tuple[int, bool]] = []
    seen: Dict[int, bool] = {}

    def f(b: int) -> bool:
        if b not in seen:
            seen[b] = bool(fits(b))
            probes.append((b, seen[b]))
        return seen[b]

    b0 = min(max(1, int(guess if guess is not None else start)), limit)
    gallop = guess is not None
    if f(b0):
        lo, step = b0, 1
        while True:
            if lo >= limit:
                return SearchResult(lo, probes, True)
            hi = min(limit, lo + step if gallop else lo * 2)
            if not f(hi):
                break
            lo, step = hi, step * 2
    else:
        hi, step = b0, 1
        while True:
            if hi <= 1:
                return SearchResult(0, probes, False)
            lo = max(1, hi - step if gallop else hi // 2)
            if f(lo):
                break
            hi, step = lo, step * 2
    while hi - lo > 1:  # invariant: fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        if f(mid):
            lo = mid
        else:
            hi = mid
    return SearchResult(lo, probes, False)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its cause/context chain) is an out-of-memory error:
    ``torch.OutOfMemoryError``, or a compiler/cuBLAS/cuDNN error that says it ran out of memory."""
    try:
        import torch
        oom_types: Tuple[type, ...] = (torch.OutOfMemoryError,)
    except Exception:  # noqa: BLE001
        oom_types = ()
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or (oom_types and isinstance(exc, oom_types)):
            return True
        msg = str(exc).lower()
        if "out of memory" in msg or "alloc_failed" in msg:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def fits_from_runner(run: Callable[[int], Any], on_probe: Optional[Callable[..., None]] = None
                     ) -> Callable[[int], bool]:
    """Turn ``run(batch)`` (raises an OOM error when the batch does not fit) into ``fits(batch)``.
    Errors other than out-of-memory propagate.  ``on_probe(batch, ok, result_or_message)``."""

    def fits(batch: int) -> bool:
        msg = None
        try:
            result = run(batch)
        except Exception as err:  # noqa: BLE001 - only OOM is swallowed
            if not is_oom(err):
                raise
            msg = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        if msg is not None:
            free_memory()
            if on_probe:
                on_probe(batch, False, msg)
            return False
        if on_probe:
            on_probe(batch, True, result)
        return True

    return fits


def guess_max_batch(peak_bytes: int, static_bytes: int, batch: int, cap_bytes: float,
                    margin: float = 0.97) -> Optional[int]:
    """Predict the max batch from one measurement, assuming peak = static + batch * per_image
    (weights and optimizer state are static; activations grow with the batch)."""
    per_image = (peak_bytes - static_bytes) / max(1, batch)
    if per_image <= 0:
        return None
    return max(1, int((cap_bytes * margin - static_bytes) // per_image))


# --------------------------------------------------------------------------------------------
# Devices and memory
# --------------------------------------------------------------------------------------------
def sync(device) -> None:
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def free_memory() -> None:
    """Collect garbage and return cached device memory (after an OOM or between cases).
    A no-op unless CUDA is in use (a CPU run frees its tensors as references drop)."""
    try:
        import torch
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            gc.collect()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


@contextmanager
def memory_cap(cap_bytes: Optional[float], device):
    """Cap this process's CUDA caching allocator at ``cap_bytes`` (no-op on CPU or when None)."""
    import torch
    if cap_bytes is None or not str(device).startswith("cuda"):
        yield None
        return
    dev = torch.device(device)
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(idx).total_memory
    frac = min(1.0, float(cap_bytes) / total)
    free_memory()
    torch.cuda.set_per_process_memory_fraction(frac, idx)
    try:
        yield frac
    finally:
        free_memory()
        torch.cuda.set_per_process_memory_fraction(1.0, idx)


def reset_compiler() -> None:
    """Forget compiled graphs (frees their memory, resets recompile counters)."""
    if "torch._dynamo" not in sys.modules:  # nothing was compiled
        return
    try:
        import torch._dynamo
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass


# --------------------------------------------------------------------------------------------
# Building a training step (E's API: fastep.train.config / fastep.train.step)
# --------------------------------------------------------------------------------------------
def _filtered(cls, **kwargs):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kwargs.items() if k in names})


def step_switches(impl: str, device, compile: Optional[bool] = None, cuda_graphs: bool = False
                  ) -> Dict[str, Any]:
    """TrainConfig switches of the fast path (``impl="fastep"``) or the eager fp32 baseline."""
    cuda = str(device).startswith("cuda")
    if impl == "baseline":
        return dict(compile=False, amp=False, channels_last=False, fused_adam=False,
                    cuda_graphs=False, eager_fp32=True)
    if impl != "fastep":
        raise ValueError(f"impl: expected 'fastep' or 'baseline', got {impl!r}")
    return dict(compile=cuda if compile is None else bool(compile), amp=True, channels_last=True,
                fused_adam=True, cuda_graphs=bool(cuda_graphs and cuda), eager_fp32=False)


def make_step(approach: str, batch: int, resolution: int, impl: str, device, *,
              compile: Optional[bool] = None, cuda_graphs: bool = False,
              model_overrides: Optional[Dict[str, Any]] = None, seed: int = 0,
              perceptual_backbone: str = "random"):
    """One training step object (stage 3: G, E and D all train) for ``approach`` at ``batch``.

    The perceptual loss uses a seeded random VGG16 by default (ImageNet weights change no
    timing, and are not needed to measure one).

    Returns ``step`` with ``step(A, B) -> dict of detached losses``.
    """
    if approach not in APPROACHES:
        raise ValueError(f"approach: expected one of {', '.join(APPROACHES)}, got {approach!r}")
    import torch
    from fastep.train.config import LossConfig, ModelConfig, TrainConfig
    from fastep.train.step import make_train_step

    model_cfg = _filtered(ModelConfig, resolution=resolution, **(model_overrides or {}))
    sw = step_switches(impl, device, compile, cuda_graphs)
    train_cfg = _filtered(TrainConfig, stage=3, approach=approach, batch_size=batch,
                          resolution=resolution, device=str(device), seed=seed, **sw)
    loss_cfg = LossConfig.preset(approach, perceptual_backbone=perceptual_backbone)
    return make_train_step(train_cfg, model_cfg, torch.device(device), loss_cfg=loss_cfg)


def effective_switches(step, impl: str, device, compile: Optional[bool] = None,
                       cuda_graphs: bool = False) -> Dict[str, Any]:
    """What the step actually runs with (TrainStep attributes where present)."""
    sw = step_switches(impl, device, compile, cuda_graphs)
    cfg = getattr(step, "train_cfg", None)
    if cfg is not None:
        for k in list(sw):
            if hasattr(cfg, k):
                sw[k] = getattr(cfg, k)
    if hasattr(step, "compiled"):
        sw["compile"] = bool(step.compiled)
    if hasattr(step, "amp_dtype"):
        sw["amp"] = str(step.amp_dtype).replace("torch.", "") if step.amp_dtype is not None else False
    if hasattr(step, "channels_last"):
        sw["channels_last"] = bool(step.channels_last)
    opt = getattr(step, "opt_ge", None)
    if opt is not None and hasattr(opt, "defaults"):
        sw["fused_adam"] = bool(opt.defaults.get("fused"))
    return sw


def random_batch(batch: int, resolution: int, device, seed: int = 0):
    """A fixed random (A, B) pair batch in [-1, 1] on ``device``."""
    import torch
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1
    b = torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1
    return a.to(device), b.to(device)


def time_steps(step, A, B, device, *, warmup: int, repeats: int) -> Dict[str, Any]:
    """Plain steady-state timing (used by the scaling script; the suite uses fastep_bench):
    the first call (compilation) is timed separately, then ``warmup`` calls, then ``repeats``
    individually synchronised calls; the median."""
    import torch
    sync(device)
    t0 = time.perf_counter()
    step(A, B)
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step(A, B)
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        step(A, B)
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    n = len(times)
    median = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    out = {"first_call_s": first, "median_s": median, "min_s": times[0], "rounds": n,
           "s_per_kimg": median * 1000.0 / A.shape[0]}
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        step(A, B)
        sync(device)
        out["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def probe_batch(approach: str, batch: int, resolution: int, impl: str, device, *, steps: int = 2,
                compile: Optional[bool] = None, cuda_graphs: bool = False,
                model_overrides: Optional[Dict[str, Any]] = None,
                perceptual_backbone: str = "random") -> Dict[str, Any]:
    """Build a step at ``batch`` and run it ``steps`` times (in this process; raises OOM if it
    does not fit).  Returns the peak memory of the last step."""
    import torch
    reset_compiler()  # a fresh step per batch: no recompile limits, no stale graphs
    step = A = B = None
    try:
        step = make_step(approach, batch, resolution, impl, device, compile=compile,
                         cuda_graphs=cuda_graphs, model_overrides=model_overrides,
                         perceptual_backbone=perceptual_backbone)
        A, B = random_batch(batch, resolution, device)
        peak = None
        for i in range(max(1, steps)):
            if i == steps - 1 and str(device).startswith("cuda"):
                sync(device)
                torch.cuda.reset_peak_memory_stats()
            step(A, B)
            sync(device)
        if str(device).startswith("cuda"):
            peak = int(torch.cuda.max_memory_allocated())
        return {"batch": batch, "peak_mem_bytes": peak}
    finally:
        # drop the references even while an OOM traceback keeps this frame alive
        step = A = B = None  # noqa: F841
        reset_compiler()


def probe_batch_subprocess(approach: str, batch: int, resolution: int, impl: str, device, *,
                           steps: int = 2, compile: Optional[bool] = None,
                           cuda_graphs: bool = False, cap_bytes: Optional[float] = None,
                           model_overrides: Optional[Dict[str, Any]] = None,
                           perceptual_backbone: str = "random",
                           timeout: float = 900) -> Dict[str, Any]:
    """:func:`probe_batch` in a fresh Python process under the memory cap (no fragmentation or
    allocator state carried between probes).  Raises ``torch.OutOfMemoryError`` when it does not
    fit, RuntimeError when the probe failed otherwise."""
    import torch
    job = dict(approach=approach, batch=batch, resolution=resolution, impl=impl, device=str(device),
               steps=steps, compile=compile, cuda_graphs=cuda_graphs, cap_bytes=cap_bytes,
               model_overrides=model_overrides or {}, perceptual_backbone=perceptual_backbone)
    proc = subprocess.run([sys.executable, "-m", "fastep.bench", "--_probe", json.dumps(job)],
                          capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("FASTEP_PROBE "):
            res = json.loads(line[len("FASTEP_PROBE "):])
            if res.get("oom"):
                raise torch.OutOfMemoryError(f"probe batch {batch}: {res.get('error')}")
            if res.get("error"):
                raise RuntimeError(f"probe batch {batch} failed: {res['error']}")
            return res
    raise RuntimeError(f"probe batch {batch} exited with {proc.returncode}: "
                       f"{(proc.stderr or proc.stdout)[-2000:]}")


def _probe_main(job_json: str) -> int:
    job = json.loads(job_json)
    cap = job.pop("cap_bytes", None)
    res: Dict[str, Any]
    try:
        with memory_cap(cap, job["device"]):
            res = probe_batch(job.pop("approach"), job.pop("batch"), job.pop("resolution"),
                              job.pop("impl"), job.pop("device"), **job)
    except Exception as err:  # noqa: BLE001
        res = {"oom": is_oom(err), "error": f"{type(err).__name__}: {str(err)[:300]}"}
    print("FASTEP_PROBE " + json.dumps(res), flush=True)
    return 0


def search_max_batch(approach: str, resolution: int, impl: str, device, cfg: BenchConfig, *,
                     guess: Optional[int] = None, log: Callable[[str], None] = print
                     ) -> Tuple[SearchResult, Dict[int, Dict[str, Any]]]:
    """The max batch of ``approach``/``impl`` under ``cfg.mem_cap_gib`` (CUDA) or up to
    ``cfg.max_batch_limit`` (CPU: no memory cap).  Returns the search and the probe results."""
    cuda = str(device).startswith("cuda")
    cap = cfg.mem_cap_gib * GIB if cuda else None
    results: Dict[int, Dict[str, Any]] = {}

    def on_probe(batch, ok, info):
        results[batch] = info if ok else {"batch": batch, "oom": info}
        peak = info.get("peak_mem_bytes") if ok and isinstance(info, dict) else None
        log(f"  probe {approach}/{impl} batch {batch}: "
            f"{'fits' if ok else 'OOM'}{'' if peak is None else f' ({peak / GIB:.2f} GiB)'}")

    kw = dict(steps=cfg.probe_steps, compile=cfg.compile, cuda_graphs=cfg.cuda_graphs,
              model_overrides=cfg.model_overrides, perceptual_backbone=cfg.perceptual_backbone)
    if cfg.probe == "subprocess":
        def run(batch):
            return probe_batch_subprocess(approach, batch, resolution, impl, device,
                                          cap_bytes=cap, **kw)
        search = find_max_batch(fits_from_runner(run, on_probe), start=cfg.batch,
                                limit=cfg.max_batch_limit, guess=guess)
    else:
        def run(batch):
            try:
                return probe_batch(approach, batch, resolution, impl, device, **kw)
            finally:
                free_memory()
        with memory_cap(cap, device):
            search = find_max_batch(fits_from_runner(run, on_probe), start=cfg.batch,
                                    limit=cfg.max_batch_limit, guess=guess)
    return search, results


def run_max_batch_case(time_at: Callable[[int], Dict[str, Any]],
                       search: Optional[Callable[[], Tuple[SearchResult, Dict[int, Any]]]], *,
                       guess: Optional[int], predict: bool, attempts: int = 4) -> Dict[str, Any]:
    """The ``max`` case of the suite: find the max batch (``search()``, or the ``guess`` itself
    when ``predict``), then ``time_at(batch) -> record``.  If the timed run runs out of memory
    (more steps than a probe; allocator state), step down (-1, or -5% when predicting) and say
    so in the record rather than lose the case.  Returns the record with ``search`` filled in."""
    if predict:
        if not guess or guess < 1:
            raise ValueError(f"guess: predict mode needs a positive predicted batch, got {guess!r}")
        res, probes = SearchResult(int(guess), [], False), {}
    else:
        res, probes = search()
    if res.max_batch < 1:
        raise RuntimeError("not even batch 1 fits under the memory cap")
    batch = res.max_batch
    record = None
    for attempt in range(attempts):
        oom = False
        try:
            record = time_at(batch)
            break
        except Exception as err:  # noqa: BLE001
            if not is_oom(err) or attempt == attempts - 1 or batch == 1:
                raise
            oom = True
        if oom:  # outside the except block: the OOM traceback (and its frames) are gone
            free_memory()
            res.probes.append((batch, False))
            batch = max(1, min(batch - 1, int(batch * 0.95)) if predict else batch - 1)
    if predict:
        res.probes.append((batch, True))
        res.max_batch = batch
    record["search"] = {**res.to_dict(), "mode": "predict" if predict else "exact"}
    record["search_guess"] = guess
    record["probe_peaks"] = {str(b): (p.get("peak_mem_bytes") if isinstance(p, dict) else None)
                             for b, p in probes.items()}
    if not predict and batch != res.max_batch:
        record["note"] = (f"search found {res.max_batch} but the timed run at that batch ran out "
                          f"of memory; timed at {batch}")
    return record


# --------------------------------------------------------------------------------------------
# Environment and results
# --------------------------------------------------------------------------------------------
def env_info(device: Optional[str] = None) -> Dict[str, Any]:
    """Device, versions, commit and date of this run."""
    import torch
    info: Dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info["device"] = torch.cuda.get_device_name(0)
        info["device_memory_GiB"] = round(props.total_memory / GIB, 2)
    else:
        info["device"] = f"cpu ({info['cpu']}, {os.cpu_count()} cores)"
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        info["triton"] = None
    try:
        from fastep.version import __version__
        info["fastep"] = __version__
    except Exception:  # noqa: BLE001
        info["fastep"] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True, cwd=REPO_ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=REPO_ROOT).stdout.strip()
        info["commit"] = commit + ("-dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        info["commit"] = os.environ.get("FASTEP_COMMIT", "unknown")
    return info


def read_records(*paths) -> List[Dict[str, Any]]:
    """The JSON lines the suite appended, over one or more files (later records of the same case
    replace earlier ones; header lines are skipped: see :func:`read_header`)."""
    recs: Dict[Tuple, Dict[str, Any]] = {}
    for path in paths:
        p = Path(path)
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if r.get("kind") == "header":
                continue
            recs[(r.get("approach"), r.get("impl"), r.get("which"))] = r
    return list(recs.values())


def read_header(*paths) -> Optional[Dict[str, Any]]:
    """The last header line (``{"kind": "header", "env": ..., "config": ...}``) of the files."""
    head = None
    for path in paths:
        p = Path(path)
        if p.exists():
            for line in p.read_text().splitlines():
                if line.strip().startswith('{"kind": "header"'):
                    head = json.loads(line)
    return head


def _get(recs, approach, impl, which):
    for r in recs:
        if r.get("approach") == approach and r.get("impl") == impl and r.get("which") == which \
                and r.get("status", "ok") == "ok":
            return r
    return None


def training_rows(records: Sequence[Dict[str, Any]], approaches: Optional[Sequence[str]] = None
                  ) -> List[Dict[str, Any]]:
    """One row per approach: the paper's numbers next to fastep's (fast path and baseline)."""
    paper = load_paper()
    rows = []
    names = list(approaches) if approaches else [a for a in APPROACHES
                                                 if any(r.get("approach") == a for r in records)]
    for a in names:
        p = paper.PAPER_TABLE[a]
        row: Dict[str, Any] = {"approach": a, "label": p.label, "paper_s_per_kimg_b8": p.s_per_kimg_b8,
                               "paper_max_batch": p.max_batch, "paper_s_per_kimg_max": p.s_per_kimg_max}
        for impl, key in (("fastep", "fast"), ("baseline", "base")):
            b8 = _get(records, a, impl, "b8")
            mx = _get(records, a, impl, "max")
            row[f"{key}_batch"] = b8["batch"] if b8 else None
            row[f"{key}_s_per_kimg_b8"] = b8["s_per_kimg"] if b8 else None
            row[f"{key}_peak_MiB_per_image"] = (b8["peak_mem_bytes"] / b8["batch"] / MIB
                                                if b8 and b8.get("peak_mem_bytes") else None)
            row[f"{key}_compile_s"] = b8.get("first_call_s") if b8 else None
            row[f"{key}_peak_MiB_per_image_max"] = (mx["peak_mem_bytes"] / mx["batch"] / MIB
                                                    if mx and mx.get("peak_mem_bytes") else None)
            row[f"{key}_peak_GiB_max"] = (mx["peak_mem_bytes"] / GIB
                                          if mx and mx.get("peak_mem_bytes") else None)
            row[f"{key}_max_batch"] = mx["batch"] if mx else None
            row[f"{key}_max_batch_hit_limit"] = (mx.get("search") or {}).get("hit_limit") if mx else None
            row[f"{key}_max_batch_mode"] = (mx.get("search") or {}).get("mode") if mx else None
            row[f"{key}_s_per_kimg_max"] = mx["s_per_kimg"] if mx else None
            row[f"{key}_switches"] = (b8 or mx or {}).get("switches")
        fb, bb = row["fast_s_per_kimg_b8"], row["base_s_per_kimg_b8"]
        row["speedup_b8"] = bb / fb if fb and bb else None
        fm, bm = row["fast_s_per_kimg_max"], row["base_s_per_kimg_max"]
        row["speedup_max"] = bm / fm if fm and bm else None
        row["vs_paper_b8"] = p.s_per_kimg_b8 / fb if fb else None
        best = [v for v in (fb, fm) if v]
        row["fast_best_s_per_kimg"] = min(best) if best else None
        rows.append(row)
    return rows


def ordering_check(rows: Sequence[Dict[str, Any]], key: str = "fast_s_per_kimg_b8",
                   env_is_cuda: bool = True) -> Dict[str, Any]:
    """Does fastep reproduce the paper's ordering (Ours v3/v4 fastest; Bicycle v2 and Ours v1
    slowest)?  With an explanation when it does not."""
    paper = load_paper()
    times = {r["approach"]: r[key] for r in rows if r.get(key)}
    out: Dict[str, Any] = {"measure": key,
                           "claim": "Ours v3 and v4 fastest; Bicycle v2 and Ours v1 slowest",
                           "ranking": sorted(times, key=times.get),
                           "passes_per_step": {a: paper.passes_per_step(a) for a in times}}
    if not any(a in times for a in paper.FASTEST) or not any(a in times for a in paper.SLOWEST):
        out.update(holds=None, explanation="not enough approaches measured to check the ordering "
                                           f"(needs one of {paper.FASTEST} and one of {paper.SLOWEST})")
        return out
    holds = paper.paper_ordering_holds(times)
    out["holds"] = holds
    if holds:
        out["explanation"] = ("holds: the approaches with fewer network passes per step "
                              "(no cycle reconstruction, no random-z GAN and z-recovery terms) "
                              "train fastest, as in the paper")
        return out
    fast = [a for a in paper.FASTEST if a in times]
    slow = [a for a in paper.SLOWEST if a in times]
    mid = [a for a in times if a not in fast and a not in slow]
    bad = []
    for f in fast:
        for o in mid + slow:
            if times[o] <= times[f]:
                bad.append(f"{o} ({times[o]:.3g} s/kimg) is not slower than {f} ({times[f]:.3g})")
    for s in slow:
        for o in mid + fast:
            if times[o] >= times[s]:
                bad.append(f"{o} ({times[o]:.3g} s/kimg) is not faster than {s} ({times[s]:.3g})")
    spread = (max(times.values()) - min(times.values())) / min(times.values())
    why = []
    if not env_is_cuda:
        why.append("this is a CPU run (the quick mode checks the suite, not speeds): the fast path "
                   "runs without torch.compile and bf16 there, and small images make fixed costs "
                   "dominate")
    if spread < 0.15:
        why.append(f"all approaches are within {spread:.0%} of each other: at this size the step "
                   "is dominated by fixed costs (kernel launches, optimizer, the VGG passes shared "
                   "by all approaches) rather than by the extra G/E/D passes that separate them, "
                   "so timing noise decides close pairs")
    pp = out["passes_per_step"]
    why.append("approximate network passes per step (G/E/D/VGG, from the loss terms): " +
               ", ".join(f"{a} {p['G']}/{p['E']}/{p['D']}/{p['VGG']}" for a, p in pp.items()) +
               "; where the measured order departs from these counts, per-pass costs that do not "
               "scale with the passes (optimizer steps, kernel launches, VGG on the target) or a "
               "different cost split in the paper's TensorFlow graph decide it")
    out["explanation"] = "does not hold: " + "; ".join(bad) + ". Likely why: " + "; ".join(why)
    return out


def targets_check(rows: Sequence[Dict[str, Any]], env: Dict[str, Any], resolution: int,
                  extra_best: Optional[float] = None) -> Dict[str, Any]:
    """Issue 6's targets (H100, 256 x 256): Ours v3 <= 2.0 s/kimg at batch 8, <= 1.0 at the best
    batch, fast path >= 5x the eager fp32 baseline at batch 8."""
    paper = load_paper()
    t = paper.TARGETS
    v3 = next((r for r in rows if r["approach"] == "ours_v3"), None)
    applicable = "H100" in str(env.get("device", "")) and resolution == 256
    note = None if applicable else ("targets are defined for an H100 at 256 x 256; this run is on "
                                    f"{env.get('device')} at {resolution} x {resolution}")

    def status(value, ok):
        if value is None:
            return "not measured"
        if not applicable:
            return "n/a"
        return "met" if ok else "missed"

    b8 = v3.get("fast_s_per_kimg_b8") if v3 else None
    best_cands = [v for v in ((v3 or {}).get("fast_best_s_per_kimg"), extra_best) if v]
    best = min(best_cands) if best_cands else None
    sp = v3.get("speedup_b8") if v3 else None
    return {
        "applicable": applicable, "note": note,
        "ours_v3_b8": {"value": b8, "target": f"<= {t['ours_v3_b8_s_per_kimg_max']}",
                       "status": status(b8, b8 is not None and b8 <= t["ours_v3_b8_s_per_kimg_max"])},
        "ours_v3_best": {"value": best, "target": f"<= {t['ours_v3_best_s_per_kimg_max']}",
                         "status": status(best, best is not None
                                          and best <= t["ours_v3_best_s_per_kimg_max"])},
        "ours_v3_speedup_b8": {"value": sp, "target": f">= {t['speedup_b8_min']}",
                               "status": status(sp, sp is not None and sp >= t["speedup_b8_min"])},
    }


def _f(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


TABLE_COLUMNS = [
    ("approach", "label"),
    ("paper b8", "paper_s_per_kimg_b8"),
    ("fastep b8", "fast_s_per_kimg_b8"),
    ("eager fp32 b8", "base_s_per_kimg_b8"),
    ("speedup b8", "speedup_b8"),
    ("paper max batch", "paper_max_batch"),
    ("paper @max", "paper_s_per_kimg_max"),
    ("fastep max batch", "fast_max_batch"),
    ("fastep @max", "fast_s_per_kimg_max"),
    ("eager max batch", "base_max_batch"),
    ("eager @max", "base_s_per_kimg_max"),
    ("speedup @max", "speedup_max"),
    ("fastep MiB/img", "fast_peak_MiB_per_image"),
    ("eager MiB/img", "base_peak_MiB_per_image"),
]


def markdown_training_table(rows: Sequence[Dict[str, Any]], floor: Optional[float] = None,
                            batch: int = 8) -> str:
    """The side-by-side table (times in s/kimg; 'max batch' under the memory cap)."""
    cols = [(h.replace("b8", f"b{batch}") if batch != 8 and not h.startswith("paper") else h, k)
            for h, k in TABLE_COLUMNS]
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for _, k in cols:
            v = r.get(k)
            if k.endswith("_max_batch") and v is not None and r.get(k + "_hit_limit"):
                cells.append(f">={v}")
            elif k.endswith("_max_batch") and v is not None and r.get(k + "_mode") == "predict":
                cells.append(f"{v}*")
            elif k.startswith("speedup") and v is not None:
                cells.append(f"{v:.2f}x")
            else:
                cells.append(_f(v))
        lines.append("| " + " | ".join(cells) + " |")
    if floor is not None:
        lines.append("| arithmetic floor (Ours v3, H100 bf16) | - | " + f"{floor:.2f}" +
                     " |" + " - |" * (len(cols) - 3))
    notes = []
    if any(r.get(k + "_hit_limit") for r in rows for k in ("fast_max_batch", "base_max_batch")):
        notes.append(">=N: the search ceiling fits (no memory cap on CPU)")
    if any(r.get(k + "_mode") == "predict" for r in rows for k in ("fast_max_batch", "base_max_batch")):
        notes.append("N*: predicted from the memory per image at batch 8 and verified to fit by the "
                     "timed run (N+1 not probed)")
    if notes:
        lines += ["", "; ".join(notes) + "."]
    return "\n".join(lines)


def cfg_device(records: Sequence[Dict[str, Any]]) -> str:
    """The device the records were measured on ("cpu" when there are none)."""
    return next((str(r.get("device")) for r in records if r.get("device")), "cpu")


def build_report(records: Sequence[Dict[str, Any]], cfg: BenchConfig, env: Dict[str, Any],
                 scaling: Optional[Dict[str, Any]] = None, pytest_rc: Optional[int] = None,
                 kernels: Optional[str] = None) -> Dict[str, Any]:
    """The full results document (written as JSON; :func:`report_markdown` renders it)."""
    paper = load_paper()
    rows = training_rows(records, cfg.approaches)
    extra_best = None
    if scaling:
        pts = [p.get("s_per_kimg") for p in scaling.get("points", []) if p.get("s_per_kimg")
               and p.get("resolution") == cfg.resolution]
        extra_best = min(pts) if pts else None
    problems = [r for r in records if r.get("status", "ok") != "ok"]
    problems += [{**r, "status": "cap not enforced",
                  "error": f"peak reserved {r.get('peak_reserved_bytes', 0) / GIB:.2f} GiB > cap "
                           f"{r.get('mem_cap_bytes', 0) / GIB:.2f} GiB"}
                 for r in records if r.get("within_cap") is False]
    return {
        "kind": "fastep training-time benchmark",
        "env": env,
        "config": dataclasses.asdict(cfg),
        "units": "time/kimg = seconds per 1000 training images (steady state, median); "
                 "max batch under the memory cap; MiB/img = peak allocated memory of one step "
                 "(weights + optimizer state included) / batch",
        "memory_cap_GiB": cfg.mem_cap_gib,
        "arithmetic_floor_s_per_kimg": paper.FLOOR_S_PER_KIMG,
        "arithmetic_floor_note": f"Ours v3 stage 3: ~{paper.FLOOR_GFLOP_PER_IMAGE:.0f} GFLOP/image at "
                                 f"{paper.FLOOR_PEAK_TFLOPS:.0f} TFLOP/s bf16 (H100), SPEC.md",
        "rows": rows,
        "ordering_b8": ordering_check(rows, "fast_s_per_kimg_b8", "cuda" in str(cfg_device(records))),
        "ordering_max": ordering_check(rows, "fast_s_per_kimg_max", "cuda" in str(cfg_device(records))),
        "targets": targets_check(rows, env, cfg.resolution, extra_best),
        "problems": problems,
        "pytest_exit_code": pytest_rc,
        "kernels_results": kernels,
        "scaling": scaling,
        "records": list(records),
    }


def report_markdown(rep: Dict[str, Any]) -> str:
    env = rep["env"]
    cfg = rep["config"]
    lines = ["# fastep training-time benchmark (StEP supplementary Table 1 / paper Table 6)", ""]
    lines += [f"- {k}: {env.get(k)}" for k in ("date", "device", "device_memory_GiB", "torch",
                                                "cuda", "cudnn", "triton", "python", "commit")
              if k in env]
    lines += [f"- resolution: {cfg['resolution']} x {cfg['resolution']}, batch {cfg['batch']}, "
              f"{cfg['warmup']} warm-up + {cfg['steps']} timed steps (median), "
              f"memory cap {cfg['mem_cap_gib']} GiB" + (" (quick CPU mode: checks the suite, "
                                                        "not speeds)" if cfg.get("quick") else ""),
              "", rep["units"] + ". Paper: TensorFlow on the authors' 12 GB GPU.", "",
              markdown_training_table(rep["rows"], rep["arithmetic_floor_s_per_kimg"], cfg["batch"]),
              "", f"Arithmetic floor: {rep['arithmetic_floor_s_per_kimg']:.2f} s/kimg "
              f"({rep['arithmetic_floor_note']}).", ""]
    firsts = [(r["approach"], r.get("fast_compile_s"), r.get("base_compile_s")) for r in rep["rows"]
              if r.get("fast_compile_s") is not None]
    if firsts:
        lines += ["First call (compilation + one step), s, fast path / eager: " +
                  ", ".join(f"{a} {_f(f)} / {_f(b)}" for a, f, b in firsts) + ".", ""]
    caps = [(r["approach"], r.get("fast_peak_GiB_max"), r.get("base_peak_GiB_max")) for r in rep["rows"]
            if r.get("fast_peak_GiB_max") or r.get("base_peak_GiB_max")]
    if caps and any(r.get("peak_mem_kind") == "cuda_max_allocated" for r in rep.get("records", [])):
        lines += [f"Peak allocated memory at the max batch (cap {cfg['mem_cap_gib']} GiB), GiB, "
                  "fast path / eager: " + ", ".join(f"{a} {_f(f)} / {_f(b)}" for a, f, b in caps)
                  + ".", ""]
    if any(r.get("peak_mem_kind") == "cpu_rss_growth" for r in rep.get("records", [])):
        lines += ["MiB/img on CPU: growth of the resident set during one step (approximate; the "
                  "allocator's caching hides reused memory).", ""]
    sw = next((r.get("fast_switches") for r in rep["rows"] if r.get("fast_switches")), None)
    if sw:
        lines += ["fastep fast path switches: " + ", ".join(f"{k}={v}" for k, v in sw.items()), ""]
    for key, title in (("ordering_b8", f"at batch {cfg['batch']}"), ("ordering_max", "at max batch")):
        o = rep[key]
        lines.append(f"**Paper ordering {title}** ({o['claim']}): "
                     f"{ {True: 'holds', False: 'does not hold', None: 'not checked'}[o['holds']]}. "
                     f"fastep ranking (fastest first): {', '.join(o['ranking']) or '-'}. "
                     f"{o['explanation']}")
        lines.append("")
    t = rep["targets"]
    lines.append("**Targets** (H100, 256 x 256)" + (f": {t['note']}" if t.get("note") else ""))
    for k in ("ours_v3_b8", "ours_v3_best", "ours_v3_speedup_b8"):
        lines.append(f"- {k}: {_f(t[k]['value'])} (target {t[k]['target']}): {t[k]['status']}")
    if rep.get("problems"):
        lines += ["", "**Problems**"]
        lines += [f"- {p.get('approach')}/{p.get('impl')}/{p.get('which')}: {p.get('status')}: "
                  f"{p.get('error', '')}" for p in rep["problems"]]
    if rep.get("scaling"):
        lines += ["", f"Scaling (Ours v3, fast path, no memory cap): see {rep['scaling'].get('png')}",
                  "", scaling_markdown(rep["scaling"])]
    if rep.get("kernels_results"):
        lines += ["", f"Kernel benchmarks: {rep['kernels_results']}"]
    return "\n".join(lines) + "\n"


def scaling_markdown(sc: Dict[str, Any]) -> str:
    lines = ["| sweep | batch | resolution | s/kimg | peak MiB/img | status |", "|---|---|---|---|---|---|"]
    for p in sc.get("points", []):
        pk = p.get("peak_mem_bytes")
        lines.append(f"| {p.get('sweep')} | {p.get('batch')} | {p.get('resolution')} | "
                     f"{_f(p.get('s_per_kimg'))} | {_f(pk / p['batch'] / MIB if pk else None)} | "
                     f"{p.get('status', 'ok')} |")
    return "\n".join(lines)


def write_report(rep: Dict[str, Any], out_dir, tag: str) -> Tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / f"train_{tag}.json", out / f"train_{tag}.md"
    jp.write_text(json.dumps(rep, indent=2, default=str))
    mp.write_text(report_markdown(rep))
    return jp, mp


# --------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------
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
    parser.add_argument("--no-baseline", action="store_true", help="skip the eager fp32 baseline")
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
    parser.add_argument("--out", default=str(BENCH_DIR / "results"),
                        help="results folder (default benchmarks/results)")
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
    out = Path(args.out)
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
    out = Path(args.out)
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
          f"{', baseline' if cfg.baseline else ''}"
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


if __name__ == "__main__":  # worker mode: python -m fastep.bench --_probe JSON
    if len(sys.argv) == 3 and sys.argv[1] == "--_probe":
        sys.exit(_probe_main(sys.argv[2]))
    from fastep.cli import main
    sys.exit(main(["bench", *sys.argv[1:]]))
