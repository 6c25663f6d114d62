"""``fastep eval`` and ``fastep sample``: every user error is one line on stderr and exit status 1
(no traceback); AB pairs are read the way training reads them; square images in an AB folder
are refused by ``fastep train --data`` instead of being split in halves."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastep.cli import main
from fastep.eval.sample import load_image_file


@pytest.fixture(scope="module")
def files(finished_run, tmp_path_factory):
    out = finished_run[0]
    d = tmp_path_factory.mktemp("err")
    torch.save({"a": 1}, d / "foreign.pt")
    (d / "text.pt").write_text("not a checkpoint")
    (d / "empty").mkdir()
    data = next((out / "data").iterdir())
    return {"run": out, "data": data, "img": data / "val" / "00000.png", "dir": d}


def _one_line_error(capsys, argv, prog):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"fastep {prog}: error: "), err
    return err


EVAL_CASES = {
    "missing checkpoint": (lambda f: [str(f["dir"] / "nope.pt"), "--data", str(f["data"])], "does not exist"),
    "foreign checkpoint": (lambda f: [str(f["dir"] / "foreign.pt"), "--data", str(f["data"])],
                           "is not a fastep checkpoint"),
    "torn checkpoint": (lambda f: [str(f["dir"] / "text.pt"), "--data", str(f["data"])], "text.pt' is"),
    "missing data folder": (lambda f: [str(f["run"] / "final.pt"), "--data", str(f["dir"] / "nodata")],
                            "is not a folder"),
    "data without a val split": (lambda f: [str(f["run"] / "final.pt"), "--data", str(f["dir"] / "empty")],
                                 "no 'val' split"),
    "missing weights file": (lambda f: [str(f["run"] / "final.pt"), "--data", str(f["data"]), "--lpips-weights",
                                        str(f["dir"] / "alex.pth")], "no such file"),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_eval_user_errors_are_one_line(files, capsys, case):
    args, needle = EVAL_CASES[case]
    assert needle in _one_line_error(capsys, ["eval", *args(files), "--no-progress"], "eval")


def test_eval_missing_imagenet_weights_names_the_flags(files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("FASTEP_WEIGHTS_DIR", str(tmp_path))
    err = _one_line_error(capsys, ["eval", str(files["run"] / "final.pt"), "--data", str(files["data"]),
                                   "--lpips-weights", "imagenet", "--no-progress"], "eval")
    assert "ImageNet weights for alexnet not found" in err and "fastep eval --lpips-weights" in err
    assert "backbone_weights=" in err


def test_eval_works_offline_by_default(files, capsys, monkeypatch, tmp_path):
    """--lpips-weights auto: without ImageNet weights on disk, a seeded random backbone and a note."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("FASTEP_WEIGHTS_DIR", str(tmp_path))
    rc = main(["eval", str(files["run"] / "final.pt"), "--data", str(files["data"]), "--out",
               str(tmp_path / "e.json"), "--n-inputs", "2", "--n-styles", "2", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "LPIPS used a seeded random backbone" in cap.err and (tmp_path / "e.json").is_file()


SAMPLE_CASES = {
    "missing checkpoint": (lambda f: [str(f["dir"] / "nope.pt"), "--input", str(f["img"])], "does not exist"),
    "foreign checkpoint": (lambda f: [str(f["dir"] / "foreign.pt"), "--input", str(f["img"])],
                           "is not a fastep checkpoint"),
    "stage-1 checkpoint": (lambda f: [str(f["run"] / "stage1" / "final.pt"), "--input", str(f["img"]),
                                      "--styles", str(f["img"])], "from stage 1"),
    "no mapper to sample": (lambda f: [str(f["run"] / "stage3" / "final.pt"), "--input", str(f["img"])],
                            "no mapper and no z_stats"),
    "missing input image": (lambda f: [str(f["run"] / "final.pt"), "--input", str(f["dir"] / "a.png")],
                            "--input: "),
    "missing style image": (lambda f: [str(f["run"] / "final.pt"), "--input", str(f["img"]), "--styles",
                                       str(f["dir"] / "b.png")], "--styles: "),
    "empty input folder": (lambda f: [str(f["run"] / "final.pt"), "--input", str(f["dir"] / "empty")],
                           "holds no image files"),
    "not an image": (lambda f: [str(f["run"] / "final.pt"), "--input", str(f["dir"] / "text.pt")],
                     "cannot decode image"),
    "missing interpolation end": (lambda f: [str(f["run"] / "final.pt"), "--input", str(f["img"]),
                                             "--interpolate", str(f["img"]), str(f["dir"] / "c.png")],
                                  "--interpolate: "),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_sample_user_errors_are_one_line(files, capsys, case, tmp_path):
    args, needle = SAMPLE_CASES[case]
    out = tmp_path / "grid.png"
    assert needle in _one_line_error(capsys, ["sample", *args(files), "--out", str(out)], "sample")
    assert not out.exists()


def test_sample_reads_ab_pairs_as_training_does(tmp_path):
    a = np.zeros((32, 32, 3), np.uint8)
    b = np.full((32, 32, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([a, b], axis=1)).save(tmp_path / "ab.png")
    Image.fromarray(np.concatenate([a, b], axis=0)).save(tmp_path / "tall.png")
    assert load_image_file(tmp_path / "ab.png", 16).max() == -1.0  # an input: the A half
    assert load_image_file(tmp_path / "ab.png", 16, ab_side="B").min() == 1.0  # a style: the B half
    assert load_image_file(tmp_path / "ab.png", 16, "full").mean().abs() < 0.1  # --whole: both halves
    whole = load_image_file(tmp_path / "tall.png", 16)  # not twice as wide as high: read whole
    assert whole[:, :7].max() == -1.0 and whole[:, 9:].min() == 1.0  # top A, bottom B: both kept


def test_sample_takes_folders_and_ab_files(files, tmp_path, capsys):
    img = np.asarray(Image.open(files["img"]))
    Image.fromarray(np.concatenate([img, img], axis=1)).save(tmp_path / "ab.png")
    out = tmp_path / "grid.png"
    rc = main(["sample", str(files["run"] / "final.pt"), "--input", str(files["data"] / "val"), "--styles",
               str(tmp_path / "ab.png"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert out.is_file()


def test_train_refuses_square_images_in_an_ab_folder(tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / "sq" / split).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "sq" / split / f"{i}.png")
    rc = main(["train", "--stage", "1", "--data", str(tmp_path / "sq"), "--out", str(tmp_path / "run"),
               "--resolution", "32", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1
    assert err.startswith("fastep train: error: ") and "32 x 32" in err and "not pix2pix AB pairs" in err
    assert "A/ and B/ folders" in err


def test_ab_folder_with_some_square_images_skips_them_by_name(tmp_path):
    from fastep.data import BadImageWarning, PairedImageDataset

    (tmp_path / "train").mkdir()
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / "train" / "pair.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "train" / "square.png")
    with pytest.warns(BadImageWarning, match="square.png: 32 x 32 image is not a pix2pix AB pair"):
        ds = PairedImageDataset(tmp_path, split="train", resolution=16)
    assert len(ds) == 1
