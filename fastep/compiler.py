"""Warm torch.compile: one cache folder for fastep, cache artifacts, and kernel counts.

Compiling a training step from scratch takes minutes on a GPU (inductor lowering, Triton
compilation, autotuning).  Three things make later compiles fast:

* **One on-disk cache folder** (:func:`cache_dir`): ``$FASTEP_CACHE``, else
  ``$XDG_CACHE_HOME/fastep``, else ``~/.cache/fastep``.  :func:`use_cache_dir` points inductor's
  FX-graph / AOTAutograd caches (``<dir>/inductor``) and Triton's kernel cache (``<dir>/triton``)
  there -- unless ``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR`` are already set, which win.
  Processes and benchmark cases that compile the same graphs then reuse each other's work.
* **Cache artifacts** (``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts``): one
  file holding every compile artifact of a process (FX graphs, AOTAutograd, Triton kernels,
  autotuning results) that a fresh machine loads before compiling.  :class:`CompileArtifacts`
  keeps one file per key under ``<dir>/artifacts``; the file name carries the torch version and
  the device name, since an artifact only serves the same software and the same GPU model.
* **Per-network compilation** (the step's ``compile_scope="network"``): G, E, D and the VGG
  backbone compile as separate graphs, so approaches that share networks share compiled code.

:func:`count_kernels` counts the kernels a compiled graph launches, read from inductor's
generated code (:func:`generated_code` captures it): a CPU-measurable proxy of launch overhead.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch

__all__ = ["CACHE_ENV", "cache_dir", "use_cache_dir", "CompileArtifacts", "generated_code",
           "codegen_only", "count_kernels", "KernelCount"]

#: The environment variable naming fastep's cache folder (shared with the first-use build of _C).
CACHE_ENV = "FASTEP_CACHE"


def cache_dir() -> Path:
    """fastep's cache folder: ``$FASTEP_CACHE``, ``$XDG_CACHE_HOME/fastep`` or ``~/.cache/fastep``
    (the one folder of :func:`fastep._build.cache_root`)."""
    from ._build import cache_root

    return cache_root()


def use_cache_dir(root: Union[str, Path, None] = None) -> Dict[str, str]:
    """Point inductor's and Triton's on-disk caches into ``root`` (default :func:`cache_dir`).

    Variables the user already set are kept.  Call before the first compilation of the process
    (the caches read these variables when they are first used).  Returns the effective paths.
    """
    root = Path(root).expanduser() if root is not None else cache_dir()
    out = {}
    for var, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        if not os.environ.get(var):
            path = root / sub
            path.mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(path)
        out[var] = os.environ[var]
    return out


def _device_tag(device: Union[str, torch.device, None]) -> str:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(dev)
    else:
        name = dev.type
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")


@dataclass
class CompileArtifacts:
    """One cache-artifact file per ``key`` (e.g. an approach and batch) under ``root``.

    ``load()`` before the first compile (returns whether a file was loaded), ``save()`` after
    it (writes atomically; returns the path, or ``None`` when torch had nothing to save).
    ``with CompileArtifacts(key, device=...):`` does both.
    """

    key: str
    device: Union[str, torch.device, None] = None
    root: Optional[Path] = None
    loaded: bool = field(default=False, init=False)

    @property
    def path(self) -> Path:
        root = Path(self.root) if self.root is not None else cache_dir() / "artifacts"
        safe_key = re.sub(r"[^A-Za-z0-9_.=-]+", "-", self.key)
        torch_v = torch.__version__.replace("+", "-")
        return root / f"{safe_key}__torch-{torch_v}__{_device_tag(self.device)}.bin"

    def load(self) -> bool:
        path = self.path
        if not path.is_file():
            return False
        try:
            info = torch.compiler.load_cache_artifacts(path.read_bytes())
            problem = None if info is not None else "torch could not read the file"
        except Exception as err:  # noqa: BLE001 - a stale or foreign file must not stop training
            problem = f"{type(err).__name__}: {err}"
        if problem is not None:
            import warnings
            warnings.warn(f"compile cache artifacts {path} could not be loaded ({problem}); compiling from scratch",
                          stacklevel=2)
            return False
        self.loaded = True
        return True

    def save(self) -> Optional[Path]:
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return None
        data = saved[0]
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    def __enter__(self) -> "CompileArtifacts":
        self.load()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.save()


# ----------------------------------------------------------------------------- kernel counts

@contextlib.contextmanager
def generated_code() -> Iterator[List[str]]:
    """Collect the source of every graph inductor compiles inside the block (also graphs that
    come from the on-disk cache: inductor hands those over too)."""
    from torch._inductor.graph import GraphLowering

    codes: List[str] = []
    original = GraphLowering.save_output_code

    def save(code: str) -> None:
        codes.append(code)

    GraphLowering.save_output_code = staticmethod(save)
    try:
        yield codes
    finally:
        GraphLowering.save_output_code = original


@contextlib.contextmanager
def codegen_only() -> Iterator[None]:
    """Inside the block, inductor generates its C++ kernels but does not build them: every
    CPU kernel becomes a no-op, so compiled functions run but compute garbage.  For counting
    kernels of large graphs on CPU (where building the C++ kernels is most of the compile
    time) with :func:`generated_code`; never for results.  The FX-graph cache is off inside.
    """
    import torch._inductor.config as inductor_config
    from torch._inductor.async_compile import AsyncCompile

    def _noop(*args, **kwargs):
        return None

    saved = AsyncCompile.cpp, AsyncCompile.cpp_pybinding
    AsyncCompile.cpp = lambda self, source_code: _noop
    AsyncCompile.cpp_pybinding = lambda self, argtypes, source_code: _noop
    try:
        with inductor_config.patch(fx_graph_cache=False, autotune_local_cache=False):
            yield
    finally:
        AsyncCompile.cpp, AsyncCompile.cpp_pybinding = saved


_FUSED_DEF = re.compile(r"^(\w+) = async_compile\.(?:triton|cpp_pybinding|cpp)\(", re.M)
_EXTERN = re.compile(r"\bextern_kernels\.(\w+)\(")
_FALLBACK = re.compile(r"\btorch\.ops\.(\w+)\.(\w+)(?:\.\w+)?\(")
_ALIAS_FALLBACK = re.compile(r"(?<![\w.])aten\.(\w+)(?:\.\w+)?\(")


@dataclass
class KernelCount:
    """Kernel launches of compiled graphs, read from the generated code.

    ``fused``: inductor's own kernels (Triton on GPU, C++ on CPU); ``extern``: library calls
    (convolutions, GEMMs); ``fallback``: aten/custom ops inductor calls as they are.
    ``definitions``: distinct fused kernels.
    """

    fused: int = 0
    extern: int = 0
    fallback: int = 0
    definitions: int = 0
    graphs: int = 0
    by_name: Dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.fused + self.extern + self.fallback

    def as_dict(self) -> Dict[str, int]:
        return {"kernels_total": self.total, "kernels_fused": self.fused, "kernels_extern": self.extern,
                "kernels_fallback": self.fallback, "kernel_definitions": self.definitions, "graphs": self.graphs}


def _call_body(code: str) -> str:
    """The body of the generated ``call(args)`` / ``Runner.call`` (launch order)."""
    m = re.search(r"^(\s*)def call\(self, args\):|^(\s*)def call\(args\):", code, re.M)
    if not m:
        return ""
    start = m.end()
    indent = len(m.group(1) or m.group(2) or "")
    end = len(code)
    for nm in re.finditer(r"^(\s*)\S", code[start:], re.M):
        if len(nm.group(1).replace("\t", "    ")) <= indent and code[start + nm.start():].strip():
            end = start + nm.start()
            break
    return code[start:end]


def count_kernels(codes: List[str]) -> KernelCount:
    """Count the kernel launches in inductor-generated graph sources (see :func:`generated_code`)."""
    out = KernelCount(graphs=len(codes))
    for code in codes:
        fused_names = set(_FUSED_DEF.findall(code))
        out.definitions += len(fused_names)
        body = _call_body(code)
        for line in body.splitlines():
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            head = re.match(r"(\w+)(?:\.run)?\(", s)
            if head and head.group(1) in fused_names:
                out.fused += 1
                continue
            ext = _EXTERN.search(s)
            if ext:
                out.extern += 1
                out.by_name[ext.group(1)] = out.by_name.get(ext.group(1), 0) + 1
                continue
            fb = _FALLBACK.search(s) or _ALIAS_FALLBACK.search(s)
            if fb:
                name = ".".join(fb.groups())
                out.fallback += 1
                out.by_name[name] = out.by_name.get(name, 0) + 1
    return out
