"""Every command that reads a checkpoint refuses one that would run code, and a file that is not a
fastep checkpoint, with one line naming the file (never a traceback, never the code run)."""
import pickle
from pathlib import Path

import pytest
import torch

from fastep.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0"


class _Evil:
    """Unpickling this with plain pickle creates the file ``target`` (what an attacker's code could do)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture
def evil(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    ckpt = torch.load(FIXTURES / "final.pt", weights_only=False)  # a real checkpoint, plus the payload
    ckpt["metrics"] = {"note": _Evil(target)}
    torch.save(ckpt, path)
    with pytest.raises(pickle.UnpicklingError):  # proof that torch refuses it by default too
        torch.load(path)
    assert not target.exists()
    return path, target


def _image(tmp_path):
    from PIL import Image

    p = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (120, 30, 200)).save(p)
    return p


def _commands(ckpt, tmp_path):
    img = _image(tmp_path)
    return {
        "eval": ["eval", str(ckpt), "--data", str(FIXTURES / "data"), "--lpips-weights", "random",
                 "--out", str(tmp_path / "eval.json"), "--device", "cpu"],
        "sample": ["sample", str(ckpt), "--input", str(img), "--out", str(tmp_path / "s.png")],
        "train --init": ["train", "--stage", "3", "--init", str(ckpt), "--data", str(FIXTURES / "data"),
                         "--out", str(tmp_path / "run"), "--resolution", "32", "--batch", "2", "--kimg", "0.004",
                         "--device", "cpu", "--no-compile", "--no-amp", "--no-progress", "--vgg-weights", "random",
                         "--width", "4,4,4"],
    }


def _one_line_error(capsys, command, path, *words):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = [ln for ln in err.strip().splitlines() if ln.startswith(f"fastep {command.split()[0]}: ")]
    assert len(line) == 1, err
    assert str(path) in line[0], line[0]
    for w in words:
        assert w in line[0], line[0]


@pytest.mark.parametrize("command", ["eval", "sample", "train --init"])
def test_code_in_a_checkpoint_never_runs(command, evil, tmp_path, capsys, one_thread):
    path, target = evil
    rc = main(_commands(path, tmp_path)[command])
    assert rc == 1
    assert not target.exists(), "the checkpoint's code ran"
    _one_line_error(capsys, command, path, "not a fastep checkpoint", "refused")


@pytest.mark.parametrize("command", ["eval", "sample", "train --init"])
def test_a_file_that_is_not_a_checkpoint_is_named(command, tmp_path, capsys, one_thread):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, path)
    assert main(_commands(path, tmp_path)[command]) == 1
    _one_line_error(capsys, command, path, "not a fastep checkpoint", "expected")


def test_zoo_load_refuses_too(evil):
    from fastep import zoo
    from fastep.train.checkpoint import CheckpointError

    path, target = evil
    with pytest.raises(CheckpointError, match="not a fastep checkpoint.*refused"):
        zoo.load(path)
    assert not target.exists()
