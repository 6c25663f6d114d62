"""BridgeGAN labels: attribute spaces, group-flip targets, the built-in set's 15 one-hot
attributes, and the CelebA-format reader on a small generated folder."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastep.data.builtin import BuiltinStyles, make_builtin_dataset
from fastep.data.paired import BadImageWarning
from fastep.zoo.bridgegan.attributes import (AttributeSpace, BuiltinAttributes, CelebAAttributes, LabelError,
                                             builtin_space, read_celeba_attributes)

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(err):
    assert "\n" not in str(err.value), str(err.value)


def test_builtin_space_layout():
    s = builtin_space()
    assert len(s) == 15
    assert {g: len(v) for g, v in s.groups.items()} == {"palette": 6, "gradient": 4, "texture": 5}
    assert s.one_hot == {"palette", "gradient", "texture"}
    y = s.encode({"palette": "pastel", "gradient": "diagonal", "texture": "flat"})
    assert y.sum() == 3 and y[s.index("pastel")] == 1 and y[s.index("diagonal")] == 1
    assert {g: int(v) for g, v in s.decode(y).items()} == {"palette": 1, "gradient": 1, "texture": 0}


def _valid_onehot_rows(space, y):
    return all(int(y[:, space.slice(g)].sum(1).eq(1).all()) for g in space.groups)


def test_targets_flip_exactly_one_group_to_a_new_value():
    s = builtin_space()
    gen = torch.Generator().manual_seed(0)
    idx = {g: torch.randint(len(v), (400,), generator=gen) for g, v in s.groups.items()}
    y_s = torch.cat([torch.nn.functional.one_hot(idx[g], len(s.groups[g])) for g in s.groups], 1).float()
    y_t = s.sample_targets(y_s, generator=gen)
    s.validate(y_t)
    assert _valid_onehot_rows(s, y_t)
    delta = y_t - y_s
    changed = torch.stack([delta[:, s.slice(g)].abs().sum(1) > 0 for g in s.groups], 1)
    assert changed.sum(1).eq(1).all()  # one group per row
    assert delta.sum(1).eq(0).all() and delta.abs().sum(1).eq(2).all()  # +1 new value, -1 old
    # every group and every new value is reached
    assert changed.float().mean(0).min() > 0.2
    for g in s.groups:
        rows = changed[:, list(s.groups).index(g)]
        assert set(s.decode(y_t[rows])[g].tolist()) == set(range(len(s.groups[g])))
    two = s.sample_targets(y_s, n_groups=2, generator=gen)
    ch2 = torch.stack([(two - y_s)[:, s.slice(g)].abs().sum(1) > 0 for g in s.groups], 1)
    assert ch2.sum(1).eq(2).all() and _valid_onehot_rows(s, two)


def test_at_most_one_groups_and_binary_attributes():
    s = AttributeSpace({"hair": ("Black", "Blond", "Brown"), "Male": ("Male",), "Young": ("Young",)})
    assert len(s) == 5
    y_s = torch.tensor([[0., 0., 0., 1., 0.], [0., 1., 0., 0., 1.]]).repeat(200, 1)
    y_t = s.sample_targets(y_s, generator=torch.Generator().manual_seed(1))
    s.validate(y_t)
    delta = y_t - y_s
    d1 = delta.abs().sum(1)
    assert ((d1 >= 1) & (d1 <= 2)).all()
    hair = y_t[:, :3].sum(1)
    assert hair.le(1).all() and (hair == 0).any() and (hair == 1).any()  # "no hair colour" is a state
    binary_rows = delta[:, :3].abs().sum(1) == 0
    assert delta[binary_rows, 3:].abs().sum(1).eq(1).all()  # a binary attribute flips


def test_bad_labels_and_edits_are_one_line_errors():
    s = builtin_space()
    y = s.encode({"palette": "vivid", "gradient": "vertical", "texture": "dots"})
    bad = y.clone()
    bad[s.index("pastel")] = 1
    with pytest.raises(LabelError, match="2 values of group 'palette' on \\(vivid, pastel\\)") as e:
        s.validate(bad)
    _one_line(e)
    with pytest.raises(LabelError, match="exactly one") as e:
        s.validate(torch.zeros(15))
    with pytest.raises(LabelError, match="unknown value 'neon' of group 'palette'") as e:
        s.parse_edits("palette=neon")
    _one_line(e)
    with pytest.raises(LabelError, match="unknown attribute group 'colour'") as e:
        s.parse_edits("colour=pastel")
    with pytest.raises(LabelError, match="two values of group 'palette'") as e:
        s.parse_edits("palette=pastel,palette=dark")
    _one_line(e)
    with pytest.raises(LabelError, match="two values of group 'texture'"):
        s.parse_edits("texture=dots stripes")
    with pytest.raises(LabelError, match="unknown attribute 'shiny'"):
        s.parse_edits("shiny")
    with pytest.raises(LabelError, match="one-hot"):
        s.parse_edits("palette=none")
    assert s.parse_edits("palette=pastel texture=dots") == {"palette": "pastel", "texture": "dots"}
    assert s.parse_edits("stripes") == {"texture": "stripes"}
    with pytest.raises(LabelError, match="in two groups"):
        AttributeSpace({"a": ("x", "y"), "b": ("y",)})


def test_builtin_attributes_dataset(tmp_path):
    root = make_builtin_dataset(tmp_path / "b", n_train=12, n_val=4, resolution=32, seed=3)
    ds = BuiltinAttributes(root, "train")
    styles = BuiltinStyles.load(root)
    assert len(ds) == 12
    item = ds[5]
    assert item["image"].shape == (3, 32, 32) and item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["label"].shape == (15,)
    ds.space.validate(ds.labels)
    dec = ds.space.decode(ds.labels)
    for g in ("palette", "gradient", "texture"):
        assert np.array_equal(dec[g].numpy(), styles.factor("train", g))
    assert item["hue"] == pytest.approx(styles.factor("train", "hue")[5], abs=1e-6)
    # the image is the styled B half of the file, not the A outline
    from fastep.data.images import read_image, split_ab
    a, b = split_ab(read_image(ds.files[5]))
    torch.testing.assert_close(item["image"], b.float() / 127.5 - 1)
    assert BuiltinAttributes(root, "val", resolution=16)[0]["image"].shape == (3, 16, 16)


NAMES = ["5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Male", "Smiling", "Young"]


def _celeba(tmp_path, rows, write_images=True, size=(24, 30)):
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    lines = [str(len(rows)), " ".join(NAMES)]
    rng = np.random.default_rng(0)
    for i, vals in enumerate(rows):
        name = f"{i + 1:06d}.jpg"
        lines.append(name + " " + " ".join(f"{v:2d}" for v in vals))
        if write_images:
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                root / "img_align_celeba" / name, quality=95)
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return root


def _row(on):
    return [1 if n in on else -1 for n in NAMES]


ROWS = [_row({"Black_Hair", "Male"}), _row({"Blond_Hair", "Smiling", "Young"}), _row({"Young"}),
        _row({"Gray_Hair", "Male", "5_o_Clock_Shadow"}), _row({"Brown_Hair"}), _row({"Male", "Smiling"})]
CHOSEN = ("Young", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Male", "Smiling")


def test_celeba_reader(tmp_path):
    root = _celeba(tmp_path, ROWS)
    names, files, vals = read_celeba_attributes(root / "list_attr_celeba.txt")
    assert names == NAMES and files[0] == "000001.jpg" and vals.shape == (6, 8)
    ds = CelebAAttributes(root, CHOSEN, split="train", n_train=4, crop=20, resolution=16)
    assert list(ds.space.groups) == ["Young", "hair", "Male", "Smiling"]
    assert ds.space.names == CHOSEN
    assert len(ds) == 4
    item = ds[1]
    assert item["image"].shape == (3, 16, 16) and item["image"].abs().max() <= 1
    assert item["label"].tolist() == [1, 0, 1, 0, 0, 0, 1]  # Young, Blond_Hair, Smiling
    assert ds[0]["label"].tolist() == [0, 1, 0, 0, 0, 1, 0]
    test = CelebAAttributes(root, CHOSEN, split="test", n_train=4, crop=None, resolution=16)
    assert len(test) == 2 and test[0]["path"].endswith("000005.jpg")
    # targets on CelebA labels: one attribute group changes, hair colours stay exclusive
    y_t = ds.space.sample_targets(ds.labels.repeat(50, 1), generator=torch.Generator().manual_seed(2))
    ds.space.validate(y_t)
    assert (y_t[:, 1:5].sum(1) <= 1).all()


def test_celeba_reader_bad_input(tmp_path):
    root = _celeba(tmp_path, ROWS)
    with pytest.raises(LabelError, match="unknown attribute\\(s\\) Bald") as e:
        CelebAAttributes(root, ("Young", "Bald"))
    _one_line(e)
    with pytest.raises(LabelError, match="group 'hair' names 'Gray_Hair', which is not a chosen attribute"):
        CelebAAttributes(root, ("Black_Hair", "Blond_Hair"), groups={"hair": ("Black_Hair", "Gray_Hair")})
    with pytest.raises(FileNotFoundError, match="attribute file .*missing.txt' does not exist") as e:
        CelebAAttributes(root, CHOSEN, attr_file="missing.txt")
    _one_line(e)
    # two hair colours on one row: skipped with one warning, or an error in strict mode
    rows = ROWS + [_row({"Black_Hair", "Blond_Hair"})]
    root2 = _celeba(tmp_path / "two", rows)
    with pytest.warns(BadImageWarning, match="1 with two values of one group \\(first: 000007.jpg, group 'hair'\\)"):
        ds = CelebAAttributes(root2, CHOSEN, split="all", crop=None, resolution=16)
    assert len(ds) == 6
    with pytest.raises(LabelError, match="000007.jpg has two values of group 'hair' on") as e:
        CelebAAttributes(root2, CHOSEN, split="all", crop=None, resolution=16, strict=True)
    _one_line(e)
    # without the group, both hair attributes are independent binary ones: the row is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(CelebAAttributes(root2, CHOSEN, groups={}, split="all", crop=None, resolution=16)) == 7


def test_celeba_malformed_files(tmp_path):
    root = _celeba(tmp_path, ROWS)
    p = root / "list_attr_celeba.txt"
    text = p.read_text().splitlines()
    p.write_text("\n".join(text[:4] + [text[4].replace(" 1", " 0", 1)] + text[5:]) + "\n")
    with pytest.raises(LabelError, match="list_attr_celeba.txt:5: values must be 1 or -1"):
        read_celeba_attributes(p)
    p.write_text("\n".join(["9"] + text[1:]) + "\n")
    with pytest.raises(LabelError, match="line 1 says 9 images, the file lists 6"):
        read_celeba_attributes(p)
    root3 = _celeba(tmp_path / "noimg", ROWS[:2], write_images=False)
    with pytest.warns(BadImageWarning, match="2 missing from img_align_celeba/"):
        with pytest.raises(LabelError, match="no usable images"):
            CelebAAttributes(root3, CHOSEN, split="all")


@pytest.mark.parametrize("edit, message", [
    (lambda ln: ln + " 1", "expected a file name and 8 values, got 10 fields"),
    (lambda ln: ln.split()[0], "expected a file name and 8 values, got 1 fields"),
    (lambda ln: ln.replace("-1", "x", 1), "values must be 1 or -1"),
    (lambda ln: ln.replace("-1", "1.0", 1), "values must be 1 or -1"),
])
def test_celeba_bad_lines_are_named(tmp_path, edit, message):
    root = _celeba(tmp_path, ROWS, write_images=False)
    p = root / "list_attr_celeba.txt"
    text = p.read_text().splitlines()
    text[5] = edit(text[5])
    p.write_text("\n".join(text) + "\n")
    with pytest.raises(LabelError, match=f"list_attr_celeba.txt:6: {message}") as e:
        read_celeba_attributes(p)
    _one_line(e)


def test_celeba_empty_table(tmp_path):
    p = tmp_path / "list_attr_celeba.txt"
    p.write_text("0\nYoung Male\n")
    names, files, vals = read_celeba_attributes(p)
    assert names == ["Young", "Male"] and files == [] and vals.shape == (0, 2)
