"""Paired image folders: pix2pix "AB" files or A/ + B/ folders with matching names.

Layouts found automatically (``layout="auto"``), for ``split="train"`` (same for ``"val"``...):

1. ``root/train/A/*`` and ``root/train/B/*``  (folder pairs, matched by file name)
2. ``root/A/train/*`` and ``root/B/train/*``  (pix2pix's ``combine_A_and_B`` input layout)
3. ``root/train/*``                           (pix2pix AB images: A left half, B right half)
4. ``root/A/*`` + ``root/B/*``, or ``root/*`` AB images: a data set without splits, used as
   ``split="train"`` (or ``split=None``); asking it for another split is an error.

A and B files are matched by their path relative to A/ and B/ without the extension
(``A/x.png`` pairs with ``B/x.jpg``).  Bad files never crash a run halfway without a name:

* files present on one side only, files whose header cannot be read and AB images of odd width
  are found when the data set is built: skipped with **one** warning listing them
  (:class:`BadImageWarning`), or an :class:`~fastep.data.images.ImageReadError` naming the
  first one when ``strict=True``;
* a file that only fails when decoded (e.g. truncated) is reported by name when reached: in
  strict mode ``__getitem__`` raises; otherwise it warns once for that file and returns the next
  good pair instead (the file is recorded in ``dataset.bad``).

Items are ``dict(A=float[3, R, R] in [-1, 1], B=..., index=int, path=str)``.  Augmentation as in
pix2pix: resize to ``load_size`` then a random ``resolution`` crop, and a random horizontal flip,
identical for A and B (defaults: on for the train split, off otherwise).
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .images import ImageReadError, list_images, read_image, split_ab

__all__ = ["PairedImageDataset", "BadImageWarning", "find_layout"]

PathLike = Union[str, os.PathLike]


class BadImageWarning(UserWarning):
    """Some image files of a data set were skipped (the message lists them by name)."""


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False


def find_layout(root: PathLike, split: Optional[str] = "train") -> Tuple[str, Path, Optional[Path]]:
    """Resolve where a split lives: ``("folders", dir_A, dir_B)`` or ``("ab", dir, None)``.

    Raises ``FileNotFoundError`` saying which layouts were looked for.
    """
    root = Path(root)
    if not _is_dir(root):
        raise FileNotFoundError(f"root: data folder {str(root)!r} does not exist or is not a folder")
    if split is not None:
        if _is_dir(root / split / "A") and _is_dir(root / split / "B"):
            return "folders", root / split / "A", root / split / "B"
        if _is_dir(root / "A" / split) and _is_dir(root / "B" / split):
            return "folders", root / "A" / split, root / "B" / split
        if _is_dir(root / split):
            return "ab", root / split, None
    splitless = _is_dir(root / "A") and _is_dir(root / "B")
    if split is None or split == "train":
        if splitless:
            return "folders", root / "A", root / "B"
        if split is None or not any(_is_dir(root / s) for s in ("train", "val", "test")):
            return "ab", root, None
    raise FileNotFoundError(
        f"split: no {split!r} split under {str(root)!r}; looked for {split}/A + {split}/B, "
        f"A/{split} + B/{split} and {split}/ (AB images)"
        + ("; this folder has A/ and B/ without splits: use split='train' or split=None" if splitless else ""))


def _key(path: Path, base: Path) -> str:
    return str(path.relative_to(base).with_suffix(""))


def _header_problem(path: Path, ab: bool) -> Optional[str]:
    """A reason the file is unusable, from its header only (cheap), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"cannot read image header ({type(err).__name__}: {err})"
    if w == 0 or h == 0:
        return f"empty image ({w} x {h})"
    if ab and w <= h:
        return _NOT_AB.format(w=w, h=h)
    if ab and w % 2 != 0:
        return f"AB image width {w} is odd; expected A and B side by side (width 2W)"
    return None


# A square (or tall) image in an AB folder is not split in halves: it is refused by name.
_NOT_AB = ("{w} x {h} image is not a pix2pix AB pair (A and B side by side, width = 2 x height); "
           "square images are never split in halves")
_NOT_AB_HINT = ("put paired images in A/ and B/ folders with matching file names (train/A, train/B, "
                "val/A, val/B), or join each pair side by side into one AB image")


