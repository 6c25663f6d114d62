"""DeepI2I's evaluation on the built-in data, judged by the style oracle (:mod:`fastep.eval.oracle`).

Every validation image of the target set (any class) is translated to every class with a
seeded z, and the oracle (trained on real renderings only) judges the translations:

==============  =====================================================================
``rc``          per factor of the class (and ``joint``): the share of translations the oracle
                puts in the target class (a classifier trained on real images, tested on
                translations)
``fc``          a linear probe on oracle features trained on the translations (labels: target
                class), tested on the real validation images (trained on translations, tested
                on real)
``mfd``/``mkid`` the Frechet distance / KID (x 100) of each class's translations to that
                class's real validation images in the oracle's 128-d feature space, averaged
                over classes (in-house features: only relative comparisons mean anything)
``content``     IoU of the oracle's foreground mask of a translation with its input's true shape
                mask; next to it the same IoU for an unrelated real image (``content_random``)
                and for the input itself (``content_input``)
``boundary_f``  boundary F-score of a translation's edges against its input's true region
                boundaries (the A outline), within one pixel (:func:`boundary_fscore`); with
                ``boundary_f_random`` (an unrelated real image) and ``boundary_f_input`` (the
                input itself): oracle-free, so it also judges shapes the mask head misses
``diversity``   mean pairwise LPIPS (random-weight AlexNet: relative only) over z for fixed
                inputs and classes
==============  =====================================================================

``python -m fastep.zoo.deepi2i.evaluate OUT`` evaluates ``OUT/final.pt`` and the transfer's step
0 (the BigGAN with a fresh adaptor, as the stage started) and writes ``OUT/eval.json``;
``fastep train --system deepi2i`` runs the same evaluation at its end (``--no-eval`` skips it).
The oracle is :data:`ORACLE`: fastep's default oracle settings, judging at 32 x 32.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from ...eval import metrics as M
from ...eval.oracle import OracleConfig
from .data import CLASS_FACTORS, labeled_builtin

__all__ = ["ORACLE", "evaluate_translator", "evaluate_run", "class_factors", "format_table", "edge_map",
           "boundary_fscore", "format_summary"]

#: The style oracle that judges translations: fastep's default oracle settings (those of the
#: StEP main job) at 32 x 32, so a 64-px target set is judged on area-downsampled images. Every
#: style factor and the shape mask read at 32 px (held-out palette/gradient/texture ~1.0/0.99/0.97,
#: mask IoU ~0.9), and a 64-px oracle costs about 4x: it did not finish in 16 minutes on a loaded
#: 2-core machine, where this one trains in a few.
ORACLE = OracleConfig(max_resolution=32)


def edge_map(images: torch.Tensor, n_edges: torch.Tensor) -> torch.Tensor:
    """The ``n_edges[i]`` pixels of strongest colour change of each image [N, 3, R, R]
    (central differences, summed over channels) as a boolean map [N, R, R].

    Taking as many edge pixels as the reference outline has avoids a threshold that would
    favour one contrast level over another.  The image is box-blurred 3 x 3 first, so that
    pixel-level noise (a young generator's checkerboard) does not outrank region boundaries."""
    x = torch.nn.functional.pad(images.float(), (1, 1, 1, 1), mode="replicate")
    x = torch.nn.functional.avg_pool2d(x, 3, 1)
    x = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = (x[..., 1:-1, 2:] - x[..., 1:-1, :-2]).abs().sum(1)
    gy = (x[..., 2:, 1:-1] - x[..., :-2, 1:-1]).abs().sum(1)
    mag = (gx + gy).flatten(1)
    order = mag.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(mag.shape[1]).expand_as(order))
    return (ranks < n_edges.view(-1, 1)).view(images.shape[0], *images.shape[2:])


