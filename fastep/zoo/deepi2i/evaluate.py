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
0 (the BigGAN with a fresh adaptor, as the stage started) and writes ``OUT/eval.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ...eval import metrics as M
from .data import CLASS_FACTORS, labeled_builtin

__all__ = ["evaluate_translator", "evaluate_run", "class_factors", "format_table", "edge_map", "boundary_fscore"]


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
    oracle = oracle or load_or_train_oracle(root, progress=progress)
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
                 step0: bool = True) -> Dict[str, Any]:
    """Evaluate ``OUT/final.pt`` (and the transfer's step 0) of a DeepI2I run; writes ``OUT/eval.json``."""
    import fastep.zoo as zoo

    from ...config import from_dict
    from ...io import write_json_atomic
    from ...train.checkpoint import checkpoint_config, load_checkpoint
    from .pipeline import prepare_data
    from .run_config import RunConfig

    out = Path(out)
    ckpt = load_checkpoint(out / "final.pt")
    if ckpt.system != "deepi2i":
        raise ValueError(f"{out / 'final.pt'} is a {ckpt.system!r} checkpoint, not a DeepI2I translator "
                         f"(give the --out folder of fastep train --system deepi2i)")
    run = from_dict(RunConfig, checkpoint_config(ckpt, "run"), what="deepi2i run config")
    _, target = prepare_data(run)
    tr = zoo.load(out / "final.pt")
    from ...eval.oracle import load_or_train_oracle

    oracle = load_or_train_oracle(target, progress=progress)
    report = {"checkpoint": str(out / "final.pt"), "mode": run.step.mode, "target_fraction": run.target_fraction,
              "kimg": ckpt.kimg, "final": evaluate_translator(tr, target, run.classes, oracle, seed=seed,
                                                                max_inputs=max_inputs)}
    if step0 and run.step.mode == "transfer":
        report["step0"] = evaluate_translator(_step0_translator(run), target, run.classes, oracle, seed=seed,
                                              max_inputs=max_inputs)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastep.zoo.deepi2i.evaluate",
                                description="Evaluate a DeepI2I run folder (OUT/final.pt) on its target set.")
    p.add_argument("out", help="the run folder (--out of fastep train --system deepi2i)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-inputs", type=int, default=None, help="validation inputs to translate (default all)")
    p.add_argument("--no-step0", dest="step0", action="store_false", help="skip the step-0 reference")
    args = p.parse_args(argv)
    from ...train.checkpoint import CheckpointError

    try:
        report = evaluate_run(args.out, seed=args.seed, max_inputs=args.max_inputs, step0=args.step0)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"deepi2i evaluate: error: {err}", file=sys.stderr)
        return 1
    rows = {"final": report["final"], **({"step 0": report["step0"]} if "step0" in report else {})}
    print(format_table(rows))
    print(f"chance {report['final']['chance']:.3f}; content IoU of an unrelated real image "
          f"{report['final']['content_random']:.3f}, of the input itself {report['final']['content_input']:.3f}; "
          f"boundary F of an unrelated real image {report['final']['boundary_f_random']:.3f}, of the input "
          f"itself {report['final']['boundary_f_input']:.3f}; "
          f"RC of real images {json.dumps(report['final']['rc_real'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
