"""Atomic file writes: the one helper behind every checkpoint, JSON report and PNG fastep writes.

The bytes go to a temporary file in the destination folder, are flushed and fsync'ed, then
:func:`os.replace` moves them over the final name and the folder is fsync'ed.  A crash (even
``kill -9``) at any moment leaves either the old file or the new one, never a torn one; a stray
``.<name>.*.tmp`` is all a crash can leave behind.

This module imports no torch at import time (the CLI and ``fastep mine`` import it cheaply).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

PathLike = Union[str, os.PathLike]

__all__ = ["atomic_write", "write_json_atomic", "save_png_atomic", "json_default"]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None], *,
                 _before_replace: Optional[Callable[[Path], None]] = None) -> Path:
    """Create ``path`` atomically: ``write(fh)`` fills a temporary binary file, then it is renamed.

    ``_before_replace`` is a test hook called with the temporary path after it was fsync'ed and
    before the rename (the window in which a crash leaves only the temporary file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if _before_replace is not None:
            _before_replace(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_default(o: Any) -> Any:
    """JSON for the values fastep reports hold: tensors, numpy scalars/arrays, paths."""
    if hasattr(o, "tolist") and callable(o.tolist):  # torch.Tensor, numpy arrays and scalars
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def write_json_atomic(obj: Any, path: PathLike, *, indent: int = 2) -> Path:
    """``json.dump(obj)`` to ``path`` atomically (tensors and numpy values become lists/numbers)."""
    text = json.dumps(obj, indent=indent, default=json_default)
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def save_png_atomic(grid, path: PathLike) -> Path:
    """Save a float image tensor ``[3, H, W]`` in [0, 1] as an 8-bit PNG, atomically."""
    from PIL import Image

    arr = (grid.clamp(0, 1) * 255 + 0.5).to(dtype=_uint8()).permute(1, 2, 0).contiguous().cpu().numpy()
    return atomic_write(path, lambda fh: Image.fromarray(arr).save(fh, format="PNG"))


def _uint8():
    import torch

    return torch.uint8
