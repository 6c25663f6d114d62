"""BridgeGAN codes and losses on tiny nets: formulas on fixed tensors, the weight presets, and
gradient routing (which networks each term reaches)."""
import pytest
import torch

from fastep.config import ConfigError
from fastep.zoo.bridgegan import BridgeConfig, builtin_space, build_networks
from fastep.zoo.bridgegan.losses import (G_TERMS, LossWeights, attribute_bce, attribute_keeping_vector,
                                         discriminator_loss, generator_losses, gradient_penalty, make_codes,
                                         mode_seeking_loss, weighted_total)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_attribute_keeping_truth_table():
    # kept & y_s = 0 -> +1; kept & y_s = 1 -> -1; changed (either direction) -> 0
    y_s = torch.tensor([[0., 1., 0., 1.]])
    y_t = torch.tensor([[0., 1., 1., 0.]])
    a = attribute_keeping_vector(y_t - y_s, y_s)
    assert a.tolist() == [[1., -1., 0., 0.]]


def test_gradient_penalty_of_linear_critic():
    w = torch.randn(3 * 4 * 4, dtype=torch.float64)
    critic = lambda x: (x.flatten(1) @ w)[:, None]  # noqa: E731
    real, fake = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    gp = gradient_penalty(critic, real, fake)
    torch.testing.assert_close(gp, (w.norm() - 1) ** 2)


def test_gradient_penalty_interpolates_and_trains_the_critic():
    lin = torch.nn.Linear(6, 1).double()
    real, fake = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    seen = []
    critic = lambda x: (seen.append(x.detach()), lin(x))[1]  # noqa: E731
    u = torch.rand(4, dtype=torch.float64)
    gp = gradient_penalty(critic, real, fake, u)
    torch.testing.assert_close(seen[0], real + u[:, None] * (fake - real))
    gp.backward()  # create_graph: the penalty reaches the critic's weights
    w = lin.weight.detach()[0]
    torch.testing.assert_close(lin.weight.grad[0], 2 * (w.norm() - 1) * w / w.norm())


def test_attribute_bce_matches_formula():
    logits, labels = torch.randn(3, 5, dtype=torch.float64), torch.randint(0, 2, (3, 5)).double()
    p = torch.sigmoid(logits)
    ref = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    torch.testing.assert_close(attribute_bce(logits, labels), ref)
    with pytest.raises(ValueError, match="same shape"):
        attribute_bce(logits, labels[:, :4])


def test_mode_seeking_formula_and_stop_gradient():
    r, r1 = torch.tensor([[0., 1.]]), torch.tensor([[2., 1.]])
    x = torch.zeros(1, 1, 2, 2, requires_grad=True)
    x1 = torch.full((1, 1, 2, 2), 0.5, requires_grad=True)
    ms = mode_seeking_loss(r, r1, x, x1)
    assert ms.item() == pytest.approx(1.0 / (0.5 + 1e-5))
    ms.backward()
    assert x1.grad is None and x.grad is not None and x.grad.abs().sum() > 0


def test_loss_presets_exactly_as_written():
    t = {k: torch.rand((), dtype=torch.float64) for k in G_TERMS}
    paper = (t["adv"] + 10 * t["cls"] + 100 * t["rec"] + 100 * (t["cyc1"] + t["cyc2"]) / 2 + 50 * t["sty"]
             + 0.005 * t["ms"] + 100 * t["ak"])
    code = (t["adv"] + 10 * t["cls"] + 100 * t["rec"] + 50 * (t["cyc1"] + t["cyc2"] + t["ak"]) / 3 + 50 * t["sty"]
            + 0.005 * t["ms"])
    torch.testing.assert_close(weighted_total(t, LossWeights.preset("paper")), paper)
    torch.testing.assert_close(weighted_total(t, LossWeights.preset("code")), code)
    assert LossWeights.preset("paper").gp == LossWeights.preset("code").gp == 10
    with pytest.raises(ConfigError, match="unknown BridgeGAN loss preset 'other'"):
        LossWeights.preset("other")
    with pytest.raises(ValueError, match="LossWeights.ms must be a non-negative"):
        LossWeights(ms=-1)


