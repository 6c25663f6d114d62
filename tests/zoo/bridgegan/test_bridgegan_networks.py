"""BridgeGAN networks: every row of the architecture tables (shapes), parameter counts at the paper
size, SPADE's zero-modulation identity, input checks.  Paper-size checks run on the meta device."""
import pytest
import torch

from fastep.config import ConfigError
from fastep.nn.layers import instance_norm
from fastep.zoo.bridgegan import BridgeConfig, build_networks
from fastep.zoo.bridgegan.networks import SPADE, ResBlock

pytestmark = pytest.mark.usefixtures("one_thread")


def _count(m):
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def paper_nets():
    with torch.device("meta"):
        return build_networks(BridgeConfig.paper())


def test_parameter_counts_paper(paper_nets):
    n = paper_nets
    assert {k: _count(v) for k, v in n.items()} == {"G": 7_219_011, "M": 121_888, "E": 71_808, "D": 9_613_039}
    assert _count(n["D"].stem) + _count(n["D"].trunk) == 1_220_064
    g = n["G"]
    assert [_count(b) for b in (g.middle_spade, *g.up)] == [2_434_816, 1_435_008, 635_712, 325_152]


def _record(blocks):
    shapes = []
    hooks = [b.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for b in blocks]
    return shapes, hooks


def test_generator_rows(paper_nets):
    g, N = paper_nets["G"], 2
    x = torch.empty(N, 3, 128, 128, device="meta")
    s = torch.empty(N, 32, 64, 64, device="meta")
    blocks = [g.stem, *g.down, g.middle, g.middle_spade, *g.up, g.to_rgb]
    shapes, hooks = _record(blocks)
    sides = []
    spade_hooks = [m.register_forward_pre_hook(lambda m, a: sides.append(a[0].shape[-1]))
                   for m in g.modules() if isinstance(m, SPADE)]
    out = g(x, s)
    for h in hooks + spade_hooks:
        h.remove()
    assert shapes == [(N, 32, 128, 128), (N, 64, 64, 64), (N, 128, 32, 32), (N, 256, 16, 16), (N, 256, 16, 16),
                      (N, 256, 16, 16), (N, 128, 32, 32), (N, 64, 64, 64), (N, 32, 128, 128), (N, 3, 128, 128)]
    assert out.shape == (N, 3, 128, 128)
    # the style map is resized to every SPADE norm's side: 16 (middle and first up), 32, 64, 128
    assert sorted(set(sides)) == [16, 32, 64, 128]


def test_mapping_rows(paper_nets):
    m, N = paper_nets["M"], 2
    shapes, hooks = _record([m.fc, *m.blocks, m.out])
    out = m(torch.empty(N, 16, device="meta"), torch.empty(N, 14, device="meta"))
    for h in hooks:
        h.remove()
    assert m.fc.in_features == 16 + 14
    assert shapes == [(N, 1024), (N, 32, 8, 8), (N, 32, 16, 16), (N, 32, 32, 32), (N, 32, 64, 64), (N, 32, 64, 64)]
    assert out.shape == (N, 32, 64, 64)


def test_encoder_rows(paper_nets):
    e, N = paper_nets["E"], 2
    shapes, hooks = _record([e.stem, *e.blocks, e.out])
    out = e(torch.empty(N, 3, 128, 128, device="meta"), torch.empty(N, 14, device="meta"))
    for h in hooks:
        h.remove()
    assert e.stem.in_channels == 17
    assert shapes == [(N, 16, 128, 128), (N, 32, 64, 64), (N, 32, 64, 64), (N, 32, 64, 64), (N, 32, 64, 64),
                      (N, 32, 64, 64)]
    assert out.shape == (N, 32, 64, 64)


def test_discriminator_rows(paper_nets):
    d, N = paper_nets["D"], 2
    shapes, hooks = _record([d.stem, *d.trunk, d.d_conv, d.c_conv])
    adv, cls = d(torch.empty(N, 3, 128, 128, device="meta"))
    for h in hooks:
        h.remove()
    assert shapes == [(N, 16, 128, 128), (N, 32, 64, 64), (N, 64, 32, 32), (N, 128, 16, 16), (N, 256, 8, 8),
                      (N, 256, 1, 1), (N, 256, 1, 1)]
    assert d.d_conv.kernel_size == (8, 8) and d.d_conv.padding == (0, 0)
    assert adv.shape == (N, 1) and cls.shape == (N, 14)
    assert d.critic(torch.empty(N, 3, 128, 128, device="meta")).shape == (N, 1)


