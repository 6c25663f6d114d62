"""What a training run writes besides checkpoints: TensorBoard scalars/images, PNG grids, JSON.

Every file goes through :mod:`fastep.io` (atomic writes).  TensorBoard is optional: without the
``tensorboard`` package the logger prints one note and does nothing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Union

import torch

from ..io import save_png_atomic, write_json_atomic

__all__ = ["TensorBoardLogger", "save_image_grid", "labelled_grid", "write_json_atomic"]


class TensorBoardLogger:
    """TensorBoard scalars and images when ``tensorboard`` is installed; otherwise a no-op that
    prints one note saying how to get it (never an error)."""

    def __init__(self, log_dir: Union[str, os.PathLike, None], enabled: bool = True, note=print):
        self.writer = None
        self.note = None
        if not enabled or log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as err:  # noqa: BLE001 - ImportError, or a broken install
            self.note = (f"fastep: TensorBoard logging is off ({type(err).__name__}: {err}); "
                         "`pip install tensorboard` to get scalars and image grids. "
                         "metrics.json and samples/*.png are written regardless.")
            if note is not None:
                note(self.note)
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: Dict[str, float], step: int, prefix: str = "") -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}{k}", v, step)

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, grid, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def save_image_grid(grid: torch.Tensor, path: Union[str, os.PathLike]) -> Path:
    """Save a [3, H, W] float grid in [0, 1] as PNG (atomic)."""
    return save_png_atomic(grid, path)



def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_image(text: str, width: int, height: int, font) -> torch.Tensor:
    """``text`` in dark grey on white, right-aligned and vertically centred: [3, height, width] in [0, 1]."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    draw.text((width - (r - l) - 4 - l, (height - (b - t)) // 2 - t), text, fill=(40, 40, 40), font=font)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0


def labelled_grid(rows, labels, *, padding: int = 2) -> torch.Tensor:
    """A [3, H, W] grid in [0, 1] of image rows with a name at the left of each row.

    ``rows``: tensors ``[n, 3, h, w]`` in [0, 1], the same ``n`` for every row; ``labels``: one
    string per row ("input", "target", "reconstruction", ...).  The images are laid out as
    :func:`torchvision.utils.make_grid` does (``padding`` white pixels between cells).
    """
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    rows = [r.detach().float().cpu() for r in rows]
    labels = [str(x) for x in labels]
    if len(rows) != len(labels):
        raise ValueError(f"labelled_grid: {len(rows)} rows but {len(labels)} labels")
    n = rows[0].shape[0]
    if any(r.shape[0] != n for r in rows):
        raise ValueError(f"labelled_grid: every row needs {n} images, got {[r.shape[0] for r in rows]}")
    grid = make_grid(torch.cat(rows), nrow=n, padding=padding, pad_value=1.0)
    cell_h = rows[0].shape[-2] + padding
    font = _font(max(8, min(14, cell_h // 3)))
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(int(draw.textlength(t, font=font)) for t in labels) + 8
    strip = torch.ones(3, grid.shape[1], width)
    for i, text in enumerate(labels):
        top = i * cell_h + padding // 2
        strip[:, top:top + cell_h] = _text_image(text, width, cell_h, font)
    return torch.cat([strip, grid], dim=2)
