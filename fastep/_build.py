"""Build ``fastep._C`` on first use when the install did not build it (or built it for another torch).

``pip install fastep`` in pip's default isolated build cannot see the user's torch, so it
installs fastep without the compiled extension (declaring ``torch`` as a build requirement would
build against whichever torch pip downloads into the throw-away build environment, not
necessarily the one fastep then runs with, and an extension built for another torch version
does not load).  So where ``import fastep._C`` fails, :func:`load_or_build` compiles the same
C++ (and, with a CUDA toolkit and a CUDA torch, CUDA) sources with
:func:`torch.utils.cpp_extension.load` and ninja against the running torch, once, into

    ``$FASTEP_CACHE`` or ``$XDG_CACHE_HOME/fastep`` or ``~/.cache/fastep``, under
    ``ext/_C-<torch version>-<python>-<cpu|cuda>-<hash of sources and flags>/``

and loads it from there on every later run.  A file lock makes parallel processes (DDP ranks,
pytest-xdist workers) build it once; the others wait and load the result.  One line on stderr
says a build is starting.  Nothing here raises: without a compiler, ninja or the sources the C++
ops fall back to the reference PyTorch ops, and ``fastep info`` says why
(:func:`status_line`).  ``FASTEP_NO_BUILD=1`` turns the build off (a previous build is still
loaded).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

__all__ = ["BuildStatus", "STATUS", "cache_root", "source_dir", "load_or_build", "status_line"]

_CXX_FLAGS = ["-O3", "-fopenmp"] if sys.platform.startswith("linux") else ["-O3"]
_LD_FLAGS = ["-fopenmp"] if sys.platform.startswith("linux") else []


@dataclass
class BuildStatus:
    """How ``fastep._C`` came to be (or not): read by ``fastep info``.

    ``how``: ``"installed"`` (built at install), ``"built"`` (compiled on first use in this
    process), ``"cached"`` (compiled on first use earlier, loaded from the cache),
    ``"missing"`` (not available; ``reason`` says why) or ``"unknown"`` (not looked at yet).
    """

    how: str = "unknown"
    path: Optional[str] = None
    reason: Optional[str] = None
    install_error: Optional[str] = None


STATUS = BuildStatus()


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def cache_root() -> Path:
    """``$FASTEP_CACHE``, else ``$XDG_CACHE_HOME/fastep``, else ``~/.cache/fastep``."""
    env = os.environ.get("FASTEP_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fastep"


def source_dir() -> Optional[Path]:
    """The C++/CUDA sources: ``fastep/csrc`` of an install, or ``csrc/`` of a checkout."""
    pkg = Path(__file__).resolve().parent
    for d in (pkg / "csrc", pkg.parent / "csrc"):
        if (d / "module.cpp").is_file():
            return d
    return None


def _cpp_extension():
    """torch.utils.cpp_extension, imported without its "No CUDA runtime is found" warning (a CUDA
    build of torch on a machine without a GPU is normal here; the toolkit is checked below)."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def _cuda_toolkit() -> Optional[str]:
    """A CUDA toolkit root with headers and nvcc, for a CUDA build of torch; else None."""
    import torch

    cpp_extension = _cpp_extension()

    if torch.version.cuda is None:
        return None
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "include", "cuda_runtime_api.h")) \
                and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.realpath(root)
    return None


def _sources(src: Path, cuda: bool) -> List[str]:
    files = sorted(str(p) for p in src.glob("*.cpp"))
    if cuda:
        files += sorted(str(p) for p in src.glob("*.cu"))
    return files


def _build_dir(src: Path, cuda: bool) -> Path:
    import torch

    h = hashlib.sha256()
    for f in sorted(src.iterdir()):
        if f.suffix in (".cpp", ".cu", ".h", ".cuh"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    h.update(json.dumps([_CXX_FLAGS, _LD_FLAGS, torch.__version__, torch.version.cuda,
                         sysconfig.get_config_var("SOABI"), cuda]).encode())
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    version = torch.__version__.replace("+", "_")
    return cache_root() / "ext" / f"_C-{version}-{tag}-{'cuda' if cuda else 'cpu'}-{h.hexdigest()[:12]}"


def _lib_path(build_dir: Path) -> Path:
    suffix = ".pyd" if sys.platform.startswith("win") else ".so"
    return build_dir / f"_C{suffix}"


def _import_built(build_dir: Path):
    path = _lib_path(build_dir)
    spec = importlib.util.spec_from_file_location("fastep._C", str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _FileLock:
    """An exclusive advisory lock on ``path`` (fcntl; a no-op where fcntl is missing)."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self) -> "_FileLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: torch's own FileBaton still guards the build
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"fastep: waiting for another process building fastep._C in {self.path.parent}",
                  file=sys.stderr, flush=True)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


_COMPILE = """
import json, sys
from torch.utils import cpp_extension
a = json.loads(sys.argv[1])
cpp_extension.load(name="_C", sources=a["sources"], extra_cflags=a["cflags"],
                   extra_cuda_cflags=a["cuda_cflags"], extra_ldflags=a["ldflags"],
                   build_directory=a["build_directory"], with_cuda=a["cuda"], verbose=a["verbose"],
                   is_python_module=False)
"""


def _compile(src: Path, build_dir: Path, cuda: bool) -> None:
    """Compile and link ``_C`` into ``build_dir`` (raises on failure).

    Runs in a child process: the compiler's output and torch's per-process extension versioning
    (a second ``load`` of the same name gets renamed) stay out of the caller's process."""
    import subprocess

    build_dir.mkdir(parents=True, exist_ok=True)
    verbose = _flag("FASTEP_BUILD_VERBOSE")
    args = {"sources": _sources(src, cuda), "build_directory": str(build_dir), "cuda": cuda,
            "cflags": list(_CXX_FLAGS) + (["-DFASTEP_WITH_CUDA"] if cuda else []),
            "cuda_cflags": ["-O3", "--use_fast_math", "-DFASTEP_WITH_CUDA"] if cuda else None,
            "ldflags": list(_LD_FLAGS), "verbose": verbose}
    r = subprocess.run([sys.executable, "-c", _COMPILE, json.dumps(args)],
                       stdout=None if verbose else subprocess.PIPE,
                       stderr=None if verbose else subprocess.STDOUT, text=True)
    if r.returncode != 0:
        lines = [l for l in (r.stdout or "").strip().splitlines() if l.strip()]
        errors = [l for l in lines if "error" in l.lower()]
        raise RuntimeError((errors[:1] or lines[-1:] or [f"exit status {r.returncode}"])[0].strip())
    if not _lib_path(build_dir).is_file():
        raise RuntimeError(f"the build produced no {_lib_path(build_dir).name}")


def _why_not_buildable() -> Optional[str]:
    cpp_extension = _cpp_extension()

    if source_dir() is None:
        return "this install ships no C++ sources (fastep/csrc)"
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx!r} not on PATH; install g++ or set CXX)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def load_or_build(install_error: Optional[str] = None) -> Tuple[Optional[object], Optional[str]]:
    """``(module, None)`` with a first-use build of ``fastep._C`` loaded, or ``(None, reason)``.

    ``install_error`` is why ``import fastep._C`` failed.  Never raises.  Updates :data:`STATUS`.
    """
    STATUS.install_error = install_error
    try:
        return _load_or_build()
    except Exception as err:  # noqa: BLE001 - the import of fastep must never fail because of this
        reason = f"first-use build failed: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1]}"
        STATUS.how, STATUS.reason = "missing", reason
        _note(f"fastep: {reason} (cache folder {cache_root()}; set FASTEP_CACHE to a writable folder); "
              f"the C++ ops fall back to the reference PyTorch ops")
        return None, reason


