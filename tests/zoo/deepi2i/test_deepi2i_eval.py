"""DeepI2I's evaluation: KID against a brute-force unbiased MMD^2, the class -> factor map,
and RC/FC/content of a perfect and of a constant 'translator' judged by the oracle."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fastep.eval.metrics import kid
from fastep.zoo.deepi2i.evaluate import class_factors


def _mmd2_brute(x, y):
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731
    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_kid_is_the_unbiased_mmd2():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g, dtype=torch.float64) + 0.5
    assert kid(x, y) == pytest.approx(_mmd2_brute(x, y), rel=1e-10)
    a, b, c = (torch.randn(300, 5, generator=g, dtype=torch.float64) for _ in range(3))
    assert abs(kid(a, b)) < 0.2 * kid(a, c + 0.5)  # same distribution ~ 0, shifted clearly > 0
    subs = kid(x, y, subsets=3, subset_size=5)
    assert np.isfinite(subs)
    with pytest.raises(ValueError, match="feature sizes differ"):
        kid(x, torch.randn(4, 3))


def test_class_factors_invert_style_class():
    f = class_factors("style", 120)
    assert set(f) == {"palette", "gradient", "texture"}
    ids = (f["palette"] * 4 + f["gradient"]) * 5 + f["texture"]  # BuiltinStyles.style_class's order
    assert torch.equal(ids, torch.arange(120))
    assert torch.equal(class_factors("palette", 6)["palette"], torch.arange(6))
