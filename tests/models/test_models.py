"""StEP networks: shapes and MACs at 256 x 256 (meta device), small real forwards, bf16 safety."""
import copy

import pytest
import torch

from fastep.nn.layers import (EqConv2d, EqLinear, InstanceNorm, count_macs, instance_norm, minibatch_stddev,
                              pixel_norm)
from fastep.zoo.step import Generator, ModelConfig, MultiScaleDiscriminator, StyleEncoder, build_models

SPEC_GMAC = {"G": 20.6, "E": 7.1, "D": 1.1}  # docs/step.md, per image, forward, 256 x 256


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
    # widths of the official architecture (docs/step.md): decoder residual blocks at 264, first up-block conv 528 -> 128, to_rgb 72 -> 3
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
    assert abs(gmac - SPEC_GMAC[name]) / SPEC_GMAC[name] < 0.10, f"{name}: {gmac:.2f} GMAC vs docs/step.md {SPEC_GMAC[name]}"


README_MPARAMS = {"G": 11.1, "E": 1.9, "D": 2.1}  # the README's parameter counts (paper widths)


def test_parameter_counts_match_readme():
    G, E, D = _meta_models()
    for name, m in zip("GED", (G, E, D)):
        assert round(sum(p.numel() for p in m.parameters()) / 1e6, 1) == README_MPARAMS[name], name


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


# bf16 unit roundoff (8-bit significand, round to nearest): |fl(v) - v| <= U16 * |v|
U16 = 2.0 ** -8
U32 = 2.0 ** -24


def _abs_copy(m):
    """``m`` with |weights| and |bias|: its output on |x| is the sum of |w_i x_i| + |b| that
    bounds the rounding error of a dot product (Higham, Accuracy and Stability, sec. 3.1)."""
    a = copy.deepcopy(m)
    with torch.no_grad():
        for p in a.parameters():
            p.abs_()
    return a


def _bf16_layer_errors(nets, run):
    """Run ``run()`` under CPU bf16 autocast and check every layer against its float32 result
    on the same (bf16) input.  Returns the worst error / bound ratio per layer kind.

    Why per layer: end to end the bf16 and fp32 outputs of an untrained net differ by up to
    1.16 on some seeds, but the fp32 net does the same when only its *input* is rounded to bf16
    (0.4-0.7 on those seeds): every pixel norm after a ReLU maps a pixel whose channels are
    all nearly 0 to unit RMS, so its output there is the direction of the rounding noise
    (gain ~ typical RMS / that pixel's RMS, 1e2-1e3 at the worst pixels).  That is the
    network's conditioning, not a precision fault, and no end-to-end tolerance both holds and
    means anything.  What bf16 safety does mean, and what this checks, is that every layer
    is computed to bf16 accuracy:
      conv / linear (bf16 operands, fp32 accumulation, bf16 output): with A = sum|w_i x_i|,
        |y16 - y32| <= U16*A (weights rounded) + U16*|b| + U16*|y32| (output rounded)
                       + K*U32*A (fp32 accumulation of K terms), to first order in U16;
      norms (computed in fp32, one rounding at the end): |y16 - y32| <= U16*|y32| + 1e-5.
    """
    worst = {}
    seen = []
    inside = []

    def hook(m, args, out):
        if inside:  # the reference calls below
            return
        inside.append(m)
        try:
            check(m, args[0].detach(), out)
        finally:
            inside.pop()

    def check(m, x, out):
        with torch.autocast("cpu", enabled=False), torch.no_grad():
            xr = x.to(torch.bfloat16).float()  # what autocast feeds the op
            ref = m(xr)
            if isinstance(m, InstanceNorm):
                kind, bound = "norm", U16 * ref.abs() + 1e-5
            else:
                k = xr[0].numel() if isinstance(m, EqLinear) else m.in_ch * m.kernel ** 2
                a = _abs_copy(m)
                bias = a.bias if a.bias is not None else torch.zeros(())
                acc = a(xr.abs()) - bias.view(-1, *([1] * (ref.dim() - 2)))
                kind = "linear" if isinstance(m, EqLinear) else "conv"
                bound = (U16 + k * U32) * acc + U16 * bias.view(-1, *([1] * (ref.dim() - 2))) + U16 * ref.abs()
                bound = bound * (1 + 4 * U16) + 1e-30  # second-order terms
        assert out.dtype == torch.bfloat16, (m, out.dtype)
        r = ((out.float() - ref).abs() / bound).max().item()
        worst[kind] = max(worst.get(kind, 0.0), r)
        seen.append(kind)

    kinds = (EqConv2d, EqLinear, InstanceNorm)
    hs = [m.register_forward_hook(hook) for net in nets for m in net.modules() if isinstance(m, kinds)]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run()
    finally:
        for h in hs:
            h.remove()
    assert {"conv", "norm"} <= set(seen)
    return worst, out


def test_bf16_autocast_is_safe():
    """Every layer of G, E and D computes to bf16 accuracy under autocast (see
    _bf16_layer_errors for why the check is per layer); outputs finite, in bf16, G's in [-1, 1]."""
    G = Generator(nf=8, n_res=1)
    E = StyleEncoder(nf=8)
    D = MultiScaleDiscriminator(nf=8, scales=2)
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    z = torch.randn(2, 8)
    pre = {}
    h = G.to_rgb.register_forward_hook(lambda m, i, o: pre.setdefault("rgb", o))
    try:
        worst, (y, outs, code) = _bf16_layer_errors((G, E, D), lambda: (lambda y: (y, D(a, y), E(y)))(G(a, z)))
    finally:
        h.remove()
    assert set(worst) == {"conv", "norm", "linear"}
    assert all(v <= 1.0 for v in worst.values()), worst
    assert y.dtype == torch.bfloat16 and y.abs().max() <= 1
    assert torch.isfinite(y.float()).all() and all(torch.isfinite(o.float()).all() for o in outs)
    assert torch.isfinite(code.float()).all()
    # the final tanh: one bf16 rounding of tanh of its (bf16) input
    assert _rounding_ratio(y, torch.tanh(pre["rgb"].double())) <= 1.0


def _rounding_ratio(got, ref):
    """max |got - ref| / (U16*|ref| + 1e-5): <= 1 iff ``got`` is ``ref`` rounded once to bf16
    (plus float32-level error)."""
    return ((got.double() - ref).abs() / (U16 * ref.abs() + 1e-5)).max().item()


def test_norms_compute_in_fp32():
    """instance_norm / pixel_norm on bf16 input: the float64 result rounded once to bf16.

    Inputs carry a mean offset of 8 std per channel (as conv outputs after a ReLU do), so a norm
    whose mean or variance is formed in bf16 misses by a few percent (bf16 spacing near 8 is
    1/16 of the std), far outside U16*|y|."""
    x = (torch.randn(2, 4, 8, 8) + 8 * torch.rand(1, 4, 1, 1) + 4).to(torch.bfloat16)
    w, b = torch.rand(4) + 0.5, torch.randn(4)
    got = instance_norm(x, w, b)
    ref = torch.nn.functional.instance_norm(x.double(), weight=w.double(), bias=b.double(), eps=1e-5)
    assert got.dtype == torch.bfloat16
    assert _rounding_ratio(got, ref) <= 1.0
    x = (torch.randn(2, 4, 8, 8) * 300).to(torch.bfloat16)
    pn = pixel_norm(x)
    ref = x.double() / (x.double().square().mean(1, keepdim=True) + 1e-8).sqrt()
    assert pn.dtype == torch.bfloat16
    assert _rounding_ratio(pn, ref) <= 1.0


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
