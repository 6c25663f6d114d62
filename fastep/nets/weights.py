"""Backbone weights for the VGG / AlexNet feature extractors, in torchvision's format.

fastep's backbones (:class:`fastep.nets.VGGFeatures`, the AlexNet of LPIPS) are defined by fastep
but keep torchvision's module indices, so their state dicts use torchvision's keys
(``features.0.weight``, ``features.0.bias``, ...).  This module finds those weights:

``"imagenet"``
    torchvision's ImageNet checkpoint (the file named by ``torchvision.models.VGG16_Weights.
    IMAGENET1K_V1.url`` etc.), looked up **without any network access** in

    1. ``$FASTEP_WEIGHTS_DIR`` (under the torchvision file name, or ``<arch>.pth``),
    2. the torch hub cache, ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``),
       which is where ``torchvision.models.vgg16(weights="IMAGENET1K_V1")`` stores it.

    Absent weights raise :class:`FileNotFoundError` explaining which file to fetch, from where,
    and where to put it.  Nothing silently falls back to random weights; ``download=True``
    (explicit) fetches the file into the hub cache.
``"random"``
    seeded, deterministic initialisation with torchvision's scheme (:func:`random_state_dict`).
a path (``str`` / ``os.PathLike``)
    a ``torch.save``-d state dict with torchvision keys (a full torchvision model's state dict
    works; ``module.`` prefixes and ``{"state_dict": ...}`` wrappers are accepted).
a ``dict``
    an in-memory state dict, validated the same way.

Only the convolutional ``features.*`` entries are returned by default (the extractors never run
the classifier); pass ``features_only=False`` to keep everything.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

__all__ = ["ARCHS", "VGG_CFGS", "ALEXNET_CONVS", "IMAGENET_URLS", "WEIGHTS_OPTIONS", "imagenet_filename",
           "imagenet_search_paths", "feature_shapes", "resolve_state_dict", "random_state_dict",
           "load_state_dict_file", "validate_state_dict"]

ARCHS = ("vgg16", "vgg19", "alexnet")

# torchvision's VGG configurations "D" (vgg16) and "E" (vgg19): conv widths, "M" = 2x2 max pool.
VGG_CFGS: Dict[str, Tuple[Union[int, str], ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}

# torchvision's AlexNet features: (index, in, out, kernel, stride, padding) of each conv.
ALEXNET_CONVS: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (0, 3, 64, 11, 4, 2), (3, 64, 192, 5, 1, 2), (6, 192, 384, 3, 1, 1),
    (8, 384, 256, 3, 1, 1), (10, 256, 256, 3, 1, 1),
)

# torchvision's IMAGENET1K_V1 weight URLs (kept here so no torchvision import is needed to
# explain where to get them; checked against torchvision's enums in the tests).
IMAGENET_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "alexnet": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
}

_ENUMS = {"vgg16": "VGG16_Weights", "vgg19": "VGG19_Weights", "alexnet": "AlexNet_Weights"}

WeightsSpec = Union[str, os.PathLike, Mapping[str, torch.Tensor]]


def _check_arch(arch) -> str:
    if not isinstance(arch, str) or arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    return arch


def _imagenet_url(arch: str) -> str:
    """The URL of torchvision's ImageNet weights (from torchvision's enum when importable)."""
    try:
        import torchvision.models as tvm

        return getattr(tvm, _ENUMS[arch]).IMAGENET1K_V1.url
    except Exception:  # noqa: BLE001 - torchvision is optional here; fall back to the table
        return IMAGENET_URLS[arch]


def imagenet_filename(arch: str) -> str:
    """File name of torchvision's ImageNet checkpoint for ``arch`` (e.g. ``vgg16-397923af.pth``)."""
    return os.path.basename(_imagenet_url(_check_arch(arch)))


def imagenet_search_paths(arch: str) -> List[Path]:
    """Where ``weights="imagenet"`` looks, in order (nothing is downloaded)."""
    name = imagenet_filename(arch)
    paths: List[Path] = []
    env = os.environ.get("FASTEP_WEIGHTS_DIR", "").strip()
    if env:
        for d in env.split(os.pathsep):
            if d:
                paths += [Path(d).expanduser() / name, Path(d).expanduser() / f"{arch}.pth"]
    paths.append(Path(torch.hub.get_dir()) / "checkpoints" / name)
    return paths


