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

__all__ = ["TensorBoardLogger", "save_image_grid", "write_json_atomic"]


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
