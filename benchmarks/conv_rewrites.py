"""Micro-benchmark of the exact conv rewrites (fastep.nn.aligned): original layer vs rewrite.

For every conv of an Ours v3 step that a rewrite replaces (StEP networks at their paper widths),
times forward + backward (input and weight gradients) of the original code and of each rewrite,
at the shapes of a batch at ``--resolution``, and checks that both compute the same values.

    python benchmarks/conv_rewrites.py                       # CUDA: bf16, channels_last, b8, 256
    python benchmarks/conv_rewrites.py --device cpu --resolution 64 --batch 2 --dtype float32

Prints a table and writes one JSON record per (case, variant) to ``--out`` (JSON lines).
Times are medians of ``--reps`` synchronised calls after ``--warmup`` calls; on CUDA
``torch.backends.cudnn.benchmark`` is on (``--no-cudnn-benchmark`` turns it off).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from fastep.nn.layers import EqConv2d, minibatch_stddev
from fastep.nn import aligned as al


def _stddev_value(x):
    return minibatch_stddev(x)[0, -1, 0, 0]  # the stddev channel's value, computed by the original layer


def _cases(batch: int, res: int) -> List[Tuple[str, Tuple[int, ...], EqConv2d, Dict[str, Callable]]]:
    """(name, input shape, conv, {variant: fn(x, conv)}); the first variant is the original."""
    out = []
    for scale in range(3):  # the three D scales: 128 features + the stddev channel at res/8 ...
        hw = res // 8 // 2 ** scale
        conv = EqConv2d(129, 256, 4, 1)
        out.append((f"D.mbstd_conv s{scale}", (batch, 128, hw, hw), conv, {
            "original": lambda x, c: c(minibatch_stddev(x)),
            "split": lambda x, c: al.stddev_conv(x, _stddev_value(x), c, "split"),
            "pad136": lambda x, c: al.stddev_conv(x, _stddev_value(x), c, "pad"),
        }))
    for scale in range(3):
        hw = res // 2 ** scale
        out.append((f"D.conv0 6->32 s{scale}", (batch, 6, hw, hw), EqConv2d(6, 32, 4, 2), {
            "original": lambda x, c: c(x),
            "pad8": lambda x, c: al.aligned_conv(x, c),
        }))
    hw = res // 8
    out.append(("D.logits 256->1 s0", (batch, 256, hw, hw), EqConv2d(256, 1, 4, 1), {
        "original": lambda x, c: c(x),
        "pad8": lambda x, c: al.aligned_conv(x, c),
    }))
    for cin, cout, hw in [(528, 128, res // 8), (264, 64, res // 4), (136, 32, res // 2)]:
        out.append((f"G.up {cin}->{cout} @{2 * hw}", (batch, cin, hw, hw), EqConv2d(cin, cout, 3, 1), {
            "original": lambda x, c: c(F.interpolate(x, scale_factor=2.0, mode="nearest")),
            "transposed4x4": lambda x, c: al.upsample_conv(x, c),
        }))
    out.append(("G.to_rgb 72->3", (batch, 72, res, res), EqConv2d(72, 3, 1, 1), {
        "original": lambda x, c: c(x),
        "pad8": lambda x, c: al.aligned_conv(x, c),
    }))
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], None], device, warmup: int, reps: int) -> List[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def run(device: str = "cuda", batch: int = 8, resolution: int = 256, dtype: str = "bfloat16",
        reps: int = 20, warmup: int = 3, cudnn_benchmark: bool = True, out=None, only=None) -> List[dict]:
    dev = torch.device(device)
    amp_dtype = getattr(torch, dtype)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
    channels_last = dev.type == "cuda"
    records = []
    torch.manual_seed(0)
    for name, shape, conv, variants in _cases(batch, resolution):
        if only and not any(o in name for o in only):
            continue
        conv = conv.to(dev)
        if channels_last:
            conv = conv.to(memory_format=torch.channels_last)
        with torch.no_grad():
            conv.bias.normal_()
        x = torch.randn(shape, device=dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        ref = None
        base = None
        for vname, fn in variants.items():
            def step():
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
                    y = fn(x, conv)
                y.backward(torch.ones_like(y))
            with torch.no_grad(), torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
                y = fn(x, conv).float()
            if ref is None:
                ref = y
            err = float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
            times = _time(step, dev, warmup, reps)
            med = statistics.median(times)
            base = med if base is None else base
            rec = {"case": name, "variant": vname, "shape": list(shape), "dtype": dtype, "device": str(dev),
                   "channels_last": channels_last, "cudnn_benchmark": cudnn_benchmark if dev.type == "cuda" else None,
                   "median_ms": med * 1e3, "min_ms": min(times) * 1e3, "reps": reps,
                   "speedup_vs_original": base / med, "max_rel_diff_vs_original": err}
            records.append(rec)
            print(f"{name:24s} {vname:14s} {med * 1e3:9.3f} ms  x{base / med:5.2f}  rel.diff {err:.1e}", flush=True)
            if out:
                out.write(json.dumps(rec) + "\n")
                out.flush()
            conv.zero_grad(set_to_none=True)
            x.grad = None
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="autocast dtype (default bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-cudnn-benchmark", action="store_true")
    p.add_argument("--only", nargs="*", help="run only cases whose name contains one of these")
    p.add_argument("--out", help="append JSON lines here")
    a = p.parse_args(argv)
    if a.resolution < 32 or a.resolution % 32:
        p.error(f"--resolution must be a multiple of 32, got {a.resolution}")
    if a.batch < 2:
        p.error(f"--batch must be >= 2 (minibatch stddev), got {a.batch}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    out = open(a.out, "a") if a.out else None
    try:
        run(a.device, a.batch, a.resolution, dtype, a.reps, a.warmup, not a.no_cudnn_benchmark, out, a.only)
    finally:
        if out:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