def boundary_fscore(images: torch.Tensor, outlines: torch.Tensor, tol: int = 1) -> torch.Tensor:
    """Per-image boundary F-score [N] of the edges of ``images`` [N, 3, R, R] against the true
    region boundaries ``outlines`` (bool [N, R, R]): precision = share of edge pixels within
    ``tol`` pixels of the outline, recall = share of outline pixels within ``tol`` of an edge,
    F = their harmonic mean.  The image's edges are its ``outline.sum()`` strongest gradient
    pixels (:func:`edge_map`)."""
    if outlines.dtype != torch.bool or outlines.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"outlines must be bool [N, R, R] matching images {tuple(images.shape)}, "
                         f"got {outlines.dtype} {tuple(outlines.shape)}")
    true = outlines
    pred = edge_map(images, true.flatten(1).sum(1))

    def grow(m):
        return torch.nn.functional.max_pool2d(m.float().unsqueeze(1), 2 * tol + 1, 1, tol)[:, 0] > 0

    tp_p = (pred & grow(true)).flatten(1).sum(1).double()
    tp_r = (true & grow(pred)).flatten(1).sum(1).double()
    prec = tp_p / pred.flatten(1).sum(1).clamp(min=1)
    rec = tp_r / true.flatten(1).sum(1).clamp(min=1)
    return torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp(min=1e-12), torch.zeros_like(prec))


def class_factors(classes: str, n_classes: int) -> Dict[str, torch.Tensor]:
    """``{factor: value of each class}`` for a class scheme (the inverse of ``style_class``)."""
    from ...data.builtin import GRADIENTS, PALETTES, TEXTURES

    sizes = {"palette": len(PALETTES), "gradient": len(GRADIENTS), "texture": len(TEXTURES)}
    c = torch.arange(n_classes)
    out: Dict[str, torch.Tensor] = {}
    for f in reversed(CLASS_FACTORS[classes]):
        out[f] = c % sizes[f]
        c = c // sizes[f]
    return {f: out[f] for f in CLASS_FACTORS[classes]}


@torch.no_grad()
def _translate_all(tr, x: torch.Tensor, n_classes: int, seed: int, batch: int = 50) -> torch.Tensor:
    outs = []
    for c in range(n_classes):
        gen = torch.Generator().manual_seed(seed * 1000 + c)
        z = torch.randn(len(x), tr.cfg.dim_z, generator=gen)
        for i in range(0, len(x), batch):
            xi = x[i:i + batch].to(tr.device)
            outs.append(tr.translate(xi, c, z[i:i + batch].to(tr.device)).float().cpu())
    return torch.cat(outs)  # class-major: [C * N, 3, R, R]


def evaluate_translator(tr, root, classes: str, oracle=None, *, seed: int = 0, max_inputs: Optional[int] = None,
                        n_div_inputs: int = 8, n_div_z: int = 4, lpips=None, progress: bool = False
                        ) -> Dict[str, Any]:
    """The metrics of the module docstring for a :class:`~fastep.zoo.deepi2i.Translator`-like
    ``tr`` (``translate(x, y, z)``, ``cfg``, ``device``) on the validation split of ``root``."""
    from ...data import BuiltinStyles
    from ...data.builtin import _outline, _shape_masks
    from ...eval.oracle import _iou, _records_to_params, load_or_train_oracle

    root = Path(root)
    oracle = oracle or load_or_train_oracle(root, ORACLE, progress=progress)
    n_classes = tr.cfg.n_classes
    val = labeled_builtin(root, "val", tr.cfg.resolution, classes)
    x, labels = val.float_images(), val.labels
    styles = BuiltinStyles.load(root)
    params = _records_to_params(styles.records["val"], int(styles.params["seed"]), "val")
    if max_inputs:
        x, labels, params = x[:max_inputs], labels[:max_inputs], params[:max_inputs]
    n = len(x)
    regions = _shape_masks(params, tr.cfg.resolution)
    masks, outlines = regions > 0, _outline(regions, tr.cfg.resolution)
    fake = _translate_all(tr, x, n_classes, seed)
    pred = oracle.predict(fake)
    real = oracle.predict(x)
    target = torch.arange(n_classes).repeat_interleave(n)
    truth = class_factors(classes, n_classes)
    rc = {f: float((pred[f] == v[target]).double().mean()) for f, v in truth.items()}
    rc["joint"] = float(torch.stack([pred[f] == v[target] for f, v in truth.items()]).all(0).double().mean())
    rc_real = {f: float((real[f] == v[labels]).double().mean()) for f, v in truth.items()}
    fc = M.linear_probe_accuracy(pred["features"], target, real["features"], labels)
    fds, kids = [], []
    for c in range(n_classes):
        fc_feats, rc_feats = pred["features"][target == c], real["features"][labels == c]
        if len(rc_feats) >= 2:
            fds.append(M.frechet_distance(fc_feats, rc_feats))
            kids.append(100 * M.kid(fc_feats, rc_feats))
    in_masks = masks.repeat(n_classes, 1, 1)
    perm = torch.roll(torch.arange(n), 1)
    content = {"content": float(_iou(pred["mask"], in_masks).mean()),
               "content_random": float(_iou(real["mask"][perm], masks).mean()),
               "content_input": float(_iou(real["mask"], masks).mean()),
               "boundary_f": float(boundary_fscore(fake, outlines.repeat(n_classes, 1, 1)).mean()),
               "boundary_f_random": float(boundary_fscore(x[perm], outlines).mean()),
               "boundary_f_input": float(boundary_fscore(x, outlines).mean())}
    if lpips is None:
        from ...eval.evaluate import make_lpips

        lpips = make_lpips("alex", "random", torch.device("cpu"))
    div = []
    k = min(n_div_inputs, n)
    for c in range(min(n_classes, 3)):
        gen = torch.Generator().manual_seed(seed + 7 + c)
        z = torch.randn(n_div_z, k, tr.cfg.dim_z, generator=gen)
        with torch.no_grad():
            samples = torch.stack([tr.translate(x[:k].to(tr.device), c, z[j].to(tr.device)).float().cpu()
                                   for j in range(n_div_z)], 1)  # [k, n_z, 3, R, R]
        for i in range(k):
            div.append(float(M.pairwise_mean_distance(samples[i], lambda a, b: lpips(a, b).reshape(-1))))
    return {"n_inputs": n, "n_classes": n_classes, "rc": rc, "rc_real": rc_real,
            "chance": 1.0 / n_classes, "fc": float(fc), "mfd": float(np.mean(fds)), "mkid": float(np.mean(kids)),
            **content, "diversity": float(np.mean(div)), "oracle_held_out": oracle.held_out}


