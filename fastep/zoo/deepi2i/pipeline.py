"""DeepI2I's stages on fastep's Trainer, on the built-in data set.

    make data (source seed+1, target seed) -> stage biggan: class-conditional BigGAN on the
    source set, written as a BigGAN-PyTorch folder -> stage transfer: DeepI2I from that folder
    (read through :func:`~fastep.zoo.deepi2i.load_biggan`, as real weights are) on the target set

Output layout (``OUT`` = ``--out``)::

    OUT/metrics.json              every stage's numbers (and the evaluation's, under "eval")
    OUT/eval.json                 the evaluation on the validation split (``run.eval``)
    OUT/final.pt                  the DeepI2I checkpoint (``fastep.zoo.load`` -> Translator)
    OUT/biggan/weights/           G.pth, G_ema.pth, D.pth, state_dict.pth (BigGAN-PyTorch format)
    OUT/biggan/final.pt           the stand-in as a fastep checkpoint (``fastep.zoo.load`` -> Sampler)
    OUT/{biggan,transfer}/checkpoints/  numbered resumable checkpoints (the last ``keep``)
    OUT/{biggan,transfer}/samples/      PNG grids, rows named at the left (real / class c;
                                        input / to class c)

``--resume`` continues an interrupted stage from its newest checkpoint and skips finished ones.
Under ``torchrun`` (WORLD_SIZE > 1) every rank trains on its shard of each batch (see
:mod:`.train_step`); rank 0 alone makes the data, writes the folders and metrics, and evaluates.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from ...io import write_json_atomic
from ...train.checkpoint import load_checkpoint
from ...train.distributed import dist_info, init_distributed
from ...train.trainer import NonFiniteLossError, Trainer
from .run_config import RunConfig

__all__ = ["run_pipeline", "prepare_data", "run_biggan_stage", "run_transfer_stage", "biggan_folder"]


def _log(msg: str) -> None:
    if dist_info()[0] == 0:
        print(msg, file=sys.stderr, flush=True)


def _barrier() -> None:
    if dist_info()[1] > 1:
        torch.distributed.barrier()


def _device(run: RunConfig) -> torch.device:
    """The run's device; under torchrun the process group is set up here (gloo on CPU, NCCL on
    CUDA with ``cuda:LOCAL_RANK``)."""
    return init_distributed(run.device)[0]


def _per_rank_noise(run: RunConfig) -> None:
    """Each rank draws its own z and y' (the nets were built from the same seed on every rank)."""
    rank, world = dist_info()
    if world > 1:
        torch.manual_seed(run.seed * 1000 + 7919 * rank + 1)


def prepare_data(run: RunConfig) -> Tuple[Path, Path]:
    """(source root, target root) of the built-in sets, made once under ``OUT/data``."""
    from ...data import make_builtin_dataset

    r = run.resolution
    data = Path(run.out) / "data"
    source = data / f"source-r{r}-n{run.n_source}-s{run.seed + 1}"
    target = data / f"target-r{r}-n{run.n_train}-{run.n_val}-s{run.seed}"
    if dist_info()[0] == 0:  # the other ranks wait, then read what rank 0 wrote
        if "biggan" in run.stages:
            _log(f"fastep: source set ({run.n_source} images, {r}px, seed {run.seed + 1}) -> {source}")
            make_builtin_dataset(source, n_train=run.n_source, n_val=0, resolution=r, seed=run.seed + 1)
        if "transfer" in run.stages:
            _log(f"fastep: target set ({run.n_train} train / {run.n_val} val, {r}px, seed {run.seed}) -> {target}")
            make_builtin_dataset(target, n_train=run.n_train, n_val=run.n_val, resolution=r, seed=run.seed)
    _barrier()
    return source, target


def biggan_folder(run: RunConfig) -> Path:
    """The BigGAN-PyTorch folder the transfer starts from."""
    return Path(run.biggan).expanduser() if run.biggan else Path(run.out) / "biggan" / "weights"


def _configs(run: RunConfig, model, step) -> Dict[str, Any]:
    return {"model": dataclasses.asdict(model), "step": dataclasses.asdict(step), "run": run.to_dict()}


