"""Multi-attribute labels for BridgeGAN: exclusive attribute groups, target sampling, and two
labelled image sets (the built-in generated set and CelebA-format folders).

* :class:`AttributeSpace` -- an ordered set of binary attributes partitioned into exclusive
  groups.  A *one-hot* group always has exactly one value on (the built-in set's palette,
  gradient, texture); a plain exclusive group has at most one on (CelebA's hair colours); a
  group of one attribute is an ordinary binary attribute.  It validates label vectors, encodes
  and decodes group values, parses edits such as ``"palette=pastel texture=dots"`` and samples
  targets (:meth:`AttributeSpace.sample_targets`) that move one group (or several) to a new
  valid state: never two values on in a group.
* :func:`builtin_space` / :class:`BuiltinAttributes` -- the built-in data set
  (:mod:`fastep.data.builtin`) as n = 15 one-hot attributes (6 palettes, 4 gradients,
  5 textures) on its styled (B) images; the circular hue is returned alongside as the
  within-attribute style that labels do not fix.
* :class:`CelebAAttributes` -- an image folder plus a ``list_attr_celeba.txt`` file (CelebA's
  format: a count line, a line of attribute names, then ``file v1 v2 ...`` with values 1/-1),
  restricted to chosen attributes, with chosen exclusive groups.

Bad input is a one-line error naming what is wrong: an unknown attribute or group value, two
values of one group, a missing or malformed attribute file.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ...data.images import ImageReadError, read_image, split_ab
from ...data.paired import BadImageWarning, to_float

__all__ = ["LabelError", "AttributeSpace", "builtin_space", "BuiltinAttributes",
           "CelebAAttributes", "CELEBA_ATTRIBUTES_PAPER", "CELEBA_GROUPS_PAPER", "read_celeba_attributes"]

PathLike = Union[str, os.PathLike]
ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]


class LabelError(ValueError):
    """Bad attribute input (unknown name, two values of one group, bad label file); one line."""


#: the 14 CelebA attributes of the paper's Tables 1-2, in its order
CELEBA_ATTRIBUTES_PAPER = ("Young", "Mouth_Slightly_Open", "Smiling", "Black_Hair", "Blond_Hair", "Brown_Hair",
                           "Gray_Hair", "Receding_Hairline", "Bangs", "Male", "No_Beard", "Mustache", "Goatee",
                           "Sideburns")
#: the exclusive groups among them (hair colours: at most one on)
CELEBA_GROUPS_PAPER = {"hair": ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")}


class AttributeSpace:
    """Binary attributes partitioned into exclusive groups.

    Args:
        groups: ``{group name: attribute names}`` in label order (the label vector is the
            concatenation of the groups' attributes).
        one_hot: names of the groups that always have exactly one value on; the others have
            at most one.
    """

    def __init__(self, groups: Dict[str, Sequence[str]], one_hot: Sequence[str] = ()):
        if not groups:
            raise LabelError("an attribute space needs at least one group")
        self.groups: Dict[str, Tuple[str, ...]] = {}
        seen: Dict[str, str] = {}
        for g, names in groups.items():
            names = tuple(names)
            if not names:
                raise LabelError(f"attribute group {g!r} is empty")
            for a in names:
                if a in seen:
                    raise LabelError(f"attribute {a!r} is in two groups ({seen[a]!r} and {g!r})")
                seen[a] = g
            self.groups[g] = names
        unknown = [g for g in one_hot if g not in self.groups]
        if unknown:
            raise LabelError(f"unknown one-hot group(s) {unknown}; groups: {', '.join(self.groups)}")
        self.one_hot = frozenset(one_hot)
        self.names: Tuple[str, ...] = tuple(a for names in self.groups.values() for a in names)
        self.group_of: Dict[str, str] = seen
        self._slices: Dict[str, slice] = {}
        start = 0
        for g, names in self.groups.items():
            self._slices[g] = slice(start, start + len(names))
            start += len(names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"AttributeSpace({dict(self.groups)!r}, one_hot={sorted(self.one_hot)!r})"

    def slice(self, group: str) -> slice:
        """The label-vector positions of ``group``."""
        if group not in self._slices:
            raise LabelError(f"unknown attribute group {group!r}; groups: {', '.join(self.groups)}")
        return self._slices[group]

    def index(self, attribute: str) -> int:
        """The label-vector position of ``attribute``."""
        try:
            return self.names.index(attribute)
        except ValueError:
            raise LabelError(f"unknown attribute {attribute!r}; valid: {', '.join(self.names)}") from None

    # -- labels ------------------------------------------------------------------------------

    def validate(self, y: ArrayLike, what: str = "labels") -> None:
        """Raise :class:`LabelError` unless ``y`` ([N, n] or [n], values 0/1) is valid:
        at most one value on per group, exactly one in a one-hot group."""
        t = torch.as_tensor(y)
        if t.dim() == 1:
            t = t[None]
        if t.dim() != 2 or t.shape[1] != len(self):
            raise LabelError(f"{what}: expected shape [N, {len(self)}], got {tuple(torch.as_tensor(y).shape)}")
        if not bool(((t == 0) | (t == 1)).all()):
            raise LabelError(f"{what}: values must be 0 or 1")
        for g in self.groups:
            on = t[:, self._slices[g]].sum(1)
            bad = (on > 1) | ((on != 1) if g in self.one_hot else torch.zeros_like(on, dtype=torch.bool))
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                vals = [a for a, v in zip(self.groups[g], t[i, self._slices[g]].tolist()) if v]
                need = "exactly one" if g in self.one_hot else "at most one"
                raise LabelError(f"{what}: row {i} has {len(vals)} values of group {g!r} on "
                                      f"({', '.join(vals) or 'none'}); a group takes {need}")

    def encode(self, values: Dict[str, Optional[str]], base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A label vector [n] with ``values`` ({group: attribute or None}) set over ``base`` (zeros)."""
        y = torch.zeros(len(self)) if base is None else torch.as_tensor(base, dtype=torch.float32).clone()
        for g, a in values.items():
            sl = self.slice(g)
            y[sl] = 0
            if a is not None:
                if a not in self.groups[g]:
                    raise LabelError(f"unknown value {a!r} of group {g!r}; valid: {', '.join(self.groups[g])}")
                y[self.index(a)] = 1
            elif g in self.one_hot:
                raise LabelError(f"group {g!r} is one-hot: it needs a value")
        self.validate(y)
        return y

    def decode(self, y) -> Dict[str, torch.Tensor]:
        """``{group: int64 [N]}``: the index of the value on in each group, -1 for none."""
        t = torch.as_tensor(y)
        t = t[None] if t.dim() == 1 else t
        self.validate(t)
        out = {}
        for g in self.groups:
            part = t[:, self._slices[g]]
            out[g] = torch.where(part.sum(1) > 0, part.argmax(1), torch.full_like(part[:, 0], -1, dtype=torch.long))
        return out

    def parse_edits(self, text: str) -> Dict[str, Optional[str]]:
        """``"palette=pastel texture=dots"`` (spaces or commas) -> ``{"palette": "pastel", ...}``.

        ``group=none`` switches an (at most one) group off; a bare attribute name of a one-attribute
        group or a unique attribute name sets that attribute's group to it.  Two values for one
        group, unknown groups or values are errors.
        """
        out: Dict[str, Optional[str]] = {}
        for item in text.replace(",", " ").split():
            if "=" in item:
                g, _, a = item.partition("=")
                if g not in self.groups:
                    raise LabelError(f"unknown attribute group {g!r} in {item!r}; groups: {', '.join(self.groups)}")
                if a.lower() == "none":
                    if g in self.one_hot:
                        raise LabelError(f"group {g!r} is one-hot: it cannot be set to none")
                    val: Optional[str] = None
                elif a not in self.groups[g]:
                    raise LabelError(f"unknown value {a!r} of group {g!r}; valid: {', '.join(self.groups[g])}")
                else:
                    val = a
            else:
                if item not in self.group_of:
                    raise LabelError(f"unknown attribute {item!r}; valid: {', '.join(self.names)}")
                g, val = self.group_of[item], item
            if g in out and out[g] != val:
                raise LabelError(f"two values of group {g!r} in {text!r} ({out[g]} and {val}); "
                                      f"a group takes one value")
            out[g] = val
        if not out:
            raise LabelError("no attribute edits given (expected e.g. 'group=value')")
        return out

    # -- targets -----------------------------------------------------------------------------

    def _states(self, g: str) -> int:
        k = len(self.groups[g])
        return k if g in self.one_hot else k + 1  # an at-most-one group may also be all off

    def sample_targets(self, y_s: torch.Tensor, n_groups: int = 1,
                       generator: Optional[torch.Generator] = None,
                       groups: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Targets y_t for sources y_s ([N, n], valid): per row, ``n_groups`` distinct groups
        (uniformly among ``groups``, default all) move to a uniformly drawn *different* valid state;
        the other groups are copied.  Delta = y_t - y_s is then +1 on the new value, -1 on the old."""
        self.validate(y_s, "y_s")
        pool = list(self.groups) if groups is None else list(groups)
        for g in pool:
            self.slice(g)
        if not 1 <= n_groups <= len(pool):
            raise LabelError(f"n_groups must be in [1, {len(pool)}], got {n_groups}")
        y_t = torch.as_tensor(y_s, dtype=torch.float32).clone()
        state = self.decode(y_t)
        n = y_t.shape[0]
        pick = torch.rand(n, len(pool), generator=generator).argsort(1)[:, :n_groups]
        for j, g in enumerate(pool):
            rows = (pick == j).any(1).nonzero().flatten()
            if rows.numel() == 0:
                continue
            sl, k = self._slices[g], len(self.groups[g])
            # state s in [0, S): 0..k-1 = that value on, k = all off (at-most-one groups only)
            cur = state[g][rows].clone()
            cur[cur < 0] = k
            shift = torch.randint(1, self._states(g), (rows.numel(),), generator=generator)
            new = (cur + shift) % self._states(g)
            part = torch.zeros(rows.numel(), k)
            on = new < k
            part[on.nonzero().flatten(), new[on]] = 1
            y_t[rows, sl] = part
        return y_t


# ----------------------------------------------------------------------------- built-in set

def builtin_space() -> AttributeSpace:
    """The built-in set's 15 one-hot attributes: palette (6), gradient (4), texture (5)."""
    from ...data.builtin import GRADIENTS, PALETTES, TEXTURES

    return AttributeSpace({"palette": tuple(PALETTES), "gradient": tuple(GRADIENTS), "texture": tuple(TEXTURES)},
                          one_hot=("palette", "gradient", "texture"))


class BuiltinAttributes(Dataset):
    """The styled (B) images of a built-in data set with their 15 one-hot attribute labels.

    Items: ``dict(image=float32 [3, R, R] in [-1, 1], label=float32 [15], hue=float (in [0, 1),
    circular: the style the labels leave free), index=int)``.  ``resolution`` (default: the
    set's own) resizes with antialiased bilinear filtering.  No flips: a flip would change the
    gradient direction and the stripe orientation, i.e. the labels.
    """

    def __init__(self, root: PathLike, split: str = "train", resolution: Optional[int] = None):
        from ...data.builtin import BuiltinStyles

        self.styles = BuiltinStyles.load(root)
        self.space = builtin_space()
        self.split = split
        self.files = self.styles.files(split)
        f = self.styles.factors(split, ("palette", "gradient", "texture", "hue"))
        idx = {g: torch.as_tensor(f[g]) for g in ("palette", "gradient", "texture")}
        self.labels = torch.cat([F.one_hot(idx[g], len(self.space.groups[g])) for g in self.space.groups], 1).float()
        self.hue = torch.as_tensor(f["hue"], dtype=torch.float32)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        path = self.files[i]
        _, b = split_ab(read_image(path), path)
        img = to_float(b)
        if self.resolution is not None and img.shape[-1] != self.resolution:
            img = F.interpolate(img[None], size=(self.resolution, self.resolution), mode="bilinear",
                                antialias=True, align_corners=False)[0]
        return {"image": img, "label": self.labels[i], "hue": float(self.hue[i]), "index": i}


# ----------------------------------------------------------------------------- CelebA format

def read_celeba_attributes(path: PathLike) -> Tuple[List[str], List[str], np.ndarray]:
    """Parse a ``list_attr_celeba.txt`` -> (attribute names, file names, int8 values [N, A] in {-1, 1}).

    Line 1 is the image count, line 2 the attribute names, then one ``file v1 ... vA`` line per
    image.  Errors name the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"attribute file {str(path)!r} does not exist (expected CelebA's "
                                f"list_attr_celeba.txt format)")
    with open(path) as fh:
        raw = fh.read().splitlines()
    head = [ln.split() for ln in raw[:2]]
    if len(head) < 2 or len(head[0]) != 1 or not head[0][0].isdigit():
        raise LabelError(f"{path}: line 1 must be the number of images, got {' '.join(head[0]) if head else ''!r}")
    count, names = int(head[0][0]), head[1]
    if not names:
        raise LabelError(f"{path}: line 2 must list the attribute names")
    if len(set(names)) != len(names):
        raise LabelError(f"{path}: line 2 repeats an attribute name")
    numbered = [(i + 1, ln.split(None, 1)) for i, ln in enumerate(raw) if i >= 2 and ln.strip()]
    if len(numbered) != count:
        raise LabelError(f"{path}: line 1 says {count} images, the file lists {len(numbered)}")
    files = [parts[0] for _, parts in numbered]
    vals = np.zeros((0, len(names)), dtype=np.int64) if count == 0 else None
    if vals is None and all(len(parts) == 2 for _, parts in numbered):
        try:  # one vectorised parse (CelebA has 200k lines); on failure the bad line is found below
            vals = np.loadtxt([parts[1] for _, parts in numbered], dtype=np.int64, ndmin=2)
        except ValueError:
            vals = None
    if vals is None or vals.shape != (count, len(names)):
        for lineno, parts in numbered:
            fields = parts[1].split() if len(parts) == 2 else []
            if len(fields) != len(names):
                raise LabelError(f"{path}:{lineno}: expected a file name and {len(names)} values, "
                                 f"got {len(fields) + 1} fields")
            if not all(f.lstrip("-+").isdigit() for f in fields):
                raise LabelError(f"{path}:{lineno}: values must be 1 or -1")
        raise LabelError(f"{path}: cannot parse the attribute values")  # not reached for a well-formed table
    bad = ~np.isin(vals, (1, -1)).all(1)
    if bad.any():
        raise LabelError(f"{path}:{numbered[int(np.flatnonzero(bad)[0])][0]}: values must be 1 or -1")
    vals = vals.astype(np.int8)
    return names, files, vals


class CelebAAttributes(Dataset):
    """Images of a folder labelled by a CelebA-format attribute file.

    Args:
        root: folder holding ``image_dir`` and ``attr_file``.
        attributes: the attribute names to use, in label order (default: the paper's 14).
        groups: exclusive groups among them, ``{group: names}`` (default: the hair colours when
            all of them are chosen); every other attribute is a group of its own.
        split: ``"train"`` (the first ``n_train`` listed images), ``"test"`` (the rest) or ``"all"``.
        n_train: size of the training split (the authors' release: 182,000).
        crop: side of the centre crop applied first (170 for aligned CelebA; ``None``: no crop).
        resolution: output side (bicubic, antialiased).
        strict: raise on rows with two values of one group or listed files that are missing,
            instead of skipping them with one warning that counts them and names the first.

    Items: ``dict(image=float32 [3, R, R] in [-1, 1], label=float32 [n] in {0, 1}, index=int, path=str)``.
    """

    def __init__(self, root: PathLike, attributes: Sequence[str] = CELEBA_ATTRIBUTES_PAPER,
                 groups: Optional[Dict[str, Sequence[str]]] = None, split: str = "train", n_train: int = 182000,
                 crop: Optional[int] = 170, resolution: int = 128, image_dir: str = "img_align_celeba",
                 attr_file: str = "list_attr_celeba.txt", strict: bool = False):
        root = Path(root)
        if split not in ("train", "test", "all"):
            raise LabelError(f"split must be 'train', 'test' or 'all', got {split!r}")
        names, files, vals = read_celeba_attributes(root / attr_file)
        attributes = tuple(attributes)
        if not attributes:
            raise LabelError("choose at least one attribute")
        unknown = [a for a in attributes if a not in names]
        if unknown:
            raise LabelError(f"unknown attribute(s) {', '.join(unknown)} (not in {root / attr_file}); "
                                  f"valid: {', '.join(names)}")
        if len(set(attributes)) != len(attributes):
            raise LabelError(f"an attribute is chosen twice in {list(attributes)}")
        if groups is None:
            groups = {g: m for g, m in CELEBA_GROUPS_PAPER.items() if all(a in attributes for a in m)}
        grouped = {}
        for g, members in groups.items():
            for a in members:
                if a not in attributes:
                    raise LabelError(f"group {g!r} names {a!r}, which is not a chosen attribute; "
                                          f"chosen: {', '.join(attributes)}")
                grouped[a] = g
        # label order: the chosen attributes' order; a group sits where its first member is
        space_groups: Dict[str, Tuple[str, ...]] = {}
        for a in attributes:
            if a in grouped:
                space_groups.setdefault(grouped[a], tuple(m for m in attributes if grouped.get(m) == grouped[a]))
            else:
                space_groups[a] = (a,)
        self.space = AttributeSpace(space_groups)
        cols = [names.index(a) for a in self.space.names]
        labels = (vals[:, cols] > 0).astype(np.float32)
        sel = {"train": slice(0, n_train), "test": slice(n_train, None), "all": slice(None)}[split]
        files, labels = files[sel], labels[sel]
        img_root = root / image_dir
        if not img_root.is_dir():
            raise FileNotFoundError(f"image folder {str(img_root)!r} does not exist")
        present = set(os.listdir(img_root))
        # first group with two values on, per row (-1: none); vectorised, CelebA has 200k rows
        group_names = list(self.space.groups)
        over = np.stack([labels[:, self.space.slice(g)].sum(1) > 1 for g in group_names], 1)
        first_bad = np.where(over.any(1), over.argmax(1), -1)
        keep, conflicts, missing = [], [], []
        for i, f in enumerate(files):
            if first_bad[i] >= 0:
                conflicts.append((f, group_names[first_bad[i]]))
            elif f not in present:
                missing.append(f)
            else:
                keep.append(i)
        if strict and conflicts:
            f, g = conflicts[0]
            raise LabelError(f"{root / attr_file}: {f} has two values of group {g!r} on "
                                  f"({len(conflicts)} such rows); a group takes at most one")
        if strict and missing:
            raise ImageReadError(img_root / missing[0], f"listed in {attr_file} but missing "
                                 f"({len(missing)} missing files)")
        if conflicts or missing:
            parts = []
            if conflicts:
                parts.append(f"{len(conflicts)} with two values of one group (first: {conflicts[0][0]}, "
                             f"group {conflicts[0][1]!r})")
            if missing:
                parts.append(f"{len(missing)} missing from {image_dir}/ (first: {missing[0]})")
            warnings.warn(f"CelebAAttributes: skipped {' and '.join(parts)}", BadImageWarning, stacklevel=2)
        if not keep:
            raise LabelError(f"no usable images in split {split!r} of {root}")
        self.files = [img_root / files[i] for i in keep]
        self.labels = torch.from_numpy(labels[keep])
        self.crop, self.resolution = crop, resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        img = to_float(read_image(self.files[i]))
        if self.crop is not None:
            c, h, w = img.shape
            if min(h, w) < self.crop:
                raise ImageReadError(self.files[i], f"is {w}x{h}, smaller than the {self.crop} crop")
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
            img = img[:, top:top + self.crop, left:left + self.crop]
        if img.shape[-2:] != (self.resolution, self.resolution):
            img = F.interpolate(img[None], size=(self.resolution, self.resolution), mode="bicubic",
                                antialias=True, align_corners=False)[0].clamp_(-1, 1)
        return {"image": img, "label": self.labels[i], "index": i, "path": str(self.files[i])}
