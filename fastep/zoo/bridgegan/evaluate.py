"""BridgeGAN's evaluation on the built-in data set's validation split, judged by fastep's style
oracle (:mod:`fastep.eval.oracle`: a CNN trained on real built-in renderings, with palette,
gradient and texture heads, a hue regressor and 128-d features).

For ``n`` validation sources (one attribute group edited per source, chosen at random):

======================  ==========================================================================
``lem.target_acc``      the oracle reads the target value in the edited group of the label-based
                        output ``G(x, E(x, -d) + M(r, d))`` (chance: 1 / the group's size)
``rem.target_acc``      the same for the reference-based output ``G(x, E(x, -d) + E(ref, d))``,
                        the reference being a validation image whose value in that group differs
``*.keep_acc``          the oracle reads the source's values in the groups left untouched
``rem.hue_err_deg``     circular error between the REM output's hue and the reference's true hue
                        (baselines: the source's own hue against the reference's; 90 = chance)
``lem.lpips_div``       mean pairwise LPIPS of ``n_r`` LEM outputs of one source and target over
                        the noise r; ``lem.hue_spread_deg`` their circular hue spread
``fd.<group>``          Frechet distance in oracle features between the LEM outputs whose edited
                        group is ``<group>`` and the real validation images (per-attribute FID)
======================  ==========================================================================

:func:`evaluate_run` evaluates a checkpoint and the same networks at step 0 (freshly
initialised with the run's seed) with the same sources, targets, references and noise, writes
``OUT/eval/eval.json`` and the figure ``OUT/eval/interpolation.png`` (rows: source, reference,
then LEM -> REM: the bridge ``a M(r, d) + (1 - a) E(ref, d)`` for a from 1 to 0).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["evaluate_model", "evaluate_run", "interpolation_figure", "plan_edits"]

GROUPS = ("palette", "gradient", "texture")


def _circ_err_deg(a: Tensor, b: Tensor) -> Tensor:
    d = torch.remainder(a.double() - b.double(), 1.0)
    return torch.minimum(d, 1 - d) * 360.0


def _circ_spread_deg(h: Tensor) -> float:
    """Circular standard deviation (degrees) of hues in [0, 1)."""
    ang = h.double() * 2 * math.pi
    R = torch.sqrt(ang.cos().mean() ** 2 + ang.sin().mean() ** 2).clamp(1e-12, 1.0)
    return float(torch.sqrt(-2 * torch.log(R)) * 180 / math.pi)


def plan_edits(space, y: Tensor, n: int, seed: int = 0) -> Dict[str, Tensor]:
    """The evaluation's edits for the first ``n`` validation images: per source one group (at
    random), a label target (a new value of that group), a reference index whose value in that
    group differs from the source's, and two noise draws.  Deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    n = min(n, y.shape[0])
    ys = y[:n]
    dec = space.decode(y)
    group_idx = torch.randint(len(GROUPS), (n,), generator=g)
    y_lab = ys.clone()
    ref = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        grp = GROUPS[int(group_idx[i])]
        y_lab[i] = space.sample_targets(ys[i:i + 1], 1, generator=g, groups=[grp])[0]
        cand = (dec[grp] != dec[grp][i]).nonzero().flatten()
        ref[i] = cand[torch.randint(len(cand), (1,), generator=g)]
    return {"group": group_idx, "y_lab": y_lab, "ref": ref}


def _acc(pred: Dict[str, Tensor], y: Tensor, space, group: Tensor, edited: bool) -> Dict[str, float]:
    """Share of images whose oracle class equals ``y``'s value in the edited group (``edited``)
    or in each untouched group (mean over them); also per group."""
    dec = space.decode(y)
    hits, per = [], {}
    for j, grp in enumerate(GROUPS):
        sel = (group == j) if edited else (group != j)
        if not bool(sel.any()):
            continue
        h = (pred[grp][sel] == dec[grp][sel]).double()
        per[grp] = float(h.mean())
        hits.append(h)
    return {"all": float(torch.cat(hits).mean()), **per}


