"""The exact conv rewrites (fastep.nn.aligned) against the layers they replace, in float64.

Every rewrite must compute the same function as the original: forward values and the gradients
with respect to the input and to every parameter, on random weights and biases.
"""
import pytest
import torch
import torch.nn.functional as F

from fastep.nn.layers import EqConv2d, minibatch_stddev
from fastep.nn import aligned as al

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def _stddev_value(x):
    """The value of the minibatch-stddev channel (0-d), read from the original layer's output."""
    return minibatch_stddev(x)[0, -1, 0, 0]


def _conv(cin, cout, k, s=1, equalized=True):
    conv = EqConv2d(cin, cout, k, s, equalized=equalized).double()
    with torch.no_grad():
        conv.bias.normal_()
    return conv


def _grads(fn, x, module):
    """Output and d(<out, r>)/d(x, params) for a fixed random cotangent r."""
    x = x.detach().clone().requires_grad_(True)
    params = list(module.parameters())
    out = fn(x)
    r = torch.randn_like(out)
    gs = torch.autograd.grad((out * r).sum(), [x] + params, allow_unused=True)
    return out.detach(), gs, r


def _assert_same(fn_ref, fn_new, x, module):
    out_ref, g_ref, r = _grads(fn_ref, x, module)
    x2 = x.detach().clone().requires_grad_(True)
    params = list(module.parameters())
    out_new = fn_new(x2)
    assert out_new.shape == out_ref.shape
    torch.testing.assert_close(out_new, out_ref, **TOL)
    g_new = torch.autograd.grad((out_new * r).sum(), [x2] + params, allow_unused=True)
    for a, b in zip(g_new, g_ref):
        if b is None:
            assert a is None or float(a.abs().max()) == 0.0
        else:
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("mode", ["split", "pad"])
@pytest.mark.parametrize("c,cout,k,s,hw", [(128, 32, 4, 1, (9, 9)), (16, 24, 4, 1, (6, 11)),
                                            (15, 8, 3, 1, (5, 7)), (8, 16, 4, 2, (8, 10)),
                                            (8, 16, 1, 1, (4, 4))])
def test_stddev_conv_equals_concat_then_conv(mode, c, cout, k, s, hw):
    conv = _conv(c + 1, cout, k, s)
    x = torch.randn(3, c, *hw, dtype=F64)
    _assert_same(lambda t: conv(minibatch_stddev(t)),
                 lambda t: al.stddev_conv(t, _stddev_value(t), conv, mode), x, conv)


def test_stddev_border_map_is_constant_inside():
    w = torch.randn(5, 4, 4, dtype=F64)
    m = al.stddev_border_map(w, 9, 9)
    torch.testing.assert_close(m[:, 1:-2, 1:-2], w.sum((1, 2))[:, None, None].expand(5, 6, 6))
    assert not torch.allclose(m[:, 0, 0], w.sum((1, 2)))


@pytest.mark.parametrize("cin,cout,k,s", [(6, 32, 4, 2), (256, 1, 4, 1), (72, 3, 1, 1), (3, 64, 4, 2),
                                          (129, 256, 4, 1), (16, 16, 3, 1)])
def test_aligned_conv_equals_conv(cin, cout, k, s):
    conv = _conv(cin, cout, k, s)
    x = torch.randn(2, cin, 8, 8, dtype=F64)
    _assert_same(conv, lambda t: al.aligned_conv(t, conv), x, conv)


def test_aligned_conv_ignores_extra_input_channels():
    conv = _conv(6, 32, 4, 2)
    x = torch.randn(2, 6, 8, 8, dtype=F64)
    extra = torch.cat([x, torch.randn(2, 2, 8, 8, dtype=F64)], 1)
    torch.testing.assert_close(al.aligned_conv(extra, conv), conv(x), **TOL)


@pytest.mark.parametrize("equalized", [True, False])
@pytest.mark.parametrize("cin,cout,hw", [(16, 8, (5, 7)), (24, 13, (4, 4)), (3, 8, (1, 3))])
def test_upsample_conv_equals_nearest_then_conv(equalized, cin, cout, hw):
    conv = _conv(cin, cout, 3, 1, equalized)
    x = torch.randn(2, cin, *hw, dtype=F64)
    _assert_same(lambda t: conv(F.interpolate(t, scale_factor=2.0, mode="nearest")),
                 lambda t: al.upsample_conv(t, conv), x, conv)


def test_upsample_kernel_sums_the_taps():
    w = torch.randn(4, 5, 3, 3, dtype=F64)
    k = al.upsample_conv_kernel(w)
    assert k.shape == (5, 4, 4, 4)
    # every 3x3 tap is counted 2 x 2 times over the four output phases
    torch.testing.assert_close(k.sum((2, 3)), 4 * w.sum((2, 3)).t())
    torch.testing.assert_close(k[:, :, 3, 3], w[:, :, 0, 0].t())


def test_same_padding_matches_eqconv():
    for k, s in [(4, 1), (4, 2), (3, 1), (3, 2), (7, 1), (1, 1)]:
        conv = EqConv2d(4, 4, k, s)
        before, after = al.same_padding(k, s)
        if conv._pad is None:
            assert before == after == conv._sym
        else:
            assert conv._pad == (before, after, before, after)


def test_bad_inputs_raise_clear_errors():
    conv = _conv(17, 8, 4)
    with pytest.raises(ValueError, match="input channels"):
        al.stddev_conv(torch.randn(2, 15, 4, 4, dtype=F64), torch.tensor(1.0, dtype=F64), conv)
    with pytest.raises(ValueError, match="0-d"):
        al.stddev_conv(torch.randn(2, 16, 4, 4, dtype=F64), torch.ones(1, dtype=F64), conv)
    with pytest.raises(ValueError, match="mode"):
        al.stddev_conv(torch.randn(2, 16, 4, 4, dtype=F64), torch.tensor(1.0, dtype=F64), conv, "fast")
    with pytest.raises(ValueError, match="3x3 stride-1"):
        al.upsample_conv(torch.randn(2, 17, 4, 4, dtype=F64), conv)
    with pytest.raises(ValueError, match="input channels"):
        al.aligned_conv(torch.randn(2, 3, 4, 4, dtype=F64), conv)
    with pytest.raises(TypeError, match="EqConv2d-like"):
        al.aligned_conv(torch.randn(2, 3, 4, 4), torch.nn.Conv2d(3, 3, 3))


# ----------------------------------------------------------------------------- census

def test_conv_census_matches_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    up, down = _conv(8, 16, 3).float(), _conv(16, 3, 4, 2).float()
    x = torch.randn(2, 8, 8, 8, requires_grad=True)

    def run():  # a transposed conv, an unaligned conv, and all three backward kinds
        down(al.upsample_conv(x, up)).sum().backward()

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    conv_flops = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "conv" in str(k))
    census = al.conv_census(run)
    assert sum(c.flops for c in census.calls) == conv_flops
    assert {c.kind for c in census.calls} == {"fwd", "dgrad", "wgrad"}
    assert any(c.transposed for c in census.calls)
    assert census.unaligned_gflop > 0 and census.unaligned_gflop < census.gflop
    assert census.summary()["conv_calls"] == len(census.calls) == 6  # 2 fwd, 2 dgrad, 2 wgrad
