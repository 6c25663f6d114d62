"""fastep._ext: one registry of routes per op, forcing, and what `fastep info` prints."""
import subprocess
import sys

import pytest
import torch

import fastep
import fastep.ops
from fastep import _ext


@pytest.fixture
def toy():
    """An op with a cuBLAS route for half precision, Triton for float32, and its backward."""
    calls = []

    def impl(name):
        return lambda x: calls.append(name) or name

    op = _ext.register_op("toy_op", cuda=[("cublas", _ext.HALF_TYPES), "triton"], cpu=["cpp"],
                          impls={"cublas": impl("cublas"), "triton": impl("triton"), "cpp": impl("cpp"),
                                 "reference": impl("reference")})
    bwd = _ext.register_op("toy_op_backward", follows="toy_op",
                           impls={"triton": impl("triton-bwd"), "reference": impl("reference-bwd")})
    yield op, bwd, calls
    _ext._OPS.pop("toy_op", None)
    _ext._OPS.pop("toy_op_backward", None)


def test_routes_by_device_and_dtype(toy, monkeypatch):
    op, bwd, _ = toy
    monkeypatch.setattr(_ext, "has_triton", lambda: True)
    monkeypatch.setattr(_ext, "has_C", lambda: True)
    for dt, want in ((torch.float16, "cublas"), (torch.bfloat16, "cublas"), (torch.float32, "triton"),
                     (torch.float64, "reference")):  # Triton and cuBLAS take no float64
        assert _ext.backend_for("toy_op", "cuda", dt) == want
    assert _ext.backend_for("toy_op", "cuda", [torch.float16, torch.float32]) == "triton"
    assert _ext.backend_for("toy_op", "cpu", torch.float32) == "cpp"
    monkeypatch.setattr(_ext, "has_C", lambda: False)
    assert _ext.backend_for("toy_op", "cpu", torch.float32) == "reference"
    # the backward follows the forward's routes, with its own implementations
    assert _ext.backend_for("toy_op_backward", "cuda", torch.float32) == "triton"
    assert _ext.backend_for("toy_op_backward", "cuda", torch.float16) == "triton"  # it has no cuBLAS
    x = torch.zeros(2)
    assert op.dispatch(x)(x) == "reference" and bwd.dispatch(x)(x) == "reference-bwd"


def test_forcing_globally_and_per_op(toy, monkeypatch):
    monkeypatch.setattr(_ext, "has_triton", lambda: True)
    with _ext.force_backend("reference"):
        assert _ext.backend_for("toy_op", "cuda", torch.float16) == "reference"
        assert _ext.backend_for("toy_op_backward", "cuda", torch.float32) == "reference"
        with _ext.force_backend(None):  # the routes again
            assert _ext.backend_for("toy_op", "cuda", torch.float16) == "cublas"
    with _ext.force_backend("triton", ops=["toy_op"]):
        assert _ext.backend_for("toy_op", "cuda", torch.float16) == "triton"
        assert _ext.backend_for("toy_op_backward", "cuda", torch.float16) == "triton"
        assert _ext.backend_for("gram", "cuda", torch.float16) == "cublas"  # other ops untouched
    # a forced backend the op lacks, or that is not available here, falls back to the routes
    with _ext.force_backend("cuda"):
        assert _ext.backend_for("toy_op", "cuda", torch.float16) == "cublas"
    with _ext.force_backend("triton"):
        assert _ext.backend_for("toy_op", "cpu", torch.float32) in ("cpp", "reference") \
            or _ext.triton_interpret()
    monkeypatch.setenv("FASTEP_BACKEND", "toy_op=reference")
    assert _ext.backend_for("toy_op", "cuda", torch.float32) == "reference"
    monkeypatch.setenv("FASTEP_BACKEND", "reference")
    assert _ext.backend_for("toy_op", "cuda", torch.float32) == "reference"


