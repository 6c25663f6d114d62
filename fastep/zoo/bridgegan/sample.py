"""BridgeGAN edits from a checkpoint as a Python API (``fastep sample CKPT --set ... | --ref ...``).

* label-based: :func:`label_edit_grid` -- rows: the inputs, then ``n`` LEM outputs (one noise
  draw each) for edits such as ``"palette=pastel texture=dots"``;
* reference-based: :func:`reference_edit_grid` -- rows: the inputs, the reference, the REM
  outputs that take the named groups (``--attrs texture``) from the reference.

The inputs' own attributes come from the model's classifier C unless an attribute file
(CelebA's ``list_attr_celeba.txt`` format, columns named like the model's attributes, rows by
file name) gives them.  Every bad input is a one-line error: an unknown group or value, two
values of one group, a missing attribute file or checkpoint, an image missing from the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .attributes import LabelError, read_celeba_attributes

__all__ = ["load_bridge", "labels_from_file", "label_edit_grid", "reference_edit_grid"]

PathLike = Union[str, Path]


def load_bridge(checkpoint: PathLike, device="cpu"):
    """The :class:`~.inference.BridgeModel` of ``checkpoint``; another system's checkpoint is an error."""
    from ... import zoo
    from ...train.checkpoint import CheckpointError

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist")
    model = zoo.load(checkpoint, device)
    if model.system != "bridgegan":
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} is a {model.system!r} model; --set / --ref / "
                              "--attrs edit BridgeGAN models")
    return model


def labels_from_file(space, path: PathLike, files: Sequence[PathLike]) -> torch.Tensor:
    """The label vectors of ``files`` from a CelebA-format attribute file (rows by file name)."""
    names, listed, vals = read_celeba_attributes(path)
    missing = [a for a in space.names if a not in names]
    if missing:
        raise LabelError(f"{path}: no column for attribute(s) {', '.join(missing)}; the model has "
                         f"{', '.join(space.names)}")
    row = {f: i for i, f in enumerate(listed)}
    cols = [names.index(a) for a in space.names]
    out = []
    for f in files:
        key = Path(f).name
        if key not in row:
            raise LabelError(f"{path}: no row for image {key!r}")
        out.append(torch.as_tensor(vals[row[key], cols] > 0, dtype=torch.float32))
    y = torch.stack(out)
    space.validate(y, f"labels in {path}")
    return y


def _images(model, paths: Sequence[PathLike], ab_side: str = "A") -> torch.Tensor:
    from ...eval.sample import load_image_file

    return torch.stack([load_image_file(p, model.resolution, "auto", ab_side=ab_side) for p in paths])


def _save(rows, labels, out: PathLike) -> Path:
    from ...train.outputs import labelled_grid, save_image_grid

    return save_image_grid(labelled_grid([(r.float().clamp(-1, 1) + 1) / 2 for r in rows], labels), out)


@torch.no_grad()
def label_edit_grid(checkpoint: PathLike, inputs: Sequence[PathLike], edits: str, out: PathLike, *, n: int = 4,
                    seed: int = 0, attr_file: Optional[PathLike] = None, device="cpu") -> Path:
    """Rows: the inputs, then ``n`` label-based outputs of ``edits`` (``"group=value ..."``)."""
    model = load_bridge(checkpoint, device)
    parsed = model.space.parse_edits(edits)
    if n < 1:
        raise ValueError(f"-n must be >= 1, got {n}")
    x = _images(model, inputs, "B")
    y_s = labels_from_file(model.space, attr_file, inputs) if attr_file else model.predict_labels(x)
    y_t = model.target_from_edits(y_s, parsed)
    text = " ".join(f"{g}={v}" for g, v in parsed.items())
    rows, labels = [x], ["input"]
    for k in range(n):
        rows.append(model.lem(x, y_s, y_t, seed=seed + k).cpu())
        labels.append(f"{text} r{k + 1}")
    return _save(rows, labels, out)


@torch.no_grad()
def reference_edit_grid(checkpoint: PathLike, inputs: Sequence[PathLike], ref: PathLike, attrs: str,
                        out: PathLike, *, attr_file: Optional[PathLike] = None, device="cpu") -> Path:
    """Rows: the inputs, the reference, the outputs that take the groups ``attrs`` from it."""
    model = load_bridge(checkpoint, device)
    groups = [g for g in str(attrs).replace(",", " ").split()]
    if not groups:
        raise LabelError("--attrs: name at least one attribute group, e.g. --attrs texture")
    for g in groups:
        model.space.slice(g)
    if len(set(groups)) != len(groups):
        raise LabelError(f"--attrs names a group twice: {attrs!r}")
    x = _images(model, inputs, "B")
    r = _images(model, [ref], "B")
    if attr_file:
        y_s = labels_from_file(model.space, attr_file, inputs)
        y_r = labels_from_file(model.space, attr_file, [ref])
    else:
        y_s, y_r = model.predict_labels(x), model.predict_labels(r)
    y_r = y_r.expand(x.shape[0], -1)
    out_img = model.rem(x, y_s, r.expand(x.shape[0], -1, -1, -1), model.target_from_reference(y_s, y_r, groups))
    return _save([x, r.expand(x.shape[0], -1, -1, -1), out_img.cpu()],
                 ["input", "reference", "REM " + "+".join(groups)], out)
