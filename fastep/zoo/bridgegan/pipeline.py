"""``fastep train --system bridgegan``: data -> one training stage on fastep's Trainer -> final.pt
-> (built-in data) the evaluation on the validation split.

Output layout (``OUT`` = ``--out``)::

    OUT/metrics.json              the run's numbers (losses, kimg, time, images/s) and the evaluation
    OUT/final.pt                  the checkpoint for ``fastep sample`` / ``fastep.zoo.load``
    OUT/train/checkpoints/        numbered checkpoints (the last N), for --resume
    OUT/train/samples/            PNG grids, rows named at the left: source, reference, REM, LEM r1,
                                  LEM r2, recon
    OUT/eval/                     eval.json and the figures of the evaluation (built-in data)
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
from ...train.distributed import init_distributed
from ...train.trainer import NonFiniteLossError, Trainer
from .run_config import RunConfig

__all__ = ["run_training", "prepare_data", "space_to_dict", "space_from_dict", "BATCH_KEYS"]

#: the built-in data set's attributes: 6 palettes + 4 gradients + 5 textures
BUILTIN_N_ATTRS = 15
#: the keys of a data-set item the training step takes, in call order
BATCH_KEYS = ("image", "label", "index")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def space_to_dict(space) -> Dict[str, Any]:
    """An :class:`~.attributes.AttributeSpace` as plain data (what a checkpoint stores)."""
    return {"groups": {g: list(v) for g, v in space.groups.items()}, "one_hot": sorted(space.one_hot)}


def space_from_dict(d: Dict[str, Any]):
    from .attributes import AttributeSpace

    return AttributeSpace({g: tuple(v) for g, v in d["groups"].items()}, one_hot=tuple(d.get("one_hot", ())))


def builtin_root(run: RunConfig) -> Path:
    """Where the run's built-in data set lives (made once, reused)."""
    return Path(run.out) / "data" / f"builtin-r{run.model.resolution}-n{run.n_train}-{run.n_val}-s{run.seed}"


def prepare_data(run: RunConfig, split: str = "train") -> Tuple[Any, Path]:
    """The labelled data set of ``split`` and its root (the built-in set is generated once)."""
    from .attributes import BuiltinAttributes, CelebAAttributes

    if run.data == "builtin":
        from ...data import make_builtin_dataset

        root = builtin_root(run)
        make_builtin_dataset(root, n_train=run.n_train, n_val=run.n_val, resolution=run.model.resolution,
                             seed=run.seed)
        ds = BuiltinAttributes(root, "val" if split == "val" else "train")
    else:
        root = Path(run.data).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--data: {str(root)!r} is not a folder (expected 'builtin' or a CelebA-format "
                                    "folder: img_align_celeba/ and list_attr_celeba.txt)")
        ds = CelebAAttributes(root, split="test" if split == "val" else "train", resolution=run.model.resolution)
    if len(ds.space) != run.model.n_attrs:
        raise ValueError(f"the data has {len(ds.space)} attributes but the model config has "
                         f"n_attrs={run.model.n_attrs}; add --set model.n_attrs={len(ds.space)}")
    return ds, root


def build_step(run: RunConfig, device: torch.device, n_images: int):
    """The networks (seeded by ``run.seed``) and the :class:`~.train_step.BridgeTrainStep`."""
    from .networks import build_networks
    from .train_step import BridgeTrainStep

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        nets = {k: v.to(device) for k, v in build_networks(run.model).items()}
        gen = torch.Generator().manual_seed(run.seed + 1)
    return BridgeTrainStep(nets, run.loss_weights(), n_critic=run.n_critic, lr=run.lr,
                           betas=(run.beta1, run.beta2), latent_bank=run.latent_bank, n_images=n_images,
                           generator=gen)


