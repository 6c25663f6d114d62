"""Reading image files: listing folders, decoding to uint8 RGB tensors, splitting pix2pix AB images.

Everything that reads pixels from disk in fastep goes through here, so a bad file is always
reported the same way: :class:`ImageReadError` (a ``ValueError``) carrying the offending path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import torch

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "list_images", "read_image", "split_ab"]

#: File name endings (lower case) treated as images by :func:`list_images`.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

PathLike = Union[str, os.PathLike]


class ImageReadError(ValueError):
    """An image file could not be used (unreadable, corrupt, odd-sized AB image...).

    ``.path`` is the offending file; the message names it.
    """

    def __init__(self, path: PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def list_images(root: PathLike, recursive: bool = True) -> List[Path]:
    """All image files under ``root`` (by extension, case-insensitive), sorted by path.

    Hidden files and folders (name starting with ".") are skipped.  ``root`` must be a folder;
    a missing folder raises ``FileNotFoundError`` naming it, a file ``NotADirectoryError``.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"root: image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"root: {str(root)!r} is not a folder")
    out: List[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                    out.append(Path(dirpath) / name)
    else:
        for p in root.iterdir():
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_EXTENSIONS):
                out.append(p)
    return sorted(out)


def read_image(path: PathLike) -> torch.Tensor:
    """Decode one image file to a uint8 tensor ``[3, H, W]`` (RGB; grey and alpha converted).

    Raises :class:`ImageReadError` naming the file when it is missing, unreadable or corrupt.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError as err:
        raise ImageReadError(path, "file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, f"cannot decode image ({type(err).__name__}: {err})") from err
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(path, f"unexpected decoded shape {tuple(arr.shape)}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def split_ab(img: torch.Tensor, path: PathLike | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split a pix2pix "AB" image ``[C, H, 2W]`` into its left half A and right half B.

    An odd width cannot be split and raises :class:`ImageReadError` (naming ``path`` when given).
    """
    if not isinstance(img, torch.Tensor) or img.dim() != 3:
        raise TypeError(f"img: expected a [C, H, W] tensor, got "
                        f"{type(img).__name__ if not isinstance(img, torch.Tensor) else tuple(img.shape)}")
    w = img.shape[-1]
    if w % 2 != 0 or w == 0:
        raise ImageReadError(path if path is not None else "<tensor>",
                             f"AB image width {w} is odd; expected A and B side by side (width 2W)")
    half = w // 2
    return img[..., :half], img[..., half:]
