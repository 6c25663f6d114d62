"""Plain-PyTorch reference implementations of every fastep op (the definitions).

One module per op family, re-exported here so that ``from fastep.ops import reference as R``
reaches all of them:

* :mod:`.gram`        Gram matrices, style loss / distance, Gram vectors, pairwise distances
* :mod:`.reductions`  the weighted multi-layer reductions of PerceptualLoss and LPIPS
* :mod:`.mining`      exact neighbour mining (brute force) and its eager baseline

They are the ``reference`` backend of every op (``FASTEP_BACKEND=reference``), the float64
definitions the tests compare against, and the eager baselines of the benchmarks.
"""
import contextlib

import torch

from .gram import *  # noqa: F401,F403
from .gram import __all__ as _gram_all
from .mining import *  # noqa: F401,F403
from .mining import __all__ as _mining_all
from .reductions import *  # noqa: F401,F403
from .reductions import __all__ as _reductions_all


@contextlib.contextmanager
def no_tf32():
    """Keep cuDNN / cuBLAS float32 convolutions and GEMMs off TF32 (10-bit mantissa) inside the
    block: float32 references must be float32 when compared on CUDA."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
           torch.get_float32_matmul_precision())
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old[:2]
        torch.set_float32_matmul_precision(old[2])


__all__ = [*_gram_all, *_reductions_all, *_mining_all, "no_tf32"]
