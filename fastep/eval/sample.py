"""Style transfer and sampling from a checkpoint as a Python API (``fastep sample`` wraps it)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch

from .figures import interpolation_strips, sampling_grid, style_transfer_grid

PathLike = Union[str, Path]


def is_ab_pair(img: torch.Tensor) -> bool:
    """True for a pix2pix AB image: A and B side by side, width exactly twice the height."""
    return img.shape[-1] == 2 * img.shape[-2]


def expand_image_paths(paths: Sequence[PathLike], what: str = "input") -> list:
    """File paths as given, a folder replaced by the images in it (sorted); a missing path or an
    empty folder is a one-line :class:`FileNotFoundError`."""
    from fastep.data import list_images

    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise FileNotFoundError(f"--{what}: folder {str(p)!r} holds no image files")
            out += list(found)
        elif not p.exists():
            raise FileNotFoundError(f"--{what}: {str(p)!r} does not exist")
        else:
            out.append(p)
    return out


def load_image_file(path: PathLike, resolution: int, half: str = "auto", ab_side: str = "A") -> torch.Tensor:
    """One image file as (3, R, R) in [-1, 1].  ``half``: "A" / "B" takes that half of a pix2pix
    AB file, "full" the whole image, "auto" the ``ab_side`` half of an AB pair (width = 2 x
    height, the files training reads as pairs) and the whole image otherwise."""
    from fastep.data import read_image, split_ab

    img = read_image(path)
    if half == "auto" and is_ab_pair(img):
        half = ab_side
    if half in ("A", "B"):
        img = split_ab(img, path)[0 if half == "A" else 1]
    elif half not in ("auto", "full"):
        raise ValueError(f"half must be 'A', 'B', 'full' or 'auto', got {half!r}")
    x = img.unsqueeze(0).float() / 127.5 - 1.0
    x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear",
                                        align_corners=False, antialias=True)
    return x[0].clamp(-1, 1)


@torch.no_grad()
def transfer(checkpoint: PathLike, inputs: Sequence[PathLike], styles: Sequence[PathLike], out: PathLike, *,
             input_half: str = "auto", style_half: str = "auto", device="cpu", ema: bool = True) -> Path:
    """Grid of G(A_i, E(B_j)) for input files A_i and style files B_j, written to ``out`` (PNG)."""
    if not inputs:
        raise ValueError("inputs: give at least one input image")
    if not styles:
        raise ValueError("styles: give at least one style image")
    model = _load(checkpoint, device, ema)
    res = model.model_cfg.resolution
    A = torch.stack([load_image_file(p, res, input_half) for p in inputs]).to(device)
    B = torch.stack([load_image_file(p, res, style_half, ab_side="B") for p in styles]).to(device)
    return style_transfer_grid(model.G, model.E, A, B, out)


@torch.no_grad()
def sample(checkpoint: PathLike, inputs: Sequence[PathLike], out: PathLike, *, n: int = 8, input_half: str = "auto",
           seed: int = 0, device="cpu", ema: bool = True) -> Path:
    """Rows of ``n`` random outputs per input, from the mapper and from N(mu, sigma) where the
    checkpoint has them."""
    model = _load(checkpoint, device, ema)
    A = torch.stack([load_image_file(p, model.model_cfg.resolution, input_half) for p in inputs]).to(device)
    sets = {}
    if model.mapper is not None:
        sets["mapper"] = model.sample_codes(n, seed, how="mapper")
    if model.z_stats is not None:
        sets["gaussian"] = model.sample_codes(n, seed, how="gaussian")
    if not sets:
        raise ValueError(f"checkpoint {checkpoint}: no mapper and no z_stats to sample codes from; use the "
                         "main job's final.pt (after the mapper stage), or give --styles for style transfer")
    return sampling_grid(model.G, A, sets, out)


@torch.no_grad()
def interpolate(checkpoint: PathLike, inputs: Sequence[PathLike], style_a: PathLike, style_b: PathLike,
                out: PathLike, *, steps: int = 8, device="cpu", ema: bool = True) -> Path:
    """Strips G(A, lerp(E(style_a), E(style_b), t)) for every input."""
    model = _load(checkpoint, device, ema)
    res = model.model_cfg.resolution
    A = torch.stack([load_image_file(p, res) for p in inputs]).to(device)
    za = model.encode(load_image_file(style_a, res, ab_side="B").unsqueeze(0).to(device))
    zb = model.encode(load_image_file(style_b, res, ab_side="B").unsqueeze(0).to(device))
    return interpolation_strips(model.G, A, za, zb, out, steps=steps)


def _load(checkpoint: PathLike, device, ema: bool):
    from fastep import zoo

    model = zoo.load(checkpoint, device, ema=ema)
    if model.system != "step":
        raise ValueError(f"checkpoint {str(checkpoint)!r} is a {model.system!r} model; these figures are StEP's"
                         + ("; edit a BridgeGAN model with --set GROUP=VALUE or --ref IMG --attrs GROUP"
                            if model.system == "bridgegan" else ""))
    if str(model.extras.get("stage")) == "1":
        raise ValueError(f"checkpoint {str(checkpoint)!r} is from stage 1 (the style encoder only, no trained "
                         "generator); use a stage-2/3 final.pt or the main job's final.pt")
    return model
