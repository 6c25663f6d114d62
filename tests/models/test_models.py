"""StEP networks: shapes and MACs at 256 x 256 (meta device), small real forwards, bf16 safety."""
import pytest
import torch

from fastep.models import (EqConv2d, Generator, MultiScaleDiscriminator, StyleEncoder, count_macs,
                           instance_norm, minibatch_stddev, pixel_norm)
from fastep.train.config import ModelConfig
from fastep.train.step import build_models

SPEC_GMAC = {"G": 20.6, "E": 7.1, "D": 1.1}  # SPEC.md, per image, forward, 256 x 256


def _meta_models():
    return build_models(ModelConfig(), "meta")


def test_shapes_at_256_on_meta():
    G, E, D = _meta_models()
    a = torch.zeros(2, 3, 256, 256, device="meta")
    z = torch.zeros(2, 8, device="meta")
    assert G(a, z).shape == (2, 3, 256, 256)
    feats = G.encode(a)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 256, 256), (64, 128, 128), (128, 64, 64),
                                                   (256, 32, 32), (256, 32, 32)]
    assert E(a).shape == (2, 8)
    outs = D(a, a)
    assert [tuple(o.shape) for o in outs] == [(2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8)]
    # widths per SPEC: decoder residual blocks at 264, first up-block conv 528 -> 128, to_rgb 72 -> 3
    assert G.dec_res[0].conv0.in_ch == 264
    assert (G.up[0].conv0.in_ch, G.up[0].conv0.out_ch) == (528, 128)
    assert (G.to_rgb.in_ch, G.to_rgb.out_ch, G.to_rgb.kernel) == (72, 3, 1)
    assert E.widths == [64, 128, 192, 256]
    d0 = D.scales[0]
    assert [(c.in_ch, c.out_ch, c.stride) for c in d0.convs] == [(6, 32, 2), (32, 64, 2), (64, 128, 2), (129, 256, 1)]
    assert (d0.logits.in_ch, d0.logits.out_ch) == (256, 1)


@pytest.mark.parametrize("name", ["G", "E", "D"])
def test_macs_match_spec(name):
    G, E, D = _meta_models()
    a = torch.zeros(1, 3, 256, 256, device="meta")
    z = torch.zeros(1, 8, device="meta")
    macs = {"G": lambda: count_macs(G, a, z), "E": lambda: count_macs(E, a), "D": lambda: count_macs(D, a, a)}[name]()
    gmac = macs / 1e9
    assert abs(gmac - SPEC_GMAC[name]) / SPEC_GMAC[name] < 0.10, f"{name}: {gmac:.2f} GMAC vs SPEC {SPEC_GMAC[name]}"


