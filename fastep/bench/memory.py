"""Memory: the exact max-batch search under a memory cap, its probes, and OOM handling."""
from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import timing
from .config import GIB, BenchConfig
from .timing import random_batch, reset_compiler, sync


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
        step = timing.make_step(approach, batch, resolution, impl, device, compile=compile,
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

def probe_main(job_json: str) -> int:
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
