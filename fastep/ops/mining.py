"""Exact style-distance neighbour mining for whole data sets, and triplet sampling.

:func:`mine_neighbours` finds, for every vector (Gram vector, or any embedding), its ``k_near``
nearest and ``k_far`` furthest other vectors under the squared Euclidean distance, exactly (the
sets and their order equal a float64 brute force, ties broken by the smaller index), without ever
materialising the N x N distance matrix:

The three passes are :func:`_statistics_pass`, :func:`_candidate_pass` and
:func:`_certify_and_rerank` (settings fixed once by :func:`_prepare`):

1. **Statistics pass**: the mean vector mu (float64, of at most 8192 evenly spaced rows, rounded
   once to float32) and per row the
   norms |c_i|_2 and |c_i|_4 of the centred vectors c_i = x_i - mu.  Distances are translation
   invariant; centring shrinks |c| and therefore the rounding error of the GEMM (Gram vectors of
   natural images are strongly correlated).
2. **Candidate pass** (the hot loop): symmetric tile pairs (I, J >= I) of the GEMM of centred
   vectors in a fast precision (float32 on CPU; bfloat16 inputs with float32 accumulation on
   CUDA) with the distance max(|c_i|^2 + |c_j|^2 - 2 c_i.c_j, 0) formed in the epilogue and
   merged straight into running sorted per-row lists of ``k + margin`` candidates of both ends
   (``torch.ops.fastep_C.topk_update_``: OpenMP C++ on CPU, a warp-per-row CUDA selection kernel
   after the Triton distance tile on GPU).  Each tile is computed once and feeds both its rows
   and (transposed) its columns.  Only the tiles in flight live in memory.
3. **Certification and exact re-ranking**: every approximate distance is within a bound eps_i of
   the exact one (:func:`error_bound`: input rounding of the fast precision plus float32
   accumulation, rigorous worst case or Higham-Mary probabilistic with lambda).  Sorted
   candidates whose gaps exceed 2 eps_i are certainly ordered; the top k is certain once a gap
   > 2 eps_i follows position k.  Inside groups of candidates closer than 2 eps_i (duplicates,
   exact ties, near ties) the exact float64 distances sum (x_i - x_j)^2 are computed
   (``fastep_C::pair_sqdist``) and decide, ties by index.  A row with no certain boundary within
   its candidate list (e.g. more exact duplicates than ``k + margin``) is recomputed exactly
   against all rows.  ``rerank="all"`` computes exact distances for every returned pair.

Vectors can be a tensor (CPU, pinned CPU, or CUDA), a NumPy array / ``np.memmap`` or a path to a
``.npy`` file; they are streamed to ``device`` in row blocks sized by ``memory_budget``.

:func:`sample_triplets` draws (anchor, positive from the near set, negative from the far set),
uniformly, seeded.
"""
from __future__ import annotations

import math
import mmap
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .. import _ext
from . import reference as _ref

__all__ = ["Neighbours", "mine_neighbours", "sample_triplets", "error_bound", "topk_update_",
           "pair_sqdist", "sqdist_tile"]

_ext.register_op("mine_neighbours", cuda=("triton",), cpu=("cpp",),
                 doc="exact k-nearest/furthest: streamed GEMM tiles + fused top-k + exact re-rank")
_ext.register_op("topk_update", cuda=("cuda",), cpu=("cpp",),
                 doc="merge a distance/dot tile into running top-k lists of both ends")
_ext.register_op("pair_sqdist", cuda=("reference",), cpu=("cpp",),
                 doc="float64 squared distances of index pairs (exact re-ranking)")
_ext.register_op("sqdist_tile", cuda=("triton",), cpu=("reference",),
                 doc="squared-distance tile from a GEMM with norm/clamp epilogue (+ transpose)")

_EMPTY = torch.iinfo(torch.int64).max
_MEAN_SAMPLE = 8192  # rows of the centring mean (see _centring_mean)
_CPU_SEG_K = 8192  # CPU GEMMs accumulate float32 over this many columns, then float64 (MKL runs
# K = 8192 chunks at the plain-GEMM rate on 2 cores; 2048 was ~30% slower)


def _chunked_dots(a: Tensor, b: Tensor, seg: int) -> Tensor:
    """a @ b.T as float32 GEMMs over column chunks of ``seg`` (one batched GEMM on strided views,
    no copies), the chunk results summed in float64: the float32 rounding grows with ``seg``."""
    if a.dtype != torch.float32:
        a, b = a.float(), b.float()
    k = a.shape[1]
    if k <= seg:
        return a @ b.t()
    nc = k // seg
    main = nc * seg
    if a.stride(1) != 1 or a.stride(0) < k:
        a = a.contiguous()
    if b.stride(1) != 1 or b.stride(0) < k:
        b = b.contiguous()
    a3 = a.as_strided((nc, a.shape[0], seg), (seg, a.stride(0), 1))
    b3 = b.as_strided((nc, b.shape[0], seg), (seg, b.stride(0), 1))
    out = torch.bmm(a3, b3.transpose(1, 2)).sum(0, dtype=torch.float64)
    if main < k:
        out += (a[:, main:] @ b[:, main:].t()).double()
    return out
_U32 = 2.0 ** -24


# ---------------------------------------------------------------------------------------------
# Tensor ops (torch.library)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("fastep::topk_update_", mutates_args=("near_d", "near_i", "far_d", "far_i"))
def topk_update_(tile: Tensor, row_sq: Optional[Tensor], col_sq: Optional[Tensor], row_start: int,
                 col_start: int, near_d: Tensor, near_i: Tensor, far_d: Tensor, far_i: Tensor,
                 transpose: bool = False) -> None:
    """Merge a tile into running sorted top-k lists (in place).

    ``tile`` [R, C] holds distances, or dot products of centred vectors when ``row_sq``/``col_sq``
    (squared norms) are given.  Rows ``row_start..`` of ``near_d/near_i`` [N, kn] (float32/int64,
    ascending (distance, index)) and ``far_d/far_i`` [N, kf] (descending distance, ties by index)
    are updated; the self pair is skipped.  ``transpose=True`` updates the rows of the tile's
    columns with ``tile.T``.  Empty slots: +inf / -inf with index ``INT64_MAX``.
    """
    _topk_update_impl(tile, row_sq, col_sq, row_start, col_start, near_d, near_i, far_d, far_i,
                      transpose)


