"""Evaluate a trained StEP model the way the paper does (section 4), plus style capture.

:func:`evaluate_checkpoint` loads a checkpoint written by ``fastep train`` and computes

* **reconstruction** on the validation set: PSNR and LPIPS of G(A, E(B)) against B;
* **diversity**: mean pairwise LPIPS of ``n_styles`` outputs per input over ``n_inputs`` inputs,
  the styles taken from random validation images (style transfer), the mapper, or N(mu, sigma);
* **style capture** (built-in data set only, where the true style factors are known): linear
  probes from the codes E(B) to each style factor, and nearest-neighbour style retrieval, for the
  trained encoder and for a randomly initialised encoder of the same architecture;
* optionally **Inception score / FID** when the user supplies Inception weights.

LPIPS needs ImageNet AlexNet (or VGG) weights, which fastep never downloads; ``lpips_weights=
"random"`` runs the protocol offline with a seeded random backbone (the figures are then only
comparable with each other, not with published LPIPS values, and the report says so).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch

from . import metrics as M
from .oracle import OracleConfig

Tensor = torch.Tensor


@dataclass
class EvalConfig:
    """What :func:`evaluate_checkpoint` measures."""

    n_inputs: int = 100            # inputs for diversity (paper: 100)
    n_styles: int = 16             # outputs per input for diversity (paper: 16)
    max_recon: Optional[int] = None  # cap on validation images for reconstruction (None: all)
    style_source: str = "images"   # "images" | "mapper" | "gaussian"
    batch_size: int = 32
    lpips_net: str = "alex"
    lpips_weights: str = "imagenet"  # "imagenet" | "random" | path to a torchvision state dict
    inception_weights: Optional[str] = None
    style_capture: bool = True
    oracle: bool = True            # built-in data: style-transfer / content / realism by the style oracle
    oracle_max_images: Optional[int] = None  # cap on validation images for the oracle metrics
    oracle_config: OracleConfig = field(default_factory=OracleConfig)  # how the oracle is trained
    ema: bool = True
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.oracle_config, dict):
            self.oracle_config = OracleConfig(**self.oracle_config)
        if self.style_source not in ("images", "mapper", "gaussian"):
            raise ValueError(f"style_source must be 'images', 'mapper' or 'gaussian', got {self.style_source!r}")
        for name in ("n_inputs", "n_styles", "batch_size"):
            if int(getattr(self, name)) < (2 if name == "n_styles" else 1):
                raise ValueError(f"{name} must be positive (n_styles >= 2), got {getattr(self, name)}")


def make_lpips(net: str, weights: str, device: torch.device) -> Callable[[Tensor, Tensor], Tensor]:
    """An LPIPS distance ``f(x, y) -> (N,)`` from fastep.losses (the one place eval builds it)."""
    from fastep.losses import LPIPS

    model = LPIPS(net=net, backbone_weights=weights).to(device).eval()

    @torch.no_grad()
    def distance(x: Tensor, y: Tensor) -> Tensor:
        return model(x, y).reshape(-1)

    return distance


def _val_tensors(data_root: Path, resolution: int, limit: Optional[int]) -> Dict[str, Tensor]:
    from fastep.data import PairedImageDataset

    ds = PairedImageDataset(data_root, split="val", resolution=resolution, crop=False, flip=False)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise ValueError(f"data: {data_root} has no validation images (val/ split)")
    items = [ds[i] for i in range(n)]
    return {"A": torch.stack([it["A"] for it in items]), "B": torch.stack([it["B"] for it in items])}


@torch.no_grad()
def _batched(fn: Callable[..., Tensor], *tensors: Tensor, batch_size: int, device) -> Tensor:
    outs = []
    for i in range(0, len(tensors[0]), batch_size):
        outs.append(fn(*(t[i:i + batch_size].to(device) for t in tensors)).float().cpu())
    return torch.cat(outs)


def reconstruction(G, E, A: Tensor, B: Tensor, lpips: Callable, *, batch_size: int, device) -> Dict[str, float]:
    """PSNR and LPIPS of G(A, E(B)) against B."""
    fake = _batched(lambda a, b: G(a, E(b)), A, B, batch_size=batch_size, device=device)
    d = _batched(lpips, fake, B, batch_size=batch_size, device=device)
    return {"psnr": float(M.psnr(fake, B)), "lpips": float(d.double().mean()), "n": len(B)}


def style_codes(source: str, n: int, *, E=None, style_images: Optional[Tensor] = None, mapper=None,
                z_stats: Optional[Dict[str, Tensor]] = None, z_dim: int = 8,
                generator: Optional[torch.Generator] = None, device="cpu") -> Tensor:
    """``n`` style codes from random images (E of them), the mapper, or N(mu, sigma)."""
    if source == "images":
        if style_images is None or E is None:
            raise ValueError("style_source='images' needs E and style_images")
        if n <= len(style_images):
            idx = torch.randperm(len(style_images), generator=generator)[:n]
        else:  # fewer validation images than codes asked for: draw with replacement
            idx = torch.randint(0, len(style_images), (n,), generator=generator)
        return E(style_images[idx].to(device))
    noise = torch.randn(n, z_dim, generator=generator).to(device)
    if source == "mapper":
        if mapper is None:
            raise ValueError("style_source='mapper' but the checkpoint has no trained mapper")
        return mapper(noise)
    if z_stats is None:
        raise ValueError("style_source='gaussian' but the checkpoint has no z_stats (mu, sigma)")
    return z_stats["mu"].to(device) + z_stats["sigma"].to(device) * noise


@torch.no_grad()
def diversity(G, A: Tensor, codes_fn: Callable[[int], Tensor], lpips: Callable, *, n_inputs: int,
              n_styles: int, device, progress: bool = False) -> Dict[str, float]:
    """Mean over inputs of the mean pairwise LPIPS of the ``n_styles`` outputs of each input."""
    from tqdm.auto import tqdm

    scores = []
    for a in tqdm(A[:n_inputs], desc="eval: diversity", unit="input", disable=not progress, leave=False):
        z = codes_fn(n_styles)
        out = G(a.unsqueeze(0).to(device).expand(n_styles, -1, -1, -1), z)
        scores.append(float(M.pairwise_mean_distance(out, lpips)))
    return {"lpips_diversity": sum(scores) / len(scores), "n_inputs": len(scores), "n_styles": n_styles}


@torch.no_grad()
def encode_split(E, styles, split: str, resolution: int, *, batch_size: int, device) -> Tensor:
    """Codes E(B) of every image of a built-in split, in record order."""
    from fastep.data import PairedImageDataset

    ds = PairedImageDataset(styles.root, split=split, resolution=resolution, crop=False, flip=False)
    if len(ds) != len(styles.files(split)):
        raise ValueError(f"{split}: {len(ds)} readable images but {len(styles.files(split))} factor records")
    B = torch.stack([ds[i]["B"] for i in range(len(ds))])
    return _batched(E, B, batch_size=batch_size, device=device)


def style_capture(E, styles, resolution: int, *, batch_size: int, device) -> Dict[str, float]:
    """Linear-probe accuracy per categorical style factor, hue R^2 and 1-NN style retrieval
    (train codes fit the probes, validation codes test them)."""
    z_tr = encode_split(E, styles, "train", resolution, batch_size=batch_size, device=device)
    z_va = encode_split(E, styles, "val", resolution, batch_size=batch_size, device=device)
    out: Dict[str, float] = {}
    probes = []
    for name in ("palette", "gradient", "texture"):
        y_tr = torch.as_tensor(styles.factor("train", name))
        y_va = torch.as_tensor(styles.factor("val", name))
        acc = M.linear_probe_accuracy(z_tr, y_tr, z_va, y_va)
        out[f"probe_{name}"] = acc
        out[f"chance_{name}"] = M.chance_accuracy(y_va)
        probes.append(acc)
    out["probe_mean"] = sum(probes) / len(probes)
    out["hue_r2"] = M.linear_probe_r2(z_tr, torch.as_tensor(styles.hue_features("train")), z_va,
                                      torch.as_tensor(styles.hue_features("val")))
    cls = torch.as_tensor(styles.style_class("val"))
    out["nn_retrieval"] = M.nn_retrieval_accuracy(z_va, cls)
    out["nn_retrieval_chance"] = M.chance_accuracy(cls)
    return out


def evaluate_checkpoint(checkpoint: Union[str, Path], data_root: Union[str, Path], cfg: EvalConfig = EvalConfig(),
                        device: Union[str, torch.device] = "cpu", *, progress: bool = False) -> Dict[str, object]:
    """All metrics of one checkpoint on one data set (see the module docstring); ``progress``
    shows a bar for the slow parts."""
    from fastep import zoo
    from fastep.data import BuiltinStyles

    device = torch.device(device)
    data_root = Path(data_root)
    model = zoo.load(checkpoint, device, ema=cfg.ema)
    G, E, model_cfg, extras = model.G, model.E, model.model_cfg, model.extras
    res = int(model_cfg.resolution)
    report: Dict[str, object] = {"checkpoint": str(checkpoint), "data": str(data_root),
                                 "stage": extras.get("stage"), "kimg": extras.get("kimg"),
                                 "config": asdict(cfg), "resolution": res}
    if cfg.lpips_weights == "random":
        report["note"] = ("LPIPS computed with a seeded RANDOM backbone (no ImageNet weights offline): "
                          "compare these LPIPS values only with each other")
    gen = torch.Generator().manual_seed(cfg.seed)
    if extras.get("stage") != "1":
        lpips = make_lpips(cfg.lpips_net, cfg.lpips_weights, device)
        val = _val_tensors(data_root, res, cfg.max_recon)
        report["reconstruction"] = reconstruction(G, E, val["A"], val["B"], lpips, batch_size=cfg.batch_size,
                                                  device=device)
        codes_fn = lambda n: style_codes(cfg.style_source, n, E=E, style_images=val["B"],  # noqa: E731
                                         mapper=extras.get("mapper"), z_stats=extras.get("z_stats"),
                                         z_dim=model_cfg.z_dim, generator=gen, device=device)
        report["diversity"] = diversity(G, val["A"], codes_fn, lpips, n_inputs=cfg.n_inputs,
                                        n_styles=cfg.n_styles, device=device, progress=progress)
        report["diversity"]["style_source"] = cfg.style_source
        if cfg.inception_weights:
            net = M.load_inception(cfg.inception_weights, device)
            fake = _batched(lambda a, b: G(a, E(b)), val["A"], val["B"], batch_size=cfg.batch_size, device=device)
            f_real, _ = M.inception_outputs(net, val["B"].to(device))
            f_fake, logits = M.inception_outputs(net, fake.to(device))
            report["inception_score"] = M.inception_score(logits.cpu(), splits=min(10, len(fake)))
            report["fid"] = M.frechet_distance(f_real.cpu(), f_fake.cpu())
    if cfg.oracle and (data_root / "factors.json").exists() and extras.get("stage") != "1":
        report["oracle"] = oracle_metrics(G, E, model_cfg, extras, data_root, cfg, device,
                                          lpips=make_lpips(cfg.lpips_net, cfg.lpips_weights, device),
                                          progress=progress)
    if cfg.style_capture and (data_root / "factors.json").exists():
        styles = BuiltinStyles.load(data_root)
        trained = style_capture(E, styles, res, batch_size=cfg.batch_size, device=device)
        torch.manual_seed(cfg.seed)
        E_rand = zoo.get(model.system).build(model_cfg)["E"].to(device).eval()
        rand = style_capture(E_rand, styles, res, batch_size=cfg.batch_size, device=device)
        report["style_capture"] = {"trained": trained, "random_init": rand,
                                   "probe_mean_gain": trained["probe_mean"] - rand["probe_mean"],
                                   "nn_retrieval_gain": trained["nn_retrieval"] - rand["nn_retrieval"]}
    return report


def oracle_metrics(G, E, model_cfg, extras, data_root: Path, cfg: EvalConfig, device, lpips=None,
                   progress: bool = True) -> Dict[str, object]:
    """:func:`fastep.eval.oracle.translation_report` of a loaded model: the sampled codes are the
    checkpoint's mapper and N(mu, sigma) where it has them, else codes of random validation images."""
    from .oracle import checkpoint_code_samplers, load_or_train_oracle, translation_report

    oracle = load_or_train_oracle(data_root, cfg.oracle_config, device="cpu", progress=progress,
                                  log=lambda m: print(m, file=sys.stderr, flush=True))
    codes = checkpoint_code_samplers(extras, model_cfg.z_dim, device)
    if not codes:
        val = _val_tensors(data_root, int(model_cfg.resolution), None)
        codes["images"] = lambda k, g: E(val["B"][torch.randint(0, len(val["B"]), (k,), generator=g)].to(device))
    with torch.no_grad():
        return translation_report(G, E, data_root, oracle, sample_codes=codes, lpips=lpips, device=device,
                                  max_images=cfg.oracle_max_images, seed=cfg.seed, batch_size=cfg.batch_size)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    return str(v)


