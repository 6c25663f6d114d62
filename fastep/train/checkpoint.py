"""The fastep checkpoint: one versioned schema, one writer, one reader, for every system and stage.

A checkpoint is a :class:`Checkpoint`; on disk it is ``torch.save(Checkpoint.to_dict())``,
written atomically (:func:`fastep.io.atomic_write`: temp file, fsync, rename) and read back
with ``torch.load(weights_only=True)`` and an explicit allow-list, so a checkpoint from an
untrusted source can never run code: it may hold tensors, numbers, strings, ``None``, lists,
tuples and dicts of those, and (only in files written before format 1) the numpy arrays of a
numpy RNG state.  Anything else is refused with a one-line :class:`CheckpointError`.

Format 1 (``format_version: 1``), the keys of the dict on disk:

``format_version``  1
``system``          the zoo entry that wrote it (``"step"``); :func:`fastep.zoo.load` finds the
                    system from it
``stage``           the system's stage name (StEP: ``"1"``, ``"2"``, ``"3"``, ``"mapper"``)
``step``, ``kimg``, ``total_steps``, ``complete``  progress of that stage
``configs``         ``{name: dataclasses.asdict(cfg)}`` (StEP: ``model``, ``train``, ``loss``,
                    ``stage1``, ``mapper``, ``mapper_net``, ``run``: the whole RunConfig);
                    each system reads its own
``weights``         ``{network name: state dict or None}`` (StEP: ``G E D G_ema E_ema mapper``)
``train_state``     the training step's full state (optimizers, EMA, LR scale) or ``None``
``rng``, ``rng_per_rank``  :func:`capture_rng_state` of rank 0 / of every rank under DDP
``loader``          data-loader position ``{epoch, pos, seed, world, batch_size}``
``history``, ``wall_s``, ``metrics``  what the run logged
``extras``          system-specific values (StEP: ``z_stats`` ``{mu, sigma}``, ``mapper_metrics``,
                    ``approach``)

Files written before format 1 (a flat dict with ``model_cfg``, ``G``, ``E``, ... at the top
level, no ``format_version``) are read as StEP checkpoints through :data:`LEGACY_KEYS`, the
only place where older key names are accepted.  Changing the format: bump
:data:`FORMAT_VERSION`, add the reading of the previous version to :func:`_upgrade`, and keep
a file of the previous version under ``tests/fixtures``.

:class:`CheckpointManager` keeps the last N numbered checkpoints of a run and finds the newest
one that loads.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..io import atomic_write

PathLike = Union[str, os.PathLike]

__all__ = [
    "FORMAT_VERSION", "Checkpoint", "CheckpointError", "CheckpointManager", "save_checkpoint",
    "load_checkpoint", "save_atomic", "capture_rng_state", "restore_rng_state", "load_models",
    "LEGACY_KEYS",
]

#: the version :class:`Checkpoint` writes
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, not a fastep checkpoint, or lacks what the caller needs."""


# ----------------------------------------------------------------------------- the schema

