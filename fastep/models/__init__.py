"""The StEP networks.

* :class:`Generator` -- G(A, z): pix2pixHD-style encoder-decoder with concatenated skips, z tiled
  into the bottleneck, every upsampling block and the last conv (~20.5 GMAC at 256 x 256).
* :class:`StyleEncoder` -- E(B) -> z: DRIT-style encoder (~7.1 GMAC), optional log-var head.
* :class:`MultiScaleDiscriminator` -- D(A, B): 3-scale conditional PatchGAN with a
  minibatch-stddev channel (~1.1 GMAC); returns one logits map per scale.
* :class:`Mapper` -- the IMLE mapper N(0, I) -> z (``fastep.models.mapper``).

Build all three from a config with ``fastep.train.step.build_models(ModelConfig(...), device)``.
"""
from __future__ import annotations

import importlib
from typing import Any

from .discriminator import MultiScaleDiscriminator, PatchDiscriminator
from .encoder import BasicBlock, StyleEncoder
from .generator import Generator, ResBlock
from .layers import EqConv2d, count_macs, instance_norm, minibatch_stddev, pixel_norm

__all__ = ["Generator", "StyleEncoder", "MultiScaleDiscriminator", "PatchDiscriminator", "ResBlock",
           "BasicBlock", "EqConv2d", "count_macs", "pixel_norm", "instance_norm", "minibatch_stddev",
           ]


def __getattr__(name: str) -> Any:
    # The mapper lives in its own module (engineer F); import it on first use.
    if name == "Mapper":
        return getattr(importlib.import_module(".mapper", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
