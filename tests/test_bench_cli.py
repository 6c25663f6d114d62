"""`fastep bench`: the max-batch search, the paper's table, the report, the scaling plot, and the
quick CPU mode end to end (tiny size; checks fields, never speeds)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastep import bench

REPO = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------ max-batch search

class FakeMemory:
    """A fake device: a step of batch b needs static + b * per_image bytes; above the cap the
    step raises torch.OutOfMemoryError, like the CUDA caching allocator under a memory fraction."""

    def __init__(self, cap, static=1000, per_image=100):
        self.cap, self.static, self.per_image = cap, static, per_image
        self.calls = []

    @property
    def threshold(self):
        return max(0, (self.cap - self.static) // self.per_image)

    def run(self, batch):
        self.calls.append(batch)
        need = self.static + batch * self.per_image
        if need > self.cap:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {need} bytes")
        return {"batch": batch, "peak_mem_bytes": need}


@pytest.mark.parametrize("threshold", [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 100, 511, 1000, 1023, 1024, 5000])
@pytest.mark.parametrize("start,guess", [(8, None), (1, None), (8, 5), (8, 12), (3, 1000)])
def test_search_finds_exact_threshold(threshold, start, guess):
    limit = 1024
    probes = []

    def fits(b):
        probes.append(b)
        assert 1 <= b <= limit
        return b <= threshold

    res = bench.find_max_batch(fits, start=start, limit=limit, guess=guess)
    assert res.max_batch == min(threshold, limit)
    assert res.hit_limit == (threshold >= limit)
    assert len(probes) == len(set(probes)), "a batch was probed twice"
    assert len(probes) <= 2 * math.ceil(math.log2(limit)) + 3
    assert [b for b, _ in res.probes] == probes


def test_search_with_a_good_guess_costs_two_probes():
    res = bench.find_max_batch(lambda b: b <= 37, guess=37, limit=1024)
    assert res.max_batch == 37 and [b for b, _ in res.probes] == [37, 38]


@pytest.mark.parametrize("cap", [900, 1100, 1000 + 8 * 100, 1000 + 8 * 100 + 99, 1000 + 57 * 100, 10 ** 6])
def test_search_on_fake_memory_model_raising_oom(cap):
    dev = FakeMemory(cap)
    seen = []
    fits = bench.fits_from_runner(dev.run, on_probe=lambda b, ok, info: seen.append((b, ok)))
    res = bench.find_max_batch(fits, start=8, limit=1024)
    assert res.max_batch == min(dev.threshold, 1024)
    assert seen == res.probes
    # seeded by the memory per image measured at batch 8 (what the suite does on CUDA)
    dev2 = FakeMemory(cap)
    guess = bench.guess_max_batch(dev2.static + 8 * dev2.per_image, dev2.static, 8, cap, margin=1.0)
    res2 = bench.find_max_batch(bench.fits_from_runner(dev2.run), start=8, limit=1024, guess=guess)
    assert res2.max_batch == res.max_batch
    if 1 <= dev.threshold < 1024:
        assert len(dev2.calls) == 2  # the affine model is exact here: guess, guess + 1


def test_search_propagates_errors_that_are_not_oom():
    def run(b):
        raise ValueError("shape mismatch in the step")

    with pytest.raises(ValueError, match="shape mismatch"):
        bench.find_max_batch(bench.fits_from_runner(run), start=8)


def test_is_oom_follows_the_exception_chain():
    assert bench.is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    try:
        try:
            raise torch.OutOfMemoryError("x")
        except Exception as inner:
            raise RuntimeError("BackendCompilerFailed: inductor raised") from inner
    except RuntimeError as outer:
        assert bench.is_oom(outer)
    assert bench.is_oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not bench.is_oom(RuntimeError("expected scalar type Float"))


@pytest.mark.parametrize("bad", [dict(limit=0), dict(start=0)])
def test_search_rejects_bad_arguments(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        bench.find_max_batch(lambda b: True, **bad)


class _TinyStep:
    """A real (tiny) optimisation step whose memory model says OOM above ``threshold``."""

    threshold = 5

    def __init__(self, batch):
        self.batch = batch
        self.net = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
        self.images_per_call = batch

    def __call__(self, A, B):
        if A.shape[0] > self.threshold:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        self.opt.zero_grad()
        loss = (self.net(A) - B).abs().mean()
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}


def _tiny_factory(approach, batch, resolution, impl, device, **kw):
    return _TinyStep(batch)


def test_search_max_batch_runs_real_probes(monkeypatch):
    monkeypatch.setattr(bench.timing, "make_step", _tiny_factory)
    cfg = bench.BenchConfig(batch=2, resolution=16, max_batch_limit=64, probe_steps=2)
    search, probes = bench.search_max_batch("ours_v3", 16, "fastep", "cpu", cfg, log=lambda s: None)
    assert search.max_batch == _TinyStep.threshold
    assert probes[5]["batch"] == 5 and "oom" in probes[6]


# ------------------------------------------------------------------------------ the paper's table

def test_paper_table_data():
    from fastep.bench import paper
    from fastep.zoo.step.config import APPROACHES

    assert tuple(paper.PAPER_TABLE) == paper.APPROACHES == bench.APPROACHES == APPROACHES
    for a, row in paper.PAPER_TABLE.items():
        assert row.approach == a
        assert row.max_batch >= 8 and row.s_per_kimg_max <= row.s_per_kimg_b8
        if row.max_batch == 8:
            assert row.s_per_kimg_max == row.s_per_kimg_b8
    t = paper.PAPER_TABLE
    assert (t["ours_v3"].s_per_kimg_b8, t["ours_v3"].max_batch, t["ours_v3"].s_per_kimg_max) == (64.92, 16, 53.80)
    assert (t["bicycle_v2"].s_per_kimg_b8, t["bicycle_v1"].s_per_kimg_max) == (155.72, 85.36)
    assert abs(paper.FLOOR_S_PER_KIMG - 0.38) < 0.005
    # the paper's own numbers satisfy the ordering claim that fastep checks
    assert paper.paper_ordering_holds({a: r.s_per_kimg_b8 for a, r in t.items()})
    assert not paper.paper_ordering_holds({**{a: r.s_per_kimg_b8 for a, r in t.items()}, "ours_v3": 200.0})
    # the loss terms are the trainer's presets (one approach table)
    from fastep.zoo.step.config import LossConfig
    for a in paper.APPROACHES:
        assert paper.loss_terms(a) == LossConfig.preset(a).table_row()
    pp = {a: paper.passes_per_step(a) for a in paper.APPROACHES}
    assert pp["ours_v3"] == pp["ours_v4"] and pp["bicycle_v2"] == pp["ours_v1"]
    assert pp["ours_v3"]["G"] < pp["bicycle_v1"]["G"] < pp["bicycle_v2"]["G"]


def test_report_rows_ordering_and_targets():
    recs = []
    for i, a in enumerate(bench.APPROACHES):
        t = {"bicycle_v1": 3.0, "bicycle_v2": 5.0, "ours_v1": 4.8, "ours_v2": 3.1,
             "ours_v3": 1.5, "ours_v4": 1.4}[a]
        for impl, f in (("fastep", 1.0), ("baseline", 6.0)):
            recs.append(dict(status="ok", approach=a, impl=impl, which="b8", batch=8,
                             s_per_kimg=t * f, peak_mem_bytes=8 * 100 * 2 ** 20, device="cuda",
                             first_call_s=1.0))
            recs.append(dict(status="ok", approach=a, impl=impl, which="max", batch=40,
                             s_per_kimg=t * f * 0.5, peak_mem_bytes=None, device="cuda",
                             search={"max_batch": 40, "probes": [[40, True], [41, False]],
                                     "hit_limit": False}))
    cfg = bench.BenchConfig()
    rep = bench.build_report(recs, cfg, {"device": "NVIDIA H100 80GB HBM3"})
    row = {r["approach"]: r for r in rep["rows"]}
    assert row["ours_v3"]["speedup_b8"] == pytest.approx(6.0)
    assert row["ours_v3"]["fast_max_batch"] == 40
    assert row["ours_v3"]["fast_peak_MiB_per_image"] == pytest.approx(100.0)
    assert rep["ordering_b8"]["holds"] is True and rep["ordering_max"]["holds"] is True
    assert rep["targets"]["ours_v3_b8"]["status"] == "met"
    assert rep["targets"]["ours_v3_best"]["status"] == "met"  # 0.75 at the max batch
    assert rep["targets"]["ours_v3_speedup_b8"]["status"] == "met"
    md = bench.report_markdown(rep)
    assert "| Ours v3 | 64.9 | 1.5 | 9 | 6.00x |" in md and "arithmetic floor" in md
    # break the ordering: the explanation names the offending pair
    for r in recs:
        if r["approach"] == "bicycle_v1" and r["impl"] == "fastep":
            r["s_per_kimg"] = 1.0
    rep = bench.build_report(recs, cfg, {"device": "cpu"})
    assert rep["ordering_b8"]["holds"] is False
    assert "bicycle_v1" in rep["ordering_b8"]["explanation"]
    assert rep["targets"]["ours_v3_b8"]["status"] == "n/a"


def test_cli_rejects_unknown_approach():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--approaches", "ours_v9"])
    args = parser.parse_args(["--approaches", "Ours-v3,bicycle_v1", "--quick"])
    assert args.approaches == ["ours_v3", "bicycle_v1"]


# ------------------------------------------------------------------------------ scaling

def test_scaling_sweep_and_plot(tmp_path, monkeypatch):
    scaling = _load("scaling")
    monkeypatch.setattr(bench.timing, "make_step", _tiny_factory)
    _TinyStep.threshold = 5
    sweep = scaling.run_sweep(device="cpu", batches=[1, 2, 8], resolutions=[16, 32], base_resolution=16,
                              base_batch=2, warmup=0, steps=2, log=lambda s: None)
    status = {(p["sweep"], p["batch"], p["resolution"]): p["status"] for p in sweep["points"]}
    assert status[("batch", 8, 16)] == "OOM" and status[("batch", 2, 16)] == "ok"
    assert status[("resolution", 2, 32)] == "ok"
    ok = [p for p in sweep["points"] if p["status"] == "ok"]
    assert all(p["s_per_kimg"] > 0 and p["rounds"] == 2 for p in ok)
    png = scaling.plot(sweep, tmp_path / "scaling.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ end to end

def test_quick_cpu_mode_end_to_end(tmp_path):
    """`fastep bench --quick` at 32 x 32, two approaches, 2 timed steps: JSON + markdown + table.
    (About 1 min on 2 cores: the full VGG16 of the perceptual loss runs in every step.)"""
    out = tmp_path / "results"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "fastep", "bench", "--quick", "--resolution", "32",
         "--approaches", "ours_v3,bicycle_v2", "--steps", "2", "--warmup", "0",
         "--max-batch-limit", "2", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    js, md = out / "train_cpu_quick.json", out / "train_cpu_quick.md"
    assert js.exists() and md.exists(), log[-2000:]
    rep = json.loads(js.read_text())
    for k in ("date", "device", "torch", "cuda", "triton", "python", "commit"):
        assert k in rep["env"], k
    assert rep["config"]["quick"] and rep["config"]["resolution"] == 32
    assert [r["approach"] for r in rep["rows"]] == ["ours_v3", "bicycle_v2"]
    for row in rep["rows"]:
        for key in ("paper_s_per_kimg_b8", "paper_max_batch", "paper_s_per_kimg_max",
                    "fast_s_per_kimg_b8", "base_s_per_kimg_b8", "speedup_b8",
                    "fast_max_batch", "fast_s_per_kimg_max", "base_max_batch",
                    "base_s_per_kimg_max", "speedup_max"):
            assert row[key] is not None, (row["approach"], key)
        # CPU: no memory cap, the search stops at the ceiling and says so
        assert row["fast_max_batch"] == 2 and row["fast_max_batch_hit_limit"] is True
    recs = rep["records"]
    # per approach: fast path and eager fp32 at batch 8 and max batch, eager bf16 at batch 8
    assert len(recs) == 10 and all(r["status"] == "ok" for r in recs)
    assert sorted((r["impl"], r["which"]) for r in recs if r["approach"] == "ours_v3") == [
        ("baseline", "b8"), ("baseline", "max"), ("baseline_bf16", "b8"), ("fastep", "b8"), ("fastep", "max")]
    assert all(r["rounds"] == 2 and r["s_per_kimg"] > 0 for r in recs)
    assert all(r["switches"]["cudnn_benchmark"] for r in recs)
    base = [r["switches"] for r in recs if r["impl"] == "baseline"]
    assert {(sw["eager_fp32"], sw["tf32_conv"], sw["tf32_matmul"], sw["ops"]) for sw in base} == {
        (True, False, False, "reference")}
    bf16 = [r["switches"] for r in recs if r["impl"] == "baseline_bf16"]
    assert {(sw["compile"], sw["fused_adam"], sw["ops"]) for sw in bf16} == {(False, False, "reference")}
    for row in rep["rows"]:
        assert row["bf16_s_per_kimg_b8"] and row["speedup_bf16_b8"]
    # the verdict follows from the measured times (ours_v3 is FASTEST, bicycle_v2 SLOWEST)
    t = {r["approach"]: r["fast_s_per_kimg_b8"] for r in rep["rows"]}
    holds = t["ours_v3"] < t["bicycle_v2"]
    assert rep["ordering_b8"]["holds"] is holds
    assert rep["ordering_b8"]["explanation"].startswith("holds:") is holds
    assert rep["targets"]["ours_v3_b8"]["status"] == "n/a"
    assert rep["arithmetic_floor_s_per_kimg"] == pytest.approx(0.38, abs=0.005)
    text = md.read_text()
    assert "| approach | paper b8 |" in text and "| Ours v3 |" in text and "| Bicycle v2" in text
    assert "| eager bf16 b2 | speedup vs bf16 b2 |" in text and "TF32 off" in text  # quick: batch 2
    assert "Paper ordering" in text and "arithmetic floor" in text
    assert "| Ours v3 |" in proc.stdout  # the table is printed
    # the shared benchmark summary saw the same cases (group train_time); its files are only
    # written with --kernels, so a kernel run's kernels_<device>.json in the same folder survives
    assert "fastep training time (s/kimg, median)" in proc.stdout
    assert "fastep benchmark table" in proc.stdout and not list(out.glob("kernels_*.json"))


def test_from_records_merges_runs(tmp_path, capsys):
    """Two GPU calls (different approaches) merged into one report without measuring."""
    from fastep.cli import main

    def rec(a, impl, which, t, batch=8):
        return dict(status="ok", approach=a, impl=impl, which=which, batch=batch, s_per_kimg=t,
                    device="cuda", peak_mem_bytes=batch * 2 ** 28, rounds=10)

    head = {"kind": "header", "env": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11"},
            "config": {"resolution": 256, "batch": 8, "steps": 10, "warmup": 3}}
    f1, f2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    f1.write_text("\n".join(json.dumps(r) for r in [head, rec("ours_v3", "fastep", "b8", 1.5),
                                                     rec("ours_v3", "baseline", "b8", 9.0)]))
    f2.write_text("\n".join(json.dumps(r) for r in [head, rec("ours_v1", "fastep", "b8", 4.0),
                                                     {"approach": "ours_v1", "impl": "fastep",
                                                      "which": "max", "status": "skipped (time budget)"}]))
    assert main(["bench", "--from-records", str(f1), str(f2), "--out", str(tmp_path / "out")]) == 0
    rep = json.loads((tmp_path / "out" / "train_cuda.json").read_text())
    assert [r["approach"] for r in rep["rows"]] == ["ours_v1", "ours_v3"]
    assert rep["env"]["device"] == "NVIDIA H100 80GB HBM3" and rep["config"]["resolution"] == 256
    assert rep["targets"]["ours_v3_b8"]["status"] == "met"
    assert rep["targets"]["ours_v3_speedup_b8"]["status"] == "met"
    assert rep["ordering_b8"]["holds"] is True
    assert any(p["status"].startswith("skipped") for p in rep["problems"])
    assert "| Ours v3 | 64.9 | 1.5 | 9 | 6.00x |" in capsys.readouterr().out
    assert (tmp_path / "out" / "train_cuda.records.jsonl").exists()


def _timed_until(threshold, calls):
    def time_at(batch):
        calls.append(batch)
        if batch > threshold:
            raise torch.OutOfMemoryError("CUDA out of memory (timed run)")
        return {"batch": batch, "s_per_kimg": 1.0}
    return time_at


def test_max_batch_case_predict_steps_down_until_it_fits():
    calls = []
    rec = bench.run_max_batch_case(_timed_until(90, calls), None, guess=100, predict=True)
    assert calls == [100, 95, 90] and rec["batch"] == 90
    assert rec["search"]["mode"] == "predict" and rec["search"]["max_batch"] == 90
    assert rec["search"]["probes"] == [[100, False], [95, False], [90, True]]
    with pytest.raises(torch.OutOfMemoryError):  # gives up after 4 attempts
        bench.run_max_batch_case(_timed_until(10, []), None, guess=100, predict=True)


def test_max_batch_case_exact_uses_the_search_and_notes_a_step_down():
    dev = FakeMemory(cap=1000 + 50 * 100)
    search = lambda: (bench.find_max_batch(bench.fits_from_runner(dev.run), start=8),  # noqa: E731
                      {50: {"peak_mem_bytes": 6000}})
    rec = bench.run_max_batch_case(_timed_until(50, []), search, guess=None, predict=False)
    assert rec["batch"] == 50 and rec["search"]["max_batch"] == 50 and "note" not in rec
    assert rec["search"]["mode"] == "exact" and rec["probe_peaks"] == {"50": 6000}
    rec = bench.run_max_batch_case(_timed_until(49, []), search, guess=None, predict=False)
    assert rec["batch"] == 49 and "ran out of memory" in rec["note"]
    with pytest.raises(ValueError, match="needs a positive"):
        bench.run_max_batch_case(_timed_until(49, []), None, guess=None, predict=True)


def test_results_default_outside_the_source_tree(monkeypatch, tmp_path):
    """Without --out, results go to the user's cache folder, never into benchmarks/results."""
    monkeypatch.delenv("FASTEP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert bench.default_out() == tmp_path / "fastep" / "bench"
    monkeypatch.setenv("FASTEP_CACHE", str(tmp_path / "c"))  # fastep's one cache folder
    assert bench.default_out() == tmp_path / "c" / "bench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert bench.REPO_ROOT not in bench.default_out().parents
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert parser.parse_args(["--quick"]).out is None


def test_bench_step_numerics(monkeypatch):
    """The eager fp32 baseline runs with TF32 off for convs and matmuls and reference ops; the
    eager bf16 baseline with reference ops; the fast path with neither; the flags come back."""
    from fastep import _ext
    from fastep.bench.timing import BenchStep

    seen = {}

    class Probe:
        train_cfg = None

        def __call__(self, A, B):
            seen["tf32"] = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            seen["backend"] = _ext.forced_backend("gram")
            return {}

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        BenchStep(Probe(), "baseline")(None, None)
        assert seen == {"tf32": (False, False), "backend": "reference"}
        assert torch.backends.cudnn.allow_tf32 is True
        BenchStep(Probe(), "baseline_bf16")(None, None)
        assert seen["tf32"][0] is True and seen["backend"] == "reference"
        BenchStep(Probe(), "fastep")(None, None)
        assert seen["backend"] is None
        assert BenchStep(Probe(), "fastep").train_cfg is None  # attributes read through
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    with pytest.raises(ValueError, match="baseline_bf16"):
        bench.step_switches("eager", "cpu")
