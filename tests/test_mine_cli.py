"""`fastep mine` end to end on tiny generated folders (random VGG weights, 32 x 32)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastep.cli import main

COMMON = ["--weights", "random", "--resolution", "32", "--device", "cpu", "--batch", "3",
          "--chunk", "3", "--no-progress"]


def _make_folder(root, n=8, ab=True, bad=False, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # a few "palettes" so that neighbours are meaningful
        base = rng.integers(0, 256, size=3) if i % 3 else np.array([30, 200, 90])
        arr = np.clip(base + rng.normal(0, 40, size=(24, 48 if ab else 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"img_{i:02d}.png")
    if bad:
        (root / "corrupt.png").write_bytes(b"definitely not a png")
        Image.fromarray(np.zeros((24, 47, 3), np.uint8)).save(root / "odd_width.png")
    return root


def _run(data, out, *extra):
    return main(["mine", str(data), "--out", str(out), *COMMON, *extra])


def test_mine_end_to_end_and_resume(tmp_path, capsys):
    data = _make_folder(tmp_path / "ab", n=8, bad=True)
    out_a = tmp_path / "a.npz"
    assert _run(data, out_a, "--k-near", "2", "--k-far", "3") == 0
    err = capsys.readouterr().err
    assert "corrupt.png" in err and "odd_width.png" in err  # reported by name, skipped
    z = np.load(out_a)
    n = 8
    assert z["near_idx"].shape == (n, 2) and z["far_idx"].shape == (n, 3)
    assert z["triplets"].shape == (n, 3)
    for a, p, q in z["triplets"]:
        assert p in z["near_idx"][a] and q in z["far_idx"][a]
    assert list(z["paths"]) == [f"img_{i:02d}.png" for i in range(n)]
    assert len(z["skipped"]) == 2
    prov = json.loads(str(z["provenance"]))
    assert prov["weights"] == "random" and prov["layers"] == "vgg16" and prov["format"] == "ab"
    assert len(prov["image_list_sha256"]) == 64 and prov["fastep_version"]
    assert not (tmp_path / "a.npz.work").exists()  # cleaned up after success

    # the neighbours are the exact ones of the Gram vectors
    from fastep.features import style_features
    from fastep.mine import _load_image
    from fastep.ops.reference import mine_neighbours_reference
    imgs = torch.stack([_load_image(data / p, "ab", 32) for p in z["paths"]])
    v = style_features(imgs, "vgg16", output="vectors", weights="random", seed=0)
    ni, _, fi, _ = mine_neighbours_reference(v.double(), 2, 3)
    assert np.array_equal(ni.numpy(), z["near_idx"]) and np.array_equal(fi.numpy(), z["far_idx"])

    # interrupted after one chunk, then resumed: byte-identical output
    out_b = tmp_path / "b.npz"
    assert _run(data, out_b, "--k-near", "2", "--k-far", "3", "--stop-after-chunks", "1") == 3
    assert not out_b.exists()
    state = json.loads((tmp_path / "b.npz.work" / "state.json").read_text())
    assert state["done"] == [0]
    assert _run(data, out_b, "--k-near", "2", "--k-far", "3") == 0
    assert out_b.read_bytes() == out_a.read_bytes()


def test_strict_and_errors(tmp_path, capsys):
    data = _make_folder(tmp_path / "d", n=5, ab=False, bad=True)
    assert _run(data, tmp_path / "s.npz", "--k-near", "1", "--k-far", "1", "--strict",
                "--format", "plain") == 2
    assert "corrupt.png" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(empty, tmp_path / "e.npz") == 2
    assert "no images" in capsys.readouterr().err
    small = _make_folder(tmp_path / "small", n=4, ab=False)
    assert _run(small, tmp_path / "k.npz") == 2  # N=4 <= k_far=13
    assert "k_far" in capsys.readouterr().err


def test_plain_folder_subset(tmp_path):
    data = _make_folder(tmp_path / "plain", n=9, ab=False)
    out = tmp_path / "p.npz"
    assert _run(data, out, "--k-near", "1", "--k-far", "2", "--subset", "6") == 0
    z = np.load(out)
    assert z["near_idx"].shape == (6, 1) and len(z["paths"]) == 6
    assert json.loads(str(z["provenance"]))["format"] == "plain"
