import numpy as np
import pytest
import torch
from PIL import Image

from fastep.data.images import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image, split_ab


def _write(path, w=6, h=4, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    chans = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (h, w) if chans is None else (h, w, chans)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return arr


def test_list_images_sorted_recursive(tmp_path):
    for name in ["b.png", "a.JPG", "sub/c.png", ".hidden.png", "notes.txt", ".git/x.png"]:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".txt"):
            p.write_text("x")
        else:
            _write(p)
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a.JPG", "b.png", "sub/c.png"]
    flat = [p.name for p in list_images(tmp_path, recursive=False)]
    assert flat == ["a.JPG", "b.png"]
    assert ".png" in IMAGE_EXTENSIONS


def test_list_images_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        list_images(tmp_path / "nope")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_read_image_rgb(tmp_path, mode):
    arr = _write(tmp_path / "x.png", w=5, h=3, mode=mode)
    img = read_image(tmp_path / "x.png")
    assert img.dtype == torch.uint8 and img.shape == (3, 3, 5)
    if mode == "RGB":
        assert torch.equal(img, torch.from_numpy(arr).permute(2, 0, 1))
    if mode == "L":
        assert torch.equal(img[0], torch.from_numpy(arr)) and torch.equal(img[0], img[2])


def test_read_image_errors_name_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="broken.png") as info:
        read_image(bad)
    assert info.value.path == bad and isinstance(info.value, ValueError)
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_split_ab(tmp_path):
    img = torch.arange(3 * 2 * 8, dtype=torch.uint8).reshape(3, 2, 8)
    a, b = split_ab(img)
    assert torch.equal(a, img[..., :4]) and torch.equal(b, img[..., 4:])
    with pytest.raises(ImageReadError, match="odd.png"):
        split_ab(img[..., :7], path=tmp_path / "odd.png")
    with pytest.raises(TypeError, match="img"):
        split_ab(torch.zeros(2, 2))
