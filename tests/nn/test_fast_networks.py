"""The StEP networks with their exact conv rewrites on (``fast_convs``) against the originals.

Same function in float64 (outputs and gradients of inputs and parameters), same state_dict, and
the unaligned-channel conv work of a paper-size Ours v3 step that the rewrites remove.
"""
import pytest
import torch

from fastep.zoo.step.discriminator import MultiScaleDiscriminator
from fastep.zoo.step.generator import Generator
from fastep.nn import aligned as al

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def _randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 1.0 if p.dim() > 1 else 0.5)
    return module


def _network_grads(net, inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = net(*inputs)
    outs = out if isinstance(out, list) else [out]
    torch.manual_seed(1234)
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    gs = torch.autograd.grad(loss, inputs + list(net.parameters()), allow_unused=True)
    return [o.detach() for o in outs], gs


@pytest.mark.parametrize("kind", ["G", "D", "D_uncond"])
def test_networks_with_fast_convs_compute_the_same_function(kind):
    if kind == "G":
        net = Generator(nf=8, n_down=3, n_res=1, z_dim=8)
        inputs = [torch.randn(2, 3, 16, 16, dtype=F64), torch.randn(2, 8, dtype=F64)]
    else:
        net = MultiScaleDiscriminator(nf=8, n_layers=3, scales=2, conditional=kind == "D")
        inputs = [torch.randn(3, 3, 32, 32, dtype=F64), torch.randn(3, 3, 32, 32, dtype=F64)]
    net = _randomize(net.double())
    out_ref, g_ref = _network_grads(net, inputs)
    keys = list(net.state_dict())
    al.set_fast_convs(net, True)
    assert list(net.state_dict()) == keys
    out_new, g_new = _network_grads(net, inputs)
    for a, b in zip(out_new, out_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for a, b in zip(g_new, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_fast_convs_load_the_same_checkpoints():
    ref = _randomize(MultiScaleDiscriminator(nf=8, scales=2).double())
    fast = al.set_fast_convs(MultiScaleDiscriminator(nf=8, scales=2).double(), True)
    fast.load_state_dict(ref.state_dict())  # strict: same keys and shapes
    a, b = torch.randn(2, 3, 32, 32, dtype=F64), torch.randn(2, 3, 32, 32, dtype=F64)
    for x, y in zip(fast(a, b), ref(a, b)):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["G", "D"])
def test_fast_convs_under_bf16_autocast_are_as_accurate_as_the_original(kind):
    """Under bf16 autocast the rewrites round differently, but no worse than the original."""
    if kind == "G":
        net, inputs = Generator(nf=8, n_down=2, n_res=1), (torch.randn(2, 3, 16, 16), torch.randn(2, 8))
    else:
        net, inputs = MultiScaleDiscriminator(nf=8, scales=2), (torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))

    def run():
        out = net(*inputs)
        return torch.cat([t.float().flatten() for t in (out if isinstance(out, list) else [out])])

    ref = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        err_orig = (run() - ref).abs().mean()
        al.set_fast_convs(net, True)
        err_fast = (run() - ref).abs().mean()
    assert err_fast <= 1.5 * err_orig + 1e-3



def test_ours_v3_unaligned_conv_work_at_paper_size():
    """The unaligned-channel conv work of an Ours v3 batch-8 step at 256 x 256: 115.5 GFLOP
    (91 of it in the minibatch-stddev convs) without the rewrites, < 20 with them."""
    from fastep.zoo.step.config import TrainConfig
    from fastep.zoo.step.train_step import step_conv_census

    cfg = TrainConfig(stage=3, approach="ours_v3", batch_size=8, resolution=256)
    before = step_conv_census(TrainConfig(stage=3, approach="ours_v3", batch_size=8, aligned_convs=False))
    after = step_conv_census(cfg)
    assert before.unaligned_gflop == pytest.approx(115.5, abs=0.1)
    assert sum(c.flops for c in before.calls if c.in_ch == 129) / 1e9 == pytest.approx(90.9, abs=0.1)
    assert after.unaligned_gflop < 20
    assert all(c.in_ch == 3 or c.out_ch == 3 for c in after.calls if not c.aligned)  # image inputs only
    assert after.gflop < before.gflop  # the upsample rewrite does 16/36 of those MACs
    assert step_conv_census(TrainConfig(stage=3, approach="ours_v3", eager_fp32=True)).unaligned_gflop == \
        pytest.approx(115.5, abs=0.1)  # the baseline keeps the original layers
