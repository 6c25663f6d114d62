"""DeepI2I's training steps on tiny nets: which nets learn in each phase, the loss values
against a direct float64 computation, gradient accumulation, and bit-identical resume."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from fastep.config import ConfigError
from fastep.train.trainer import Trainer
from fastep.zoo.deepi2i import PRESETS, build_nets
from fastep.zoo.deepi2i.train_step import BigGANStep, StepConfig, TransferStep, hinge_d, hinge_g, rec_loss

CFG = replace(PRESETS["cpu"](), n_classes=3)


def _nets(seed=0):
    torch.manual_seed(seed)
    return build_nets(CFG)


def _batch(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 64, 64, generator=g) * 2 - 1, torch.randint(0, 3, (n,), generator=g)


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _params(net):
    return {k: v.detach().clone() for k, v in net.named_parameters()}


_ATTENTION = ("theta.", "phi.", ".g.", ".o.")


def _all_moved(a, b):
    """Every parameter tensor changed (an update reached each one, not only the buffers); the
    attention convs are left out: behind gamma = 0 their first gradient is exactly zero."""
    return all(not torch.equal(a[k], b[k]) for k in a if not any(t in k for t in _ATTENTION))


def test_hinge_and_rec_on_hand_made_values():
    real, fake = hinge_d(torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0]))
    assert real.item() == pytest.approx(2.5 / 3) and fake.item() == pytest.approx(1.0)
    assert hinge_g(torch.tensor([1.0, 3.0])).item() == -2.0
    f = {4: torch.randn(3, 2, 4, 4), 8: torch.randn(3, 1, 8, 8)}
    assert all(v.item() == 0 for v in rec_loss(f, f, {4: 0.1, 8: 0.1}).values())  # x' = x
    x = {4: torch.zeros(3, 2, 4, 4), 8: torch.zeros(3, 1, 8, 8)}
    paired = rec_loss(f, x, {4: 0.1, 8: 0.5})
    assert paired[4].item() == pytest.approx(0.1 * f[4].square().mean().item(), rel=1e-6)
    assert paired[8].item() == pytest.approx(0.5 * f[8].square().mean().item(), rel=1e-6)
    code = rec_loss(f, x, {4: 0.1, 8: 0.5}, pairing="code")  # rows 0 and 1 of [fakes; inputs]: two fakes
    assert code[4].item() == pytest.approx(0.1 * (f[4][0] - f[4][1]).square().mean().item(), rel=1e-6)
    one = rec_loss({4: f[4][:1]}, {4: x[4][:1]}, {4: 1.0}, pairing="code")  # one sample: fake 0 vs input 0
    assert one[4].item() == pytest.approx(f[4][0].square().mean().item(), rel=1e-6)


def test_config_errors_are_one_line():
    for kw, msg in (({"mode": "both"}, "unknown DeepI2I step mode 'both'"),
                    ({"micro_batch": 0}, "micro_batch must be an int >= 1"),
                    ({"rec_pairing": "pairs"}, "unknown DeepI2I rec_pairing"),
                    ({"beta2": 1.0}, "beta2 must be a number in [0, 1)")):
        with pytest.raises(ConfigError) as err:
            StepConfig(**kw)
        assert msg in str(err.value) and "\n" not in str(err.value)
    assert StepConfig().batch == 32 and StepConfig().phase1 == 500 and StepConfig(mode="scratch").phase1 == 0


def test_phase_routing_transfer_and_scratch():
    nets = _nets()
    step = TransferStep(nets, StepConfig(micro_batch=2, accumulations=2, phase1_steps=1))
    x, y = _batch(4)
    before = {k: _state(v) for k, v in step.nets.items()}
    p0 = {k: _params(v) for k, v in step.nets.items()}
    out = step(x, y)
    assert out["phase"].item() == 1.0
    after = {k: _state(v) for k, v in step.nets.items()}
    p1 = {k: _params(v) for k, v in step.nets.items()}
    assert _same(before["G"], after["G"]) and _same(before["E"], after["E"])  # buffers included
    assert _all_moved(p0["A"], p1["A"]) and _all_moved(p0["D"], p1["D"])
    out = step(x, y)
    assert out["phase"].item() == 2.0
    again = {k: _state(v) for k, v in step.nets.items()}
    p2 = {k: _params(v) for k, v in step.nets.items()}
    assert _all_moved(p1["G"], p2["G"]) and _all_moved(p1["A"], p2["A"]) and _all_moved(p1["D"], p2["D"])
    assert _same(after["E"], again["E"])

    scratch = TransferStep(_nets(), StepConfig(mode="scratch", micro_batch=2, accumulations=1, phase1_steps=5))
    x, y = _batch(2)
    before = {k: _params(v) for k, v in scratch.nets.items()}
    assert scratch(x, y)["phase"].item() == 2.0  # scratch mode has no phase 1
    # every net learns, E included (E's unused projection head gets no gradient)
    moved = {k: _all_moved({n: t for n, t in before[k].items() if not n.startswith(("linear", "embed"))},
                           _params(v)) for k, v in scratch.nets.items()}
    assert moved == {"G": True, "D": True, "E": True, "A": True}


def _reference_losses(nets, x, y, noise, k, m, weights):
    """The losses of one update, written out directly in float64 (lr 0: the weights stay)."""
    G, D, E, A = (copy.deepcopy(nets[n]).double() for n in ("G", "D", "E", "A"))
    E.eval()
    xs, ys = x.double().split(m), y.split(m)
    inputs = [xs[(i + 1) % k] for i in range(k)]
    real = fake = adv = 0.0
    rec = {s: 0.0 for s in weights}
    with torch.no_grad():
        for i in range(k):
            xf = G(noise["z_d"][i].double(), noise["y_d"][i], A(E(inputs[i])))
            real += torch.clamp(1 - D(xs[i], ys[i]), min=0).mean().item() / k
            fake += torch.clamp(1 + D(xf, noise["y_d"][i]), min=0).mean().item() / k
        for i in range(k):
            xf = G(noise["z_g"][i].double(), noise["y_g"][i], A(E(inputs[i])))
            logits, ff = D(xf, noise["y_g"][i], return_features=True)
            _, fi = D.trunk(inputs[i])
            adv += -logits.mean().item() / k
            for s, w in weights.items():
                rec[s] += w * ((ff[s] - fi[s]) ** 2).mean().item() / k
    return real, fake, adv, rec


@pytest.mark.parametrize("phase1", [0, 1])
def test_losses_match_a_float64_computation(phase1):
    k, m = 2, 2
    nets = _nets()
    step = TransferStep(nets, StepConfig(micro_batch=m, accumulations=k, phase1_steps=phase1))
    step.set_lr_scale(0.0)
    x, y = _batch(k * m)
    torch.manual_seed(3)
    noise = step.draw_noise()
    want = _reference_losses(step.nets, x, y, noise, k, m, step.rec_weights)
    out = step.update(x, y, noise)
    assert set(step.rec_weights) == {16, 8, 4}
    assert out["d_real"].item() == pytest.approx(want[0], rel=1e-4, abs=1e-6)
    assert out["d_fake"].item() == pytest.approx(want[1], rel=1e-4, abs=1e-6)
    assert out["g_adv"].item() == pytest.approx(want[2], rel=1e-4, abs=1e-6)
    for s, v in want[3].items():
        assert out[f"rec_{s}"].item() == pytest.approx(v, rel=1e-3, abs=1e-9)
    assert out["g_rec"].item() == pytest.approx(sum(want[3].values()), rel=1e-3)


def test_an_update_is_the_mean_of_the_micro_batch_gradients():
    """Accumulation: the G/A gradient of an update equals the mean of the gradients of each
    micro-batch computed on its own (batch norm per micro-batch, as BigGAN accumulates)."""
    k, m = 3, 2
    step = TransferStep(_nets(), StepConfig(micro_batch=m, accumulations=k, phase1_steps=0))
    step.set_lr_scale(0.0)  # Adam with lr 0 leaves the weights, and the gradients stay readable
    x, y = _batch(k * m)
    noise = step.draw_noise()
    ref = {n: copy.deepcopy(step.nets[n]) for n in ("G", "D", "E", "A")}
    step.update(x, y, noise)
    got = [p.grad.clone() for n in ("G", "A") for p in step.nets[n].parameters()]

    G, D, E, A = (ref[n] for n in ("G", "D", "E", "A"))
    E.eval()
    xs = x.split(m)
    inputs = [xs[(i + 1) % k] for i in range(k)]
    with torch.no_grad():  # the D pass, replayed for its spectral-norm state
        for i in range(k):
            xf = G(noise["z_d"][i], noise["y_d"][i], A(E(inputs[i])))
            D(xs[i], y.split(m)[i]), D(xf, noise["y_d"][i])
    D.requires_grad_(False)
    params = list(G.parameters()) + list(A.parameters())
    mean = [torch.zeros_like(p) for p in params]
    for i in range(k):
        fake = G(noise["z_g"][i], noise["y_g"][i], A(E(inputs[i])))
        logits, ff = D(fake, noise["y_g"][i], return_features=True)
        with torch.no_grad():
            _, fi = D.trunk(inputs[i])
        loss = -logits.mean() + sum(w * torch.nn.functional.mse_loss(ff[s], fi[s])
                                    for s, w in step.rec_weights.items())
        grads = torch.autograd.grad(loss, params)
        mean = [a + g / k for a, g in zip(mean, grads)]
    assert len(got) == len(mean)
    # float32 sums in another order: compared as one vector (conv biases before a batch norm
    # get gradients of pure rounding noise); a sum instead of a mean would be off by k
    a, b = torch.cat([g.flatten() for g in got]), torch.cat([g.flatten() for g in mean])
    assert (a - b).norm() <= 1e-4 * b.norm()


class _Labeled(torch.utils.data.Dataset):
    def __init__(self, n):
        self.x, self.y = _batch(n, seed=7)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _trainer(step, out, max_steps=None):
    return Trainer(step, _Labeled(8), stage="transfer", system="deepi2i", out_dir=out, device="cpu",
                   batch_size=step.cfg.batch, kimg=0.016, seed=0, lr_decay_start_kimg=1.0, log_every=1,
                   ckpt_every_kimg=0.004, image_every_kimg=0, keep=5, num_workers=0, progress=False,
                   tensorboard=False, max_steps=max_steps)


@pytest.mark.parametrize("kind", ["transfer", "biggan"])
def test_resume_is_bit_identical(tmp_path, kind):
    cfg = StepConfig(micro_batch=2, accumulations=2, phase1_steps=2)
    make = (lambda: TransferStep(_nets(), cfg)) if kind == "transfer" else (lambda: BigGANStep(_nets(), cfg))
    torch.manual_seed(0)
    full = make()
    _trainer(full, tmp_path / "a").fit()  # 4 updates: 2 of phase 1, 2 of phase 2
    torch.manual_seed(0)
    half = make()
    _trainer(half, tmp_path / "b", max_steps=2).fit()
    torch.manual_seed(123)  # a resumed run takes its RNG state from the checkpoint
    resumed = make()
    _trainer(resumed, tmp_path / "b").fit(resume=True)
    assert resumed.step_count == full.step_count == 4
    for name, net in full.networks().items():
        assert _same(_state(net), _state(resumed.networks()[name])), name
    assert set(full.networks()) == ({"G", "D", "E", "A"} if kind == "transfer" else {"G", "D", "G_ema"})


def test_biggan_step_updates_G_and_D_and_the_ema_follows():
    step = BigGANStep(_nets(), StepConfig(micro_batch=2, accumulations=2, g_ema=0.5, ema_start=1))
    x, y = _batch(4)
    p0 = {k: _params(v) for k, v in step.nets.items()}
    step(x, y)  # update 0 < ema_start: the EMA copies G
    p1 = {k: _params(v) for k, v in step.nets.items()}
    assert _all_moved(p0["G"], p1["G"]) and _all_moved(p0["D"], p1["D"])
    assert _same(p1["G"], p1["G_ema"])
    step(x, y)  # from ema_start on: G_ema = 0.5 * G_ema + 0.5 * G
    p2 = {k: _params(v) for k, v in step.nets.items()}
    for k in p2["G"]:
        torch.testing.assert_close(p2["G_ema"][k], 0.5 * p1["G"][k] + 0.5 * p2["G"][k])


def test_bad_batches_are_refused():
    step = BigGANStep(_nets(), StepConfig(micro_batch=2, accumulations=2))
    with pytest.raises(ValueError, match=r"x must be \[4, 3, 64, 64\]"):
        step(torch.zeros(3, 3, 64, 64), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"y must be \[4\] class indices"):
        step(torch.zeros(4, 3, 64, 64), torch.zeros(4))
