"""Trainer loop: bit-identical resume, NaN stop, LR schedule, outputs (toy step + the real one)."""
import json

import pytest
import torch

from _toy import ToyPairs, ToyStep, loop_args, weights_of
from fastep.train.checkpoint import CheckpointManager, load_checkpoint
from fastep.data.loader import ResumableSampler, make_loader
from fastep.train.trainer import NonFiniteLossError, Trainer, lr_scale_at


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tests: see tests/conftest.py


def _trainer(step, out, **kw):
    kimg = kw.pop("kimg", 0.056)
    args = dict(system="toy", stage="2", batch_size=4, out_dir=out, progress=False, tensorboard=False,
                **loop_args(kimg, seed=3, log_every=3, ckpt_every_kimg=0.016,
                            lr_decay_start_kimg=0.25 * kimg))  # the decay a quarter into the run
    args.update(kw)
    return Trainer(step, ToyPairs(n=22), **args)


class Interrupt(BaseException):
    pass


def test_lr_scale_schedule():
    assert lr_scale_at(0, 10, 5) == 1.0 and lr_scale_at(5, 10, 5) == 1.0
    assert lr_scale_at(7.5, 10, 5) == pytest.approx(0.5) and lr_scale_at(10, 10, 5) == 0.0
    assert lr_scale_at(3, 10, 10) == 1.0
    assert lr_scale_at(10, 100, 50) == 1.0 and lr_scale_at(75, 100, 50) == 0.5 and lr_scale_at(100, 100, 50) == 0.0


def test_sampler_skip_within_epoch_sharded():
    ds = list(range(10))
    loader = make_loader(ds, 2, distributed=True, num_replicas=2, rank=1, seed=5)
    s = loader.sampler
    assert isinstance(s, ResumableSampler)
    s.set_epoch(3)
    full = list(s)
    assert len(full) == 5 and len(set(full)) == 5
    other = make_loader(ds, 2, distributed=True, num_replicas=2, rank=0, seed=5).sampler
    other.set_epoch(3)
    assert not set(full) & set(other)  # the two ranks' shards are disjoint
    s.skip_next(2)
    assert list(s) == full[2:]
    assert list(s) == full  # the skip applies to one pass only


def test_resume_is_bit_identical_to_uninterrupted(tmp_path):
    # Uninterrupted: 14 steps of batch 4 over 22 images (5 batches / epoch), checkpoints every 4.
    torch.manual_seed(0)
    ref = ToyStep()
    grids = dict(image_every_kimg=0.012, n_grid=2)  # grids must not perturb the RNG stream
    m_ref = _trainer(ref, tmp_path / "ref", **grids).fit()
    assert m_ref["steps"] == 14 and ref.calls == 14

    # Interrupted after step 10 (last checkpoint at step 8, mid-epoch 2), then resumed.
    torch.manual_seed(0)
    a = ToyStep()

    def stop(tr):
        if tr.step_idx == 10:
            raise Interrupt()

    with pytest.raises(Interrupt):
        _trainer(a, tmp_path / "run", **grids).fit(_after_step=stop)
    mgr = CheckpointManager(tmp_path / "run" / "checkpoints", prefix="stage2")
    assert [s for s, _ in mgr.list()] == [4, 8]

    torch.manual_seed(1234)  # a different init and RNG stream: everything must come from the checkpoint
    b = ToyStep()
    tr = _trainer(b, tmp_path / "run", **grids)
    m = tr.fit(resume=True)
    assert m["steps"] == 14 and b.calls == 14
    w_ref, w_b = weights_of(ref), weights_of(b)
    assert w_ref.keys() == w_b.keys()
    for k in w_ref:
        assert torch.equal(w_ref[k], w_b[k]), k
    assert b.lr_scale == ref.lr_scale
    assert torch.equal(torch.get_rng_state(), load_checkpoint(mgr.latest_path()).rng["torch"])
    final = load_checkpoint(mgr.latest_path())
    assert final.complete and final.step == 14 and final.system == "toy"
    for k in ("G", "E", "D", "G_ema", "E_ema"):
        for n, t in final.weights[k].items():
            assert torch.equal(t, w_ref[f"{k}.{n}"])


def test_nan_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    step = ToyStep(nan_at=7)
    tr = _trainer(step, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"G = nan at step 7") as info:
        tr.fit()
    err = info.value
    assert err.loss == "G" and err.step == 7
    assert "stage2-00000004.pt" in str(err)
    mgr = CheckpointManager(tmp_path / "checkpoints", prefix="stage2")
    assert [s for s, _ in mgr.list()] == [4]
    ckpt = load_checkpoint(mgr.latest_path())
    for t in ckpt.weights["G"].values():
        assert torch.isfinite(t).all()
    # a NaN right before a checkpoint boundary is caught before writing it
    step = ToyStep(nan_at=8)
    with pytest.raises(NonFiniteLossError, match="step 8"):
        _trainer(step, tmp_path / "b", log_every=100).fit()
    assert [s for s, _ in CheckpointManager(tmp_path / "b" / "checkpoints", prefix="stage2").list()] == [4]


