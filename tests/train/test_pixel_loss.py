"""The pixel reconstruction term (lambda_pixel) and the named perceptual layers of LossConfig."""
import pytest
import torch

from fastep.zoo.step.config import LossConfig, ModelConfig, TrainConfig
from fastep.zoo.step.train_step import make_train_step

pytestmark = pytest.mark.usefixtures("one_thread")
RES = 32


def _step(**loss_kw):
    tc = TrainConfig(stage=3, approach="ours_v3", batch_size=2, resolution=RES, device="cpu", compile=False)
    lc = LossConfig.preset("ours_v3", perceptual_backbone="random", **loss_kw)
    return make_train_step(tc, ModelConfig.tiny(resolution=RES), "cpu", loss_cfg=lc)


def _batch():
    g = torch.Generator().manual_seed(7)
    return torch.rand(2, 3, RES, RES, generator=g) * 2 - 1, torch.rand(2, 3, RES, RES, generator=g) * 2 - 1


def test_pixel_term_is_the_mean_absolute_error_of_the_direct_reconstruction():
    step = _step(lambda_pixel=5.0)
    A, B = _batch()
    with torch.no_grad():
        expect = (step.G(A, step.E(B)) - B).abs().mean()  # the weights before the update
    out = step(A, B)
    assert float(out["pixel"]) == pytest.approx(float(expect), rel=1e-5)
    assert float(out["rec"]) > 0  # the perceptual term is still on


def test_paper_weights_leave_the_pixel_term_off():
    assert LossConfig.preset("ours_v3").lambda_pixel == 0.0
    out = _step()(*_batch())
    assert float(out["pixel"]) == 0.0


def test_zero_perceptual_weight_skips_the_backbone(monkeypatch):
    step = _step(lambda_rec=0.0, lambda_pixel=1.0)
    calls = []
    real = step.perceptual.features
    monkeypatch.setattr(step.perceptual, "features", lambda x: calls.append(1) or real(x))
    out = step(*_batch())
    assert calls == [] and float(out["rec"]) == 0.0 and float(out["pixel"]) > 0


def test_named_perceptual_layers_stop_early():
    step = _step(perceptual_layers=("relu1_2", "relu2_2"), perceptual_weights=(1.0, 1.0))
    feats = step.perceptual.features(torch.zeros(1, 3, RES, RES))
    assert len(feats) == 2 and feats[1].shape[1] == 128
    with pytest.raises(ValueError, match="one per layer"):
        LossConfig(perceptual_layers=("relu1_2",), perceptual_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="lambda_pixel"):
        LossConfig(lambda_pixel=-1.0)


def test_texture_term_is_the_gram_distance_and_ignores_where_the_pattern_falls():
    from fastep.ops.gram import gram

    step = _step(lambda_texture=1e6, perceptual_layers=("relu1_2", "relu2_2"), perceptual_weights=(1.0, 0.5))
    A, B = _batch()
    P = step.perceptual
    with torch.no_grad():
        fake = step.G(A, step.E(B))
        fx, fy = P.features(fake), P.features(B)
        expect = sum(w * (gram(a) - gram(b)).square().mean() for w, a, b in zip((1.0, 0.5), fx, fy))
    out = step(A, B)
    assert float(out["texture"]) == pytest.approx(float(expect), rel=1e-4)
    # stripes moved by half a period: (nearly) the same Gram statistics, very different pixels
    x = torch.arange(RES).float()
    stripes = torch.sin(x * 3.14159 / 2).sign().view(1, 1, 1, RES).expand(1, 3, RES, RES) * 0.5
    shifted = stripes.roll(2, 3)
    flat = torch.zeros_like(stripes)
    with torch.no_grad():
        fs = P.features(stripes)
        d_shift = float(P.texture_distance(P.features(shifted), fs))
        d_flat = float(P.texture_distance(P.features(flat), fs))
    assert d_shift < 0.1 * d_flat


def test_cycle_reconstruction_gets_the_pixel_term_too():
    tc = TrainConfig(stage=3, approach="ours_v1", batch_size=2, resolution=RES, device="cpu", compile=False)
    lc = LossConfig.preset("ours_v1", perceptual_backbone="random", lambda_rec=0.0, lambda_pixel=2.0)
    step = make_train_step(tc, ModelConfig.tiny(resolution=RES), "cpu", loss_cfg=lc)
    A, B = _batch()
    with torch.no_grad():
        z = step.E(B)
        direct = (step.G(A, z) - B).abs().mean()
        cycle = (step.G(A, step.E(step.G(A, z.roll(1, 0))).roll(-1, 0)) - B).abs().mean()
    out = step(A, B)
    assert float(out["pixel"]) == pytest.approx(float(direct), rel=1e-4)
    assert float(out["cyc_pixel"]) == pytest.approx(float(cycle), rel=1e-4)
    assert float(out["cyc"]) == 0.0  # no perceptual cycle term at lambda_rec = 0
