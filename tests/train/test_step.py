"""The one training step: presets, stages, optimizers, EMA, LR scale, state, compile (tiny, CPU)."""
import dataclasses

import pytest
import torch

from fastep.zoo.step.config import APPROACHES, LossConfig, ModelConfig, OptimConfig, TrainConfig
from fastep.zoo.step.nets import build_models
from fastep.zoo.step.train_step import LOSS_KEYS, TrainStep, make_train_step

RES = 32
BATCH = 2

# The paper's Table 4, written out here independently of the code: the terms each approach has on.
TABLE_4 = {
    "bicycle_v1": {"dir_recon", "d_dir", "d_rand_z", "z_recon", "z_kl", "vae"},
    "bicycle_v2": {"dir_recon", "cyc_recon", "d_dir", "d_rand_z", "z_recon", "z_kl", "vae"},
    "ours_v1": {"dir_recon", "cyc_recon", "d_dir", "d_rand_z", "z_recon", "z_l2", "pretrained_e"},
    "ours_v2": {"dir_recon", "d_dir", "d_rand_z", "z_recon", "z_l2", "pretrained_e"},
    "ours_v3": {"dir_recon", "d_dir", "z_l2", "pretrained_e"},
    "ours_v4": {"dir_recon", "d_dir", "pretrained_e"},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tests: see tests/conftest.py


def _losscfg(name, **kw):
    # a tiny overfit case: seeded random VGG, reconstruction weighted up so it dominates the GAN term
    base = dict(perceptual_backbone="random", perceptual_act_scale=1.0, lambda_rec=1000.0)
    base.update(kw)
    return LossConfig.preset(name, **base)


def _step(name="ours_v3", stage=3, **tkw):
    tc = TrainConfig(stage=stage, approach=name, batch_size=BATCH, resolution=RES, device="cpu",
                     compile=tkw.pop("compile", False), **tkw)
    return make_train_step(tc, ModelConfig.tiny(resolution=RES), "cpu", loss_cfg=_losscfg(name))


def _batch(n=BATCH):
    g = torch.Generator().manual_seed(1234)
    A = torch.rand(n, 3, RES, RES, generator=g) * 2 - 1
    B = torch.rand(n, 3, RES, RES, generator=g) * 2 - 1
    return A, B


@torch.no_grad()
def _recon_error(step, A, B):
    """Deterministic reconstruction error G(A, mu(B)) vs B under the step's perceptual distance."""
    p = step.perceptual
    out = step.G(A, step.E(B))
    return float(p.distance(p.features(out), p.features(B)))


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize("name", APPROACHES)
def test_presets_match_table(name):
    cfg = LossConfig.preset(name)
    assert {f for f, on in cfg.table_row().items() if on} == TABLE_4[name]
    assert set(cfg.table_row()) == {"dir_recon", "cyc_recon", "d_dir", "d_rand_z", "z_recon", "z_l2", "z_kl", "vae",
                                    "pretrained_e"}
    assert cfg.name == name
    assert (cfg.lambda_gan, cfg.lambda_rec, cfg.lambda_z_l2) == (1.0, 0.02, 0.01)
    # without a prior, random z is another training image's code
    assert cfg.random_z_mode == ("prior" if cfg.z_kl else "batch")


def test_preset_names_and_errors():
    assert LossConfig.preset("MUNIT-p") == LossConfig.preset("bicycle_v2")
    assert LossConfig.preset("Ours v3").name == "ours_v3"
    assert LossConfig.preset("bicycle_v1.3").z_l2 and not LossConfig.preset("bicycle_v1.3").z_kl
    with pytest.raises(ValueError, match="unknown approach"):
        LossConfig.preset("ours_v9")
    with pytest.raises(ValueError, match="random_z"):
        LossConfig(random_z="sometimes")
    with pytest.raises(ValueError, match="vae"):
        LossConfig(vae=True, z_kl=False)
    with pytest.raises(ValueError, match="lambda_rec"):
        LossConfig(lambda_rec=-1.0)
    with pytest.raises(TypeError, match="dir_recon"):
        LossConfig(dir_recon="yes")


def test_optim_and_train_config():
    oc = OptimConfig()
    assert (oc.lr_ge, oc.lr_d, oc.lr_g, oc.betas) == (1e-3, 1e-3, 1e-4, (0.0, 0.99))
    with pytest.raises(ValueError, match="betas"):
        OptimConfig(betas=(0.5, 1.5))
    tc = TrainConfig()
    assert (tc.ema, tc.compile, tc.amp, tc.channels_last, tc.fused_adam, tc.cuda_graphs) == (0.999, True, True, True,
                                                                                         True, False)
    base = TrainConfig(eager_fp32=True)
    assert not (base.compile or base.amp or base.channels_last or base.fused_adam or base.cuda_graphs)
    with pytest.raises(ValueError, match="stage"):
        TrainConfig(stage=4)
    with pytest.raises(ValueError, match="approach"):
        TrainConfig(approach="nope")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="resolution"):
        TrainConfig(resolution=50)
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)
    d = dataclasses.asdict(TrainConfig(stage=3, approach="ours_v1"))
    assert TrainConfig.from_dict(d) == TrainConfig(stage=3, approach="ours_v1")
    assert TrainConfig(stage=3).total_kimg == 700 and TrainConfig(stage=2).total_kimg == 250


