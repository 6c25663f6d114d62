"""AlexNet feature extractor with torchvision-compatible weights (LPIPS's "alex" backbone).

:class:`AlexNetFeatures` is ``torchvision.models.alexnet().features`` (same module indices, so
``features.0.weight`` ... load directly) returning the post-ReLU activations of its five
convolutions, ``relu1`` .. ``relu5``: exactly the taps of the lpips package's ``alexnet``.
Weights come from :func:`fastep.nets.weights.resolve_state_dict` (``"imagenet"`` offline from the
torch hub cache / ``$FASTEP_WEIGHTS_DIR`` / a file, or seeded ``"random"``).
"""
from __future__ import annotations

import os
from typing import List, Mapping, Sequence, Union

import torch
from torch import nn

from .weights import resolve_state_dict

__all__ = ["AlexNetFeatures", "ALEXNET_LAYERS"]

# layer name -> index of its module in torchvision's alexnet().features
ALEXNET_LAYERS = {"conv1": 0, "relu1": 1, "pool1": 2, "conv2": 3, "relu2": 4, "pool2": 5,
                  "conv3": 6, "relu3": 7, "conv4": 8, "relu4": 9, "conv5": 10, "relu5": 11, "pool5": 12}
_CHANNELS = {0: 64, 1: 64, 2: 64, 3: 192, 4: 192, 5: 192, 6: 384, 7: 384, 8: 256, 9: 256, 10: 256,
             11: 256, 12: 256}


def _features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


class AlexNetFeatures(nn.Module):
    """Frozen AlexNet returning the requested layers (default LPIPS's ``relu1`` .. ``relu5``).

    Args:
        layers: names from :data:`ALEXNET_LAYERS` in network order (``"convK"`` pre-ReLU,
            ``"reluK"``, ``"poolK"``).  The network runs only up to the deepest one.
        weights: ``"imagenet"``, ``"random"``, a path to a torchvision-format file or a state dict.
        seed: seed of ``weights="random"``.
        channels_last: keep weights and activations in channels_last memory format.

    ``forward(x)`` takes already-normalised float images ``(N, 3, H, W)`` (LPIPS applies its own
    scaling layer first) and returns a list of feature maps.  Parameters don't require grad;
    gradients still flow to the input.
    """

    def __init__(self, layers: Sequence[str] = ("relu1", "relu2", "relu3", "relu4", "relu5"),
                 weights: Union[str, os.PathLike, Mapping[str, torch.Tensor]] = "imagenet", seed: int = 0,
                 *, channels_last: bool = False, download: bool = False):
        super().__init__()
        if isinstance(layers, str):
            layers = (layers,)
        layers = tuple(layers)
        if not layers:
            raise ValueError("layers: expected at least one AlexNet layer name")
        for n in layers:
            if n not in ALEXNET_LAYERS:
                raise ValueError(f"layers: unknown AlexNet layer {n!r}; valid: {', '.join(ALEXNET_LAYERS)}")
        idx = [ALEXNET_LAYERS[n] for n in layers]
        if idx != sorted(idx) or len(set(idx)) != len(idx):
            raise ValueError(f"layers: expected distinct names in network order, got {list(layers)}")
        self.layers = layers
        self._indices = idx
        self.channels: List[int] = [_CHANNELS[i] for i in idx]
        feats = _features()
        keep_pre = {i for n, i in zip(layers, idx) if n.startswith("conv")}
        for i in keep_pre:  # a requested pre-ReLU output must survive its ReLU
            feats[i + 1] = nn.ReLU(inplace=False)
        self.features = nn.Sequential(*list(feats)[: max(idx) + 1])
        sd = resolve_state_dict("alexnet", weights, seed=seed, download=download)
        own = {k: sd["features." + k] for k in self.features.state_dict()}
        self.features.load_state_dict(own, strict=True)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "AlexNetFeatures":
        """No-op: the extractor always stays in eval mode."""
        return self

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}"

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected float images (N, 3, H, W), got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        w = self.features[0].weight
        if x.dtype != w.dtype:  # e.g. bf16 images into an fp32 network: compute in the network's dtype
            x = x.to(w.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = []
        want = set(self._indices)
        for i, m in enumerate(self.features):
            x = m(x)
            if i in want:
                out.append(x)
        return out
