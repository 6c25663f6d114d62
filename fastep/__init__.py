"""fastep: fast StEP (style-based encoder pre-training) for multi-modal image-to-image translation.

The public API, re-exported here lazily (importing ``fastep`` is cheap; a name is imported from
its home module on first use):

* ``fastep.ops``     fused ops: Gram matrices, style losses/distances, exact neighbour mining;
* ``fastep.nets``    VGG / AlexNet feature extractors with ImageNet or seeded random weights;
* ``fastep.losses``  PerceptualLoss, StyleLoss, adversarial losses, LPIPS;
* ``fastep.zoo``     the systems (StEP: generator, style encoder, discriminator, mapper);
* ``fastep.data``    paired image folders and the built-in generated data set;
* ``fastep.train``   the staged trainer; ``fastep.eval`` metrics and figures.
"""
from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

# public name -> home module
_EXPORTS = {
    # ops
    "gram": "fastep.ops",
    "style_loss": "fastep.ops",
    "gram_vectors": "fastep.ops",
    "pairwise_style_distance": "fastep.ops",
    "mine_neighbours": "fastep.ops",
    "sample_triplets": "fastep.ops",
    # features
    "style_features": "fastep.features",
    "VGGFeatures": "fastep.nets",
    # losses
    "PerceptualLoss": "fastep.losses",
    "StyleLoss": "fastep.losses",
    "LPIPS": "fastep.losses",
    # models
    "Generator": "fastep.zoo.step",
    "StyleEncoder": "fastep.zoo.step",
    "MultiScaleDiscriminator": "fastep.zoo.step",
    "Mapper": "fastep.zoo.step",
}

__all__ = ["__version__", "info", *_EXPORTS]


def info() -> str:
    """The environment report of ``fastep info`` as a string."""
    from .cli_info import info_lines

    return "\n".join(info_lines())


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastep' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