def _trainer(step, ds, run: RunConfig, stage: str, kimg: float, device, system: str, configs) -> Trainer:
    return Trainer(step, ds, stage=stage, system=system, out_dir=Path(run.out) / stage, device=device,
                   batch_size=step.cfg.batch, kimg=kimg, seed=run.seed + (11 if stage == "biggan" else 23),
                   lr_decay_start_kimg=kimg, log_every=run.log_every, ckpt_every_kimg=run.ckpt_every,
                   image_every_kimg=run.image_every, keep=run.keep, num_workers=run.workers, configs=configs,
                   extras={"classes": run.classes}, progress=run.progress)


def _finish(trainer: Trainer, metrics: Dict[str, Any], final: Path, write=None) -> None:
    """Write ``final`` (and ``write()``, if given) on rank 0; collective under torchrun."""
    ckpt = trainer.state()  # every rank: it gathers the ranks' RNG states
    if dist_info()[0] == 0:
        if write is not None:
            write()
        ckpt.metrics = {k: v for k, v in metrics.items() if k != "history"}
        ckpt.weights_only().save(final)
        trainer.ckpts.slim_all()
    _barrier()


def run_biggan_stage(run: RunConfig, device: torch.device, source: Path) -> Dict[str, Any]:
    """Train the BigGAN stand-in on the source set; writes ``OUT/biggan/weights`` (BigGAN-PyTorch)."""
    from .data import labeled_builtin
    from .nets import build_nets
    from .train_step import BigGANStep
    from .weights import save_biggan

    out = Path(run.out) / "biggan"
    final = out / "final.pt"
    if run.resume and final.is_file() and (out / "weights" / "state_dict.pth").is_file():
        _log(f"fastep: stage biggan already done ({final}); skipping")
        return {**(load_checkpoint(final).metrics or {}), "skipped": True}
    torch.manual_seed(run.seed)
    nets = build_nets(run.model)
    step = BigGANStep(nets, run.biggan_step, device)
    _per_rank_noise(run)
    ds = labeled_builtin(source, "train", run.resolution, run.classes)
    _log(f"fastep: stage biggan: class-conditional BigGAN on {len(ds)} source images "
         f"({run.model.n_classes} {run.classes} classes), {run.biggan_kimg:g} kimg")
    configs = _configs(run, run.model, run.biggan_step)
    trainer = _trainer(step, ds, run, "biggan", run.biggan_kimg, device, "biggan", configs)
    metrics = trainer.fit(resume=run.resume)
    n = step.networks()
    _finish(trainer, metrics, final, lambda: save_biggan(out / "weights", n["G"], n["D"], G_ema=n.get("G_ema"),
                                                         config=run.model, itr=trainer.step_idx))
    _log(f"fastep: stage biggan done: {metrics['kimg']:.3f} kimg in {metrics['wall_s']:.1f} s -> {out / 'weights'}")
    return metrics


def _transfer_nets(run: RunConfig, device: torch.device):
    from .config import CPU_FUSION, SCRATCH_FUSION, TRANSFER_FUSION
    from .nets import build_nets
    from .weights import BigGANFormatError, load_biggan

    model = run.model
    if run.step.mode == "scratch":
        # the scratch setting's own weights unless fusion was set (the presets' transfer weights do not count)
        if model.fusion in (TRANSFER_FUSION, CPU_FUSION):
            model = dataclasses.replace(model, fusion=SCRATCH_FUSION)
        torch.manual_seed(run.seed)
        return build_nets(model), model, "fresh networks (scratch mode)"
    folder = biggan_folder(run)
    try:
        w = load_biggan(folder, model, class_map=run.class_map)
    except BigGANFormatError as err:
        where = ("--set biggan" if run.biggan
                 else "the stage-biggan output (run --stage biggan first, or --set biggan=DIR)")
        hint = " (--set class_map=first)" if "class_map" in str(err) else ""
        raise BigGANFormatError(f"{where}: {err}{hint}") from None
    torch.manual_seed(run.seed)
    return w.transfer_nets(), model, f"BigGAN {folder} (iteration {w.itr})"


