"""fastep's fused ops: one module per op family, each registered with torch.library.

* :mod:`fastep.ops.gram`        gram, style_loss, gram_vectors, pairwise_style_distance
* :mod:`fastep.ops.mining`      mine_neighbours, sample_triplets
* :mod:`fastep.ops.reductions`  fused weighted multi-layer reductions (PerceptualLoss, LPIPS)
* :mod:`fastep.ops.reference`   plain-PyTorch definitions of all of the above (one module per family)

Which implementation runs (Triton, CUDA, C++, cuBLAS or reference) is decided per call in one
place, :mod:`fastep._ext`, from the routes each op module registers; ``fastep info`` prints the
choice for every op, device and dtype.
"""
from . import reference  # noqa: F401
from .gram import *  # noqa: F401,F403
from .gram import __all__ as _gram_all
from .mining import *  # noqa: F401,F403
from .mining import __all__ as _mining_all
from .reductions import *  # noqa: F401,F403
from .reductions import __all__ as _reductions_all

__all__ = [*_gram_all, *_mining_all, *_reductions_all]