# ----------------------------------------------------------------------------- the six approaches

@pytest.mark.parametrize("name", APPROACHES)
def test_each_approach_trains_on_a_tiny_overfit_case(name):
    step = _step(name, stage=3)
    A, B = _batch()
    E0 = [p.detach().clone() for p in step.E.parameters()]
    before = _recon_error(step, A, B)
    hist = [step(A, B) for _ in range(6)]
    for h in hist:
        assert set(h) == set(LOSS_KEYS)
        for k, v in h.items():
            assert v.dim() == 0 and v.dtype == torch.float32 and not v.requires_grad, k
            assert torch.isfinite(v), (k, v)
    cfg = step.loss_cfg
    # the terms that are on are non-zero, the ones that are off are exactly zero
    assert (float(hist[0]["cyc"]) != 0) == cfg.cyc_recon
    assert (float(hist[0]["z_recon"]) != 0) == cfg.z_recon
    assert (float(hist[0]["g2_gan"]) != 0) == cfg.d_rand_z
    assert (float(hist[0]["z_kl"]) != 0) == cfg.z_kl
    assert (float(hist[0]["z_l2"]) != 0) == cfg.z_l2
    assert (step.opt_g2 is not None) == (cfg.d_rand_z or cfg.z_recon)
    # falling losses: D's loss and the deterministic reconstruction error of the batch
    assert float(hist[-1]["loss_d"]) < float(hist[0]["loss_d"])
    after = _recon_error(step, A, B)
    assert after < before, (before, after)
    # stage 3 trains E
    assert any(not torch.equal(p, q) for p, q in zip(E0, step.E.parameters()))
    assert step.step_count == 6 and step.images_per_call == BATCH


