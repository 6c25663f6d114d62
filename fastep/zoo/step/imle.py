"""Sampling style codes: N(mu, sigma) fitted on training codes, or a mapper M trained with IMLE.

StEP samples styles either from ``N(mu, sigma)`` with the per-dimension mean and standard
deviation of the training images' codes, or through a mapper network ``M`` that maps ``N(0, I)``
onto the code distribution.  ``M`` is trained with nearest-neighbour IMLE (Li & Malik 2018;
official code): every ``rematch_every`` epochs, draw ``sample_factor`` x as many noise vectors as
there are codes, map them, and pair every code with the noise whose mapped sample is nearest;
between re-matches, regress ``M(noise_i) -> z_i`` (squared L2) with Adam(0.01, (0.5, 0.99)),
decayed x0.7 every 50 epochs, batch 64, 500 epochs.

>>> mu, sigma = fit_code_stats(codes)
>>> mapper = train_mapper(codes, MapperConfig(), device)
>>> z = sample_codes(16, mapper=mapper)          # or sample_codes(16, stats=(mu, sigma))
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .mapper import Mapper

__all__ = ["MapperConfig", "fit_code_stats", "match_nearest", "train_mapper", "sample_codes"]

DistanceFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class MapperConfig:
    """IMLE mapper training (defaults: the official code, docs/step.md).

    ``distance``: ``"l2"`` (squared Euclidean) or a callable ``(codes[n, D], samples[m, D]) ->
    distances[n, m]`` used for the nearest-sample matching.
    """

    epochs: int = 500
    batch_size: int = 64
    lr: float = 0.01
    betas: Tuple[float, float] = (0.5, 0.99)
    lr_decay: float = 0.7
    decay_every: int = 50  # epochs
    rematch_every: int = 5  # epochs
    sample_factor: int = 10  # noise samples per code at each re-match
    noise_dim: Optional[int] = None  # None: same as the code size
    hidden: int = 128
    n_hidden: int = 3
    seed: int = 0
    match_chunk: int = 2048  # codes per distance block when matching
    distance: Union[str, DistanceFn] = "l2"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "decay_every", "rematch_every", "sample_factor", "match_chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if not (self.lr > 0):
            raise ValueError(f"lr: expected > 0, got {self.lr!r}")
        if not (0 < self.lr_decay <= 1):
            raise ValueError(f"lr_decay: expected in (0, 1], got {self.lr_decay!r}")
        if not (self.distance == "l2" or callable(self.distance)):
            raise ValueError(f"distance: expected 'l2' or a callable, got {self.distance!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if callable(self.distance):
            d["distance"] = getattr(self.distance, "__name__", "callable")
        return d


def _as_codes(codes, name: str = "codes") -> Tensor:
    if isinstance(codes, np.ndarray):
        codes = torch.from_numpy(codes)
    if not isinstance(codes, Tensor):
        raise TypeError(f"{name}: expected a Tensor or ndarray [N, D], got {type(codes).__name__}")
    if codes.dim() != 2 or codes.shape[0] < 1 or codes.shape[1] < 1:
        raise ValueError(f"{name}: expected a non-empty [N, D] tensor, got shape {tuple(codes.shape)}")
    if not codes.is_floating_point():
        raise TypeError(f"{name}: expected a floating point tensor, got {codes.dtype}")
    if not torch.isfinite(codes).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return codes


def fit_code_stats(codes) -> Tuple[Tensor, Tensor]:
    """Per-dimension mean and (population, ddof=0) standard deviation of ``codes[N, D]``.

    Computed in float64; returned as float32 tensors on the codes' device (numpy input -> CPU).
    """
    codes = _as_codes(codes)
    c = codes.detach().double()
    mu = c.mean(0)
    sigma = c.std(0, unbiased=False)
    return mu.float(), sigma.float()


def _sq_l2(a: Tensor, b: Tensor) -> Tensor:
    return (a.square().sum(1, keepdim=True) + b.square().sum(1)[None] - 2 * a @ b.T).clamp_min_(0)


@torch.no_grad()
def match_nearest(codes: Tensor, samples: Tensor, distance: Union[str, DistanceFn] = "l2",
                  chunk: int = 2048) -> Tuple[Tensor, Tensor]:
    """For every code, the index of its nearest sample and that distance -> (idx[N], dist[N]).

    Blockwise over the codes so memory stays ``chunk * M``.  ``distance="l2"`` is the squared
    Euclidean distance (exact: the winner's distance is recomputed directly).
    """
    fn = _sq_l2 if distance == "l2" else distance
    idx = torch.empty(codes.shape[0], dtype=torch.long, device=codes.device)
    dist = torch.empty(codes.shape[0], dtype=codes.dtype, device=codes.device)
    for s in range(0, codes.shape[0], chunk):
        d = fn(codes[s:s + chunk], samples)
        dist[s:s + chunk], idx[s:s + chunk] = d.min(1)
    if distance == "l2":  # exact distance of the winner (the GEMM form loses digits)
        dist = (codes - samples[idx]).square().sum(1)
    return idx, dist


def train_mapper(codes, cfg: Optional[MapperConfig] = None, device: Union[str, torch.device, None] = None,
                 progress: bool = False) -> Mapper:
    """Train a :class:`~fastep.zoo.step.mapper.Mapper` on ``codes[N, D]`` with IMLE.

    Deterministic given ``cfg.seed`` (noise and batch order come from a seeded CPU generator).
    Returns the mapper in eval mode on ``device`` with ``mapper.history``: ``match_dist`` (mean
    squared distance of every code to its matched mapped sample, measured at each re-match),
    ``match_epoch``, ``loss`` (mean regression loss per epoch), ``lr`` and ``time_s``.
    """
    cfg = cfg or MapperConfig()
    codes = _as_codes(codes)
    device = torch.device(device) if device is not None else codes.device
    if device.type == "cpu":
        # a 8-128-128-128-8 MLP on batches of 64 gains nothing from intra-op threads, and on a
        # busy machine their spin-waits cost 30x; run single-threaded and restore afterwards
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _train_mapper(codes, cfg, device, progress)
        finally:
            torch.set_num_threads(threads)
    return _train_mapper(codes, cfg, device, progress)


def _train_mapper(codes: Tensor, cfg: MapperConfig, device: torch.device, progress: bool) -> Mapper:
    codes = codes.detach().to(device=device, dtype=torch.float32)
    n, z_dim = codes.shape
    noise_dim = cfg.noise_dim or z_dim
    g = torch.Generator().manual_seed(int(cfg.seed))
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(cfg.seed))  # parameter init, without disturbing the caller's stream
    try:
        mapper = Mapper(z_dim=z_dim, noise_dim=noise_dim, hidden=cfg.hidden, n_hidden=cfg.n_hidden).to(device)
    finally:
        torch.random.set_rng_state(torch_state)
    fused = device.type == "cuda"
    opt = torch.optim.Adam(mapper.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.decay_every, gamma=cfg.lr_decay)
    bs = min(cfg.batch_size, n)
    n_batches = max(1, n // bs)
    hist: Dict[str, list] = {"match_dist": [], "match_epoch": [], "loss": [], "lr": []}
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs, desc="mapper (IMLE)", unit="epoch")
    matched_noise = None
    for epoch in range(cfg.epochs):
        if epoch % cfg.rematch_every == 0:
            noise = torch.randn(n * cfg.sample_factor, noise_dim, generator=g).to(device)
            mapper.eval()
            with torch.no_grad():
                mapped = torch.cat([mapper(noise[s:s + 65536]) for s in range(0, noise.shape[0], 65536)])
            idx, dist = match_nearest(codes, mapped, cfg.distance, cfg.match_chunk)
            matched_noise = noise[idx]
            hist["match_dist"].append(float(dist.mean()))
            hist["match_epoch"].append(epoch)
            mapper.train()
        perm = torch.randperm(n, generator=g).to(device)
        total = torch.zeros((), device=device)
        for b in range(n_batches):
            sel = perm[b * bs:(b + 1) * bs]
            pred = mapper(matched_noise[sel])
            loss = (pred - codes[sel]).square().sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        hist["loss"].append(float(total) / n_batches)
        hist["lr"].append(opt.param_groups[0]["lr"])
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{hist['loss'][-1]:.4f}", match=f"{hist['match_dist'][-1]:.4f}")
    if bar is not None:
        bar.close()
    # the final matching distance, with the trained mapper
    mapper.eval()
    with torch.no_grad():
        noise = torch.randn(n * cfg.sample_factor, noise_dim, generator=g).to(device)
        mapped = torch.cat([mapper(noise[s:s + 65536]) for s in range(0, noise.shape[0], 65536)])
        _, dist = match_nearest(codes, mapped, cfg.distance, cfg.match_chunk)
    hist["match_dist"].append(float(dist.mean()))
    hist["match_epoch"].append(cfg.epochs)
    hist["time_s"] = time.perf_counter() - t0
    mapper.history = hist
    return mapper


@torch.no_grad()
def sample_codes(n: int, mapper: Optional[Mapper] = None, stats: Optional[Tuple[Tensor, Tensor]] = None, *,
                 generator: Optional[torch.Generator] = None,
                 device: Union[str, torch.device, None] = None) -> Tensor:
    """``n`` style codes from the mapper (``M(N(0, I))``) or from ``N(mu, sigma)`` (``stats``).

    Exactly one of ``mapper`` and ``stats`` must be given.  Noise comes from ``generator`` (CPU
    or on ``device``) or the global RNG; codes land on ``device`` (default: the mapper's / mu's).
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative integer, got {n!r}")
    if (mapper is None) == (stats is None):
        raise ValueError("mapper, stats: give exactly one (a trained Mapper, or (mu, sigma) from fit_code_stats)")
    if mapper is not None:
        dev = torch.device(device) if device is not None else next(mapper.parameters()).device
        noise = torch.randn(n, mapper.noise_dim, generator=generator,
                            device=generator.device if generator is not None else dev)
        was_training = mapper.training
        mapper.eval()
        out = mapper(noise.to(dev))
        mapper.train(was_training)
        return out
    mu, sigma = (torch.as_tensor(s) for s in stats)
    if mu.dim() != 1 or sigma.shape != mu.shape:
        raise ValueError(f"stats: expected (mu[D], sigma[D]), got shapes {tuple(mu.shape)}, {tuple(sigma.shape)}")
    dev = torch.device(device) if device is not None else mu.device
    eps = torch.randn(n, mu.shape[0], generator=generator,
                      device=generator.device if generator is not None else dev)
    return mu.to(dev).float() + sigma.to(dev).float() * eps.to(dev)