@torch.no_grad()
def evaluate_model(model, val, oracle, *, n: int = 120, n_div: int = 8, n_r: int = 8, seed: int = 0,
                   lpips: Optional[Callable[[Tensor, Tensor], Tensor]] = None, batch: int = 64) -> Dict[str, Any]:
    """The metrics of the module docstring for a :class:`~.inference.BridgeModel` on the
    validation set ``val`` (:class:`~.attributes.BuiltinAttributes`), judged by ``oracle``."""
    space = model.space
    n = min(n, len(val))
    if n < 2:
        raise ValueError(f"the evaluation needs at least 2 validation images, got {len(val)}")
    X = torch.stack([val[i]["image"] for i in range(len(val))])
    if X.shape[-1] != model.resolution:
        X = F.interpolate(X, size=(model.resolution,) * 2, mode="bilinear", antialias=True, align_corners=False)
    Y, H = val.labels, val.hue
    plan = plan_edits(space, Y, n, seed)
    xs, ys, grp = X[:n], Y[:n], plan["group"]
    ref = plan["ref"]
    y_rem = ys.clone()
    for i in range(n):
        sl = space.slice(GROUPS[int(grp[i])])
        y_rem[i, sl] = Y[ref[i], sl]
    gen = torch.Generator().manual_seed(seed + 1)
    r = torch.randn(n, model.cfg.noise_dim, generator=gen)

    def run(fn, *args):
        outs = [fn(*(a[i:i + batch] for a in args)).cpu() for i in range(0, n, batch)]
        return torch.cat(outs)

    lem = run(lambda x, a, b, z: model.lem(x, a, b, r=z), xs, ys, plan["y_lab"], r)
    rem = run(lambda x, a, rf, b: model.rem(x, a, rf, b), xs, ys, X[ref], y_rem)
    p_lem, p_rem = oracle.predict(lem), oracle.predict(rem)
    rep: Dict[str, Any] = {"n": n, "chance": {g: 1.0 / len(space.groups[g]) for g in GROUPS}}
    rep["lem"] = {"target_acc": _acc(p_lem, plan["y_lab"], space, grp, True),
                  "keep_acc": _acc(p_lem, ys, space, grp, False)}
    rep["rem"] = {"target_acc": _acc(p_rem, y_rem, space, grp, True),
                  "keep_acc": _acc(p_rem, ys, space, grp, False),
                  "hue_err_deg": float(_circ_err_deg(p_rem["hue"], H[ref]).mean()),
                  "hue_err_source_vs_ref_deg": float(_circ_err_deg(H[:n], H[ref]).mean())}
    # LEM diversity over r: n_div sources, n_r noise draws each, the same target
    k = min(n_div, n)
    gen = torch.Generator().manual_seed(seed + 2)
    lp, spread = [], []
    for i in range(k):
        rr = torch.randn(n_r, model.cfg.noise_dim, generator=gen)
        outs = model.lem(xs[i:i + 1].expand(n_r, -1, -1, -1), ys[i:i + 1].expand(n_r, -1),
                         plan["y_lab"][i:i + 1].expand(n_r, -1), r=rr).cpu()
        spread.append(_circ_spread_deg(oracle.predict(outs)["hue"]))
        if lpips is not None:
            up = F.interpolate(outs, size=(64, 64), mode="bilinear", align_corners=False) \
                if outs.shape[-1] < 64 else outs
            a, b = torch.triu_indices(n_r, n_r, 1)
            lp.append(float(lpips(up[a], up[b]).mean()))
    rep["lem"]["hue_spread_deg"] = float(sum(spread) / len(spread))
    if lp:
        rep["lem"]["lpips_div"] = float(sum(lp) / len(lp))
    # per-group Frechet distance in oracle features against the real validation images
    real_f = oracle.predict(X)["features"]
    rep["fd"] = {}
    for j, g in enumerate(GROUPS):
        sel = grp == j
        if int(sel.sum()) >= 2:
            from ...eval.metrics import frechet_distance

            rep["fd"][g] = frechet_distance(p_lem["features"][sel], real_f)
    return rep


