"""`fastep train` stops as the README says: SIGTERM / a first Ctrl-C -> checkpoint at the next log
interval and exit status 130 (``--resume`` continues from it); a second Ctrl-C aborts at once,
writing nothing; a NaN/inf loss -> exit status 3 naming the loss and step.

The signals are real (``os.kill`` of this process, handled by the trainer's own handlers); they
are sent from inside the training loop at a chosen step so the outcome is deterministic.
"""
import os
import signal

import pytest
import torch

from fastep.cli import main
from fastep.train.checkpoint import CheckpointManager
from fastep.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

# 10 steps of batch 2; losses checked every 4 steps; no periodic checkpoint before the end
TINY = ["--stage", "3", "--kimg", "0.02", "--ckpt-every", "1", "--log-every", "4", "--resolution", "32",
        "--batch", "2", "--n-train", "24", "--n-val", "4", "--width", "8,8,8", "--no-progress",
        "--device", "cpu", "--no-compile"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The built-in data set, made once for this module."""
    from fastep.data import make_builtin_dataset

    return str(make_builtin_dataset(tmp_path_factory.mktemp("sig") / "data", n_train=24, n_val=4, resolution=32))


def _at_steps(monkeypatch, actions):
    """Run ``actions[k](row)`` when step k (1-based) hands its losses to the trainer."""
    orig = Trainer._row

    def row(self, losses):
        r = orig(self, losses)
        act = actions.get(self.step_idx + 1)  # _row runs before step_idx is incremented
        return act(r) if act is not None else r

    monkeypatch.setattr(Trainer, "_row", row)


def _kill(sig):
    def act(r):
        os.kill(os.getpid(), sig)
        return r
    return act


def _steps(out):
    return [s for s, _ in CheckpointManager(os.path.join(out, "stage3", "checkpoints"), prefix="stage3").list()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_at_next_log_interval_exit_130_and_resume(tmp_path, data_dir, monkeypatch, capsys, sig):
    out = str(tmp_path / "run")
    _at_steps(monkeypatch, {2: _kill(sig)})
    rc = main(["train", "--out", out, "--data", data_dir, *TINY])
    err = capsys.readouterr().err
    assert rc == 130, err
    assert signal.Signals(sig).name in err and "stopping at the next log interval" in err
    assert _steps(out) == [4]  # the log interval after step 2, not the end (10)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.undo()
    rc = main(["train", "--out", out, "--data", data_dir, "--resume", *TINY])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "at step 4" in err and _steps(out)[-1] == 10


def test_second_ctrl_c_aborts_at_once_without_a_checkpoint(tmp_path, data_dir, monkeypatch, capsys):
    out = str(tmp_path / "run")
    _at_steps(monkeypatch, {1: _kill(signal.SIGINT), 2: _kill(signal.SIGINT)})
    assert main(["train", "--out", out, "--data", data_dir, *TINY]) == 130
    err = capsys.readouterr().err
    assert "aborted during stage 3" in err and "Traceback" not in err  # one line, not the graceful stop
    assert _steps(out) == []  # aborted at step 2, before the log interval's checkpoint


def test_nan_loss_exits_3_naming_loss_and_step(tmp_path, data_dir, monkeypatch, capsys):
    out = str(tmp_path / "run")
    # a first interrupted run leaves a good checkpoint at step 4; the resumed run hits a NaN at 7
    _at_steps(monkeypatch, {3: _kill(signal.SIGTERM)})
    assert main(["train", "--out", out, "--data", data_dir, *TINY]) == 130
    monkeypatch.undo()
    capsys.readouterr()

    def nan_first(r):
        r = r.clone()
        r[0] = float("nan")
        return r

    _at_steps(monkeypatch, {7: nan_first})
    rc = main(["train", "--out", out, "--data", data_dir, "--resume", *TINY])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "non-finite loss" in err and "at step 7" in err and "stage3-00000004.pt" in err
    assert _steps(out) == [4]  # nothing written after the NaN
    assert torch.load(os.path.join(out, "stage3", "checkpoints", "stage3-00000004.pt"),
                      weights_only=False)["step"] == 4
