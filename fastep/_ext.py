"""Guarded loading of the compiled extension and the choice of backend for every op.

Every fused op in fastep has up to four implementations of the same function:

``triton``     Triton kernels (``fastep.kernels``), used for CUDA tensors.
``cuda``       CUDA kernels compiled into ``fastep._C`` (when it was built with CUDA).
``cpp``        C++/OpenMP CPU kernels compiled into ``fastep._C``.
``reference``  plain PyTorch (``fastep.ops.reference``): the definition, always available.

An op module declares its preference order per device type with :func:`register_op`, and asks
:func:`backend_for` at call time.  ``FASTEP_BACKEND=reference`` (or :func:`force_backend`)
forces the plain-PyTorch path everywhere, which is what the eager fp32 baselines use.
Nothing here raises at import time: a missing ``_C`` or Triton only removes backends, and
``fastep info`` reports what each op will run on.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch

BACKENDS = ("triton", "cuda", "cpp", "reference")

_C = None
_C_ERROR: Optional[str] = None
_C_LOADED = False
_LOCK = threading.Lock()


def load_C():
    """Import ``fastep._C`` once; return the module or ``None`` (the reason is kept)."""
    global _C, _C_ERROR, _C_LOADED
    with _LOCK:
        if not _C_LOADED:
            _C_LOADED = True
            try:
                _C = importlib.import_module("fastep._C")
            except Exception as err:  # noqa: BLE001 - any failure means "no extension"
                _C, _C_ERROR = None, f"{type(err).__name__}: {err}"
    return _C


def has_C() -> bool:
    return load_C() is not None


def C_error() -> Optional[str]:
    load_C()
    return _C_ERROR


def C_has_cuda() -> bool:
    mod = load_C()
    return bool(mod is not None and getattr(mod, "WITH_CUDA", 0))


_TRITON: Optional[bool] = None


def has_triton() -> bool:
    """Triton is importable (it runs on CUDA devices, or on CPU under TRITON_INTERPRET=1)."""
    global _TRITON
    if _TRITON is None:
        try:
            import triton  # noqa: F401
            _TRITON = True
        except Exception:  # noqa: BLE001
            _TRITON = False
    return _TRITON


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _available(backend: str, device_type: str) -> bool:
    if backend == "reference":
        return True
    if backend == "triton":
        return has_triton() and (device_type == "cuda" or (device_type == "cpu" and triton_interpret()))
    if backend == "cuda":
        return device_type == "cuda" and C_has_cuda()
    if backend == "cpp":
        return device_type == "cpu" and has_C()
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


@dataclass
class OpInfo:
    name: str
    preference: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    doc: str = ""


_OPS: Dict[str, OpInfo] = {}
_FORCED = threading.local()


def register_op(name: str, *, cuda: Sequence[str] = ("reference",), cpu: Sequence[str] = ("reference",),
                doc: str = "") -> OpInfo:
    """Declare an op and its backend preference per device type (best first)."""
    for b in tuple(cuda) + tuple(cpu):
        if b not in BACKENDS:
            raise ValueError(f"op {name!r}: unknown backend {b!r}; expected one of {BACKENDS}")
    info = OpInfo(name, {"cuda": tuple(cuda) + ("reference",), "cpu": tuple(cpu) + ("reference",)}, doc)
    _OPS[name] = info
    return info


def registered_ops() -> Dict[str, OpInfo]:
    return dict(_OPS)


def _forced() -> Optional[str]:
    forced = getattr(_FORCED, "value", None)
    if forced is None:
        env = os.environ.get("FASTEP_BACKEND", "").strip().lower()
        forced = env or None
    return forced


@contextlib.contextmanager
def force_backend(backend: Optional[str]) -> Iterator[None]:
    """Run the body with every op on ``backend`` where available (``None`` restores auto).

    ``force_backend("reference")`` gives the plain-PyTorch eager path: the baseline of the
    benchmarks and a debugging aid.  Forcing an unavailable fast backend falls back to the
    op's normal preference order.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    previous = getattr(_FORCED, "value", None)
    _FORCED.value = backend
    try:
        yield
    finally:
        _FORCED.value = previous


def backend_for(name: str, device: torch.device | str) -> str:
    """The backend op ``name`` runs on for tensors on ``device``."""
    device_type = torch.device(device).type
    info = _OPS.get(name)
    if info is None:
        raise KeyError(f"op {name!r} was never registered with fastep._ext.register_op")
    forced = _forced()
    if forced is not None and forced in BACKENDS and _available(forced, device_type):
        return forced
    for backend in info.preference.get(device_type, ("reference",)):
        if _available(backend, device_type):
            return backend
    return "reference"


def info_lines() -> list[str]:
    """Human-readable environment report used by ``fastep info``."""
    import platform

    from .version import __version__

    lines = [f"fastep {__version__}", f"python {platform.python_version()} ({platform.machine()})",
             f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})"]
    try:
        import torchvision
        lines.append(f"torchvision {torchvision.__version__}")
    except Exception:  # noqa: BLE001
        lines.append("torchvision: not importable")
    if has_triton():
        import triton
        lines.append(f"triton {triton.__version__} (interpreter: {'on' if triton_interpret() else 'off'})")
    else:
        lines.append("triton: not available")
    cuda_ok = torch.cuda.is_available()
    lines.append("CUDA device: " + (torch.cuda.get_device_name(0) if cuda_ok else "none"))
    if has_C():
        lines.append(f"fastep._C: loaded ({'with' if C_has_cuda() else 'without'} CUDA kernels)")
    else:
        lines.append(f"fastep._C: NOT available ({C_error()}); C++/CUDA ops fall back")
    # Importing the ops registers them.
    importlib.import_module("fastep.ops")
    devices = ["cpu"] + (["cuda"] if cuda_ok else [])
    lines.append("op backends (" + ", ".join(devices) + "):")
    for name in sorted(_OPS):
        chosen = ", ".join(f"{d}={backend_for(name, d)}" for d in devices)
        lines.append(f"  {name:<28s} {chosen}")
    forced = _forced()
    if forced:
        lines.append(f"forced backend: {forced}")
    return lines
