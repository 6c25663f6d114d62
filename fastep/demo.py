"""``fastep demo``: an end-to-end style-distance check on generated images (the main job until
the trainer is used).

It draws a few dozen small images in known "styles" (a colour palette x a texture family, each
image with its own random layout, frequency, orientation and palette jitter; deterministic from
``--seed``), computes StEP's VGG16 style Gram vectors (:func:`fastep.style_features`), the
pairwise style-distance matrix (:func:`fastep.ops.pairwise_style_distance`), and reports for
every image whether its nearest neighbour under the style distance has the same style, i.e.
the retrieval accuracy against chance.  By default VGG16 has seeded random weights (no download
is possible here); ``--weights imagenet`` uses torchvision's ImageNet weights when present
(see ``fastep.nets.weights``).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["PALETTES", "TEXTURES", "style_names", "make_style_images", "run_demo", "DemoResult",
           "add_arguments", "run"]

# Palettes: three RGB anchors in [0, 1]; a texture's scalar field t in [0, 1] is mapped through
# them piecewise-linearly.
PALETTES: Dict[str, Tuple[Tuple[float, float, float], ...]] = {
    "sunset": ((0.35, 0.02, 0.10), (0.95, 0.35, 0.05), (1.00, 0.90, 0.35)),
    "ocean": ((0.00, 0.08, 0.25), (0.05, 0.45, 0.65), (0.70, 0.95, 0.95)),
    "forest": ((0.08, 0.15, 0.03), (0.30, 0.50, 0.10), (0.80, 0.75, 0.45)),
    "neon": ((0.05, 0.00, 0.10), (0.95, 0.10, 0.85), (0.20, 1.00, 0.90)),
    "mono": ((0.05, 0.05, 0.05), (0.50, 0.50, 0.50), (0.97, 0.97, 0.97)),
}
TEXTURES = ("stripes", "dots", "clouds", "checker")


def style_names(n_palettes: int = 3, n_textures: int = 4) -> List[str]:
    """The styles of the demo: the first palettes x the first textures, ``"palette/texture"``."""
    if not 1 <= n_palettes <= len(PALETTES):
        raise ValueError(f"n_palettes must be in 1..{len(PALETTES)}, got {n_palettes}")
    if not 1 <= n_textures <= len(TEXTURES):
        raise ValueError(f"n_textures must be in 1..{len(TEXTURES)}, got {n_textures}")
    return [f"{p}/{t}" for p in list(PALETTES)[:n_palettes] for t in TEXTURES[:n_textures]]


def _texture(kind: str, size: int, g: torch.Generator) -> torch.Tensor:
    """A scalar field (size, size) in [0, 1] of texture family ``kind`` with random parameters."""
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g).item()  # noqa: E731
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    theta = u(0, math.pi)
    if kind == "stripes":
        period = u(7.0, 14.0)
        s = torch.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + u(0, 2 * math.pi))
        return (0.5 + 0.5 * torch.tanh(3.0 * s)).clamp(0, 1)
    if kind == "checker":
        cell = u(5.0, 10.0)
        xr = xx * math.cos(theta) - yy * math.sin(theta)
        yr = xx * math.sin(theta) + yy * math.cos(theta)
        return (torch.floor(xr / cell + u(0, 1)) + torch.floor(yr / cell + u(0, 1))).remainder(2.0)
    if kind == "dots":
        n = max(4, int(u(0.010, 0.018) * size * size / 4))
        cx, cy = (torch.rand((2, n, 1, 1), generator=g) * size).unbind(0)
        r = 2.0 + 3.0 * torch.rand((n, 1, 1), generator=g)
        val = 0.6 + 0.4 * torch.rand((n,), generator=g)
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r  # (n, H, W); later dots paint over earlier
        last = n - 1 - inside.flip(0).int().argmax(dim=0)
        return torch.where(inside.any(dim=0), val[last], torch.tensor(0.1))
    if kind == "clouds":
        cells = max(2, size // 16)
        low = torch.rand((1, 1, cells + 1, cells + 1), generator=g)
        t = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=True)[0, 0]
        t = (t - t.min()) / (t.max() - t.min()).clamp_min(1e-6)
        return t
    raise ValueError(f"texture must be one of {TEXTURES}, got {kind!r}")


def _matched_texture(kind: str, size: int, g: torch.Generator) -> torch.Tensor:
    """A binary texture with exactly half of the pixels set: every image then has the same
    two-colour histogram (up to its palette jitter), so only spatial structure tells styles apart."""
    if kind == "dots":  # many overlapping disks: threshold the distance to the nearest centre
        yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
        n = max(4, size * size // 120)
        c = torch.rand((2, n, 1, 1), generator=g) * size
        field = -((xx - c[0]) ** 2 + (yy - c[1]) ** 2).amin(0)
    else:
        field = _texture(kind, size, g)
    field = field + 1e-4 * torch.rand(field.shape, generator=g)  # break ties at random
    order = field.flatten().argsort()
    t = torch.zeros(size * size)
    t[order[size * size // 2:]] = 1.0
    return t.view(size, size)


def _colorize(t: torch.Tensor, palette, g: torch.Generator, jitter: float) -> torch.Tensor:
    anchors = torch.tensor(palette, dtype=torch.float32)  # (3, 3): anchor x RGB
    anchors = (anchors + jitter * (torch.rand(anchors.shape, generator=g) - 0.5)).clamp(0, 1)
    pos = t.clamp(0, 1) * (anchors.shape[0] - 1)
    lo = pos.floor().long().clamp(max=anchors.shape[0] - 2)
    frac = (pos - lo).unsqueeze(-1)
    rgb = anchors[lo] * (1 - frac) + anchors[lo + 1] * frac  # (H, W, 3)
    return rgb.permute(2, 0, 1)


def make_style_images(per_style: int = 4, size: int = 64, *, n_palettes: int = 3, n_textures: int = 4,
                      seed: int = 0, jitter: float = 0.12, noise: float = 0.03, match_histograms: bool = True
                      ) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """Generated images with known styles, deterministic from ``seed``.

    Returns ``(images, labels, names)``: ``images`` float32 ``(S * per_style, 3, size, size)`` in
    [-1, 1], ``labels`` int64 style index per image, ``names`` the style names
    (``"palette/texture"``).  Images of one style share a palette (each image jitters its
    anchors by ``jitter``) and a texture family (each image draws its own frequency, orientation,
    phase and layout); ``noise`` is per-pixel Gaussian noise.

    ``match_histograms=True`` (default) makes every texture binary with exactly half of the
    pixels in each of two palette colours, so that colour statistics (mean, colour covariance)
    carry no texture information and a style distance has to see spatial structure to find
    same-texture images.  ``False`` gives the free-form textures (smooth gradients, sparse dots),
    which colour statistics alone already separate well.
    """
    if isinstance(per_style, bool) or not isinstance(per_style, int) or per_style < 2:
        raise ValueError(f"per_style must be an int >= 2 (nearest neighbours need a same-style partner), got {per_style!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    names = style_names(n_palettes, n_textures)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny ops: threading only adds overhead (10x on a busy CPU)
    try:
        return _make_style_images(names, per_style, size, seed, jitter, noise, match_histograms)
    finally:
        torch.set_num_threads(threads)


def _make_style_images(names, per_style, size, seed, jitter, noise, match_histograms):
    g = torch.Generator().manual_seed(int(seed))
    images, labels = [], []
    for s, name in enumerate(names):
        pal, tex = name.split("/")
        for _ in range(per_style):
            t = _matched_texture(tex, size, g) if match_histograms else _texture(tex, size, g)
            rgb = _colorize(t, PALETTES[pal], g, jitter)
            rgb = rgb + noise * torch.randn(rgb.shape, generator=g)
            images.append(rgb.clamp(0, 1) * 2 - 1)
            labels.append(s)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), names


@dataclass
class DemoResult:
    """Everything the demo measured (``run_demo``'s return value; ``--json`` writes it)."""
    n_images: int
    n_styles: int
    size: int
    weights: str
    layers: str
    arch: str
    device: str
    dim: int
    accuracy: float  # nearest neighbour has the same style
    chance: float  # expected accuracy of a random neighbour
    precision_at_k: float  # k = per_style - 1: fraction of same-style among the k nearest
    intra_inter_ratio: float  # mean same-style distance / mean different-style distance
    baselines: Dict[str, float]  # nearest-neighbour accuracy of plain colour statistics
    match_histograms: bool
    per_style_accuracy: Dict[str, float]
    nearest: List[int]
    labels: List[int]
    style_names: List[str]
    timings: Dict[str, float]
    backends: Dict[str, str]
    distances: Optional[List[List[float]]] = field(default=None, repr=False)


def _backends(device: torch.device) -> Dict[str, str]:
    from . import _ext

    out = {}
    for op in ("gram", "pairwise_style_distance"):
        try:
            out[op] = _ext.backend_for(op, device)
        except KeyError:
            out[op] = "unregistered"
    return out


def _tiny_net(device: torch.device):
    from .nets import VGGFeatures

    return VGGFeatures("vgg16", ["relu1_1"], weights="random").to(device)


def _nn_accuracy(features: torch.Tensor, labels: torch.Tensor) -> float:
    d = torch.cdist(features.double(), features.double())
    d.fill_diagonal_(float("inf"))
    return (labels[d.argmin(1)] == labels).double().mean().item()


def colour_baselines(images: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Nearest-neighbour style accuracy of plain pixel colour statistics (what a style distance
    should beat): the mean colour, and the mean colour plus the 3 x 3 colour Gram matrix."""
    x = images.detach().double().cpu().flatten(2)
    mean = x.mean(2)
    cov = (x @ x.transpose(1, 2) / x.shape[2]).flatten(1)
    return {"mean colour": _nn_accuracy(mean, labels),
            "colour mean + 3x3 Gram": _nn_accuracy(torch.cat([mean, cov], 1), labels)}


def run_demo(*, per_style: int = 4, size: int = 64, n_palettes: int = 3, n_textures: int = 4, seed: int = 0,
             match_histograms: bool = True,
             weights: str = "random", layers: str = "vgg16", device: Optional[str] = None,
             batch_size: Optional[int] = 16, weight_seed: int = 0, autocast_dtype: Optional[torch.dtype] = None,
             keep_distances: bool = False) -> DemoResult:
    """Generate the images, compute Gram vectors and all pairwise style distances, score retrieval."""
    from .features import get_style_net, style_features
    from .ops import pairwise_style_distance

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)  # noqa: E731
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    images, labels, names = make_style_images(per_style, size, n_palettes=n_palettes, n_textures=n_textures,
                                              seed=seed, match_histograms=match_histograms)
    images = images.to(dev)
    timings["generate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    net = get_style_net(layers, weights=weights, seed=weight_seed, device=dev)
    sync()
    timings["load_net_s"] = time.perf_counter() - t0

    # The first call of a torch.library custom op imports torch._dynamo (seconds, once per
    # process): timed separately so that "features" is mostly the network's compute (it still
    # includes the first-call warm-up of the convolution backend).
    t0 = time.perf_counter()
    pairwise_style_distance(style_features(images[:1, :, :16, :16], net=_tiny_net(dev), output="vectors"))
    sync()
    timings["op_init_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vectors = style_features(images, net=net, output="vectors", batch_size=batch_size,
                             autocast_dtype=autocast_dtype)
    sync()
    timings["features_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dist = pairwise_style_distance(vectors)
    sync()
    timings["distances_s"] = time.perf_counter() - t0

    d = dist.double().cpu()
    n = d.shape[0]
    lab = labels
    d_off = d + torch.diag(torch.full((n,), float("inf"), dtype=d.dtype))  # exclude self
    nearest = d_off.argmin(dim=1)
    hit = (lab[nearest] == lab)
    k = per_style - 1
    knn = d_off.topk(k, dim=1, largest=False).indices
    prec = (lab[knn] == lab[:, None]).double().mean().item()
    same = (lab[:, None] == lab[None, :]) & ~torch.eye(n, dtype=torch.bool)
    diff = lab[:, None] != lab[None, :]
    ratio = (d[same].mean() / d[diff].mean().clamp_min(1e-30)).item()
    per_style_acc = {name: hit[lab == s].double().mean().item() for s, name in enumerate(names)}
    return DemoResult(
        n_images=n, n_styles=len(names), size=size, weights=str(weights), layers=str(layers), arch=net.arch,
        device=str(dev),
        dim=int(vectors.shape[1]), accuracy=hit.double().mean().item(), chance=(per_style - 1) / (n - 1),
        precision_at_k=prec, intra_inter_ratio=ratio, baselines=colour_baselines(images, lab),
        match_histograms=bool(match_histograms), per_style_accuracy=per_style_acc,
        nearest=nearest.tolist(), labels=lab.tolist(), style_names=names, timings=timings,
        backends=_backends(dev), distances=d.tolist() if keep_distances else None)


def format_report(r: DemoResult, *, per_image: bool = True) -> str:
    """The demo's printed report: per-image nearest neighbours, per-style and overall accuracy."""
    lines = [f"fastep demo: {r.n_images} generated {r.size}x{r.size} images in {r.n_styles} styles "
             f"(palette/texture{', two-colour textures with matched colour histograms' if r.match_histograms else ''}), "
             f"{r.arch.upper()} style features ({r.layers}, weights={r.weights}), D={r.dim:,}, device={r.device}"]
    if per_image:
        lines.append("")
        lines.append(f"{'image':>5}  {'style':<16} {'nearest':>7}  {'its style':<16} {'distance':>10}  same?")
        for i, (s, j) in enumerate(zip(r.labels, r.nearest)):
            dist = f"{r.distances[i][j]:10.3e}" if r.distances is not None else " " * 10
            ok = "yes" if r.labels[j] == s else "NO"
            lines.append(f"{i:>5}  {r.style_names[s]:<16} {j:>7}  {r.style_names[r.labels[j]]:<16} {dist}  {ok}")
    lines.append("")
    lines.append(f"{'style':<16} nearest-neighbour accuracy")
    for name, acc in r.per_style_accuracy.items():
        lines.append(f"{name:<16} {acc:6.0%}")
    lines.append("")
    lines.append(f"retrieval accuracy (nearest neighbour has the same style): {r.accuracy:.1%} "
                 f"(chance {r.chance:.1%}, {r.accuracy / r.chance:.1f}x)")
    k = max(1, r.n_images // r.n_styles - 1)
    lines.append(f"precision@{k}: {r.precision_at_k:.1%}; mean same-style / different-style distance: "
                 f"{r.intra_inter_ratio:.3f}")
    lines.append("colour-statistics baselines (nearest neighbour on pixel colours, no VGG): "
                 + ", ".join(f"{name} {acc:.1%}" for name, acc in r.baselines.items()))
    t = r.timings
    lines.append("time: " + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in t.items())
                 + f" (total {sum(t.values()):.2f} s)")
    lines.append("backends: " + ", ".join(f"{k}={v}" for k, v in r.backends.items()))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--per-style", type=int, default=4, help="images per style (default 4)")
    parser.add_argument("--palettes", type=int, default=3, help=f"number of palettes (1..{len(PALETTES)}, default 3)")
    parser.add_argument("--textures", type=int, default=4, help=f"number of textures (1..{len(TEXTURES)}, default 4)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")
    parser.add_argument("--match-histograms", action=argparse.BooleanOptionalAction, default=True,
                        help="two-colour textures with identical colour histograms, so that only spatial "
                             "structure separates textures (default on; --no-match-histograms for free-form "
                             "textures that colour statistics already separate)")
    parser.add_argument("--weights", default="random",
                        help="VGG16 weights: random (default, seeded), imagenet (offline, torch hub cache or "
                             "$FASTEP_WEIGHTS_DIR) or a path to a torchvision-format state dict")
    parser.add_argument("--weight-seed", type=int, default=0, help="seed of --weights random (default 0)")
    parser.add_argument("--layers", default="vgg16", help="layer preset (default vgg16: relu1_2..relu5_2)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per VGG pass (default 16)")
    parser.add_argument("--bf16", action="store_true", help="run VGG under bfloat16 autocast")
    parser.add_argument("--summary", action="store_true", help="omit the per-image table")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        r = _run_from_args(args)
    except (FileNotFoundError, ValueError) as err:  # missing ImageNet weights, bad options
        print(f"fastep demo: {err}", file=sys.stderr)
        return 2
    print(format_report(r, per_image=not args.summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(r), f, indent=1)
    return 0


def _run_from_args(args: argparse.Namespace) -> DemoResult:
    return run_demo(per_style=args.per_style, size=args.size, n_palettes=args.palettes, n_textures=args.textures,
                    seed=args.seed, match_histograms=args.match_histograms, weights=args.weights, layers=args.layers, device=args.device,
                    batch_size=args.batch_size, weight_seed=args.weight_seed,
                    autocast_dtype=torch.bfloat16 if args.bf16 else None, keep_distances=True)
