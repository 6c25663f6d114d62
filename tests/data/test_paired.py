"""PairedImageDataset (AB files, A/ + B/ folders, bad files by name) and the loaders."""
import itertools
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastep.data import (BadImageWarning, ImageReadError, InfiniteLoader, PairedImageDataset, find_layout,
                         make_loader)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tests: see tests/conftest.py


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rand(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ab_folder(root, split, n, h=20, w=20, same=False):
    for i in range(n):
        a = _rand(h, w, i)
        b = a if same else _rand(h, w, 1000 + i)
        _save(root / split / f"img{i:02d}.png", np.concatenate([a, b], 1))


def _collect_warnings(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in rec if issubclass(w.category, BadImageWarning)]


def test_ab_layout_items_range_and_alignment(tmp_path):
    _ab_folder(tmp_path, "train", 5, same=True)
    ds = PairedImageDataset(tmp_path, "train", resolution=16, load_size=20)
    assert ds.layout == "ab" and len(ds) == 5 and ds.crop and ds.flip
    for i in range(5):
        for _ in range(3):
            it = ds[i]
            assert it["A"].shape == it["B"].shape == (3, 16, 16) and it["A"].dtype == torch.float32
            assert it["A"].min() >= -1 and it["A"].max() <= 1
            assert torch.equal(it["A"], it["B"])  # same crop and flip on both halves
            assert it["index"] == i and it["path"].endswith(f"img{i:02d}.png")
    val = PairedImageDataset(tmp_path, "train", resolution=20, crop=False, flip=False)
    a = torch.from_numpy(_rand(20, 20, 0)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(val[0]["A"], a)  # exact pixels, no resize at native size
    assert val[0]["B"].shape == (3, 20, 20)
    small = PairedImageDataset(tmp_path, "train", resolution=8, crop=False, flip=False)
    assert small[1]["B"].shape == (3, 8, 8)
    imgs, idx = small.stack_images("B")
    assert imgs.shape == (5, 3, 8, 8) and imgs.dtype == torch.uint8 and idx.tolist() == [0, 1, 2, 3, 4]
    rev = PairedImageDataset(tmp_path, "train", 20, crop=False, flip=False, direction="BtoA")
    assert torch.equal(rev[0]["A"], val[0]["B"])


def test_folder_layouts_and_name_mismatch(tmp_path):
    for layout in ("split_first", "ab_first"):
        root = tmp_path / layout
        for i in range(4):
            sub = (lambda s: root / "train" / s) if layout == "split_first" else (lambda s: root / s / "train")
            _save(sub("A") / f"x{i}.png", _rand(12, 12, i))
            _save(sub("B") / f"x{i}.jpg" if i == 2 else sub("B") / f"x{i}.png", _rand(12, 12, 50 + i))
        kind, _, _ = find_layout(root, "train")
        assert kind == "folders"
        ds = PairedImageDataset(root, "train", 12, crop=False, flip=False)
        assert len(ds) == 4 and ds.layout == "folders"  # x2.png pairs with x2.jpg
        assert torch.allclose(ds[1]["A"], torch.from_numpy(_rand(12, 12, 1)).permute(2, 0, 1).float() / 127.5 - 1)

    root = tmp_path / "mismatch"
    for n in ("a", "b", "c"):
        _save(root / "train" / "A" / f"{n}.png", _rand(8, 8, 1))
    for n in ("a", "b", "d"):
        _save(root / "train" / "B" / f"{n}.png", _rand(8, 8, 2))
    ds, warns = _collect_warnings(lambda: PairedImageDataset(root, "train", 8))
    assert len(ds) == 2 and len(warns) == 1
    msg = str(warns[0].message)
    assert "c.png" in msg and "d.png" in msg and "2 bad file" in msg
    with pytest.raises(ImageReadError, match=r"c\.png|d\.png"):
        PairedImageDataset(root, "train", 8, strict=True)


def test_corrupt_and_odd_files_reported_by_name(tmp_path):
    _ab_folder(tmp_path, "train", 4)
    (tmp_path / "train" / "garbage.png").write_bytes(b"this is not a png")
    _save(tmp_path / "train" / "odd.png", _rand(10, 21, 0))
    ds, warns = _collect_warnings(lambda: PairedImageDataset(tmp_path, "train", 10))
    assert len(ds) == 4 and len(warns) == 1  # one summary warning
    msg = str(warns[0].message)
    assert "garbage.png" in msg and "odd.png" in msg and "odd" in msg
    assert set(ds.bad) == {str(tmp_path / "train" / "garbage.png"), str(tmp_path / "train" / "odd.png")}
    with pytest.raises(ImageReadError, match="garbage.png"):
        PairedImageDataset(tmp_path, "train", 10, strict=True)


def test_truncated_file_found_on_read(tmp_path):
    _ab_folder(tmp_path, "val", 3, h=32, w=32)
    p = tmp_path / "val" / "img01.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    ds = PairedImageDataset(tmp_path, "val", 16, crop=False, flip=False)  # header check passes
    assert len(ds) == 3 and ds.crop is False and ds.flip is False
    it, warns = _collect_warnings(lambda: ds[1])
    assert it["index"] == 2 and "img02" in it["path"]  # the next good pair
    assert len(warns) == 1 and "img01.png" in str(warns[0].message)
    _, again = _collect_warnings(lambda: ds[1])
    assert not again  # warned once per file
    assert str(p) in ds.bad
    strict = PairedImageDataset(tmp_path, "val", 16, strict=True)
    with pytest.raises(ImageReadError, match="img01.png"):
        strict[1]
    imgs, idx = _collect_warnings(lambda: ds.stack_images("B"))[0]
    assert idx.tolist() == [0, 2] and imgs.shape == (2, 3, 16, 16)


def test_empty_and_missing_folders_are_clear_errors(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        PairedImageDataset(tmp_path, "train", 8)
    with pytest.raises(FileNotFoundError, match="'val'"):
        PairedImageDataset(tmp_path, "val", 8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PairedImageDataset(tmp_path / "nope", "train", 8)
    (tmp_path / "train" / "bad.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="bad.png"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PairedImageDataset(tmp_path, "train", 8)
    with pytest.raises(ValueError, match="resolution"):
        PairedImageDataset(tmp_path, "train", 0)
    with pytest.raises(ValueError, match="direction"):
        PairedImageDataset(tmp_path, "train", 8, direction="up")


def test_splitless_folder_is_train(tmp_path):
    _save(tmp_path / "A" / "p.png", _rand(8, 8, 0))
    _save(tmp_path / "B" / "p.png", _rand(8, 8, 1))
    assert len(PairedImageDataset(tmp_path, "train", 8)) == 1
    assert len(PairedImageDataset(tmp_path, None, 8)) == 1
    with pytest.raises(FileNotFoundError, match="split"):
        PairedImageDataset(tmp_path, "val", 8)


# --------------------------------------------------------------------------- loaders


class _Range(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(i)


def test_loader_seeded_order_and_epochs():
    ds = _Range(23)
    l1 = make_loader(ds, 5, shuffle=True, seed=3)
    l2 = make_loader(ds, 5, shuffle=True, seed=3)
    b1 = [b.tolist() for b in itertools.islice(iter(InfiniteLoader(l1)), 12)]
    b2 = [b.tolist() for b in itertools.islice(iter(InfiniteLoader(l2)), 12)]
    assert b1 == b2 and len(l1) == 4  # drop_last
    assert all(len(b) == 5 for b in b1)
    assert len(set(sum(b1[:4], []))) == 20  # no repeats within an epoch
    assert b1[:4] != b1[4:8]  # a new order every epoch
    l3 = make_loader(ds, 5, shuffle=True, seed=4)
    assert [b.tolist() for b in itertools.islice(iter(InfiniteLoader(l3)), 4)] != b1[:4]
    seq = make_loader(ds, 10, shuffle=False, drop_last=False)
    assert [b.tolist() for b in seq][-1] == [20, 21, 22]
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(_Range(3), 5)


def test_infinite_loader_resumes_mid_epoch():
    ds = _Range(17)
    full = InfiniteLoader(make_loader(ds, 4, seed=1))
    ref = [b.tolist() for b in itertools.islice(iter(full), 11)]
    first = InfiniteLoader(make_loader(ds, 4, seed=1))
    it = iter(first)
    got = [next(it).tolist() for _ in range(6)]
    state = first.state_dict()
    assert state == {"epoch": 1, "batch": 2}
    resumed = InfiniteLoader(make_loader(ds, 4, seed=1))
    resumed.load_state_dict(state)
    got += [b.tolist() for b in itertools.islice(iter(resumed), 5)]
    assert got == ref


def test_loader_workers_and_distributed_shards(tmp_path):
    ds = _Range(20)
    parts = []
    for rank in range(2):
        loader = make_loader(ds, 2, shuffle=True, seed=0, distributed=True, num_replicas=2, rank=rank)
        loader.sampler.set_epoch(0)
        parts.append(sorted(sum([b.tolist() for b in loader], [])))
    assert len(parts[0]) == len(parts[1]) == 10 and sorted(parts[0] + parts[1]) == list(range(20))
    with pytest.raises(RuntimeError, match="distributed"):
        make_loader(ds, 2, distributed=True)
    _ab_folder(tmp_path, "train", 6)
    pds = PairedImageDataset(tmp_path, "train", 16)
    loader = make_loader(pds, 3, workers=1, seed=0)
    batches = list(itertools.islice(iter(InfiniteLoader(loader)), 3))
    assert batches[0]["A"].shape == (3, 3, 16, 16) and len(batches[0]["path"]) == 3


def test_preload_gives_the_same_items(tmp_path):
    _ab_folder(tmp_path, "val", 4, h=24, w=24)
    lazy = PairedImageDataset(tmp_path, "val", 16, crop=False, flip=False)
    eager = PairedImageDataset(tmp_path, "val", 16, crop=False, flip=False, preload=True, io_threads=2)
    for i in range(4):
        assert torch.equal(lazy[i]["A"], eager[i]["A"]) and torch.equal(lazy[i]["B"], eager[i]["B"])
    aug = PairedImageDataset(tmp_path, "val", 16, crop=True, flip=True, preload=True)
    assert aug.load_size == 18 and aug[0]["B"].shape == (3, 16, 16)
