"""DDP with two gloo processes on CPU (torch.multiprocessing.spawn, world size 2).

* the real TrainStep: gradients of G, E and D after one step with each rank holding half of the
  batch equal those of one process on the concatenated batch;
* the Trainer under DDP: data sharded by rank, kimg counted over both ranks, rank-0-only
  checkpoints, identical weights on both ranks, and a resumed DDP run bit-identical to an
  uninterrupted one.
"""
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))

WORLD = 2


def _init(rank, rdv):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=WORLD)


# ----------------------------------------------------------------------------- real step

def _tiny_cfgs():
    from fastep.zoo.step.config import LossConfig, ModelConfig, TrainConfig

    mc = ModelConfig.tiny(resolution=32, d_mbstd=False)  # mbstd mixes the batch: not DDP-invariant
    lc = LossConfig.preset("ours_v3", perceptual_backbone="random")
    tc = TrainConfig(stage=3, approach="ours_v3", batch_size=2, resolution=32, compile=False, amp=False,
                     channels_last=False, fused_adam=False, device="cpu")
    return mc, lc, tc


def _grads_after_one_step(A, B):
    from fastep.zoo.step import build_models
    from fastep.zoo.step.train_step import TrainStep

    mc, lc, tc = _tiny_cfgs()
    torch.manual_seed(0)
    models = build_models(mc, "cpu")
    step = TrainStep(models, lc, tc, 3)
    losses = step(A, B)
    w = step.networks()
    out = {"losses": {k: v.item() for k, v in losses.items()}}
    for name in ("G", "E", "D"):
        for n, p in w[name].named_parameters():
            if p.grad is not None:
                out[f"{name}.{n}"] = p.grad.detach().clone()
    return out


def _data(n=4, res=32):
    g = torch.Generator().manual_seed(123)
    return torch.rand(n, 3, res, res, generator=g) * 2 - 1, torch.rand(n, 3, res, res, generator=g) * 2 - 1


def _worker(rank, rdv, root):
    """Everything that needs the process group, in one spawn (starting processes is the slow part)."""
    _init(rank, rdv)
    try:
        A, B = _data()
        half = A.shape[0] // WORLD
        sl = slice(rank * half, (rank + 1) * half)
        grads = _grads_after_one_step(A[sl].contiguous(), B[sl].contiguous())
        torch.save(grads, os.path.join(root, f"grads{rank}.pt"))
        _trainer_run(rank, os.path.join(root, "ref"), "full")
        _trainer_run(rank, os.path.join(root, "run"), "interrupt")
        _trainer_run(rank, os.path.join(root, "run"), "resume")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(root / "rdv"), str(root)), nprocs=WORLD, join=True)
    return root


def test_ddp_gradients_match_single_process_on_concatenated_batch(ddp_results):
    tmp_path = ddp_results
    torch.set_num_threads(1)
    ref = _grads_after_one_step(*_data())
    g0 = torch.load(tmp_path / "grads0.pt")
    g1 = torch.load(tmp_path / "grads1.pt")
    keys = [k for k in ref if k != "losses"]
    assert keys and any(k.startswith("E.") for k in keys) and any(k.startswith("D.") for k in keys)
    for k in keys:
        assert k in g0, k
        assert torch.equal(g0[k], g1[k]), f"ranks disagree on {k}"
        scale = ref[k].abs().max().item() + 1e-12
        err = (g0[k] - ref[k]).abs().max().item()
        assert err <= 1e-4 * scale + 1e-7, f"{k}: max|ddp - single| = {err:.3g} (max|g| {scale:.3g})"


# ----------------------------------------------------------------------------- trainer under DDP

def _toy_ddp_step():
    from _toy import ToyStep
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    step = ToyStep()
    step.models.G = DDP(step.models.G)
    step.models.E = DDP(step.models.E)
    step.models.D = DDP(step.models.D)
    return step


def _trainer_run(rank, out_dir, mode):
    if True:
        from _toy import ToyPairs, loop_args
        from fastep.train.trainer import Trainer

        step = _toy_ddp_step()
        if mode == "resume":
            torch.manual_seed(1000 + rank)
        tr = Trainer(step, ToyPairs(n=21), system="toy", stage="3", batch_size=2, out_dir=out_dir, progress=False,
                     tensorboard=False, **loop_args(0.036, seed=1, log_every=2, ckpt_every_kimg=0.012))

        def stop(t):
            if mode == "interrupt" and t.step_idx == 7:
                raise KeyboardInterrupt

        try:
            tr.fit(resume=(mode == "resume"), _after_step=stop)
        except KeyboardInterrupt:
            pass
        w = step.networks()
        torch.save({k: {n: t.clone() for n, t in w[k].state_dict().items()} for k in ("G", "E", "D", "G_ema")}
                   | {"steps": tr.step_idx, "rng": torch.get_rng_state()},
                   os.path.join(out_dir, f"w_{mode}_{rank}.pt"))


def test_trainer_ddp_sharding_rank0_checkpoints_and_resume(ddp_results):
    from fastep.train.checkpoint import CheckpointManager, load_checkpoint

    ref_dir, run_dir = ddp_results / "ref", ddp_results / "run"
    r0 = torch.load(ref_dir / "w_full_0.pt")
    r1 = torch.load(ref_dir / "w_full_1.pt")
    assert r0["steps"] == 9  # 36 images / (2 per rank x 2 ranks)
    for k in ("G", "E", "D", "G_ema"):
        for n in r0[k]:
            assert torch.equal(r0[k][n], r1[k][n]), f"ranks diverged: {k}.{n}"
    mgr = CheckpointManager(ref_dir / "checkpoints", prefix="stage3")
    assert [s for s, _ in mgr.list()] == [3, 6, 9]
    ck = load_checkpoint(mgr.latest_path())
    assert ck.kimg == pytest.approx(0.036) and len(ck.rng_per_rank) == WORLD

    assert torch.load(run_dir / "w_interrupt_0.pt")["steps"] == 7
    for rank, ref in ((0, r0), (1, r1)):
        got = torch.load(run_dir / f"w_resume_{rank}.pt")
        assert got["steps"] == 9
        for k in ("G", "E", "D", "G_ema"):
            for n in ref[k]:
                assert torch.equal(ref[k][n], got[k][n]), f"rank {rank}: resumed {k}.{n} differs"
        assert torch.equal(ref["rng"], got["rng"])
