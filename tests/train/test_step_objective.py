"""The training objective, checked independently of fastep's training step.

For each of the six approaches (stage 3, tiny nets, float64), every loss term the step reports
is compared with the formula written here from the definitions (StEP, Meshry et al. CVPR 2021,
sec. 3 and A.1; LSGAN, Mao et al. 2017; BicycleGAN, Zhu et al. 2017), and the gradient each of
the three optimizers receives from the step's single backward pass is compared with autograd of
that optimizer's own loss alone:

* D:            L_D  = lambda_gan [ sum_s 0.5 mean((D_s(A, B) - 1)^2)
                                    + mean over fake kinds of sum_s 0.5 mean(D_s(A, fake)^2) ]
                (fakes detached: D's loss gives G and E nothing);
* G + E:        L_GE = lambda_rec P(G(A, z), B) + lambda_gan sum_s mean((D_s(A, G(A, z)) - 1)^2)
                       + lambda_cyc P(cycle, B) + lambda_z_l2 mean(z^2)
                       + lambda_z_kl 0.5 sum(mu^2 + sigma^2 - 1 - log sigma^2);
* G alone (the paper's third Adam, lr 1e-4): L_G2 = lambda_gan sum_s mean((D_s(A, G(A, z_r)) - 1)^2)
                       + lambda_z_recon mean|E(G(A, z_r)) - z_r|, z_r random (prior or another
                       image's code);
with P(x, y) = sum_l w_l mean((a phi_l(x) - a phi_l(y))^2), VGG16 conv{1..5}_2 features phi_l,
layer weights w = 1/32 .. 1 and activation scale a = 0.1 (the official code).

The step is driven through its forward function because its public call casts the batch to
float32; the networks (G, E, D, VGG) are the step's own, only the loss assembly is under test.
"""
import pytest
import torch
import torch.nn.functional as F

from fastep.zoo.step import build_models
from fastep.zoo.step.config import APPROACHES, LossConfig, ModelConfig, TrainConfig
from fastep.zoo.step.train_step import TrainStep

pytestmark = pytest.mark.usefixtures("one_thread")

N, RES = 2, 32


def _build(name):
    lc = LossConfig.preset(name, perceptual_backbone="random")
    mc = ModelConfig.tiny(resolution=RES, e_logvar=lc.needs_logvar)
    models = build_models(mc, "cpu")
    for m in (models.G, models.E, models.D):
        m.double()
    with torch.no_grad():  # codes of unit size (not ~0.02 as at init): the code terms then weigh
        models.E.fc_mean.weight.mul_(50)  # in the totals, so a wrong weight on them shows
    tc = TrainConfig(stage=3, approach=name, batch_size=N, resolution=RES, device="cpu", compile=False, amp=False,
                     channels_last=False, fused_adam=False)
    return TrainStep(models, lc, tc, 3), lc


def _perceptual(vgg, cfg, x, y):
    a = cfg.perceptual_act_scale
    fx, fy = vgg(x), vgg(y)
    assert len(fx) == len(cfg.perceptual_weights) == 5
    total = 0.0
    for w, p, q in zip(cfg.perceptual_weights, fx, fy):
        d = a * p - a * q.detach()
        total = total + w * (d.square().mean() if cfg.perceptual_distance == "mse" else d.abs().mean())
    return total


def _lsgan_g(outs):
    return sum((o - 1).square().mean() for o in outs)


def _code(E, cfg, img, eps):
    # codes are rounded to float32, as the step keeps them: G amplifies a code's last bits (pixel
    # norm after ReLU at near-dead pixels), so float64 codes would differ by ~1e-4 in G's gradient
    if cfg.needs_logvar:
        mu, logvar = (t.float() for t in E.stats(img))
    else:
        mu, logvar = E(img).float(), None
    z = mu + eps * torch.exp(0.5 * logvar) if cfg.vae else mu
    return z, mu, logvar


