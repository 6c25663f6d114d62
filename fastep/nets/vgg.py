"""VGG16 / VGG19 feature extractors defined by fastep (torchvision-compatible weights).

:class:`VGGFeatures` is a plain ``nn.Sequential`` of ``Conv2d`` / ``ReLU`` / ``MaxPool2d`` with
the same module indices as ``torchvision.models.vgg16().features`` (resp. ``vgg19``), so
torchvision state dicts (``features.0.weight`` ...) load directly.  It returns the requested
layers only and runs the network only up to the deepest one.

Layer names: ``"conv{b}_{i}"`` is the output of the i-th convolution of block b (pre-ReLU),
``"relu{b}_{i}"`` the same after its ReLU, ``"pool{b}"`` the output of block b's max pool
(b = 1..5, i = 1-based).  :data:`LAYER_PRESETS` names the usual choices.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .weights import VGG_CFGS, resolve_state_dict

__all__ = ["VGGFeatures", "LAYER_PRESETS", "IMAGENET_MEAN", "IMAGENET_STD", "INPUT_RANGES",
           "vgg_layer_names", "resolve_layers", "check_images"]

# preset -> (arch, layer names in network order)
LAYER_PRESETS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    # StEP's style features (official code): VGG16 after ReLU of conv1_2 .. conv5_2.
    "vgg16": ("vgg16", ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")),
    # Gatys et al.'s style layers.
    "gatys": ("vgg19", ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")),
    # pix2pixHD's VGGLoss uses the same VGG19 slices.
    "pix2pixhd": ("vgg19", ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")),
    # LPIPS(vgg) taps.
    "lpips_vgg": ("vgg16", ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_RANGES = ("[-1,1]", "[0,1]", "imagenet_normalized")

_NAME_RE = re.compile(r"^(conv|relu)([1-5])_([1-9])$|^pool([1-5])$")


def _layer_table(arch: str) -> Dict[str, Tuple[int, int]]:
    """name -> (index in features, output channels), in network order."""
    if arch not in VGG_CFGS:
        raise ValueError(f"arch must be one of {tuple(VGG_CFGS)}, got {arch!r}")
    table: Dict[str, Tuple[int, int]] = {}
    idx, block, i, ch = 0, 1, 1, 3
    for v in VGG_CFGS[arch]:
        if v == "M":
            table[f"pool{block}"] = (idx, ch)
            idx += 1
            block += 1
            i = 1
            continue
        ch = int(v)
        table[f"conv{block}_{i}"] = (idx, ch)
        table[f"relu{block}_{i}"] = (idx + 1, ch)
        idx += 2
        i += 1
    return table


def vgg_layer_names(arch: str = "vgg16") -> List[str]:
    """All layer names of ``arch`` in network order."""
    return list(_layer_table(arch))


def resolve_layers(layers: Union[str, Sequence[str]], arch: Optional[str] = None) -> Tuple[str, Tuple[str, ...]]:
    """``(arch, layer names)`` from a preset name or a sequence of names.

    A preset fixes the architecture (passing a different ``arch`` is an error); a list of names
    uses ``arch`` (default ``"vgg16"``).  Raises ValueError naming ``layers`` / ``arch``.
    """
    if isinstance(layers, str):
        if layers not in LAYER_PRESETS:
            if _NAME_RE.match(layers):
                layers = (layers,)
            else:
                raise ValueError(f"layers: unknown preset or layer name {layers!r}; presets are "
                                 f"{sorted(LAYER_PRESETS)}, layer names look like 'relu3_2'")
        else:
            p_arch, names = LAYER_PRESETS[layers]
            if arch is not None and arch != p_arch:
                raise ValueError(f"arch={arch!r} conflicts with layers preset {layers!r} (which uses {p_arch!r})")
            return p_arch, tuple(names)
    arch = "vgg16" if arch is None else arch
    if not isinstance(arch, str) or arch not in VGG_CFGS:
        raise ValueError(f"arch must be one of {tuple(VGG_CFGS)}, got {arch!r}")
    try:
        names = tuple(layers)
    except TypeError:
        raise TypeError(f"layers must be a preset name or a sequence of layer names, got "
                        f"{type(layers).__name__}") from None
    if not names:
        raise ValueError("layers must name at least one layer, got an empty sequence")
    table = _layer_table(arch)
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"layers: every entry must be a str, got {type(n).__name__} ({n!r})")
        if n not in table:
            raise ValueError(f"layers: unknown {arch} layer {n!r}; valid names: "
                             f"{', '.join(table)}")
    if len(set(names)) != len(names):
        raise ValueError(f"layers: duplicate layer names in {list(names)}")
    return arch, names


def check_images(x, name: str = "images", like: Optional[torch.Tensor] = None, like_name: str = "",
                 value_range: str = "[-1, 1]") -> None:
    """Validate an RGB image batch: a floating-point (N, 3, H, W) tensor with N > 0 (values
    expected in ``value_range``), with the same shape and device as ``like`` when given.
    Raises TypeError / ValueError naming ``name``.  The one image check of fastep's feature
    extractors, ``fastep.features`` and ``fastep.losses``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (N, 3, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point image tensor in {value_range}, got dtype {x.dtype} "
                        f"(convert integer images with x.float() / 127.5 - 1)")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected shape (N, 3, H, W), got {tuple(x.shape)} (rank {x.dim()})")
    if x.shape[1] != 3:
        raise ValueError(f"{name}: expected 3 (RGB) channels in dim 1, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (N = 0)")
    if like is not None:
        if x.shape != like.shape:
            raise ValueError(f"{name}: shape {tuple(x.shape)} does not match {like_name} {tuple(like.shape)}")
        if x.device != like.device:
            raise ValueError(f"{name}: on {x.device}, but {like_name} is on {like.device}")


