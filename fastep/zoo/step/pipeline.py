"""The main job: every StEP stage in a row, on the built-in data set by default.

    make data -> mine triplets -> stage 1 (E) -> stage 2 (G, D; E frozen) -> stage 3 (G, E, D)
    -> mapper (IMLE) + N(mu, sigma) code statistics -> OUT/final.pt, sample grids, metrics.json

Output layout (``OUT`` = ``--out``)::

    OUT/metrics.json            every stage's numbers (losses, kimg, time, kimg/s), one file
    OUT/final.pt                the checkpoint for ``fastep eval`` / ``fastep sample``
                                (stage-3 weights + EMA, mapper, z_stats)
    OUT/stage1/final.pt         E after triplet pre-training (+ stage1/metrics.json)
    OUT/stage{2,3}/checkpoints/ numbered checkpoints (the last N), for --resume
    OUT/stage{2,3}/final.pt     the finished stage
    OUT/stage{2,3}/samples/     PNG grids: rows A, B, G(A,E(B)), transfer, random z
    OUT/stage{2,3}/tb/          TensorBoard logs (if tensorboard is installed)
    OUT/mapper/samples.png      G(A, M(noise)) and G(A, N(mu, sigma)) grids

Every stage can run on its own (``fastep train --stage 2 ...``) and reads the previous stage's
``final.pt`` from the same ``OUT`` (or ``--init PATH``).  ``--resume`` continues an interrupted
stage from its newest checkpoint and skips finished stages.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ...io import write_json_atomic
from ...train.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ...train.distributed import dist_info, init_distributed
from ...train.outputs import save_image_grid
from ...train.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

__all__ = ["PipelineOptions", "run_pipeline", "run_stage1", "run_gan_stage", "run_mapper", "prepare_data",
           "default_options"]

# The paper's lengths (SPEC): stage 2 to 250 kimg, stage 3 to 700 kimg at 256 x 256, batch 8.
GPU_DEFAULTS = dict(resolution=256, batch=8, stage2_kimg=250.0, stage3_kimg=700.0, n_train=5000, n_val=500,
                    stage1_epochs=20, mapper_epochs=500, ckpt_every=10.0, image_every=10.0, log_every=50,
                    workers=8)
# Scaled down so that the whole job takes a few minutes on a 2-core CPU at 64 x 64.
CPU_DEFAULTS = dict(resolution=64, batch=4, stage2_kimg=0.16, stage3_kimg=0.16, n_train=192, n_val=32,
                    stage1_epochs=3, mapper_epochs=60, ckpt_every=0.08, image_every=0.08, log_every=5,
                    workers=0)


@dataclasses.dataclass
class PipelineOptions:
    """Everything the main job needs (the CLI fills it; ``None`` means the device default)."""

    out: str = "runs/fastep"
    data: str = "builtin"
    approach: str = "ours_v3"
    stages: tuple = ("1", "2", "3", "mapper")
    device: str = "auto"
    resolution: Optional[int] = None
    batch: Optional[int] = None
    stage2_kimg: Optional[float] = None
    stage3_kimg: Optional[float] = None
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    stage1_epochs: Optional[int] = None
    mapper_epochs: Optional[int] = None
    ckpt_every: Optional[float] = None   # kimg
    image_every: Optional[float] = None  # kimg
    log_every: Optional[int] = None      # steps
    workers: Optional[int] = None
    keep: int = 3
    seed: int = 0
    resume: bool = False
    init: Optional[str] = None           # checkpoint to start a single stage from
    compile: Optional[bool] = None       # default: on CUDA only
    amp: Optional[bool] = None           # default: on CUDA only
    channels_last: Optional[bool] = None
    cuda_graphs: bool = False
    vgg_weights: str = "auto"            # auto: imagenet if available, else random (with a note)
    model_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    progress: bool = True
    lr_decay_start: Optional[float] = None  # fraction of the stage; None: TrainConfig's (2/3)


def default_options(opts: PipelineOptions, device: torch.device) -> PipelineOptions:
    """Fill the ``None`` fields with the GPU (paper) or CPU (scaled-down) defaults."""
    base = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    o = dataclasses.replace(opts)
    for k, v in base.items():
        if getattr(o, k) is None:
            setattr(o, k, v)
    on_gpu = device.type == "cuda"
    if o.compile is None:
        o.compile = on_gpu
    if o.amp is None:
        o.amp = on_gpu
    if o.channels_last is None:
        o.channels_last = on_gpu
    return o


def _log(msg: str) -> None:
    if dist_info()[0] == 0:
        print(msg, file=sys.stderr, flush=True)


def _make(cls, **kw):
    """``cls(**kw)`` keeping only the fields ``cls`` has (configs evolve independently)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kw.items() if k in names and v is not None})


