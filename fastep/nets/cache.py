"""The one cache of frozen backbones (and the loss modules built around them) in fastep.

Building a VGG / AlexNet extractor reads or generates ~100-500 MB of weights, so everything that
needs one by configuration rather than by object -- :func:`fastep.features.get_style_net`,
the functional :func:`fastep.losses.perceptual_loss` / :func:`fastep.losses.lpips`, the training
step's perceptual loss -- asks :func:`shared_module`, which keeps the most recently used
:data:`MAX_ENTRIES` modules, keyed by what they are, their weights and their device.

Only modules whose weights are named by a string or a file are cached (a file by its resolved
path, modification time and size, so a rewritten file is read again); in-memory state dicts are
not (:func:`weights_key` returns None).  Cached modules are shared: do not convert them in place
(``.to``, ``.double()``); build your own extractor for that.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable, Optional, Tuple, TypeVar, Union

import torch
from torch import nn

__all__ = ["shared_module", "weights_key", "clear_shared_modules", "shared_module_keys", "MAX_ENTRIES"]

MAX_ENTRIES = 8

_ENTRIES: "OrderedDict[tuple, nn.Module]" = OrderedDict()
_LOCK = threading.Lock()

M = TypeVar("M", bound=nn.Module)


def weights_key(weights, seed: int = 0) -> Optional[Tuple[Hashable, ...]]:
    """A hashable identity of a backbone ``weights`` spec, or None when it cannot be cached.

    ``"imagenet"`` -> ``("imagenet",)``; ``"random"`` -> ``("random", seed)``; an existing file ->
    ``(resolved path, mtime_ns, size)``; a state dict or a missing path -> None.
    """
    if isinstance(weights, str) and weights in ("imagenet", "random"):
        return (weights, seed) if weights == "random" else (weights,)
    if isinstance(weights, (str, os.PathLike)):
        p = Path(weights).expanduser()
        if p.is_file():
            st = p.stat()
            return (str(p.resolve()), st.st_mtime_ns, st.st_size)
    return None


def shared_module(kind: str, key: Optional[Tuple[Hashable, ...]], device: Union[str, torch.device, None],
                  factory: Callable[[], M]) -> M:
    """The cached module ``(kind, key, device)``, built by ``factory()`` and moved to ``device``
    on first use.  ``key=None`` builds a fresh, uncached module (e.g. in-memory weights).

    ``kind`` names what the module is (``"vgg"``, ``"perceptual"``, ``"lpips"``, ...) and ``key``
    everything its construction depends on (use :func:`weights_key` for the weights).  The
    least recently used entry is dropped beyond :data:`MAX_ENTRIES`.
    """
    device = torch.device("cpu" if device is None else device)
    if key is None:
        return factory().to(device)
    k = (kind, tuple(key), str(device))
    with _LOCK:
        mod = _ENTRIES.get(k)
        if mod is not None:
            _ENTRIES.move_to_end(k)
            return mod  # type: ignore[return-value]
    mod = factory().to(device)  # built outside the lock: it can take seconds
    with _LOCK:
        other = _ENTRIES.get(k)
        if other is not None:  # another thread built it meanwhile: keep one
            return other  # type: ignore[return-value]
        _ENTRIES[k] = mod
        while len(_ENTRIES) > MAX_ENTRIES:
            _ENTRIES.popitem(last=False)
    return mod


def shared_module_keys() -> list:
    """The ``(kind, key, device)`` of every cached module, least recently used first."""
    with _LOCK:
        return list(_ENTRIES)


def clear_shared_modules(kind: Optional[str] = None) -> None:
    """Forget the cached modules (all, or those of ``kind``)."""
    with _LOCK:
        for k in [k for k in _ENTRIES if kind is None or k[0] == kind]:
            del _ENTRIES[k]
