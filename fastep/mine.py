"""``fastep mine``: exact style-distance neighbours and stage-1 triplets of a whole image folder.

    fastep mine DATA --out triplets.npz [--layers vgg16|gatys] [--k-near 5 --k-far 13]
                [--subset N] [--batch B] [--device cuda|cpu] [--weights random|imagenet|PATH]
                [--resolution 256] [--strict]

DATA is a pix2pix "AB" folder (A and B side by side; the B half is used) or a plain image
folder (``--format auto`` decides from the first image: width == 2 x height means AB).  Steps:

1. list the images (sorted; ``--subset N`` keeps a seeded random N of them, as the paper's 8000);
2. Gram vectors of VGG features (:func:`fastep.features.style_features`, ``output="vectors"``),
   chunk by chunk, into a float32 ``.npy`` memmap in the work dir (``<out>.work/`` by default);
3. exact neighbours over all of them (:func:`fastep.ops.mining.mine_neighbours`, streamed from
   the memmap under ``--memory-budget``);
4. one triplet per anchor (:func:`fastep.ops.mining.sample_triplets`, ``--seed``);
5. ``--out`` (npz): near_idx, near_dist, far_idx, far_dist, triplets, paths (relative to DATA),
   skipped (files that could not be used) and provenance (JSON: fastep version, weights, arch,
   layers, resolution, image-list hash, k's, seed).

Resumable: every finished chunk is recorded in ``state.json`` (atomic renames); a killed run,
started again with the same arguments, continues after its last finished chunk and writes a
file byte-identical to an uninterrupted run's.  Unreadable or odd-sized (odd-width AB) images are
reported by name and skipped; ``--strict`` makes them an error.

Under ``torchrun`` (WORLD_SIZE > 1; DATA, --out and the work dir on storage every rank sees) the
ranks first compare a hash of their inputs (one line if they differ), share the chunks round
robin (each rank records its own ``state.rankNNNNN.json``), mine with the process group
(:mod:`fastep.ops.mining_distributed`) and rank 0 writes the same bytes one process would (with
the same ``--memory-budget``).  A rank that dies makes the others stop with a message.
The npz holds only numbers and strings (``np.load(..., allow_pickle=False)``; :func:`load_mined`).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

STATE_VERSION = 1
NPZ_FORMAT = 1  # provenance["npz_format"]: arrays of numbers and strings only, provenance as JSON text


class MineError(RuntimeError):
    """A clear, user-facing failure of ``fastep mine`` (printed without a traceback)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="image folder (pix2pix AB images or plain images)")
    p.add_argument("--out", required=True, help="output .npz (neighbours, distances, triplets, provenance)")
    p.add_argument("--layers", default="vgg16", help="style layers: vgg16 (StEP, default) or gatys (VGG19)")
    p.add_argument("--k-near", type=int, default=5, help="nearest neighbours per anchor (k_c, default 5)")
    p.add_argument("--k-far", type=int, default=13, help="furthest neighbours per anchor (k_f, default 13)")
    p.add_argument("--subset", type=int, default=None, help="mine inside a seeded random subset of N images")
    p.add_argument("--batch", type=int, default=16, help="images per VGG forward pass (default 16)")
    p.add_argument("--chunk", type=int, default=None,
                   help="images per resumable chunk (default 16 x --batch)")
    p.add_argument("--device", default=None, choices=("cuda", "cpu"), help="default: cuda if available")
    p.add_argument("--weights", default="imagenet", help="VGG weights: imagenet (default), random, or a file")
    p.add_argument("--resolution", type=int, default=256, help="images are resized to R x R (default 256)")
    p.add_argument("--format", default="auto", choices=("auto", "ab", "plain"),
                   help="ab: use the right (B) half; plain: whole image; auto: AB if width == 2 x height")
    p.add_argument("--strict", action="store_true", help="fail on an unreadable/odd-sized image instead of skipping it")
    p.add_argument("--seed", type=int, default=0, help="seed of --subset, random weights and triplet sampling")
    p.add_argument("--work-dir", default=None, help="work folder for the memmap and resume state (default <out>.work)")
    p.add_argument("--memory-budget", type=float, default=None,
                   help="GiB of device memory for mining tiles (default: 60%% of free CUDA memory / 2 GiB CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder after success")
    p.add_argument("--dist-timeout", type=float, default=1800.0,
                   help="under torchrun: seconds a rank waits for the others before it stops with a "
                        "message (default 1800)")
    # testing aid: stop (exit code 3) after this many chunks were finished in this run
    p.add_argument("--stop-after-chunks", type=int, default=None, help=argparse.SUPPRESS)


