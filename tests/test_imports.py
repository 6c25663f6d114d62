"""Every module of fastep imports on its own, first, in a fresh process: no import cycle that a
particular import order hides, and no side effects at import time (no output, no files, no CUDA
initialisation, no change to torch's RNG, threads or default dtype, no environment changes)."""
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import fastep

ROOT = Path(fastep.__file__).resolve().parent



def _modules():
    names = ["fastep"]
    for info in pkgutil.walk_packages([str(ROOT)], prefix="fastep."):
        if not info.name.endswith(".__main__"):  # ``python -m ...`` entry points: running is their job
            names.append(info.name)
    return sorted(names)


# One interpreter that imports torch (what every module needs anyway), then forks one child per
# module: each child starts with no fastep module imported and imports exactly one.
_RUNNER = textwrap.dedent(r"""
    import io, json, os, sys, contextlib, importlib, traceback
    import torch
    names = json.loads(sys.argv[1])
    failures = []
    for name in names:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            out = io.StringIO()
            problems = []
            try:
                before = (torch.get_rng_state().clone(), torch.get_num_threads(), torch.get_default_dtype(),
                          dict(os.environ), sorted(os.listdir(".")))
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                    importlib.import_module(name)
                if out.getvalue():
                    problems.append(f"printed {out.getvalue()[:200]!r}")
                if not torch.equal(before[0], torch.get_rng_state()):
                    problems.append("changed torch's RNG state")
                if torch.get_num_threads() != before[1]:
                    problems.append("changed torch's thread count")
                if torch.get_default_dtype() != before[2]:
                    problems.append("changed the default dtype")
                if dict(os.environ) != before[3]:
                    problems.append("changed the environment")
                if sorted(os.listdir(".")) != before[4]:
                    problems.append("created files")
                if torch.cuda.is_initialized():
                    problems.append("initialised CUDA")
            except BaseException:
                problems.append(traceback.format_exc(limit=6))
            os.write(w, json.dumps(problems).encode())
            os._exit(0)
        os.close(w)
        data = b""
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        for p in json.loads(data or b'["child died"]'):
            failures.append(f"{name}: {p}")
    print(json.dumps(failures))
""")


def test_every_module_imports_alone_without_side_effects(tmp_path):
    import json

    names = _modules()
    assert "fastep.zoo.step" in names and "fastep.train.trainer" in names and len(names) > 40
    env = dict(os.environ, PYTHONPATH=str(ROOT.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("FASTEP_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(names)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(failures)
