"""Guarded loading of the compiled extension, and the one place where every op picks its backend.

A fused op in fastep has up to five implementations of the same function:

``triton``     Triton kernels (``fastep.kernels``): CUDA tensors, or CPU under TRITON_INTERPRET=1.
``cuda``       CUDA kernels compiled into ``fastep._C`` (when it was built with CUDA).
``cpp``        C++/OpenMP CPU kernels compiled into ``fastep._C``.
``cublas``     one cuBLAS GEMM (torch.mm / bmm) plus a small epilogue, for CUDA tensors.
``reference``  plain PyTorch (``fastep.ops.reference``): the definition, always available.

An op module declares, with :func:`register_op`, its implementations and its *routes*: per device
type an ordered list of ``(backend, dtypes)`` entries (best first).  At call time
:func:`dispatch` (or :func:`backend_for`) walks that list and takes the first backend that is
available here and serves the inputs' dtypes; ``reference`` closes every list.  Nothing else in
the package decides a backend, so ``fastep info`` (:func:`route_table`) shows exactly what runs.

One switch overrides the routes: ``FASTEP_BACKEND`` (or :func:`force_backend`), either one
backend for every op (``FASTEP_BACKEND=reference``: the plain-PyTorch eager path of the fp32
baselines) or per op (``FASTEP_BACKEND=gram=triton,pairwise_style_distance=triton``).  A forced
backend is used where the op has it, it is available and it takes the dtype; otherwise the
op's routes apply.  Nothing here raises at import time: a missing ``_C`` or Triton only removes
backends.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

BACKENDS = ("triton", "cuda", "cpp", "cublas", "reference")
#: The dtypes Triton kernels and the cuBLAS routes take (float64 always runs the reference).
FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32)
HALF_TYPES = (torch.float16, torch.bfloat16)

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
            if _C is None:  # not built at install (or for another torch): build it on first use
                from . import _build

                _C, _C_ERROR = _build.load_or_build(_C_ERROR)
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
    """TRITON_INTERPRET=1: Triton kernels run on CPU tensors in Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


FP32_DOT_MODES = ("tf32x3", "ieee")


def fp32_dot_mode() -> str:
    """How Triton kernels multiply float32 operands: ``tf32x3`` (default: three TF32 tensor-core
    products per multiply-add, about 2^-21 relative error each), ``ieee`` (plain FMAs; set
    ``FASTEP_FP32_DOT=ieee``), or ``tf32`` when ``torch.set_float32_matmul_precision`` allows TF32
    (as it does for torch.matmul)."""
    if torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    mode = os.environ.get("FASTEP_FP32_DOT", "tf32x3").strip().lower() or "tf32x3"
    if mode not in FP32_DOT_MODES:
        raise ValueError(f"FASTEP_FP32_DOT: expected one of {', '.join(FP32_DOT_MODES)}, got {mode!r}")
    return mode


def _available(backend: str, device_type: str) -> bool:
    if backend == "reference":
        return True
    if backend == "triton":
        return has_triton() and (device_type == "cuda" or (device_type == "cpu" and triton_interpret()))
    if backend == "cuda":
        return device_type == "cuda" and C_has_cuda()
    if backend == "cpp":
        return device_type == "cpu" and has_C()
    if backend == "cublas":
        return device_type == "cuda"
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


# ----------------------------------------------------------------------------------------------
# the op registry
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """One entry of an op's route list: ``backend`` for inputs of ``dtypes`` (None: any)."""

    backend: str
    dtypes: Optional[Tuple[torch.dtype, ...]] = None

    def serves(self, dtypes: Sequence[torch.dtype]) -> bool:
        return self.dtypes is None or all(d in self.dtypes for d in dtypes)


RouteSpec = Union[str, Tuple[str, Optional[Sequence[torch.dtype]]]]


@dataclass
class OpInfo:
    """An op's implementations and routes (see :func:`register_op`)."""

    name: str
    routes: Dict[str, Tuple[Route, ...]] = field(default_factory=dict)
    impls: Dict[str, Callable] = field(default_factory=dict)
    takes: Dict[str, Optional[Tuple[torch.dtype, ...]]] = field(default_factory=dict)
    doc: str = ""
    follows: Optional[str] = None  #: takes the same backend as this op (e.g. its forward)

    def has(self, backend: str) -> bool:
        return backend in self.takes

    def can_take(self, backend: str, dtypes: Sequence[torch.dtype]) -> bool:
        allowed = self.takes.get(backend)
        return allowed is None or all(d in allowed for d in dtypes)

    def dispatch(self, *tensors: torch.Tensor) -> Callable:
        """The implementation to call for these input tensors (see :func:`backend_for`)."""
        return self.impls[backend_for(self.name, tensors[0].device, [t.dtype for t in tensors])]


