"""What a first run of ``fastep train`` shows and leaves behind: the closing summary (the
evaluation's own numbers, where the pictures are), labelled sample grids, a refused ``--out``
that holds a run, weights-only checkpoints except the newest, and ``fastep --version``."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY
from fastep.cli import main
from fastep.eval.evaluate import markdown_report
from fastep.train.checkpoint import Checkpoint, CheckpointManager, load_checkpoint
from fastep.train.outputs import labelled_grid
from fastep.train.run_folder import RunFolderError, prepare_run_folder


# ----------------------------------------------------------------------------- the summary

def test_main_job_ends_with_the_evaluation_and_where_the_pictures_are(finished_run):
    out, stdout, _ = finished_run
    report = json.loads((out / "eval.json").read_text())
    assert "reconstruction" in report and "diversity" in report and "oracle" in report  # what `fastep eval` computes
    assert f"summary of {out}" in stdout
    # the evaluation's own table (every metric it returns), not a copy of a few numbers
    table = markdown_report([report], names=[out.name])
    assert table in stdout
    assert f"{report['reconstruction']['psnr']:.4g}" in stdout
    from fastep.eval.oracle import summary_lines

    assert all(line in stdout for line in summary_lines(report["oracle"]))  # the oracle's headline lines
    pictures = [ln.split()[-1] for ln in stdout.splitlines() if ln.strip().endswith(".png")]
    assert len(pictures) == 3 and all(os.path.isfile(p) for p in pictures)  # stage 2, stage 3, mapper
    assert pictures[-1] == str(out / "mapper" / "samples.png")
    assert str(out / "final.pt") in stdout


# ----------------------------------------------------------------------------- grids

def _label_strip_rows(path, n_rows):
    """Per row band of the label strip: how many dark (text) pixels it has."""
    img = np.asarray(Image.open(path).convert("L")).astype(np.float32) / 255
    white_cols = np.where((img > 0.99).all(axis=0))[0]
    # the strip ends where the first image column starts: find the widest white gap from the left
    strip_w = next(c for c in range(img.shape[1]) if c not in set(white_cols)
                   and (img[:, c] < 0.99).sum() > img.shape[0] // 2)
    strip = img[:, :strip_w]
    bands = np.array_split(strip, n_rows, axis=0)
    return [int((b < 0.5).sum()) for b in bands], strip_w


@pytest.mark.parametrize("grid", ["stage3", "mapper"])
def test_sample_grids_name_their_rows(finished_run, grid):
    out = finished_run[0]
    path = sorted((out / "stage3" / "samples").glob("*.png"))[-1] if grid == "stage3" else out / "mapper" / "samples.png"
    dark, strip_w = _label_strip_rows(path, 5)
    assert strip_w > 20 and all(d > 5 for d in dark), dark  # text in every row band
    w = Image.open(path).size[0]
    assert w - strip_w == 8 * 34  # then 8 columns of 32 px images and 2 px padding (make_grid)


def test_labelled_grid_draws_each_label():
    rows = [torch.rand(3, 3, 16, 16) for _ in range(3)]
    g = labelled_grid(rows, ["input", "target", "input"])
    cell = 18
    strip = g[:, :, : g.shape[2] - (3 * cell + 2)]
    bands = [strip[:, 1 + i * cell:1 + (i + 1) * cell] for i in range(3)]
    assert torch.equal(bands[0], bands[2]) and not torch.equal(bands[0], bands[1])  # same text, same pixels
    assert torch.equal(g[:, :, strip.shape[2]:], __import__("torchvision").utils.make_grid(
        torch.cat(rows), nrow=3, padding=2, pad_value=1.0))  # the images themselves are untouched
    with pytest.raises(ValueError, match="3 rows but 2 labels"):
        labelled_grid(rows, ["a", "b"])


# ----------------------------------------------------------------------------- --out

def test_out_holding_a_finished_run_is_refused_in_one_line(run_copy, capsys):
    before = sorted(p.name for p in run_copy.rglob("*"))
    assert main(["train", "--out", str(run_copy), *TINY]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already holds a finished run" in err and "--resume" in err and "--overwrite" in err
    assert sorted(p.name for p in run_copy.rglob("*")) == before  # nothing touched


def test_out_holding_a_partial_run_is_refused(tmp_path):
    out = tmp_path / "run"
    (out / "stage1").mkdir(parents=True)
    (out / "metrics.json").write_text('{"interrupted": "mining"}')  # what an interrupted first stage leaves
    with pytest.raises(RunFolderError, match="already holds a run of stages 1, 2, 3, mapper"):
        prepare_run_folder(out, ("1", "2", "3", "mapper"))
    # the next stage in the folder of the previous one is the documented workflow
    (out / "metrics.json").unlink()
    (out / "stage1" / "final.pt").write_bytes(b"x")
    prepare_run_folder(out, ("2",))
    with pytest.raises(RunFolderError):
        prepare_run_folder(out, ("1",))
    # a folder with only the built-in data cache is not a run
    prepare_run_folder(tmp_path / "fresh", ("1", "2", "3", "mapper"))


def test_resume_on_a_missing_folder_says_so(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "nothere"), "--resume", *TINY]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"fastep train: --resume: {tmp_path / 'nothere'} does not exist, so there is no run to resume; "
                   "check --out, or drop --resume to start a new run there")
    assert not (tmp_path / "nothere").exists()
    with pytest.raises(RunFolderError, match="contradict"):
        prepare_run_folder(tmp_path, ("1",), resume=True, overwrite=True)


def test_overwrite_replaces_only_the_stages_outputs(run_copy, capsys):
    (run_copy / "notes.txt").write_text("mine")
    old = load_checkpoint(run_copy / "final.pt").extras["mapper_metrics"]["train_s"]
    assert main(["train", "--stage", "mapper", "--out", str(run_copy), "--overwrite", *TINY]) == 0
    assert (run_copy / "notes.txt").read_text() == "mine" and (run_copy / "data").is_dir()
    assert (run_copy / "stage3" / "final.pt").is_file()  # not an output of the mapper stage: kept
    assert load_checkpoint(run_copy / "final.pt").extras["mapper_metrics"]["train_s"] != old  # made again
    prepare_run_folder(run_copy, ("1", "2", "3", "mapper"), overwrite=True)
    assert sorted(p.name for p in run_copy.iterdir()) == ["data", "notes.txt"]


# ----------------------------------------------------------------------------- disk use

def _weights_bytes(ck: Checkpoint) -> int:
    return sum(t.numel() * t.element_size() for sd in ck.weights.values() if sd for t in sd.values())


def test_finished_run_keeps_weights_only_checkpoints(finished_run):
    out = finished_run[0]
    files = sorted(p for p in out.rglob("*.pt") if "data" not in p.relative_to(out).parts)  # not the oracle cache
    assert len(files) >= 6
    weights = 0
    for p in files:
        ck = load_checkpoint(p)
        assert not ck.resumable, p  # a finished stage is never resumed: no optimizer state
        assert os.path.getsize(p) < 1.1 * _weights_bytes(ck) + 200_000, p
        weights += _weights_bytes(ck)
    # everything else (data, grids, logs, JSON) is small next to the weights
    total = sum(os.path.getsize(p) for p in out.rglob("*") if p.is_file())
    assert total < 1.1 * weights + 3e6, (total, weights)


def test_only_the_newest_checkpoint_keeps_the_resumable_state(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=3, prefix="s")
    w = {"G": {"w": torch.randn(64, 64)}}
    for step in (1, 2, 3, 4):
        mgr.save(Checkpoint(system="step", stage="2", step=step, weights=w,
                            train_state={"opt": {"m": torch.randn(64, 64), "v": torch.randn(64, 64)}},
                            rng={"torch": torch.get_rng_state()}), step)
        kept = mgr.list()
        assert [s for s, _ in kept] == list(range(max(1, step - 2), step + 1))
        states = [load_checkpoint(p) for _, p in kept]
        assert states[-1].resumable and states[-1].rng is not None
        assert not any(c.resumable or c.rng is not None for c in states[:-1])
        assert all(torch.equal(c.weights["G"]["w"], w["G"]["w"]) for c in states)
    sizes = [os.path.getsize(p) for _, p in mgr.list()]
    assert sizes[-1] > 2.5 * sizes[0]  # weights + 2 optimizer moments against weights alone
    assert mgr.latest(warn=None)[1].step == 4


# ----------------------------------------------------------------------------- --version

def test_version(capsys):
    from fastep import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"fastep {__version__}"
