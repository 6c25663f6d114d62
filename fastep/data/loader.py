"""Data loaders for step-based training: seeded, resumable, DDP-sharded, never-ending.

* :func:`make_loader` builds a ``DataLoader`` whose order depends only on ``(seed, epoch)``
  (a ``DistributedSampler`` shards it across ranks when ``distributed=True``; one process uses
  the same sampler with one replica), with persistent workers and pinned memory when asked;
* :class:`SeededDataset` fixes every sample's random augmentation by (seed, epoch, index), so a
  batch does not depend on the worker count or on where a run was resumed;
* :class:`InfiniteLoader` walks epochs forever (``set_epoch`` each time), counts where it is,
  and resumes mid-epoch from its ``state_dict`` by skipping *indices* (no images are decoded for
  the skipped part).
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ["make_loader", "InfiniteLoader", "infinite", "ResumableSampler", "SeededDataset"]


class ResumableSampler(Sampler):
    """Wraps a sampler with ``set_epoch``; can skip the first ``n`` indices of the next epoch."""

    def __init__(self, base: DistributedSampler):
        self.base = base
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.base.epoch

    def skip_next(self, n_indices: int) -> None:
        """Drop the first ``n_indices`` indices of the next pass (resuming mid-epoch)."""
        self._skip = max(0, int(n_indices))

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        for i, idx in enumerate(self.base):
            if i >= skip:
                yield idx

    def __len__(self) -> int:
        return len(self.base)


class SeededDataset(Dataset):
    """Wraps a data set so every sample's random augmentation is seeded by (seed, epoch, index).

    The global torch / numpy / python RNG states are saved and restored around each item, so
    loading data never perturbs the training RNG stream, and a sample looks the same whichever
    worker loads it and whether or not the run was resumed.  Set ``epoch`` before each pass; the
    workers must see it, so loaders over a ``SeededDataset`` use ``persistent_workers=False``.
    """

    def __init__(self, dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        s = (self.seed * 1_000_003 + self.epoch * 7_919 + int(index) * 104_729) % (2**31 - 1)
        t_state, n_state, p_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(t_state)
            np.random.set_state(n_state)
            random.setstate(p_state)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = True, workers: int = 0,
                pin_memory: bool = False, drop_last: bool = True, distributed: bool = False,
                seed: int = 0, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                prefetch_factor: Optional[int] = None, persistent_workers: bool = True,
                collate_fn: Optional[Callable] = None) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` with a deterministic (seed, epoch) order.

    ``batch_size`` is per process.  With ``distributed=True`` the data is sharded by a
    ``DistributedSampler`` (rank and world size from ``torch.distributed`` unless given).
    Call ``loader.sampler.set_epoch(e)`` per epoch, or iterate an :class:`InfiniteLoader`.
    Workers are seeded from ``seed`` and persistent unless ``persistent_workers=False`` (needed
    when the data set changes between epochs, e.g. :class:`SeededDataset`'s ``epoch``).
    The sampler is a :class:`ResumableSampler` (``loader.sampler.skip_next(n)`` resumes
    mid-epoch); ``loader.generator`` seeds the workers' base seeds.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers: expected a non-negative integer, got {workers!r}")
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset: is empty")
    if distributed:
        if num_replicas is None or rank is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise RuntimeError("distributed: torch.distributed is not initialised; call "
                                   "init_process_group first (or pass num_replicas and rank)")
            num_replicas = torch.distributed.get_world_size() if num_replicas is None else num_replicas
            rank = torch.distributed.get_rank() if rank is None else rank
    else:
        num_replicas, rank = 1, 0
    base = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                              seed=seed, drop_last=drop_last and distributed)
    per_rank = len(base)
    if drop_last and per_rank < batch_size:
        raise ValueError(f"batch_size: {batch_size} is larger than the {per_rank} items per process "
                         f"and drop_last=True would give no batches; lower batch_size or add data")
    sampler = ResumableSampler(base)
    g = torch.Generator()
    g.manual_seed(int(seed))
    kwargs: Dict[str, Any] = {}
    if workers > 0:
        kwargs["persistent_workers"] = bool(persistent_workers)
        kwargs["worker_init_fn"] = _seed_worker
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=bool(pin_memory) and torch.cuda.is_available(), drop_last=drop_last,
                      generator=g, **kwargs)


class InfiniteLoader:
    """Iterate a loader made by :func:`make_loader` forever, epoch after epoch.

    ``epoch`` and ``batch`` (batches already yielded in the current epoch) are tracked;
    ``state_dict()`` / ``load_state_dict()`` resume at the same place (same order).
    """

    def __init__(self, loader: DataLoader, start_epoch: int = 0):
        if len(loader) == 0:
            raise ValueError("loader: yields no batches (dataset smaller than one batch?)")
        self.loader = loader
        self.epoch = int(start_epoch)
        self.batch = 0

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def __iter__(self) -> Iterator[Any]:
        sampler = self.loader.sampler
        while True:
            if self.batch >= len(self.loader):
                self.epoch, self.batch = self.epoch + 1, 0
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            if self.batch:
                if isinstance(sampler, ResumableSampler):
                    sampler.skip_next(self.batch * self.loader.batch_size)
                else:  # a sampler that cannot skip: restart the epoch
                    self.batch = 0
            for batch in self.loader:
                self.batch += 1
                yield batch
            self.epoch, self.batch = self.epoch + 1, 0


def infinite(loader: DataLoader, start_epoch: int = 0) -> Iterator[Any]:
    """``iter(InfiniteLoader(loader, start_epoch))``: batches forever, one epoch after another."""
    return iter(InfiniteLoader(loader, start_epoch))