def markdown_report(reports: List[Dict[str, object]], names: Optional[List[str]] = None) -> str:
    """One table, one row per evaluated model."""
    names = names or [Path(str(r["checkpoint"])).parent.name for r in reports]
    cols = ["model", "PSNR", "LPIPS (recon)", "LPIPS diversity", "probe acc (E)", "probe acc (random E)",
            "NN retrieval (E)", "NN retrieval (random E)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in zip(names, reports):
        rec, div, sc = r.get("reconstruction", {}), r.get("diversity", {}), r.get("style_capture", {})
        row = [name, rec.get("psnr", "-"), rec.get("lpips", "-"), div.get("lpips_diversity", "-"),
               sc.get("trained", {}).get("probe_mean", "-"), sc.get("random_init", {}).get("probe_mean", "-"),
               sc.get("trained", {}).get("nn_retrieval", "-"), sc.get("random_init", {}).get("nn_retrieval", "-")]
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    for name, r in zip(names, reports):
        if "oracle" in r:
            lines += ["", f"Style oracle ({name}):", "", oracle_table(r["oracle"])]
    return "\n".join(lines)


def oracle_table(rep: Dict[str, object]) -> str:
    """The oracle metrics as a markdown table: the model, its trivial baselines and the ceiling."""
    cols = ["", "palette", "gradient", "texture", "hue (30 deg)", "content IoU", "recon PSNR", "recon LPIPS",
            "confidence", "Frechet (oracle)", "diversity"]
    rows = [("model", "model"), ("grey image", "grey"), ("flat mean colour", "flat_mean_colour"),
            ("data-set mean image", "dataset_mean"), ("real (ceiling)", "ceiling_real")]
    t, rec, smp = rep["transfer"], rep["reconstruction"], rep.get("sampling", {})
    samp_model = next((k for k in ("mapper", "gaussian", "images") if k in smp), None)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for label, key in rows:
        tt, rr = t[key], rec[key]
        ss = smp.get(samp_model if key == "model" else key, {})
        vals = [f"{tt['palette']:.1%}", f"{tt['gradient']:.1%}", f"{tt['texture']:.1%}", f"{tt['hue_30deg']:.1%}",
                f"{tt['iou']:.3f}", f"{rr['psnr']:.2f}", _fmt(rr.get("lpips", "-")),
                _fmt(ss.get("confidence", "-")), _fmt(ss.get("frechet", "-")), _fmt(ss.get("lpips_diversity", "-"))]
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    held = rep["oracle_held_out"]
    lines.append("")
    lines.append(f"Transfer: oracle factors of G(A_i, E(B_j)), j != i, against B_j's ({rep['n']} validation pairs); "
                 f"sampling columns: {samp_model} codes. Oracle held-out accuracy: "
                 + ", ".join(f"{k} {v:.1%}" if k != "mask_iou" else f"mask IoU {v:.3f}" for k, v in held.items()))
    return "\n".join(lines)


def write_report(report: Dict[str, object], out: Union[str, Path]) -> Path:
    """Write ``out`` (JSON) and the markdown table next to it (same name, .md)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown_report([report]) + "\n")
    return out
