"""DeepI2I's data on the built-in set: the styled renderings (B) with a class label each.

Classes come from the true style factors (:class:`fastep.data.BuiltinStyles`): ``palette``
(6 classes) or ``style`` (palette x gradient x texture, 120 classes).  The outline A is not
trained on; it is kept for the content evaluation.  No flips: a flip changes a gradient's and a
stripe's orientation, i.e. the class.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["CLASS_FACTORS", "LabeledImages", "labeled_builtin", "n_classes_of"]

#: class scheme -> the categorical style factors whose combination is the class
CLASS_FACTORS: Dict[str, Tuple[str, ...]] = {"palette": ("palette",), "style": ("palette", "gradient", "texture")}


def n_classes_of(classes: str) -> int:
    """Number of classes of a class scheme on the built-in data."""
    from ...data.builtin import GRADIENTS, PALETTES, TEXTURES

    sizes = {"palette": len(PALETTES), "gradient": len(GRADIENTS), "texture": len(TEXTURES)}
    return int(np.prod([sizes[f] for f in CLASS_FACTORS[classes]]))


class LabeledImages(Dataset):
    """Images held in memory with one class each: item ``i`` is ``(image [3, R, R] float in
    [-1, 1], class 0-d int64)``; ``outlines`` (the A halves, uint8) when kept."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, outlines_u8: Optional[torch.Tensor] = None):
        if images_u8.dtype != torch.uint8 or images_u8.dim() != 4 or len(images_u8) != len(labels):
            raise ValueError("LabeledImages takes uint8 images [N, 3, R, R] and N labels")
        self.images, self.labels, self.outlines = images_u8, labels.long(), outlines_u8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].float().div(127.5).sub(1.0), self.labels[i]

    def float_images(self) -> torch.Tensor:
        return self.images.float().div(127.5).sub(1.0)


def _per_class_subset(labels: np.ndarray, fraction: float) -> np.ndarray:
    """The first ceil(fraction * count) images of every class, in file order."""
    keep = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        keep.append(idx[:max(1, math.ceil(fraction * len(idx)))])
    return np.sort(np.concatenate(keep))


def labeled_builtin(root: Union[str, os.PathLike], split: str, resolution: int, classes: str = "palette",
                    fraction: float = 1.0, keep_outlines: bool = False) -> LabeledImages:
    """The B images of a built-in set's ``split`` with their ``classes`` labels (``fraction``:
    that share of every class, e.g. 0.1 for the 10 % setting)."""
    from ...data import BuiltinStyles, PairedImageDataset

    if classes not in CLASS_FACTORS:
        raise ValueError(f"unknown class scheme {classes!r}; valid: {', '.join(CLASS_FACTORS)}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    styles = BuiltinStyles.load(root)
    labels = styles.style_class(split, CLASS_FACTORS[classes])
    ds = PairedImageDataset(Path(root), split, resolution, crop=False, flip=False)
    images, idx = ds.stack_images("B", resolution=resolution)
    outlines = ds.stack_images("A", resolution=resolution)[0] if keep_outlines else None
    labels = labels[idx.numpy()]
    keep = _per_class_subset(labels, fraction) if fraction < 1 else np.arange(len(labels))
    sel = torch.from_numpy(keep)
    return LabeledImages(images[sel], torch.from_numpy(labels[keep]),
                         None if outlines is None else outlines[sel])
