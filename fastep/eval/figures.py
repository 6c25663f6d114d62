"""The paper's figures as PNG files: style-transfer grids, interpolation strips, sampling grids,
2-D embeddings of style codes, and a validation curve across training stages.

Generators are called as ``G(A, z)`` and encoders as ``E(B) -> z`` (fastep.zoo.step, or any modules
with that signature).  Images are in [-1, 1]; every function returns the path it wrote.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

Tensor = torch.Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W), got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def save_grid(cells: Sequence[Sequence[Optional[Tensor]]], path: str | Path, pad: int = 2) -> Path:
    """Save a grid of single images (each (3, H, W) in [-1, 1], or None for a blank white cell)."""
    rows = len(cells)
    cols = max(len(r) for r in cells) if rows else 0
    if rows == 0 or cols == 0:
        raise ValueError("cells must hold at least one image")
    first = next(c for r in cells for c in r if c is not None)
    h, w = first.shape[-2:]
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            if cell is None:
                continue
            if cell.shape[-2:] != (h, w):
                raise ValueError(f"cell ({i}, {j}) is {tuple(cell.shape[-2:])}, expected {(h, w)}")
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = to_uint8(cell.unsqueeze(0))[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


@torch.no_grad()
def style_transfer_grid(G: Callable, E: Callable, inputs: Tensor, style_images: Tensor,
                        path: str | Path) -> Path:
    """Rows: inputs A; columns: style images B; cell (i, j) = G(A_i, E(B_j)).

    The first row shows the style images and the first column the inputs.
    """
    codes = E(style_images)
    cells = [[None] + [b for b in style_images]]
    for a in inputs:
        out = G(a.unsqueeze(0).expand(len(codes), -1, -1, -1), codes)
        cells.append([a] + [o for o in out])
    return save_grid(cells, path)


@torch.no_grad()
def interpolation_strips(G: Callable, inputs: Tensor, z_start: Tensor, z_end: Tensor, path: str | Path,
                         steps: int = 8) -> Path:
    """One row per input: G(A, lerp(z_start, z_end, t)) for t in [0, 1] (``steps`` columns)."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    t = torch.linspace(0, 1, steps, device=z_start.device).view(-1, 1)
    rows = []
    for i, a in enumerate(inputs):
        zs, ze = z_start[i % len(z_start)], z_end[i % len(z_end)]
        z = torch.lerp(zs.expand(steps, -1), ze.expand(steps, -1), t)
        out = G(a.unsqueeze(0).expand(steps, -1, -1, -1), z)
        rows.append([a] + [o for o in out])
    return save_grid(rows, path)


@torch.no_grad()
def sampling_grid(G: Callable, inputs: Tensor, code_sets: Dict[str, Tensor], path: str | Path) -> Path:
    """For every input, one row per code set (e.g. {"mapper": ..., "gaussian": ...}), each row
    G(A, z_k) for the k codes of that set.  The first column repeats the input."""
    rows = []
    for a in inputs:
        for codes in code_sets.values():
            out = G(a.unsqueeze(0).expand(len(codes), -1, -1, -1), codes)
            rows.append([a] + [o for o in out])
    return save_grid(rows, path)


def embed_2d(codes: Tensor, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D embedding of codes (N, D): "pca" (always available) or "tsne" (needs scikit-learn)."""
    x = codes.detach().double().cpu()
    if method == "pca":
        x = x - x.mean(0)
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        return (x @ v[:2].T).numpy()
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as err:
            raise ImportError("method='tsne' needs scikit-learn (pip install 'fastep[eval]')") from err
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        return TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x.numpy())
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def embedding_plot(codes: Tensor, labels: Tensor, path: str | Path, *, method: str = "pca",
                   title: str = "style codes", label_name: str = "style") -> Path:
    """Scatter of the 2-D embedding of ``codes`` coloured by the true style ``labels``."""
    if len(codes) != len(labels):
        raise ValueError(f"codes ({len(codes)}) and labels ({len(labels)}) differ in length")
    xy = embed_2d(codes, method)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=12)
    ax.legend(*sc.legend_elements(), title=label_name, fontsize=7, loc="best")
    ax.set_title(f"{title} ({method.upper()})")
    ax.set_xticks([])
    ax.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def curve_plot(points: Sequence[Tuple[float, float]], path: str | Path, *,
               boundaries: Optional[Dict[str, float]] = None, xlabel: str = "kimg",
               ylabel: str = "validation LPIPS", title: str = "validation LPIPS across training") -> Path:
    """Line plot of (x, y) points with vertical lines at the named stage boundaries."""
    if not points:
        raise ValueError("points is empty")
    plt = _pyplot()
    xs, ys = zip(*points)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(xs, ys, marker="o", ms=3)
    for name, x in (boundaries or {}).items():
        ax.axvline(x, color="gray", ls="--", lw=1)
        ax.text(x, max(ys), f" {name}", fontsize=8, va="top")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