@pytest.mark.parametrize("name", ["ours_v2", "bicycle_v2"])
def test_stage2_leaves_E_bit_identical(name):
    with pytest.warns(UserWarning, match="from scratch") if name.startswith("bicycle") else _nullctx():
        step = _step(name, stage=2)
    A, B = _batch()
    E0 = {k: v.clone() for k, v in step.E.state_dict().items()}
    G0 = [p.detach().clone() for p in step.G.parameters()]
    D0 = [p.detach().clone() for p in step.D.parameters()]
    for _ in range(2):
        losses = step(A, B)
    assert all(torch.isfinite(v) for v in losses.values())
    for k, v in step.E.state_dict().items():
        assert torch.equal(v, E0[k]), k
    assert all(not p.requires_grad for p in step.E.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(G0, step.G.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(D0, step.D.parameters()))


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ----------------------------------------------------------------------------- mechanics

def test_g_only_optimizer_shares_G_storage_and_gets_only_random_z_grads():
    step = _step("ours_v2", stage=3)
    assert step.opt_g2 is not None
    shadows = step.opt_g2.param_groups[0]["params"]
    for s, p in zip(shadows, step.G.parameters()):
        assert s.data_ptr() == p.data_ptr() and s is not p
    A, B = _batch()
    # the G-only Adam alone (others at lr 0) must move G; the G+E Adam alone too
    step.opt_ge.param_groups[0]["lr"] = 0.0
    step.opt_d.param_groups[0]["lr"] = 0.0
    G0 = [p.detach().clone() for p in step.G.parameters()]
    E0 = [p.detach().clone() for p in step.E.parameters()]
    step(A, B)
    assert any(not torch.equal(p, q) for p, q in zip(G0, step.G.parameters()))
    # the random-z terms never reach E (E frozen inside the G-only branch) and E's Adam is at lr 0
    assert all(torch.equal(p, q) for p, q in zip(E0, step.E.parameters()))
    # the shadow gradients equal d(loss_G2)/dG computed separately
    noise = step._noise(BATCH)
    Acl = A.contiguous(memory_format=step.memory_format)
    Bcl = B.contiguous(memory_format=step.memory_format)
    for o in step.optimizers:
        o.zero_grad(set_to_none=True)
    total, logs = step._forward(Acl, Bcl, noise)
    total.backward()
    got = [s.grad.clone() for s in shadows]
    # reference, written from the definition (not from the step's helpers): LSGAN G term over the
    # D scales + L1 code recovery, through G's own parameters (the codes are detached; the
    # gradient is taken w.r.t. G only, so D's and E's parameters are constants here)
    with torch.no_grad():
        z = step.E(Bcl).float()
    z_rand = z.roll(1, 0)
    fake = step.G(Acl, z_rand)
    gan = sum((o - 1).square().mean() for o in step.D(Acl, fake))
    cfg = step.loss_cfg
    loss_g2 = cfg.lambda_gan * gan + cfg.lambda_z_recon * (step.E(fake) - z_rand).abs().mean()
    torch.testing.assert_close(loss_g2.detach(), logs["loss_g2"])
    ref = torch.autograd.grad(loss_g2, list(step.G.parameters()))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_lr_scale_zero_freezes_and_ema_follows():
    step = _step("ours_v4", stage=3, ema=0.5)
    A, B = _batch()
    step.set_lr_scale(0.0)
    G0 = [p.detach().clone() for p in step.G.parameters()]
    step(A, B)
    assert all(torch.equal(p, q) for p, q in zip(G0, step.G.parameters()))
    step.set_lr_scale(1.0)
    assert step.opt_ge.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert step.opt_d.param_groups[0]["lr"] == pytest.approx(1e-3)
    ema0 = [p.detach().clone() for p in step.G_ema.parameters()]
    step(A, B)
    for e0, e1, g in zip(ema0, step.G_ema.parameters(), step.G.parameters()):
        torch.testing.assert_close(e1, 0.5 * e0 + 0.5 * g.detach())
    with pytest.raises(ValueError, match="scale"):
        step.set_lr_scale(-1)


def test_state_dict_round_trip_continues_identically():
    A, B = _batch()
    s1 = _step("ours_v2", stage=3, seed=7)
    s1(A, B)
    state = s1.state_dict()
    assert {"G", "E", "D", "G_ema", "E_ema", "opt_ge", "opt_d", "opt_g2", "step"} <= set(state)
    s2 = _step("ours_v2", stage=3, seed=99)
    s2.load_state_dict(state)
    assert s2.step_count == 1
    torch.manual_seed(5)
    l1 = s1(A, B)
    torch.manual_seed(5)
    l2 = s2(A, B)
    for k in LOSS_KEYS:
        assert torch.equal(l1[k], l2[k]), k
    for m1, m2 in ((s1.G, s2.G), (s1.E, s2.E), (s1.D, s2.D), (s1.G_ema, s2.G_ema)):
        for p, q in zip(m1.parameters(), m2.parameters()):
            assert torch.equal(p, q)


def test_bad_batches_and_models():
    step = _step("ours_v1", stage=3)
    A, B = _batch()
    with pytest.raises(ValueError, match="same shape"):
        step(A, B[:1])
    with pytest.raises(ValueError, match="batch size"):
        step(A[:1], B[:1])
    with pytest.raises(TypeError, match="A"):
        step(A.numpy(), B)
    models = build_models(ModelConfig.tiny(resolution=RES), "cpu")
    with pytest.raises(ValueError, match="log-variance"):
        TrainStep(models, LossConfig.preset("bicycle_v1"), TrainConfig(stage=3, resolution=RES, device="cpu"))
    with pytest.raises(ValueError, match="stage"):
        TrainStep(models, LossConfig.preset("ours_v3"), TrainConfig(resolution=RES), stage=1)


def test_eager_fp32_baseline_uses_reference_ops(monkeypatch):
    from fastep import _ext

    seen = []
    real = _ext.backend_for

    def spy(name, device, dtype=None):
        b = real(name, device, dtype)
        seen.append(b)
        return b

    monkeypatch.setattr(_ext, "backend_for", spy)
    step = _step("ours_v3", stage=3, eager_fp32=True)
    assert not step.compiled and step.amp_dtype is None and not step.channels_last
    A, B = _batch()
    losses = step(A, B)
    assert all(torch.isfinite(v) for v in losses.values())
    assert seen and set(seen) == {"reference"}


@pytest.mark.slow
def test_compiled_step_matches_eager_and_has_no_graph_breaks():
    """One tiny compiled step on CPU (aot_eager: Dynamo fullgraph + AOTAutograd backward)."""
    A, B = _batch()
    eager = _step("ours_v3", stage=3, seed=3)
    comp = _step("ours_v3", stage=3, seed=3, compile=True, compile_backend="aot_eager")
    assert comp.compiled
    le = eager(A, B)
    lc = comp(A, B)  # fullgraph=True: any graph break raises
    for k in ("loss_d", "loss_g", "rec", "z_l2"):
        torch.testing.assert_close(lc[k], le[k], rtol=1e-3, atol=1e-6)
    # Adam (beta1 = 0) turns rounding noise in near-zero gradients (conv biases before instance
    # norm) into full lr-sized steps: parameters agree to about one learning rate
    for p, q in zip(eager.G.parameters(), comp.G.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=2.5e-3)
    le2 = eager(A, B)
    lc2 = comp(A, B)  # no recompilation needed for the second step; lr changes do not recompile
    for k in ("loss_d", "loss_g"):
        torch.testing.assert_close(lc2[k], le2[k], rtol=2e-2, atol=1e-4)
    comp.set_lr_scale(0.5)
    lc3 = comp(A, B)
    assert all(torch.isfinite(v) for v in list(lc2.values()) + list(lc3.values()))


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["ours_v3", "bicycle_v2"])
def test_cuda_compiled_bf16_fused_step(name):
    torch.set_num_threads(4)
    tc = TrainConfig(stage=3, approach=name, batch_size=4, resolution=64, device="cuda")
    step = make_train_step(tc, ModelConfig(resolution=64), "cuda",
                           loss_cfg=LossConfig.preset(name, perceptual_backbone="random"))
    assert step.compiled and step.amp_dtype == torch.bfloat16 and step.channels_last
    assert step.opt_ge.defaults.get("fused")
    A = torch.rand(4, 3, 64, 64, device="cuda") * 2 - 1
    B = torch.rand(4, 3, 64, 64, device="cuda") * 2 - 1
    for _ in range(3):
        losses = step(A, B)
    torch.cuda.synchronize()
    assert all(torch.isfinite(v).item() for v in losses.values())
    assert all(v.device.type == "cuda" for v in losses.values())
    assert step.explain(A, B).graph_break_count == 0


@pytest.mark.cuda
def test_cuda_graphs_step_keeps_its_outputs():
    tc = TrainConfig(stage=3, approach="ours_v2", batch_size=4, resolution=64, device="cuda", cuda_graphs=True)
    step = make_train_step(tc, ModelConfig(resolution=64), "cuda",
                           loss_cfg=LossConfig.preset("ours_v2", perceptual_backbone="random"))
    assert step._cudagraphs
    A = torch.rand(4, 3, 64, 64, device="cuda") * 2 - 1
    B = torch.rand(4, 3, 64, 64, device="cuda") * 2 - 1
    hist = [step(A, B) for _ in range(4)]
    torch.cuda.synchronize()
    firsts = [float(h["loss_d"]) for h in hist]  # earlier outputs are still valid after later replays
    assert all(torch.isfinite(torch.tensor(firsts)))
    assert len(set(firsts)) > 1
