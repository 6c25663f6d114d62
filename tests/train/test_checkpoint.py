"""The checkpoint schema: atomic writes, keep-last-N, crash safety (kill -9), RNG capture,
weights_only loading with its one-line refusals, format-0 files, load_models."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from fastep.train.checkpoint import (FORMAT_VERSION, Checkpoint, CheckpointError, CheckpointManager,
                                     capture_rng_state, load_checkpoint, restore_rng_state, save_atomic)


def _ck(step, **extras):
    return Checkpoint(system="toy", stage="2", step=step, extras=extras)


def test_checkpoint_roundtrip(tmp_path):
    ck = Checkpoint(system="toy", stage="3", step=7, kimg=0.5, configs={"model": {"z_dim": 8, "w": (1, 2)}},
                    weights={"G": {"w": torch.randn(5, 3)}, "D": None}, rng=capture_rng_state(),
                    extras={"nested": {"a": [1, 2]}})
    p = ck.save(tmp_path / "sub" / "x.pt")
    back = load_checkpoint(p)
    assert back.format_version == FORMAT_VERSION and back.system == "toy" and back.stage == "3"
    assert torch.equal(back.weights["G"]["w"], ck.weights["G"]["w"]) and back.weights["D"] is None
    assert back.step == 7 and back.extras == {"nested": {"a": [1, 2]}} and back.configs == ck.configs
    assert [q.name for q in p.parent.iterdir()] == ["x.pt"]  # no temporaries left behind
    assert torch.load(p, weights_only=True)["system"] == "toy"  # no allow-list needed for format 1


def test_save_atomic_any_tensor_file(tmp_path):
    p = save_atomic({"w": torch.ones(2)}, tmp_path / "cache.pt")
    assert torch.equal(torch.load(p, weights_only=True)["w"], torch.ones(2))
    with pytest.raises(CheckpointError, match=r"cache\.pt.*is not a fastep checkpoint.*format_version"):
        load_checkpoint(p)


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)


def test_keep_last_n(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2, prefix="stage2")
    for step in (10, 20, 30, 40):
        mgr.save(_ck(step), step)
    assert [s for s, _ in mgr.list()] == [30, 40]
    path, ckpt = mgr.latest()
    assert ckpt.step == 40 and path.name == "stage2-00000040.pt"
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(tmp_path, keep=0)


def test_crash_between_tmp_write_and_rename_keeps_old_checkpoint(tmp_path):
    """Simulated kill between the temporary write and the rename."""
    mgr = CheckpointManager(tmp_path, keep=3)
    mgr.save(_ck(1, w=torch.ones(4)), 1)

    class Killed(BaseException):
        pass

    def die(tmp):
        assert tmp.exists() and tmp.parent == tmp_path
        raise Killed()

    with pytest.raises(Killed):
        mgr.save(_ck(2, w=torch.zeros(4)), 2, _before_replace=die)
    path, ckpt = mgr.latest()
    assert ckpt.step == 1 and torch.equal(ckpt.extras["w"], torch.ones(4))
    # A truncated / torn file with a checkpoint name (e.g. copied by hand) is skipped, not used.
    (tmp_path / "ckpt-00000003.pt").write_bytes(b"\x80\x02torn")
    msgs = []
    path, ckpt = mgr.latest(warn=msgs.append)
    assert ckpt.step == 1 and msgs and "ckpt-00000003.pt" in msgs[0]


_WRITER = textwrap.dedent("""
    import sys, torch
    from fastep.train.checkpoint import Checkpoint, CheckpointManager
    mgr = CheckpointManager(sys.argv[1], keep=2)
    big = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0))  # 16 MB per checkpoint: the kill lands mid-write most of the time
    step = 0
    while True:
        step += 1
        mgr.save(Checkpoint(system="toy", stage="2", step=step, extras={"w": big + step}), step)
        print(step, flush=True)
""")


def test_kill9_during_checkpointing_leaves_loadable_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(ck)], stdout=subprocess.PIPE, text=True, env=env)
    seen_tmp = False
    try:
        first = proc.stdout.readline()  # the first checkpoint is complete
        assert first.strip() == "1", first
        # kill -9 the moment a temporary checkpoint file is being written (i.e. mid-save)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen_tmp:
            seen_tmp = any(ck.glob(".ckpt-*.tmp"))
            if not seen_tmp:
                time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert seen_tmp, "never saw a checkpoint being written"
    mgr = CheckpointManager(ck, keep=2)
    path, ckpt = mgr.latest()
    step = ckpt.step
    big = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0))  # the writer's tensor
    assert step >= 1 and torch.equal(ckpt.extras["w"], big + step)
    # every file with a checkpoint name is complete (a torn temporary may remain; it is hidden)
    for s, p in mgr.list():
        c = load_checkpoint(p)
        assert c.step == s and torch.equal(c.extras["w"], big + s), p
    mgr.save(_ck(step + 1), step + 1)  # the next save cleans stray temporaries
    assert not list(ck.glob(".*.tmp"))


def test_rng_capture_restore():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    state = capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_load_models_from_trainer_checkpoint(tmp_path):
    import dataclasses

    from fastep.train.checkpoint import load_models
    from fastep.zoo.step import ModelConfig, build_models

    mc = ModelConfig(resolution=32, g_nf=4, e_nf=4, d_nf=4, n_res=1)
    models = build_models(mc, "cpu")
    ckpt = Checkpoint(system="step", stage="3", step=1, kimg=0.01,
                      configs={"model": dataclasses.asdict(mc), "train": {}},
                      weights={"G": models.G.state_dict(), "E": models.E.state_dict(), "D": models.D.state_dict(),
                               "G_ema": None, "E_ema": None},
                      extras={"z_stats": {"mu": torch.zeros(mc.z_dim), "sigma": torch.ones(mc.z_dim)}})
    ckpt.save(tmp_path / "final.pt")
    G, E, cfg, extras = load_models(tmp_path / "final.pt", "cpu", ema=True)
    assert cfg == mc and not G.training and extras["mapper"] is None
    assert torch.equal(extras["z_stats"]["sigma"], torch.ones(mc.z_dim))
    for a, b in zip(G.state_dict().values(), models.G.state_dict().values()):
        assert torch.equal(a, b)
    A = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = E(A)
        z = z[0] if isinstance(z, tuple) else z
        assert G(A, z).shape == (2, 3, 32, 32)