def feature_shapes(arch: str) -> Dict[str, Tuple[int, ...]]:
    """Expected ``features.*`` parameter shapes of ``arch`` (torchvision keys)."""
    arch = _check_arch(arch)
    shapes: Dict[str, Tuple[int, ...]] = {}
    if arch == "alexnet":
        for idx, cin, cout, k, _, _ in ALEXNET_CONVS:
            shapes[f"features.{idx}.weight"] = (cout, cin, k, k)
            shapes[f"features.{idx}.bias"] = (cout,)
        return shapes
    idx, cin = 0, 3
    for v in VGG_CFGS[arch]:
        if v == "M":
            idx += 1
            continue
        shapes[f"features.{idx}.weight"] = (v, cin, 3, 3)
        shapes[f"features.{idx}.bias"] = (v,)
        cin = v
        idx += 2  # conv, relu
    return shapes


def _classifier_shapes(arch: str) -> Dict[str, Tuple[int, ...]]:
    if arch == "alexnet":
        dims = [(1, 256 * 6 * 6, 4096), (4, 4096, 4096), (6, 4096, 1000)]
    else:
        dims = [(0, 512 * 7 * 7, 4096), (3, 4096, 4096), (6, 4096, 1000)]
    out: Dict[str, Tuple[int, ...]] = {}
    for idx, fin, fout in dims:
        out[f"classifier.{idx}.weight"] = (fout, fin)
        out[f"classifier.{idx}.bias"] = (fout,)
    return out


