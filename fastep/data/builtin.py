"""The built-in generated data set: shape outlines (A) -> styled renderings of the same shapes (B).

A one-to-many translation task whose *true style factors are known for every image*, so that
style capture (of the stage-1 encoder, of the finetuned encoder, of the generator) can be
measured against ground truth.  Every image holds 1 to 3 random shapes (ellipse, rectangle,
triangle, hexagon, star) at random positions, sizes and rotations:

* **A** is the outline drawing: black boundary lines on white;
* **B** renders the same regions with a *style* made of four independent factors:

  ===========  ===========  ============================================================
  factor       kind         values
  ===========  ===========  ============================================================
  palette      categorical  6 colour schemes (vivid, pastel, dark, monochrome,
                            complementary, triadic), each defined relative to the hue
  gradient     categorical  4 directions of a brightness ramp (0, 45, 90, 135 degrees)
  texture      categorical  5 textures (flat, stripes, checker, dots, grain)
  hue          circular     base hue in [0, 1) that the palette is built around
  ===========  ===========  ============================================================

The content factors (number and type of shapes, their geometry) are recorded too, so that an
evaluation can check that a style code does *not* encode content.

B is a function of A and the four style factors (format version 2): the texture patterns are
anchored to the image grid (phase 0), the grain texture is one noise field per data-set seed,
and the shapes are drawn largest first, so colour slot 1 always goes to the largest shape.  In
version 1 the texture phase, the grain field and which shape got which palette colour were
random per image and visible in neither A nor the style: no translation model can reconstruct
them, and a pixel loss averages them into flat colour.

Rendering is vectorised over a chunk of images in torch (no per-pixel Python), about 2000
64 x 64 images per second or two on one CPU core.  Everything is drawn from
``numpy.random.default_rng((seed, split, index))``, so image ``i`` of a split is the same for
any data-set size, and the same seed gives byte-identical PNG files.

On disk (pix2pix "AB" layout, readable by :class:`fastep.data.PairedImageDataset`)::

    root/train/00000.png ...   A | B side by side (width 2 * resolution)
    root/val/00000.png ...
    root/factors.json          {"format", "version", "params", "schema", "train": [...], "val": [...]}

Per-file records are in file-name order (which is also the sorted order a loader lists).
:class:`BuiltinStyles` reads ``factors.json`` back as numpy arrays.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "FORMAT",
    "VERSION",
    "PALETTES",
    "GRADIENTS",
    "TEXTURES",
    "SHAPES",
    "STYLE_FACTORS",
    "factor_schema",
    "sample_params",
    "render_batch",
    "make_builtin_dataset",
    "BuiltinStyles",
    "default_builtin_root",
]

FORMAT = "fastep-builtin"
VERSION = 2

#: colour schemes: (background, shape 1, shape 2, shape 3), each (hue offset, saturation, value)
PALETTES: Dict[str, tuple] = {
    "vivid": ((0.50, 0.25, 0.95), (0.00, 0.90, 0.90), (0.08, 0.90, 0.80), (-0.08, 0.85, 0.85)),
    "pastel": ((0.50, 0.10, 1.00), (0.00, 0.35, 1.00), (0.15, 0.35, 0.95), (-0.15, 0.40, 0.95)),
    "dark": ((0.00, 0.60, 0.15), (0.00, 0.80, 0.75), (0.10, 0.70, 0.60), (0.50, 0.70, 0.70)),
    "monochrome": ((0.00, 0.30, 0.85), (0.00, 0.80, 0.30), (0.00, 0.60, 0.50), (0.00, 0.90, 0.20)),
    "complementary": ((0.50, 0.80, 0.70), (0.00, 0.90, 0.95), (0.00, 0.70, 0.80), (0.50, 0.30, 1.00)),
    "triadic": ((0.00, 0.05, 0.50), (0.00, 0.90, 0.90), (1 / 3, 0.90, 0.90), (2 / 3, 0.90, 0.90)),
}
#: brightness-ramp directions in degrees (0 = dark left -> bright right, 90 = top -> bottom)
GRADIENTS: Dict[str, float] = {"horizontal": 0.0, "diagonal": 45.0, "vertical": 90.0, "antidiagonal": 135.0}
TEXTURES = ("flat", "stripes", "checker", "dots", "grain")
SHAPES = ("ellipse", "rectangle", "triangle", "hexagon", "star")
MAX_SHAPES = 3
STYLE_FACTORS = ("palette", "gradient", "texture", "hue")

_SPLITS = {"train": 0, "val": 1}
_GRADIENT_STRENGTH = 0.45
_TEXTURE_STRENGTH = 0.35
_GRAIN_CELLS = 8
_TEXTURE_PERIODS = 4.0  # pattern periods across the image: 8 px at 32 x 32, coarse enough for stride-2 convs


def factor_schema() -> dict:
    """The schema written to ``factors.json``: every factor, its kind and its values."""
    return {
        "style": {
            "palette": {"kind": "categorical", "values": list(PALETTES)},
            "gradient": {"kind": "categorical", "values": list(GRADIENTS),
                         "degrees": list(GRADIENTS.values())},
            "texture": {"kind": "categorical", "values": list(TEXTURES)},
            "hue": {"kind": "circular", "range": [0.0, 1.0]},
        },
        "content": {
            "n_shapes": {"kind": "integer", "range": [1, MAX_SHAPES]},
            "shapes": {"kind": "list", "values": list(SHAPES),
                       "fields": ["type", "cx", "cy", "size", "aspect", "angle"],
                       "note": "cx, cy, size in units of the image side; angle in radians; "
                               "largest first, later shapes are drawn on top"},
            "texture_phase": {"kind": "continuous", "range": [0.0, 1.0],
                              "note": "0 for every image: patterns are anchored to the image grid"},
        },
    }


# --------------------------------------------------------------------------------------------
# parameters


def sample_params(seed: int, split: str, index: int) -> dict:
    """The random parameters (style factors + content) of image ``index`` of ``split``."""
    if split not in _SPLITS:
        raise ValueError(f"split: expected one of {sorted(_SPLITS)}, got {split!r}")
    rng = np.random.default_rng((int(seed), _SPLITS[split], int(index)))
    n_shapes = int(rng.integers(1, MAX_SHAPES + 1))
    shapes = []
    for _ in range(n_shapes):
        shapes.append({
            "type": int(rng.integers(len(SHAPES))),
            "cx": float(rng.uniform(0.25, 0.75)),
            "cy": float(rng.uniform(0.25, 0.75)),
            "size": float(rng.uniform(0.14, 0.30)),
            "aspect": float(rng.uniform(0.55, 1.0)),
            "angle": float(rng.uniform(0.0, 2 * math.pi)),
        })
    # largest first: which palette colour a shape gets is then a function of A (see the module doc)
    shapes.sort(key=lambda sh: -sh["size"])
    params = {
        "palette": int(rng.integers(len(PALETTES))),
        "gradient": int(rng.integers(len(GRADIENTS))),
        "texture": int(rng.integers(len(TEXTURES))),
        "hue": float(rng.uniform(0.0, 1.0)),
        "n_shapes": n_shapes,
        "shapes": shapes,
        # render_batch honours other phases (the oracle's re-phased reconstruction ceiling uses it)
        "texture_phase": 0.0,
    }
    params["_grain"] = _grain_field(seed)
    return params


def _grain_field(seed: int) -> np.ndarray:
    """The grain texture's coarse noise field: one per data-set seed, shared by every image."""
    return np.random.default_rng((int(seed), 1 << 20)).random((_GRAIN_CELLS, _GRAIN_CELLS), dtype=np.float32)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all channels in [0, 1]; hue wraps."""
    h = np.mod(hsv[..., 0], 1.0) * 6.0
    s, v = hsv[..., 1], hsv[..., 2]
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ], -2)  # [..., 6, 3]
    return np.take_along_axis(table, i[..., None, None], axis=-2)[..., 0, :]


def _region_colours(params: Sequence[dict]) -> np.ndarray:
    """[B, 1 + MAX_SHAPES, 3] RGB colours of background and shape slots."""
    schemes = np.asarray(list(PALETTES.values()), dtype=np.float64)  # [P, 4, 3]
    hsv = schemes[[p["palette"] for p in params]].copy()  # [B, 4, 3]
    hsv[..., 0] += np.asarray([p["hue"] for p in params])[:, None]
    return _hsv_to_rgb(hsv).astype(np.float32)


# --------------------------------------------------------------------------------------------
# rendering


def _shape_masks(params: Sequence[dict], res: int) -> torch.Tensor:
    """Region label map [B, res, res] (0 = background, s + 1 = shape slot s, top-most wins)."""
    b = len(params)
    arr = np.zeros((b, MAX_SHAPES, 7), dtype=np.float32)  # valid, type, cx, cy, size, aspect, angle
    for i, p in enumerate(params):
        for s, sh in enumerate(p["shapes"]):
            arr[i, s] = (1, sh["type"], sh["cx"], sh["cy"], sh["size"], sh["aspect"], sh["angle"])
    a = torch.from_numpy(arr)
    coords = (torch.arange(res, dtype=torch.float32) + 0.5) / res
    yy, xx = coords.view(1, res, 1), coords.view(1, 1, res)
    labels = torch.zeros(b, res, res, dtype=torch.int64)
    for s in range(MAX_SHAPES):
        valid, typ, cx, cy, size, aspect, angle = (a[:, s, j].view(b, 1, 1) for j in range(7))
        dx, dy = xx - cx, yy - cy
        c, sn = torch.cos(angle), torch.sin(angle)
        u = (dx * c + dy * sn) / size
        v = (-dx * sn + dy * c) / (size * aspect)
        r = torch.sqrt(u * u + v * v)
        theta = torch.atan2(v, u)
        inside = torch.zeros(b, res, res, dtype=torch.bool)
        for t, name in enumerate(SHAPES):
            if name == "ellipse":
                m = r <= 1.0
            elif name == "rectangle":
                m = torch.maximum(u.abs(), v.abs()) <= 0.8
            elif name in ("triangle", "hexagon"):
                n = 3 if name == "triangle" else 6
                sector = 2 * math.pi / n
                m = r * torch.cos(torch.remainder(theta, sector) - sector / 2) <= math.cos(math.pi / n)
            else:  # star
                m = r <= 0.62 + 0.38 * torch.cos(5 * theta)
            inside |= m & (typ == t)
        labels = torch.where(inside & (valid > 0), torch.full_like(labels, s + 1), labels)
    return labels


def _outline(labels: torch.Tensor, res: int) -> torch.Tensor:
    """Boolean [B, res, res]: pixels on a boundary between two regions."""
    k = 2 * max(1, round(res / 128)) + 1
    lab = F.pad(labels.float().unsqueeze(1), (k // 2,) * 4, mode="replicate")
    hi = F.max_pool2d(lab, k, stride=1)
    lo = -F.max_pool2d(-lab, k, stride=1)
    return (hi != lo).squeeze(1)


def _texture(params: Sequence[dict], res: int) -> torch.Tensor:
    """Texture pattern [B, res, res] in [0, 1] (0 where flat)."""
    b = len(params)
    tex = torch.tensor([p["texture"] for p in params]).view(b, 1, 1)
    phase = torch.tensor([p["texture_phase"] for p in params], dtype=torch.float32).view(b, 1, 1)
    coords = torch.arange(res, dtype=torch.float32) / res
    yy, xx = coords.view(1, res, 1), coords.view(1, 1, res)
    freq = _TEXTURE_PERIODS
    stripes = (torch.sin(2 * math.pi * (freq * (xx + yy) / math.sqrt(2) + phase)) > 0).float()
    checker = ((torch.floor(freq * xx + phase) + torch.floor(freq * yy + phase)) % 2).float()
    fx = torch.remainder(freq * xx + phase, 1.0) - 0.5
    fy = torch.remainder(freq * yy + phase, 1.0) - 0.5
    dots = ((fx * fx + fy * fy) <= 0.3 ** 2).float()
    grain_cells = torch.from_numpy(np.stack([p["_grain"] for p in params])).unsqueeze(1)
    grain = F.interpolate(grain_cells, size=(res, res), mode="bilinear", align_corners=False).squeeze(1)
    grain = (grain - grain.amin((1, 2), keepdim=True)) / (grain.amax((1, 2), keepdim=True) - grain.amin((1, 2), keepdim=True) + 1e-6)
    out = torch.zeros(b, res, res)
    for t, pat in ((1, stripes), (2, checker), (3, dots), (4, grain)):
        out = torch.where(tex == t, pat.expand(b, res, res), out)
    return out


def _gradient(params: Sequence[dict], res: int) -> torch.Tensor:
    """Multiplicative brightness ramp [B, res, res] in [1 - strength, 1]."""
    b = len(params)
    deg = np.asarray(list(GRADIENTS.values()))[[p["gradient"] for p in params]]
    ang = torch.from_numpy(np.deg2rad(deg).astype(np.float32)).view(b, 1, 1)
    coords = (torch.arange(res, dtype=torch.float32) + 0.5) / res - 0.5
    yy, xx = coords.view(1, res, 1), coords.view(1, 1, res)
    c, s = torch.cos(ang), torch.sin(ang)
    proj = xx * c + yy * s  # in [-half_extent, half_extent]
    half_extent = 0.5 * (c.abs() + s.abs())
    t = (0.5 + 0.5 * proj / half_extent).clamp(0, 1)
    return 1.0 - _GRADIENT_STRENGTH * (1.0 - t)


def render_batch(params: Sequence[dict], resolution: int) -> tuple:
    """Render images from :func:`sample_params` dicts -> (A, B) uint8 tensors [B, 3, res, res]."""
    if resolution < 8:
        raise ValueError(f"resolution: expected >= 8, got {resolution}")
    res = int(resolution)
    labels = _shape_masks(params, res)
    outline = _outline(labels, res)
    a = torch.where(outline, 0, 255).to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    colours = torch.from_numpy(_region_colours(params))  # [B, S+1, 3]
    rgb = torch.gather(colours, 1, labels.view(len(params), -1, 1).expand(-1, -1, 3))
    rgb = rgb.view(len(params), res, res, 3).permute(0, 3, 1, 2)  # [B, 3, H, W]
    tex = _texture(params, res).unsqueeze(1) * _TEXTURE_STRENGTH
    rgb = rgb * (1 - tex) + (1 - rgb) * tex
    rgb = rgb * _gradient(params, res).unsqueeze(1)
    b = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return a, b


# --------------------------------------------------------------------------------------------
# the cached data set on disk


def _record(name: str, params: dict) -> dict:
    return {"file": name, **{k: v for k, v in params.items() if not k.startswith("_")}}


def _write_png(path: Path, ab: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(ab).save(path, format="PNG", compress_level=6, optimize=False)


def _build(dest: Path, n_train: int, n_val: int, resolution: int, seed: int, chunk: int = 256) -> None:
    records: Dict[str, List[dict]] = {}
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for split, n in (("train", n_train), ("val", n_val)):
            folder = dest / split
            folder.mkdir(parents=True, exist_ok=True)
            recs = []
            width = max(5, len(str(max(n - 1, 0))))
            for start in range(0, n, chunk):
                params = [sample_params(seed, split, i) for i in range(start, min(n, start + chunk))]
                a, b = render_batch(params, resolution)
                ab = torch.cat([a, b], dim=3).permute(0, 2, 3, 1).contiguous().numpy()
                futures = []
                for j, p in enumerate(params):
                    name = f"{start + j:0{width}d}.png"
                    recs.append(_record(name, p))
                    futures.append(pool.submit(_write_png, folder / name, ab[j]))
                for f in futures:
                    f.result()
            records[split] = recs
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "params": {"n_train": n_train, "n_val": n_val, "resolution": resolution, "seed": seed},
        "schema": factor_schema(),
        "train": records["train"],
        "val": records["val"],
    }
    with open(dest / "factors.json", "w") as f:
        json.dump(meta, f, separators=(",", ":"))


def _read_meta(root: Path) -> Optional[dict]:
    try:
        with open(root / "factors.json") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _cache_matches(root: Path, meta: Optional[dict], want: dict) -> bool:
    if meta is None or meta.get("version") != VERSION or meta.get("params") != want:
        return False
    for split in ("train", "val"):
        recs = meta.get(split)
        if not isinstance(recs, list) or len(recs) != want[f"n_{split}"]:
            return False
        folder = root / split
        try:
            present = {p.name for p in folder.iterdir() if p.suffix.lower() == ".png"}
        except OSError:
            return False
        if present != {r["file"] for r in recs}:
            return False
    return True


def _only_ours(root: Path) -> bool:
    """True when ``root`` holds nothing but a built-in data set (safe to replace)."""
    allowed = {"train", "val", "factors.json", "oracle.pt"}  # oracle.pt: fastep.eval.oracle's cache
    for entry in root.iterdir():
        if entry.name not in allowed and not entry.name.startswith(".oracle.pt.tmp-"):
            return False
        if entry.is_dir() and any(not (p.is_file() and p.suffix.lower() == ".png") for p in entry.iterdir()):
            return False
    return True


def make_builtin_dataset(root: Union[str, os.PathLike], n_train: int = 2000, n_val: int = 200,
                         resolution: int = 64, seed: int = 0) -> Path:
    """Generate (or reuse) the built-in data set under ``root`` and return ``root`` as a Path.

    A cache whose ``factors.json`` records the same ``n_train``, ``n_val``, ``resolution``,
    ``seed`` and format version, with exactly the listed files present, is reused as is.  A
    built-in cache made with other arguments (or damaged) is rebuilt in a temporary folder and
    swapped in; a ``root`` that holds anything else raises ``FileExistsError`` rather than
    mixing files.  Concurrent callers (e.g. DDP ranks) are safe: the build is atomic per folder.
    """
    for name, val, lo in (("n_train", n_train, 1), ("n_val", n_val, 0), ("resolution", resolution, 8)):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < lo:
            raise ValueError(f"{name}: expected an integer >= {lo}, got {val!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    root = Path(root).expanduser()
    want = {"n_train": int(n_train), "n_val": int(n_val), "resolution": int(resolution), "seed": int(seed)}
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"root: {root} exists and is not a folder")
        meta = _read_meta(root)
        if _cache_matches(root, meta, want):
            return root
        if any(root.iterdir()) and not _only_ours(root):
            raise FileExistsError(
                f"root: {root} is not empty and does not hold a fastep built-in data set made with "
                f"{want}; refusing to mix files. Use an empty or new folder.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        _build(tmp, **want)
        if root.exists():
            # re-check: another process may have finished the same build meanwhile
            if _cache_matches(root, _read_meta(root), want):
                return root
            trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if _cache_matches(root, _read_meta(root), want):
                return root
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def default_builtin_root(n_train: int = 2000, n_val: int = 200, resolution: int = 64, seed: int = 0,
                         cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Where the built-in set with these arguments is cached by default.

    ``cache_dir`` or ``$FASTEP_DATA_DIR`` or ``~/.cache/fastep/data``, then
    ``builtin-r{resolution}-n{n_train}-{n_val}-s{seed}``.
    """
    base = Path(cache_dir or os.environ.get("FASTEP_DATA_DIR") or Path.home() / ".cache" / "fastep" / "data")
    return base.expanduser() / f"builtin-r{resolution}-n{n_train}-{n_val}-s{seed}"


