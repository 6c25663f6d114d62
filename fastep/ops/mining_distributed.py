"""Exact neighbour mining over several processes (``mine_neighbours(..., process_group=pg)``).

Every rank runs the same three passes as one process on its share of the work and the ranks
exchange only small things, so that the result is the one process's, bit for bit:

1. **Statistics**: rank 0 computes the centring mean (a fixed sample of rows) and broadcasts it;
   each rank computes the centred norms of its shard of rows (whole chunks of the statistics
   pass); the norms are all-gathered (16 bytes a row).
2. **Candidates**: the symmetric tile pairs (row block I, column block J >= I), in the one
   process's order, are cut into K contiguous runs of equal work; each rank computes its run
   (the same tiles, of the same shapes, as one process) into running candidate lists of the
   rows and columns its tiles touch, checkpointed to ``work_dir`` (a killed rank restarts its
   run from the last checkpoint; a finished rank does no tile again).
3. **Merge and certification**: one all-to-all sends each row's ``k + margin`` candidates of
   both ends to the row's owner (rows are split evenly), which keeps the best by
   (distance, index) -- each pair (i, j) was offered by exactly one tile, so this is the list one
   process would hold -- then certifies and re-ranks its rows exactly as one process does; an
   all-gather gives every rank the whole result.

No rank holds the N x N distances or all N vectors: the vectors are read in row blocks from
the source (a ``.npy`` path or memmap on storage every rank sees, or a tensor each rank can
index); the memory per rank is two row blocks, the tiles and N x (k_near + k_far + 2 margin)
candidate slots (12 bytes each).

At the start the ranks exchange a hash of N, D, the k's, the options, the agreed memory budget
and a few rows of the data; any difference stops every rank with one ``ValueError`` line.  A
failed collective (a rank died, or the process group's timeout ran out) becomes a
:class:`DistributedMiningError` naming the step, on every rank still alive.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import mining as _m

__all__ = ["DistributedMiningError", "tile_shares", "row_shares"]

_CHECKPOINT_SECONDS = 60.0
_CALLS = 0
_STOP_AFTER_TILES: Optional[int] = None  # tests: checkpoint and raise _Stopped after this many tiles


class DistributedMiningError(RuntimeError):
    """A collective of distributed mining failed: another rank died or timed out."""


class _Stopped(RuntimeError):
    """Raised by the test hook after a checkpoint (stands in for a killed rank)."""


# ---------------------------------------------------------------------------------------------
# Work split
# ---------------------------------------------------------------------------------------------
def tile_shares(pairs: List[Tuple[int, int]], n: int, block_rows: int, world: int,
                half_diagonal: bool = False) -> List[Tuple[int, int]]:
    """[start, stop) ranges of ``pairs`` (in order) for each rank, of equal work.

    The work of a tile is rows(I) x rows(J) (half of it for diagonal tiles when the kernel skips
    their lower half); a tile goes to rank floor(K x (work before it) / total work), so rank 0
    always starts at the first tile, and ranks may get none (a tile bigger than a share, or
    more ranks than tiles) or only edge tiles."""
    cost = []
    for si, sj in pairs:
        c = (min(n, si + block_rows) - si) * (min(n, sj + block_rows) - sj)
        cost.append(c * (0.5 if half_diagonal and si == sj else 1.0))
    total = sum(cost) or 1.0
    owner, acc = [], 0.0
    for c in cost:
        owner.append(min(world - 1, int(acc * world / total)))
        acc += c
    out, p = [], 0
    for r in range(world):
        q = p
        while q < len(owner) and owner[q] == r:
            q += 1
        out.append((p, q))
        p = q
    return out


def row_shares(n: int, world: int, align: int = 1) -> List[Tuple[int, int]]:
    """[start, stop) row ranges of about N / K rows each, starts at multiples of ``align``."""
    units = -(-n // align)
    out = []
    for r in range(world):
        a = min(n, (units * r // world) * align)
        b = min(n, (units * (r + 1) // world) * align)
        out.append((a, b))
    return out


# ---------------------------------------------------------------------------------------------
class _Comm:
    """The collectives of distributed mining: errors become one DistributedMiningError line,
    and the payload this rank sends to the others is counted."""

    def __init__(self, group):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.backend = dist.get_backend(group)
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" \
            else torch.device("cpu")
        self.bytes_sent = 0

    def _call(self, step: str, fn):
        try:
            return fn()
        except DistributedMiningError:
            raise
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DistributedMiningError(
                f"mine_neighbours: rank {self.rank}: {step} failed: another rank stopped, died or "
                f"timed out ({first[:200]})") from None

    def all_gather(self, step: str, t: Tensor) -> List[Tensor]:
        t = t.to(self.device).contiguous()
        out = [torch.empty_like(t) for _ in range(self.world)]
        self._call(step, lambda: dist.all_gather(out, t, group=self.group))
        self.bytes_sent += t.numel() * t.element_size() * (self.world - 1)
        return [o.cpu() for o in out]

    def all_reduce(self, step: str, t: Tensor, op=dist.ReduceOp.SUM) -> Tensor:
        t = t.to(self.device).clone()
        self._call(step, lambda: dist.all_reduce(t, op=op, group=self.group))
        self.bytes_sent += t.numel() * t.element_size()
        return t.cpu()

    def broadcast(self, step: str, t: Tensor, src: int = 0) -> Tensor:
        t = t.to(self.device).contiguous()
        root = dist.get_global_rank(self.group, src) if self.group is not None else src
        self._call(step, lambda: dist.broadcast(t, root, group=self.group))
        if self.rank == src:
            self.bytes_sent += t.numel() * t.element_size() * (self.world - 1)
        return t

    def all_to_all_rows(self, step: str, t: Tensor, shares: List[Tuple[int, int]]) -> List[Tensor]:
        """Rows shares[r] of every rank's ``t`` [N, C] go to rank r: returns [K] x [rows_r, C]."""
        a, b = shares[self.rank]
        c = t.shape[1]
        send = t.to(self.device).contiguous()
        in_splits = [(e - s) * c for s, e in shares]
        recv = torch.empty((self.world * (b - a) * c,), dtype=t.dtype, device=self.device)
        out_splits = [(b - a) * c] * self.world
        self._call(step, lambda: dist.all_to_all_single(recv, send.view(-1), out_splits, in_splits,
                                                        group=self.group))
        self.bytes_sent += (send.numel() - (b - a) * c) * t.element_size()
        return list(recv.cpu().view(self.world, b - a, c))


