"""benchmarks/gpu_check.sh and its Python entry points stay runnable (they only run on a GPU
machine rarely, so they are exercised here on CPU: syntax, --help, the smoke paths, the summary)."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], check=True)
    text = (BENCH / "gpu_check.sh").read_text()
    for needed in ("FASTEP_TEST_FAILLOG", "-rA", "FORCE_CUDA=1", "TORCH_CUDA_ARCH_LIST", "timeout",
                   "GPU_CHECK_SMOKE", "conv_rewrites.py", "gpu_check.py train", "test_bench_losses.py"):
        assert needed in text, needed


@pytest.mark.parametrize("args", [["gpu_check.py", "--help"], ["gpu_check.py", "train", "--help"],
                                  ["gpu_check.py", "summary", "--help"], ["conv_rewrites.py", "--help"],
                                  ["compile_times.py", "--help"]])
def test_entry_points_answer_help(args):
    out = subprocess.run([sys.executable, str(BENCH / args[0])] + args[1:], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout


def test_bad_arguments_are_one_line_errors():
    out = subprocess.run([sys.executable, str(BENCH / "conv_rewrites.py"), "--resolution", "40"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and "multiple of 32" in out.stderr and "Traceback" not in out.stderr


def test_compile_times_rejects_unknown_approaches():
    out = subprocess.run([sys.executable, str(BENCH / "compile_times.py"), "--approaches", "ours_v9"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and "unknown ours_v9" in out.stderr and "Traceback" not in out.stderr


def test_conv_rewrites_smoke_values_agree():
    mod = _load("conv_rewrites")
    recs = mod.run("cpu", batch=2, resolution=32, dtype="float32", reps=1, warmup=0, only=["logits", "mbstd_conv s2"])
    assert {r["variant"] for r in recs} == {"original", "pad8", "split", "pad136"}
    assert all(r["max_rel_diff_vs_original"] < 1e-5 for r in recs)
    assert all(r["median_ms"] > 0 for r in recs)


def test_train_smoke_writes_records(tmp_path):
    mod = _load("gpu_check")
    rc = mod.main(["train", "--out", str(tmp_path), "--smoke", "--batch", "2", "--resolution", "32",
                   "--steps", "1", "--warmup", "0", "--impls", "eager_bf16", "fast_graphs"])
    assert rc == 0
    recs = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    kinds = [(r["kind"], r.get("impl"), r.get("status")) for r in recs]
    assert kinds[0][0] == "conv_proxy" and "original" in recs[0]
    assert ("train", "eager_bf16", "ok") in kinds
    assert ("train", "fast_graphs", "skipped (CUDA graphs need CUDA)") in kinds
    ok = next(r for r in recs if r.get("status") == "ok")
    assert ok["median_s"] > 0 and ok["s_per_kimg"] == pytest.approx(ok["median_s"] * 500)


def test_summary_lists_every_test_and_figure(tmp_path):
    mod = _load("gpu_check")
    (tmp_path / "tests.log").write_text(
        "tests/ops/test_gram.py::test_launch[(1, 17, 1, 1)-dtype0] PASSED [ 10%]\n"
        "tests/ops/test_gram.py::test_vgg[dtype0-ieee] FAILED [ 20%]\n"
        "tests/train/test_step.py::test_graphs SKIPPED (needs a CUDA device) [ 30%]\n"
        "FAILED tests/ops/test_gram.py::test_vgg[dtype0-ieee] - AssertionError: not close\n")
    (tmp_path / "tests_collected.txt").write_text(
        "tests/ops/test_gram.py::test_launch[(1, 17, 1, 1)-dtype0]\ntests/ops/test_gram.py::test_vgg[dtype0-ieee]\n"
        "tests/train/test_step.py::test_graphs\ntests/losses/test_x.py::test_late\n\n4 tests collected\n")
    rows = [{"kind": "conv_proxy", "original": {"unaligned_conv_gflop": 115.5, "conv_gflop": 2396.6},
             "rewritten": {"unaligned_conv_gflop": 16.9, "conv_gflop": 2202.7}}]
    for impl, ms in (("eager_fp32", 60.0), ("eager_bf16", 30.0), ("fast", 12.0)):
        rows.append({"kind": "train", "impl": impl, "status": "ok", "median_s": ms / 1e3,
                     "s_per_kimg": ms / 8, "first_call_s": 1.0})
    rows.append({"kind": "train", "impl": "fast_graphs", "status": "error", "error": "RuntimeError: boom"})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert mod.main(["summary", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "1 FAILED" in text and "1 PASSED" in text and "1 SKIPPED" in text and "1 NOT RUN (time limit)" in text
    assert "tests/losses/test_x.py::test_late" in text
    assert "fast vs eager_fp32: 5.00x" in text and "fast vs eager_bf16: 2.50x" in text
    assert "115.5 -> 16.9" in text and "RuntimeError: boom" in text
