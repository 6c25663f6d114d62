"""``fastep info``: versions, devices, whether _C / Triton / CUDA are there, and every op's route."""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
from typing import List

import torch

from . import _ext


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def _versions() -> List[str]:
    from .version import __version__

    lines = [f"fastep {__version__}", f"python {platform.python_version()} ({platform.machine()})",
             f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})"]
    try:
        import torchvision
        lines.append(f"torchvision {torchvision.__version__}")
    except Exception:  # noqa: BLE001
        lines.append("torchvision: not importable")
    if _ext.has_triton():
        import triton
        lines.append(f"triton {triton.__version__} (interpreter: {'on' if _ext.triton_interpret() else 'off'})")
    else:
        lines.append("triton: not available")
    lines.append("CUDA device: " + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"))
    from ._build import status_line  # built at install / on first use / missing, and why

    lines.append(status_line(_ext.has_C(), _ext.C_has_cuda(), _ext.C_error()))
    return lines


def _route_text(taken: dict) -> str:
    """{"fp32": "cublas", "bf16": "cublas", ...} -> "cublas" or "fp16,bf16=triton fp32,fp64=cublas"."""
    by_backend: dict = {}
    for dt, b in taken.items():
        by_backend.setdefault(b, []).append(dt)
    if len(by_backend) == 1:
        return next(iter(by_backend))
    return " ".join(f"{','.join(dts)}={b}" for b, dts in by_backend.items())


def switch_errors() -> List[str]:
    """One line per FASTEP_* switch of the op layer that has an invalid value."""
    errors = []
    try:
        _ext.parse_forced(os.environ.get("FASTEP_BACKEND", ""))
    except ValueError as err:
        errors.append(str(err))
    try:
        _ext.fp32_dot_mode()
    except ValueError as err:
        errors.append(str(err))
    return errors


def info_lines() -> List[str]:
    """The report ``fastep info`` prints (also ``fastep.info()``).  An invalid FASTEP_BACKEND is
    reported (and the table shows the routes without it)."""
    lines = _versions()
    errors = switch_errors()
    cuda_here = torch.cuda.is_available()
    lines.append("op routes (backend taken per device and dtype; 'has' lists every backend the op "
                 "has, which FASTEP_BACKEND can force):")
    if not cuda_here:
        lines.append("  (no CUDA device here: the cuda column is what a CUDA device would run "
                     "with this installation)")
    bad_backend = any(e.startswith("FASTEP_BACKEND") for e in errors)
    with (_ext.routes_only() if bad_backend else contextlib.nullcontext()):
        rows = _ext.route_table(("cpu", "cuda"))
    by_op: dict = {}
    for name, dev, taken, has in rows:
        by_op.setdefault(name, {})[dev] = taken
        by_op[name]["has"] = has
    for name, d in by_op.items():
        lines.append(f"  {name:<26s} cpu: {_route_text(d['cpu']):<12s} cuda: {_route_text(d['cuda']):<32s}"
                     f" has: {', '.join(d['has'])}")
    try:
        mode = _ext.fp32_dot_mode()
    except ValueError:
        mode = "invalid (see below)"
    lines.append(f"float32 dots in Triton kernels: {mode} (FASTEP_FP32_DOT=tf32x3|ieee; "
                 f"torch float32 matmul precision: {torch.get_float32_matmul_precision()})")
    lines.append("float32 Gram/style/pairwise on CUDA: cuBLAS (IEEE float32 at precision 'highest'); "
                 "the autotuned Triton float32 Gram kernels run only when forced, until a GPU run "
                 "shows them equal to float64 at VGG sizes (README: fp32 Gram on CUDA)")
    forced = {} if bad_backend else _ext.parse_forced(os.environ.get("FASTEP_BACKEND", ""))
    if forced:
        lines.append("FASTEP_BACKEND: " + ", ".join(f"{k}={v}" if k != "*" else v for k, v in forced.items()))
    lines += [f"invalid switch: {e}" for e in errors]
    return lines


def run(args: argparse.Namespace) -> int:
    print("\n".join(info_lines()))
    errors = switch_errors()
    for e in errors:
        print(f"fastep info: {e}", file=sys.stderr)
    return 2 if errors else 0