def _objective(G, E, D, vgg, cfg, A, B, noise):
    """The three losses and every term, from the definitions in the module docstring."""
    t = {}
    z, mu, logvar = _code(E, cfg, B, noise.get("eps"))
    fake = G(A, z)
    l_ge = 0.0
    t["rec"] = _perceptual(vgg, cfg, fake, B)
    l_ge = l_ge + cfg.lambda_rec * t["rec"]
    fakes = [fake]
    assert cfg.d_dir
    t["g_gan"] = _lsgan_g(D(A, fake))
    l_ge = l_ge + cfg.lambda_gan * t["g_gan"]
    if cfg.cyc_recon:  # image i styled with image i-1's code, re-encoded, given back its own
        swapped = G(A, z.roll(1, 0))
        z_back, _, _ = _code(E, cfg, swapped, noise.get("eps_cyc"))
        t["cyc"] = _perceptual(vgg, cfg, G(A, z_back.roll(-1, 0)), B)
        l_ge = l_ge + cfg.cyc_weight * t["cyc"]
    if cfg.z_l2:
        t["z_l2"] = z.square().mean()
        l_ge = l_ge + cfg.lambda_z_l2 * t["z_l2"]
    if cfg.z_kl:  # KL(N(mu, sigma^2) || N(0, 1)), summed over code dims and batch
        t["z_kl"] = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum()
        l_ge = l_ge + cfg.lambda_z_kl * t["z_kl"]
    l_g2 = None
    if cfg.uses_random_z:
        z_r = noise["z_prior"] if cfg.random_z_mode == "prior" else z.detach().roll(1, 0)
        fake_r = G(A, z_r)
        l_g2 = 0.0
        if cfg.d_rand_z:
            t["g2_gan"] = _lsgan_g(D(A, fake_r))
            l_g2 = l_g2 + cfg.lambda_gan * t["g2_gan"]
            fakes.append(fake_r)
        if cfg.z_recon:
            t["z_recon"] = (E(fake_r) - z_r).abs().mean()
            l_g2 = l_g2 + cfg.lambda_z_recon * t["z_recon"]
    t["loss_d_real"] = sum(0.5 * (o - 1).square().mean() for o in D(A, B))
    t["loss_d_fake"] = sum(sum(0.5 * o.square().mean() for o in D(A, f.detach())) for f in fakes) / len(fakes)
    l_d = cfg.lambda_gan * (t["loss_d_real"] + t["loss_d_fake"])
    t["loss_d"], t["loss_g"] = l_d, l_ge
    if l_g2 is not None:
        t["loss_g2"] = l_g2
    return l_d, l_ge, l_g2, t


def _close_grads(got, want, what):
    """Per network: max |got - want| <= 2e-5 max |want|.  Both sides run the same float64 nets
    with the same float32 codes; what is left is float32 rounding inside the nets' norms and the
    step's float32 loss reductions, measured at <= 2e-6 over 54 seeded cases."""
    scale = max(w.abs().max().item() for w in want)
    assert scale > 0, f"{what}: the reference gradient is zero"
    for (n, g), w in zip(got, want):
        assert g is not None, f"{what}: {n} got no gradient"
        err = (g - w).abs().max().item()
        assert err <= 2e-5 * scale, f"{what}: {n} differs by {err:.3g} (max |grad| {scale:.3g})"


@pytest.mark.parametrize("name", APPROACHES)
def test_each_loss_term_and_each_optimizers_gradient(name):
    step, cfg = _build(name)
    G, E, D = step.G, step.E, step.D
    vgg = step.perceptual.loss.vgg
    vgg.double()  # shared (cached) backbone: restored below
    try:
        g = torch.Generator().manual_seed(5)
        A = (torch.rand(N, 3, RES, RES, generator=g, dtype=torch.float64) * 2 - 1)
        B = (torch.rand(N, 3, RES, RES, generator=g, dtype=torch.float64) * 2 - 1)
        noise = {k: v.double() for k, v in step._noise(N).items()}
        for opt in step.optimizers:
            opt.zero_grad(set_to_none=True)
        total, logs = step._forward(A, B, noise)
        total.backward()

        l_d, l_ge, l_g2, terms = _objective(G, E, D, vgg, cfg, A, B, noise)
        # every term the step reports; the ones this approach does not use are exactly 0
        for k, v in logs.items():
            want = terms.get(k)
            if want is None:
                assert v.item() == 0.0, f"{name}: {k} = {v.item()} but the approach has no such term"
            else:
                # float32 loss reductions in the step: measured <= 1.5e-7 relative over 54 cases
                assert v.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-12), f"{name}: {k}"
        assert set(terms) - {"loss_g2"} <= set(logs)

        pd = list(D.named_parameters())
        pge = list(G.named_parameters()) + list(E.named_parameters())
        _close_grads([(n, p.grad) for n, p in pd], torch.autograd.grad(l_d, [p for _, p in pd], retain_graph=True),
                     f"{name} D (from L_D alone)")
        _close_grads([(n, p.grad) for n, p in pge],
                     torch.autograd.grad(l_ge, [p for _, p in pge], retain_graph=True),
                     f"{name} G+E (from L_GE alone: nothing from L_D or the G-only terms)")
        if l_g2 is None:
            assert step.opt_g2 is None
        else:
            shadow = step._g_shadow
            pg = list(G.named_parameters())
            _close_grads([(n, shadow[n].grad) for n, _ in pg],
                         torch.autograd.grad(l_g2, [p for _, p in pg], allow_unused=True),
                         f"{name} G-only (from L_G2 alone)")
    finally:
        vgg.float()