@pytest.mark.parametrize("preset", ["cpu", "half", "tiny"])
def test_small_presets_run(preset):
    cfg = {"cpu": BridgeConfig.cpu, "half": BridgeConfig.half, "tiny": BridgeConfig.tiny}[preset]()
    nets = build_networks(cfg)
    R, N = cfg.resolution, 2
    x = torch.rand(N, 3, R, R) * 2 - 1
    delta = torch.zeros(N, cfg.n_attrs)
    delta[:, 0], delta[:, 1] = 1, -1
    s = nets["M"](torch.randn(N, cfg.noise_dim), delta) + nets["E"](x, -delta)
    assert s.shape == (N, cfg.style_ch, R // 2, R // 2)
    y = nets["G"](x, s)
    assert y.shape == x.shape and y.abs().max() <= 1 and torch.isfinite(y).all()
    adv, cls = nets["D"](y)
    assert adv.shape == (N, 1) and cls.shape == (N, cfg.n_attrs)
    if preset in ("cpu", "half"):
        assert cfg.resolution == {"cpu": 32, "half": 64}[preset] and cfg.n_attrs == 15


def test_spade_with_zero_modulation_is_param_free_instance_norm():
    sp = SPADE(8, 4, hidden=6, eps=1e-6)
    for conv in (sp.gamma, sp.beta):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    x = torch.randn(3, 8, 10, 10) * 3 + 1
    style = torch.randn(3, 4, 5, 5)
    xd = x.double()  # float64 reference of a parameter-free instance norm (statistics over H, W)
    ref = (xd - xd.mean((2, 3), keepdim=True)) / torch.sqrt(xd.var((2, 3), unbiased=False, keepdim=True) + 1e-6)
    torch.testing.assert_close(sp(x, style).double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sp(x, style), instance_norm(x, None, None, 1e-6), rtol=0, atol=0)
    # and with modulation on, the style changes the output
    torch.nn.init.normal_(sp.gamma.weight)
    assert not torch.allclose(sp(x, style).double(), ref, atol=1e-3)


def test_resblock_shortcut_rules():
    assert ResBlock(8, 8).shortcut is None
    assert ResBlock(8, 8, "down").shortcut is not None
    assert ResBlock(8, 16).shortcut is not None
    x = torch.randn(2, 8, 8, 8)
    assert ResBlock(8, 4, "up")(x).shape == (2, 4, 16, 16)
    assert ResBlock(8, 4, "down", norm=False, slope=0.2)(x).shape == (2, 4, 4, 4)


def test_init_is_xavier_with_zero_bias():
    g = build_networks(BridgeConfig.tiny())["G"]
    conv = g.down[0].conv1
    assert torch.count_nonzero(conv.bias) == 0
    fan_in, fan_out = conv.weight.shape[1] * 9, conv.weight.shape[0] * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.5 * bound


def test_bad_inputs_are_named():
    cfg = BridgeConfig.tiny()
    nets = build_networks(cfg)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="G: style must have shape"):
        nets["G"](x, torch.randn(2, cfg.style_ch + 1, 16, 16))
    with pytest.raises(ValueError, match="M: delta must have shape"):
        nets["M"](torch.randn(2, cfg.noise_dim), torch.randn(2, cfg.n_attrs + 1))
    with pytest.raises(ValueError, match="different batch sizes"):
        nets["E"](x, torch.randn(3, cfg.n_attrs))
    with pytest.raises(ValueError, match="D/C: x must be 32 x 32"):
        nets["D"](torch.randn(2, 3, 16, 16))


def test_config_validation_and_round_trip():
    import dataclasses

    cfg = BridgeConfig.cpu()
    assert BridgeConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    with pytest.raises(ValueError, match="power of two"):
        BridgeConfig(resolution=96)
    with pytest.raises(TypeError, match="n_attrs must be an int"):
        BridgeConfig(n_attrs=1.5)
    with pytest.raises(ConfigError, match="unknown BridgeGAN model config key 'width'"):
        BridgeConfig.from_dict({"width": 3})
    assert BridgeConfig.paper().m_n_up == 4 and BridgeConfig.half().m_n_up == 3 and BridgeConfig.cpu().m_n_up == 2


def test_system_entry_builds_presets():
    import fastep.zoo as zoo
    from fastep.zoo.bridgegan import SYSTEM

    assert SYSTEM.train is not None and SYSTEM.run_config is not None and SYSTEM.stages == ("train",)
    for preset in ("paper", "cpu", "half", "tiny"):
        cfg = SYSTEM.presets[preset]()
        assert isinstance(cfg, BridgeConfig)
    assert zoo.get("bridgegan") is SYSTEM
    nets = zoo.build("bridgegan", preset="tiny", n_attrs=7)
    assert set(nets) == {"G", "M", "E", "D"} and nets["D"].c_fc.out_features == 7
    with pytest.raises(ConfigError, match="unknown bridgegan preset 'huge'"):
        zoo.build("bridgegan", preset="huge")


