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
    OUT/stage{2,3}/samples/     PNG grids, rows named at the left: input (A), target (B),
                                reconstruction G(A,E(B)), transfer (next column's B), samples (random z)
    OUT/stage{2,3}/tb/          TensorBoard logs (if tensorboard is installed)
    OUT/mapper/samples.png      rows input, mapper (G(A, M(noise))) x 2, N(mu, sigma) x 2, named at the left

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
from .run_config import RunConfig

__all__ = ["run_pipeline", "run_stage1", "run_gan_stage", "run_mapper", "prepare_data"]


def _log(msg: str) -> None:
    if dist_info()[0] == 0:
        print(msg, file=sys.stderr, flush=True)


def _asdict(cfg) -> Dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg or {})


# ----------------------------------------------------------------------------- data

def prepare_data(run: RunConfig) -> Path:
    """The data root: ``run.data`` as a folder, or the built-in set (generated once, cached)."""
    if run.data == "builtin":
        from ...data import make_builtin_dataset

        root = Path(run.out) / "data" / f"builtin-r{run.model.resolution}-n{run.n_train}-{run.n_val}-s{run.seed}"
        rank, world = dist_info()
        if rank == 0:
            _log(f"fastep: built-in data set ({run.n_train} train / {run.n_val} val, {run.model.resolution}px) "
                 f"-> {root}")
            make_builtin_dataset(root, n_train=run.n_train, n_val=run.n_val, resolution=run.model.resolution,
                                 seed=run.seed)
        if world > 1:
            torch.distributed.barrier()
        return root
    root = Path(run.data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data: {str(root)!r} is not a folder (expected pix2pix AB images in "
                                "train/ and val/, or A/ + B/ folders, or 'builtin')")
    return root


def _dataset(root: Path, run: RunConfig, split: str = "train", augment: bool = True):
    from ...data import PairedImageDataset

    return PairedImageDataset(root, split=split, resolution=run.model.resolution, crop=augment, flip=augment)


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


def _configs(run: RunConfig, stage: str, device: torch.device, kimg: Optional[float]):
    """The model, loss and training configs of one stage, all derived from the run config."""
    from .config import LossConfig, TrainConfig

    loss_cfg = run.loss_config(perceptual_backbone=_resolve_vgg_weights(run.vgg_weights))
    model_cfg = run.model
    if loss_cfg.needs_logvar and not model_cfg.e_logvar:
        model_cfg = dataclasses.replace(model_cfg, e_logvar=True)  # VAE / KL approaches need the log-variance head
    train_cfg = TrainConfig(stage=int(stage), approach=run.approach, batch_size=run.batch,
                            resolution=run.model.resolution, kimg=kimg,
                            lr_decay_start_kimg=None if kimg is None else kimg * run.lr_decay_start,
                            compile=run.compile, amp=run.amp, channels_last=run.channels_last,
                            cuda_graphs=run.cuda_graphs, device=str(device), seed=run.seed, ema=run.ema,
                            optim=run.optim_config())
    return model_cfg, loss_cfg, train_cfg


def _uses_pretrained_encoder(run: RunConfig) -> bool:
    from .config import LossConfig

    return LossConfig.preset(run.approach).pretrained_e


# ----------------------------------------------------------------------------- stage 1

def run_stage1(root: Path, run: RunConfig, device: torch.device) -> Dict[str, Any]:
    """Mine style triplets of the training B images and pre-train E on them (rank 0 only;
    other ranks wait).  Writes ``OUT/stage1/final.pt``."""
    out = Path(run.out) / "stage1"
    final = out / "final.pt"
    rank, world = dist_info()
    if run.resume and final.is_file():
        _log(f"fastep: stage 1 already done ({final}); skipping")
        return load_checkpoint(final).metrics or {}
    metrics: Dict[str, Any] = {}
    if rank == 0:
        from . import stage1 as s1
        from .nets import build_models

        model_cfg, _, train_cfg = _configs(run, "1", device, kimg=None)
        ds = _dataset(root, run, augment=False)
        images_u8, _ = ds.stack_images("B", resolution=run.model.resolution)
        cfg = run.stage1_config(vgg_weights=_resolve_vgg_weights(run.vgg_weights))
        t0 = time.perf_counter()
        _log(f"fastep: stage 1: mining style neighbours of {len(images_u8)} images")
        neighbours = s1.mine_triplets_from_images(images_u8, cfg, device, progress=run.progress)
        t_mine = time.perf_counter() - t0
        models = build_models(model_cfg, device, seed=run.seed)
        _log(f"fastep: stage 1: training E with the triplet loss for {cfg.epochs} epochs")
        t1 = time.perf_counter()
        history = s1.train_encoder_stage1(models.E, images_u8, neighbours, cfg, device, progress=run.progress)
        E_sd = {k: v.detach().cpu() for k, v in models.E.state_dict().items()}
        metrics = {"stage": "1", "images": len(images_u8), "mine_s": t_mine, "train_s": time.perf_counter() - t1,
                   "history": history}
        ckpt = Checkpoint(system="step", stage="1", complete=True, metrics=metrics,
                          configs={"model": _asdict(model_cfg), "train": _asdict(train_cfg), "stage1": _asdict(cfg),
                                   "run": run.to_dict()},
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


def run_gan_stage(stage: str, root: Path, run: RunConfig, device: torch.device,
                  init: Optional[Union[str, Path]] = None, kimg: Optional[float] = None) -> Dict[str, Any]:
    """Stage 2 (G, D with E frozen) or 3 (G, E, D) with the Trainer; writes ``OUT/stage{N}/``.

    ``init``: checkpoint to start from (stage 2: E from stage 1; stage 3: G, E, D from stage 2);
    default ``OUT/stage{N-1}/final.pt``; a missing default starts from scratch with a warning
    (stage 2 without a pre-trained E is not StEP: an error unless the approach trains E itself).
    """
    from .nets import build_models
    from .train_step import TrainStep

    out = Path(run.out) / f"stage{stage}"
    final = out / "final.pt"
    if run.resume and final.is_file():
        _log(f"fastep: stage {stage} already done ({final}); skipping")
        return load_checkpoint(final).metrics or {}
    kimg = kimg if kimg is not None else (run.stage2_kimg if stage == "2" else run.stage3_kimg)
    model_cfg, loss_cfg, train_cfg = _configs(run, stage, device, kimg)
    models = build_models(model_cfg, device, seed=run.seed)
    prev = Path(run.out) / (f"stage{int(stage) - 1}" if stage in ("2", "3") else "") / "final.pt"
    init_path = Path(init) if init else prev
    if init_path.is_file():
        ck = load_checkpoint(init_path)
        names = ("E",) if ck.stage == "1" else ("G", "E", "D")
        _init_weights(models, ck, names)
        _log(f"fastep: stage {stage}: initialised {', '.join(names)} from {init_path}")
    elif init:
        raise FileNotFoundError(f"--init: {str(init)!r} does not exist")
    elif stage == "2" and _uses_pretrained_encoder(run):
        raise FileNotFoundError(f"stage 2 needs the pre-trained encoder {prev} (run --stage 1 first, "
                                "or give --init PATH)")
    else:
        _log(f"fastep: stage {stage}: no {prev}; starting from freshly initialised networks")
    step = TrainStep(models, loss_cfg, train_cfg, stage=int(stage))
    ds = _dataset(root, run, augment=True)
    configs = {"model": _asdict(model_cfg), "train": _asdict(train_cfg), "loss": _asdict(loss_cfg),
               "run": run.to_dict()}  # the loop settings (out, workers, log_every, ckpt_every, keep) live here
    trainer = Trainer(step, ds, stage=stage, batch_size=run.batch, kimg=kimg, out_dir=out, device=device,
                      seed=run.seed + int(stage), system="step", configs=configs,
                      extras={"approach": run.approach},
                      lr_decay_start_kimg=kimg * run.lr_decay_start,
                      log_every=run.log_every, ckpt_every_kimg=run.ckpt_every,
                      image_every_kimg=run.image_every, keep=run.keep, num_workers=run.workers,
                      progress=run.progress)
    metrics = trainer.fit(resume=run.resume)
    if trainer.main:
        ckpt = trainer.state() if trainer.world == 1 else load_checkpoint(metrics["checkpoint"])
        ckpt.metrics = {k: v for k, v in metrics.items() if k != "history"}
        # a finished stage is never resumed (--resume skips it): final.pt and the numbered
        # checkpoints keep weights only (the next stage and eval read nothing else)
        ckpt.weights_only().save(final)
        trainer.ckpts.slim_all()
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


def run_mapper(root: Path, run: RunConfig, device: torch.device,
               init: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Codes of the training images (EMA encoder of stage 3), N(mu, sigma) statistics, IMLE
    mapper; writes ``OUT/final.pt`` (stage-3 checkpoint + ``mapper`` + ``z_stats``)."""
    rank, world = dist_info()
    final = Path(run.out) / "final.pt"
    metrics: Dict[str, Any] = {}
    if run.resume and final.is_file() and load_checkpoint(final).weights.get("mapper") is not None:
        _log(f"fastep: mapper already done ({final}); skipping")
        return load_checkpoint(final).extras.get("mapper_metrics") or {}
    if rank == 0:
        from . import imle as mp
        from ...train.checkpoint import load_models

        src = Path(init) if init else Path(run.out) / "stage3" / "final.pt"
        if not src.is_file():
            raise FileNotFoundError(f"the mapper needs a trained stage-3 checkpoint: {src} does not exist "
                                    "(run --stage 3 first, or give --init PATH)")
        G, E, model_cfg, _ = load_models(src, device, ema=True)
        ds = _dataset(root, run, augment=False)
        images = ds.stack_images("B", resolution=run.model.resolution)[0].float().div(127.5).sub(1.0)
        t0 = time.perf_counter()
        codes = _codes(E, images, device)
        mu, sigma = mp.fit_code_stats(codes)
        cfg = mp.MapperConfig(epochs=run.mapper_epochs, seed=run.seed)
        torch.manual_seed(run.seed)
        mapper = mp.train_mapper(codes, cfg, device, progress=run.progress)
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
        gen = torch.Generator().manual_seed(run.seed)
        rows = [A]
        with torch.no_grad():
            mapper.eval()
            noise_dim = getattr(mapper, "noise_dim", None) or getattr(model_cfg, "z_dim", 8)
            for _ in range(2):
                rows.append(G(A, mapper(torch.randn(n, noise_dim, generator=gen).to(device))).float())
            for _ in range(2):
                z = mu.to(device) + sigma.to(device) * torch.randn(n, len(mu), generator=gen).to(device)
                rows.append(G(A, z).float())
        from ...train.outputs import labelled_grid

        labels = ["input", "mapper", "mapper", "N(mu, sigma)", "N(mu, sigma)"]
        grid = labelled_grid([(r.clamp(-1, 1).cpu() + 1) / 2 for r in rows], labels)
        save_image_grid(grid, Path(run.out) / "mapper" / "samples.png")
        write_json_atomic(metrics, Path(run.out) / "mapper" / "metrics.json")
        _log(f"fastep: mapper done -> {final} (samples: {Path(run.out) / 'mapper' / 'samples.png'})")
    if world > 1:
        torch.distributed.barrier()
    return metrics


# ----------------------------------------------------------------------------- all stages

def run_pipeline(run: RunConfig) -> Dict[str, Any]:
    """Run ``run.stages`` in order; returns (and writes to ``OUT/metrics.json``) all metrics.

    Raises :class:`~fastep.train.trainer.NonFiniteLossError` when a loss turns NaN/inf (the
    metrics written so far and the last good checkpoint are kept).
    """
    if not isinstance(run, RunConfig):
        raise TypeError(f"run_pipeline takes a RunConfig (fastep.zoo.step.run_config), got {type(run).__name__}")
    device, rank, world = init_distributed(run.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes (drop_last): pick the fastest kernels
        torch.set_float32_matmul_precision("high")
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: Dict[str, Any] = {"approach": run.approach, "device": str(device), "world_size": world,
                               "config": run.to_dict(), "stages": {}}
    mpath = out / "metrics.json"
    if run.resume and mpath.is_file() and rank == 0:
        import json

        try:
            summary["stages"] = json.loads(mpath.read_text()).get("stages", {})
        except ValueError:
            pass
    t0 = time.perf_counter()
    stages = list(run.stages)
    pretrained = _uses_pretrained_encoder(run)
    if not pretrained and "1" in stages and len(stages) > 1:
        _log(f"fastep: approach {run.approach} trains E from scratch: skipping stage 1 and stage 2; "
             "stage 3 trains G, E and D together")
        stages = [s for s in stages if s not in ("1", "2")]
    root = prepare_data(run)
    summary["data"] = str(root)

    def _save():
        if rank == 0:
            summary["wall_s"] = time.perf_counter() - t0
            write_json_atomic(summary, mpath)

    try:
        for stage in stages:
            if stage == "1":
                summary["stages"]["1"] = run_stage1(root, run, device)
            elif stage in ("2", "3"):
                init = run.init if len(stages) == 1 else None
                kimg = None
                if stage == "3" and not pretrained and len(stages) > 1:
                    kimg = run.stage2_kimg + run.stage3_kimg
                m = run_gan_stage(stage, root, run, device, init=init, kimg=kimg)
                summary["stages"][stage] = {k: v for k, v in m.items()}
            elif stage == "mapper":
                summary["stages"]["mapper"] = run_mapper(root, run, device,
                                                         init=run.init if len(stages) == 1 else None)
            else:
                raise ValueError(f"unknown stage {stage!r}; expected 1, 2, 3 or mapper")
            _save()
    except (NonFiniteLossError, KeyboardInterrupt) as err:
        # KeyboardInterrupt: Ctrl-C / SIGTERM in a stage without a checkpoint of its own (mining,
        # stage 1, the mapper), or a second Ctrl-C; TrainingInterrupted: the graceful stop.
        if not isinstance(err, NonFiniteLossError):
            err.stage = stage
        summary["error" if isinstance(err, NonFiniteLossError) else "interrupted"] = (
            str(err) or f"interrupted during stage {stage}")
        _save()
        raise
    if (out / "final.pt").is_file():
        summary["final_checkpoint"] = str(out / "final.pt")
    _save()
    return summary