def test_outputs_metrics_grids_and_tensorboard_note(tmp_path):
    notes = []
    tr = _trainer(ToyStep(), tmp_path, image_every_kimg=0.024, n_grid=3, log=notes.append, kimg=0.024,
                  tensorboard=True)
    m = tr.fit()
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["steps"] == 6 and set(data["final_losses"]) == {"D", "G"}
    assert data["kimg"] == pytest.approx(0.024) and m["checkpoint"].endswith("stage2-00000006.pt")
    pngs = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert pngs == ["stage2_00000000.png", "stage2_00000006.png"]
    from PIL import Image

    im = Image.open(tmp_path / "samples" / pngs[-1])
    assert im.size[1] == 5 * 8 + 6 * 2  # rows A, B, recon, transfer, random z
    try:
        import torch.utils.tensorboard  # noqa: F401
        has_tb = True
    except Exception:  # noqa: BLE001
        has_tb = False
    if has_tb:
        assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    else:
        assert any("pip install tensorboard" in n for n in notes)


def test_loop_settings_have_no_defaults_in_the_trainer():
    """Their one home is the run config (RunConfig for StEP): the Trainer requires every one."""
    import inspect

    params = inspect.signature(Trainer.__init__).parameters
    loop = ("device", "batch_size", "kimg", "seed", "lr_decay_start_kimg", "log_every", "ckpt_every_kimg",
            "image_every_kimg", "keep", "num_workers")
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY and params[k].default is inspect.Parameter.empty
               for k in loop)
    with pytest.raises(TypeError, match="log_every"):
        args = loop_args(0.056)
        del args["log_every"]
        Trainer(ToyStep(), ToyPairs(n=22), system="toy", stage="2", batch_size=4, out_dir="unused", **args)


def test_too_small_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(ToyStep(), ToyPairs(n=3), system="toy", stage="2", batch_size=4, out_dir=tmp_path,
                progress=False, **loop_args(1))


# ----------------------------------------------------------------------------- the real TrainStep

def _real_step(seed):
    from fastep.zoo.step.config import LossConfig, ModelConfig, TrainConfig
    from fastep.zoo.step import build_models
    from fastep.zoo.step.train_step import TrainStep

    mc = ModelConfig.tiny(resolution=32)
    lc = LossConfig.preset("ours_v3", perceptual_backbone="random")
    tc = TrainConfig(stage=3, approach="ours_v3", batch_size=2, resolution=32, compile=False, amp=False,
                     channels_last=False, fused_adam=False, device="cpu")
    return TrainStep(build_models(mc, "cpu", seed=seed), lc, tc, 3), mc, tc


def test_real_step_resume_bit_identical_and_load_models(tmp_path, one_thread):
    import dataclasses

    from fastep.train.checkpoint import load_models

    def trainer(step, out, mc, tc):
        return Trainer(step, ToyPairs(n=10, res=32), system="step", stage="3", batch_size=2, out_dir=out,
                       progress=False,
                       **loop_args(0.012, seed=0, log_every=2, ckpt_every_kimg=0.006, lr_decay_start_kimg=0.0036),
                       configs={"model": dataclasses.asdict(mc), "train": dataclasses.asdict(tc)})

    ref, mc, tc = _real_step(0)
    trainer(ref, tmp_path / "ref", mc, tc).fit()

    a, _, _ = _real_step(0)

    def stop(tr):
        if tr.step_idx == 4:
            raise Interrupt()

    with pytest.raises(Interrupt):
        trainer(a, tmp_path / "run", mc, tc).fit(_after_step=stop)
    b, _, _ = _real_step(7)  # different init: everything must come from the checkpoint
    torch.manual_seed(99)
    m = trainer(b, tmp_path / "run", mc, tc).fit(resume=True)
    assert m["steps"] == 6 and b.step_count == 6
    wr, wb = ref.networks(), b.networks()
    for k in ("G", "E", "D", "G_ema", "E_ema"):
        for (n, x), (_, y) in zip(wr[k].state_dict().items(), wb[k].state_dict().items()):
            assert torch.equal(x, y), f"{k}.{n}"
    # the checkpoint is what eval loads
    G, E, cfg, extras = load_models(m["checkpoint"], "cpu", ema=True)
    assert cfg == mc and extras["stage"] == "3" and extras["step"] == 6
    for (n, x), (_, y) in zip(G.state_dict().items(), wr["G_ema"].state_dict().items()):
        assert torch.equal(x, y), n


def test_sigterm_checkpoints_then_resume_is_bit_identical(tmp_path):
    import os
    import signal

    from fastep.train.trainer import TrainingInterrupted

    torch.manual_seed(0)
    ref = ToyStep()
    _trainer(ref, tmp_path / "ref", ckpt_every_kimg=0).fit()

    torch.manual_seed(0)
    a = ToyStep()

    def term(tr):
        if tr.step_idx == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        _trainer(a, tmp_path / "run", ckpt_every_kimg=0).fit(_after_step=term)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert info.value.step == 6 and info.value.checkpoint.endswith("stage2-00000006.pt")  # next log interval
    b = ToyStep()
    _trainer(b, tmp_path / "run", ckpt_every_kimg=0).fit(resume=True)
    w_ref, w_b = weights_of(ref), weights_of(b)
    for k in w_ref:
        assert torch.equal(w_ref[k], w_b[k]), k