_OPS: Dict[str, OpInfo] = {}


def _routes(spec: Sequence[RouteSpec], name: str) -> Tuple[Route, ...]:
    out: List[Route] = []
    for entry in spec:
        backend, dtypes = (entry, None) if isinstance(entry, str) else entry
        if backend not in BACKENDS:
            raise ValueError(f"op {name!r}: unknown backend {backend!r}; expected one of {BACKENDS}")
        out.append(Route(backend, None if dtypes is None else tuple(dtypes)))
    if not out or out[-1] != Route("reference"):
        out.append(Route("reference"))
    return tuple(out)


def register_op(name: str, *, cuda: Sequence[RouteSpec] = (), cpu: Sequence[RouteSpec] = (),
                impls: Optional[Mapping[str, Callable]] = None,
                takes: Optional[Mapping[str, Optional[Sequence[torch.dtype]]]] = None,
                follows: Optional[str] = None, doc: str = "") -> OpInfo:
    """Declare op ``name``: its routes per device type and (optionally) its implementations.

    ``cuda``/``cpu``: entries ``"backend"`` or ``("backend", dtypes)``, best first; ``reference``
    is appended.  ``impls``: backend -> callable (all with the same signature; include
    ``"reference"``); :meth:`OpInfo.dispatch` returns the chosen one.  Without ``impls`` the op
    module calls :func:`backend_for` itself and runs the named backend.  ``takes``: backend ->
    the dtypes it can run (default: with ``impls``, Triton and cuBLAS take float16/bfloat16/
    float32 and the others any dtype; without, any dtype).  ``follows``: this op (a backward, say) takes whatever backend op
    ``follows`` takes, with its routes and forcing.
    """
    if follows is not None:
        lead = _OPS.get(follows)
        if lead is None:
            raise KeyError(f"op {name!r} follows {follows!r}, which is not registered")
        routes = dict(lead.routes)
    else:
        routes = {"cuda": _routes(cuda, name), "cpu": _routes(cpu, name)}
    impls = dict(impls or {})
    if impls and "reference" not in impls:
        raise ValueError(f"op {name!r}: impls must include 'reference'")
    route_names = {r.backend for rs in routes.values() for r in rs}
    # a follower has the backends it implements; its lead's other routes are skipped for it
    names = set(impls) if (follows is not None and impls) else set(impls) | route_names
    for b in names:
        if b not in BACKENDS:
            raise ValueError(f"op {name!r}: unknown backend {b!r}; expected one of {BACKENDS}")
        if impls and b not in impls:
            raise ValueError(f"op {name!r}: route to {b!r} has no implementation")
    allowed: Dict[str, Optional[Tuple[torch.dtype, ...]]] = {
        b: (FLOAT_TYPES if impls and b in ("triton", "cublas") else None) for b in names}
    for b, dts in (takes or {}).items():
        allowed[b] = None if dts is None else tuple(dts)
    info = OpInfo(name, routes, impls, allowed, doc, follows)
    _OPS[name] = info
    return info


def registered(name: str) -> OpInfo:
    """The :class:`OpInfo` of op ``name`` (importing ``fastep.ops`` registers fastep's ops)."""
    info = _OPS.get(name)
    if info is None:
        importlib.import_module("fastep.ops")
        info = _OPS.get(name)
    if info is None:
        raise KeyError(f"op {name!r} was never registered with fastep._ext.register_op")
    return info


# ----------------------------------------------------------------------------------------------
# forcing a backend: FASTEP_BACKEND / force_backend
# ----------------------------------------------------------------------------------------------
_FORCED = threading.local()
_ENV_CACHE: Dict[str, Dict[str, str]] = {}


