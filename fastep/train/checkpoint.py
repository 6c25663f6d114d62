"""Atomic training checkpoints, RNG capture/restore, and loading trained models.

Checkpoint format (a plain dict written with :func:`torch.save`, read with ``torch.load``):

``"model_cfg"``  ``dataclasses.asdict(ModelConfig)``
``"train_cfg"``  ``dataclasses.asdict(TrainConfig)`` (or a plain dict)
``"G"``, ``"E"``, ``"D"``, ``"G_ema"``, ``"E_ema"``  state dicts (missing ones are ``None``)
``"step"``, ``"kimg"``  progress of the stage when the checkpoint was written
``"rng"``  :func:`capture_rng_state` of rank 0 (``"rng_per_rank"``: all ranks under DDP)
``"stage"``  ``"1"``, ``"2"``, ``"3"`` or ``"mapper"``; ``"complete"``: the stage finished
optional: ``"train_state"`` (the full :class:`~fastep.train.step.TrainStep` state: optimizers,
EMA, LR scale), ``"loader"`` (epoch / position of the data loader), ``"mapper"`` (state dict),
``"mapper_cfg"``, ``"z_stats"`` (``{"mu", "sigma"}``), ``"metrics"``.

Writes are atomic: the bytes go to a temporary file in the same folder, are flushed and
fsync'ed, then :func:`os.replace` moves them over the final name and the folder is fsync'ed, so
a crash (even ``kill -9``) at any moment leaves either the old file or the new one, never a torn
one.  :class:`CheckpointManager` keeps the last N checkpoints of a run and finds the newest one
that loads.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]

__all__ = [
    "save_atomic", "load_checkpoint", "CheckpointManager", "capture_rng_state",
    "restore_rng_state", "load_models", "CheckpointError",
]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or lacks the keys the caller needs."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_atomic(obj: Any, path: PathLike, *, _before_replace=None) -> Path:
    """``torch.save(obj, path)`` atomically: temp file in the same folder, fsync, rename.

    ``_before_replace`` is a test hook called with the temporary path after it was fsync'ed and
    before the rename (the window in which a crash leaves only a stray ``.tmp`` file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if _before_replace is not None:
            _before_replace(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device, None] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint dict; raises :class:`CheckpointError` naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        # weights_only=False: the checkpoint holds numpy / python RNG states and config dicts.
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable "
                              f"({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


# ----------------------------------------------------------------------------- RNG state

def capture_rng_state() -> Dict[str, Any]:
    """The state of every random generator training touches: torch CPU, CUDA, numpy, random."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Optional[Dict[str, Any]]) -> None:
    """Inverse of :func:`capture_rng_state` (``None`` is a no-op)."""
    if not state:
        return
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].cpu())
    if state.get("numpy") is not None:
        np.random.set_state(state["numpy"])
    if state.get("python") is not None:
        random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i].cpu(), i)


# ----------------------------------------------------------------------------- manager

_CKPT_RE = re.compile(r"^(?P<prefix>.+)-(?P<step>\d{8})\.pt$")


class CheckpointManager:
    """Numbered checkpoints ``<prefix>-<step:08d>.pt`` in one folder, keeping the last ``keep``.

    ``save`` is atomic (:func:`save_atomic`) and prunes older checkpoints only after the new
    one is in place, so the folder always holds at least one complete checkpoint once the first
    save returned.  ``latest()`` returns the newest checkpoint that actually loads (a file that
    fails to load is reported and skipped, never silently used).
    """

    def __init__(self, folder: PathLike, keep: int = 3, prefix: str = "ckpt"):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty file-name prefix, got {prefix!r}")
        self.folder = Path(folder)
        self.keep = int(keep)
        self.prefix = prefix

    def path_for(self, step: int) -> Path:
        return self.folder / f"{self.prefix}-{int(step):08d}.pt"

    def list(self) -> List[Tuple[int, Path]]:
        """(step, path) of every numbered checkpoint, oldest first."""
        if not self.folder.is_dir():
            return []
        out = []
        for p in self.folder.iterdir():
            m = _CKPT_RE.match(p.name)
            if m and m.group("prefix") == self.prefix and p.is_file():
                out.append((int(m.group("step")), p))
        return sorted(out)

    def save(self, state: Dict[str, Any], step: int, *, _before_replace=None) -> Path:
        path = save_atomic(state, self.path_for(step), _before_replace=_before_replace)
        self.prune()
        return path

    def prune(self) -> None:
        ckpts = self.list()
        for _, p in ckpts[:-self.keep]:
            try:
                p.unlink()
            except OSError:
                pass
        # Stray temporaries from a crash mid-save.
        for p in self.folder.glob(f".{self.prefix}-*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass

    def latest(self, map_location="cpu", *, warn=print) -> Optional[Tuple[Path, Dict[str, Any]]]:
        """(path, checkpoint) of the newest loadable checkpoint, or ``None`` if there is none."""
        for _, p in reversed(self.list()):
            try:
                return p, load_checkpoint(p, map_location)
            except CheckpointError as err:
                if warn is not None:
                    warn(f"fastep: skipping {err}")
        return None

    def latest_path(self) -> Optional[Path]:
        ckpts = self.list()
        return ckpts[-1][1] if ckpts else None


# ----------------------------------------------------------------------------- loading models

def _cfg_from_dict(cls, data: Dict[str, Any]):
    """Build dataclass ``cls`` from ``data``, ignoring keys the class does not know."""
    if dataclasses.is_dataclass(data):
        return data
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in dict(data).items() if k in names}
    for f in dataclasses.fields(cls):  # tuples come back from asdict as tuples, lists as lists
        if f.name in kwargs and isinstance(kwargs[f.name], list) and "Tuple" in str(f.type):
            kwargs[f.name] = tuple(kwargs[f.name])
    return cls(**kwargs)


def model_config_from_checkpoint(ckpt: Dict[str, Any]):
    from .config import ModelConfig

    if "model_cfg" not in ckpt:
        raise CheckpointError("checkpoint has no 'model_cfg' entry")
    return _cfg_from_dict(ModelConfig, ckpt["model_cfg"])


def load_models(path: PathLike, device: Union[str, torch.device] = "cpu", ema: bool = True):
    """Load the trained generator and style encoder of a checkpoint for inference.

    Returns ``(G, E, model_cfg, extras)``: ``G`` and ``E`` in eval mode on ``device`` with the EMA
    weights when ``ema`` (and the checkpoint has them; otherwise the raw weights), the
    :class:`~fastep.train.config.ModelConfig`, and ``extras``: a dict with ``"mapper"`` (a
    :class:`~fastep.models.mapper.Mapper` in eval mode, or ``None``), ``"z_stats"``
    (``{"mu","sigma"}`` tensors on ``device`` or ``None``), ``"stage"``, ``"step"``, ``"kimg"``,
    ``"train_cfg"``, ``"metrics"`` and ``"path"``.
    """
    from .step import build_models

    device = torch.device(device)
    ckpt = load_checkpoint(path, map_location="cpu")
    model_cfg = model_config_from_checkpoint(ckpt)
    models = build_models(model_cfg, device)
    G, E = models.G, models.E
    for name, net in (("G", G), ("E", E)):
        key = f"{name}_ema" if ema and ckpt.get(f"{name}_ema") is not None else name
        sd = ckpt.get(key)
        if sd is None:
            if name == "G" and ckpt.get("stage") == "1":
                continue  # a stage-1 checkpoint has only E
            raise CheckpointError(f"checkpoint {str(path)!r} has no weights for {name} (key {key!r})")
        net.load_state_dict(sd)
        net.eval()
    extras: Dict[str, Any] = {k: ckpt.get(k) for k in ("stage", "step", "kimg", "train_cfg", "metrics")}
    extras["path"] = str(path)
    extras["mapper"] = None
    if ckpt.get("mapper") is not None:
        from ..models.mapper import Mapper

        mcfg = ckpt.get("mapper_cfg") or {}
        try:
            mapper = Mapper(**mcfg)
        except TypeError:
            mapper = Mapper()
        mapper.load_state_dict(ckpt["mapper"])
        extras["mapper"] = mapper.to(device).eval()
    zs = ckpt.get("z_stats")
    extras["z_stats"] = None if zs is None else {k: torch.as_tensor(v).to(device) for k, v in zs.items()}
    return G, E, model_cfg, extras