def test_bad_switches_are_one_line_errors(toy, monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'fast'.*triton, cuda, cpp, cublas, reference"):
        _ext.parse_forced("fast")
    with pytest.raises(ValueError, match="unknown op 'grm'.*gram"):
        _ext.parse_forced("grm=triton")
    assert _ext.parse_forced("gram=triton, pairwise_style_distance=cublas") == {
        "gram": "triton", "pairwise_style_distance": "cublas"}
    monkeypatch.setenv("FASTEP_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FASTEP_BACKEND"):
        _ext.backend_for("toy_op", "cpu")
    monkeypatch.delenv("FASTEP_BACKEND")
    monkeypatch.setenv("FASTEP_FP32_DOT", "fast")
    with pytest.raises(ValueError, match="FASTEP_FP32_DOT.*tf32x3, ieee"):
        _ext.fp32_dot_mode()
    monkeypatch.setenv("FASTEP_FP32_DOT", "ieee")
    assert _ext.fp32_dot_mode() == "ieee"
    with pytest.raises(ValueError, match="unknown backend"):
        _ext.register_op("toy_bad", cuda=["tensorcore"])
    with pytest.raises(ValueError, match="no implementation"):
        _ext.register_op("toy_bad", cuda=["triton"], impls={"reference": lambda: 0})
    with pytest.raises(KeyError, match="never registered"):
        _ext.backend_for("no_such_op", "cpu")


def test_every_public_op_dispatches_through_the_registry(monkeypatch):
    """Forcing the reference backend reaches every fused op (one dispatch path, no own ifs)."""
    seen = []
    real = _ext.backend_for

    def spy(name, device, dtype=None):
        b = real(name, device, dtype)
        seen.append((name, b))
        return b

    monkeypatch.setattr(_ext, "backend_for", spy)
    f = [torch.randn(2, 4, 5, 5, requires_grad=True)]
    with _ext.force_backend("reference"):
        fastep.gram(f[0]).sum().backward()
        fastep.style_loss(f, [torch.randn(2, 4, 5, 5)]).backward()
        fastep.ops.style_distance(f, [torch.randn(2, 4, 5, 5)])
        fastep.pairwise_style_distance(torch.randn(3, 7))
        fastep.ops.weighted_feature_distance(f, [torch.randn(2, 4, 5, 5)]).backward()
        fastep.ops.lpips_distance(f, [torch.randn(2, 4, 5, 5)], [torch.rand(4)]).sum().backward()
    names = {n for n, _ in seen}
    assert {"gram", "style_loss", "gram_diff", "pairwise_style_distance", "weighted_feature_distance",
            "weighted_feature_distance_backward", "lpips_distance", "lpips_distance_backward"} <= names
    assert {b for _, b in seen} == {"reference"}


def test_info_shows_every_route():
    text = fastep.info()
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  ") and ":" in ln}
    assert "cuda: fp32=triton bf16,fp16=cublas" in lines["gram"]
    assert "cuda: fp32,bf16,fp16=triton" in lines["style_loss"]
    assert "cuda: fp32,bf16,fp16=cublas" in lines["pairwise_style_distance"]
    assert "has: triton, cublas, reference" in lines["pairwise_style_distance"]
    assert "float32 dots in Triton kernels: tf32x3" in text
    assert "weighted_feature_distance_backward" not in text  # backward ops follow their forward


def test_ext_does_not_import_the_ops():
    """The registry sits below the ops: importing it alone loads no op module (no import circle)."""
    code = "import sys, fastep._ext; print(any(m.startswith('fastep.ops') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_info_reports_a_bad_switch_in_one_line():
    import os

    env = dict(os.environ, FASTEP_BACKEND="gram=fast")
    proc = subprocess.run([sys.executable, "-m", "fastep", "info"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fastep info: FASTEP_BACKEND: unknown backend 'fast' in 'gram=fast'; expected one of triton, "
        "cuda, cpp, cublas, reference (or op=backend pairs)"]
    assert "cuda: fp32,bf16,fp16=cublas" in proc.stdout  # the routes, without the bad switch
