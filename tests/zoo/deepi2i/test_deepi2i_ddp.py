"""DeepI2I under torch.distributed: two gloo processes on CPU (torch.multiprocessing.spawn).

* the transfer step: ranks built from different seeds start from rank 0's weights; the first D
  update's gradients, averaged over the ranks, equal the mean of one process's gradients on each
  rank's batch; after two updates every parameter and buffer is equal on both ranks;
* ``fastep train --system deepi2i`` under two ranks: both stages finish, each update takes both
  ranks' images (half the updates of one process for the same kimg), rank 0 writes the folders.
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
MICRO, ACC = 2, 2


def _step(seed):
    from fastep.zoo.deepi2i import TransferStep, build_nets
    from fastep.zoo.deepi2i.run_config import resolve_run_config

    run = resolve_run_config("cpu")
    import dataclasses

    cfg = dataclasses.replace(run.step, micro_batch=MICRO, accumulations=ACC, phase1_steps=0)
    torch.manual_seed(seed)
    return TransferStep(build_nets(run.model), cfg, "cpu")


def _batch(rank, update):
    g = torch.Generator().manual_seed(1000 * update + rank)
    n = MICRO * ACC
    x = torch.rand(n, 3, 64, 64, generator=g) * 2 - 1
    y = torch.randint(0, 6, (n,), generator=g)
    noise = {"z_d": torch.randn(ACC, MICRO, 120, generator=g), "y_d": torch.randint(0, 6, (ACC, MICRO), generator=g),
             "z_g": torch.randn(ACC, MICRO, 120, generator=g), "y_g": torch.randint(0, 6, (ACC, MICRO), generator=g)}
    return x, y, noise


def _first_d_grads(step, x, y, noise):
    """The D gradients at the first optimizer step of ``step.update`` (after any all_reduce)."""
    seen = {}
    opt = step.opts["D"]
    orig = opt.step

    def snap(*a, **k):
        if not seen:
            seen.update({n: p.grad.detach().clone() for n, p in step.nets["D"].named_parameters()
                         if p.grad is not None})
        return orig(*a, **k)

    opt.step = snap
    step.update(x, y, noise)
    opt.step = orig
    return seen


def _worker(rank, rdv, root, tiny_args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=WORLD)
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank))
    try:
        step = _step(seed=rank)  # different seeds: the step must take rank 0's weights
        grads = _first_d_grads(step, *_batch(rank, 0))
        step.update(*_batch(rank, 1))
        state = {k: {n: t.detach().clone() for n, t in net.state_dict().items()} for k, net in step.nets.items()}
        torch.save({"grads": grads, "state": state}, os.path.join(root, f"step{rank}.pt"))
        from fastep.cli import main

        rc = main(["train", "--system", "deepi2i", "--out", os.path.join(root, "run"), *tiny_args, "--no-eval"])
        Path(root, f"rc{rank}").write_text(str(rc))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_root(tmp_path_factory):
    from test_deepi2i_pipeline import TINY

    root = tmp_path_factory.mktemp("deepi2i_ddp")
    mp.spawn(_worker, args=(str(root / "rdv"), str(root), TINY), nprocs=WORLD, join=True)
    return root


def test_ddp_step_averages_gradients_and_keeps_ranks_identical(ddp_root):
    torch.set_num_threads(1)
    r0, r1 = torch.load(ddp_root / "step0.pt"), torch.load(ddp_root / "step1.pt")
    singles = [_first_d_grads(_step(seed=0), *_batch(rank, 0)) for rank in range(WORLD)]
    assert r0["grads"] and set(r0["grads"]) == set(singles[0])
    differ = 0
    for name, g in r0["grads"].items():
        assert torch.equal(g, r1["grads"][name]), f"ranks disagree on D.{name}"
        mean = (singles[0][name] + singles[1][name]) / 2
        scale = mean.abs().max().item() + 1e-12
        assert (g - mean).abs().max().item() <= 1e-5 * scale + 1e-8, f"D.{name}: not the mean of the ranks' gradients"
        differ += not torch.allclose(singles[0][name], singles[1][name])
    assert differ > 0  # the two ranks' batches do give different gradients
    for net, tensors in r0["state"].items():
        for name, t in tensors.items():
            assert torch.equal(t, r1["state"][net][name]), f"{net}.{name} differs between the ranks"


def test_ddp_cli_run_shares_each_update_between_the_ranks(ddp_root):
    import json

    from fastep.train.checkpoint import load_checkpoint

    assert (ddp_root / "rc0").read_text() == "0" and (ddp_root / "rc1").read_text() == "0"
    run = ddp_root / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for stage in ("biggan", "transfer"):
        m = metrics["stages"][stage]
        assert m["world_size"] == WORLD
        # 16 images per stage at 2 x 2 per rank: 2 updates of 8 images (one process needs 4)
        assert m["steps"] == 2 and m["kimg"] == pytest.approx(0.016)
    assert (run / "biggan" / "weights" / "G_ema.pth").is_file()
    assert load_checkpoint(run / "final.pt").system == "deepi2i"
