"""The paper's evaluation protocol on the built-in data set, for several approaches.

    python -m fastep.eval.protocol --out runs/protocol [--approaches ours_v3 bicycle_v1]

For every approach: train all stages with :func:`fastep.zoo.step.pipeline.run_pipeline` on one shared
built-in data set (64 x 64 on a CPU by default), then evaluate the final checkpoint (PSNR,
LPIPS, diversity, style capture of the encoder against a randomly initialised one) and, for
approaches with a pre-trained encoder, the encoder right after stage 1.  It also draws the
figures (style-transfer grid, interpolation strips, sampling grid, 2-D code embeddings coloured
by true style, validation LPIPS across training with the stage boundaries) and writes
``OUT/protocol.json`` and ``OUT/protocol.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from fastep.zoo.step.config import APPROACHES

from . import figures
from .evaluate import EvalConfig, _val_tensors, evaluate_checkpoint, make_lpips, markdown_report, reconstruction


def _lpips_curve(run_dir: Path, data_root: Path, cfg: EvalConfig, device, lpips) -> Dict[str, object]:
    """Validation LPIPS of every kept checkpoint of stages 2 and 3, on one kimg axis."""
    from fastep.train.checkpoint import load_checkpoint, load_models

    points, psnr_points, boundaries, offset = [], [], {}, 0.0
    for stage in ("2", "3"):
        ckpts = sorted((run_dir / f"stage{stage}" / "checkpoints").glob("*.pt"))
        if not ckpts:
            continue
        if points:
            boundaries[f"stage {stage}"] = offset
        last = 0.0
        for path in ckpts:
            kimg = float(load_checkpoint(path).kimg)
            G, E, mcfg, _ = load_models(path, device, ema=cfg.ema)
            val = _val_tensors(data_root, int(mcfg.resolution), cfg.max_recon)
            r = reconstruction(G, E, val["A"], val["B"], lpips, batch_size=cfg.batch_size, device=device)
            points.append((offset + kimg, r["lpips"]))
            psnr_points.append((offset + kimg, r["psnr"]))
            last = max(last, kimg)
        offset += last
    return {"points": points, "psnr_points": psnr_points, "boundaries": boundaries}


@torch.no_grad()
def _figures(run_dir: Path, data_root: Path, device, out_dir: Path) -> Dict[str, str]:
    from fastep.data import BuiltinStyles
    from fastep.train.checkpoint import load_models

    from .evaluate import encode_split

    G, E, mcfg, extras = load_models(run_dir / "final.pt", device)
    val = _val_tensors(data_root, int(mcfg.resolution), 64)
    A, B = val["A"].to(device), val["B"].to(device)
    made = {
        "style_transfer": figures.style_transfer_grid(G, E, A[:6], B[6:14], out_dir / "style_transfer.png"),
        "interpolation": figures.interpolation_strips(G, A[:4], E(B[4:5]), E(B[5:6]), out_dir / "interpolation.png"),
    }
    noise = torch.randn(8, mcfg.z_dim, generator=torch.Generator().manual_seed(0)).to(device)
    sets = {}
    if extras.get("mapper") is not None:
        sets["mapper"] = extras["mapper"](noise)
    if extras.get("z_stats") is not None:
        sets["gaussian"] = extras["z_stats"]["mu"] + extras["z_stats"]["sigma"] * noise
    if sets:
        made["sampling"] = figures.sampling_grid(G, A[:3], sets, out_dir / "sampling.png")
    if (data_root / "factors.json").exists():
        styles = BuiltinStyles.load(data_root)
        labels = torch.as_tensor(styles.factor("val", "palette"))
        z = encode_split(E, styles, "val", int(mcfg.resolution), batch_size=64, device=device)
        made["embedding"] = figures.embedding_plot(z, labels, out_dir / "embedding.png",
                                                   title="codes E(B) after training", label_name="palette")
    return {k: str(v) for k, v in made.items()}


#: The protocol's ablation rows: Ours v3 with one deviation of the CPU preset from the paper undone.
ABLATIONS = {
    "no_pixel": {"loss.lambda_pixel": 0.0},                              # GAN alone reconstructs
    "paper_loss": {"loss.lambda_pixel": 0.0, "loss.lambda_rec": 0.02},   # the paper's perceptual weight
    "with_texture": {"loss.lambda_texture": 1e8, "loss.perceptual_layers": ["relu1_2", "relu2_2"],
                     "loss.perceptual_weights": [1.0, 1.0]},             # + Gram texture term
    "ema_0999": {"ema": 0.999},                                          # the paper's EMA decay
    "paper_optim": {"model.equalized_lr": True, "optim.lr_ge": 1e-3, "optim.lr_d": 1e-3},  # equalized convs, lr 1e-3
    "paper_mining": {"stage1.mining_features": "gram", "stage1.negatives": "far"},  # Gram of B, furthest negatives
}


def _variants(approaches: Sequence[str], ablations: Sequence[str]) -> List[tuple]:
    out = [(a, a, {}) for a in approaches]
    for name in ablations:
        if name not in ABLATIONS:
            raise ValueError(f"ablations: unknown {name!r}; valid: {', '.join(ABLATIONS)}")
        out.append((f"ours_v3-{name}", "ours_v3", ABLATIONS[name]))
    return out


def _time_per_kimg(run_dir: Path) -> Optional[float]:
    """Seconds per kimg of stages 2 + 3 (from the run's metrics.json)."""
    try:
        st = json.loads((run_dir / "metrics.json").read_text())["stages"]
        wall = sum(float(st[k]["wall_s"]) for k in ("2", "3") if k in st)
        kimg = sum(float(st[k]["kimg"]) for k in ("2", "3") if k in st)
        return wall / kimg if kimg else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def table4(report: Dict[str, object]) -> str:
    """The paper's Table 4 at this scale, from the oracle metrics of every approach and ablation."""
    cols = ["approach", "palette", "gradient", "texture", "content IoU", "PSNR", "LPIPS", "diversity (mapper)",
            "bad samples mapper", "bad samples N(mu, sigma)", "s / kimg"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    base = None
    for name, entry in report["approaches"].items():
        o = entry["final"].get("oracle")
        if not o:
            continue
        t, r, smp = o["transfer"]["model"], o["reconstruction"]["model"], o.get("sampling", {})
        base = o
        spk = entry.get("s_per_kimg")
        lines.append("| " + " | ".join([
            name, f"{t['palette']:.1%}", f"{t['gradient']:.1%}", f"{t['texture']:.1%}", f"{t['iou']:.3f}",
            f"{r['psnr']:.2f}", f"{r.get('lpips', float('nan')):.4f}",
            f"{smp.get('mapper', {}).get('lpips_diversity', float('nan')):.4f}",
            f"{smp.get('mapper', {}).get('bad_share', float('nan')):.0%}",
            f"{smp.get('gaussian', {}).get('bad_share', float('nan')):.0%}",
            "-" if spk is None else f"{spk:.1f}"]) + " |")
    if base is not None:
        for label, key in (("flat mean colour (baseline)", "flat_mean_colour"), ("real images (ceiling)", "ceiling_real")):
            t, r = base["transfer"][key], base["reconstruction"][key]
            smp = base.get("sampling", {}).get(key, {})
            lines.append("| " + " | ".join([
                label, f"{t['palette']:.1%}", f"{t['gradient']:.1%}", f"{t['texture']:.1%}", f"{t['iou']:.3f}",
                f"{r['psnr']:.2f}", f"{r.get('lpips', float('nan')):.4f}",
                f"{smp.get('lpips_diversity', float('nan')):.4f}", f"{smp.get('bad_share', float('nan')):.0%}",
                "", ""]) + " |")
    return "\n".join(lines)


def run_protocol(out: str | Path, approaches: Sequence[str] = ("ours_v3", "bicycle_v1"), *, device: str = "cpu",
                 eval_cfg: Optional[EvalConfig] = None, pipeline_overrides: Optional[dict] = None,
                 n_train: Optional[int] = None, n_val: Optional[int] = None, resolution: Optional[int] = None,
                 seed: int = 0, ablations: Sequence[str] = ()) -> Dict[str, object]:
    """Train and evaluate every approach (and each ablation of Ours v3 named in ``ablations``,
    see :data:`ABLATIONS`); return (and write) the protocol report.  Sizes default to the CPU
    run preset's."""
    from fastep.data import make_builtin_dataset
    from fastep.zoo.step.pipeline import run_pipeline
    from fastep.zoo.step.run_config import PRESETS, resolve_run_config

    cpu = PRESETS["cpu"]
    n_train = n_train or cpu["n_train"]
    n_val = n_val or cpu["n_val"]
    resolution = resolution or cpu["model"]["resolution"]
    out = Path(out)
    cfg = eval_cfg or EvalConfig(n_inputs=min(100, n_val), lpips_weights="random")
    data_root = make_builtin_dataset(out / "data", n_train=n_train, n_val=n_val, resolution=resolution, seed=seed)
    dev = torch.device(device)
    lpips = make_lpips(cfg.lpips_net, cfg.lpips_weights, dev)
    report: Dict[str, object] = {"data": str(data_root), "eval_config": dataclasses.asdict(cfg), "approaches": {}}
    rows, names = [], []
    for name, approach, variant in _variants(approaches, ablations):
        run_dir = out / name
        opts = resolve_run_config(None, {"out": str(run_dir), "data": str(data_root), "approach": approach,
                                         "device": device, "model.resolution": resolution, "n_train": n_train,
                                         "n_val": n_val, "seed": seed, "keep": 1000, "resume": True,
                                         **(pipeline_overrides or {}), **variant})
        if not (run_dir / "final.pt").is_file():
            run_pipeline(opts)
        entry: Dict[str, object] = {"final": evaluate_checkpoint(run_dir / "final.pt", data_root, cfg, dev)}
        entry["s_per_kimg"] = _time_per_kimg(run_dir)
        rows.append(entry["final"])
        names.append(f"{name} (final)")
        if (run_dir / "stage1" / "final.pt").is_file() and not variant:
            entry["after_stage1"] = evaluate_checkpoint(run_dir / "stage1" / "final.pt", data_root, cfg, dev)
            rows.append(entry["after_stage1"])
            names.append(f"{name} (E after stage 1)")
        curve = _lpips_curve(run_dir, data_root, cfg, dev, lpips)
        entry["lpips_curve"] = curve
        if curve["points"]:
            figures.curve_plot(curve["points"], out / name / "figures" / "val_lpips.png",
                               boundaries=curve["boundaries"], title=f"{name}: validation LPIPS across training")
            figures.curve_plot(curve["psnr_points"], out / name / "figures" / "val_psnr.png",
                               boundaries=curve["boundaries"], ylabel="validation PSNR (dB)",
                               title=f"{name}: validation PSNR across training")
        entry["figures"] = _figures(run_dir, data_root, dev, run_dir / "figures")
        report["approaches"][name] = entry
    table = markdown_report(rows, names)
    report["table"] = table
    report["table4"] = table4(report)
    table = f"{table}\n\n## Table 4 at this scale (style oracle)\n\n{report['table4']}"
    (out / "protocol.json").write_text(json.dumps(report, indent=2, default=str))
    note = ("LPIPS uses a seeded random AlexNet backbone (no ImageNet weights offline); compare LPIPS "
            "values only within this table.\n\n" if cfg.lpips_weights == "random" else "")
    (out / "protocol.md").write_text(f"# fastep evaluation protocol\n\n{note}{table}\n")
    return report


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastep.eval.protocol", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/protocol")
    p.add_argument("--approaches", nargs="+", default=list(APPROACHES),
                   help="approaches of the paper's Table 4 (default: all six)")
    p.add_argument("--ablations", nargs="*", default=list(ABLATIONS),
                   help=f"Ours v3 with one CPU-preset deviation undone: {', '.join(ABLATIONS)} (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-train", type=int, default=None, help="default: the cpu preset's")
    p.add_argument("--n-val", type=int, default=None, help="default: the cpu preset's")
    p.add_argument("--resolution", type=int, default=None, help="default: the cpu preset's")
    p.add_argument("--lpips-weights", default="random")
    # a quarter of the main job's lengths: ten runs (six approaches, four ablations) in ~30 min on 2 cores
    p.add_argument("--stage2-kimg", type=float, default=1.0, help="per run (default 1; the main job: 4)")
    p.add_argument("--stage3-kimg", type=float, default=5.0, help="per run (default 5; the main job: 20)")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in (("stage2_kimg", args.stage2_kimg), ("stage3_kimg", args.stage3_kimg)) if v}
    cfg = EvalConfig(n_inputs=min(100, args.n_val or 100), lpips_weights=args.lpips_weights)
    report = run_protocol(args.out, args.approaches, device=args.device, eval_cfg=cfg, pipeline_overrides=overrides,
                          n_train=args.n_train, n_val=args.n_val, resolution=args.resolution,
                          ablations=args.ablations)
    print(report["table"])
    print(f"wrote {Path(args.out) / 'protocol.json'} and protocol.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