def test_train_cli_paper_preset_on_builtin_data_names_the_attribute_count(capsys, tmp_path):
    from fastep.cli import main

    # the paper's model has CelebA's 14 attributes, the built-in set 15: refused before any work
    assert main(["train", "--system", "bridgegan", "--preset", "paper", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--set model.n_attrs=15" in err, err
    assert not (tmp_path / "o").exists()


def test_loading_an_incomplete_bridgegan_checkpoint_is_a_clear_error():
    import dataclasses

    from fastep.train.checkpoint import Checkpoint, CheckpointError
    from fastep.zoo.bridgegan import SYSTEM, config_from_checkpoint

    ck = Checkpoint(system="bridgegan", stage="train", configs={"model": dataclasses.asdict(BridgeConfig.tiny())})
    with pytest.raises(CheckpointError, match="'x.pt' has no weights for G"):
        SYSTEM.load(ck, torch.device("cpu"), True, "x.pt")
    ck.weights = {k: v.state_dict() for k, v in build_networks(BridgeConfig.tiny()).items()}
    with pytest.raises(CheckpointError, match="no attribute space"):
        SYSTEM.load(ck, torch.device("cpu"), True, "x.pt")

    class Ckpt:
        configs = {"model": {"resolution": 64, "n_attrs": 15}}

    assert config_from_checkpoint(Ckpt()).n_attrs == 15
    Ckpt.configs = {"model": {"resolution": 64, "colour": 1}}
    with pytest.raises(CheckpointError, match="unknown BridgeGAN model config key 'colour'"):
        config_from_checkpoint(Ckpt())


def test_bf16_autocast_forward_is_finite_and_close():
    cfg = BridgeConfig.tiny()
    nets = build_networks(cfg)
    R = cfg.resolution
    x = torch.rand(2, 3, R, R) * 2 - 1
    delta = torch.zeros(2, cfg.n_attrs)
    delta[:, 0] = 1
    r = torch.randn(2, cfg.noise_dim)
    with torch.no_grad():
        ref = nets["G"](x, nets["M"](r, delta) + nets["E"](x, -delta))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = nets["G"](x, nets["M"](r, delta) + nets["E"](x, -delta))
            adv, cls = nets["D"](out)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all() and torch.isfinite(adv).all()
    # bf16 keeps ~3 significant digits per layer; over G's ~25 layers single pixels drift by up to
    # ~0.15 (measured), the mean by ~0.005
    assert (out.float() - ref).abs().mean() < 0.03


def test_code_norm_choices():
    # "affine" (the paper) and "plain" give the same codes at initialisation (IN weight 1, bias 0);
    # "plain" has no parameters there, "none" leaves the codes unnormalised
    torch.manual_seed(0)
    nets = {k: build_networks(BridgeConfig.tiny(code_norm=k)) for k in ("affine", "plain", "none")}
    assert BridgeConfig().code_norm == "affine"
    for name in ("M", "E"):
        n_aff = sum(p.numel() for p in nets["affine"][name].parameters())
        n_plain = sum(p.numel() for p in nets["plain"][name].parameters())
        assert n_aff - n_plain == 2 * BridgeConfig.tiny().style_ch
        assert n_plain == sum(p.numel() for p in nets["none"][name].parameters())
    nets["plain"]["M"].load_state_dict({k: v for k, v in nets["affine"]["M"].state_dict().items()
                                        if not k.startswith("out_norm.")})
    r, delta = torch.randn(3, 4), torch.zeros(3, 5)
    delta[:, 0] = 1
    torch.testing.assert_close(nets["plain"]["M"](r, delta), nets["affine"]["M"](r, delta))
    assert nets["plain"]["E"](torch.rand(3, 3, 32, 32) * 2 - 1, delta).min() >= 0
    # "sample" normalises each code as a whole: no parameters, and the per-channel means may
    # differ between samples (a global attribute can reach G), which "plain" forbids
    sample = build_networks(BridgeConfig.tiny(code_norm="sample"))["M"]
    assert sum(p.numel() for p in sample.parameters()) == sum(p.numel() for p in nets["plain"]["M"].parameters())
    pre = {}
    for name, m in (("plain", nets["plain"]["M"]), ("sample", sample)):
        m.out_norm.register_forward_hook(lambda mod, i, o, name=name: pre.__setitem__(name, o))
        m(torch.randn(4, 4), delta[:1].repeat(4, 1))
    torch.testing.assert_close(pre["sample"].mean((1, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(pre["sample"].var((1, 2, 3), unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    torch.testing.assert_close(pre["plain"].mean((2, 3)), torch.zeros(4, 4), atol=1e-5, rtol=0)
    assert pre["sample"].mean((2, 3)).std(0).max() > 1e-3
    with pytest.raises(ValueError, match="code_norm"):
        BridgeConfig(code_norm="batch")
