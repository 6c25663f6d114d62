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


# ---- allow_pickle=False, SIGKILL, torchrun ------------------------------------------------------
def test_output_loads_without_pickle(tmp_path):
    from fastep.mine import load_mined

    data = _make_folder(tmp_path / "d", n=6, ab=False)
    out = tmp_path / "o.npz"
    assert _run(data, out, "--k-near", "1", "--k-far", "2") == 0
    with np.load(out, allow_pickle=False) as z:  # every array, no pickle
        arrays = {k: z[k] for k in z.files}
    assert all(a.dtype != object for a in arrays.values())
    got = load_mined(out)
    assert got["provenance"]["npz_format"] == 1 and got["provenance"]["k_far"] == 2
    assert np.array_equal(got["near_idx"], arrays["near_idx"])
    bad = tmp_path / "pickled.npz"
    np.savez(bad, near_idx=np.zeros((2, 1)), provenance=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled objects"):
        load_mined(bad)


def _cli(*args, env=None, **kw):
    import os
    import subprocess
    import sys
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, *args], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _ref_run(data, out, *opts):
    """``fastep mine`` in a subprocess (as :func:`_cli` runs it), which must succeed."""
    p = _cli("-m", "fastep", "mine", str(data), "--out", str(out), *COMMON, *opts)
    outs, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return outs, err


def test_sigkill_mid_chunk_then_resume_is_byte_identical(tmp_path):
    import signal
    import time

    data = _make_folder(tmp_path / "ab", n=8)
    ref = tmp_path / "ref.npz"
    opts = ["--k-near", "2", "--k-far", "3", "--batch", "1", "--chunk", "1"]
    # the reference runs in a subprocess too: the same thread count as the killed and the resumed
    # runs (the pytest process may use another, and the VGG's float sums follow the thread count)
    _, err = _ref_run(data, ref, *opts)
    out = tmp_path / "k.npz"
    state = tmp_path / "k.npz.work" / "state.json"
    args = ["-m", "fastep", "mine", str(data), "--out", str(out), *COMMON, *opts]
    p = _cli(*args)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:  # kill while the third chunk is being computed
        if state.exists() and len(json.loads(state.read_text())["done"]) >= 2:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL and not out.exists()
    done = json.loads(state.read_text())["done"]
    assert 2 <= len(done) < 8
    p = _cli(*args)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert out.read_bytes() == ref.read_bytes()


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    data = _make_folder(tmp_path / "ab", n=11, bad=True)
    opts = ["--k-near", "2", "--k-far", "4", "--memory-budget", "0.001"]
    one = tmp_path / "one.npz"
    _ref_run(data, one, *opts)
    two = tmp_path / "two.npz"
    p = _cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fastep",
             "mine", str(data), "--out", str(two), *COMMON, *opts)
    outs, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "on 2 ranks" in outs
    assert two.read_bytes() == one.read_bytes()
    assert not (tmp_path / "two.npz.work").exists()


@pytest.mark.parametrize("differ", ["k_far", "data"])
def test_ranks_with_different_inputs_stop_with_one_line(tmp_path, differ):
    import shutil
    import socket

    data = _make_folder(tmp_path / "d", n=6, ab=False)
    other = tmp_path / "d_other"
    shutil.copytree(data, other)
    (other / "img_05.png").rename(other / "img_05_renamed.png")  # another image list
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        folder = other if differ == "data" and rank == 1 else data
        k_far = "3" if differ == "k_far" and rank == 1 else "2"
        env = dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(_cli("-m", "fastep", "mine", str(folder), "--out", str(tmp_path / "x.npz"), *COMMON,
                          "--k-near", "1", "--k-far", k_far, "--dist-timeout", "60", env=env))
    for p in procs:
        _, err = p.communicate(timeout=200)
        assert p.returncode == 2, err
        lines = [l for l in err.splitlines() if l.strip()]
        assert len(lines) == 1 and "rank(s) [1] see different inputs than rank 0" in lines[0], err
    assert not (tmp_path / "x.npz").exists()