@torch.no_grad()
def interpolation_figure(model, val, path, *, n: int = 4, steps: int = 6, seed: int = 0) -> Path:
    """LEM <-> REM strips: per source a row source, reference, then the bridge code
    ``E(x, -d) + a M(r, d) + (1 - a) E(ref, d)`` for ``a`` from 1 (LEM) to 0 (REM); each row is
    named at its left by the edited group and the target."""
    from ...train.outputs import labelled_grid, save_image_grid

    space = model.space
    Y = val.labels
    plan = plan_edits(space, Y, n, seed)
    X = torch.stack([val[i]["image"] for i in range(len(val))])
    if X.shape[-1] != model.resolution:
        X = F.interpolate(X, size=(model.resolution,) * 2, mode="bilinear", antialias=True, align_corners=False)
    r = torch.randn(1, model.cfg.noise_dim, generator=torch.Generator().manual_seed(seed + 3))
    rows, labels = [], []
    for i in range(min(n, len(plan["ref"]))):
        grp = GROUPS[int(plan["group"][i])]
        j = int(plan["ref"][i])
        y_t = Y[i:i + 1].clone()
        sl = space.slice(grp)
        y_t[:, sl] = Y[j:j + 1, sl]
        cells = [X[i:i + 1], X[j:j + 1]]
        for a in torch.linspace(1, 0, steps).tolist():
            cells.append(model.mix(X[i:i + 1], Y[i:i + 1], X[j:j + 1], y_t, a, r).cpu())
        rows.append(torch.cat(cells))
        labels.append(f"{grp}={space.groups[grp][int(space.decode(y_t)[grp][0])]}")
    # one row per source (columns: source, reference, LEM a=1 ... REM a=0)
    grid = labelled_grid([(row.clamp(-1, 1) + 1) / 2 for row in rows], labels, padding=2)
    return save_image_grid(grid, path)


def evaluate_run(final, run, *, device="cpu", progress: bool = False, log=print) -> Dict[str, Any]:
    """Evaluate ``final`` (a BridgeGAN checkpoint of ``run``, built-in data) and the step-0
    networks; writes ``OUT/eval/eval.json`` and ``OUT/eval/interpolation.png``; returns the report."""
    from ... import zoo
    from ...eval.evaluate import make_lpips
    from ...eval.oracle import load_or_train_oracle
    from ...io import write_json_atomic
    from ...train.summary import _lpips_weights
    from .attributes import BuiltinAttributes
    from .inference import BridgeModel
    from .pipeline import build_step, builtin_root

    root = builtin_root(run)
    val = BuiltinAttributes(root, "val")
    if len(val) < 2:
        raise ValueError(f"no evaluation: the validation split of {root} has {len(val)} images")
    oracle = load_or_train_oracle(root, progress=progress, log=log)
    weights = _lpips_weights()
    lpips = make_lpips("alex", weights, torch.device("cpu"))
    model = zoo.load(final, "cpu")
    step0 = build_step(run, torch.device("cpu"), len(val))
    base = BridgeModel(step0.networks(), run.model, model.space, "cpu")
    kw = dict(n=run.eval_n, seed=run.seed, lpips=lpips)
    log(f"fastep: evaluating BridgeGAN on {min(run.eval_n, len(val))} validation images (and the step-0 networks)")
    report = {"oracle_held_out": oracle.held_out, "lpips_backbone": weights,
              "final": evaluate_model(model, val, oracle, **kw), "step0": evaluate_model(base, val, oracle, **kw)}
    out = Path(run.out) / "eval"
    report["figure"] = str(interpolation_figure(model, val, out / "interpolation.png", seed=run.seed))
    write_json_atomic(report, out / "eval.json")
    for line in summary_lines(report):
        log(line)
    return report


def summary_lines(report: Dict[str, Any]):
    """Human-readable lines: each headline metric at the end and at step 0."""
    f, s = report["final"], report["step0"]
    ch = f["chance"]
    lines = [f"fastep: BridgeGAN evaluation (n={f['n']}; chance: " +
             ", ".join(f"{g} {v:.2f}" for g, v in ch.items()) + ")   final | step 0"]
    for kind in ("lem", "rem"):
        for m in ("target_acc", "keep_acc"):
            lines.append(f"  {kind.upper()} {m:<10} {f[kind][m]['all']:.3f} | {s[kind][m]['all']:.3f}   (" +
                         ", ".join(f"{g} {f[kind][m][g]:.2f}" for g in GROUPS if g in f[kind][m]) + ")")
    lines.append(f"  REM hue error to reference {f['rem']['hue_err_deg']:.1f} | {s['rem']['hue_err_deg']:.1f} deg "
                 f"(source vs reference {f['rem']['hue_err_source_vs_ref_deg']:.1f})")
    lines.append(f"  LEM hue spread over r {f['lem']['hue_spread_deg']:.1f} | {s['lem']['hue_spread_deg']:.1f} deg"
                 + (f"; LPIPS diversity {f['lem']['lpips_div']:.3f} | {s['lem']['lpips_div']:.3f}"
                    if "lpips_div" in f["lem"] else ""))
    lines.append("  Frechet distance (oracle features) " + ", ".join(
        f"{g} {f['fd'][g]:.1f} | {s['fd'].get(g, float('nan')):.1f}" for g in f["fd"]))
    return lines
