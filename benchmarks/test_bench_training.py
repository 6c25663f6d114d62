"""The training-time table (StEP supplementary Table 1 / paper Table 6) as a benchmark suite.

For every approach (Bicycle v1, v2, Ours v1..v4) and each implementation -- ``fastep`` (the
fast path: torch.compile, bf16, channels_last, fused Adam, fused ops), ``baseline`` (eager
fp32, plain PyTorch, TF32 off) and ``baseline_bf16`` (eager bf16: the fast path without compile
and fusion; batch 8 only) -- two cases:

* ``b8``: one full training step (stage 3: D update + G/E update) at the fixed batch (8);
* ``max``: the max batch under the memory cap (12 GiB on CUDA), found by an exact search
  (fastep.bench.find_max_batch, seeded by the memory per image measured at batch 8), then timed.

Each case: the first call (compilation) is timed separately, then ``warmup`` steps, then the
``fastep_bench`` fixture times ``steps`` synchronised steps and reports the median; peak memory
is the allocator's high-water mark of one step.  Records go to the shared summary (group
"train_time") and, as JSON lines, to the file ``fastep bench`` turns into the side-by-side table.

Run it through ``fastep bench`` (options, the table, results files).  Plain
``pytest benchmarks/test_bench_training.py`` uses the defaults: the full suite on CUDA, the quick
CPU mode (64 x 64, Ours v3 and Bicycle v2, narrow nets) otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import time
import traceback

import pytest
import torch

from fastep import bench
from fastep.compiler import CompileArtifacts, count_kernels, generated_code, use_cache_dir

HAS_CUDA = torch.cuda.is_available()
CFG = bench.BenchConfig.from_env(
    bench.BenchConfig() if HAS_CUDA else bench.quick_config())

IMPLS = ["fastep"] + (["baseline"] if CFG.baseline else []) + (["baseline_bf16"] if CFG.baseline_bf16 else [])
WHICH = ["b8", "max"] if CFG.max_batch else ["b8"]
# every batch-8 case first (the main table, and the memory per image that seeds the searches),
# then the max-batch cases: under a time budget the batch-8 table is complete first.
# Both start with Ours v3 (the speed targets are stated for it; a budget that runs out must
# not leave its row empty), then the others in table order.
_ORDER = sorted(CFG.approaches, key=lambda a: (a != "ours_v3", CFG.approaches.index(a)))
CASES = [(a, i, w) for w in WHICH for a in _ORDER for i in IMPLS if w == "b8" or i != "baseline_bf16"]

# One on-disk compile cache for the whole suite (and for later runs): the approaches share the
# per-network graphs (G.encode, G.decode, E, D, VGG), so only the first approach compiles them
# cold.  The cache artifacts (one file per torch version and device model) let a fresh machine
# start warm when the cache folder travels with it.
CACHE_PATHS = use_cache_dir()
ARTIFACTS = CompileArtifacts("train-suite", device=CFG.device or ("cuda" if HAS_CUDA else "cpu"))
ARTIFACTS_LOADED = ARTIFACTS.load() if CFG.compile is not False else False

if CFG.results_jsonl:  # the header: environment and configuration of this run
    with open(CFG.results_jsonl, "a") as _f:
        _f.write(json.dumps({"kind": "header",
                             "env": bench.env_info(CFG.device or ("cuda" if HAS_CUDA else "cpu")),
                             "config": dataclasses.asdict(CFG)}, default=str) + "\n")

# (approach, impl) -> the b8 record (its memory per image seeds the max-batch search)
_B8 = {}
# (impl, which) -> wall seconds of the last such case (to skip cases that cannot finish in time)
_DURATION = {}

#: An Ours v3 / stage 3 step: about 300 GFLOP per image at 256 x 256 (fastep.bench.paper).
_OURS_V3_FLOP_PER_IMAGE_256 = bench.paper.FLOOR_GFLOP_PER_IMAGE * 1e9


def _write(record):
    if CFG.results_jsonl:
        with open(CFG.results_jsonl, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")


def _conv_census(step):
    """Conv FLOPs of the step at its shapes (meta tensors): all and unaligned-channel GFLOP."""
    cfg = getattr(step, "train_cfg", None)
    if cfg is None:
        return None
    try:
        from fastep.zoo.step.train_step import step_conv_census
        return step_conv_census(cfg, getattr(step, "model_cfg", None), loss_cfg=step.loss_cfg).summary()
    except Exception as err:  # noqa: BLE001 - a proxy must not fail the timing
        return {"error": f"{type(err).__name__}: {err}"[:200]}


def _time_case(fastep_bench, device, approach, impl, which, batch, cap_bytes):
    """Build, compile, warm up and time one case; returns the record (a dict).  Whatever happens,
    the step and its tensors are released before returning (even when an OOM traceback keeps
    this frame alive), so the next case starts from an empty device."""
    cuda = device.startswith("cuda")
    bench.reset_compiler()
    bench.free_memory()
    step = A = B = None
    try:
        with bench.memory_cap(cap_bytes, device):
            step = bench.make_step(approach, batch, CFG.resolution, impl, device,
                                   compile=CFG.compile, cuda_graphs=CFG.cuda_graphs,
                                   model_overrides=CFG.model_overrides,
                                   perceptual_backbone=CFG.perceptual_backbone)
            A, B = bench.random_batch(batch, CFG.resolution, device)
            bench.sync(device)
            t0 = time.perf_counter()
            with generated_code() as codes:
                step(A, B)  # compiles on the fast path
                bench.sync(device)
            first = time.perf_counter() - t0
            kernels = count_kernels(codes).as_dict() if codes else None
            if codes:
                ARTIFACTS.save()  # cumulative: every graph compiled by this process so far
            static = peak = reserved = None
            if cuda:
                static = torch.cuda.memory_allocated()  # weights, grads, optimizer state at rest
                torch.cuda.reset_peak_memory_stats()
                step(A, B)
                bench.sync(device)
                peak = torch.cuda.max_memory_allocated()
                reserved = torch.cuda.max_memory_reserved()
            flops = (_OURS_V3_FLOP_PER_IMAGE_256 * batch * (CFG.resolution / 256) ** 2
                     if approach == "ours_v3" else None)
            rec = fastep_bench(lambda: step(A, B), group="train_time",
                               case=f"{approach}_{which}_b{batch}_r{CFG.resolution}", impl=impl,
                               device=device, flops=flops, warmup=CFG.warmup, rounds=CFG.steps,
                               approach=approach, which=which, batch=batch,
                               resolution=CFG.resolution)
            s_per_kimg = rec.median_s * 1000.0 / batch
            rec.extra["s_per_kimg"] = s_per_kimg
            return {
                "status": "ok", "approach": approach, "impl": impl, "which": which,
                "batch": batch, "resolution": CFG.resolution, "device": device,
                "median_s": rec.median_s, "mean_s": rec.mean_s, "rounds": rec.rounds,
                "s_per_kimg": s_per_kimg, "first_call_s": first,
                "peak_mem_bytes": peak if cuda else rec.peak_mem_bytes,
                "peak_mem_kind": "cuda_max_allocated" if cuda else rec.peak_mem_kind,
                "static_mem_bytes": static, "peak_reserved_bytes": reserved,
                "mem_cap_bytes": cap_bytes,
                "within_cap": (None if cap_bytes is None or reserved is None
                               else reserved <= cap_bytes),
                "switches": bench.effective_switches(step, impl, device, CFG.compile,
                                                     CFG.cuda_graphs),
                "images_per_call": getattr(step, "images_per_call", batch),
                # CPU-measurable proxies of the GPU step: kernel launches of the compiled graphs
                # (read from inductor's generated code) and the conv work with channel counts that
                # are not multiples of 8 (slow tensor-core paths)
                "compiled_kernels": kernels,
                "conv_census": _conv_census(step),
                "compile_cache": {"artifacts_loaded": ARTIFACTS_LOADED, **CACHE_PATHS},
            }
    finally:
        step = A = B = None  # noqa: F841 - drop the references held by this frame
        bench.reset_compiler()
        bench.free_memory()


@pytest.mark.parametrize("approach,impl,which", CASES,
                         ids=[f"{a}-{i}-{w}" for a, i, w in CASES])
def test_train_time(fastep_bench, device, approach, impl, which):
    base = {"approach": approach, "impl": impl, "which": which, "device": device,
            "resolution": CFG.resolution}
    if CFG.deadline:
        expect = _DURATION.get((impl, which), _DURATION.get((impl, "b8"), 0.0))
        if time.time() + expect > CFG.deadline:
            _write({**base, "status": "skipped (time budget)"})
            pytest.skip("time budget of `fastep bench --time-budget` used up "
                        f"(a {impl}/{which} case took {expect:.0f} s)")
    t_case = time.time()
    cuda = device.startswith("cuda")
    cap = CFG.mem_cap_gib * bench.GIB if cuda else None
    failure = None
    try:
        if which == "b8":
            batch = CFG.batch
            record = _time_case(fastep_bench, device, approach, impl, which, batch, None)
            _B8[(approach, impl)] = record
        else:
            b8 = _B8.get((approach, impl))
            guess = None
            if cuda and b8 and b8.get("peak_mem_bytes") and b8.get("static_mem_bytes") is not None:
                guess = bench.guess_max_batch(b8["peak_mem_bytes"], b8["static_mem_bytes"],
                                              b8["batch"], cap)
            predict = bool(cuda and impl == "fastep" and CFG.fast_max_batch == "predict" and guess)
            record = bench.run_max_batch_case(
                lambda b: _time_case(fastep_bench, device, approach, impl, which, b, cap),
                lambda: bench.search_max_batch(approach, CFG.resolution, impl, device, CFG,
                                               guess=guess),
                guess=guess, predict=predict)
        record["case_wall_s"] = time.time() - t_case
        _DURATION[(impl, which)] = record["case_wall_s"]
        _write(record)
        print(f"{approach}/{impl}/{which}: batch {record['batch']}: "
              f"{record['s_per_kimg']:.4g} s/kimg, first call {record['first_call_s']:.1f} s")
    except Exception as err:  # noqa: BLE001
        failure = {**base, "status": "error", "error": f"{type(err).__name__}: {err}"[:500],
                   "traceback": traceback.format_exc()[-3000:]}
    if failure is not None:
        # fail without handing pytest the traceback: its frames would pin device memory (the
        # models of this case) for the rest of the session; the traceback is in the record
        _write(failure)
        bench.free_memory()
        pytest.fail(f"{approach}/{impl}/{which}: {failure['error']}\n{failure['traceback']}",
                    pytrace=False)