def _hash_tensor(parts: List[object], src: "_m._Source") -> Tensor:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode() + b"\0")
    for i in sorted({0, src.n // 2, src.n - 1}):  # a few rows of the data itself
        h.update(src.raw(i, i + 1).detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).clone()


# ---------------------------------------------------------------------------------------------
class _Progress:
    """One bar on rank 0 for the whole job: the ranks post their counts to the default process
    group's store and rank 0 shows the sum (without a store, rank 0 extrapolates its own count).

    ``comm`` None: one process, a plain bar."""

    def __init__(self, comm: Optional[_Comm], total: int, mine: int, show: bool, key: str,
                 desc: str = "mining tiles", unit: str = "tile", initial: int = 0):
        self.total, self.mine, self.count, self.last = total, mine, 0, 0.0
        self.initial, self.key = initial, key
        self.rank = comm.rank if comm is not None else 0
        self.world = comm.world if comm is not None else 1
        self.store = None
        if self.world > 1:
            try:
                from torch.distributed.distributed_c10d import _get_default_store
                self.store = _get_default_store()
            except Exception:  # noqa: BLE001 - no store: rank 0 extrapolates its own count
                self.store = None
        self.bar = None
        if show and self.rank == 0:
            from tqdm.auto import tqdm
            ranks = f" ({self.world} ranks)" if self.world > 1 else ""
            self.bar = tqdm(total=total, initial=initial, desc=desc + ranks, unit=unit)

    def __call__(self, k: int = 1) -> None:
        self.count += k
        now = time.monotonic()
        if self.world > 1 and now - self.last < 0.5 and self.count < self.mine:
            return
        self.last = now
        self._post()

    def _post(self) -> None:
        if self.store is not None:
            try:
                self.store.set(f"{self.key}/{self.rank}", str(self.count))
            except Exception:  # noqa: BLE001 - progress is cosmetic
                self.store = None
        if self.bar is None:
            return
        if self.world == 1:
            done = self.count
        else:
            left = self.total - self.initial
            done = self.count * left // max(1, self.mine) if self.mine else 0
            if self.store is not None:
                try:
                    keys = [f"{self.key}/{r}" for r in range(self.world)]
                    done = sum(int(self.store.get(k)) for k in keys if self.store.check([k]))
                except Exception:  # noqa: BLE001
                    pass
        self.bar.n = min(self.total, self.initial + done)
        self.bar.refresh()

    def close(self, complete: bool = False) -> None:
        """``complete``: every rank has finished (after a collective that needed them all)."""
        if self.bar is not None:
            if complete:
                self.bar.n = self.total
                self.bar.refresh()
            else:
                self._post()
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------------------------------------
def mine_distributed(src: "_m._Source", plan: "_m._Plan", group, *, bound: str, lam: float,
                     rerank: str, margin: int, progress: bool, work_dir, redo) -> "_m.Neighbours":
    comm = _Comm(group)
    K, rank, n = comm.world, comm.rank, plan.n

    # ---- agree on the settings, check that every rank sees the same inputs ------------------
    budget = int(comm.all_reduce("agreeing on the memory budget", torch.tensor([plan.budget]),
                                 dist.ReduceOp.MIN)[0])
    if budget != plan.budget:
        plan = redo(budget)
    plan.resident = False  # no rank holds all N vectors: blocks are read from the source
    parts = [n, plan.dim, str(src.dtype), plan.k_near, plan.k_far, margin, bound, lam, rerank,
             plan.dist_name, str(plan.compute_dtype), plan.device.type, plan.block_rows, budget]
    hashes = comm.all_gather("checking the inputs", _hash_tensor(parts, src))
    bad = [r for r in range(K) if not torch.equal(hashes[r], hashes[0])]
    if bad:
        raise ValueError(f"process_group: rank(s) {bad} see different inputs than rank 0 (vectors, "
                         f"N, D, k_near/k_far or options differ); every rank must mine the same data")
    key = hashes[0][:8].numpy().tobytes().hex()

    state = _RankState(work_dir, rank, K, key, plan)
    stage = _m._Stager()
    # ---- 1. statistics ------------------------------------------------------------------------
    with torch.no_grad():
        if rank == 0:
            mu32 = _m._centring_mean(src, plan, stage)
        else:
            mu32 = torch.empty(plan.dim, dtype=torch.float32, device=plan.device)
        mu32 = comm.broadcast("sharing the mean", mu32).to(plan.device)
        nshare = row_shares(n, K, plan.stat_rows)
        a, b = nshare[rank]
        if state.norms is None:
            sq = torch.empty(n, dtype=torch.float64)
            q4 = torch.empty(n, dtype=torch.float64)
            _m._centred_norms(src, plan, stage, mu32, a, b, sq, q4, None)
            state.norms = (sq[a:b].clone(), q4[a:b].clone())
            state.save(None)
        width = max(e - s for s, e in nshare)
        mine = torch.zeros((width, 2), dtype=torch.float64)
        mine[:b - a, 0], mine[:b - a, 1] = state.norms
        got = comm.all_gather("sharing the norms", mine)
        sq = torch.cat([g[:e - s, 0] for g, (s, e) in zip(got, nshare)])
        q4 = torch.cat([g[:e - s, 1] for g, (s, e) in zip(got, nshare)])
        stats = _m._Stats(mu32=mu32, sq=sq, q4=q4, xall=None)

        # ---- 2. candidates: this rank's run of tile pairs ------------------------------------------
        pairs = _m._tile_pairs(plan)
        p0, p1 = tile_shares(pairs, n, plan.block_rows, K, half_diagonal=plan.use_triton)[rank]
        my_pairs = pairs[p0:p1]
        lists = state.lists if state.lists is not None else _m._empty_lists(plan, plan.device)
        done = state.done
        global _CALLS
        _CALLS += 1  # every rank calls equally often: the same store keys on every rank
        bar = _Progress(comm, len(pairs), len(my_pairs), progress, f"fastep_mine/{key}/{_CALLS}")
        bar(done)
        computed = 0
        last_save = time.monotonic()
        while done < len(my_pairs):
            # a run of consecutive tiles of one row block (its block stays loaded), then perhaps
            # a checkpoint
            stop = done + 1
            while stop < len(my_pairs) and my_pairs[stop][0] == my_pairs[done][0] and stop - done < 64:
                stop += 1
            if _STOP_AFTER_TILES is not None:
                stop = min(stop, done + max(1, _STOP_AFTER_TILES - computed))
            _m._candidate_pass(src, plan, stats, my_pairs[done:stop], lists, stage, bar)
            computed += stop - done
            done = stop
            if state.enabled and (time.monotonic() - last_save > _CHECKPOINT_SECONDS or done == len(my_pairs)):
                state.save(lists, done, my_pairs)
                last_save = time.monotonic()
            if _STOP_AFTER_TILES is not None and computed >= _STOP_AFTER_TILES and done < len(my_pairs):
                state.save(lists, done, my_pairs)
                raise _Stopped(f"rank {rank}: stopped after {computed} tile(s) (test hook)")
        bar._post()

    # ---- 3. merge: each row's candidates to its owner, then certify there ---------------------
    owners = row_shares(n, K)
    a, b = owners[rank]
    dists = torch.cat([lists[0], lists[2]], 1).cpu()
    idx = torch.cat([lists[1], lists[3]], 1).cpu()
    del lists
    got_d = comm.all_to_all_rows("merging the candidate lists", dists, owners)
    got_i = comm.all_to_all_rows("merging the candidate lists", idx, owners)
    bar.close(complete=True)  # the exchange needed every rank's finished lists
    kn2, kf2 = plan.kn2, plan.kf2
    merged = []
    for lo, hi, far, k2 in ((0, kn2, False, kn2), (kn2, kn2 + kf2, True, kf2)):
        d = torch.cat([g[:, lo:hi] for g in got_d], 1)
        i = torch.cat([g[:, lo:hi] for g in got_i], 1)
        o = _m._lexsort_rows(torch.zeros_like(i), d.double(), i, far)[:, :k2]
        merged += [d.gather(1, o), i.gather(1, o)]
    del got_d, got_i
    eps = _m._row_bounds(plan, stats, bound, lam)
    exact = _m._ExactPairs(src, plan.device, plan.budget)
    near, far = _m._certify_and_rerank(merged, a, plan, eps, exact, rerank)

    # ---- everyone gets the whole result ------------------------------------------------------
    kn, kf = plan.k_near, plan.k_far
    width = max(e - s for s, e in owners)
    pack = torch.zeros((width, 2 * kn + 2 * kf), dtype=torch.int64)
    pack[:b - a] = torch.cat([near[0], near[1].view(torch.int64), far[0], far[1].view(torch.int64)], 1)
    got = comm.all_gather("gathering the result", pack)
    full = torch.cat([g[:e - s] for g, (s, e) in zip(got, owners)])
    counts = comm.all_reduce("gathering the result", torch.tensor(
        [near[2], far[2], exact.count, computed, comm.bytes_sent, near[3], far[3]], dtype=torch.int64))
    info = _m._base_info(plan, stats, eps, len(pairs), bound, lam, margin)
    info.update(fallback_rows_near=int(counts[0]), fallback_rows_far=int(counts[1]),
                exact_pairs=int(counts[2]), reranked_rows_near=int(counts[5]),
                reranked_rows_far=int(counts[6]), world_size=K, rank=rank, tiles_rank=len(my_pairs),
                tiles_computed=computed, tiles_computed_all=int(counts[3]),
                bytes_exchanged=int(counts[4]), bytes_sent_rank=comm.bytes_sent)
    if rank == 0:
        _m._warn_fallbacks(info["fallback_rows_near"] + info["fallback_rows_far"], n)
    state.finish()
    return _m.Neighbours(full[:, :kn].clone(), full[:, kn:2 * kn].clone().view(torch.float64),
                         full[:, 2 * kn:2 * kn + kf].clone(),
                         full[:, 2 * kn + kf:].clone().view(torch.float64), info)


class _RankState:
    """This rank's resume file in ``work_dir``: its norms shard and candidate lists after
    ``done`` tiles of its run (rows from its first tile's row block on), written atomically."""

    def __init__(self, work_dir, rank: int, world: int, key: str, plan):
        self.enabled = work_dir is not None
        self.norms = None
        self.lists = None
        self.done = 0
        self.plan = plan
        self.key = f"{key}/{world}"
        if not self.enabled:
            return
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"mining.rank{rank:05d}-of-{world:05d}.pt"
        if self.path.exists():
            try:
                st = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a torn or foreign file: start this rank over
                st = None
            if st is not None and st.get("key") == self.key:
                self.norms = (st["sq"], st["q4"])
                if st.get("lists") is not None:
                    lo = int(st["lo"])
                    self.lists = _m._empty_lists(plan, plan.device)
                    for full, part in zip(self.lists, st["lists"]):
                        full[lo:] = part.to(full.device)
                    self.done = int(st["done"])

    def save(self, lists, done: int = 0, my_pairs=()) -> None:
        if not self.enabled:
            return
        st = dict(key=self.key, sq=self.norms[0], q4=self.norms[1], lists=None, lo=0, done=0)
        if lists is not None:
            lo = my_pairs[0][0] if my_pairs else self.plan.n
            st.update(lists=[t[lo:].cpu() for t in lists], lo=lo, done=done)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(st, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def finish(self) -> None:
        """Kept: a later run with the same inputs reuses it (the caller removes the folder)."""