def run_transfer_stage(run: RunConfig, device: torch.device, target: Path, nets=None) -> Dict[str, Any]:
    """DeepI2I on the target set from the BigGAN folder (or fresh nets in scratch mode);
    writes ``OUT/final.pt``.  ``nets``: what :func:`_transfer_nets` returned, when already read."""
    from .data import labeled_builtin
    from .train_step import TransferStep

    out = Path(run.out) / "transfer"
    final = Path(run.out) / "final.pt"
    if run.resume and final.is_file():
        _log(f"fastep: stage transfer already done ({final}); skipping")
        return {**(load_checkpoint(final).metrics or {}), "skipped": True}
    nets, model, source = nets or _transfer_nets(run, device)
    step = TransferStep(nets, run.step, device)
    _per_rank_noise(run)
    ds = labeled_builtin(target, "train", run.resolution, run.classes, run.target_fraction)
    _log(f"fastep: stage transfer ({run.step.mode}): from {source} on {len(ds)} target images, "
         f"{run.transfer_kimg:g} kimg (phase 1: {run.step.phase1} updates)")
    trainer = _trainer(step, ds, run, "transfer", run.transfer_kimg, device, "deepi2i", _configs(run, model, run.step))
    metrics = trainer.fit(resume=run.resume)
    _finish(trainer, metrics, final)
    _log(f"fastep: stage transfer done: {metrics['kimg']:.3f} kimg in {metrics['wall_s']:.1f} s -> {final}")
    return metrics


def run_pipeline(run: RunConfig) -> Dict[str, Any]:
    """Run ``run.stages`` in order; returns (and writes to ``OUT/metrics.json``) all metrics."""
    if not isinstance(run, RunConfig):
        raise TypeError(f"run_pipeline takes a deepi2i RunConfig, got {type(run).__name__}")
    device = _device(run)
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: Dict[str, Any] = {"system": "deepi2i", "device": str(device), "config": run.to_dict(), "stages": {}}
    mpath = out / "metrics.json"
    if run.resume and mpath.is_file():
        try:
            summary["stages"] = json.loads(mpath.read_text()).get("stages", {})
        except ValueError:
            pass
    t0 = time.perf_counter()

    def _save():
        summary["wall_s"] = time.perf_counter() - t0
        if dist_info()[0] == 0:
            write_json_atomic(summary, mpath)

    nets = None
    if "biggan" not in run.stages and not (run.resume and (out / "final.pt").is_file()):
        nets = _transfer_nets(run, device)  # a bad BigGAN folder fails before any data is made
    source, target = prepare_data(run)
    summary["data"] = {"source": str(source), "target": str(target)}
    stage = run.stages[0]
    try:
        for stage in run.stages:
            earlier = summary["stages"].get(stage)
            if stage == "biggan":
                result = run_biggan_stage(run, device, source)
            else:
                result = run_transfer_stage(run, device, target, nets)
            # a finished stage that --resume skipped returns its checkpoint's metrics, which lack
            # the per-update history; keep the record this file already holds
            summary["stages"][stage] = earlier if result.get("skipped") and earlier else result
            _save()
    except (NonFiniteLossError, KeyboardInterrupt) as err:
        if not isinstance(err, NonFiniteLossError):
            err.stage = stage
        summary["error" if isinstance(err, NonFiniteLossError) else "interrupted"] = (
            str(err) or f"interrupted during stage {stage}")
        _save()
        raise
    if (out / "final.pt").is_file():
        summary["checkpoint"] = str(out / "final.pt")
    _save()
    if run.eval and "transfer" in run.stages and (out / "final.pt").is_file() and dist_info()[0] == 0:
        from .evaluate import evaluate_run, format_summary

        try:
            report = evaluate_run(out, seed=run.seed, max_inputs=run.eval_n, progress=run.progress, log=_log)
        except KeyboardInterrupt as err:
            err.stage = "eval"  # the model is complete; --resume skips both stages and evaluates
            raise
        summary["eval"] = {k: report[k] for k in ("final", "step0", "wall_s") if k in report}
        _save()
        print(format_summary(report, out), flush=True)
    return summary