# ---------------------------------------------------------------------------------------------
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def write_npz_deterministic(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """np.savez-compatible file with fixed zip timestamps (same content -> same bytes), atomically."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            arr_buf = io.BytesIO()
            np.lib.format.write_array(arr_buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, arr_buf.getvalue())
    _atomic_write_bytes(Path(path), buf.getvalue())


def _list_hash(rel_paths: List[str]) -> str:
    h = hashlib.sha256()
    for p in rel_paths:
        h.update(p.encode("utf-8") + b"\0")
    return h.hexdigest()


def _load_image(path: Path, fmt: str, resolution: int):
    """uint8 file -> float [3, R, R] in [-1, 1] (B half for AB images)."""
    import torch
    import torch.nn.functional as F

    from .data.images import read_image, split_ab

    img = read_image(path)
    if fmt == "ab":
        _, img = split_ab(img, path)
    x = img.float().unsqueeze(0) / 127.5 - 1.0
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=True)
    return x[0].clamp_(-1, 1)


def _detect_format(paths: List[Path]) -> str:
    from .data.images import ImageReadError

    for p in paths[:16]:
        try:
            from PIL import Image
            with Image.open(p) as im:
                w, h = im.size
            return "ab" if w == 2 * h else "plain"
        except Exception:  # noqa: BLE001 - unreadable: try the next one
            continue
    raise ImageReadError(paths[0], "none of the first images could be read to detect the format")


# ---------------------------------------------------------------------------------------------
class _Dist:
    """The ranks of a ``torchrun`` job (WORLD_SIZE > 1 in the environment), or one process."""

    def __init__(self, args):
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.group = None
        self.comm = None
        if self.world <= 1:
            self.world, self.rank = 1, 0
            return
        import datetime

        import torch
        import torch.distributed as dist

        from .ops.mining_distributed import _Comm

        want_cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
        if want_cuda and torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
        backend = "nccl" if want_cuda and torch.cuda.is_available() else "gloo"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.dist_timeout))
        except (RuntimeError, ValueError) as err:
            raise MineError(f"rank {self.rank}: could not join the torchrun job: "
                            f"{str(err).strip().splitlines()[0][:200]}") from None
        self.group = dist.group.WORLD
        self.comm = _Comm(self.group)

    @property
    def on(self) -> bool:
        return self.world > 1

    def barrier(self, step: str) -> None:
        if self.on:
            import torch
            self.comm.all_reduce(step, torch.zeros(1))

    def agree(self, key: Optional[str], error: Optional[Exception]) -> None:
        """Every rank must have prepared the same run: exchange a flag + the SHA-256 of its
        inputs; a rank that failed raises its own error, the others a one-line MineError."""
        if not self.on:
            if error is not None:
                raise error
            return
        import torch
        digest = bytes(32) if key is None else hashlib.sha256(key.encode()).digest()
        mine = torch.tensor([0 if error is None else 1] + list(digest), dtype=torch.uint8)
        got = self.comm.all_gather("checking that every rank sees the same inputs", mine)
        if error is not None:
            raise error
        failed = [r for r in range(self.world) if got[r][0] != 0]
        if failed:
            raise MineError(f"rank(s) {failed} stopped with an error (see their message)")
        differ = [r for r in range(self.world) if not torch.equal(got[r], got[0])]
        if differ:
            raise MineError(f"rank(s) {differ} see different inputs than rank 0 (DATA folder contents, "
                            f"--k-near/--k-far or other options differ); every rank must run the same "
                            f"command on the same data")

    def close(self) -> None:
        if self.on:
            import torch.distributed as dist
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - already broken by a failed rank
                pass


def run(args) -> int:
    from .ops.mining_distributed import DistributedMiningError

    ctx = None
    try:
        ctx = _Dist(args)
        return _run(args, ctx)
    except MineError as err:
        rank = f"rank {ctx.rank}: " if ctx is not None and ctx.on and not str(err).startswith("rank") else ""
        print(f"fastep mine: error: {rank}{err}", file=sys.stderr)
        return 2
    except DistributedMiningError as err:
        print(f"fastep mine: error: {str(err).replace('mine_neighbours: ', '')}", file=sys.stderr)
        return 2
    finally:
        if ctx is not None:
            ctx.close()


def _run(args, ctx: "_Dist") -> int:
    import torch

    from . import __version__
    from .data.images import ImageReadError
    from .ops.mining import mine_neighbours, sample_triplets

    try:
        prep = _prepare(args, ctx)
        error = None
    except MineError as err:
        prep, error = None, err
    ctx.agree(None if prep is None else json.dumps(prep["key"], sort_keys=True), error)
    paths, rel, fmt, device, chunk, work, net, dim, weights_desc, config = (
        prep[k] for k in ("paths", "rel", "fmt", "device", "chunk", "work", "net", "dim",
                          "weights_desc", "config"))
    n_all = len(paths)
    need = max(args.k_near, args.k_far) + 1
    from .features import style_features

    vec_path = work / "vectors.npy"
    if ctx.rank == 0:
        state = _read_state(work / "state.json", config)
        if state is None or not vec_path.exists():
            for f in work.glob("state.rank*.json"):
                f.unlink()
            import shutil
            shutil.rmtree(work / "mining", ignore_errors=True)  # candidate checkpoints of that run
            np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32, shape=(n_all, dim)).flush()
            _atomic_json(work / "state.json", dict(config=config, done=[], bad={}))
    ctx.barrier("creating the work folder")
    done, bad = _read_done(work, config)
    own_path = work / ("state.json" if not ctx.on else f"state.rank{ctx.rank:05d}.json")
    own = _read_state(own_path, config) or dict(config=config, done=[], bad={})
    offset = np.load(vec_path, mmap_mode="r").offset

    # ---- Gram vectors, chunk by chunk (resumable; shared by image over the ranks) -----------
    chunks = list(range(0, n_all, chunk))
    todo = [c for c in chunks if c not in done][ctx.rank::ctx.world]
    left = [c for c in chunks if c not in done]
    progress = not args.no_progress
    from .ops.mining_distributed import _Progress
    bar = _Progress(ctx.comm, n_all, sum(min(chunk, n_all - c) for c in todo), progress,
                    f"fastep_mine/{config['image_list_sha256'][:16]}/gram", desc="Gram vectors",
                    unit="img", initial=n_all - sum(min(chunk, n_all - c) for c in left))
    finished_now = 0
    with open(vec_path, "r+b") as vf:
        for c in todo:
            imgs, rows = [], []
            for i in range(c, min(n_all, c + chunk)):
                try:
                    imgs.append(_load_image(paths[i], fmt, args.resolution))
                    rows.append(i)
                except ImageReadError as err:
                    if args.strict:
                        raise MineError(f"{err} (--strict)") from None
                    print(f"fastep mine: skipping {rel[i]}: {err.reason}", file=sys.stderr)
                    own["bad"][str(i)] = err.reason
            if imgs:
                x = torch.stack(imgs).to(device)
                v = style_features(x, net=net, output="vectors", batch_size=args.batch)
                _write_rows(vf, offset, dim, rows, v.float().cpu().numpy())
            own["done"].append(c)
            _atomic_json(own_path, own)
            finished_now += 1
            bar(min(chunk, n_all - c))
            if args.stop_after_chunks is not None and finished_now >= args.stop_after_chunks:
                bar.close()
                print(f"fastep mine: stopping after {finished_now} chunk(s) (--stop-after-chunks)", file=sys.stderr)
                return 3
    ctx.barrier("waiting for every rank's Gram vectors")
    bar.close(complete=True)
    done, bad = _read_done(work, config)
    missing = [c for c in chunks if c not in done]
    if missing:
        raise MineError(f"Gram vectors of chunk(s) starting at {missing[:5]} are missing (work folder "
                        f"{str(work)!r} changed while running?)")

    good = [i for i in range(n_all) if i not in bad]
    if len(good) < need:
        raise MineError(f"DATA: only {len(good)} usable image(s) ({len(bad)} skipped); k_near="
                        f"{args.k_near}, k_far={args.k_far} need at least {need}")
    source = str(vec_path)
    if bad:  # compact the usable rows into a second memmap
        comp_path = work / "vectors_usable.npy"
        if ctx.rank == 0:
            src = np.load(vec_path, mmap_mode="r")
            comp = np.lib.format.open_memmap(comp_path, mode="w+", dtype=np.float32, shape=(len(good), dim))
            for s in range(0, len(good), chunk):
                comp[s:s + chunk] = src[good[s:s + chunk]]
            comp.flush()
            del comp, src
        ctx.barrier("compacting the usable Gram vectors")
        source = str(comp_path)

    # ---- mining ---------------------------------------------------------------------------------
    budget = None if args.memory_budget is None else int(args.memory_budget * (1 << 30))
    nb = mine_neighbours(source, args.k_near, args.k_far, device=device, memory_budget=budget,
                         progress=progress, process_group=ctx.group,
                         work_dir=work / "mining" if ctx.on else None)
    if ctx.rank == 0:
        triplets = sample_triplets(nb, seed=args.seed) if args.k_near and args.k_far else \
            np.zeros((0, 3), dtype=np.int64)
        provenance = dict(fastep_version=__version__, weights=weights_desc, arch=net.arch,
                          layers=args.layers, layer_names=list(net.layers), resolution=args.resolution,
                          format=fmt, image_list_sha256=config["image_list_sha256"], n_images=len(good),
                          n_listed=n_all, subset=args.subset, k_near=args.k_near, k_far=args.k_far,
                          seed=args.seed, distance="style (squared Euclidean on Gram vectors)",
                          dim=dim, exact=True, skipped=len(bad), npz_format=NPZ_FORMAT)
        arrays = dict(near_idx=nb.near_idx.numpy(), near_dist=nb.near_dist.numpy(),
                      far_idx=nb.far_idx.numpy(), far_dist=nb.far_dist.numpy(),
                      triplets=np.asarray(triplets, dtype=np.int64),
                      paths=np.array([rel[i] for i in good], dtype=str),
                      skipped=np.array([f"{rel[i]}: {bad[i]}" for i in sorted(bad)], dtype=str),
                      provenance=np.array(json.dumps(provenance, sort_keys=True)))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_npz_deterministic(out, arrays)
        ranks = f" on {ctx.world} ranks" if ctx.on else ""
        print(f"fastep mine: {len(good)} images ({len(bad)} skipped), k_near={args.k_near}, "
              f"k_far={args.k_far}{ranks} -> {out}")
    ctx.barrier("writing the output")
    if ctx.rank == 0 and not args.keep_work:
        _remove_work(work)
    return 0


def _prepare(args, ctx: "_Dist") -> dict:
    """Validate the arguments, list the images, load the network: everything a rank needs
    before the ranks compare their inputs."""
    import torch

    from .data.images import list_images

    data = Path(args.data)
    out = Path(args.out)
    try:
        paths = list_images(data)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise MineError(f"DATA: {err}") from None
    if not paths:
        raise MineError(f"DATA: no images found in {str(data)!r} (extensions .png, .jpg, ...)")
    for name in ("k_near", "k_far"):
        if getattr(args, name) < 0:
            raise MineError(f"--{name.replace('_', '-')}: must be >= 0")
    if args.batch < 1:
        raise MineError("--batch: must be >= 1")
    if args.resolution < 16:
        raise MineError("--resolution: must be >= 16 (five VGG blocks need at least 16 x 16 pixels)")
    if args.subset is not None:
        if args.subset < 2:
            raise MineError("--subset: must be >= 2")
        if args.subset < len(paths):
            g = torch.Generator().manual_seed(args.seed)
            keep = torch.randperm(len(paths), generator=g)[: args.subset].sort().values.tolist()
            paths = [paths[i] for i in keep]
    n_all = len(paths)
    need = max(args.k_near, args.k_far) + 1
    if n_all < need:
        raise MineError(f"DATA: {n_all} image(s) but k_near={args.k_near}, k_far={args.k_far} need at "
                        f"least {need} (N must exceed k)")
    rel = [p.relative_to(data).as_posix() for p in paths]
    fmt = args.format if args.format != "auto" else _detect_format(paths)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MineError("--device cuda: no CUDA device available")
    if device.type == "cuda" and ctx.on:
        device = torch.device("cuda", torch.cuda.current_device())
    chunk = args.chunk or 16 * args.batch
    if chunk < 1:
        raise MineError("--chunk: must be >= 1")
    work = Path(args.work_dir) if args.work_dir else out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)

    from .features import get_style_net
    try:
        net = get_style_net(args.layers, weights=args.weights, seed=args.seed, device=device)
    except FileNotFoundError as err:
        raise MineError(f"--weights {args.weights}: {err}") from None
    except ValueError as err:
        raise MineError(f"--layers/--weights: {err}") from None
    from .ops import gram_vector_dim
    dim = int(gram_vector_dim(net.channels))
    weights_desc = args.weights if args.weights in ("imagenet", "random") else \
        f"file:{Path(args.weights).name}"
    config = dict(version=STATE_VERSION, image_list_sha256=_list_hash(rel), n=n_all, layers=args.layers,
                  arch=net.arch, layer_names=list(net.layers), weights=weights_desc,
                  seed=args.seed, resolution=args.resolution, format=fmt, chunk=chunk,
                  batch=args.batch, dim=dim, device=device.type)
    key = dict(config, k_near=args.k_near, k_far=args.k_far, subset=args.subset, strict=args.strict,
               memory_budget=args.memory_budget, world=ctx.world)
    return dict(paths=paths, rel=rel, fmt=fmt, device=device, chunk=chunk, work=work, net=net,
                dim=dim, weights_desc=weights_desc, config=config, key=key)


def _read_state(path: Path, config) -> Optional[dict]:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except ValueError:
        return None
    if state.get("config") != config:
        if path.name == "state.json":
            print("fastep mine: work folder belongs to a different run; starting over", file=sys.stderr)
        return None
    return state


def _read_done(work: Path, config):
    """Finished chunks and skipped images, over state.json and every rank's state file (a job
    resumed with another number of ranks keeps what any rank finished)."""
    done, bad = set(), {}
    for f in [work / "state.json", *sorted(work.glob("state.rank*.json"))]:
        st = _read_state(f, config)
        if st is not None:
            done.update(st["done"])
            bad.update({int(k): v for k, v in st["bad"].items()})
    return done, bad


def _write_rows(f, offset: int, dim: int, rows: List[int], values: np.ndarray) -> None:
    """Rows of the float32 [N, dim] .npy by positioned writes of whole rows (ranks on other
    machines write other rows of the same file on shared storage: no page of a memory map
    is written back over a neighbour's rows)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    row_bytes = dim * 4
    j = 0
    while j < len(rows):
        k = j
        while k + 1 < len(rows) and rows[k + 1] == rows[k] + 1:
            k += 1
        os.pwrite(f.fileno(), values[j:k + 1].tobytes(), offset + rows[j] * row_bytes)
        j = k + 1
    f.flush()
    os.fsync(f.fileno())


def _remove_work(work: Path) -> None:
    import shutil

    for f in ("vectors.npy", "vectors_usable.npy", "state.json"):
        try:
            (work / f).unlink()
        except FileNotFoundError:
            pass
    for f in work.glob("state.rank*.json"):
        f.unlink()
    shutil.rmtree(work / "mining", ignore_errors=True)
    try:
        work.rmdir()
    except OSError:
        pass


def load_mined(path) -> Dict[str, object]:
    """Read a ``fastep mine`` npz without pickle: the arrays, with ``provenance`` parsed from its
    JSON text.  Every file ``fastep mine`` has written stores only numbers and strings (the
    provenance has always been JSON text), so all of them load; a file holding pickled objects
    is not one of ours and is refused with one line."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise ValueError(f"{path}: holds pickled objects, which fastep never loads (a fastep mine "
                             f"file stores only arrays and JSON text); re-run fastep mine") from None
        raise
    for name in ("near_idx", "far_idx", "triplets", "paths", "provenance"):
        if name not in out:
            raise ValueError(f"{path}: not a fastep mine file (no {name!r} array)")
    out["provenance"] = json.loads(str(out["provenance"]))
    return out
