"""Building and timing one training step: the fast path and the eager baselines."""
from __future__ import annotations

import sys
import time
from typing import Any, Dict, Optional

from ..config import override
from .paper import APPROACHES


def sync(device) -> None:
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()

def reset_compiler() -> None:
    """Forget compiled graphs (frees their memory, resets recompile counters)."""
    if "torch._dynamo" not in sys.modules:  # nothing was compiled
        return
    try:
        import torch._dynamo
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass

#: The implementations a case can time: fastep's fast path and the two eager baselines.
IMPL_LABELS = {"fastep": "fast path", "baseline": "eager fp32", "baseline_bf16": "eager bf16"}


def step_switches(impl: str, device, compile: Optional[bool] = None, cuda_graphs: bool = False
                  ) -> Dict[str, Any]:
    """TrainConfig switches of the fast path (``impl="fastep"``), the eager fp32 baseline
    (``"baseline"``) or the eager bf16 baseline (``"baseline_bf16"``: the fast path's precision
    and layout without compile, fused Adam or fastep's fused ops, so that the fast path's speedup
    over it is what compilation and fusion add on their own)."""
    cuda = str(device).startswith("cuda")
    if impl == "baseline":
        return dict(compile=False, amp=False, channels_last=False, fused_adam=False,
                    cuda_graphs=False, eager_fp32=True)
    if impl == "baseline_bf16":
        return dict(compile=False, amp=True, channels_last=True, fused_adam=False,
                    cuda_graphs=False, eager_fp32=False)
    if impl != "fastep":
        raise ValueError(f"impl: expected one of {', '.join(IMPL_LABELS)}, got {impl!r}")
    return dict(compile=cuda if compile is None else bool(compile), amp=True, channels_last=True,
                fused_adam=True, cuda_graphs=bool(cuda_graphs and cuda), eager_fp32=False)


class BenchStep:
    """A training step called under the numerics its benchmark case promises.

    * every case: ``torch.backends.cudnn.benchmark = True`` (cuDNN times its algorithms per shape,
      as training does; set by :func:`make_step`);
    * ``baseline`` (eager fp32): TF32 off for cuDNN convolutions and cuBLAS matmuls inside every
      call, so the fp32 baseline is float32 (PyTorch's default lets cuDNN convs run in TF32);
    * both eager baselines: every fastep op on its plain-PyTorch reference backend.

    Attributes of the wrapped step (``train_cfg``, ``compiled``, ...) read through.
    """

    def __init__(self, step, impl: str):
        self.step = step
        self.impl = impl

    def __getattr__(self, name: str):
        step = self.__dict__.get("step")
        if step is None:
            raise AttributeError(name)
        return getattr(step, name)

    def __call__(self, A, B):
        import contextlib

        from fastep._ext import force_backend
        from fastep.ops.reference import no_tf32

        with contextlib.ExitStack() as stack:
            if self.impl == "baseline":
                stack.enter_context(no_tf32())
            if self.impl in ("baseline", "baseline_bf16"):
                stack.enter_context(force_backend("reference"))
            return self.step(A, B)


def numerics(impl: str) -> Dict[str, Any]:
    """The precision settings a case runs under (recorded with its switches)."""
    import torch

    base = impl == "baseline"
    return {"cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "tf32_conv": False if base else bool(torch.backends.cudnn.allow_tf32),
            "tf32_matmul": False if base else torch.get_float32_matmul_precision() != "highest",
            "ops": "reference" if impl in ("baseline", "baseline_bf16") else "fastep"}


def make_step(approach: str, batch: int, resolution: int, impl: str, device, *,
              compile: Optional[bool] = None, cuda_graphs: bool = False,
              model_overrides: Optional[Dict[str, Any]] = None, seed: int = 0,
              perceptual_backbone: str = "random"):
    """One training step object (stage 3: G, E and D all train) for ``approach`` at ``batch``.

    The perceptual loss uses a seeded random VGG16 by default (ImageNet weights change no
    timing, and are not needed to measure one).

    Returns a :class:`BenchStep`: ``step(A, B) -> dict of detached losses``, under the case's
    numerics (cuDNN benchmark mode; the true-fp32 / reference-op baselines).
    """
    if approach not in APPROACHES:
        raise ValueError(f"approach: expected one of {', '.join(APPROACHES)}, got {approach!r}")
    import torch
    from fastep.zoo.step.config import LossConfig, ModelConfig, TrainConfig
    from fastep.zoo.step.train_step import make_train_step

    model_cfg = override(ModelConfig(resolution=resolution), model_overrides or {}, what="bench model config")
    sw = step_switches(impl, device, compile, cuda_graphs)
    train_cfg = TrainConfig(stage=3, approach=approach, batch_size=batch,
                            resolution=resolution, device=str(device), seed=seed, **sw)
    loss_cfg = LossConfig.preset(approach, perceptual_backbone=perceptual_backbone)
    torch.backends.cudnn.benchmark = True
    return BenchStep(make_train_step(train_cfg, model_cfg, torch.device(device), loss_cfg=loss_cfg), impl)

def effective_switches(step, impl: str, device, compile: Optional[bool] = None,
                       cuda_graphs: bool = False) -> Dict[str, Any]:
    """What the step actually runs with (TrainStep attributes where present)."""
    sw = step_switches(impl, device, compile, cuda_graphs)
    cfg = getattr(step, "train_cfg", None)
    if cfg is not None:
        for k in list(sw):
            if hasattr(cfg, k):
                sw[k] = getattr(cfg, k)
    if hasattr(step, "compiled"):
        sw["compile"] = bool(step.compiled)
    if hasattr(step, "amp_dtype"):
        sw["amp"] = str(step.amp_dtype).replace("torch.", "") if step.amp_dtype is not None else False
    if hasattr(step, "channels_last"):
        sw["channels_last"] = bool(step.channels_last)
    opt = getattr(step, "opt_ge", None)
    if opt is not None and hasattr(opt, "defaults"):
        sw["fused_adam"] = bool(opt.defaults.get("fused"))
    sw.update(numerics(impl))
    return sw

def random_batch(batch: int, resolution: int, device, seed: int = 0):
    """A fixed random (A, B) pair batch in [-1, 1] on ``device``."""
    import torch
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1
    b = torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1
    return a.to(device), b.to(device)

def time_steps(step, A, B, device, *, warmup: int, repeats: int) -> Dict[str, Any]:
    """Plain steady-state timing (used by the scaling script; the suite uses fastep_bench):
    the first call (compilation) is timed separately, then ``warmup`` calls, then ``repeats``
    individually synchronised calls; the median."""
    import torch
    sync(device)
    t0 = time.perf_counter()
    step(A, B)
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step(A, B)
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        step(A, B)
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    n = len(times)
    median = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    out = {"first_call_s": first, "median_s": median, "min_s": times[0], "rounds": n,
           "s_per_kimg": median * 1000.0 / A.shape[0]}
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        step(A, B)
        sync(device)
        out["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())
    return out