def _asdict(cfg) -> Dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg or {})


# ----------------------------------------------------------------------------- data

def prepare_data(opts: PipelineOptions) -> Path:
    """The data root: ``opts.data`` as a folder, or the built-in set (generated once, cached)."""
    if opts.data == "builtin":
        from ...data import make_builtin_dataset

        root = Path(opts.out) / "data" / f"builtin-r{opts.resolution}-n{opts.n_train}-{opts.n_val}-s{opts.seed}"
        rank, world = dist_info()
        if rank == 0:
            _log(f"fastep: built-in data set ({opts.n_train} train / {opts.n_val} val, {opts.resolution}px) "
                 f"-> {root}")
            make_builtin_dataset(root, n_train=opts.n_train, n_val=opts.n_val, resolution=opts.resolution,
                                 seed=opts.seed)
        if world > 1:
            torch.distributed.barrier()
        return root
    root = Path(opts.data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data: {str(root)!r} is not a folder (expected pix2pix AB images in "
                                "train/ and val/, or A/ + B/ folders, or 'builtin')")
    return root


def _dataset(root: Path, opts: PipelineOptions, split: str = "train", augment: bool = True):
    from ...data import PairedImageDataset

    return PairedImageDataset(root, split=split, resolution=opts.resolution, crop=augment, flip=augment)


# ----------------------------------------------------------------------------- configs

_VGG_NOTE_SHOWN = False


def _resolve_vgg_weights(choice: str) -> str:
    """``auto``: ImageNet VGG16 weights when they are on disk, else seeded random ones (a note)."""
    global _VGG_NOTE_SHOWN
    if choice != "auto":
        return choice
    try:
        from ...nets.weights import resolve_state_dict

        resolve_state_dict("vgg16", "imagenet")
        return "imagenet"
    except FileNotFoundError as err:
        if not _VGG_NOTE_SHOWN:
            _VGG_NOTE_SHOWN = True
            first = str(err).splitlines()[0] if str(err) else ""
            _log("fastep: note: ImageNet VGG16 weights not found, the perceptual loss uses seeded random "
                 f"VGG weights (fine for a smoke run, not for the paper's numbers). {first}")
        return "random"
    except Exception as err:  # noqa: BLE001 - a broken weights module must not stop training
        _log(f"fastep: note: could not check for ImageNet VGG16 weights ({type(err).__name__}: {err}); "
             "using random VGG weights")
        return "random"


def _configs(opts: PipelineOptions, stage: str, device: torch.device, kimg: Optional[float]):
    from .config import LossConfig, ModelConfig, TrainConfig

    loss_cfg = LossConfig.preset(opts.approach)
    overrides = dict(opts.model_overrides)
    if getattr(loss_cfg, "needs_logvar", False):
        overrides.setdefault("e_logvar", True)
    model_cfg = _make(ModelConfig, resolution=opts.resolution, **overrides)
    if hasattr(loss_cfg, "perceptual_backbone"):
        loss_cfg = dataclasses.replace(loss_cfg, perceptual_backbone=_resolve_vgg_weights(opts.vgg_weights))
    train_cfg = _make(TrainConfig, stage=int(stage), approach=opts.approach, batch_size=opts.batch,
                      resolution=opts.resolution, kimg=kimg if kimg else None,
                      compile=opts.compile, amp=opts.amp, channels_last=opts.channels_last,
                      cuda_graphs=opts.cuda_graphs, device=str(device), seed=opts.seed, out_dir=str(opts.out),
                      num_workers=opts.workers, log_every=opts.log_every,
                      ckpt_every_kimg=opts.ckpt_every if opts.ckpt_every else None, keep_ckpts=opts.keep)
    return model_cfg, loss_cfg, train_cfg


def _uses_pretrained_encoder(opts: PipelineOptions) -> bool:
    from .config import LossConfig

    cfg = LossConfig.preset(opts.approach)
    for name in ("pretrained_e", "pretrained_encoder", "pretrain_e", "pre_trained_e"):
        if hasattr(cfg, name):
            return bool(getattr(cfg, name))
    return not opts.approach.startswith("bicycle")


# ----------------------------------------------------------------------------- stage 1

def run_stage1(root: Path, opts: PipelineOptions, device: torch.device) -> Dict[str, Any]:
    """Mine style triplets of the training B images and pre-train E on them (rank 0 only;
    other ranks wait).  Writes ``OUT/stage1/final.pt``."""
    out = Path(opts.out) / "stage1"
    final = out / "final.pt"
    rank, world = dist_info()
    if opts.resume and final.is_file():
        _log(f"fastep: stage 1 already done ({final}); skipping")
        return load_checkpoint(final).metrics or {}
    metrics: Dict[str, Any] = {}
    if rank == 0:
        from . import stage1 as s1
        from .nets import build_models

        model_cfg, _, train_cfg = _configs(opts, "1", device, kimg=None)
        ds = _dataset(root, opts, augment=False)
        images_u8, _ = ds.stack_images("B", resolution=opts.resolution)
        cfg = _make(s1.Stage1Config, epochs=opts.stage1_epochs, seed=opts.seed,
                    vgg_weights=_resolve_vgg_weights(opts.vgg_weights))
        t0 = time.perf_counter()
        _log(f"fastep: stage 1: mining style neighbours of {len(images_u8)} images")
        neighbours = s1.mine_triplets_from_images(images_u8, cfg, device)
        t_mine = time.perf_counter() - t0
        models = build_models(model_cfg, device, seed=opts.seed)
        _log(f"fastep: stage 1: training E with the triplet loss for {cfg.epochs} epochs")
        t1 = time.perf_counter()
        history = s1.train_encoder_stage1(models.E, images_u8, neighbours, cfg, device, progress=opts.progress)
        E_sd = {k: v.detach().cpu() for k, v in models.E.state_dict().items()}
        metrics = {"stage": "1", "images": len(images_u8), "mine_s": t_mine, "train_s": time.perf_counter() - t1,
                   "history": history}
        ckpt = Checkpoint(system="step", stage="1", complete=True, metrics=metrics,
                          configs={"model": _asdict(model_cfg), "train": _asdict(train_cfg), "stage1": _asdict(cfg)},
                          weights={"E": E_sd, "E_ema": E_sd})
        ckpt.save(final)
        write_json_atomic(metrics, out / "metrics.json")
        _log(f"fastep: stage 1 done -> {final}")
    if world > 1:
        torch.distributed.barrier()
    return metrics


# ----------------------------------------------------------------------------- stages 2 and 3

def _init_weights(models, ckpt: Checkpoint, names) -> None:
    for name in names:
        sd = ckpt.weights.get(name)
        if sd is None:
            raise CheckpointError(f"the initial checkpoint has no {name!r} weights (stage {ckpt.stage!r})")
        getattr(models, name).load_state_dict(sd)


def run_gan_stage(stage: str, root: Path, opts: PipelineOptions, device: torch.device,
                  init: Optional[Union[str, Path]] = None, kimg: Optional[float] = None) -> Dict[str, Any]:
    """Stage 2 (G, D with E frozen) or 3 (G, E, D) with the Trainer; writes ``OUT/stage{N}/``.

    ``init``: checkpoint to start from (stage 2: E from stage 1; stage 3: G, E, D from stage 2);
    default ``OUT/stage{N-1}/final.pt``; a missing default starts from scratch with a warning
    (stage 2 without a pre-trained E is not StEP: an error unless the approach trains E itself).
    """
    from .nets import build_models
    from .train_step import TrainStep

    out = Path(opts.out) / f"stage{stage}"
    final = out / "final.pt"
    if opts.resume and final.is_file():
        _log(f"fastep: stage {stage} already done ({final}); skipping")
        return load_checkpoint(final).metrics or {}
    kimg = kimg if kimg is not None else (opts.stage2_kimg if stage == "2" else opts.stage3_kimg)
    model_cfg, loss_cfg, train_cfg = _configs(opts, stage, device, kimg)
    models = build_models(model_cfg, device, seed=opts.seed)
    prev = Path(opts.out) / (f"stage{int(stage) - 1}" if stage in ("2", "3") else "") / "final.pt"
    init_path = Path(init) if init else prev
    if init_path.is_file():
        ck = load_checkpoint(init_path)
        names = ("E",) if ck.stage == "1" else ("G", "E", "D")
        _init_weights(models, ck, names)
        _log(f"fastep: stage {stage}: initialised {', '.join(names)} from {init_path}")
    elif init:
        raise FileNotFoundError(f"--init: {str(init)!r} does not exist")
    elif stage == "2" and _uses_pretrained_encoder(opts):
        raise FileNotFoundError(f"stage 2 needs the pre-trained encoder {prev} (run --stage 1 first, "
                                "or give --init PATH)")
    else:
        _log(f"fastep: stage {stage}: no {prev}; starting from freshly initialised networks")
    step = TrainStep(models, loss_cfg, train_cfg, stage=int(stage))
    ds = _dataset(root, opts, augment=True)
    configs = {"model": _asdict(model_cfg), "train": _asdict(train_cfg), "loss": _asdict(loss_cfg)}
    decay = opts.lr_decay_start
    if decay is None:
        decay = (train_cfg.decay_start_kimg / train_cfg.total_kimg) if hasattr(train_cfg, "decay_start_kimg") else 0.5
    trainer = Trainer(step, ds, stage=stage, batch_size=opts.batch, kimg=kimg, out_dir=out, device=device,
                      seed=opts.seed + int(stage), system="step", configs=configs,
                      extras={"approach": opts.approach}, lr_decay_start=decay,
                      log_every=opts.log_every, ckpt_every_kimg=opts.ckpt_every,
                      image_every_kimg=opts.image_every, keep=opts.keep, num_workers=opts.workers,
                      progress=opts.progress)
    metrics = trainer.fit(resume=opts.resume)
    if trainer.main:
        ckpt = trainer.state() if trainer.world == 1 else load_checkpoint(metrics["checkpoint"])
        ckpt.metrics = {k: v for k, v in metrics.items() if k != "history"}
        ckpt.save(final)
        _log(f"fastep: stage {stage} done: {metrics['kimg']:.3f} kimg in {metrics['wall_s']:.1f} s -> {final}")
    if trainer.world > 1:
        torch.distributed.barrier()
    return metrics


# ----------------------------------------------------------------------------- mapper

@torch.no_grad()
def _codes(E, images: torch.Tensor, device: torch.device, batch: int = 64) -> torch.Tensor:
    E.eval()
    out = []
    for i in range(0, len(images), batch):
        z = E(images[i:i + batch].to(device))
        out.append((z[0] if isinstance(z, (tuple, list)) else z).float().cpu())
    return torch.cat(out)


def run_mapper(root: Path, opts: PipelineOptions, device: torch.device,
               init: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Codes of the training images (EMA encoder of stage 3), N(mu, sigma) statistics, IMLE
    mapper; writes ``OUT/final.pt`` (stage-3 checkpoint + ``mapper`` + ``z_stats``)."""
    rank, world = dist_info()
    final = Path(opts.out) / "final.pt"
    metrics: Dict[str, Any] = {}
    if opts.resume and final.is_file() and load_checkpoint(final).weights.get("mapper") is not None:
        _log(f"fastep: mapper already done ({final}); skipping")
        return load_checkpoint(final).extras.get("mapper_metrics") or {}
    if rank == 0:
        from . import imle as mp
        from ...train.checkpoint import load_models

        src = Path(init) if init else Path(opts.out) / "stage3" / "final.pt"
        if not src.is_file():
            raise FileNotFoundError(f"the mapper needs a trained stage-3 checkpoint: {src} does not exist "
                                    "(run --stage 3 first, or give --init PATH)")
        G, E, model_cfg, _ = load_models(src, device, ema=True)
        ds = _dataset(root, opts, augment=False)
        images = ds.stack_images("B", resolution=opts.resolution)[0].float().div(127.5).sub(1.0)
        t0 = time.perf_counter()
        codes = _codes(E, images, device)
        mu, sigma = mp.fit_code_stats(codes)
        cfg = _make(mp.MapperConfig, epochs=opts.mapper_epochs, seed=opts.seed)
        torch.manual_seed(opts.seed)
        mapper = mp.train_mapper(codes, cfg, device)
        history = getattr(mapper, "history", None)
        metrics = {"stage": "mapper", "codes": len(codes), "train_s": time.perf_counter() - t0,
                   "z_mu": mu.tolist(), "z_sigma": sigma.tolist(), "history": history}
        ckpt = load_checkpoint(src)
        ckpt.train_state = None  # inference checkpoint: weights only
        ckpt.weights["mapper"] = {k: v.detach().cpu() for k, v in mapper.state_dict().items()}
        ckpt.configs["mapper_net"] = {k: getattr(mapper, k) for k in ("z_dim", "noise_dim", "hidden", "n_hidden")}
        ckpt.configs["mapper"] = _asdict(cfg)
        ckpt.extras["z_stats"] = {"mu": mu.detach().cpu(), "sigma": sigma.detach().cpu()}
        ckpt.extras["mapper_metrics"] = metrics
        ckpt.save(final)
        # sample grids: the same inputs with codes from the mapper and from N(mu, sigma)
        n = min(8, len(ds))
        A = torch.stack([ds[i]["A"] for i in range(n)]).to(device)
        gen = torch.Generator().manual_seed(opts.seed)
        rows = [A]
        with torch.no_grad():
            mapper.eval()
            noise_dim = getattr(mapper, "noise_dim", None) or getattr(model_cfg, "z_dim", 8)
            for _ in range(2):
                rows.append(G(A, mapper(torch.randn(n, noise_dim, generator=gen).to(device))).float())
            for _ in range(2):
                z = mu.to(device) + sigma.to(device) * torch.randn(n, len(mu), generator=gen).to(device)
                rows.append(G(A, z).float())
        from torchvision.utils import make_grid

        grid = make_grid((torch.cat(rows).clamp(-1, 1).cpu() + 1) / 2, nrow=n, padding=2, pad_value=1.0)
        save_image_grid(grid, Path(opts.out) / "mapper" / "samples.png")
        write_json_atomic(metrics, Path(opts.out) / "mapper" / "metrics.json")
        _log(f"fastep: mapper done -> {final} (samples: {Path(opts.out) / 'mapper' / 'samples.png'})")
    if world > 1:
        torch.distributed.barrier()
    return metrics


# ----------------------------------------------------------------------------- all stages

def run_pipeline(opts: PipelineOptions) -> Dict[str, Any]:
    """Run ``opts.stages`` in order; returns (and writes to ``OUT/metrics.json``) all metrics.

    Raises :class:`~fastep.train.trainer.NonFiniteLossError` when a loss turns NaN/inf (the
    metrics written so far and the last good checkpoint are kept).
    """
    device, rank, world = init_distributed(opts.device)
    opts = default_options(opts, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes (drop_last): pick the fastest kernels
        torch.set_float32_matmul_precision("high")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: Dict[str, Any] = {"approach": opts.approach, "device": str(device), "world_size": world,
                               "options": dataclasses.asdict(opts), "stages": {}}
    mpath = out / "metrics.json"
    if opts.resume and mpath.is_file() and rank == 0:
        import json

        try:
            summary["stages"] = json.loads(mpath.read_text()).get("stages", {})
        except ValueError:
            pass
    t0 = time.perf_counter()
    stages = list(opts.stages)
    pretrained = _uses_pretrained_encoder(opts)
    if not pretrained and "1" in stages and len(stages) > 1:
        _log(f"fastep: approach {opts.approach} trains E from scratch: skipping stage 1 and stage 2; "
             "stage 3 trains G, E and D together")
        stages = [s for s in stages if s not in ("1", "2")]
    root = prepare_data(opts)
    summary["data"] = str(root)

    def _save():
        if rank == 0:
            summary["wall_s"] = time.perf_counter() - t0
            write_json_atomic(summary, mpath)

    try:
        for stage in stages:
            if stage == "1":
                summary["stages"]["1"] = run_stage1(root, opts, device)
            elif stage in ("2", "3"):
                init = opts.init if len(stages) == 1 else None
                kimg = None
                if stage == "3" and not pretrained and len(stages) > 1:
                    kimg = opts.stage2_kimg + opts.stage3_kimg
                m = run_gan_stage(stage, root, opts, device, init=init, kimg=kimg)
                summary["stages"][stage] = {k: v for k, v in m.items()}
            elif stage == "mapper":
                summary["stages"]["mapper"] = run_mapper(root, opts, device,
                                                         init=opts.init if len(stages) == 1 else None)
            else:
                raise ValueError(f"unknown stage {stage!r}; expected 1, 2, 3 or mapper")
            _save()
    except (NonFiniteLossError, TrainingInterrupted) as err:
        summary["error" if isinstance(err, NonFiniteLossError) else "interrupted"] = str(err)
        _save()
        raise
    if (out / "final.pt").is_file():
        summary["final_checkpoint"] = str(out / "final.pt")
    _save()
    return summary