def random_state_dict(arch: str, seed: int = 0, *, features_only: bool = True,
                      dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Seeded random weights for ``arch`` with torchvision's initialisation scheme.

    VGG: convs ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` with zero bias (linear
    layers N(0, 0.01), zero bias).  AlexNet: PyTorch's default layer init (kaiming uniform with
    ``a=sqrt(5)``, bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))), which is what torchvision uses.
    Generated on the CPU from a ``torch.Generator`` seeded with ``seed``: the same seed gives the
    same tensors on every run and machine, independent of the global RNG.
    """
    arch = _check_arch(arch)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    shapes = dict(feature_shapes(arch))
    if not features_only:
        shapes.update(_classifier_shapes(arch))
    sd: Dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if not key.endswith(".weight"):
            continue
        bias_key = key[: -len("weight")] + "bias"
        bias_shape = shapes[bias_key]
        is_conv = len(shape) == 4
        fan_in = shape[1] * (shape[2] * shape[3] if is_conv else 1)
        fan_out = shape[0] * (shape[2] * shape[3] if is_conv else 1)
        if arch == "alexnet":
            # kaiming_uniform_(a=sqrt(5)): gain = sqrt(2 / (1 + 5)), bound = gain * sqrt(3 / fan_in)
            bound = math.sqrt(1.0 / 3.0) * math.sqrt(3.0 / fan_in)
            w = torch.empty(shape).uniform_(-bound, bound, generator=gen)
            b_bound = 1.0 / math.sqrt(fan_in)
            b = torch.empty(bias_shape).uniform_(-b_bound, b_bound, generator=gen)
        elif is_conv:
            std = math.sqrt(2.0) / math.sqrt(fan_out)
            w = torch.empty(shape).normal_(0.0, std, generator=gen)
            b = torch.zeros(bias_shape)
        else:
            w = torch.empty(shape).normal_(0.0, 0.01, generator=gen)
            b = torch.zeros(bias_shape)
        sd[key] = w.to(dtype)
        sd[bias_key] = b.to(dtype)
    return sd


def _unwrap(obj, source: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"weights: {source} does not hold a state dict (got {type(obj).__name__})")
    out: Dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise ValueError(f"weights: {source} has a non-string key {k!r}")
        if k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def validate_state_dict(arch: str, state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict",
                        features_only: bool = True) -> Dict[str, torch.Tensor]:
    """Check that ``state_dict`` has every ``features.*`` tensor of ``arch`` with the right shape.

    Returns the ``features.*`` subset (everything if ``features_only=False``).  Raises
    :class:`ValueError` listing missing keys or wrong shapes.
    """
    arch = _check_arch(arch)
    sd = _unwrap(state_dict, source)
    expected = feature_shapes(arch)
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ValueError(
            f"weights: {source} is not a torchvision {arch} state dict: missing {len(missing)} "
            f"key(s) {missing[:4]}{' ...' if len(missing) > 4 else ''}; expected torchvision keys "
            f"like 'features.0.weight' (found e.g. {list(sd)[:4]})")
    bad = []
    for k, shape in expected.items():
        v = sd[k]
        if not isinstance(v, torch.Tensor):
            bad.append(f"{k}: not a tensor ({type(v).__name__})")
        elif tuple(v.shape) != shape:
            bad.append(f"{k}: shape {tuple(v.shape)}, expected {shape}")
        elif not v.is_floating_point():
            bad.append(f"{k}: dtype {v.dtype}, expected a floating dtype")
    if bad:
        raise ValueError(f"weights: {source} does not match {arch}: " + "; ".join(bad[:4])
                         + (" ..." if len(bad) > 4 else ""))
    if features_only:
        return {k: sd[k] for k in expected}
    return dict(sd)


def load_state_dict_file(arch: str, path: Union[str, os.PathLike], *,
                         features_only: bool = True) -> Dict[str, torch.Tensor]:
    """Load and validate a torchvision-format state dict from ``path`` (on the CPU)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights: no such file {str(path)!r} (expected a torchvision-format "
                                f"{arch} state dict saved with torch.save)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report which file failed and why, in one line
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"weights: could not load {str(path)!r} as a state dict ({type(err).__name__}: "
                         f"{first}); expected a torch.save-d torchvision {arch} state dict") from err
    return validate_state_dict(arch, obj, source=f"file {str(path)!r}", features_only=features_only)


# Where a user names the weights, per backbone: the Python arguments and the command-line flags
# (checked against the real parsers in tests/nets/test_weights.py).
WEIGHTS_OPTIONS = {
    "vgg16": ("weights= (fastep.nets.VGGFeatures, fastep.style_features), backbone_weights= "
              "(fastep.losses), fastep mine/demo --weights, fastep train --vgg-weights, "
              "fastep eval --lpips-weights (with --lpips-net vgg)"),
    "vgg19": "weights= (fastep.nets.VGGFeatures), backbone_weights= (fastep.losses)",
    "alexnet": "backbone_weights= (fastep.losses.LPIPS), fastep eval --lpips-weights",
}


def _missing_imagenet_message(arch: str, searched: Sequence[Path]) -> str:
    url = _imagenet_url(arch)
    name = os.path.basename(url)
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"ImageNet weights for {arch} not found (fastep never downloads them implicitly; looked for "
        f"{', '.join(str(p) for p in searched)}): get {name} from {url} on a machine with network "
        f"access and put it in {hub}/ or in a folder named by $FASTEP_WEIGHTS_DIR, or pass its path "
        f"with {WEIGHTS_OPTIONS[arch]}; 'random' there gives seeded random weights (offline tests); "
        f"download=True fetches it into the hub cache"
    )


def resolve_state_dict(arch: str, weights: WeightsSpec = "imagenet", *, seed: int = 0,
                       download: bool = False, features_only: bool = True) -> Dict[str, torch.Tensor]:
    """Return a validated torchvision-format state dict (CPU tensors) for ``arch``.

    Args:
        arch: ``"vgg16"``, ``"vgg19"`` or ``"alexnet"``.
        weights: ``"imagenet"``, ``"random"``, a path to a ``.pth`` file, or a state dict.
        seed: seed of ``weights="random"``.
        download: only with ``"imagenet"``: fetch the file into the torch hub cache if absent
            (needs network access; off by default, and never done implicitly).
        features_only: keep only the ``features.*`` entries (default).

    Raises:
        FileNotFoundError: ImageNet weights (or the given file) not found; the message says
            which file, where to put it and the URL.
        ValueError / TypeError: an unknown ``weights`` string, a bad file or wrong keys/shapes.
    """
    arch = _check_arch(arch)
    if isinstance(weights, Mapping):
        return validate_state_dict(arch, weights, source="the given state dict", features_only=features_only)
    if isinstance(weights, str) and weights in ("imagenet", "random"):
        if weights == "random":
            return random_state_dict(arch, seed, features_only=features_only)
        searched = imagenet_search_paths(arch)
        for p in searched:
            if p.is_file():
                return load_state_dict_file(arch, p, features_only=features_only)
        if download:
            url = _imagenet_url(arch)
            sd = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True,
                                                    check_hash=True, weights_only=True)
            return validate_state_dict(arch, sd, source=url, features_only=features_only)
        raise FileNotFoundError(_missing_imagenet_message(arch, searched))
    if isinstance(weights, (str, os.PathLike)):
        p = Path(weights).expanduser()
        if isinstance(weights, str) and not p.exists() and os.sep not in weights and "." not in weights:
            raise ValueError(f"weights must be 'imagenet', 'random', a path to a state-dict file or "
                             f"a state dict; got {weights!r} (no such file)")
        return load_state_dict_file(arch, p, features_only=features_only)
    raise TypeError(f"weights must be 'imagenet', 'random', a path or a state dict, "
                    f"got {type(weights).__name__}")