def _format_bad(bad: Dict[str, str], limit: int = 20) -> str:
    lines = [f"  {p}: {why}" for p, why in list(bad.items())[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


class PairedImageDataset(Dataset):
    """Paired images (A, B) from pix2pix AB files or A/ + B/ folders (see the module docstring).

    Args:
        root: the data folder.
        split: ``"train"``, ``"val"``, ``"test"`` ... or ``None`` for a folder without splits.
        resolution: side of the square output images.
        load_size: side the images are resized to before the random crop (default
            ``round(resolution * 286 / 256)`` like pix2pix when cropping, else ``resolution``).
        crop, flip: random crop / horizontal flip (same for A and B); ``None`` = on for "train".
        strict: raise on the first bad file instead of skipping it with a warning.
        verify: check every file's header (and the A/B name match) when built (default True).
        direction: ``"AtoB"`` (default) or ``"BtoA"`` to swap the roles of the halves/folders.
        preload: decode (and resize to ``load_size``) every image once, in memory.
        io_threads: threads for the header checks, preloading and :meth:`stack_images`.
        layout: ``"auto"``, ``"ab"`` or ``"folders"`` (to insist on one).
    """

    def __init__(self, root: PathLike, split: Optional[str] = "train", resolution: int = 256, *,
                 load_size: Optional[int] = None, crop: Optional[bool] = None, flip: Optional[bool] = None,
                 strict: bool = False, verify: bool = True, direction: str = "AtoB",
                 preload: bool = False, layout: str = "auto", io_threads: int = 8):
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution: expected a positive integer, got {resolution!r}")
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"direction: expected 'AtoB' or 'BtoA', got {direction!r}")
        if layout not in ("auto", "ab", "folders"):
            raise ValueError(f"layout: expected 'auto', 'ab' or 'folders', got {layout!r}")
        self.root = Path(root)
        self.split = split
        self.resolution = resolution
        is_train = split in ("train", None)
        self.crop = is_train if crop is None else bool(crop)
        self.flip = is_train if flip is None else bool(flip)
        if load_size is None:
            load_size = round(resolution * 286 / 256) if self.crop else resolution
        if load_size < resolution:
            raise ValueError(f"load_size: expected >= resolution ({resolution}), got {load_size}")
        self.load_size = int(load_size)
        self.strict = bool(strict)
        self.direction = direction
        self.layout, dir_a, dir_b = find_layout(self.root, split)
        if layout != "auto" and layout != self.layout:
            raise FileNotFoundError(f"layout: asked for {layout!r} but {str(self.root)!r} split {split!r} "
                                    f"has the {self.layout!r} layout")
        self.bad: Dict[str, str] = {}
        items: List[Tuple[Path, Optional[Path]]] = []
        if self.layout == "ab":
            items = [(p, None) for p in list_images(dir_a, recursive=True)]
        else:
            files_a = {_key(p, dir_a): p for p in list_images(dir_a, recursive=True)}
            files_b = {_key(p, dir_b): p for p in list_images(dir_b, recursive=True)}
            for k in sorted(set(files_a) | set(files_b)):
                if k in files_a and k in files_b:
                    items.append((files_a[k], files_b[k]))
                elif k in files_a:
                    self.bad[str(files_a[k])] = f"no matching file in {dir_b} (A/B names differ)"
                else:
                    self.bad[str(files_b[k])] = f"no matching file in {dir_a} (A/B names differ)"
        if not items and not self.bad:
            where = dir_a if self.layout == "ab" else f"{dir_a} and {dir_b}"
            raise FileNotFoundError(f"root: no image files in {where} (split {split!r}); "
                                    f"expected pix2pix AB images or A/ + B/ folders")
        if self.bad and self.strict:
            path, why = next(iter(self.bad.items()))
            raise ImageReadError(path, why)
        if verify:
            checks = [(p, self.layout == "ab") for pair in items for p in pair if p is not None]
            with ThreadPoolExecutor(max_workers=max(1, min(io_threads, 16))) as pool:
                problems = list(pool.map(lambda c: _header_problem(*c), checks))
            broken = {str(p): why for (p, _), why in zip(checks, problems) if why is not None}
            if broken and self.strict:
                path, why = next(iter(broken.items()))
                raise ImageReadError(path, why)
            if broken:
                self.bad.update(broken)
                items = [pair for pair in items if not any(str(p) in broken for p in pair if p is not None)]
        if not items and self.bad and all(why.endswith("never split in halves") for why in self.bad.values()):
            first = next(iter(self.bad.values())).split(" image")[0]
            raise ValueError(f"root: the {len(self.bad)} image(s) in {str(dir_a)!r} are {first} (square or "
                             f"tall), not pix2pix AB pairs, and fastep does not split them in halves: "
                             f"{_NOT_AB_HINT}")
        if self.bad:
            warnings.warn(f"PairedImageDataset({str(self.root)!r}, split={split!r}): skipped "
                          f"{len(self.bad)} bad file(s):\n{_format_bad(self.bad)}", BadImageWarning, stacklevel=2)
        if not items:
            raise FileNotFoundError(f"root: no usable image pairs in {str(self.root)!r} split {split!r}; "
                                    f"all {len(self.bad)} file(s) were bad:\n{_format_bad(self.bad)}")
        self.items = items
        self._warned: set = set()
        self._bad_idx: set = set()
        self._cache: Optional[List[Optional[Tuple[torch.Tensor, torch.Tensor]]]] = None
        if preload:
            with ThreadPoolExecutor(max_workers=max(1, min(io_threads, 16))) as pool:
                self._cache = list(pool.map(self._try_load_resized, range(len(items))))

    # -- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def path(self, index: int) -> Path:
        """The file that identifies item ``index`` (the AB file, or the B file)."""
        a, b = self.items[index]
        return b if b is not None else a

    def read_pair(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode item ``index`` at its stored size -> (A, B) uint8 [3, H, W]; may raise ImageReadError."""
        pa, pb = self.items[index]
        if pb is None:
            a, b = split_ab(read_image(pa), pa)
        else:
            a, b = read_image(pa), read_image(pb)
        return (b, a) if self.direction == "BtoA" else (a, b)

    def _load_resized(self, index: int, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        a, b = self.read_pair(index)
        return _resize_u8(a, size), _resize_u8(b, size)

    def _try_load_resized(self, index: int):
        try:
            return self._load_resized(index, self.load_size)
        except ImageReadError as err:
            if self.strict:
                raise
            self._bad_idx.add(index)
            self._note_bad(err)
            return None

    def _note_bad(self, err: ImageReadError) -> None:
        key = str(err.path)
        self.bad[key] = err.reason
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"PairedImageDataset: skipping unreadable file {err}", BadImageWarning, stacklevel=3)

    def _get_u8(self, index: int) -> Tuple[int, Tuple[torch.Tensor, torch.Tensor]]:
        """The pair at ``index`` resized to load_size, or the next good one (non-strict)."""
        n = len(self.items)
        for step in range(n):
            i = (index + step) % n
            if self._cache is not None:
                pair = self._cache[i]
                if pair is not None:
                    return i, pair
                continue
            if i in self._bad_idx:
                continue
            pair = self._try_load_resized(i)
            if pair is not None:
                return i, pair
        raise ImageReadError(self.path(index), f"no readable image pair left in {self.root} "
                             f"({len(self.bad)} bad files)")

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index: {index} out of range for {len(self)} items")
        i, (a, b) = self._get_u8(index)
        r = self.resolution
        if self.crop and self.load_size > r:
            y = int(torch.randint(0, self.load_size - r + 1, ()))
            x = int(torch.randint(0, self.load_size - r + 1, ()))
            a, b = a[:, y:y + r, x:x + r], b[:, y:y + r, x:x + r]
        elif self.load_size != r:
            a, b = _resize_u8(a, r), _resize_u8(b, r)
        if self.flip and bool(torch.rand(()) < 0.5):
            a, b = a.flip(-1), b.flip(-1)
        return {"A": to_float(a), "B": to_float(b), "index": i, "path": str(self.path(i))}

    def stack_images(self, which: str = "B", resolution: Optional[int] = None,
                     io_threads: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
        """All images of one side, resized (no crop, no flip) -> (uint8 [N, 3, R, R], indices [N]).

        Files that fail to decode are skipped (warned by name) or raise in strict mode; ``indices``
        says which dataset items the rows are.  This is what stage 1 mines and trains on.
        """
        if which not in ("A", "B"):
            raise ValueError(f"which: expected 'A' or 'B', got {which!r}")
        size = int(resolution or self.resolution)
        side = 0 if which == "A" else 1

        def load(i):
            try:
                return _resize_u8(self.read_pair(i)[side], size)
            except ImageReadError as err:
                if self.strict:
                    raise
                self._note_bad(err)
                return None

        with ThreadPoolExecutor(max_workers=max(1, min(io_threads, 16))) as pool:
            imgs = list(pool.map(load, range(len(self))))
        keep = [i for i, im in enumerate(imgs) if im is not None]
        if not keep:
            raise ImageReadError(self.root, "no readable images")
        return torch.stack([imgs[i] for i in keep]), torch.tensor(keep, dtype=torch.long)

    def __repr__(self) -> str:
        return (f"PairedImageDataset(root={str(self.root)!r}, split={self.split!r}, layout={self.layout!r}, "
                f"n={len(self)}, resolution={self.resolution}, load_size={self.load_size}, crop={self.crop}, "
                f"flip={self.flip}, bad={len(self.bad)})")


def _resize_u8(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 [3, H, W] image to [3, size, size] (bilinear, antialiased)."""
    if img.shape[-2:] == (size, size):
        return img
    out = F.interpolate(img.unsqueeze(0).float(), size=(size, size), mode="bilinear",
                        align_corners=False, antialias=True)
    return out.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)


def to_float(img: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return img.float().div_(127.5).sub_(1.0)


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped)."""
    return ((img.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
