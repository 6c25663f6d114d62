"""The style oracle and the translation metrics built on it (fastep.eval.oracle)."""
import math

import pytest
import torch

from fastep.data import BuiltinStyles, make_builtin_dataset
from fastep.data.builtin import render_batch, sample_params
from fastep.eval import oracle as O

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 16
SMALL = O.OracleConfig(n_images=384, steps=60, batch_size=32, width=8, lr=4e-3)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_builtin_dataset(tmp_path_factory.mktemp("builtin"), n_train=48, n_val=12, resolution=RES, seed=3)


@pytest.fixture(scope="module")
def oracle(data_root):
    return O.load_or_train_oracle(data_root, SMALL)


def test_targets_match_the_renderer_and_the_factor_file(data_root):
    styles = BuiltinStyles.load(data_root)
    params = O._records_to_params(styles.records["val"], 3, "val")
    t = O.oracle_targets(params, RES)
    a, b = render_batch(params, RES)
    assert torch.equal(t.images, b.float().div(127.5).sub(1))
    assert torch.equal(t.outlines, a.float().div(127.5).sub(1))
    assert torch.equal(t.factors["texture"], torch.as_tensor(styles.factor("val", "texture")))
    # every image has a shape, and the mask is neither empty nor the whole image
    frac = t.mask.flatten(1).float().mean(1)
    assert (frac > 0).all() and (frac < 1).all()
    # the outline (black in A) lies next to the mask; most of it on the mask's boundary (next to
    # both inside and outside pixels), the rest where a smaller shape lies on a larger one
    black = (t.outlines[:, 0] < 0)
    inside = t.mask.float().unsqueeze(1)
    near_in = torch.nn.functional.max_pool2d(inside, 3, 1, 1)[:, 0] > 0
    near_out = torch.nn.functional.max_pool2d(1 - inside, 3, 1, 1)[:, 0] > 0
    assert near_in[black].all()
    assert (near_in & near_out)[black].float().mean() > 0.9


def test_records_of_another_renderer_are_refused(data_root):
    styles = BuiltinStyles.load(data_root)
    recs = [dict(r) for r in styles.records["val"]]
    recs[0]["palette"] = (recs[0]["palette"] + 1) % 6
    with pytest.raises(ValueError, match="does not match"):
        O._records_to_params(recs, 3, "val")


def test_iou_and_hue_error():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True
    b[0, :1] = True
    assert O._iou(a, b).tolist() == [0.5, 1.0]  # the second pair: both empty
    err = O._hue_error_deg(torch.tensor([0.95, 0.5]), torch.tensor([0.05, 0.25]))
    assert err.tolist() == pytest.approx([36.0, 90.0])


def test_oracle_learns_and_reports_held_out_accuracy(oracle):
    held = oracle.held_out
    assert set(held) == {"palette", "gradient", "texture", "hue_30deg", "mask_iou"}
    assert all(0.0 <= v <= 1.0 for v in held.values())
    # palette is the easiest factor: far above chance (1/6) even after 60 tiny steps
    assert held["palette"] > 0.5
    pred = oracle.predict(torch.zeros(3, 3, RES, RES))
    assert pred["palette"].shape == (3,) and pred["mask"].shape == (3, RES, RES)
    assert ((pred["confidence"] > 0) & (pred["confidence"] <= 1)).all()
    assert ((pred["hue"] >= 0) & (pred["hue"] < 1)).all()


def test_oracle_is_cached_beside_the_data_set(data_root, oracle):
    path = O.oracle_path(data_root)
    assert path.is_file()
    calls = []
    again = O.load_or_train_oracle(data_root, SMALL, log=calls.append)
    assert calls == []  # loaded, not retrained
    x = torch.rand(4, 3, RES, RES) * 2 - 1
    assert torch.equal(oracle.predict(x)["features"], again.predict(x)["features"])
    # the data set can still be rebuilt with other arguments: the cache is one of its own files
    make_builtin_dataset(data_root, n_train=48, n_val=12, resolution=RES, seed=3)
    assert path.is_file()


def test_an_oracle_of_another_renderer_version_is_retrained(data_root, oracle, monkeypatch):
    from fastep.data import builtin

    monkeypatch.setattr(builtin, "VERSION", builtin.VERSION + 1)
    calls = []
    O.load_or_train_oracle(data_root, SMALL, log=calls.append)  # same settings, other renderer
    assert len(calls) == 1 and "training the style oracle" in calls[0]
    monkeypatch.undo()
    O.load_or_train_oracle(data_root, SMALL)  # leave the module's cache as the other tests expect


