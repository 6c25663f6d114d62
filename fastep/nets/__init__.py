"""Backbones with torchvision-compatible weights: VGG16/VGG19 feature extractors (and AlexNet).

* :class:`VGGFeatures` returns chosen VGG layers (``LAYER_PRESETS``: StEP's ``"vgg16"``,
  ``"gatys"``, ``"pix2pixhd"``, ``"lpips_vgg"``), running only up to the deepest one.
* :mod:`fastep.nets.weights` finds ImageNet weights offline (torch hub cache,
  ``$FASTEP_WEIGHTS_DIR``, a file) or makes seeded random ones.
* :mod:`fastep.nets.cache` is the one cache of frozen backbones (:func:`shared_module`).
"""
from __future__ import annotations

import importlib
from typing import Any

from .cache import clear_shared_modules, shared_module, weights_key
from .vgg import LAYER_PRESETS, VGGFeatures, resolve_layers, vgg_layer_names
from .weights import random_state_dict, resolve_state_dict

__all__ = ["VGGFeatures", "LAYER_PRESETS", "resolve_layers", "vgg_layer_names",
           "resolve_state_dict", "random_state_dict", "shared_module", "weights_key",
           "clear_shared_modules"]


def __getattr__(name: str) -> Any:
    # Other backbones (e.g. fastep.nets.alexnet) are imported on first use.
    if not name.startswith("_"):
        try:
            mod = importlib.import_module(".alexnet", __name__)
        except ModuleNotFoundError as err:
            if err.name != __name__ + ".alexnet":
                raise
        else:
            if hasattr(mod, name):
                return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
