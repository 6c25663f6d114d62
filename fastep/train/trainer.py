"""The system-agnostic training loop: LR schedule, kimg accounting, logging, checkpoints,
resume, NaN stop, signals and data-parallel runs.

The optimisation itself lives in the system's step object (:class:`fastep.zoo.TrainingStep`;
StEP's is :class:`fastep.zoo.step.TrainStep`: one D update and one G/E update per call, EMA
included, returning detached loss tensors without a host sync).  The :class:`Trainer` drives it:

* **progress in kimg** (thousands of training images, summed over all ranks), a
  constant-then-linear-decay learning rate through ``step.set_lr_scale``;
* **no host sync per step**: loss tensors are kept on the device and inspected only every
  ``log_every`` steps (and before every checkpoint), where a NaN/inf stops training with a
  :class:`NonFiniteLossError` naming the loss and the exact step; the last good checkpoint is
  never overwritten by bad weights;
* **checkpoints** every ``ckpt_every_kimg`` (atomic, the last ``keep`` kept) holding the model
  weights (:class:`~fastep.train.checkpoint.Checkpoint`), the full step state (optimizers, EMA, LR scale), every RNG
  (torch, CUDA, numpy, python; per rank under DDP) and the data-loader position, so that a
  resumed run reproduces an uninterrupted one bit for bit;
* **data order** from :func:`fastep.data.make_loader` (a ``DistributedSampler`` that can skip
  into an epoch) and per-sample augmentation seeds fixed by (seed, epoch, index)
  (:class:`fastep.data.SeededDataset`), so the batches do not depend on worker count or on
  where a run was resumed;
* **logging** on rank 0 only: a tqdm bar with images/s and the step's ``headline_losses``,
  TensorBoard scalars and image
  grids (when the ``tensorboard`` package is installed; otherwise a one-line note), sample grids
  as PNG (when the step has ``preview(A, B, seed) -> [3, H, W]``), and a metrics JSON
  (:mod:`fastep.train.outputs`); process groups come from :mod:`fastep.train.distributed`.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.distributed as dist

from ..data.loader import SeededDataset, make_loader
from .checkpoint import Checkpoint, CheckpointManager, capture_rng_state, load_checkpoint, restore_rng_state
from .distributed import dist_info
from .outputs import TensorBoardLogger, save_image_grid, write_json_atomic

__all__ = ["Trainer", "NonFiniteLossError", "TrainingInterrupted", "lr_scale_at"]


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


def _unpack_batch(batch, keys: Tuple[str, ...] = ("A", "B")) -> Tuple[torch.Tensor, ...]:
    """The tensors a step takes, in order: ``batch[k]`` for ``k`` in ``keys`` of a dict batch,
    the first ``len(keys)`` entries of a tuple batch."""
    if isinstance(batch, dict):
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"a batch lacks the key(s) {missing} the step takes; it has {sorted(batch)}")
        return tuple(batch[k] for k in keys)
    if isinstance(batch, (tuple, list)) and len(batch) >= len(keys):
        return tuple(batch[:len(keys)])
    raise TypeError(f"a batch must be a dict with the keys {list(keys)} or a tuple of {len(keys)} tensors, "
                    f"got {type(batch).__name__}")


# ----------------------------------------------------------------------------- schedule

def lr_scale_at(kimg_done: float, total_kimg: float, decay_start_kimg: float) -> float:
    """The learning-rate multiplier: 1 until ``decay_start_kimg``, then linear to 0 at ``total_kimg``."""
    if kimg_done <= decay_start_kimg or total_kimg <= decay_start_kimg:
        return 1.0
    return max(0.0, 1.0 - (kimg_done - decay_start_kimg) / (total_kimg - decay_start_kimg))


def _plain(module: torch.nn.Module) -> torch.nn.Module:
    """The module behind DistributedDataParallel / torch.compile wrappers (checkpoints hold plain names)."""
    while True:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


# ----------------------------------------------------------------------------- trainer

class Trainer:
    """Drives a system's training step over a data set for ``kimg`` thousand images.

    The loop settings (``device`` .. ``num_workers``) are required keyword arguments with no
    defaults here: their one home is the system's run configuration (StEP's
    :class:`fastep.zoo.step.run_config.RunConfig`), which resolves them and passes them in.
    Only the hooks (``configs``, ``extras``, ``progress``, ``tensorboard``, ``n_grid``,
    ``max_steps``, ``log``) have defaults.

    Parameters
    ----------
    step : a :class:`fastep.zoo.TrainingStep`: ``step(A, B) -> dict[str, Tensor]`` (detached, on
        device), ``state_dict()``, ``load_state_dict(sd)``, ``set_lr_scale(float)``,
        ``networks()`` (the modules written into every checkpoint), optionally ``preview``.
    dataset : map-style data set of dicts with ``"A"``, ``"B"`` in [-1, 1] (or (A, B) pairs).
    stage : ``"2"`` or ``"3"`` (a label for logs, checkpoint names and the checkpoint).
    batch_size : per-process batch; kimg counts ``batch_size * world_size`` images per step.
    kimg : length of the stage in thousands of images.
    out_dir : folder of this stage (checkpoints, samples/, tb/, metrics.json).
    system : the zoo system's name, written into every checkpoint.
    configs, extras : :class:`~fastep.train.checkpoint.Checkpoint` fields of every checkpoint.
    device : where the step runs (pins loader memory on CUDA).
    seed : seed of the data order and the per-sample augmentation.
    lr_decay_start_kimg : where the LR starts its linear decay to 0.
    log_every : steps between host syncs (loss check, progress bar, scalars).
    ckpt_every_kimg, image_every_kimg : intervals (0: only at the end).
    keep : number of checkpoints kept.
    num_workers : data-loader workers (per process).
    batch_keys : the keys of a data-set item the step takes, in call order: ``step(*tensors)``
        and ``preview(*tensors, seed=...)`` (StEP: ``("A", "B")``; a labelled system may take
        ``("image", "label", "index")``).
    """

    def __init__(self, step, dataset, *, stage: str, system: str, out_dir: Union[str, os.PathLike],
                 device: Union[str, torch.device], batch_size: int, kimg: float, seed: int,
                 lr_decay_start_kimg: float, log_every: int, ckpt_every_kimg: float, image_every_kimg: float,
                 keep: int, num_workers: int, batch_keys: Tuple[str, ...] = ("A", "B"),
                 configs: Optional[Dict[str, Any]] = None, extras: Optional[Dict[str, Any]] = None,
                 progress: bool = True, tensorboard: bool = True,
                 n_grid: int = 8, max_steps: Optional[int] = None, log: Callable[[str], None] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not (kimg > 0):
            raise ValueError(f"kimg must be > 0, got {kimg}")
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not (lr_decay_start_kimg >= 0):
            raise ValueError(f"lr_decay_start_kimg must be >= 0, got {lr_decay_start_kimg}")
        self.step = step
        self.stage = str(stage)
        self.batch_size = int(batch_size)
        self.kimg = float(kimg)
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.system = system
        self.configs = dict(configs or {})
        self.extras = dict(extras or {})
        self.lr_decay_start_kimg = float(lr_decay_start_kimg)
        self.log_every = int(log_every)
        self.keep = int(keep)
        self.num_workers = int(num_workers)
        self.batch_keys = tuple(batch_keys)
        if not self.batch_keys:
            raise ValueError("batch_keys must name at least one key")
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
        s = lr_scale_at(self.kimg_at(self.step_idx), self.kimg, self.lr_decay_start_kimg)
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

    def state(self) -> Checkpoint:
        """The :class:`Checkpoint` of the current state; collective under DDP."""
        rng = capture_rng_state()
        rng_all = None
        if self.world > 1:
            rng_all = [None] * self.world
            dist.all_gather_object(rng_all, rng)
        # The modules' own state-dict tensors (no copies): torch.save writes each storage once, so
        # these weights and the same tensors inside train_state cost nothing extra.
        weights = {k: (None if m is None else _plain(m).state_dict()) for k, m in self.step.networks().items()}
        return Checkpoint(
            system=self.system, stage=self.stage, step=self.step_idx, kimg=self.kimg_at(self.step_idx),
            total_steps=self.total_steps, complete=self.step_idx >= self.total_steps,
            configs=dict(self.configs), weights=weights, train_state=self.step.state_dict(),
            rng=rng, rng_per_rank=rng_all,
            loader={"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "world": self.world,
                    "batch_size": self.batch_size},
            history=list(self.history), wall_s=self.wall_s, extras=dict(self.extras))

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

    def load_state(self, ckpt: Checkpoint) -> None:
        """Restore a checkpoint written by :meth:`state` (same system and stage)."""
        if ckpt.system != self.system or ckpt.stage != self.stage:
            raise ValueError(f"checkpoint is of system {ckpt.system!r} stage {ckpt.stage!r}, this trainer runs "
                             f"system {self.system!r} stage {self.stage!r}")
        ld = ckpt.loader or {}
        if ld.get("batch_size", self.batch_size) != self.batch_size or ld.get("world", self.world) != self.world:
            self._log(f"fastep: warning: resuming with batch {self.batch_size} x {self.world} processes; the "
                      f"checkpoint used {ld.get('batch_size')} x {ld.get('world')}: the data order will differ")
        if ckpt.train_state is not None:
            self.step.load_state_dict(ckpt.train_state)
        else:
            for k, m in self.step.networks().items():
                if m is not None and ckpt.weights.get(k) is not None:
                    _plain(m).load_state_dict(ckpt.weights[k])
        self.step_idx = int(ckpt.step)
        self._pending_start = self.step_idx
        self.epoch = int(ld.get("epoch", 0))
        self.pos = int(ld.get("pos", 0))
        self.history = list(ckpt.history)
        self.wall_s = float(ckpt.wall_s)
        per_rank = ckpt.rng_per_rank
        if per_rank and len(per_rank) == self.world:
            restore_rng_state(per_rank[self.rank])
        else:
            restore_rng_state(ckpt.rng)
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
        preview = getattr(self.step, "preview", None)
        if not self.main or preview is None:
            return
        if self._grid_batch is None:
            # seeded per item, global RNG untouched: the grid never perturbs the training stream
            fixed = SeededDataset(self.data.dataset, seed=self.seed)
            items = [_unpack_batch(fixed[i], self.batch_keys) for i in range(min(self.n_grid, len(fixed)))]
            self._grid_batch = tuple(torch.stack([torch.as_tensor(it[j]) for it in items])
                                     for j in range(len(self.batch_keys)))
        with torch.random.fork_rng(devices=[]):
            grid = preview(*self._grid_batch, seed=self.seed)
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
                    tensors = [t.to(self.device, non_blocking=True) for t in _unpack_batch(batch, self.batch_keys)]
                    self._set_lr()
                    losses = self.step(*tensors)
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
                                bar.set_postfix_str(f"{rate * 1000:.3g} img/s " + " ".join(
                                    f"{k}={v:.4g}" for k, v in self._bar_losses(logged).items()), refresh=True)
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

    def _bar_losses(self, logged: Dict[str, float]) -> Dict[str, float]:
        """The losses the progress bar shows: the step's ``headline_losses`` (all when it has
        none), without terms that are exactly zero (switched off in this configuration)."""
        names = getattr(self.step, "headline_losses", None) or list(logged)
        return {k: logged[k] for k in names if k in logged and logged[k] != 0.0}

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
