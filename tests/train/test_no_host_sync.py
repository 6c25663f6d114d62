"""README: ``losses = step(A, B)`` makes no host sync (the losses stay on the device and are
checked every ``log_every`` steps).  CUDA only: ``torch.cuda.set_sync_debug_mode("error")``
turns any synchronising call (``.item()``, a tensor in an ``if``, a device-to-host copy) into an
error.  Eager and compiled, for a preset with and one without the G-only branch."""
import pytest
import torch

from fastep.zoo.step.config import LossConfig, ModelConfig, TrainConfig
from fastep.zoo.step.train_step import make_train_step


@pytest.mark.cuda
@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("name", ["ours_v3", "bicycle_v2"])
def test_step_makes_no_host_sync(name, compile):
    tc = TrainConfig(stage=3, approach=name, batch_size=4, resolution=64, device="cuda", compile=compile)
    step = make_train_step(tc, ModelConfig.tiny(resolution=64), "cuda",
                           loss_cfg=LossConfig.preset(name, perceptual_backbone="random"))
    A = torch.rand(4, 3, 64, 64, device="cuda") * 2 - 1
    B = torch.rand(4, 3, 64, 64, device="cuda") * 2 - 1
    for _ in range(2):  # compilation, autotuning and lazy initialisation may sync; steady state may not
        step(A, B)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = step(A, B)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.device.type == "cuda" for v in losses.values())
    assert all(torch.isfinite(v).item() for v in losses.values())
