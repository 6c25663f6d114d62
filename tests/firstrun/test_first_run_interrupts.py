"""Ctrl-C and SIGTERM in every stage of the main job, and in ``fastep eval``: one line on stderr,
exit status 130, no traceback, a checkpoint where the stage has one (stages 2-3), and
``--resume`` carries on.  Real signals, sent to a real ``python -m fastep`` process from inside
the stage (tests/firstrun/_hooked.py), so the outcome does not depend on timing."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY

HOOK = str(Path(__file__).with_name("_hooked.py"))


def _run(hook, args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, HOOK, *hook, "--", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stderr


def _last_line(err):
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()][-1]


@pytest.mark.parametrize("where, hook", [
    ("mining", ("fastep.zoo.step.stage1", "mine_triplets_from_images", "SIGINT", "wait")),
    ("stage 1", ("fastep.zoo.step.stage1", "train_encoder_stage1", "SIGTERM", "wait")),
])
def test_interrupt_in_stage_1_is_one_line_and_exit_130(tmp_path, where, hook):
    rc, err = _run(hook, ["train", "--out", "run", *TINY], tmp_path)
    assert rc == 130, err
    assert "Traceback" not in err
    last = _last_line(err)
    assert last.startswith("fastep train: aborted during stage 1") and "--resume" in last, last
    assert not (tmp_path / "run" / "stage1" / "final.pt").exists()  # stage 1 has no checkpoint to write


def test_sigterm_in_stage_2_checkpoints_and_resume_finishes(tmp_path):
    long2 = [*TINY, "--stage2-kimg", "0.008"]  # 4 steps of stage 2, losses checked every 2
    rc, err = _run(("fastep.train.trainer", "Trainer._row", "SIGTERM", "go"), ["train", "--out", "run", *long2],
                   tmp_path)
    assert rc == 130, err
    assert "Traceback" not in err
    assert "SIGTERM: stopping at the next log interval" in err
    last = _last_line(err)
    assert last.startswith("fastep train: training interrupted at step 2") and "--resume" in last, last
    ckpts = sorted((tmp_path / "run" / "stage2" / "checkpoints").glob("*.pt"))
    assert [p.name for p in ckpts] == ["stage2-00000002.pt"]
    # the same command with --resume continues from it and finishes every stage
    proc = subprocess.run([sys.executable, "-m", "fastep", "train", "--out", "run", "--resume", "--no-eval", *long2],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert "stage 1 already done" in proc.stderr and "resumed stage 2" in proc.stderr and "at step 2" in proc.stderr
    assert (tmp_path / "run" / "final.pt").is_file()


def test_second_ctrl_c_in_stage_3_aborts_with_one_line(tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    # rerun stage 3 only; the first Ctrl-C asks for a stop at the next log interval, the second aborts
    rc, err = _run(("fastep.train.trainer", "Trainer._row", "SIGINT,SIGINT", "go"),
                   ["train", "--stage", "3", "--out", "run", "--overwrite", *TINY], tmp_path)
    assert rc == 130, err
    assert "Traceback" not in err
    assert "Ctrl-C again to abort at once" in err
    last = _last_line(err)
    assert last.startswith("fastep train: aborted during stage 3"), last
    assert not list((run / "stage3").glob("checkpoints/*.pt"))  # aborted before the first checkpoint


def test_ctrl_c_in_the_mapper(tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    rc, err = _run(("fastep.zoo.step.imle", "train_mapper", "SIGINT", "wait"),
                   ["train", "--stage", "mapper", "--out", "run", "--overwrite", *TINY], tmp_path)
    assert rc == 130, err
    assert "Traceback" not in err
    assert _last_line(err).startswith("fastep train: aborted during stage mapper")
    assert (run / "stage3" / "final.pt").is_file() and not (run / "final.pt").exists()


def test_ctrl_c_in_eval(tmp_path, finished_run):
    out, _, _ = finished_run
    data = next((out / "data").iterdir())
    rc, err = _run(("fastep.eval.evaluate", "diversity", "SIGINT", "wait"),
                   ["eval", str(out / "final.pt"), "--data", str(data), "--out", str(tmp_path / "e.json"),
                    "--no-progress"], tmp_path)
    assert rc == 130, err
    assert "Traceback" not in err
    assert _last_line(err) == "fastep eval: interrupted (Ctrl-C); stopped"
    assert not (tmp_path / "e.json").exists()


def test_ctrl_c_in_the_main_jobs_final_evaluation(tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    # --resume on a finished run skips every stage and goes straight to the evaluation
    rc, err = _run(("fastep.eval.evaluate", "diversity", "SIGTERM", "wait"),
                   ["train", "--out", "run", "--resume", *TINY], tmp_path)
    assert rc == 130, err
    assert "Traceback" not in err
    last = _last_line(err)
    assert last.startswith("fastep train: evaluation interrupted; the trained model is complete"), last
