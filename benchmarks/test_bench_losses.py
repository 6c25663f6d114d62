"""Benchmarks of fastep's losses against the eager fp32 versions GAN code uses today.

    python -m pytest benchmarks/test_bench_losses.py                    # CUDA if present, else CPU
    python -m pytest benchmarks/test_bench_losses.py --fastep-results benchmarks/results

* ``perceptual`` forward + backward (w.r.t. the generated images) of the VGG feature loss.
  baseline: pix2pixHD's ``VGGLoss`` (VGG19 relu1_1..relu5_1 slices, L1, weights 1/32..1,
  fp32, NCHW, two backbone passes, target detached): ``fastep.nets.reference.VGGLossReference``
  with the same random backbone.  ``fastep``: ``PerceptualLoss("pix2pixhd")`` (bf16 autocast + channels_last on
  CUDA, the target pass under no_grad, one fused reduction launch); ``fastep_fp32``: the same
  with ``amp=False`` (what the fused tail and the layout alone give); ``fastep_joint``: bf16 with
  ONE backbone pass over cat(output, target) (``target_pass="joint"``), to measure the choice
  of the default (separate no_grad target pass when only the output requires grad).  ``vgg16`` rows: StEP's
  conv_i_2 / MSE loss, its baseline the same structure on VGG16.  ``baseline_bf16`` (CUDA): the
  same reference under bf16 autocast with channels_last images and weights, i.e. in fastep's
  default precision and layout, so "fastep vs baseline_bf16" is like with like and "fastep vs
  baseline" is what switching from the pix2pixHD code gives.
  CUDA: batch 8, 16, 32 at 256 x 256.  CPU: batch 1 at 32 x 32 (smoke run).
* ``lpips`` forward (metric use, no_grad) at batch 64 of 256 x 256 pairs (CPU: 2 at 64 x 64).
  baseline: ``lpips.LPIPS(net="alex")`` (the package, fp32) with the same random backbone;
  ``fastep``: ``fastep.losses.LPIPS("alex")`` in fp32 (equal values); ``fastep_bf16``: with
  ``amp="auto"`` (bf16 backbone on CUDA); ``fastep_nchw``: fp32 without channels_last.  Also ``lpips_vgg`` at batch 16 (CPU: 1 at 32 x 32).
On CPU the autocast variants equal the fp32 ones and are skipped.

Before anything is timed, each test checks that the implementation's value (and the perceptual
loss's input gradient) equals the float32 baseline's: float32 runs to 1e-4 relative (the L1
gradient to 2e-2 in norm: it jumps where a feature difference crosses 0), bf16 runs to 3e-2
relative and gradient cosine >= 0.98 (bf16 rounding of every activation).  A fast but wrong
path fails instead of being recorded as a speedup.

Targets on an H100: perceptual >= 1.5x faster with <= 0.6x the baseline's peak memory; LPIPS
>= 2x the lpips package.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import fastep.losses as L
from fastep.nets.weights import random_state_dict
from fastep.nets.reference import VGGLossReference
from fastep.ops.reference import no_tf32

def _perceptual_cases(device):
    if device == "cuda":
        return [("pix2pixhd", n, 256) for n in (8, 16, 32)] + [("vgg16", 8, 256)]
    return [("pix2pixhd", 1, 32), ("vgg16", 1, 32)]


def _vgg_flops(net, n, res):
    # about 19.6 (vgg19 to relu5_1) / 15.4 (vgg16 to relu5_2) GMAC per 224^2 image forward
    gmac = {"pix2pixhd": 19.6, "vgg16": 15.4}[net] * (res / 224) ** 2
    # two forward passes + one backward (input grads only, ~1x forward)
    return 2 * gmac * 1e9 * n * 3


def _value_and_grad(fn, x, y):
    x.grad = None
    v = fn(x, y)
    v.backward()
    g = x.grad.detach().double().clone()
    x.grad = None
    return v.detach().double(), g


def _assert_matches_baseline(got, ref, half, l1=False):
    """(value, grad or None) of an implementation against the float32 baseline's."""
    (v, g), (rv, rg) = got, ref
    rtol = 3e-2 if half else 1e-4
    assert (v - rv).abs() <= rtol * rv.abs() + 1e-12, f"value {float(v):.6g} vs baseline {float(rv):.6g}"
    if g is None:
        return
    if half:
        cos = torch.nn.functional.cosine_similarity(g.flatten(), rg.flatten(), dim=0).item()
        assert cos >= 0.98, f"gradient cosine {cos:.4f} vs the baseline's < 0.98"
    else:
        err = ((g - rg).norm() / rg.norm()).item()
        tol = 2e-2 if l1 else 1e-3
        assert err <= tol, f"gradient relative error {err:.3g} vs the baseline's > {tol}"


