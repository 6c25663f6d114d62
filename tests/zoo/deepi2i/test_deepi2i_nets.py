"""DeepI2I networks: every row of the architecture tables (shapes and parameter counts, at paper
size on the meta device), BigGAN state-dict names, spectral norm, hierarchical z, conditional BN,
the encoder/adaptor/fusion wiring, and input checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastep.config import ConfigError
from fastep.zoo.deepi2i import (PRESETS, ConditionalBatchNorm, DBlock, DeepI2IConfig, Encoder, Generator,
                                SNConv2d, SNEmbedding, SNLinear, build_nets, trunk_parameters)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def paper():
    return build_nets(PRESETS["paper"](), "meta")


@pytest.fixture(scope="module")
def cpu_nets():
    torch.manual_seed(0)
    return build_nets(PRESETS["cpu"]())


# ----------------------------------------------------------------------------- counts (paper size)

def test_paper_totals(paper):
    assert n_params(paper["G"]) == 70_433_988
    assert n_params(paper["D"]) == 87_982_370
    assert trunk_parameters(paper["E"]) == 86_444_833
    assert n_params(paper["E"]) == 87_982_370          # the head is kept so that D.pth loads into E
    assert n_params(paper["A"]) == 85_830_528


def test_paper_generator_rows(paper):
    G = paper["G"]
    assert n_params(G.linear) == 516_096
    assert [[n_params(layer) for layer in blk] for blk in G.blocks] == [
        [45_740_544], [17_789_184], [4_618_368], [1_240_128, 46_081], [352_800]]
    assert n_params(G.output_layer) == 2_787
    assert n_params(G.shared) == 128_000


def test_paper_discriminator_and_adaptor_rows(paper):
    D, A = paper["D"], paper["A"]
    assert [[n_params(layer) for layer in blk] for blk in D.blocks] == [
        [86_112, 11_521], [516_672], [2_065_536], [8_259_840], [33_034_752], [42_470_400]]
    assert n_params(D.linear) == 1_537 and n_params(D.embed) == 1_536_000
    assert {s: n_params(b) for s, b in A.levels.items()} == {
        "32": 2_065_536, "16": 8_259_840, "8": 33_034_752, "4": 42_470_400}
    assert not hasattr(A.levels["4"], "conv_sc")       # 1536 -> 1536: identity shortcut
    assert all(hasattr(A.levels[s], "conv_sc") for s in ("32", "16", "8"))


def _biggan_g_params(ch_in, ch_out, z_chunk, shared, n_classes, attention_channels):
    """Closed-form BigGAN generator size: independent arithmetic from the layer definitions."""
    cond = shared + z_chunk
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    total = n_classes * shared + (z_chunk + 1) * ch_in[0] * 16
    for i, o in zip(ch_in, ch_out):
        total += conv(i, o, 3) + conv(o, o, 3) + conv(i, o, 1) + 2 * cond * (i + o)
    total += sum(2 * c * (c // 8) + 2 * c * (c // 2) + 1 for c in attention_channels)
    return total + 2 * ch_out[-1] + conv(ch_out[-1], 3, 3)


@pytest.mark.parametrize("preset", ["paper", "gpu", "cpu"])
def test_preset_sizes_match_closed_form(preset):
    cfg = PRESETS[preset]()
    nets = build_nets(cfg, "meta")
    attn = [cfg.g_out[cfg.g_sides.index(s)] for s in cfg.g_attention]
    assert n_params(nets["G"]) == _biggan_g_params(cfg.g_in, cfg.g_out, cfg.z_chunk, cfg.shared_dim,
                                                   cfg.n_classes, attn)
    assert (cfg.resolution, cfg.g_ch) == {"paper": (128, 96), "gpu": (64, 32), "cpu": (64, 8)}[preset]
    if preset == "gpu":
        assert n_params(nets["D"]) == 4_950_626
        assert n_params(nets["G"]) == 8_440_452


# ----------------------------------------------------------------------------- shapes

def test_paper_shapes(paper):
    x = torch.empty(2, 3, 128, 128, device="meta")
    y = torch.zeros(2, dtype=torch.long, device="meta")
    feats = paper["E"](x)
    assert {s: tuple(f.shape) for s, f in feats.items()} == {
        32: (2, 192, 32, 32), 16: (2, 384, 16, 16), 8: (2, 768, 8, 8), 4: (2, 1536, 4, 4)}
    adapted = paper["A"](feats)
    assert {s: tuple(f.shape) for s, f in adapted.items()} == {
        32: (2, 384, 32, 32), 16: (2, 768, 16, 16), 8: (2, 1536, 8, 8), 4: (2, 1536, 4, 4)}
    out = paper["G"](torch.empty(2, 120, device="meta"), y, adapted)
    assert tuple(out.shape) == (2, 3, 128, 128)
    logits, taps = paper["D"](x, y, return_features=True)
    assert tuple(logits.shape) == (2, 1)
    assert {s: tuple(t.shape) for s, t in taps.items()} == {s: tuple(f.shape) for s, f in feats.items()}


def test_generator_block_sides_paper(paper):
    seen = []
    hooks = [blk[-1].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
             for blk in paper["G"].blocks]
    hooks.append(paper["G"].linear.register_forward_hook(lambda m, i, o: seen.insert(0, tuple(o.shape[1:]))))
    paper["G"](torch.empty(2, 120, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    for h in hooks:
        h.remove()
    assert seen == [(24576,), (1536, 8, 8), (768, 16, 16), (384, 32, 32), (192, 64, 64), (96, 128, 128)]


def test_discriminator_block_sides_paper(paper):
    seen = []
    hooks = [blk[-1].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
             for blk in paper["D"].blocks]
    paper["D"](torch.empty(2, 3, 128, 128, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    for h in hooks:
        h.remove()
    assert seen == [(96, 64, 64), (192, 32, 32), (384, 16, 16), (768, 8, 8), (1536, 4, 4), (1536, 4, 4)]
    assert paper["D"].cfg.taps == {32: 1, 16: 2, 8: 3, 4: 5}       # the second 4 x 4 block is the tap


def test_64_has_three_levels():
    for preset in ("gpu", "cpu"):
        cfg = PRESETS[preset]()
        assert list(cfg.taps) == [16, 8, 4]
        nets = build_nets(cfg, "meta")
        feats = nets["E"](torch.empty(2, 3, 64, 64, device="meta"))
        ch = cfg.d_ch
        assert {s: tuple(f.shape[1:]) for s, f in feats.items()} == {16: (2 * ch, 16, 16), 8: (4 * ch, 8, 8),
                                                                     4: (16 * ch, 4, 4)}
        adapted = nets["A"](feats)
        assert {s: f.shape[1] for s, f in adapted.items()} == {16: 8 * ch, 8: 16 * ch, 4: 16 * ch}


def test_cpu_forward_values(cpu_nets):
    G, D, E, A = (cpu_nets[k] for k in "GDEA")
    torch.manual_seed(1)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    y = torch.tensor([0, 2, 5])
    out = G(torch.randn(3, 120), y, A(E(x)))
    assert out.shape == (3, 3, 64, 64) and torch.isfinite(out).all()
    assert out.abs().max() <= 1 and out.std() > 0.01
    assert D(out, y).shape == (3, 1)


# ----------------------------------------------------------------------------- BigGAN names

def test_paper_state_dict_names(paper):
    g, d = paper["G"].state_dict(), paper["D"].state_dict()
    assert len(g) == 166 and len(d) == 88
    expect_g = {"shared.weight": [1000, 128], "linear.weight": [24576, 20], "linear.bias": [24576],
                "linear.u0": [1, 24576], "linear.sv0": [1],
                "blocks.0.0.conv1.weight": [1536, 1536, 3, 3], "blocks.0.0.conv_sc.weight": [1536, 1536, 1, 1],
                "blocks.0.0.bn1.gain.weight": [1536, 148], "blocks.0.0.bn1.gain.u0": [1, 1536],
                "blocks.0.0.bn2.bias.sv0": [1], "blocks.0.0.bn1.stored_mean": [1536],
                "blocks.0.0.bn1.stored_var": [1536], "blocks.3.1.theta.weight": [24, 192, 1, 1],
                "blocks.3.1.g.u0": [1, 96], "blocks.3.1.o.weight": [192, 96, 1, 1], "blocks.3.1.gamma": [],
                "output_layer.0.gain": [96], "output_layer.0.stored_var": [96],
                "output_layer.2.weight": [3, 96, 3, 3], "output_layer.2.u0": [1, 3]}
    expect_d = {"blocks.0.0.conv1.weight": [96, 3, 3, 3], "blocks.0.1.phi.weight": [12, 96, 1, 1],
                "blocks.5.0.conv2.weight": [1536, 1536, 3, 3], "linear.weight": [1, 1536], "linear.u0": [1, 1],
                "embed.weight": [1000, 1536], "embed.u0": [1, 1000], "embed.sv0": [1]}
    assert {k: list(g[k].shape) for k in expect_g} == expect_g
    assert {k: list(d[k].shape) for k in expect_d} == expect_d
    assert "blocks.5.0.conv_sc.weight" not in d and "blocks.3.1.bias" not in g
    assert all(not k.endswith(("weight_orig", "weight_u", "weight_v")) for k in [*g, *d])
    assert paper["E"].state_dict().keys() == d.keys()


def test_encoder_loads_discriminator_strictly(cpu_nets):
    D = cpu_nets["D"].eval()
    enc = Encoder(D.cfg)
    enc.load_state_dict(D.state_dict(), strict=True)
    enc.eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    _, taps = D(x, torch.tensor([1, 3]), return_features=True)
    feats = enc(x)
    assert feats.keys() == taps.keys()
    assert all(torch.equal(feats[s], taps[s]) for s in feats)
    D.train()


# ----------------------------------------------------------------------------- spectral norm

@pytest.mark.parametrize("make,w_shape", [
    (lambda: SNConv2d(8, 16), (16, 72)),
    (lambda: SNLinear(40, 24), (24, 40)),
    (lambda: SNEmbedding(30, 12), (30, 12)),
])
def test_sn_power_iteration_converges(make, w_shape):
    torch.manual_seed(0)
    layer = make()
    rows, cols = w_shape
    k = min(rows, cols)
    spectrum = 2.0 * 0.8 ** torch.arange(k, dtype=torch.float64)   # known top value 2, gap 0.8
    u_, _ = torch.linalg.qr(torch.randn(rows, k, dtype=torch.float64))
    v_, _ = torch.linalg.qr(torch.randn(cols, k, dtype=torch.float64))
    with torch.no_grad():
        layer.weight.copy_(((u_ * spectrum) @ v_.t()).reshape(layer.weight.shape))
    inp = {SNConv2d: torch.randn(1, 8, 5, 5), SNLinear: torch.randn(2, 40),
           SNEmbedding: torch.tensor([0, 7])}[type(layer)]
    with torch.no_grad():
        for _ in range(50):
            layer(inp)
    w = layer.weight.detach().reshape(w_shape).double()
    sigma = torch.linalg.matrix_norm(w, 2)
    assert abs(layer.sv0.item() - sigma.item()) / sigma.item() < 1e-3
    assert abs(sigma.item() - 2.0) < 1e-5
    assert abs(layer.u0.norm().item() - 1) < 1e-5


def test_sn_forward_is_one_power_iteration_and_eval_stores_nothing():
    torch.manual_seed(0)
    lin = SNLinear(10, 6)
    x = torch.randn(3, 10)
    u = lin.u0.clone().double()
    w = lin.weight.detach().double()
    v = F.normalize(u @ w, dim=1, eps=1e-6)
    u1 = F.normalize(v @ w.t(), dim=1, eps=1e-6)
    sigma = (v @ w.t() @ u1.t()).squeeze()
    out = lin(x)                                           # train mode: one iteration, stored
    torch.testing.assert_close(out.double(), x.double() @ (w / sigma).t() + lin.bias.double(), rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(lin.u0.double(), u1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lin.sv0.double(), sigma.reshape(1), rtol=1e-5, atol=1e-6)
    lin.eval()
    u_before, sv_before = lin.u0.clone(), lin.sv0.clone()
    first = lin(x)
    for _ in range(3):
        assert torch.equal(lin(x), first)                  # a pure function of the state dict
    assert torch.equal(lin.u0, u_before) and torch.equal(lin.sv0, sv_before)
    lin.train()
    lin(x)
    assert not torch.equal(lin.u0, u_before)


def test_sn_estimate_stays_float32_under_autocast():
    torch.manual_seed(0)
    a, b = SNConv2d(4, 8), SNConv2d(4, 8)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, 6, 6)
    a(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = b(x)
    assert out.dtype == torch.bfloat16
    assert b.u0.dtype == torch.float32 and torch.equal(a.u0, b.u0) and torch.equal(a.sv0, b.sv0)


def test_sn_gradient_flows_through_sigma():
    torch.manual_seed(0)
    lin = SNLinear(5, 4)
    lin(torch.randn(2, 5)).sum().backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    assert lin.u0.grad is None


# ----------------------------------------------------------------------------- hierarchical z, ccbn

def test_hierarchical_z_split():
    cfg = PRESETS["paper"]()
    assert (cfg.z_chunks, cfg.z_chunk) == (6, 20)
    assert (PRESETS["cpu"]().z_chunks, PRESETS["cpu"]().z_chunk) == (5, 24)
    torch.manual_seed(0)
    cfg = PRESETS["cpu"]()
    G = Generator(cfg)
    z, y = torch.randn(2, 120), torch.tensor([1, 4])
    got = {}
    G.linear.register_forward_hook(lambda m, i, o: got.__setitem__("linear", i[0]))
    for k, blk in enumerate(G.blocks):
        blk[0].bn1.gain.register_forward_hook(lambda m, i, o, k=k: got.__setitem__(k, i[0]))
    G(z, y)
    assert torch.equal(got["linear"], z[:, :24])
    emb = G.shared(y)
    for k in range(len(G.blocks)):
        assert torch.equal(got[k], torch.cat([emb, z[:, 24 * (k + 1):24 * (k + 2)]], 1))


def test_ccbn_with_zero_gain_and_bias_is_plain_batch_norm():
    # W_g c = W_b c = 0 (a zero condition: zero SN weights would make sigma 0) -> BN without affine
    torch.manual_seed(0)
    bn = ConditionalBatchNorm(6, 10)
    x, c = torch.randn(4, 6, 5, 5), torch.zeros(4, 10)
    rm, rv = torch.zeros(6), torch.ones(6)
    torch.testing.assert_close(bn(x, c), F.batch_norm(x, rm, rv, None, None, True, 0.1, 1e-5))
    torch.testing.assert_close(bn.stored_mean, rm)
    torch.testing.assert_close(bn.stored_var, rv)
    bn.eval()
    torch.testing.assert_close(bn(x, c), F.batch_norm(x, rm, rv, None, None, False, 0.1, 1e-5))
    c = torch.randn(4, 10)                                   # and the general form x * (1 + W_g c) + W_b c
    wg, wb = bn.gain.sn_weight(), bn.bias.sn_weight()
    want = F.batch_norm(x, rm, rv, None, None, False, 0.1, 1e-5) * (1 + c @ wg.t())[:, :, None, None] \
        + (c @ wb.t())[:, :, None, None]
    torch.testing.assert_close(bn(x, c), want)


def test_dblock_first_block_has_no_pre_relu():
    torch.manual_seed(0)
    first = DBlock(3, 8, preactivation=False, downsample=True)
    later = DBlock(3, 8, preactivation=True, downsample=True)
    later.load_state_dict(first.state_dict())
    first.eval(), later.eval()                              # eval: the SN weights stay fixed between calls
    x = -torch.rand(1, 3, 8, 8)                             # all negative: a pre-ReLU zeroes the branch
    with torch.no_grad():
        sc_later = F.avg_pool2d(later.conv_sc(x), 2)
        branch = F.avg_pool2d(later.conv2(F.relu(later.conv1(torch.zeros_like(x)))), 2)
        torch.testing.assert_close(later(x), sc_later + branch)
        assert not torch.allclose(first(x), later(x))


# ----------------------------------------------------------------------------- fusion

def test_zero_adaptor_outputs_give_the_plain_generator(cpu_nets):
    G = cpu_nets["G"].eval()
    z, y = torch.randn(2, 120), torch.tensor([0, 3])
    zeros = {s: torch.zeros(2, G.cfg.g_channels_at(s), s, s) for s in G.cfg.taps}
    assert torch.equal(G(z, y, zeros), G(z, y))
    G.train()


def test_fusion_adds_weighted_features_at_side_4(cpu_nets):
    G = cpu_nets["G"].eval()
    z, y = torch.randn(2, 120), torch.tensor([0, 3])
    f = torch.randn(1, G.cfg.g_channels_at(4), 4, 4)
    got = G(z, y, {4: f.expand(2, -1, -1, -1)})
    bias = G.linear.bias.detach().clone()
    with torch.no_grad():
        G.linear.bias += G.fusion_weights[4] * f.flatten()   # same as adding 0.1 * f after the reshape
        want = G(z, y)
        G.linear.bias.copy_(bias)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not torch.allclose(got, G(z, y), atol=1e-4)
    G.train()


def test_fusion_weights_presets():
    assert PRESETS["paper"]().fusion_weights == {32: 0.1, 16: 0.1, 8: 0.1, 4: 0.1}
    assert PRESETS["gpu"]().fusion_weights == {16: 0.1, 8: 0.1, 4: 0.1}
    assert PRESETS["cpu"]().fusion_weights == {16: 10.0, 8: 3.0, 4: 1.0}  # ch 8: the input needs more weight


# ----------------------------------------------------------------------------- input and config checks

def test_bad_inputs_are_one_line_errors(cpu_nets):
    G, D, A = cpu_nets["G"], cpu_nets["D"], cpu_nets["A"]
    cases = [
        (lambda: G(torch.randn(2, 100), torch.tensor([0, 1])), "z must have shape [2, 120]"),
        (lambda: G(torch.randn(2, 120), torch.tensor([0, 6])), "outside [0, 6)"),
        (lambda: G(torch.randn(2, 120), torch.tensor([0.5, 1.0])), "y (embedded) must have shape [2, 128]"),
        (lambda: G(torch.randn(2, 120), torch.tensor([0, 1]), {32: torch.zeros(2, 32, 32, 32)}),
         "no adaptor level at side 32"),
        (lambda: G(torch.randn(2, 120), torch.tensor([0, 1]), {4: torch.zeros(2, 3, 4, 4)}),
         "features[4] must have shape [2, 128, 4, 4]"),
        (lambda: D(torch.randn(2, 3, 32, 32), torch.tensor([0, 1])), "x must be 64 x 64"),
        (lambda: A({16: torch.zeros(1)}), "Adaptor takes encoder features at sides [16, 8, 4]"),
    ]
    for fn, msg in cases:
        with pytest.raises((ValueError, TypeError)) as err:
            fn()
        assert msg in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kw,msg", [
    ({"resolution": 96}, "valid: 64, 128"),
    ({"dim_z": 100}, "multiple of 6"),
    ({"g_attention": (48,)}, "no block ends at side 48"),
    ({"g_ch": 12}, "multiple of 8"),
    ({"init": "xavier"}, "valid: ortho, N02, glorot, default"),
    ({"fusion": ((4, 0.1), (4, 1.0))}, "names a side twice"),
])
def test_config_validation(kw, msg):
    with pytest.raises(ConfigError, match=None) as err:
        DeepI2IConfig(**kw)
    assert msg in str(err.value)


def test_build_nets_init():
    torch.manual_seed(0)
    nets = build_nets(PRESETS["cpu"]())
    w = nets["G"].blocks[0][0].conv1.weight.detach().flatten(1)      # ortho: rows orthonormal
    torch.testing.assert_close(w @ w.t(), torch.eye(w.shape[0]), rtol=0, atol=1e-4)
    assert all(m.training for m in nets.values())


def test_sn_layers_compile_without_graph_breaks():
    # the power iteration and its buffer updates trace into one graph and match eager bit for bit
    torch.manual_seed(0)
    eager = ConditionalBatchNorm(8, 6)
    compiled = ConditionalBatchNorm(8, 6)
    compiled.load_state_dict(eager.state_dict())
    x, c = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    explained = torch._dynamo.explain(ConditionalBatchNorm(8, 6))(x, c)
    assert explained.graph_break_count == 0
    out = torch.compile(compiled, backend="aot_eager")(x, c)
    assert torch.equal(out, eager(x, c))
    assert all(torch.equal(a, b) for a, b in zip(eager.buffers(), compiled.buffers()))


def test_bn_eps_reaches_the_conditional_norms_only():
    G = Generator(DeepI2IConfig(**{**PRESETS["cpu"]().__dict__, "bn_eps": 1e-4}))
    assert {G.blocks[0][0].bn1.eps, G.blocks[-1][0].bn2.eps} == {1e-4}
    assert G.output_layer[0].eps == 1e-5