class VGGFeatures(nn.Module):
    """Frozen VGG16/VGG19 feature extractor returning the requested layers.

    Args:
        arch: ``"vgg16"`` or ``"vgg19"`` (ignored when ``layers`` is a preset, which fixes it;
            a conflicting explicit value is an error).
        layers: a preset name from :data:`LAYER_PRESETS` or a sequence of layer names
            (``"conv3_2"`` pre-ReLU, ``"relu3_2"`` post-ReLU, ``"pool3"``). Outputs come back in
            this order. Default: the preset of ``arch`` (StEP's ``"vgg16"`` / Gatys' for vgg19).
        weights: ``"imagenet"`` (torchvision's file, offline, see :mod:`fastep.nets.weights`),
            ``"random"`` (seeded), a path to a torchvision-format state dict, or a state dict.
        seed: seed of ``weights="random"``.
        input_range: ``"[-1,1]"`` (default, fastep's image convention), ``"[0,1]"``, or
            ``"imagenet_normalized"`` (already normalised; no affine). The ImageNet
            normalisation is one fused ``x * a + b`` (``torch.addcmul``).
        channels_last: keep weights and activations in channels_last memory format.
        download: with ``weights="imagenet"``, explicitly allow fetching the file.

    The module is in eval mode with ``requires_grad=False`` parameters (gradients still flow to
    the input images).  ``forward(images)`` takes float images ``(N, 3, H, W)`` (cast to the
    network's dtype; under ``torch.autocast`` the convolutions run in the autocast dtype) and
    returns a list of feature maps, one per requested layer.  ``.channels`` lists their channel counts.
    """

    def __init__(self, arch: Optional[str] = None, layers: Union[str, Sequence[str], None] = None,
                 weights: Union[str, os.PathLike, Mapping[str, torch.Tensor]] = "imagenet", seed: int = 0,
                 input_range: str = "[-1,1]", *, channels_last: bool = False, download: bool = False):
        super().__init__()
        if layers is None:
            a = "vgg16" if arch is None else arch
            if a not in VGG_CFGS:
                raise ValueError(f"arch must be one of {tuple(VGG_CFGS)}, got {arch!r}")
            layers = "vgg16" if a == "vgg16" else "gatys"
        arch, names = resolve_layers(layers, arch)
        if input_range not in INPUT_RANGES:
            raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
        self.arch = arch
        self.layers: Tuple[str, ...] = names
        self.input_range = input_range
        self.channels_last = bool(channels_last)
        table = _layer_table(arch)
        self.channels: List[int] = [table[n][1] for n in names]
        self._indices: List[int] = [table[n][0] for n in names]
        last = max(self._indices)
        self.num_pools = sum(1 for n, (i, _) in table.items() if n.startswith("pool") and i < last)

        # Weights first: a missing file fails fast, before anything is built.
        sd = resolve_state_dict(arch, weights, seed=seed, download=download)

        # Pre-ReLU outputs must survive their ReLU: that ReLU is out of place, the others in place.
        keep = {i for n, i in zip(names, self._indices) if n.startswith("conv")}
        mods: List[nn.Module] = []
        cin = 3
        with torch.device("meta"):  # no wasted default init: the weights are assigned below
            for v in VGG_CFGS[arch]:
                if len(mods) > last:
                    break
                if v == "M":
                    mods.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    continue
                mods.append(nn.Conv2d(cin, int(v), kernel_size=3, padding=1))
                mods.append(nn.ReLU(inplace=(len(mods) - 1) not in keep))
                cin = int(v)
        self.features = nn.Sequential(*mods[: last + 1])
        # output slot(s) of each module index
        self._slots: Dict[int, List[int]] = {}
        for slot, i in enumerate(self._indices):
            self._slots.setdefault(i, []).append(slot)

        own = {k: sd["features." + k].detach().to("cpu", torch.float32, copy=True)
               for k in self.features.state_dict()}
        self.features.load_state_dict(own, strict=True, assign=True)

        if input_range == "imagenet_normalized":
            a = torch.ones(3)
            b = torch.zeros(3)
        else:
            mean, std = torch.tensor(IMAGENET_MEAN, dtype=torch.float64), torch.tensor(IMAGENET_STD, dtype=torch.float64)
            if input_range == "[-1,1]":  # x01 = (x + 1) / 2; (x01 - mean) / std = x * a + b
                a, b = 0.5 / std, (0.5 - mean) / std
            else:  # [0,1]
                a, b = 1.0 / std, -mean / std
        self.register_buffer("_scale", a.float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", b.float().view(1, 3, 1, 1), persistent=False)

        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "VGGFeatures":
        """No-op: the extractor always stays in eval mode (it has no mode-dependent layers)."""
        return self

    @property
    def min_size(self) -> int:
        """Smallest input height/width the requested layers accept."""
        return 2 ** self.num_pools

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, layers={list(self.layers)}, input_range={self.input_range!r}"

    def check_images(self, images, name: str = "images") -> None:
        """Validate an image batch (:func:`check_images`, values in ``input_range``) and its
        size for the requested layers; raises TypeError / ValueError naming ``name``."""
        check_images(images, name, value_range=self.input_range)
        if min(images.shape[2], images.shape[3]) < self.min_size:
            raise ValueError(f"{name}: height and width must be >= {self.min_size} for layers "
                             f"{list(self.layers)}, got {tuple(images.shape[2:])}")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map images from ``input_range`` to ImageNet normalisation (one fused op)."""
        if self.input_range == "imagenet_normalized":
            return images
        return torch.addcmul(self._shift.to(images.dtype), images, self._scale.to(images.dtype))

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        self.check_images(images)
        x = images
        w = self.features[0].weight
        if x.dtype != w.dtype:  # e.g. bf16 images into an fp32 network: compute in the network's dtype
            x = x.to(w.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.normalize(x)
        out: List[Optional[torch.Tensor]] = [None] * len(self._indices)
        for i, module in enumerate(self.features):
            x = module(x)
            slots = self._slots.get(i)
            if slots is not None:
                for s in slots:
                    out[s] = x
        return out  # type: ignore[return-value]
