"""Style features of image batches: per-layer Gram matrices or Gram vectors from VGG activations.

``style_features(images)`` runs a frozen VGG (:class:`fastep.nets.VGGFeatures`, StEP's VGG16
``relu1_2 .. relu5_2`` by default) over ``images`` in chunks and returns either the per-layer
Gram matrices (``output="gram"``, via :func:`fastep.ops.gram`) or the concatenated upper-triangle
Gram vectors (``output="vectors"``, via :func:`fastep.ops.gram_vectors`) whose squared Euclidean
distances are the style distances of the StEP paper (docs/step.md), ready for :func:`fastep.ops.pairwise_style_distance`
and neighbour mining.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .nets.cache import clear_shared_modules, shared_module, weights_key
from .nets.vgg import VGGFeatures, check_images, resolve_layers

__all__ = ["style_features", "get_style_net", "clear_net_cache", "check_images"]

OUTPUTS = ("gram", "vectors")

def clear_net_cache() -> None:
    """Forget the VGG networks cached by :func:`style_features` / :func:`get_style_net`."""
    clear_shared_modules("vgg")


def get_style_net(layers: Union[str, Sequence[str], None] = None, *, arch: Optional[str] = None,
                  weights: Union[str, os.PathLike, Mapping[str, torch.Tensor], None] = None, seed: int = 0,
                  device: Union[str, torch.device, None] = None, channels_last: bool = True) -> VGGFeatures:
    """A (cached) frozen :class:`VGGFeatures` for ``layers`` on ``device``.

    ``layers`` is a preset name (default ``"vgg16"``: StEP's VGG16 relu1_2..relu5_2) or layer
    names; ``weights`` defaults to ``"imagenet"`` (found offline, see :mod:`fastep.nets.weights`;
    absent weights raise FileNotFoundError, nothing falls back).  Networks built from
    ``"imagenet"``/``"random"``/file weights live in fastep's one backbone cache
    (:func:`fastep.nets.cache.shared_module`, shared with the functional losses; a rewritten file
    is read again); in-memory state dicts are not cached.  The returned network is shared:
    do not convert it in place.
    """
    arch, names = resolve_layers("vgg16" if layers is None else layers, arch)
    weights = "imagenet" if weights is None else weights
    wkey = weights_key(weights, seed)
    key = None if wkey is None else (arch, names, wkey, bool(channels_last))
    return shared_module("vgg", key, device, lambda: VGGFeatures(arch, names, weights=weights, seed=seed,
                                                                 channels_last=channels_last))


def style_features(images: torch.Tensor, layers: Union[str, Sequence[str], None] = None, *,
                   net: Optional[Callable[[torch.Tensor], Sequence[torch.Tensor]]] = None,
                   output: str = "gram",
                   weights: Union[str, os.PathLike, Mapping[str, torch.Tensor], None] = None,
                   batch_size: Optional[int] = None, arch: Optional[str] = None, seed: int = 0,
                   layer_weights: Optional[Sequence[float]] = None,
                   out_dtype: Optional[torch.dtype] = None,
                   autocast_dtype: Optional[torch.dtype] = None,
                   channels_last: bool = True) -> Union[List[torch.Tensor], torch.Tensor]:
    """Per-layer Gram matrices or Gram vectors of ``images``.

    Args:
        images: float tensor ``(N, 3, H, W)`` in [-1, 1] (fastep's convention).
        layers: preset (``"vgg16"`` default = StEP's VGG16 relu1_2..relu5_2, ``"gatys"``, ...) or
            a list of layer names (VGG16 unless ``arch="vgg19"``). Not allowed together with a
            ``net`` whose layers differ.
        net: a feature extractor to use instead (any callable returning a list of
            ``(N, C_l, H_l, W_l)`` maps, e.g. a :class:`fastep.nets.VGGFeatures`).
        output: ``"gram"`` -> list of ``(N, C_l, C_l)`` float32 Grams (:func:`fastep.ops.gram`);
            ``"vectors"`` -> ``(N, D)`` Gram vectors (:func:`fastep.ops.gram_vectors`), with
            ``|v_x - v_y|^2`` the style distance.
        weights: backbone weights when ``net`` is None: ``"imagenet"`` (default; offline lookup,
            FileNotFoundError with instructions if absent), ``"random"`` (seeded by ``seed``), a
            path, or a state dict.
        batch_size: images per forward pass (default: all at once).
        layer_weights: per-layer weights w_l of the style distance (``"vectors"`` only).
        out_dtype: dtype of the result (float32 default; e.g. bfloat16 to store vectors).
        autocast_dtype: run the backbone under ``torch.autocast(device, autocast_dtype)``
            (e.g. ``torch.bfloat16``); the Grams still accumulate in float32.
        channels_last: run the internally built network in channels_last (faster on CPU and
            with tensor cores); ignored when ``net`` is given.

    Runs under ``torch.no_grad()`` unless ``images.requires_grad`` (then gradients flow to the
    images).  Results are on ``images.device``.
    """
    from .ops import gram as _gram
    from .ops import gram_vectors as _gram_vectors

    check_images(images, "images")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if layer_weights is not None and output != "vectors":
        raise ValueError("layer_weights only applies to output='vectors' (Grams are per layer)")
    if net is None:
        net = get_style_net(layers, arch=arch, weights=weights, seed=seed, device=images.device,
                            channels_last=channels_last)
    else:
        if weights is not None:
            raise ValueError("weights: pass either net or weights, not both (net already has its weights)")
        if not callable(net):
            raise TypeError(f"net must be callable (e.g. a fastep.nets.VGGFeatures), got {type(net).__name__}")
        if layers is not None and isinstance(net, VGGFeatures):
            want = resolve_layers(layers, arch)
            if want != (net.arch, net.layers):
                raise ValueError(f"layers {layers!r} ({want[0]} {list(want[1])}) differ from the given net's "
                                 f"({net.arch} {list(net.layers)}); pass one or the other")
    if isinstance(net, VGGFeatures):
        net.check_images(images)
    n = images.shape[0]
    step = n if batch_size is None else batch_size
    grad = torch.is_grad_enabled() and images.requires_grad
    amp = (torch.autocast(images.device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    if layer_weights is not None:
        layer_weights = [float(w) for w in layer_weights]

    grams: Optional[List[List[torch.Tensor]]] = None
    vectors: List[torch.Tensor] = []
    with torch.set_grad_enabled(grad):
        for start in range(0, n, step):
            chunk = images[start:start + step]
            with amp:
                feats = list(net(chunk))
            if not feats:
                raise ValueError("net returned no feature maps")
            if layer_weights is not None and len(layer_weights) != len(feats):
                raise ValueError(f"layer_weights has {len(layer_weights)} entries but the net returns "
                                 f"{len(feats)} layers")
            if output == "vectors":
                v = _gram_vectors(feats, layer_weights, out_dtype=out_dtype or torch.float32)
                vectors.append(v)
            else:
                gs = [_gram(f.float() if f.dtype in (torch.float16, torch.bfloat16) else f) for f in feats]
                gs = [g.to(out_dtype) if out_dtype is not None else g for g in gs]
                if grams is None:
                    grams = [[g] for g in gs]
                else:
                    for acc, g in zip(grams, gs):
                        acc.append(g)
    if output == "vectors":
        return vectors[0] if len(vectors) == 1 else torch.cat(vectors, dim=0)
    assert grams is not None
    return [g[0] if len(g) == 1 else torch.cat(g, dim=0) for g in grams]
