"""fastep._build: where the first-use build of fastep._C goes, its lock, its fallbacks, and what
``fastep info`` says.  The compiler is replaced by a fake here (a real build takes minutes on a
small CPU): the real thing, a plain ``pip install`` into a fresh venv followed by a C++ op, is
``.ci/install_check.sh`` (run by ``.ci/run``)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastep import _build, _ext

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def status(monkeypatch, tmp_path):
    """A fresh STATUS and an empty cache folder for one test."""
    monkeypatch.setattr(_build, "STATUS", _build.BuildStatus())
    monkeypatch.setenv("FASTEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTEP_NO_BUILD", raising=False)
    monkeypatch.setattr(_build, "_cuda_toolkit", lambda: None)
    return _build.STATUS


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTEP_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert _build.cache_root() == tmp_path / "home" / ".cache" / "fastep"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _build.cache_root() == tmp_path / "xdg" / "fastep"
    monkeypatch.setenv("FASTEP_CACHE", str(tmp_path / "mine"))
    assert _build.cache_root() == tmp_path / "mine"


def test_sources_and_build_dir_follow_torch_and_sources(status, tmp_path):
    src = _build.source_dir()
    assert src is not None and (src / "module.cpp").is_file()
    assert [Path(f).name for f in _build._sources(src, cuda=False)] == sorted(p.name for p in src.glob("*.cpp"))
    d_cpu, d_cuda = _build._build_dir(src, False), _build._build_dir(src, True)
    import torch

    assert d_cpu.parent == tmp_path / "cache" / "ext" and d_cpu != d_cuda
    assert torch.__version__.replace("+", "_") in d_cpu.name and "-cpu-" in d_cpu.name
    # a changed source is a new build folder
    copy = tmp_path / "csrc"
    copy.mkdir()
    for f in src.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert _build._build_dir(copy, False) == d_cpu
    (copy / "module.cpp").write_text((copy / "module.cpp").read_text() + "\n// changed\n")
    assert _build._build_dir(copy, False) != d_cpu


def test_no_compiler_falls_back_with_one_line(status, monkeypatch, capsys):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    mod, reason = _build.load_or_build("ModuleNotFoundError: No module named 'fastep._C'")
    assert mod is None and "no C++ compiler" in reason and "CXX" in reason
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fall back to the reference" in err[0]
    assert status.how == "missing"
    line = _build.status_line(False, False, reason)
    assert line.startswith("fastep._C: NOT available (missing because no C++ compiler")
    assert "No module named 'fastep._C'" in line


def test_no_build_switch(status, monkeypatch, capsys):
    monkeypatch.setenv("FASTEP_NO_BUILD", "1")
    mod, reason = _build.load_or_build("x")
    assert mod is None and "FASTEP_NO_BUILD=1" in reason
    assert capsys.readouterr().err == ""


def _fake_compile(calls):
    def compile_(src, d, cuda):
        calls.append(cuda)
        if cuda:
            raise RuntimeError("nvcc: error: fake failure\nlast line of the CUDA log")
        d.mkdir(parents=True, exist_ok=True)
        _build._lib_path(d).write_bytes(b"not really a library")
    return compile_


def test_build_once_then_cached_and_cuda_falls_back_to_cpu(status, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(_build, "_cuda_toolkit", lambda: "/fake/cuda")
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine
    monkeypatch.setattr(_build, "_compile", _fake_compile(calls))
    monkeypatch.setattr(_build, "_import_built", lambda d: ("module from", d))
    mod, reason = _build.load_or_build("ImportError: undefined symbol: _ZN3c10")
    src = _build.source_dir()
    cpu_dir = _build._build_dir(src, False)
    assert reason is None and mod == ("module from", cpu_dir)
    assert calls == [True, False]  # CUDA tried first, then the CPU kernels
    err = capsys.readouterr().err
    assert err.count("building it once") == 2 and str(cpu_dir) in err
    assert status.how == "built" and status.path == str(cpu_dir)
    meta = json.loads((cpu_dir / "fastep-build.json").read_text())
    assert meta["cuda"] is False
    line = _build.status_line(True, False, None)
    assert f"built on first use at {cpu_dir}" in line and "undefined symbol" in line
    # the next process: loaded from the cache, no compile, nothing printed
    calls.clear()
    monkeypatch.setattr(_build, "STATUS", _build.BuildStatus())
    mod, reason = _build.load_or_build("x")
    assert mod == ("module from", cpu_dir) and calls == [] and _build.STATUS.how == "cached"
    assert capsys.readouterr().err == ""


def test_failed_build_is_one_line_and_never_raises(status, monkeypatch, capsys):
    def broken(src, d, cuda):
        raise RuntimeError("Error building extension '_C'\n... many compiler lines ...\nfatal error: x.h")
    monkeypatch.setattr(_build, "_compile", broken)
    mod, reason = _build.load_or_build("x")
    assert mod is None and "fatal error: x.h" in reason
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fastep: could not build fastep._C") and "reference" in err[-1]
    assert status.how == "missing"


def test_parallel_processes_build_once(tmp_path):
    """Two processes at once: one compiles (the fake compiler takes a second), the other waits
    on the lock and loads the result."""
    script = textwrap.dedent(f"""
        import sys, time
        from fastep import _build
        _build._cuda_toolkit = lambda: None
        def compile_(src, d, cuda):
            with open({str(tmp_path / 'calls')!r}, "a") as f:
                f.write("x")
            time.sleep(1.0)
            d.mkdir(parents=True, exist_ok=True)
            _build._lib_path(d).write_bytes(b"fake")
        _build._compile = compile_
        _build._import_built = lambda d: "loaded"
        mod, reason = _build.load_or_build("missing")
        print(mod, _build.STATUS.how)
    """)
    env = dict(os.environ, FASTEP_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    env.pop("FASTEP_NO_BUILD", None)
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert (tmp_path / "calls").read_text() == "x"  # compiled once
    assert sorted(o[0].split()[-1] for o in outs) == ["built", "cached"]
    assert all(o[0].split()[0] == "loaded" for o in outs)


def test_info_reports_the_installed_extension():
    from fastep.cli_info import info_lines

    line = next(l for l in info_lines() if l.startswith("fastep._C"))
    if _ext.has_C() and _build.STATUS.how not in ("built", "cached"):
        assert line.endswith("built at install")
    else:
        assert "first use" in line or "NOT available" in line


def test_wheel_ships_the_sources(tmp_path):
    """The wheel carries csrc/ as fastep/csrc (what the first-use build compiles) and no torch
    build requirement (pip's isolated build must not download a torch)."""
    import tomllib
    import zipfile

    req = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert not [r for r in req if r.split(">")[0].split("=")[0].strip() == "torch"]
    env = dict(os.environ, FASTEP_NO_EXT="1")  # sources only: no compile in this test
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), str(ROOT)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel, = tmp_path.glob("fastep-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    src = sorted(p.name for p in (ROOT / "csrc").iterdir() if p.suffix in (".cpp", ".cu", ".h"))
    assert {f"fastep/csrc/{n}" for n in src} <= names
    assert "fastep/_build.py" in names and "fastep/kernels/gram.py" in names


def test_unwritable_cache_is_one_line_and_never_raises(status, monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FASTEP_CACHE", str(blocker / "cache"))  # under a file: cannot be created
    monkeypatch.setattr(_build, "_why_not_buildable", lambda: None)
    mod, reason = _build.load_or_build("x")
    assert mod is None and "first-use build failed" in reason
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FASTEP_CACHE" in err[0] and "reference" in err[0]
    assert status.how == "missing"