@pytest.fixture
def tiny():
    cfg = BridgeConfig.tiny(n_attrs=15)
    nets = build_networks(cfg)
    space = builtin_space()
    N, R = 3, cfg.resolution
    y_s = space.encode({"palette": "vivid", "gradient": "vertical", "texture": "dots"}).repeat(N, 1)
    y_t = space.sample_targets(y_s)
    batch = dict(x_s=torch.rand(N, 3, R, R) * 2 - 1, y_s=y_s, x_t=torch.rand(N, 3, R, R) * 2 - 1, y_t=y_t,
                 r=torch.randn(N, cfg.noise_dim), r1=torch.randn(N, cfg.noise_dim))
    return cfg, nets, batch


def test_codes_are_the_written_sums(tiny):
    cfg, n, b = tiny
    alpha = torch.tensor([0.0, 0.5, 1.0])
    with torch.no_grad():
        c = make_codes(n["E"], n["M"], b["x_s"], b["y_s"], b["x_t"], b["y_t"], b["r"], alpha)
        d = b["y_t"] - b["y_s"]
        zero = torch.zeros_like(d)
        keep = n["E"](b["x_s"], -d)
        torch.testing.assert_close(c.delta, d)
        torch.testing.assert_close(c.S_rand, keep + n["M"](b["r"], d))
        torch.testing.assert_close(c.S_ref, keep + n["E"](b["x_t"], d))
        torch.testing.assert_close(c.S_int[0], c.S_ref[0])
        torch.testing.assert_close(c.S_int[2], c.S_rand[2])
        torch.testing.assert_close(c.S_int[1], (c.S_rand[1] + c.S_ref[1]) / 2)
        torch.testing.assert_close(c.S0_rand, n["E"](b["x_s"], zero) + n["M"](b["r"], zero))
        torch.testing.assert_close(c.S0_ref, n["E"](b["x_s"], zero) + n["E"](b["x_t"], zero))
    assert c.S_rand.shape == (3, cfg.style_ch, cfg.style_side, cfg.style_side)


def _reached(loss, nets):
    for m in nets.values():
        m.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {k for k, m in nets.items()
            if any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())}


# which of G, M, E each generator-side term trains (D also receives gradients from adv/cls/ms
# through its inputs; the generator optimiser does not hold D's parameters)
ROUTES = {
    "adv": {"G", "M", "E"}, "cls": {"G", "M", "E"}, "rec": {"G", "M", "E"},
    "cyc1": {"M", "E"},          # sg(x_rand): G gets nothing from the cycle
    "cyc2": {"E"},               # REM has no M; sg(x_ref)
    "ak": {"G", "M", "E"},       # no stop-gradient: G keeps the untouched attributes
    "sty": {"M", "E"},
    "ms": {"G", "M", "E"},
}


def test_generator_term_routing(tiny):
    _, nets, b = tiny
    terms = generator_losses(nets["G"], nets["M"], nets["E"], nets["D"], **b)
    for name in G_TERMS:
        assert torch.isfinite(terms[name]) and terms[name].dim() == 0
        got = _reached(terms[name], nets) - {"D"}
        assert got == ROUTES[name], f"{name} reaches {sorted(got)}, expected {sorted(ROUTES[name])}"
    for name in ("adv", "cls"):
        assert "D" in _reached(terms[name], nets)
    for name in ("rec", "cyc1", "cyc2", "ak", "sty"):
        assert "D" not in _reached(terms[name], nets)
    total = weighted_total(terms, LossWeights.preset("paper"))
    assert _reached(total, nets) >= {"G", "M", "E"}


