"""Data: paired image folders, the built-in generated data set with known style factors, loaders.

* :class:`PairedImageDataset`  pix2pix AB folders or A/ + B/ folder pairs, crop + flip, bad files
  reported by name;
* :func:`make_builtin_dataset` / :class:`BuiltinStyles`  shape outlines -> styled shapes, with the
  true style factors (palette, gradient, texture, hue) of every image;
* :func:`make_loader` / :class:`InfiniteLoader` / :class:`SeededDataset`  seeded, DDP-sharded,
  resumable loaders;
* :mod:`fastep.data.images` (low level): ``list_images``, ``read_image``, ``split_ab``,
  ``ImageReadError``.
"""
from .builtin import BuiltinStyles, default_builtin_root, make_builtin_dataset
from .images import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image, split_ab
from .loader import InfiniteLoader, SeededDataset, infinite, make_loader
from .paired import BadImageWarning, PairedImageDataset, find_layout, to_float, to_uint8

__all__ = [
    "BuiltinStyles", "default_builtin_root", "make_builtin_dataset",
    "IMAGE_EXTENSIONS", "ImageReadError", "list_images", "read_image", "split_ab",
    "InfiniteLoader", "SeededDataset", "infinite", "make_loader",
    "BadImageWarning", "PairedImageDataset", "find_layout", "to_float", "to_uint8",
]