def parse_forced(spec: str) -> Dict[str, str]:
    """``"reference"`` -> ``{"*": "reference"}``; ``"gram=triton,style_loss=reference"`` -> per op.
    Unknown backends (and, per op, unknown op names) are an error naming the valid ones."""
    out: Dict[str, str] = {}
    for part in (p.strip().lower() for p in spec.split(",")):
        if not part:
            continue
        op, _, backend = part.rpartition("=")
        op = op.strip() or "*"
        backend = backend.strip()
        if backend not in BACKENDS:
            raise ValueError(f"FASTEP_BACKEND: unknown backend {backend!r} in {spec!r}; expected one "
                             f"of {', '.join(BACKENDS)} (or op=backend pairs)")
        if op != "*" and op not in _OPS:
            importlib.import_module("fastep.ops")  # the ops register on import
            if op not in _OPS:
                raise ValueError(f"FASTEP_BACKEND: unknown op {op!r} in {spec!r}; expected one of "
                                 f"{', '.join(sorted(_OPS))}")
        out[op] = backend
    return out


def _forced_map() -> Dict[str, str]:
    local = getattr(_FORCED, "value", None)
    if local is not None:
        return local
    env = os.environ.get("FASTEP_BACKEND", "").strip()
    if not env:
        return {}
    if env not in _ENV_CACHE:
        _ENV_CACHE[env] = parse_forced(env)
    return _ENV_CACHE[env]


def forced_backend(name: Optional[str] = None) -> Optional[str]:
    """The backend forced for op ``name`` (or for every op, when ``name`` is None), if any."""
    forced = _forced_map()
    if name is not None and name in forced:
        return forced[name]
    return forced.get("*")


@contextlib.contextmanager
def force_backend(backend: Optional[str], ops: Optional[Sequence[str]] = None) -> Iterator[None]:
    """Run the body with ``ops`` (default: every op) on ``backend`` where it can run it.

    ``force_backend("reference")`` gives the plain-PyTorch eager path: the baseline of the
    benchmarks and a debugging aid.  ``None`` restores the routes (and FASTEP_BACKEND).
    Forcing a backend an op lacks, that is unavailable here or that does not take the inputs'
    dtype falls back to the op's routes.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    previous = getattr(_FORCED, "value", None)
    new: Optional[Dict[str, str]]
    if backend is None:
        new = None
    elif ops is None:
        new = {"*": backend}
    else:
        for op in ops:
            registered(op)
        new = {**(previous if previous is not None else _forced_map()), **{op: backend for op in ops}}
    _FORCED.value = new
    try:
        yield
    finally:
        _FORCED.value = previous


@contextlib.contextmanager
def routes_only() -> Iterator[None]:
    """Run the body on the ops' routes alone: no forced backend, FASTEP_BACKEND ignored."""
    previous = getattr(_FORCED, "value", None)
    _FORCED.value = {}
    try:
        yield
    finally:
        _FORCED.value = previous


# ----------------------------------------------------------------------------------------------
# choosing
# ----------------------------------------------------------------------------------------------
def backend_for(name: str, device: torch.device | str,
                dtype: Union[None, torch.dtype, Sequence[torch.dtype]] = None) -> str:
    """The backend op ``name`` runs on for inputs on ``device`` of ``dtype`` (one dtype or the
    dtypes of all its tensor inputs; None: the route for "any dtype")."""
    device_type = torch.device(device).type
    info = registered(name)
    lead = registered(info.follows) if info.follows else info
    dtypes: Tuple[torch.dtype, ...] = () if dtype is None else (
        (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype))
    forced = forced_backend(lead.name)
    if forced is not None and info.has(forced) and _available(forced, device_type) \
            and info.can_take(forced, dtypes):
        return forced
    for route in lead.routes.get(device_type, (Route("reference"),)):
        if route.serves(dtypes) and info.has(route.backend) and _available(route.backend, device_type) \
                and info.can_take(route.backend, dtypes):
            return route.backend
    return "reference"


def dispatch(name: str, *tensors: torch.Tensor) -> Callable:
    """The implementation of op ``name`` for these input tensors."""
    return registered(name).dispatch(*tensors)


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
                torch.float64: "fp64"}


def route_table(devices: Sequence[str] = ("cpu", "cuda")) -> List[Tuple[str, str, Dict[str, str], Tuple[str, ...]]]:
    """For every op (backward ops, which follow their forward, left out) and device type:
    ``(op, device, {dtype name: backend taken here}, backends it has)``.  What ``fastep info`` prints."""
    importlib.import_module("fastep.ops")  # the ops register on import
    rows = []
    for name in sorted(_OPS):
        info = _OPS[name]
        if info.follows:
            continue
        for dev in devices:
            taken = {_DTYPE_NAMES[d]: backend_for(name, dev, d) for d in _DTYPE_NAMES}
            rows.append((name, dev, taken, tuple(sorted(info.takes, key=BACKENDS.index))))
    return rows