def test_generator_terms_formulas(tiny):
    _, n, b = tiny
    alpha = torch.rand(3)
    t = generator_losses(n["G"], n["M"], n["E"], n["D"], alpha=alpha, **b)
    with torch.no_grad():
        c = t["codes"]
        G, E, D = n["G"], n["E"], n["D"]
        x_rand, x_ref, x_int = G(b["x_s"], c.S_rand), G(b["x_s"], c.S_ref), G(b["x_s"], c.S_int)
        torch.testing.assert_close(t["x_rand"], x_rand)
        outs = [D(x) for x in (x_rand, x_ref, x_int)]
        torch.testing.assert_close(t["adv"], -sum(o[0].mean() for o in outs) / 3)
        torch.testing.assert_close(t["cls"], sum(attribute_bce(o[1], b["y_t"]) for o in outs) / 3)
        rec = ((b["x_s"] - G(b["x_s"], c.S0_rand)).abs().mean() + (b["x_s"] - G(b["x_s"], c.S0_ref)).abs().mean()) / 2
        torch.testing.assert_close(t["rec"], rec)
        keep = E(b["x_s"], -c.delta)
        torch.testing.assert_close(t["cyc1"], (c.S_rand - E(x_rand, c.delta) - keep).abs().mean())
        torch.testing.assert_close(t["cyc2"], (c.S_ref - E(x_ref, c.delta) - keep).abs().mean())
        a_ak = attribute_keeping_vector(c.delta, b["y_s"])
        torch.testing.assert_close(t["ak"], (E(x_rand, a_ak) - E(b["x_s"], a_ak)).abs().mean())
        torch.testing.assert_close(t["sty"], (c.S_rand - c.S_ref).abs().mean())
        x1 = G(b["x_s"], keep + n["M"](b["r1"], c.delta))
        ms = (b["r1"] - b["r"]).abs().mean() / ((x1 - x_rand).abs().mean() + 1e-5)
        torch.testing.assert_close(t["ms"], ms)


def test_discriminator_loss_routing_and_value(tiny):
    _, nets, b = tiny
    with torch.no_grad():
        t = generator_losses(nets["G"], nets["M"], nets["E"], nets["D"], **b)
    # fakes that still carry a graph to G must not pass gradients back through it
    live = {k: nets["G"](b["x_s"], getattr(t["codes"], f"S_{k}")) for k in ("rand", "ref", "int")}
    u = {k: torch.rand(3) for k in live}
    out = discriminator_loss(nets["D"], b["x_s"], b["y_s"], live, u=u)
    assert _reached(out["total"], nets) == {"D"}
    D = nets["D"]
    wgan = -(D(b["x_s"])[0].mean() - sum(D(f)[0].mean() for f in live.values()) / 3)
    gp = sum(gradient_penalty(D.critic, b["x_s"], live[k].detach(), u[k]) for k in live) / 3
    cls = attribute_bce(D(b["x_s"])[1], b["y_s"])
    torch.testing.assert_close(out["total"], wgan + 10 * gp + cls)
    torch.testing.assert_close(out["gp"], gp)
    # the classifier's weight in the critic objective (LossWeights.cls_real; 1 in both presets)
    heavy = discriminator_loss(D, b["x_s"], b["y_s"], live, u=u, cls_weight=4.0)
    torch.testing.assert_close(heavy["total"], wgan + 10 * gp + 4 * cls)
    assert LossWeights.preset("paper").cls_real == LossWeights.preset("code").cls_real == 1
    with pytest.raises(ValueError, match="at least one fake"):
        discriminator_loss(D, b["x_s"], b["y_s"], {})


def test_latent_bank_update_formula_and_write_back(tiny):
    from fastep.zoo.bridgegan.losses import LatentBank

    cfg, n, b = tiny
    bank = LatentBank(10, cfg.noise_dim)
    before = bank.r.clone()
    idx = torch.tensor([7, 2, 4])
    delta = b["y_t"] - b["y_s"]
    r = bank.step(idx, n["E"], n["M"], b["x_t"], delta)
    # the formula, by hand
    r0 = before[idx].clone().requires_grad_(True)
    loss = ((n["M"](r0, delta) - n["E"](b["x_t"], delta).detach()) ** 2).mean()
    (g,) = torch.autograd.grad(loss, r0)
    want = (r0.detach() + (0.9 / g.pow(2).mean().sqrt() + 5) * g).clamp(-1, 1)
    torch.testing.assert_close(r, want)
    assert not r.requires_grad and r.abs().max() <= 1
    torch.testing.assert_close(bank.r[idx], want)
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(bank.r[untouched], before[untouched])  # only the used rows are written
    assert all(p.grad is None for m in (n["E"], n["M"]) for p in m.parameters())  # no net is trained by it
    with pytest.raises(IndexError, match="out of range"):
        bank.step(torch.tensor([0, 1, 10]), n["E"], n["M"], b["x_t"], delta)