@dataclass
class Checkpoint:
    """One fastep checkpoint (see the module docstring for the meaning of every field)."""

    system: str
    stage: str
    step: int = 0
    kimg: float = 0.0
    total_steps: Optional[int] = None
    complete: bool = False
    configs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    weights: Dict[str, Optional[Dict[str, torch.Tensor]]] = field(default_factory=dict)
    train_state: Optional[Dict[str, Any]] = None
    rng: Optional[Dict[str, Any]] = None
    rng_per_rank: Optional[List[Dict[str, Any]]] = None
    loader: Optional[Dict[str, Any]] = None
    history: List[Dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    metrics: Optional[Dict[str, Any]] = None
    extras: Dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if not isinstance(self.system, str) or not self.system:
            raise ValueError(f"Checkpoint.system must be the name of a zoo system, got {self.system!r}")
        self.stage = str(self.stage)
        for name in ("configs", "weights", "extras"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"Checkpoint.{name} must be a dict, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> Dict[str, Any]:
        """The dict written to disk (no copies of the tensors)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "<dict>") -> "Checkpoint":
        """Read a dict of any supported format version; ``source`` names it in errors."""
        return _upgrade(data, source)

    def save(self, path: PathLike, *, _before_replace=None) -> Path:
        """Write atomically to ``path`` (the one writer of fastep checkpoints)."""
        data = self.to_dict()
        return atomic_write(path, lambda fh: torch.save(data, fh), _before_replace=_before_replace)

    @classmethod
    def load(cls, path: PathLike, map_location: Union[str, torch.device, None] = "cpu") -> "Checkpoint":
        """Read ``path`` (the one reader); :class:`CheckpointError` naming the file on failure."""
        return load_checkpoint(path, map_location)

    @property
    def resumable(self) -> bool:
        """True when it holds the full training state (``train_state``), not only weights."""
        return self.train_state is not None

    def weights_only(self) -> "Checkpoint":
        """A copy without what only resuming needs (``train_state``, RNG states): the weights,
        configs, progress and logs stay.  Every checkpoint of a run but the newest is kept like
        this, which roughly halves it (no optimizer moments)."""
        return dataclasses.replace(self, train_state=None, rng=None, rng_per_rank=None)

    def weights_for(self, name: str, ema: bool = False) -> Optional[Dict[str, torch.Tensor]]:
        """The state dict of network ``name`` (``ema``: its EMA copy ``name_ema`` when present)."""
        if ema and self.weights.get(f"{name}_ema") is not None:
            return self.weights[f"{name}_ema"]
        return self.weights.get(name)


def checkpoint_config(ckpt, name: str = "model") -> Dict[str, Any]:
    """The configuration dict ``ckpt.configs[name]`` a checkpoint was written with (a
    :class:`CheckpointError` when it has none); every zoo system reads its networks' config so."""
    data = ckpt.configs.get(name)
    if data is None:
        raise CheckpointError(f"the checkpoint has no {name} configuration (configs[{name!r}])")
    return data


_FIELDS = tuple(f.name for f in dataclasses.fields(Checkpoint))

#: Keys of the flat dicts written before format 1 (all by StEP) and where format 1 keeps them.
LEGACY_KEYS: Dict[str, Tuple[str, ...]] = {
    "model_cfg": ("configs", "model"), "train_cfg": ("configs", "train"), "loss_cfg": ("configs", "loss"),
    "stage1_cfg": ("configs", "stage1"), "mapper_cfg": ("configs", "mapper_net"),
    "G": ("weights", "G"), "E": ("weights", "E"), "D": ("weights", "D"), "G_ema": ("weights", "G_ema"),
    "E_ema": ("weights", "E_ema"), "mapper": ("weights", "mapper"),
    "z_stats": ("extras", "z_stats"), "mapper_metrics": ("extras", "mapper_metrics"),
    "approach": ("extras", "approach"),
    "stage": ("stage",), "step": ("step",), "kimg": ("kimg",), "total_steps": ("total_steps",),
    "complete": ("complete",), "rng": ("rng",), "rng_per_rank": ("rng_per_rank",), "loader": ("loader",),
    "train_state": ("train_state",), "history": ("history",), "wall_s": ("wall_s",), "metrics": ("metrics",),
}


def _reject_unknown(keys, known, source: str, what: str) -> None:
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise CheckpointError(f"{source}: unknown key(s) {unknown} in a {what}; known: {sorted(known)}")


def _from_format0(data: Dict[str, Any], source: str) -> Dict[str, Any]:
    """A format-0 dict (flat, StEP only) in the layout of format 1."""
    _reject_unknown(data, LEGACY_KEYS, source, "format-0 checkpoint")
    new: Dict[str, Any] = {"system": "step", "configs": {}, "weights": {}, "extras": {}}
    for key, value in data.items():
        where = LEGACY_KEYS[key]
        if len(where) == 1:
            new[where[0]] = value
        elif value is not None or where[0] == "weights":
            new[where[0]][where[1]] = value
    new.update(history=new.get("history") or [], wall_s=float(new.get("wall_s") or 0.0),
               step=int(new.get("step") or 0), kimg=float(new.get("kimg") or 0.0),
               complete=bool(new.get("complete", False)), format_version=FORMAT_VERSION)
    return new


def _upgrade(data: Any, source: str) -> Checkpoint:
    expected = ("expected a fastep checkpoint: a dict with 'format_version' and 'system', "
                "as written by `fastep train`")
    if not isinstance(data, dict):
        raise CheckpointError(f"{source} is not a fastep checkpoint ({expected}; it holds a {type(data).__name__})")
    version = data.get("format_version")
    if version is None:
        if "model_cfg" not in data or "stage" not in data:
            keys = ", ".join(sorted(map(str, data))[:6]) + (", ..." if len(data) > 6 else "")
            raise CheckpointError(f"{source} is not a fastep checkpoint ({expected}; it holds a dict with keys "
                                  f"{keys or 'none'})")
        data = _from_format0(data, source)
    elif version != FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format {version!r} is not supported by this fastep "
                              f"(it reads formats 0 to {FORMAT_VERSION}); update fastep")
    _reject_unknown(data, _FIELDS, source, f"format-{FORMAT_VERSION} checkpoint")
    missing = [k for k in ("system", "stage") if k not in data]
    if missing:
        raise CheckpointError(f"{source}: the checkpoint lacks {missing}")
    try:
        return Checkpoint(**data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: malformed checkpoint ({err})") from None


# ----------------------------------------------------------------------------- reading and writing

def _numpy_globals() -> list:
    """What the numpy RNG state of a format-0 checkpoint needs: a uint32 array (nothing else)."""
    names = [np.ndarray, np.dtype]
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    names.append(_reconstruct)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None and hasattr(dtypes, "UInt32DType"):
        names.append(dtypes.UInt32DType)
    return names


#: What ``torch.load(weights_only=True)`` may build beyond tensors and plain Python containers.
SAFE_GLOBALS = _numpy_globals()


def save_checkpoint(ckpt: Checkpoint, path: PathLike, *, _before_replace=None) -> Path:
    """``ckpt.save(path)``."""
    if not isinstance(ckpt, Checkpoint):
        raise TypeError(f"save_checkpoint writes a Checkpoint, got {type(ckpt).__name__}")
    return ckpt.save(path, _before_replace=_before_replace)


def save_atomic(obj: Any, path: PathLike, *, _before_replace=None) -> Path:
    """``torch.save(obj, path)`` atomically (for tensors that are not a checkpoint, e.g. caches)."""
    return atomic_write(path, lambda fh: torch.save(obj, fh), _before_replace=_before_replace)


def _refusal(err: Exception) -> str:
    text = str(err)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"GLOBAL ([\w.]+)", text)
    what = f"a Python object `{m.group(1)}`" if m else "Python objects"
    return f"it holds {what}, which a fastep checkpoint never does (refused: loading it could run code)"


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device, None] = "cpu") -> Checkpoint:
    """Read a checkpoint of any supported format; :class:`CheckpointError` naming the file on failure."""
    path = Path(path)
    src = f"checkpoint {str(path)!r}"
    if not path.is_file():
        raise CheckpointError(f"{src} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err) or "GLOBAL" in str(err):
            raise CheckpointError(f"{src} is not a fastep checkpoint: {_refusal(err)}") from None
        raise CheckpointError(f"{src} is unreadable ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    except Exception as err:  # noqa: BLE001 - a torn or foreign file fails in many ways inside torch.load
        first = (str(err).splitlines() or [""])[0]
        raise CheckpointError(f"{src} is unreadable: not a complete torch.save file "
                              f"({type(err).__name__}: {first})") from None
    return _upgrade(data, src)


# ----------------------------------------------------------------------------- RNG state

def capture_rng_state() -> Dict[str, Any]:
    """The state of every random generator training touches: torch CPU, CUDA, numpy, random.

    The numpy state is stored as plain values and a tensor (no numpy objects in checkpoints)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Optional[Dict[str, Any]]) -> None:
    """Inverse of :func:`capture_rng_state` (``None`` is a no-op; format-0 numpy tuples work too)."""
    if not state:
        return
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].cpu())
    npst = state.get("numpy")
    if isinstance(npst, dict):
        np.random.set_state((npst["kind"], npst["keys"].cpu().numpy().astype(np.uint32), npst["pos"],
                             npst["has_gauss"], npst["cached_gaussian"]))
    elif npst is not None:
        np.random.set_state(npst)
    py = state.get("python")
    if py is not None:
        version, internal, gauss = py
        random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i].cpu(), i)


# ----------------------------------------------------------------------------- manager

_CKPT_RE = re.compile(r"^(?P<prefix>.+)-(?P<step>\d{8})\.pt$")


class CheckpointManager:
    """Numbered checkpoints ``<prefix>-<step:08d>.pt`` in one folder, keeping the last ``keep``.

    ``save`` is atomic and prunes older checkpoints only after the new one is in place, so the
    folder always holds at least one complete checkpoint once the first save returned.  Only the
    newest checkpoint keeps the full resumable state; ``save`` rewrites the older ones it keeps
    as :meth:`Checkpoint.weights_only` (``slim_older=False`` keeps them whole), and
    :meth:`slim_all` does it to every one (a finished stage, whose ``final.pt`` is the state).
    ``latest()`` returns the newest checkpoint that actually loads (a file that fails to load is
    reported and skipped, never silently used).
    """

    def __init__(self, folder: PathLike, keep: int = 3, prefix: str = "ckpt"):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty file-name prefix, got {prefix!r}")
        self.folder = Path(folder)
        self.keep = int(keep)
        self.prefix = prefix
        self._slim: set = set()  # files known to be weights only (not read again)

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

    def save(self, ckpt: Checkpoint, step: int, *, slim_older: bool = True, _before_replace=None) -> Path:
        path = save_checkpoint(ckpt, self.path_for(step), _before_replace=_before_replace)
        self.prune()
        if slim_older:
            self.slim_all(except_path=path)
        return path

    def slim_all(self, *, except_path: Optional[PathLike] = None) -> None:
        """Rewrite every numbered checkpoint (but ``except_path``) as weights only (atomic; files
        already slim, or that fail to load, are left as they are)."""
        keep = Path(except_path) if except_path is not None else None
        for _, p in self.list():
            if (keep is not None and p == keep) or p in self._slim:
                continue
            try:
                ck = load_checkpoint(p)
            except CheckpointError:
                continue
            if ck.resumable:
                save_checkpoint(ck.weights_only(), p)
            self._slim.add(p)

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

    def latest(self, map_location="cpu", *, warn=print) -> Optional[Tuple[Path, Checkpoint]]:
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

def load_models(path: PathLike, device: Union[str, torch.device] = "cpu", ema: bool = True):
    """StEP's networks of a checkpoint, read through :func:`fastep.zoo.load`.

    Returns ``(G, E, model_cfg, extras)``: ``G`` and ``E`` in eval mode on ``device`` with the EMA
    weights when ``ema`` (and the checkpoint has them), the model config, and ``extras`` with
    ``"mapper"`` (or ``None``), ``"z_stats"`` (``{"mu", "sigma"}`` on ``device`` or ``None``),
    ``"stage"``, ``"step"``, ``"kimg"``, ``"train_cfg"``, ``"metrics"`` and ``"path"``.
    """
    from ..zoo import load

    tr = load(path, device=device, ema=ema)
    return tr.G, tr.E, tr.model_cfg, tr.extras
