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
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(9, 5, generator=g, dtype=torch.float64) + 0.5
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


class _Fake:
    """A 'translator' for the metrics: ``perfect`` renders the input's shapes in the target
    palette (the built-in renderer itself); ``constant`` returns grey whatever it is asked."""

    def __init__(self, root, kind):
        from types import SimpleNamespace

        from fastep.data import BuiltinStyles
        from fastep.eval.oracle import _records_to_params

        styles = BuiltinStyles.load(root)
        self.params = _records_to_params(styles.records["val"], int(styles.params["seed"]), "val")
        self.res = int(styles.params["resolution"])
        self.cfg = SimpleNamespace(n_classes=6, resolution=self.res, dim_z=4)
        self.device = torch.device("cpu")
        self.kind, self.calls = kind, 0

    def translate(self, x, y, z):
        from fastep.data.builtin import render_batch

        n = len(x)
        if self.kind == "constant":
            return torch.zeros_like(x)
        # evaluate_translator asks for all inputs of one class in order, in batches: track them
        start = self.calls % len(self.params)
        self.calls += n
        p = [{**q, "palette": int(y)} for q in self.params[start:start + n]]
        return render_batch(p, self.res)[1].float().div(127.5).sub(1)


def test_rc_fc_content_of_a_perfect_and_a_constant_translator(tmp_path):
    from fastep.data import make_builtin_dataset
    from fastep.eval.oracle import OracleConfig, load_or_train_oracle
    from fastep.zoo.deepi2i.evaluate import evaluate_translator

    root = make_builtin_dataset(tmp_path / "d", n_train=16, n_val=60, resolution=32)
    oracle = load_or_train_oracle(root, OracleConfig(n_images=384, steps=200, batch_size=32, width=8, lr=4e-3))
    lp = lambda a, b: (a - b).abs().mean((1, 2, 3))  # noqa: E731 - a cheap stand-in distance
    perfect = evaluate_translator(_Fake(root, "perfect"), root, "palette", oracle, lpips=lp, n_div_inputs=2)
    constant = evaluate_translator(_Fake(root, "constant"), root, "palette", oracle, lpips=lp, n_div_inputs=2)
    assert constant["rc"]["palette"] == pytest.approx(1 / 6)  # one prediction, targets uniform over classes
    assert perfect["rc"]["palette"] >= 0.6 and perfect["rc"]["palette"] > constant["rc"]["palette"] + 0.4
    assert perfect["fc"] > constant["fc"] + 0.2
    assert perfect["content"] > constant["content"] and perfect["content"] > perfect["content_random"]
    assert constant["diversity"] == 0.0 and perfect["mfd"] < constant["mfd"]
    # the renderer keeps the input's boundaries whatever the palette: its edges score as the input's own
    assert perfect["boundary_f"] == pytest.approx(perfect["boundary_f_input"], abs=0.1)
    assert perfect["boundary_f"] > perfect["boundary_f_random"] + 0.2
    assert perfect["boundary_f"] > constant["boundary_f"] + 0.2


def test_boundary_fscore_scores_the_input_boundaries_and_not_another_scene():
    from fastep.data.builtin import _outline, _shape_masks
    from fastep.zoo.deepi2i.evaluate import boundary_fscore, edge_map

    shape = lambda cx, cy: {"type": 0, "cx": cx, "cy": cy, "size": 0.2, "aspect": 1.0, "angle": 0.0}  # noqa: E731
    params = [{"shapes": [shape(0.3, 0.3)]}, {"shapes": [shape(0.7, 0.6)]}]
    regions = _shape_masks(params, 32)
    outlines = _outline(regions, 32)
    silhouettes = (regions > 0).float().unsqueeze(1).expand(-1, 3, -1, -1) * 2 - 1
    own = boundary_fscore(silhouettes, outlines)
    swapped = boundary_fscore(silhouettes.flip(0), outlines)
    assert own.shape == (2,) and (own > 0.8).all() and (swapped < 0.3).all()
    assert torch.equal(edge_map(silhouettes, torch.tensor([5, 0])).flatten(1).sum(1), torch.tensor([5, 0]))
    with pytest.raises(ValueError, match="outlines must be bool"):
        boundary_fscore(silhouettes, outlines.float())
