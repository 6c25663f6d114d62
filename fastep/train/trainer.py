"""The training loop of stages 2 and 3: LR schedule, kimg accounting, logging, checkpoints,
resume, NaN stop and DistributedDataParallel.

The optimisation itself lives in :class:`fastep.train.step.TrainStep` (one D update and one
G/E update per call, EMA included, returning detached loss tensors without a host sync).  The
:class:`Trainer` drives it:

* **progress in kimg** (thousands of training images, summed over all ranks), a
  constant-then-linear-decay learning rate through ``step.set_lr_scale``;
* **no host sync per step**: loss tensors are kept on the device and inspected only every
  ``log_every`` steps (and before every checkpoint), where a NaN/inf stops training with a
  :class:`NonFiniteLossError` naming the loss and the exact step; the last good checkpoint is
  never overwritten by bad weights;
* **checkpoints** every ``ckpt_every_kimg`` (atomic, the last ``keep`` kept) holding the model
  weights (CONTRACTS format), the full step state (optimizers, EMA, LR scale), every RNG
  (torch, CUDA, numpy, python; per rank under DDP) and the data-loader position, so that a
  resumed run reproduces an uninterrupted one bit for bit;
* **data order** from :func:`fastep.data.make_loader` (a ``DistributedSampler`` that can skip
  into an epoch) and per-sample augmentation seeds fixed by (seed, epoch, index)
  (:class:`fastep.data.SeededDataset`), so the batches do not depend on worker count or on
  where a run was resumed;
* **logging** on rank 0 only: a tqdm bar with kimg/s and losses, TensorBoard scalars and image
  grids (when the ``tensorboard`` package is installed; otherwise a one-line note), sample grids
  as PNG, and a metrics JSON.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from ..data.loader import SeededDataset, make_loader
from .checkpoint import (CheckpointManager, capture_rng_state, load_checkpoint, restore_rng_state,
                         save_atomic)

__all__ = [
    "Trainer", "NonFiniteLossError", "TrainingInterrupted", "SeededDataset",
    "lr_scale_at", "init_distributed", "dist_info", "is_main_process", "sample_grid",
    "save_image_grid", "write_json_atomic", "TensorBoardLogger", "model_weights",
]


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM / Ctrl-C asked training to stop: a checkpoint was written at ``.step``
    (``.checkpoint``); the same command with ``--resume`` continues bit for bit."""

    def __init__(self, step: int, checkpoint: Optional[str]):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"training interrupted at step {step}; checkpoint {checkpoint} written; "
                         "run the same command with --resume to continue")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or inf loss; ``.loss``, ``.step``, ``.value``, ``.checkpoint``."""

    def __init__(self, loss: str, step: int, value: float, stage: str = "", checkpoint: Optional[str] = None,
                 kimg: Optional[float] = None):
        self.loss, self.step, self.value, self.stage, self.checkpoint = loss, step, value, stage, checkpoint
        where = f"step {step}" + (f" ({kimg:.3f} kimg)" if kimg is not None else "")
        kept = (f"the last good checkpoint {checkpoint} is kept" if checkpoint
                else "no checkpoint had been written yet")
        super().__init__(f"non-finite loss: {loss} = {value} at {where}"
                         + (f" of stage {stage}" if stage else "")
                         + f"; training stopped and {kept}. Lower the learning rate, "
                           "disable AMP (--no-amp) or resume from that checkpoint.")


# ----------------------------------------------------------------------------- distributed

def dist_info() -> Tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return dist_info()[0] == 0


# Rank 0 alone runs stage 1 (mining + triplet training) and the mapper while the others wait at
# a barrier: give collectives far more than the default 10 minutes.
_DIST_TIMEOUT = datetime.timedelta(hours=6)


def init_distributed(device: Union[str, torch.device, None] = None) -> Tuple[torch.device, int, int]:
    """Initialise torch.distributed from torchrun's environment (no-op without it).

    NCCL when the device is CUDA (each process takes ``cuda:LOCAL_RANK``), gloo on CPU.  Returns
    ``(device, rank, world_size)``.  Without ``WORLD_SIZE``>1 in the environment, nothing is
    initialised and ``device`` is returned as given (default: CUDA if available, else CPU).
    """
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return device, 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
            dist.init_process_group("nccl", device_id=device, timeout=_DIST_TIMEOUT)
        else:
            dist.init_process_group("gloo", timeout=_DIST_TIMEOUT)
    elif device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return device, dist.get_rank(), dist.get_world_size()


def _unpack_batch(batch) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        return batch["A"], batch["B"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"a batch must be a dict with 'A' and 'B' or an (A, B) pair, got {type(batch).__name__}")


# ----------------------------------------------------------------------------- schedule

def lr_scale_at(kimg_done: float, total_kimg: float, decay_start: float = 0.5, final: float = 0.0) -> float:
    """Constant-then-linear-decay multiplier: 1 until ``decay_start * total_kimg``, then linear
    down to ``final`` at ``total_kimg``."""
    if total_kimg <= 0:
        return 1.0
    start = decay_start * total_kimg
    if kimg_done <= start or decay_start >= 1.0:
        return 1.0
    frac = min(1.0, (kimg_done - start) / max(total_kimg - start, 1e-12))
    return 1.0 + (final - 1.0) * frac


# ----------------------------------------------------------------------------- logging helpers

def write_json_atomic(obj: Any, path: Union[str, os.PathLike]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, default=_json_default)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


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


def _unwrap(m):
    """The plain module behind DDP / torch.compile wrappers."""
    for _ in range(4):
        if hasattr(m, "_orig_mod"):
            m = m._orig_mod
        elif hasattr(m, "module") and isinstance(m, torch.nn.parallel.DistributedDataParallel):
            m = m.module
        else:
            break
    return m


def _find(obj, names: Sequence[str]):
    for n in names:
        cur = obj
        ok = True
        for part in n.split("."):
            if cur is None:
                ok = False
                break
            if isinstance(cur, dict):
                cur = cur.get(part)
            else:
                cur = getattr(cur, part, None)
        if ok and cur is not None:
            return cur
    return None


def model_weights(step) -> Dict[str, Optional[torch.nn.Module]]:
    """Find G, E, D, G_ema, E_ema (plain modules) on a TrainStep-like object."""
    out = {}
    for key in ("G", "E", "D"):
        out[key] = _find(step, [f"models.{key}", key, key.lower()])
    out["G_ema"] = _find(step, ["G_ema", "ema.G", "ema_models.G", "g_ema", "ema_G"])
    out["E_ema"] = _find(step, ["E_ema", "ema.E", "ema_models.E", "e_ema", "ema_E"])
    return {k: (None if v is None else _unwrap(v)) for k, v in out.items()}


@torch.no_grad()
def sample_grid(G, E, A: torch.Tensor, B: torch.Tensor, z_dim: Optional[int] = None,
                seed: int = 0) -> torch.Tensor:
    """A [3, H', W'] grid in [0, 1]: rows A, B, G(A, E(B)) (reconstruction), G(A, E(B rolled))
    (style transfer from the next column's B) and, with ``z_dim``, G(A, z ~ N(0, I))."""
    from torchvision.utils import make_grid

    was_g, was_e = G.training, E.training
    G.eval()
    E.eval()
    try:
        dev = next(G.parameters()).device
        A = A.to(dev, torch.float32)
        B = B.to(dev, torch.float32)
        z = E(B)
        if isinstance(z, (tuple, list)):
            z = z[0]
        rows = [A, B, G(A, z), G(A, z.roll(1, 0))]
        if z_dim:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            zr = torch.randn(A.shape[0], z_dim, generator=gen).to(dev)
            rows.append(G(A, zr))
        imgs = torch.cat([r.float().clamp(-1, 1) for r in rows], 0)
        return make_grid((imgs + 1) / 2, nrow=A.shape[0], padding=2, pad_value=1.0).cpu()
    finally:
        G.train(was_g)
        E.train(was_e)


def save_image_grid(grid: torch.Tensor, path: Union[str, os.PathLike]) -> Path:
    """Save a [3, H, W] float grid in [0, 1] as PNG (atomic)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (grid.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- trainer

class Trainer:
    """Drives a :class:`~fastep.train.step.TrainStep` over a data set for ``kimg`` thousand images.

    Parameters
    ----------
    step : the step object: ``step(A, B) -> dict[str, Tensor]`` (detached, on device),
        ``state_dict()``, ``load_state_dict(sd)``, ``set_lr_scale(float)``; its ``models`` (G, E,
        D) and EMA copies are found by :func:`model_weights` for checkpoints and grids.
    dataset : map-style data set of dicts with ``"A"``, ``"B"`` in [-1, 1] (or (A, B) pairs).
    stage : ``"2"`` or ``"3"`` (a label for logs, checkpoint names and the checkpoint).
    batch_size : per-process batch; kimg counts ``batch_size * world_size`` images per step.
    kimg : length of the stage in thousands of images.
    out_dir : folder of this stage (checkpoints, samples/, tb/, metrics.json).
    ckpt_meta : extra entries for every checkpoint (``model_cfg``, ``train_cfg`` dicts, ...).
    lr_decay_start : fraction of the stage after which the LR decays linearly to 0.
    log_every : steps between host syncs (loss check, progress bar, scalars).
    ckpt_every_kimg, image_every_kimg : intervals (0: only at the end).
    keep : number of checkpoints kept.
    num_workers : data-loader workers (per process).
    z_dim : code size for the random-z row of sample grids (``None``: no such row).
    """

    def __init__(self, step, dataset, *, stage: str, batch_size: int, kimg: float,
                 out_dir: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                 seed: int = 0, ckpt_meta: Optional[Dict[str, Any]] = None,
                 lr_decay_start: float = 0.5, log_every: int = 20, ckpt_every_kimg: float = 0.0,
                 image_every_kimg: float = 0.0, keep: int = 3, num_workers: int = 0,
                 z_dim: Optional[int] = None, progress: bool = True, tensorboard: bool = True,
                 n_grid: int = 8, max_steps: Optional[int] = None, log: Callable[[str], None] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not (kimg > 0):
            raise ValueError(f"kimg must be > 0, got {kimg}")
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.step = step
        self.stage = str(stage)
        self.batch_size = int(batch_size)
        self.kimg = float(kimg)
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.ckpt_meta = dict(ckpt_meta or {})
        self.lr_decay_start = float(lr_decay_start)
        self.log_every = int(log_every)
        self.keep = int(keep)
        self.num_workers = int(num_workers)
        self.z_dim = z_dim
        self.n_grid = int(n_grid)
        self.rank, self.world = dist_info()
        self.main = self.rank == 0
        self.progress = progress and self.main
        self.tensorboard = bool(tensorboard)
        self._log = log if log is not None else (lambda s: print(s, file=sys.stderr, flush=True))

        self.images_per_step = self.batch_size * self.world
        self.total_steps = max(1, math.ceil(self.kimg * 1000 / self.images_per_step))
        if max_steps is not None:  # a hard stop (for tests / smoke runs), schedule unchanged
            self.total_steps = min(self.total_steps, int(max_steps))
        self.ckpt_every = self._steps_for(ckpt_every_kimg)
        self.image_every = self._steps_for(image_every_kimg)

        self.data = SeededDataset(dataset, seed=self.seed)
        if len(dataset) < self.batch_size * self.world:
            raise ValueError(f"the data set has {len(dataset)} images, fewer than one batch of "
                             f"{self.batch_size} per process x {self.world} processes; use a smaller "
                             "--batch or more data")
        # persistent_workers=False: the workers must see SeededDataset.epoch change
        self.loader = make_loader(self.data, self.batch_size, shuffle=True, workers=self.num_workers,
                                  pin_memory=self.device.type == "cuda", drop_last=True,
                                  distributed=self.world > 1, seed=self.seed, num_replicas=self.world,
                                  rank=self.rank, persistent_workers=False)
        self.sampler = self.loader.sampler
        self._loader_gen = self.loader.generator
        self.batches_per_epoch = len(self.loader)
        self.ckpts = CheckpointManager(self.out_dir / "checkpoints", keep=self.keep, prefix=f"stage{self.stage}")

        # progress state (what a checkpoint saves)
        self.step_idx = 0
        self.epoch = 0
        self.pos = 0  # batches of this epoch already consumed
        self.history: List[Dict[str, Any]] = []
        self.last_ckpt: Optional[str] = None
        self._pending: List[torch.Tensor] = []
        self._names: Optional[List[str]] = None
        self._saved_step = -1
        self.tb = TensorBoardLogger(None, enabled=False)
        self._stop_signal = False  # set by SIGTERM / SIGINT (checked at the next log interval)
        self._stop_agreed = False
        self._pending_start = 0
        self._lr_scale: Optional[float] = None
        self._grid_batch = None
        self.wall_s = 0.0

    # -- helpers -------------------------------------------------------------------------------
    def _steps_for(self, every_kimg: float) -> int:
        if not every_kimg or every_kimg <= 0:
            return 0
        return max(1, round(every_kimg * 1000 / self.images_per_step))

    def kimg_at(self, step_idx: int) -> float:
        return step_idx * self.images_per_step / 1000.0

    def _set_lr(self) -> None:
        s = lr_scale_at(self.kimg_at(self.step_idx), self.kimg, self.lr_decay_start)
        if s != self._lr_scale:
            if hasattr(self.step, "set_lr_scale"):
                self.step.set_lr_scale(s)
            self._lr_scale = s

    def _row(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The step's losses as one new [k] tensor on the device (a copy: safe even when the step
        returns CUDA-graph output buffers that the next replay overwrites); no host sync."""
        if self._names is None:
            self._names = sorted(losses)
        return torch.stack([losses[k].detach().float().reshape(()) for k in self._names])

    def _flush(self) -> Optional[Dict[str, float]]:
        """One host sync: check every pending loss for NaN/inf (all ranks agree) and average."""
        if not self._pending:
            return None
        names = self._names
        vals = torch.stack(self._pending)  # [n, k]
        if self.world > 1:
            # one collective: the losses (a NaN on any rank reaches every rank) + the stop flags
            n, k = vals.shape
            flag = torch.full((1,), float(self._stop_signal), device=vals.device)
            payload = torch.cat([vals.reshape(-1), flag]).to(self.device)
            dist.all_reduce(payload)
            payload = payload.cpu()
            vals = payload[:-1].reshape(n, k) / self.world
            self._stop_agreed = bool(payload[-1] > 0)
        else:
            vals = vals.cpu()
            self._stop_agreed = bool(self._stop_signal)
        start, self._pending = self._pending_start, []
        self._pending_start = self.step_idx
        bad = ~torch.isfinite(vals)
        if bad.any():
            row, col = (int(i) for i in bad.nonzero()[0])
            step_no = start + row + 1
            err = NonFiniteLossError(names[col], step_no, float(vals[row, col]), self.stage,
                                     self.last_ckpt, kimg=self.kimg_at(step_no))
            self.history.append({"step": step_no, "kimg": self.kimg_at(step_no), "error": str(err)})
            raise err
        mean = vals.mean(0)
        return {k: float(v) for k, v in zip(names, mean)}

    def state(self) -> Dict[str, Any]:
        """The checkpoint dict (CONTRACTS format) of the current state; collective under DDP."""
        rng = capture_rng_state()
        rng_all = None
        if self.world > 1:
            rng_all = [None] * self.world
            dist.all_gather_object(rng_all, rng)
        w = model_weights(self.step)
        ckpt = dict(self.ckpt_meta)
        # The modules' own state-dict tensors (no copies): torch.save writes each storage once, so
        # these top-level entries and the same tensors inside train_state cost nothing extra.
        for k in ("G", "E", "D", "G_ema", "E_ema"):
            ckpt[k] = None if w[k] is None else w[k].state_dict()
        ckpt.update({
            "stage": self.stage,
            "step": self.step_idx,
            "kimg": self.kimg_at(self.step_idx),
            "total_steps": self.total_steps,
            "complete": self.step_idx >= self.total_steps,
            "rng": rng,
            "rng_per_rank": rng_all,
            "loader": {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "world": self.world,
                       "batch_size": self.batch_size},
            "train_state": self.step.state_dict() if hasattr(self.step, "state_dict") else None,
            "history": list(self.history),
            "wall_s": self.wall_s,
        })
        return ckpt

    def save_checkpoint(self, _before_replace=None) -> Optional[Path]:
        """Check pending losses, then write a checkpoint (rank 0); collective under DDP."""
        logged = self._flush()
        if logged is not None:
            self._record(logged)
        ckpt = self.state()
        path = None
        if self.main:
            path = self.ckpts.save(ckpt, self.step_idx, _before_replace=_before_replace)
        self.last_ckpt = str(self.ckpts.path_for(self.step_idx))
        self._saved_step = self.step_idx
        if self.world > 1:
            dist.barrier()
        return path

    def load_state(self, ckpt: Dict[str, Any]) -> None:
        """Restore a checkpoint written by :meth:`state` (same stage, batch and world size)."""
        if str(ckpt.get("stage")) != self.stage:
            raise ValueError(f"checkpoint is of stage {ckpt.get('stage')!r}, this trainer runs stage {self.stage!r}")
        ld = ckpt.get("loader") or {}
        if ld.get("batch_size", self.batch_size) != self.batch_size or ld.get("world", self.world) != self.world:
            self._log(f"fastep: warning: resuming with batch {self.batch_size} x {self.world} processes; the "
                      f"checkpoint used {ld.get('batch_size')} x {ld.get('world')}: the data order will differ")
        if ckpt.get("train_state") is not None:
            self.step.load_state_dict(ckpt["train_state"])
        else:
            w = model_weights(self.step)
            for k in ("G", "E", "D", "G_ema", "E_ema"):
                if w[k] is not None and ckpt.get(k) is not None:
                    w[k].load_state_dict(ckpt[k])
        self.step_idx = int(ckpt["step"])
        self._pending_start = self.step_idx
        self.epoch = int(ld.get("epoch", 0))
        self.pos = int(ld.get("pos", 0))
        self.history = list(ckpt.get("history") or [])
        self.wall_s = float(ckpt.get("wall_s", 0.0))
        per_rank = ckpt.get("rng_per_rank")
        if per_rank and len(per_rank) == self.world:
            restore_rng_state(per_rank[self.rank])
        else:
            restore_rng_state(ckpt.get("rng"))
        self._lr_scale = None

    def resume(self, path: Union[str, os.PathLike, None] = None) -> Optional[str]:
        """Load ``path``, or the newest loadable checkpoint of this stage; returns its path."""
        if path is None:
            found = self.ckpts.latest(warn=self._log if self.main else None)
            if found is None:
                return None
            path, ckpt = found
        else:
            ckpt = load_checkpoint(path)
        self.load_state(ckpt)
        self.last_ckpt = str(path)
        if self.main:
            self._log(f"fastep: resumed stage {self.stage} from {path} at step {self.step_idx} "
                      f"({self.kimg_at(self.step_idx):.3f} kimg)")
        return str(path)

    def _record(self, losses: Dict[str, float]) -> None:
        entry = {"step": self.step_idx, "kimg": round(self.kimg_at(self.step_idx), 6),
                 "lr_scale": self._lr_scale, "losses": losses}
        self.history.append(entry)
        if self.main:
            self.tb.scalars(losses, self.step_idx, prefix=f"stage{self.stage}/loss/")
            self.tb.scalars({"lr_scale": self._lr_scale or 1.0}, self.step_idx, prefix=f"stage{self.stage}/")

    def _grid(self) -> None:
        if not self.main:
            return
        w = model_weights(self.step)
        G = w["G_ema"] or w["G"]
        E = w["E_ema"] or w["E"]
        if G is None or E is None:
            return
        if self._grid_batch is None:
            # seeded per item, global RNG untouched: the grid never perturbs the training stream
            fixed = SeededDataset(self.data.dataset, seed=self.seed)
            items = [fixed[i] for i in range(min(self.n_grid, len(fixed)))]
            A = torch.stack([_unpack_batch(it)[0] for it in items])
            B = torch.stack([_unpack_batch(it)[1] for it in items])
            self._grid_batch = (A, B)
        with torch.random.fork_rng(devices=[]):
            grid = sample_grid(G, E, *self._grid_batch, z_dim=self.z_dim, seed=self.seed)
        name = f"stage{self.stage}_{self.step_idx:08d}.png"
        save_image_grid(grid, self.out_dir / "samples" / name)
        self.tb.image(f"stage{self.stage}/samples", grid, self.step_idx)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: Union[bool, str, os.PathLike] = False, *, _after_step=None) -> Dict[str, Any]:
        """Train to ``total_steps``; returns the metrics dict (also written to metrics.json).

        ``resume``: ``True`` continues from the newest checkpoint of this stage in ``out_dir``
        (starting fresh when there is none), a path resumes from that file.
        """
        if resume:
            self.resume(None if resume is True else resume)
        self.tb = TensorBoardLogger(self.out_dir / "tb", enabled=self.main and self.tensorboard, note=self._log)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=round(self.kimg_at(self.total_steps), 3), initial=round(self.kimg_at(self.step_idx), 3),
                       unit="kimg", desc=f"stage {self.stage}", dynamic_ncols=True, leave=True,
                       bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]")
        t0 = time.perf_counter()
        wall0 = self.wall_s
        last_t, last_step = t0, self.step_idx
        if self.step_idx == 0 and self.image_every:
            self._grid()
        old_handlers = self._install_signal_handlers()
        try:
            while self.step_idx < self.total_steps:
                self.data.epoch = self.epoch
                self.sampler.set_epoch(self.epoch)
                self.sampler.skip_next(self.pos * self.batch_size)
                self._loader_gen.manual_seed(self.seed * 1000 + self.epoch)
                for batch in self.loader:
                    A, B = _unpack_batch(batch)
                    A = A.to(self.device, non_blocking=True)
                    B = B.to(self.device, non_blocking=True)
                    self._set_lr()
                    losses = self.step(A, B)
                    self._pending.append(self._row(losses))
                    self.step_idx += 1
                    self.pos += 1
                    if self.pos >= self.batches_per_epoch:
                        self.epoch, self.pos = self.epoch + 1, 0
                    done = self.step_idx >= self.total_steps
                    if _after_step is not None:
                        _after_step(self)
                    if self.step_idx % self.log_every == 0 or done:
                        logged = self._flush()
                        if logged is not None:
                            self._record(logged)
                            now = time.perf_counter()
                            rate = self.kimg_at(self.step_idx - last_step) / max(now - last_t, 1e-9)
                            last_t, last_step = now, self.step_idx
                            if bar is not None:
                                bar.n = round(self.kimg_at(self.step_idx), 3)
                                bar.set_postfix_str(f"{rate:.3g} kimg/s " + " ".join(
                                    f"{k}={v:.4g}" for k, v in logged.items()), refresh=True)
                            self.tb.scalars({"kimg_per_s": rate}, self.step_idx, prefix=f"stage{self.stage}/")
                    if self.image_every and (self.step_idx % self.image_every == 0 or done):
                        self._grid()
                    if (self.ckpt_every and self.step_idx % self.ckpt_every == 0) or done:
                        self.wall_s = wall0 + time.perf_counter() - t0
                        self.save_checkpoint()
                    if self._stop_agreed and not done:
                        if self._saved_step != self.step_idx:
                            self.wall_s = wall0 + time.perf_counter() - t0
                            self.save_checkpoint()
                        raise TrainingInterrupted(self.step_idx, self.last_ckpt)
                    if done or self.pos == 0:
                        break  # pos == 0: epoch finished, re-seed the sampler for the next one
        finally:
            self._restore_signal_handlers(old_handlers)
            if bar is not None:
                bar.close()
            self.tb.close()
        self.wall_s = wall0 + time.perf_counter() - t0
        return self.metrics()

    def request_stop(self) -> None:
        """Finish the current log interval, write a checkpoint and raise :class:`TrainingInterrupted`
        (what SIGTERM / the first Ctrl-C do; under DDP all ranks stop at the same step)."""
        self._stop_signal = True

    def _install_signal_handlers(self):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return None
        old = {}

        def handler(signum, frame):
            if self._stop_signal and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now, without a checkpoint
            self._stop_signal = True
            if self.main:
                self._log(f"fastep: {signal.Signals(signum).name}: stopping at the next log interval "
                          f"(<= {self.log_every} steps) after writing a checkpoint"
                          + (" (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""))

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # pragma: no cover
                pass
        return old

    @staticmethod
    def _restore_signal_handlers(old) -> None:
        import signal

        for sig, h in (old or {}).items():
            try:
                signal.signal(sig, h)
            except (ValueError, OSError, TypeError):  # pragma: no cover
                pass

    def metrics(self) -> Dict[str, Any]:
        logged = [h for h in self.history if "losses" in h]
        m = {
            "stage": self.stage,
            "steps": self.step_idx,
            "kimg": self.kimg_at(self.step_idx),
            "target_kimg": self.kimg,
            "batch_size": self.batch_size,
            "world_size": self.world,
            "wall_s": self.wall_s,
            "kimg_per_s": self.kimg_at(self.step_idx) / self.wall_s if self.wall_s > 0 else None,
            "final_losses": logged[-1]["losses"] if logged else None,
            "checkpoint": self.last_ckpt,
            "history": self.history,
        }
        if self.main:
            write_json_atomic(m, self.out_dir / "metrics.json")
        return m