def _topk_update_impl(tile, row_sq, col_sq, row_start, col_start, near_d, near_i, far_d, far_i,
                      transpose=False):
    backend = _ext.backend_for("topk_update", tile.device)
    kn, kf = near_d.shape[1], far_d.shape[1]
    if backend == "cuda" and kn + kf <= 4096:
        stream = torch.cuda.current_stream(tile.device).cuda_stream
        torch.ops.fastep_C.topk_update_(tile, row_sq, col_sq, row_start, col_start, near_d, near_i,
                                        far_d, far_i, transpose, stream)
    elif backend == "cpp":
        torch.ops.fastep_C.topk_update_(tile, row_sq, col_sq, row_start, col_start, near_d, near_i,
                                        far_d, far_i, transpose, 0)
    else:
        _ref.topk_update_reference(tile, row_sq, col_sq, row_start, col_start, near_d, near_i,
                                   far_d, far_i, transpose)


@topk_update_.register_fake
def _(tile, row_sq, col_sq, row_start, col_start, near_d, near_i, far_d, far_i, transpose=False):
    return None


@torch.library.custom_op("fastep::pair_sqdist", mutates_args=())
def pair_sqdist(x: Tensor, y: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """sum_k (x[i_p, k] - y[j_p, k])^2 in float64 for every index pair p (exact re-ranking)."""
    return _pair_sqdist_impl(x, y, i, j)


def _pair_sqdist_impl(x, y, i, j):
    if _ext.backend_for("pair_sqdist", x.device) == "cpp":
        return torch.ops.fastep_C.pair_sqdist(x, y, i, j)
    out = torch.empty(i.numel(), dtype=torch.float64, device=x.device)
    step = max(1, (1 << 27) // max(1, x.shape[1]))
    for s in range(0, i.numel(), step):
        out[s:s + step] = _ref.pair_sqdist_reference(x, y, i[s:s + step], j[s:s + step])
    return out


@pair_sqdist.register_fake
def _(x, y, i, j):
    return x.new_empty((i.numel(),), dtype=torch.float64)


@torch.library.custom_op("fastep::sqdist_tile", mutates_args=())
def sqdist_tile(a: Tensor, b: Tensor, a_sq: Tensor, b_sq: Tensor) -> Tensor:
    """Float32 tile max(a_sq[:, None] + b_sq[None, :] - 2 a b^T, 0) (Triton GEMM epilogue on CUDA)."""
    if _ext.backend_for("sqdist_tile", a.device) == "triton":
        from fastep.kernels import mining as _k
        return _k.sqdist_tile(a, b, a_sq, b_sq)[0]
    dots = a.float() @ b.float().t()
    return (a_sq.double()[:, None] + b_sq.double()[None, :] - 2 * dots.double()).clamp_min(0).float()


@sqdist_tile.register_fake
def _(a, b, a_sq, b_sq):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclass
class Neighbours:
    """Result of :func:`mine_neighbours` (CPU tensors).

    ``near_idx`` [N, k_near] / ``far_idx`` [N, k_far] (int64), sorted best first (nearest first /
    furthest first, ties by smaller index); ``near_dist`` / ``far_dist`` float64 squared
    distances (exact float64 where re-ranked, else the certified approximation, within
    ``info["eps_max"]``).  ``info`` reports the bound and how much exact work the certification
    needed: ``reranked_rows_near/far`` (rows with an ambiguous group re-ranked exactly),
    ``exact_pairs`` (float64 distances computed) and ``fallback_rows_near/far`` (rows recomputed
    against all N rows; 0 on the fast path).
    """

    near_idx: Tensor
    near_dist: Tensor
    far_idx: Tensor
    far_dist: Tensor
    info: Dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.near_idx.shape[0]

    @property
    def k_near(self) -> int:
        return self.near_idx.shape[1]

    @property
    def k_far(self) -> int:
        return self.far_idx.shape[1]


# ---------------------------------------------------------------------------------------------
# Sources: tensors, pinned host tensors, NumPy arrays / memmaps, .npy paths
# ---------------------------------------------------------------------------------------------
def _np_to_tensor(a: np.ndarray) -> Tensor:
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # read-only memmap pages: copy (this is the read from disk anyway)
        a = np.array(a)
    return torch.from_numpy(a)


class _Source:
    def __init__(self, data, transform: Optional[Callable[[Tensor], Tensor]]):
        if isinstance(data, (str, os.PathLike)):
            path = os.fspath(data)
            if not os.path.exists(path):
                raise FileNotFoundError(f"vectors: file {path!r} does not exist")
            data = np.load(path, mmap_mode="r")
        if isinstance(data, np.ndarray):
            if data.ndim != 2:
                raise ValueError(f"vectors: expected a 2-D array [N, D], got shape {data.shape}")
            if not np.issubdtype(data.dtype, np.floating):
                raise TypeError(f"vectors: expected a floating dtype, got {data.dtype}")
            self.array, self.tensor = data, None
        elif isinstance(data, Tensor):
            if data.dim() != 2:
                raise ValueError(f"vectors: expected a 2-D tensor [N, D], got shape {tuple(data.shape)}")
            if not data.is_floating_point():
                raise TypeError(f"vectors: expected a floating dtype, got {data.dtype}")
            self.array, self.tensor = None, data
        else:
            raise TypeError(f"vectors: expected a Tensor, np.ndarray/np.memmap or .npy path, got "
                            f"{type(data).__name__}")
        self.transform = transform
        self.n = int(data.shape[0])
        self.raw_dim = int(data.shape[1])
        self.dim = self.raw_dim
        if transform is not None and self.n:
            self.dim = int(self._apply(self.raw(0, 1)).shape[1])

    @property
    def device(self) -> torch.device:
        return self.tensor.device if self.tensor is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        if self.tensor is not None:
            return self.tensor.dtype
        return torch.from_numpy(np.empty(0, dtype=self.array.dtype)).dtype

    @property
    def direct(self) -> bool:
        """The vectors are a tensor used as is (no transform): exact pairs index it directly."""
        return self.tensor is not None and self.transform is None

    def raw(self, s: int, e: int) -> Tensor:
        if self.tensor is not None:
            return self.tensor[s:e]
        return _np_to_tensor(self.array[s:e])

    def _apply(self, x: Tensor) -> Tensor:
        if self.transform is None:
            return x
        y = self.transform(x)
        if not isinstance(y, Tensor) or y.dim() != 2 or y.shape[0] != x.shape[0]:
            raise ValueError("transform: must map a [B, D] batch to a [B, D'] tensor")
        return y

    def rows(self, s: int, e: int, device: torch.device, stage: Optional["_Stager"] = None) -> Tensor:
        x = self.raw(s, e)
        if x.device != device:
            x = stage.to_device(x, device) if stage is not None else x.to(device)
        return self._apply(x)

    def gather(self, idx: Tensor, device: torch.device) -> Tensor:
        idx_cpu = idx.cpu()
        if self.tensor is not None:
            x = self.tensor.index_select(0, idx.to(self.tensor.device))
        else:
            x = _np_to_tensor(self.array[idx_cpu.numpy()])
        return self._apply(x.to(device))


class _Stager:
    """Host -> device copies of row blocks through a pinned buffer (non-blocking H2D)."""

    def __init__(self):
        self.buf: Optional[Tensor] = None
        self.event = None

    def to_device(self, x: Tensor, device: torch.device) -> Tensor:
        if device.type != "cuda" or x.is_pinned():
            return x.to(device, non_blocking=x.is_pinned())
        if self.event is not None:
            self.event.synchronize()  # the previous copy out of the buffer has finished
        n = x.numel()
        if self.buf is None or self.buf.numel() < n or self.buf.dtype != x.dtype:
            self.buf = torch.empty(n, dtype=x.dtype, pin_memory=True)
        staged = self.buf[:n].view_as(x)
        staged.copy_(x)
        out = staged.to(device, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()
        return out


# ---------------------------------------------------------------------------------------------
# Error bound
# ---------------------------------------------------------------------------------------------
def unit_roundoff(compute_dtype: torch.dtype, device_type: str) -> float:
    """Unit roundoff of the GEMM inputs: bf16 2^-8, fp16 2^-11 (rounded to nearest when cast),
    fp32 exact on CPU and 2^-10 on CUDA: the Triton tile's float32 dot runs on TF32 tensor cores,
    which read the top 10 mantissa bits of each float32 operand and drop the rest (truncation,
    relative error below 2^-10, all of one sign), not round-to-nearest's 2^-11.  An H200 showed
    it: on the self tile's diagonal, where every product is a square, the errors add up to about
    4 x 2^-11 |a|^2, which a 2^-11 bound only just covered on average."""
    if compute_dtype == torch.bfloat16:
        return 2.0 ** -8
    if compute_dtype == torch.float16:
        return 2.0 ** -11
    if compute_dtype == torch.float32:
        return 2.0 ** -10 if device_type == "cuda" else 0.0
    raise TypeError(f"compute_dtype: expected bfloat16, float16 or float32, got {compute_dtype}")


def error_bound(row_norm: Tensor, row_q: Tensor, col_norm: Union[Tensor, float],
                col_q: Union[Tensor, float], dim: int, compute_dtype: torch.dtype,
                device_type: str = "cpu", mode: str = "probabilistic", lam: float = 8.0,
                acc_len: Optional[int] = None) -> Tensor:
    """Bound on |d_approx - d_exact| for the candidate pass's squared distances (float64).

    ``row_norm``/``col_norm`` are |c|_2 and ``row_q``/``col_q`` |c|_4 = (sum c^4)^(1/4) of the
    centred vectors (pass the maxima over all columns to bound a whole row).  The model:
    inputs rounded elementwise to the compute precision (relative u_in, including the float32
    centring), products exact, float32 accumulation over ``dim`` terms in any order, the
    epilogue |c_i|^2 + |c_j|^2 - 2 dot in float32.

    * ``"rigorous"``: worst case, |dot err| <= ((2u_in + u_in^2) + gamma_D (1 + u_in)^2) |c_i||c_j|,
      gamma_D = D u / (1 - D u) (Higham, Accuracy and Stability, Thm 3.1).
    * ``"probabilistic"``: Higham & Mary (SIAM J. Sci. Comput. 2019): with the rounding errors
      independent and mean zero, each sum's error is within lambda sqrt(n) u (and the input
      rounding term, by Hoeffding, within lambda (2u_in + u_in^2) sqrt(sum_k c_ik^2 c_jk^2), which
      Cauchy-Schwarz bounds by lambda (2u_in + u_in^2) |c_i|_4 |c_j|_4) with probability >= 1 - 2 exp(-lambda^2 (1-u)^2 / 2) per quantity (lambda = 8: 2.5e-14).
    d error <= 2 |dot err| + 5 u (|c_i| + |c_j|)^2 (float32 epilogue 3u; 2u for norms taken of
    the float32-rounded centred vectors on CPU).

    ``acc_len``: the GEMMs accumulate in float32 over segments of this many terms only (CPU:
    one float32 GEMM per K-chunk, chunks summed in float64; Triton: segments summed with Kahan
    compensation), so n = acc_len in gamma, plus 2u for combining the segments.
    """
    u_c = unit_roundoff(compute_dtype, device_type)
    u_in = u_c + _U32 + u_c * _U32
    rel_in = 2 * u_in + u_in * u_in
    row_norm = row_norm.double()
    row_q = row_q.double()
    if mode == "rigorous":
        n_acc = dim if acc_len is None else min(dim, int(acc_len))
        du = n_acc * _U32
        gamma = (du / (1 - du) if du < 1 else math.inf) + (0 if n_acc == dim else 2 * _U32)
        dot = (rel_in + gamma * (1 + u_in) ** 2) * row_norm * col_norm
    elif mode == "probabilistic":
        n_acc = dim if acc_len is None else min(dim, int(acc_len))
        gamma = math.expm1(lam * math.sqrt(n_acc) * _U32 + n_acc * _U32 ** 2 / (1 - _U32)) + \
            (0 if n_acc == dim else 2 * _U32)
        dot = lam * rel_in * row_q * col_q + gamma * (1 + u_in) ** 2 * row_norm * col_norm
    else:
        raise ValueError(f"bound: expected 'probabilistic' or 'rigorous', got {mode!r}")
    return 2 * dot + 5 * _U32 * (row_norm + col_norm) ** 2


# ---------------------------------------------------------------------------------------------
# Mining
# ---------------------------------------------------------------------------------------------
def _check_k(name: str, k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(k).__name__}")
    k = int(k)
    if k < 0:
        raise ValueError(f"{name}: must be >= 0, got {k}")
    if k > n - 1:
        raise ValueError(f"{name}={k} needs at least {k + 1} vectors (self excluded), got N={n}")
    return k


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    try:  # 40% of the memory available now
        with open("/proc/meminfo") as f:
            info = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if ":" in l}
        return int(0.4 * info.get("MemAvailable", 5 << 30))
    except (OSError, ValueError):
        return 2 << 30


def _block_rows(n: int, dim: int, compute_es: int, src_es: int, budget: int, symmetric_cols: bool) -> int:
    """Largest row block B with 2 blocks of compute vectors + conversion + 2 float32 tiles <= budget."""
    per_row = dim * (2 * compute_es) + min(dim, 4096) * (4 + src_es)
    b = max(1, budget // max(1, per_row))
    while b > 1 and per_row * b + 8 * b * b > budget:
        b = int(b * 0.9)
    return int(max(1, min(n, b)))


def _empty_rows(n: int, dim: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """torch.empty((n, dim)); big CPU buffers on Linux come from an anonymous mapping advised to
    use transparent huge pages: first-touch page faults were ~70% of the centring pass's time
    with 4 KiB pages (2.4 GB at N = 2k, D = 305,888)."""
    nbytes = n * dim * torch.empty(0, dtype=dtype).element_size()
    if device.type == "cpu" and nbytes >= (256 << 20) and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            buf.madvise(mmap.MADV_HUGEPAGE)
            return torch.frombuffer(buf, dtype=dtype).view(n, dim)  # the tensor keeps buf alive
        except (OSError, ValueError, AttributeError):
            pass
    return torch.empty((n, dim), dtype=dtype, device=device)


def _lexsort_rows(key_major: Tensor, value: Tensor, idx: Tensor, descending: bool) -> Tensor:
    """Permutation sorting each row by (key_major asc, value asc/desc, idx asc)."""
    order = torch.argsort(idx, dim=1, stable=True)
    v = value.gather(1, order)
    o2 = torch.sort(v, dim=1, descending=descending, stable=True).indices
    order = order.gather(1, o2)
    km = key_major.gather(1, order)
    o3 = torch.sort(km, dim=1, stable=True).indices
    return order.gather(1, o3)


class _ExactPairs:
    """float64 sum (x_i - x_j)^2 for index pairs, from the source, in bounded chunks."""

    def __init__(self, src: _Source, device: torch.device, budget: int):
        self.src, self.budget = src, budget
        # Exact distances are computed where the vectors are (CPU C++ for host data).
        self.device = src.device if src.direct else (device if src.tensor is not None and
                                                     src.tensor.is_cuda else torch.device("cpu"))
        self.count = 0

    def __call__(self, rows: Tensor, cols: Tensor) -> Tensor:
        rows, cols = rows.cpu(), cols.cpu()
        out = torch.empty(rows.numel(), dtype=torch.float64)
        if rows.numel() == 0:
            return out
        self.count += rows.numel()
        if self.src.direct:
            x = self.src.tensor
            dev = x.device
            step = max(1, min(rows.numel(), (1 << 22)))
            for s in range(0, rows.numel(), step):
                out[s:s + step] = _pair_sqdist_impl(x, x, rows[s:s + step].to(dev), cols[s:s + step].to(dev)).cpu()
            return out
        es = 4 * max(1, self.src.dim)
        max_rows = max(2, self.budget // es)
        s = 0
        while s < rows.numel():
            e = min(rows.numel(), s + max(1, max_rows // 2))
            u, inv = torch.unique(torch.cat([rows[s:e], cols[s:e]]), return_inverse=True)
            x = self.src.gather(u, self.device)
            m = e - s
            out[s:e] = _pair_sqdist_impl(x, x, inv[:m].to(x.device), inv[m:].to(x.device)).cpu()
            s = e
        return out


def mine_neighbours(vectors, k_near: int = 5, k_far: int = 13, *, device=None,
                    memory_budget: Optional[int] = None, distance: Union[str, Callable] = "style",
                    compute_dtype: Optional[torch.dtype] = None, margin: int = 8,
                    bound: str = "probabilistic", lam: float = 8.0, rerank: str = "ambiguous",
                    block_rows: Optional[int] = None, progress: bool = False,
                    process_group=None, work_dir=None) -> Neighbours:
    """Exact k nearest (self excluded) and k furthest neighbours of every row of ``vectors``.

    Args:
        vectors: [N, D] float tensor (CPU, pinned CPU or CUDA), NumPy array / ``np.memmap`` or a
            path to a ``.npy`` file (memory-mapped).  Gram vectors for the style distance.
        k_near, k_far: neighbours per end (0 <= k <= N - 1).
        device: where the GEMM tiles run (default: the tensor's device, else CUDA if available).
        memory_budget: bytes of ``device`` memory for vector blocks and tiles (default: 60% of
            free CUDA memory, 2 GiB on CPU); the data set itself may be far larger.
        distance: ``"style"`` / ``"sqeuclidean"`` (|x - y|^2 on the vectors as given),
            ``"cosine"`` (rows L2-normalised first: distance 2 - 2 cos), or a callable embedding
            applied to row batches (paper appendix A.4: mine with any network's features);
            distances are then squared Euclidean in that embedding.
        compute_dtype: GEMM input precision (default float32 on CPU, bfloat16 on CUDA).
        margin: extra candidates kept per end beyond k (more = fewer exact fallbacks).
        bound: ``"probabilistic"`` (default) or ``"rigorous"``: see :func:`error_bound`.
        rerank: ``"ambiguous"`` recomputes exact float64 distances only where the certified
            approximation cannot decide (distances elsewhere carry the bound); ``"all"`` for
            every returned pair.
        block_rows: force the row-block size (tests); default from ``memory_budget``.
        progress: show a tqdm bar over tile pairs (one bar, on rank 0, when distributed).
        process_group: a ``torch.distributed`` process group (e.g. ``torch.distributed.group.WORLD``
            under ``torchrun``): every rank calls with the same arguments and the work is shared
            (:mod:`fastep.ops.mining_distributed`); every rank gets the whole result, equal bit
            for bit to one process's with the same ``memory_budget`` / ``block_rows``.
            ``vectors`` should then be a ``.npy`` path or memmap on storage every rank sees (each
            rank reads only the row blocks its tiles need).  An argument error raised on one
            rank only (e.g. a path missing there) leaves the others waiting for the group's
            timeout; the ranks' inputs are compared at the first exchange.
        work_dir: (distributed) folder for each rank's resume file: a rank killed and started
            again continues from its last checkpoint (every minute), a finished rank redoes
            nothing.  The caller removes the folder after success.

    Returns:
        :class:`Neighbours` with CPU tensors.
    """
    if process_group is not None:
        from . import mining_distributed as _dist

        def prepare(budget=memory_budget):
            return _prepare(vectors, k_near, k_far, device=device, memory_budget=budget,
                            distance=distance, compute_dtype=compute_dtype, margin=margin,
                            bound=bound, rerank=rerank, block_rows=block_rows)
        src, plan = prepare()
        return _dist.mine_distributed(src, plan, process_group, bound=bound, lam=lam, rerank=rerank,
                                      margin=margin, progress=progress, work_dir=work_dir,
                                      redo=lambda b: prepare(b)[1])
    src, plan = _prepare(vectors, k_near, k_far, device=device, memory_budget=memory_budget,
                         distance=distance, compute_dtype=compute_dtype, margin=margin, bound=bound,
                         rerank=rerank, block_rows=block_rows)
    n = plan.n
    stage = _Stager()
    with torch.no_grad():
        stats = _statistics_pass(src, plan, stage)
        lists = _empty_lists(plan, plan.device)
        pairs = _tile_pairs(plan)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(pairs), desc="mining tiles", unit="tile")
        _candidate_pass(src, plan, stats, pairs, lists, stage, bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
        stats.xall = None
    eps = _row_bounds(plan, stats, bound, lam)
    exact = _ExactPairs(src, plan.device, plan.budget)
    info = _base_info(plan, stats, eps, len(pairs), bound, lam, margin)
    near, far = _certify_and_rerank([t.cpu() for t in lists], 0, plan, eps, exact, rerank)
    info.update(fallback_rows_near=near[2], fallback_rows_far=far[2], exact_pairs=exact.count,
                reranked_rows_near=near[3], reranked_rows_far=far[3])
    _warn_fallbacks(near[2] + far[2], n)
    return Neighbours(near[0], near[1], far[0], far[1], info)


# ---- the three passes ------------------------------------------------------------------------
@dataclass
class _Plan:
    """Settings shared by the passes (derived once from the arguments and the data's shape)."""

    n: int
    dim: int
    k_near: int
    k_far: int
    kn2: int                   # candidates kept per row, nearest end (k_near + margin, <= N - 1)
    kf2: int                   # furthest end
    device: torch.device
    compute_dtype: torch.dtype
    budget: int
    src_es: int                # element size of the source vectors
    ces: int                   # element size of the compute dtype
    stat_rows: int             # rows per chunk of the statistics pass
    cpp_stats: bool            # the statistics pass runs the fastep_C loops
    resident: bool             # the centred vectors are converted once and kept on the device
    block_rows: int            # B: tile pairs are B x B blocks of rows
    use_triton: bool           # CUDA distance tiles from the Triton kernel
    dist_name: str


@dataclass
class _Stats:
    """Output of the statistics pass."""

    mu32: Tensor               # the mean, rounded once to float32 (on plan.device)
    sq: Tensor                 # [N] float64 |c_i|^2 (CPU)
    q4: Tensor                 # [N] float64 |c_i|_4 (CPU)
    xall: Optional[Tensor]     # resident centred vectors in the compute dtype, else None

    @property
    def norms(self) -> Tensor:
        return self.sq.sqrt()


def _prepare(vectors, k_near, k_far, *, device, memory_budget, distance, compute_dtype, margin,
             bound, rerank, block_rows) -> Tuple[_Source, _Plan]:
    """Validate the arguments and fix every setting of the passes."""
    transform = None
    if callable(distance):
        transform, dist_name = distance, "embedding"
    elif distance in ("style", "sqeuclidean", "euclidean_sq"):
        dist_name = "sqeuclidean"
    elif distance == "cosine":
        transform = lambda x: torch.nn.functional.normalize(x.double(), dim=1)  # noqa: E731
        dist_name = "cosine"
    else:
        raise ValueError(f"distance: expected 'style', 'sqeuclidean', 'cosine' or a callable, got {distance!r}")
    if rerank not in ("ambiguous", "all"):
        raise ValueError(f"rerank: expected 'ambiguous' or 'all', got {rerank!r}")
    if bound not in ("probabilistic", "rigorous"):
        raise ValueError(f"bound: expected 'probabilistic' or 'rigorous', got {bound!r}")
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin: expected an int >= 0, got {margin!r}")
    src = _Source(vectors, transform)
    n = src.n
    if n < 2:
        raise ValueError(f"vectors: need at least 2 rows to mine neighbours, got N={n}")
    k_near = _check_k("k_near", k_near, n)
    k_far = _check_k("k_far", k_far, n)
    if device is None:
        device = src.device if src.tensor is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    unit_roundoff(compute_dtype, device.type)  # validates
    budget = int(memory_budget) if memory_budget is not None else _default_budget(device)
    if budget <= 0:
        raise ValueError(f"memory_budget: must be > 0 bytes, got {memory_budget}")
    dim = src.dim
    src_es = torch.empty(0, dtype=src.dtype).element_size()
    ces = torch.empty(0, dtype=compute_dtype).element_size()
    stat_bytes = (1 << 30) if device.type == "cuda" else (16 << 20)  # CPU: no page-fault churn
    stat_rows = max(1, min(n, stat_bytes // max(1, dim * 8), budget // max(1, dim * (src_es + 24))))
    cpp_stats = device.type == "cpu" and _ext.has_C() and _ext.backend_for("topk_update", device) == "cpp"
    if cpp_stats:  # bigger chunks: the C++ loops make no temporaries
        stat_rows = max(1, min(n, (256 << 20) // max(1, dim * 4)))
    # Resident: the centred vectors in the compute precision fit the budget (with room for
    # tiles); they are converted once and the tiles are views.  Otherwise blocks are streamed.
    resident = n * dim * ces <= 0.6 * budget
    if block_rows:
        B = int(block_rows)
    elif resident:
        # Tiles: symmetric pairs, so smaller blocks waste less on the diagonal tiles (CPU); on
        # CUDA the Triton kernel skips the lower half of diagonal tiles, big tiles fill the GPU.
        B = 256 if device.type == "cpu" else 4096
        while B > 64 and 8 * B * B > 0.3 * budget:
            B //= 2
        B = min(n, B)
    else:
        B = _block_rows(n, dim, ces, src_es, budget, True)
    use_triton = device.type == "cuda" and _ext.backend_for("sqdist_tile", device) == "triton"
    plan = _Plan(n=n, dim=dim, k_near=k_near, k_far=k_far,
                 kn2=min(n - 1, k_near + margin) if k_near else 0,
                 kf2=min(n - 1, k_far + margin) if k_far else 0,
                 device=device, compute_dtype=compute_dtype, budget=budget, src_es=src_es, ces=ces,
                 stat_rows=stat_rows, cpp_stats=cpp_stats, resident=resident, block_rows=B,
                 use_triton=use_triton, dist_name=dist_name)
    return src, plan


def _statistics_pass(src: _Source, plan: _Plan, stage: "_Stager") -> _Stats:
    """Pass 1: the centring vector mu (:func:`_centring_mean`) and the centred norms
    |c_i|_2^2, |c_i|_4 of every row (and the resident centred copy when it fits)."""
    n = plan.n
    mu32 = _centring_mean(src, plan, stage)
    xall = _empty_rows(n, plan.dim, plan.compute_dtype, plan.device) if plan.resident else None
    sq = torch.empty(n, dtype=torch.float64)
    q4 = torch.empty(n, dtype=torch.float64)
    _centred_norms(src, plan, stage, mu32, 0, n, sq, q4, xall)
    return _Stats(mu32=mu32, sq=sq, q4=q4, xall=xall)


def _centring_mean(src: _Source, plan: _Plan, stage: "_Stager") -> Tensor:
    """mu: the float64 mean of every s-th row, s = ceil(N / _MEAN_SAMPLE) (all rows up to
    _MEAN_SAMPLE), summed in a fixed chunk order and rounded once to float32.

    Any fixed vector keeps the distances exact (they are translation invariant, and the bound
    uses the norms of the vectors centred on mu); the mean only makes |c| small.  A sample's
    mean differs from the full mean by ~sigma / sqrt(_MEAN_SAMPLE) per coordinate, which adds
    ~1 / _MEAN_SAMPLE to |c|^2: negligible, and the result depends only on the data (not on a
    summation order that a sharded run would change), which is what makes a run over several
    processes give the same bytes as one process."""
    n, dim, device = plan.n, plan.dim, plan.device
    step = -(-n // _MEAN_SAMPLE)
    total = torch.zeros(dim, dtype=torch.float64, device=device)
    if step == 1:
        chunks = ((s, min(n, s + plan.stat_rows)) for s in range(0, n, plan.stat_rows))
        load = lambda s, e: src.rows(s, e, device, stage)  # noqa: E731
    else:
        idx = torch.arange(0, n, step)
        chunks = ((s, min(idx.numel(), s + plan.stat_rows)) for s in range(0, idx.numel(), plan.stat_rows))
        load = lambda s, e: src.gather(idx[s:e], device)  # noqa: E731
    count = 0
    for s, e in chunks:
        x = load(s, e)
        if plan.cpp_stats and x.dtype == torch.float32 and x.device.type == "cpu":
            total += torch.ops.fastep_C.colsum64(x.contiguous())
        else:
            total += x.sum(0, dtype=torch.float64)
        count += e - s
        del x
    return (total / count).float()


def _centred_norms(src: _Source, plan: _Plan, stage: "_Stager", mu32: Tensor, start: int, stop: int,
                   sq: Tensor, q4: Tensor, xall: Optional[Tensor]) -> None:
    """|c_i|^2 and |c_i|_4 for rows start..stop (into sq/q4[start:stop]; xall rows if resident)."""
    dim, device, stat_rows = plan.dim, plan.device, plan.stat_rows
    mu64 = mu32.double()
    # float32 GEMM inputs: the norms are those of the rounded centred vectors c~ = fl(x - mu)
    # (what the GEMM multiplies; |c~ - c| <= u|c| is in error_bound's epilogue term); lower
    # precisions: norms of the exact c = x - mu in float64.
    norms_of_rounded = plan.compute_dtype == torch.float32
    for s in range(start, stop, stat_rows):
        e = min(stop, s + stat_rows)
        x = src.rows(s, e, device, stage)
        if norms_of_rounded:
            c = xall[s:e] if xall is not None else torch.empty((e - s, dim), dtype=torch.float32, device=device)
            if plan.cpp_stats:
                torch.ops.fastep_C.center_stats_(x.float(), mu32, c, sq[s:e], q4[s:e])
                del c, x
                continue
            torch.sub(x.float(), mu32, out=c)
        else:
            c = x.double() - mu64
            if xall is not None:
                xall[s:e] = (x.float() - mu32).to(plan.compute_dtype)
        sq[s:e] = torch.linalg.vector_norm(c, 2, dim=1, dtype=torch.float64).square().cpu()
        q4[s:e] = torch.linalg.vector_norm(c, 4, dim=1, dtype=torch.float64).cpu()  # |c|_4
        del c, x


def _empty_lists(plan: _Plan, device: torch.device) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Empty running candidate lists near_d, near_i, far_d, far_i for all N rows."""
    n = plan.n
    return (torch.full((n, plan.kn2), math.inf, dtype=torch.float32, device=device),
            torch.full((n, plan.kn2), _EMPTY, dtype=torch.int64, device=device),
            torch.full((n, plan.kf2), -math.inf, dtype=torch.float32, device=device),
            torch.full((n, plan.kf2), _EMPTY, dtype=torch.int64, device=device))


def _tile_pairs(plan: _Plan):
    """The symmetric tile pairs (row block start I, column block start J >= I), row-major."""
    starts = list(range(0, plan.n, plan.block_rows))
    return [(a, b) for ai, a in enumerate(starts) for b in starts[ai:]]


def _candidate_pass(src: _Source, plan: _Plan, stats: _Stats, pairs, lists, stage: "_Stager",
                    on_tile: Optional[Callable[[int], object]] = None) -> None:
    """Pass 2 (the hot loop): the distance tiles of ``pairs`` merged into the running lists.

    Each tile (I, J > I) feeds the rows of I and, transposed, the rows of J; a tile's values
    depend only on its two blocks, so any subset of the pairs, merged in any order, gives the
    same lists as the whole loop restricted to that subset."""
    n, dim, B, device = plan.n, plan.dim, plan.block_rows, plan.device
    near_d, near_i, far_d, far_i = lists
    sq_dev = stats.sq.to(device)
    mu32, xall, compute_dtype = stats.mu32, stats.xall, plan.compute_dtype
    sub = max(1, (64 << 20) // max(1, dim * 8))

    def load_block(s: int, e: int) -> Tensor:
        if xall is not None:
            return xall[s:e]
        out = torch.empty((e - s, dim), dtype=compute_dtype, device=device)
        for t in range(s, e, sub):
            u = min(e, t + sub)
            x = src.rows(t, u, device, stage)
            out[t - s:u - s] = (x.float() - mu32).to(compute_dtype)
        return out

    cur_i, Xi, Xj = None, None, None
    for si, sj in pairs:
        ei, ej = min(n, si + B), min(n, sj + B)
        if cur_i != si:
            Xi, cur_i = None, None
            Xi, cur_i = load_block(si, ei), si
        Xj = Xi if sj == si else load_block(sj, ej)
        sym = sj != si
        if plan.use_triton:
            from fastep.kernels import mining as _k
            d, dt = _k.sqdist_tile(Xi, Xj, sq_dev[si:ei].float(), sq_dev[sj:ej].float(),
                                   write_t=sym, diagonal=not sym)
            _topk_update_impl(d, None, None, si, sj, near_d, near_i, far_d, far_i, False)
            if sym:
                _topk_update_impl(dt, None, None, sj, si, near_d, near_i, far_d, far_i, False)
            del d, dt
        else:
            dots = _chunked_dots(Xi, Xj, _CPU_SEG_K)
            _topk_update_impl(dots, sq_dev[si:ei], sq_dev[sj:ej], si, sj, near_d, near_i,
                              far_d, far_i, False)
            if sym:
                _topk_update_impl(dots, sq_dev[si:ei], sq_dev[sj:ej], si, sj, near_d, near_i,
                                  far_d, far_i, True)
            del dots
        if on_tile is not None:
            on_tile(1)
    del Xi, Xj


def _acc_len(plan: _Plan) -> int:
    if plan.use_triton:
        from fastep.kernels import mining as _k
        return _k.SEG_K
    return _CPU_SEG_K


def _row_bounds(plan: _Plan, stats: _Stats, bound: str, lam: float) -> Tensor:
    """eps_i: the certified bound on |approx - exact| of every candidate distance of row i."""
    norms = stats.norms
    return error_bound(norms, stats.q4, float(norms.max()), float(stats.q4.max()), plan.dim,
                       plan.compute_dtype, plan.device.type, bound, lam, acc_len=_acc_len(plan))


def _base_info(plan: _Plan, stats: _Stats, eps: Tensor, tiles: int, bound: str, lam: float,
               margin: int) -> Dict[str, object]:
    return dict(n=plan.n, dim=plan.dim, distance=plan.dist_name, compute_dtype=str(plan.compute_dtype),
                device=str(plan.device), block_rows=plan.block_rows, resident=plan.resident,
                tiles=tiles, bound=bound, lam=lam, margin=margin, eps_max=float(eps.max()),
                eps_rel_median=float((eps / stats.sq.clamp_min(1e-300)).median()))


def _certify_and_rerank(lists, row0: int, plan: _Plan, eps: Tensor, exact: "_ExactPairs", rerank: str):
    """Pass 3: certify the CPU candidate lists of rows row0.. (eps of all rows) and re-rank the
    ambiguous groups exactly; returns (near, far), each (idx, dist, fallback_rows, reranked_rows)."""
    near_d, near_i, far_d, far_i = lists
    rows = near_d.shape[0] if plan.kn2 else far_d.shape[0]
    e = eps[row0:row0 + rows]
    near = _finish(near_d, near_i, plan.k_near, e, exact, plan.n, False, rerank, row0, rows)
    far = _finish(far_d, far_i, plan.k_far, e, exact, plan.n, True, rerank, row0, rows)
    return near, far


def _warn_fallbacks(count: int, n: int) -> None:
    if count > max(10, n // 100):
        warnings.warn(f"mine_neighbours: {count} rows needed an exact fallback over all "
                      f"N={n} rows (many exact duplicates or a loose bound); raise margin",
                      RuntimeWarning, stacklevel=3)


def _finish(ad: Tensor, ai: Tensor, k: int, eps: Tensor, exact: _ExactPairs, n: int, far: bool,
            rerank: str, row0: int = 0, rows: Optional[int] = None) -> Tuple[Tensor, Tensor, int, int]:
    """Certify the candidate lists of rows row0..row0+rows, re-rank ambiguous groups exactly,
    fall back where needed.  Returns (idx, dist, rows that fell back, rows with an exact
    re-ranked group)."""
    rows = n if rows is None else rows
    if k == 0:
        return torch.empty((rows, 0), dtype=torch.int64), torch.empty((rows, 0), dtype=torch.float64), 0, 0
    K = ad.shape[1]
    a = ad.double()
    tol = (2 * eps)[:, None]
    gaps = (a[:, :-1] - a[:, 1:]) if far else (a[:, 1:] - a[:, :-1])
    certain = torch.zeros((rows, K), dtype=torch.bool)
    certain[:, :-1] = gaps > tol
    if K == n - 1:
        certain[:, -1] = True  # no non-candidates left
    # a certain boundary after position k-1 or later
    ok = certain[:, k - 1:].any(1)
    cid = torch.zeros((rows, K), dtype=torch.int64)
    cid[:, 1:] = certain[:, :-1].long().cumsum(1)
    size = torch.zeros((rows, K), dtype=torch.int64).scatter_add_(1, cid, torch.ones_like(cid))
    csize = size.gather(1, cid)
    relevant = cid <= cid[:, k - 1:k]
    need = relevant & ok[:, None] & ((csize > 1) if rerank == "ambiguous" else torch.ones_like(relevant))
    value = a.clone()
    r, c = need.nonzero(as_tuple=True)
    if r.numel():
        value[r, c] = exact(r + row0, ai[r, c])
    order = _lexsort_rows(cid, value, ai, descending=far)[:, :k]
    out_i = ai.gather(1, order)
    out_d = value.gather(1, order)
    bad = (~ok).nonzero(as_tuple=True)[0]
    for row in bad.tolist():
        g = row + row0
        cols = torch.cat([torch.arange(0, g), torch.arange(g + 1, n)])
        d = exact(torch.full_like(cols, g), cols)
        o = _lexsort_rows(torch.zeros((1, n - 1), dtype=torch.int64), d[None], cols[None], far)[0, :k]
        out_i[row] = cols[o]
        out_d[row] = d[o]
    return out_i, out_d, int(bad.numel()), int(need.any(1).sum())


# ---------------------------------------------------------------------------------------------
# Triplets
# ---------------------------------------------------------------------------------------------
def sample_triplets(neighbours, n: Optional[int] = None, seed: int = 0, *, k_near: Optional[int] = None,
                    k_far: Optional[int] = None) -> Tensor:
    """(anchor, positive, negative) index triplets, as in StEP stage 1.

    The positive is drawn uniformly from the anchor's ``k_near`` nearest (default: all mined,
    k_c = 5), the negative uniformly from its ``k_far`` furthest (k_f = 13).  ``n=None`` gives one
    triplet per anchor (anchors 0..N-1 in order); an int draws ``n`` anchors uniformly with
    replacement.  Same ``seed`` -> same triplets (a private ``torch.Generator``).

    ``neighbours`` is a :class:`Neighbours` or anything with ``near_idx``/``far_idx`` (attributes
    or mapping keys, e.g. the ``fastep mine`` npz).
    """
    def get(name):
        v = neighbours[name] if isinstance(neighbours, dict) or hasattr(neighbours, "files") \
            else getattr(neighbours, name)
        return torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v).long().cpu()

    near, far = get("near_idx"), get("far_idx")
    if near.dim() != 2 or far.dim() != 2 or near.shape[0] != far.shape[0]:
        raise ValueError("neighbours: near_idx/far_idx must be [N, k] with the same N")
    N = near.shape[0]
    kn = near.shape[1] if k_near is None else int(k_near)
    kf = far.shape[1] if k_far is None else int(k_far)
    if not 1 <= kn <= near.shape[1]:
        raise ValueError(f"k_near: expected 1..{near.shape[1]}, got {kn}")
    if not 1 <= kf <= far.shape[1]:
        raise ValueError(f"k_far: expected 1..{far.shape[1]}, got {kf}")
    g = torch.Generator().manual_seed(int(seed))
    if n is None:
        anchors = torch.arange(N)
    else:
        if int(n) < 0:
            raise ValueError(f"n: expected >= 0, got {n}")
        anchors = torch.randint(0, N, (int(n),), generator=g)
    pos = near[anchors, torch.randint(0, kn, (anchors.numel(),), generator=g)]
    neg = far[anchors, torch.randint(0, kf, (anchors.numel(),), generator=g)]
    return torch.stack([anchors, pos, neg], 1)