def run_training(run: RunConfig, *, max_steps=None, _after_step=None) -> Dict[str, Any]:
    """Train (or resume) and write ``OUT/final.pt``; then evaluate on built-in data when
    ``run.eval``.  Returns the summary also written to ``OUT/metrics.json``."""
    if not isinstance(run, RunConfig):
        raise TypeError(f"run_training takes a BridgeGAN RunConfig, got {type(run).__name__}")
    device, rank, world = init_distributed(run.device)
    if run.data == "builtin" and run.model.n_attrs != BUILTIN_N_ATTRS:  # before any data is made
        raise ValueError(f"the built-in data has {BUILTIN_N_ATTRS} attributes but the model config has "
                         f"n_attrs={run.model.n_attrs}; add --set model.n_attrs={BUILTIN_N_ATTRS}")
    if world > 1:
        raise ValueError("BridgeGAN trains in one process (its step does not average gradients across ranks); "
                         "run it without torchrun")
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / "metrics.json"
    summary: Dict[str, Any] = {"system": "bridgegan", "device": str(device), "config": run.to_dict(), "stages": {}}
    if run.resume and mpath.is_file():
        try:
            summary["stages"] = json.loads(mpath.read_text()).get("stages", {})
        except ValueError:
            pass
    t0 = time.perf_counter()

    def _save():
        summary["wall_s"] = time.perf_counter() - t0
        write_json_atomic(summary, mpath)

    ds, root = prepare_data(run, "train")
    summary["data"] = str(root)
    final = out / "final.pt"
    try:
        if run.resume and final.is_file():
            _log(f"fastep: BridgeGAN training already done ({final}); skipping")
            summary["stages"]["train"] = load_checkpoint(final).metrics or summary["stages"].get("train", {})
        else:
            summary["stages"]["train"] = _train(run, ds, device, final, max_steps, _after_step)
        _save()
    except (NonFiniteLossError, KeyboardInterrupt) as err:
        summary["error" if isinstance(err, NonFiniteLossError) else "interrupted"] = str(err) or "interrupted"
        _save()
        raise
    summary["final_checkpoint"] = str(final)
    if run.eval and run.data == "builtin" and final.is_file():
        from .evaluate import evaluate_run

        summary["eval"] = evaluate_run(final, run, device=device, progress=run.progress, log=_log)
    _save()
    return summary


def _train(run: RunConfig, ds, device: torch.device, final: Path, max_steps, after_step) -> Dict[str, Any]:
    step = build_step(run, device, len(ds))
    # the step's own draws (references, noise, interpolation weights) come from the global
    # stream: seeded here, saved in every checkpoint and restored on --resume
    torch.manual_seed(run.seed)
    weights = run.loss_weights()
    configs = {"model": dataclasses.asdict(run.model), "weights": dataclasses.asdict(weights), "run": run.to_dict()}
    trainer = Trainer(step, ds, stage="train", system="bridgegan", out_dir=Path(run.out) / "train", device=device,
                      batch_size=run.images_per_step, kimg=run.kimg, seed=run.seed,
                      lr_decay_start_kimg=run.kimg * run.lr_decay_start, log_every=run.log_every,
                      ckpt_every_kimg=run.ckpt_every, image_every_kimg=run.image_every, keep=run.keep,
                      num_workers=run.workers, batch_keys=BATCH_KEYS, configs=configs,
                      extras={"attributes": space_to_dict(ds.space), "n_critic": run.n_critic,
                              "loss": run.loss, "latent_bank": run.latent_bank},
                      progress=run.progress, max_steps=max_steps)
    _log(f"fastep: BridgeGAN: {len(ds)} training images, {run.n_critic} critic update(s) x batch {run.batch} per "
         f"generator update, {trainer.total_steps} generator updates ({run.kimg:g} kimg read)")
    metrics = trainer.fit(resume=run.resume, _after_step=after_step)
    ckpt = trainer.state()
    ckpt.metrics = {k: v for k, v in metrics.items() if k != "history"}
    ckpt.weights_only().save(final)
    trainer.ckpts.slim_all()
    _log(f"fastep: BridgeGAN training done: {metrics['steps']} generator updates, {metrics['kimg']:.3f} kimg in "
         f"{metrics['wall_s']:.1f} s -> {final}")
    return metrics