@pytest.mark.cuda
def test_cuda_compiled_trainer_checkpoint_resume_and_load(tmp_path):
    """GPU: the compiled bf16 channels_last step under the Trainer; resume continues; eval loads."""
    import dataclasses

    from fastep.train.checkpoint import load_models
    from fastep.zoo.step.config import LossConfig, ModelConfig, TrainConfig
    from fastep.zoo.step import build_models
    from fastep.zoo.step.train_step import TrainStep

    mc = ModelConfig.tiny(resolution=64)
    lc = LossConfig.preset("ours_v3", perceptual_backbone="random")
    tc = TrainConfig(stage=3, approach="ours_v3", batch_size=4, resolution=64, compile=True, amp=True,
                     channels_last=True, device="cuda")

    def trainer(out, max_steps=None):
        step = TrainStep(build_models(mc, "cuda", seed=0), lc, tc, 3)
        return step, Trainer(step, ToyPairs(n=16, res=64), system="step", stage="3", batch_size=4,
                             out_dir=out, progress=False, max_steps=max_steps,
                             **loop_args(0.032, device="cuda", log_every=2, ckpt_every_kimg=0.016,
                                         image_every_kimg=0.032),
                             configs={"model": dataclasses.asdict(mc), "train": dataclasses.asdict(tc)})

    _, tr = trainer(tmp_path, max_steps=4)
    m = tr.fit()
    assert m["steps"] == 4 and all(v == v for v in m["final_losses"].values())
    step, tr = trainer(tmp_path)
    m = tr.fit(resume=True)
    assert m["steps"] == 8 and step.step_count == 8
    G, E, cfg, extras = load_models(m["checkpoint"], "cuda")
    with torch.no_grad():
        out = G(torch.zeros(2, 3, 64, 64, device="cuda"), torch.zeros(2, cfg.z_dim, device="cuda"))
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
    assert (tmp_path / "samples" / "stage3_00000008.png").is_file()


def test_tensorboard_missing_is_a_note_not_an_error(tmp_path, monkeypatch):
    import sys

    from fastep.train.outputs import TensorBoardLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    notes = []
    tb = TensorBoardLogger(tmp_path / "tb", note=notes.append)
    tb.scalars({"a": 1.0}, 0)
    tb.image("x", torch.zeros(3, 4, 4), 0)
    tb.close()
    assert tb.writer is None and len(notes) == 1 and "pip install tensorboard" in notes[0]
    notes.clear()
    tr = _trainer(ToyStep(), tmp_path / "run", kimg=0.008, tensorboard=True, log=notes.append)
    assert tr.fit()["steps"] == 2 and any("pip install tensorboard" in n for n in notes)


_KILL_RUN = """
import sys, torch
sys.path.insert(0, sys.argv[2])
torch.set_num_threads(1)
from _toy import ToyPairs, ToyStep, loop_args
from fastep.train.trainer import Trainer
torch.manual_seed(0)
step = ToyStep()
pad = torch.randn(4_000_000, generator=torch.Generator().manual_seed(1))  # 16 MB per checkpoint: writing takes long enough to be caught mid-write
Trainer(step, ToyPairs(n=22), system="toy", stage="2", batch_size=4, out_dir=sys.argv[1], progress=False,
        tensorboard=False, extras={"pad": pad},
        **loop_args(0.12, seed=3, log_every=3, ckpt_every_kimg=0.008, lr_decay_start_kimg=0.03, keep=2)).fit(resume=True)
"""


def test_kill9_mid_checkpoint_during_training_then_resume_is_bit_identical(tmp_path):
    """A real training process is SIGKILLed while it writes a checkpoint; resuming from what is on
    disk finishes with weights bit-identical to an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "run"
    ck = out / "checkpoints"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _KILL_RUN, str(out), str(Path(__file__).parent)], env=env)
    caught = False
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            # wait for at least one finished checkpoint, then kill during the next write
            if any(ck.glob("stage2-*.pt")) and any(ck.glob(".stage2-*.tmp")):
                os.kill(proc.pid, signal.SIGKILL)
                caught = True
                break
            time.sleep(0.001)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert caught, f"the run finished (rc {proc.returncode}) before a checkpoint write could be interrupted"
    mgr = CheckpointManager(ck, prefix="stage2")
    path, ckpt = mgr.latest()
    assert 0 < ckpt.step < 30

    # resume in this process from whatever the killed run left behind
    torch.manual_seed(0)
    b = ToyStep()
    m = _trainer(b, out, kimg=0.12, ckpt_every_kimg=0.008, keep=2, extras={"pad": ckpt.extras["pad"]}).fit(resume=True)
    assert m["steps"] == 30
    torch.manual_seed(0)
    ref = ToyStep()
    _trainer(ref, tmp_path / "ref", kimg=0.12, ckpt_every_kimg=0).fit()
    w_ref, w_b = weights_of(ref), weights_of(b)
    for k in w_ref:
        assert torch.equal(w_ref[k], w_b[k]), k