def _step0_translator(run):
    """The transfer stage's networks as they start (what the run's step 0 translates with)."""
    from .pipeline import _transfer_nets
    from .translator import Translator

    nets, model, _ = _transfer_nets(run, torch.device("cpu"))
    return Translator(nets["G"], nets["E"], nets["A"], model, {"step": 0})


def evaluate_run(out, *, seed: int = 0, max_inputs: Optional[int] = None, progress: bool = False,
                 step0: bool = True, log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Evaluate ``OUT/final.pt`` (and the transfer's step 0) of a DeepI2I run; writes ``OUT/eval.json``."""
    import fastep.zoo as zoo

    from ...config import from_dict
    from ...io import write_json_atomic
    from ...train.checkpoint import checkpoint_config, load_checkpoint
    from .pipeline import prepare_data
    from .run_config import RunConfig

    out = Path(out)
    if not (out / "final.pt").is_file():
        raise FileNotFoundError(f"{out / 'final.pt'} does not exist (give the --out folder of a finished "
                                f"fastep train --system deepi2i run)")
    ckpt = load_checkpoint(out / "final.pt")
    if ckpt.system != "deepi2i":
        raise ValueError(f"{out / 'final.pt'} is a {ckpt.system!r} checkpoint, not a DeepI2I translator "
                         f"(give the --out folder of fastep train --system deepi2i)")
    run = from_dict(RunConfig, checkpoint_config(ckpt, "run"), what="deepi2i run config")
    _, target = prepare_data(run)
    tr = zoo.load(out / "final.pt")
    from ...eval.oracle import load_or_train_oracle

    t0 = time.perf_counter()
    oracle = load_or_train_oracle(target, ORACLE, progress=progress, log=log)
    n = min(max_inputs or run.n_val, run.n_val)
    if log:
        log(f"fastep: evaluating DeepI2I on {n} validation inputs x {run.model.n_classes} classes"
            + (" (and the transfer's step 0)" if step0 and run.step.mode == "transfer" else ""))
    report = {"checkpoint": str(out / "final.pt"), "mode": run.step.mode, "target_fraction": run.target_fraction,
              "kimg": ckpt.kimg, "oracle": dataclasses.asdict(ORACLE),
              "final": evaluate_translator(tr, target, run.classes, oracle, seed=seed, max_inputs=max_inputs)}
    if step0 and run.step.mode == "transfer":
        report["step0"] = evaluate_translator(_step0_translator(run), target, run.classes, oracle, seed=seed,
                                              max_inputs=max_inputs)
    report["wall_s"] = time.perf_counter() - t0
    write_json_atomic(report, out / "eval.json")
    return report


def format_table(rows: Dict[str, Dict[str, Any]]) -> str:
    """A markdown table of several evaluations ``{name: evaluate_translator(...)}``."""
    head = ("| run | RC palette | RC joint | FC | mFD | mKIDx100 | content IoU | boundary F | diversity |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['rc'].get('palette', float('nan')):.3f} | {r['rc']['joint']:.3f} | "
                     f"{r['fc']:.3f} | {r['mfd']:.2f} | {r['mkid']:.2f} | {r['content']:.3f} | "
                     f"{r['boundary_f']:.3f} | {r['diversity']:.4f} |")
    return "\n".join(lines)


def format_summary(report: Dict[str, Any], out=None) -> str:
    """The evaluation's headline numbers, each next to its step-0 value and its references, and
    where the pictures are (what ``fastep train --system deepi2i`` prints at its end)."""
    f, s0 = report["final"], report.get("step0")
    held = f.get("oracle_held_out") or {}

    def row(name, key, fmt, refs=""):
        start = f"step 0 {format(s0[key], fmt)}" if s0 else ""
        extra = "; ".join(x for x in (start, refs) if x)
        return f"  {name:<34} {format(f[key], fmt):>8}" + (f"   ({extra})" if extra else "")

    rc = f["rc"].get("palette", f["rc"]["joint"])
    rc0 = s0["rc"].get("palette", s0["rc"]["joint"]) if s0 else None
    real = f["rc_real"].get("palette", next(iter(f["rc_real"].values())))
    lines = [f"DeepI2I evaluation: {f['n_inputs']} validation inputs x {f['n_classes']} classes, judged by the "
             f"style oracle (held-out palette {held.get('palette', float('nan')):.2f}, mask IoU "
             f"{held.get('mask_iou', float('nan')):.2f})",
             f"  {'class accuracy of translations (RC)':<34} {rc:>8.3f}   ("
             + (f"step 0 {rc0:.3f}; " if rc0 is not None else "") + f"chance {f['chance']:.3f}; real images {real:.2f})",
             row("FC (probe trained on translations)", "fc", ".3f"),
             row("Frechet distance (oracle features)", "mfd", ".0f"),
             row("content IoU with the input's shapes", "content", ".3f",
                 f"unrelated image {f['content_random']:.3f}; the input {f['content_input']:.3f}"),
             row("boundary F-score against the input", "boundary_f", ".3f",
                 f"unrelated image {f['boundary_f_random']:.3f}; the input {f['boundary_f_input']:.3f}"),
             row("LPIPS diversity over z", "diversity", ".3f")]
    if out is not None:
        out = Path(out)
        lines.append(f"pictures: {out / 'transfer' / 'samples'} (rows: input, then its translation to each "
                     f"class); numbers: {out / 'eval.json'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastep.zoo.deepi2i.evaluate",
                                description="Evaluate a DeepI2I run folder (OUT/final.pt) on its target set.")
    p.add_argument("out", help="the run folder (--out of fastep train --system deepi2i)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-inputs", type=int, default=None, help="validation inputs to translate (default all)")
    p.add_argument("--no-step0", dest="step0", action="store_false", help="skip the step-0 reference")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    from ...train.checkpoint import CheckpointError

    if args.max_inputs is not None and args.max_inputs < 1:
        print(f"deepi2i evaluate: error: --max-inputs must be >= 1, got {args.max_inputs}", file=sys.stderr)
        return 1
    try:
        report = evaluate_run(args.out, seed=args.seed, max_inputs=args.max_inputs, step0=args.step0,
                              progress=args.progress, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"deepi2i evaluate: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deepi2i evaluate: interrupted; nothing was written", file=sys.stderr)
        return 130
    rows = {"final": report["final"], **({"step 0": report["step0"]} if "step0" in report else {})}
    print(format_table(rows))
    print(format_summary(report, args.out))
    print(f"RC of real images per factor: {json.dumps(report['final']['rc_real'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