def test_small_forward_values_and_grads():
    G = Generator(nf=8, n_res=1)
    E = StyleEncoder(nf=8, logvar=True)
    D = MultiScaleDiscriminator(nf=8, scales=2)
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    z = torch.randn(2, 8)
    y = G(a, z)
    assert y.shape == a.shape and y.abs().max() <= 1
    mu, logvar = E.stats(y)
    assert mu.shape == logvar.shape == (2, 8)
    torch.testing.assert_close(E(y), mu)
    outs = D(a, y)
    assert [tuple(o.shape) for o in outs] == [(2, 1, 4, 4), (2, 1, 2, 2)]
    loss = sum(o.square().mean() for o in outs) + mu.square().mean()
    loss.backward()
    for m in (G, E, D):
        for n, p in m.named_parameters():
            if n.startswith("fc_logvar"):
                continue
            assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_z_changes_output_and_channels_last_matches():
    torch.manual_seed(0)
    G = Generator(nf=8, n_res=1)
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    z = torch.randn(2, 8)
    y = G(a, z)
    assert (G(a, z + 1) - y).abs().max() > 1e-4
    G2 = Generator(nf=8, n_res=1)
    G2.load_state_dict(G.state_dict())
    G2.to(memory_format=torch.channels_last)
    y2 = G2(a.contiguous(memory_format=torch.channels_last), z)
    torch.testing.assert_close(y2, y, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_is_safe():
    torch.manual_seed(0)
    G = Generator(nf=8, n_res=1)
    E = StyleEncoder(nf=8)
    D = MultiScaleDiscriminator(nf=8, scales=2)
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    z = torch.randn(2, 8)
    ref = G(a, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = G(a, z)
        outs = D(a, y)
        code = E(y)
    assert y.dtype == torch.bfloat16
    assert torch.isfinite(y.float()).all() and all(torch.isfinite(o.float()).all() for o in outs)
    assert torch.isfinite(code.float()).all()
    assert (y.float() - ref).abs().max() < 0.15


def test_norms_compute_in_fp32():
    x = (torch.randn(2, 4, 8, 8) * 300).to(torch.bfloat16)  # squares overflow nothing, but sums lose precision
    w, b = torch.rand(4) + 0.5, torch.randn(4)
    got = instance_norm(x, w, b)
    ref = torch.nn.functional.instance_norm(x.double(), weight=w.double(), bias=b.double(), eps=1e-5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, atol=0.05, rtol=0.02)
    pn = pixel_norm(x)
    assert pn.dtype == torch.bfloat16
    torch.testing.assert_close(pn.double().square().mean(1), torch.ones(2, 8, 8, dtype=torch.float64), atol=0.03, rtol=0)


def test_minibatch_stddev_channel():
    x = torch.randn(4, 3, 5, 5)
    y = minibatch_stddev(x)
    assert y.shape == (4, 4, 5, 5)
    expect = torch.sqrt(x.double().var(0, unbiased=False) + 1e-8).mean()
    torch.testing.assert_close(y[:, 3].double(), expect.expand(4, 5, 5))
    torch.testing.assert_close(y[:, :3], x)


@pytest.mark.parametrize("k,s,hw", [(4, 1, 7), (4, 2, 8), (3, 2, 8), (7, 1, 6), (1, 1, 5), (3, 1, 5)])
def test_eqconv_same_padding(k, s, hw):
    conv = EqConv2d(3, 5, k, s)
    y = conv(torch.randn(1, 3, hw, hw))
    assert y.shape[-1] == -(-hw // s)


def test_equalized_lr_scaling():
    conv = EqConv2d(16, 8, 3, slope=0.2)
    assert abs(conv.weight.std().item() - 1.0) < 0.1  # stored ~N(0, 1)
    assert conv.scale == pytest.approx((2 / 1.04) ** 0.5 / (16 * 9) ** 0.5)


def test_bad_inputs_name_the_argument():
    G = Generator(nf=8, n_res=1)
    with pytest.raises(ValueError, match="A"):
        G(torch.zeros(1, 4, 32, 32), torch.zeros(1, 8))
    with pytest.raises(ValueError, match="z"):
        G(torch.zeros(1, 3, 32, 32), torch.zeros(1, 7))
    with pytest.raises(ValueError, match="multiples of 8"):
        G(torch.zeros(1, 3, 36, 36), torch.zeros(1, 8))
    with pytest.raises(TypeError, match="A"):
        G(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, 8))
    E = StyleEncoder(nf=8)
    with pytest.raises(RuntimeError, match="logvar"):
        E.stats(torch.zeros(1, 3, 32, 32))
    D = MultiScaleDiscriminator(nf=8, scales=2)
    with pytest.raises(ValueError, match="same"):
        D(torch.zeros(1, 3, 32, 32), torch.zeros(2, 3, 32, 32))


def test_model_config_validation():
    with pytest.raises(ValueError, match="resolution"):
        ModelConfig(resolution=40)
    with pytest.raises(ValueError, match="g_nf"):
        ModelConfig(g_nf=0)
    with pytest.raises(TypeError, match="g_skips"):
        ModelConfig(g_skips=1)
    tiny = ModelConfig.tiny()
    assert ModelConfig.from_dict(__import__("dataclasses").asdict(tiny)) == tiny
    G, E, D = build_models(tiny, "cpu", seed=3)
    G2, _, _ = build_models(tiny, "cpu", seed=3)
    for p, q in zip(G.parameters(), G2.parameters()):
        assert torch.equal(p, q)