class _LookupModel:
    """E(B) = the index of B among known images; G(A, z) = the real rendering of A's shapes in
    image z's style: a perfect translator, to check that the report lines factors up right."""

    def __init__(self, params, res, perfect=True):
        self.params, self.res, self.perfect = params, res, perfect
        t = O.oracle_targets(params, res)
        self.B, self.A = t.images, t.outlines

    def _index(self, x, bank):
        d = (x.unsqueeze(1) - bank.unsqueeze(0)).flatten(2).abs().amax(2)
        return d.argmin(1)

    def E(self, b):
        return self._index(b, self.B).float().unsqueeze(1)

    def G(self, a, z):
        if not self.perfect:
            return torch.zeros(len(a), 3, self.res, self.res)
        ia = self._index(a, self.A).tolist()
        iz = z[:, 0].long().tolist()
        return O.oracle_targets(O._style_swap([self.params[i] for i in ia], [self.params[j] for j in iz]),
                                self.res).images


def test_a_perfect_translator_scores_the_ceiling_and_grey_the_baseline(data_root, oracle):
    styles = BuiltinStyles.load(data_root)
    params = O._records_to_params(styles.records["val"], 3, "val")
    perfect = _LookupModel(params, RES)
    rep = O.translation_report(perfect.G, perfect.E, data_root, oracle,
                               sample_codes={"images": lambda k, g: torch.randint(0, len(params), (k, 1),
                                                                                  generator=g).float()},
                               n_div_inputs=4, n_div_styles=3)
    t = rep["transfer"]
    for k in ("palette", "gradient", "texture", "hue_30deg", "iou"):
        assert t["model"][k] == pytest.approx(t["ceiling_real"][k])
    assert math.isinf(rep["reconstruction"]["model"]["psnr"])
    assert math.isfinite(rep["reconstruction"]["ceiling_real"]["psnr"])  # flat-textured images left out
    assert rep["reconstruction"]["flat_mean_colour"]["psnr"] > rep["reconstruction"]["grey"]["psnr"]
    assert rep["headline"]["palette_transfer"] == t["model"]["palette"]
    assert set(rep["sampling"]) == {"images", "grey", "flat_mean_colour", "dataset_mean", "ceiling_real"}
    # the bad-sample threshold is calibrated on real renderings: 5 % of them fall below it, and
    # about as many of the perfect translator's samples (real renderings too)
    smp = rep["sampling"]
    assert 0 < rep["bad_confidence"] < 1 and "percentile" in rep["bad_confidence_from"]
    assert smp["ceiling_real"]["bad_share"] <= 1 / 12  # 12 real samples: at most one below
    assert smp["images"]["bad_share"] <= 0.25
    lines = O.summary_lines(rep)
    assert any("palette transfer" in ln for ln in lines)

    # an explicit threshold is used as given
    strict = O.translation_report(perfect.G, perfect.E, data_root, oracle, bad_confidence=1.01,
                                  sample_codes={"images": lambda k, g: torch.zeros(k, 1)}, n_div_inputs=2,
                                  n_div_styles=2)
    assert strict["bad_confidence"] == 1.01 and "bad_confidence_from" not in strict
    assert strict["sampling"]["images"]["bad_share"] == 1.0

    grey = _LookupModel(params, RES, perfect=False)
    rep_g = O.translation_report(grey.G, grey.E, data_root, oracle)
    for k in ("palette", "gradient", "texture", "iou"):
        assert rep_g["transfer"]["model"][k] == pytest.approx(rep_g["transfer"]["grey"][k])
    assert rep_g["reconstruction"]["model"]["psnr"] == pytest.approx(rep_g["reconstruction"]["grey"]["psnr"])


def test_transfer_pairs_never_take_their_own_style(data_root, oracle):
    # with a model that ignores the code and reproduces the input's own style, transfer accuracy
    # is what "own style" scores against a different image's factors, not the ceiling
    styles = BuiltinStyles.load(data_root)
    params = O._records_to_params(styles.records["val"], 3, "val")
    m = _LookupModel(params, RES)
    own = lambda a, z: m.G(a, m._index(a, m.A).float().unsqueeze(1))  # noqa: E731
    rep = O.translation_report(own, m.E, data_root, oracle)
    assert rep["transfer"]["model"]["all3"] < rep["transfer"]["ceiling_real"]["all3"]
    assert math.isinf(rep["reconstruction"]["model"]["psnr"])


def test_too_few_validation_images(tmp_path, oracle):
    root = make_builtin_dataset(tmp_path / "one", n_train=8, n_val=1, resolution=RES, seed=3)
    with pytest.raises(ValueError, match="at least 2"):
        O.translation_report(lambda a, z: a, lambda b: b.mean((1, 2, 3)).unsqueeze(1), root, oracle)
