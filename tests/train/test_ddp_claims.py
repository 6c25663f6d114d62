"""DDP claims not covered by test_ddp.py, with two gloo processes on CPU (one spawn):

* the training step broadcasts rank 0's weights at construction: the ranks build their
  networks from *different* seeds and still start equal (to rank 0's);
* all ranks stop at the same step when only rank 1 gets SIGTERM, and when only rank 1's loss
  is NaN;
* only rank 0 writes (checkpoints, sample grids, metrics): each rank gets its own out_dir and
  rank 1's stays empty.
"""
import datetime
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))

WORLD = 2


def _broadcast_case(rank, root):
    from fastep.zoo.step import build_models
    from fastep.zoo.step.config import LossConfig, ModelConfig, TrainConfig
    from fastep.zoo.step.train_step import TrainStep

    mc = ModelConfig.tiny(resolution=32)
    lc = LossConfig.preset("ours_v3", perceptual_backbone="random")
    tc = TrainConfig(stage=3, approach="ours_v3", batch_size=2, resolution=32, compile=False, amp=False,
                     channels_last=False, fused_adam=False, device="cpu")
    torch.manual_seed(100 + rank)  # different initial weights on each rank
    models = build_models(mc, "cpu")
    before = {k: {n: p.detach().clone() for n, p in getattr(models, k).named_parameters()} for k in "GED"}
    step = TrainStep(models, lc, tc, 3)
    w = step.networks()
    after = {k: {n: p.detach().clone() for n, p in w[k].named_parameters()} for k in "GED"}
    torch.save({"before": before, "after": after}, os.path.join(root, f"bcast{rank}.pt"))


def _toy_trainer(rank, out_dir, nan_at=None, **kw):
    from _toy import ToyPairs, ToyStep, loop_args
    from torch.nn.parallel import DistributedDataParallel as DDP

    from fastep.train.trainer import Trainer

    torch.manual_seed(0)
    step = ToyStep(nan_at=nan_at)
    for k in "GED":
        setattr(step.models, k, DDP(getattr(step.models, k)))
    hooks = {k: kw.pop(k) for k in ("configs", "extras", "max_steps", "n_grid", "log") if k in kw}
    return Trainer(step, ToyPairs(n=24), system="toy", stage="3", batch_size=2, out_dir=out_dir, progress=False,
                   tensorboard=False, **hooks, **loop_args(kw.pop("kimg"), seed=1, **kw))


def _stop_case(rank, root, what):
    from fastep.train.trainer import NonFiniteLossError, TrainingInterrupted

    tr = _toy_trainer(rank, os.path.join(root, f"{what}{rank}"), nan_at=5 if (what == "nan" and rank == 1) else None,
                      kimg=0.048, log_every=4, ckpt_every_kimg=1.0)

    def after(t):
        if what == "sigterm" and rank == 1 and t.step_idx == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    res = {"steps_run": None}
    try:
        tr.fit(_after_step=after)
        res["outcome"] = "finished"
    except TrainingInterrupted as e:
        res.update(outcome="interrupted", at=e.step)
    except NonFiniteLossError as e:
        res.update(outcome="nan", at=e.step, loss=e.loss)
    res["steps_run"] = tr.step_idx
    torch.save(res, os.path.join(root, f"{what}_result{rank}.pt"))


def _writes_case(rank, root):
    tr = _toy_trainer(rank, os.path.join(root, f"writes{rank}"), kimg=0.024, log_every=2, ckpt_every_kimg=0.008,
                      image_every_kimg=0.016, n_grid=2)
    tr.fit()


def _worker(rank, rdv, root):
    torch.set_num_threads(1)
    # a collective that one rank never joins (ranks disagreeing on when to stop) fails after
    # 45 s instead of hanging the suite
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=45))
    try:
        _broadcast_case(rank, root)
        _stop_case(rank, root, "sigterm")
        _stop_case(rank, root, "nan")
        _writes_case(rank, root)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_claims")
    mp.spawn(_worker, args=(str(root / "rdv"), str(root)), nprocs=WORLD, join=True)
    return root


def test_step_broadcasts_rank0_weights(ddp_root):
    r0, r1 = (torch.load(ddp_root / f"bcast{r}.pt") for r in range(WORLD))
    differed = 0
    for k in "GED":
        for n in r0["before"][k]:
            differed += not torch.equal(r0["before"][k][n], r1["before"][k][n])
            assert torch.equal(r1["after"][k][n], r0["before"][k][n]), f"rank 1 {k}.{n} is not rank 0's"
            assert torch.equal(r0["after"][k][n], r0["before"][k][n]), f"rank 0 {k}.{n} changed"
    assert differed > 10  # the seeds really gave different weights (biases start at 0 everywhere)


@pytest.mark.parametrize("what", ["sigterm", "nan"])
def test_all_ranks_stop_at_the_same_step(ddp_root, what):
    r0, r1 = (torch.load(ddp_root / f"{what}_result{r}.pt") for r in range(WORLD))
    if what == "sigterm":  # rank 1 alone got SIGTERM after step 2: both stop at the log interval
        assert r0 == r1 == {"outcome": "interrupted", "at": 4, "steps_run": 4}
        assert [p.name for p in (ddp_root / "sigterm0" / "checkpoints").iterdir()] == ["stage3-00000004.pt"]
    else:  # rank 1 alone has a NaN loss at step 5: both stop at the log check after it
        assert r0 == r1 == {"outcome": "nan", "at": 5, "loss": "G", "steps_run": 8}


def test_only_rank0_writes(ddp_root):
    files0 = sorted(str(p.relative_to(ddp_root / "writes0")) for p in (ddp_root / "writes0").rglob("*") if p.is_file())
    assert "metrics.json" in files0
    assert {"checkpoints/stage3-00000002.pt", "checkpoints/stage3-00000004.pt",
            "checkpoints/stage3-00000006.pt"} <= set(files0)
    assert any(f.startswith("samples/") and f.endswith(".png") for f in files0), files0
    d1 = ddp_root / "writes1"
    assert not d1.exists() or not [p for p in d1.rglob("*") if p.is_file()], list(d1.rglob("*"))