# --------------------------------------------------------------------------------------------
# reading the factors back


@dataclass
class BuiltinStyles:
    """The true factors of a built-in data set, read from its ``factors.json``.

    >>> styles = BuiltinStyles.load(root)
    >>> styles.factor("val", "texture")      # int64 array, one per file in sorted order
    >>> styles.style_class("val")            # one id per (palette, gradient, texture) combination
    """

    root: Path
    schema: dict
    params: dict
    records: Dict[str, List[dict]]

    @classmethod
    def load(cls, root: Union[str, os.PathLike]) -> "BuiltinStyles":
        root = Path(root)
        meta = _read_meta(root)
        if meta is None:
            raise FileNotFoundError(
                f"root: {root / 'factors.json'} is missing or not a fastep built-in factors file; "
                f"create the data set with fastep.data.make_builtin_dataset(root, ...)")
        return cls(root=root, schema=meta["schema"], params=meta["params"],
                   records={s: meta[s] for s in ("train", "val")})

    def _recs(self, split: str) -> List[dict]:
        if split not in self.records:
            raise ValueError(f"split: expected one of {sorted(self.records)}, got {split!r}")
        return self.records[split]

    def files(self, split: str) -> List[Path]:
        """Absolute paths of the split's files, in record (= sorted) order."""
        return [self.root / split / r["file"] for r in self._recs(split)]

    def n_values(self, name: str) -> int:
        """Number of values of a categorical style factor."""
        spec = self.schema["style"].get(name)
        if spec is None or spec["kind"] != "categorical":
            raise ValueError(f"name: expected a categorical style factor "
                             f"{[k for k, v in self.schema['style'].items() if v['kind'] == 'categorical']}, got {name!r}")
        return len(spec["values"])

    def factor(self, split: str, name: str) -> np.ndarray:
        """One factor for every file of ``split``: int64 for categorical, float64 otherwise."""
        recs = self._recs(split)
        known = {**self.schema["content"], **self.schema["style"]}
        if name not in known or name == "shapes":
            raise ValueError(f"name: unknown scalar factor {name!r}; known: "
                             f"{[k for k in known if k != 'shapes']}")
        vals = [r[name] for r in recs]
        kind = known[name]["kind"]
        return np.asarray(vals, dtype=np.int64 if kind in ("categorical", "integer") else np.float64)

    def factors(self, split: str, names: Sequence[str] = STYLE_FACTORS) -> Dict[str, np.ndarray]:
        """``{name: factor(split, name)}`` for several factors (default: the style factors)."""
        return {n: self.factor(split, n) for n in names}

    def style_class(self, split: str, names: Sequence[str] = ("palette", "gradient", "texture")) -> np.ndarray:
        """A single int64 class id per file combining the given categorical factors."""
        out = np.zeros(len(self._recs(split)), dtype=np.int64)
        for n in names:
            out = out * self.n_values(n) + self.factor(split, n)
        return out

    def hue_features(self, split: str) -> np.ndarray:
        """The circular hue as [N, 2] (cos, sin) for linear probes."""
        h = self.factor(split, "hue") * 2 * math.pi
        return np.stack([np.cos(h), np.sin(h)], 1)