def _load_or_build():
    import torch

    src = source_dir()
    if src is None:
        STATUS.how, STATUS.reason = "missing", "this install ships no C++ sources (fastep/csrc)"
        return None, STATUS.reason
    # CUDA kernels only where they can run (torch picks the visible GPUs' architectures)
    want_cuda = _cuda_toolkit() is not None and torch.cuda.is_available()
    variants = [True, False] if want_cuda else [False]
    # a previous first-use build for this torch and these sources: load it
    for cuda in variants:
        d = _build_dir(src, cuda)
        if _lib_path(d).is_file() and (d / "fastep-build.json").is_file():
            mod = _import_built(d)
            STATUS.how, STATUS.path, STATUS.reason = "cached", str(d), None
            return mod, None
    if _flag("FASTEP_NO_BUILD"):
        STATUS.how, STATUS.reason = "missing", "FASTEP_NO_BUILD=1 (no first-use build)"
        return None, STATUS.reason
    why = _why_not_buildable()
    if why is not None:
        STATUS.how, STATUS.reason = "missing", why
        _note(f"fastep: fastep._C is not available and cannot be built here: {why}; the C++ ops "
              f"fall back to the reference PyTorch ops (`fastep info` tells more)")
        return None, why
    errors = []
    for cuda in variants:
        d = _build_dir(src, cuda)
        with _FileLock(d.with_name(d.name + ".lock")):
            if not (_lib_path(d).is_file() and (d / "fastep-build.json").is_file()):
                kind = "C++ and CUDA kernels" if cuda else "C++ CPU kernels"
                _note(f"fastep: fastep._C was not built at install; building it once ({kind}, "
                      f"torch {torch.__version__}) into {d} (about a minute; FASTEP_NO_BUILD=1 skips)")
                t0 = time.time()
                try:
                    _compile(src, d, cuda)
                except Exception as err:  # noqa: BLE001 - CUDA failing falls back to the CPU build
                    errors.append(f"{'CUDA' if cuda else 'CPU'} build: {type(err).__name__}: "
                                  f"{(str(err).strip().splitlines() or [''])[-1]}")
                    continue
                (d / "fastep-build.json").write_text(json.dumps(
                    {"torch": torch.__version__, "cuda": cuda, "seconds": round(time.time() - t0, 1),
                     "sources": str(src)}))
                how = "built"
            else:
                how = "cached"  # another process built it while this one waited
            mod = _import_built(d)
            STATUS.how, STATUS.path, STATUS.reason = how, str(d), None
            return mod, None
    reason = "; ".join(errors)
    STATUS.how, STATUS.reason = "missing", reason
    _note(f"fastep: could not build fastep._C ({reason}); the C++ ops fall back to the reference "
          f"PyTorch ops (FASTEP_BUILD_VERBOSE=1 shows the compiler output)")
    return None, reason


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def status_line(loaded: bool, with_cuda: bool, error: Optional[str]) -> str:
    """The ``fastep._C`` line of ``fastep info``: loaded or not, and built how / why missing."""
    kernels = "with CUDA kernels" if with_cuda else "without CUDA kernels"
    if loaded and STATUS.how in ("built", "cached"):
        why = f"; not from the install: {STATUS.install_error}" if STATUS.install_error else ""
        return f"fastep._C: loaded ({kernels}), built on first use at {STATUS.path}{why}"
    if loaded:
        return f"fastep._C: loaded ({kernels}), built at install"
    reason = STATUS.reason or error
    return (f"fastep._C: NOT available (missing because {reason}; import error: {STATUS.install_error or error}); "
            f"C++/CUDA ops fall back")
