"""``fastep train --system deepi2i`` / ``--system biggan`` on tiny sizes: the stage-biggan
folder in the BigGAN-PyTorch format read back strictly, the transfer from it, the zoo's
inference objects, the closing evaluation and its summary, a NaN's exit status 3, and one-line
errors on bad input."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

import fastep.zoo as zoo
from fastep.cli import main
from fastep.eval.oracle import OracleConfig
from fastep.zoo.deepi2i import evaluate as deepi2i_evaluate
from fastep.train.checkpoint import CheckpointManager, load_checkpoint
from fastep.train.trainer import Trainer
from fastep.zoo.deepi2i.config import TRANSFER_FUSION
from fastep.zoo.deepi2i import PRESETS, Translator, load_biggan
from fastep.zoo.biggan import Sampler

pytestmark = pytest.mark.usefixtures("one_thread")

# 4 updates of 2 x 2 images per stage, the first transfer update in phase 1
TINY = ["--preset", "cpu", "--no-progress", "--set", "n_source=12", "--set", "n_train=12", "--set", "n_val=4",
        "--set", "biggan_kimg=0.016", "--set", "transfer_kimg=0.016", "--set", "step.micro_batch=2",
        "--set", "biggan_step.micro_batch=2", "--set", "biggan_step.accumulations=2",
        "--set", "step.accumulations=2", "--set", "step.phase1_steps=1", "--set", "ckpt_every=0.008",
        "--set", "image_every=0.008", "--set", "log_every=1", "--device", "cpu"]


# the closing evaluation's oracle, shrunk to seconds (the real one trains for minutes)
TINY_ORACLE = OracleConfig(n_images=32, steps=3, batch_size=8, width=8, max_resolution=32)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("deepi2i") / "run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(deepi2i_evaluate, "ORACLE", TINY_ORACLE)
        assert main(["train", "--system", "deepi2i", "--out", out, *TINY]) == 0
    return out


def test_the_run_ends_with_its_evaluation(run, monkeypatch, capsys):
    report = json.load(open(os.path.join(run, "eval.json")))
    assert report["oracle"] == dataclasses.asdict(TINY_ORACLE)
    assert report["final"]["n_inputs"] == 4 and report["final"]["n_classes"] == 6
    assert set(report["step0"]) == set(report["final"])  # the transfer's step 0, scored the same way
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["eval"]["final"] == report["final"] and metrics["eval"]["step0"] == report["step0"]
    # --resume on the finished run trains nothing and evaluates again, ending with the summary
    monkeypatch.setattr(deepi2i_evaluate, "ORACLE", TINY_ORACLE)
    before = os.path.getmtime(os.path.join(run, "final.pt"))
    assert main(["train", "--system", "deepi2i", "--out", run, "--resume", *TINY]) == 0
    out = capsys.readouterr().out
    assert os.path.getmtime(os.path.join(run, "final.pt")) == before
    assert "DeepI2I evaluation: 4 validation inputs x 6 classes" in out
    assert "class accuracy of translations (RC)" in out and "step 0" in out and "chance 0.167" in out
    assert f"pictures: {os.path.join(run, 'transfer', 'samples')}" in out


def test_no_eval_skips_the_evaluation(run, tmp_path):
    out = str(tmp_path / "run")
    folder = os.path.join(run, "biggan", "weights")
    assert main(["train", "--system", "deepi2i", "--out", out, "--stage", "transfer", "--set", f"biggan={folder}",
                 *TINY, "--no-eval"]) == 0
    assert os.path.isfile(os.path.join(out, "final.pt")) and not os.path.exists(os.path.join(out, "eval.json"))
    assert "eval" not in json.load(open(os.path.join(out, "metrics.json")))


def test_stage_biggan_writes_a_biggan_pytorch_folder_that_loads_strictly(run):
    folder = os.path.join(run, "biggan", "weights")
    assert sorted(os.listdir(folder)) == ["D.pth", "G.pth", "G_ema.pth", "state_dict.pth"]
    w = load_biggan(folder)  # the config comes from state_dict.pth, as for a real BigGAN-PyTorch run
    # the folder holds BigGAN's settings, not the adaptor fusion (the transfer takes that from its config)
    assert w.config == dataclasses.replace(PRESETS["cpu"](), fusion=TRANSFER_FUSION) and w.itr == 4
    ck = load_checkpoint(os.path.join(run, "biggan", "final.pt"))
    for k, v in ck.weights["G_ema"].items():
        assert torch.equal(v, w.G.state_dict()[k]), k
    sampler = zoo.load(os.path.join(run, "biggan", "final.pt"))
    assert isinstance(sampler, Sampler) and sampler.sample(3, n=2, seed=0).shape == (2, 3, 64, 64)


def test_transfer_starts_from_the_folder_and_gives_a_translator(run):
    m = json.loads(open(os.path.join(run, "metrics.json")).read())
    assert set(m["stages"]) == {"biggan", "transfer"} and m["stages"]["transfer"]["steps"] == 4
    phases = [h["losses"]["phase"] for h in m["stages"]["transfer"]["history"] if "losses" in h]
    assert phases == [1.0, 2.0, 2.0, 2.0]
    w = load_biggan(os.path.join(run, "biggan", "weights"))
    final = load_checkpoint(os.path.join(run, "final.pt"))
    assert final.system == "deepi2i" and final.stage == "transfer" and set(final.weights) == {"G", "D", "E", "A"}
    for k, v in w.D.state_dict().items():  # transfer mode: E is the BigGAN's D, frozen
        assert torch.equal(final.weights["E"][k], v), k
    tr = zoo.load(os.path.join(run, "final.pt"))
    assert isinstance(tr, Translator)
    assert tr.translate(torch.zeros(2, 3, 64, 64), 1, seed=0).shape == (2, 3, 64, 64)
    grids = sorted(os.listdir(os.path.join(run, "transfer", "samples")))
    assert grids == ["stagetransfer_00000000.png", "stagetransfer_00000002.png", "stagetransfer_00000004.png"]


def test_system_biggan_trains_stage_biggan_only(tmp_path, capsys):
    out = str(tmp_path / "b")
    assert main(["train", "--system", "biggan", "--out", out, *TINY, "--set", "biggan_kimg=0.008"]) == 0
    assert os.path.isfile(os.path.join(out, "biggan", "weights", "G_ema.pth"))
    assert not os.path.exists(os.path.join(out, "final.pt"))
    assert main(["train", "--system", "biggan", "--out", out, "--stage", "transfer", *TINY]) == 1
    assert "system biggan has one stage, 'biggan'" in capsys.readouterr().err


def test_nan_exits_3_and_keeps_the_last_checkpoint(run, tmp_path, monkeypatch, capsys):
    orig = Trainer._row

    def row(self, losses):
        r = orig(self, losses)
        return r * float("nan") if self.stage == "transfer" and self.step_idx + 1 == 3 else r

    monkeypatch.setattr(Trainer, "_row", row)
    out = str(tmp_path / "nan")
    folder = os.path.join(run, "biggan", "weights")
    rc = main(["train", "--system", "deepi2i", "--out", out, "--stage", "transfer", "--set", f"biggan={folder}",
               *TINY])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "non-finite loss" in err and "at step 3" in err and "stagetransfer-00000002.pt" in err
    steps = [s for s, _ in CheckpointManager(os.path.join(out, "transfer", "checkpoints"),
                                             prefix="stagetransfer").list()]
    assert steps == [2] and not os.path.exists(os.path.join(out, "final.pt"))


def test_bad_input_is_one_line(run, tmp_path, capsys):
    folder = os.path.join(run, "biggan", "weights")
    cases = [
        (["--set", f"biggan={tmp_path / 'nowhere'}"], "no such folder"),
        (["--set", f"biggan={folder}", "--set", "classes=style", "--set", "model.n_classes=120"],
         "the checkpoint has 6 classes, the config 120"),
        (["--set", f"biggan={folder}", "--resolution", "128"], "has 4 generator blocks (a 64 x 64 BigGAN)"),
        (["--set", "classes=style"], "classes 'style' has 120 classes on the built-in data but model.n_classes is 6"),
        (["--set", "step.mode=both"], "unknown DeepI2I step mode 'both'"),
        (["--set", "step.lr=1"], "unknown deepi2i step config key 'lr'"),
    ]
    for i, (extra, msg) in enumerate(cases):
        rc = main(["train", "--system", "deepi2i", "--out", str(tmp_path / f"r{i}"), "--stage", "transfer",
                   *TINY, *extra])
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("fastep: ")]
        assert rc == 1 and len(err) == 1 and msg in err[0], (extra, err)
        assert not (tmp_path / f"r{i}" / "data").exists()  # refused before any data is made


def test_evaluate_refuses_a_folder_without_a_translator_in_one_line(run, tmp_path, capsys):
    from fastep.zoo.deepi2i.evaluate import main as evaluate

    assert evaluate([str(tmp_path / "missing")]) == 1
    assert evaluate([os.path.join(run, "biggan")]) == 1  # the stand-in's folder: a sampler, no translator
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("deepi2i evaluate: error: ") for line in err), err
    assert "does not exist" in err[0] and "'biggan' checkpoint, not a DeepI2I translator" in err[1]