class _Bf16ChannelsLast(torch.nn.Module):
    """The reference loss in fastep's default precision and layout: bf16 autocast, channels_last."""

    def __init__(self, ref):
        super().__init__()
        self.ref = ref.to(memory_format=torch.channels_last)

    def forward(self, x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return self.ref(x.contiguous(memory_format=torch.channels_last),
                            y.contiguous(memory_format=torch.channels_last)).float()


@pytest.mark.parametrize("impl", ["baseline", "baseline_bf16", "fastep", "fastep_fp32", "fastep_joint"])
@pytest.mark.parametrize("case", range(4))
def test_perceptual(fastep_bench, device, case, impl):
    cases = _perceptual_cases(device)
    if case >= len(cases):
        pytest.skip("no such case on this device")
    net, n, res = cases[case]
    if device != "cuda" and impl in ("fastep", "fastep_joint", "baseline_bf16"):
        pytest.skip("autocast is off on CPU: same as fastep_fp32")
    base = VGGLossReference(net).to(device)
    if impl == "baseline":
        loss = base
    elif impl == "baseline_bf16":
        loss = _Bf16ChannelsLast(VGGLossReference(net).to(device))
    else:
        loss = L.PerceptualLoss(net, backbone_weights="random", amp=False if impl == "fastep_fp32" else "auto",
                                target_pass="joint" if impl == "fastep_joint" else "auto").to(device)
    x = (torch.rand(n, 3, res, res, device=device) * 2 - 1).requires_grad_()
    y = torch.rand(n, 3, res, res, device=device) * 2 - 1
    if impl != "baseline":
        with no_tf32():
            ref = _value_and_grad(base, x, y)
        half = impl in ("baseline_bf16", "fastep", "fastep_joint") and device == "cuda"
        _assert_matches_baseline(_value_and_grad(loss, x, y), ref, half, l1=net == "pix2pixhd")
    del base

    def step():
        x.grad = None
        v = loss(x, y)
        v.backward()
        return v

    fastep_bench(step, group=f"perceptual_{net}", case=f"N{n}_{res}", impl=impl, device=device,
                 flops=_vgg_flops(net, n, res))


def _lpips_ref(net, device):
    lpips = pytest.importorskip("lpips")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    sd = random_state_dict({"alex": "alexnet", "vgg": "vgg16"}[net], 0)
    ref.net.load_state_dict({k: sd["features." + k.split(".", 1)[1]] for k in ref.net.state_dict()})
    return ref.eval().to(device)


@pytest.mark.parametrize("impl", ["baseline", "fastep", "fastep_bf16", "fastep_nchw"])
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips(fastep_bench, device, net, impl):
    if device != "cuda" and impl in ("fastep_bf16", "fastep_nchw"):
        pytest.skip("autocast and channels_last are off on CPU: same as fastep")
    if device == "cuda":
        n, res = (64, 256) if net == "alex" else (16, 256)
    else:
        n, res = (2, 64) if net == "alex" else (1, 32)
    if impl == "baseline":
        m = _lpips_ref(net, device)
    else:
        m = L.LPIPS(net, backbone_weights="random", amp="auto" if impl == "fastep_bf16" else False,
                    channels_last=False if impl == "fastep_nchw" else None).to(device)
    a = torch.rand(n, 3, res, res, device=device) * 2 - 1
    b = torch.rand(n, 3, res, res, device=device) * 2 - 1

    def run():
        with torch.no_grad():
            return m(a, b)

    if impl != "baseline":  # per-pair distances equal the lpips package's (see module docstring)
        ref_m = _lpips_ref(net, device)
        with torch.no_grad(), no_tf32():
            ref = ref_m(a, b).double().flatten()
        got = run().double().flatten()
        rtol = 3e-2 if impl == "fastep_bf16" else 1e-4
        err = ((got - ref).abs() / (rtol * ref.abs() + 1e-7)).max().item()
        assert err <= 1.0, f"LPIPS differs from the lpips package by {err:.3g}x the tolerance (rtol {rtol})"
        del ref_m

    fastep_bench(run, group=f"lpips_{net}", case=f"N{n}_{res}", impl=impl, device=device)
