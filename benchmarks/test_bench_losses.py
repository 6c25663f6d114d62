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
  conv_i_2 / MSE loss, its baseline the same structure on VGG16.
  CUDA: batch 8, 16, 32 at 256 x 256.  CPU: batch 1 at 32 x 32 (smoke run).
* ``lpips`` forward (metric use, no_grad) at batch 64 of 256 x 256 pairs (CPU: 2 at 64 x 64).
  baseline: ``lpips.LPIPS(net="alex")`` (the package, fp32) with the same random backbone;
  ``fastep``: ``fastep.losses.LPIPS("alex")`` in fp32 (equal values); ``fastep_bf16``: with
  ``amp="auto"`` (bf16 backbone on CUDA); ``fastep_nchw``: fp32 without channels_last.  Also ``lpips_vgg`` at batch 16 (CPU: 1 at 32 x 32).
On CPU the autocast variants equal the fp32 ones and are skipped.

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

def _perceptual_cases(device):
    if device == "cuda":
        return [("pix2pixhd", n, 256) for n in (8, 16, 32)] + [("vgg16", 8, 256)]
    return [("pix2pixhd", 1, 32), ("vgg16", 1, 32)]


def _vgg_flops(net, n, res):
    # about 19.6 (vgg19 to relu5_1) / 15.4 (vgg16 to relu5_2) GMAC per 224^2 image forward
    gmac = {"pix2pixhd": 19.6, "vgg16": 15.4}[net] * (res / 224) ** 2
    # two forward passes + one backward (input grads only, ~1x forward)
    return 2 * gmac * 1e9 * n * 3


@pytest.mark.parametrize("impl", ["baseline", "fastep", "fastep_fp32", "fastep_joint"])
@pytest.mark.parametrize("case", range(4))
def test_perceptual(fastep_bench, device, case, impl):
    cases = _perceptual_cases(device)
    if case >= len(cases):
        pytest.skip("no such case on this device")
    net, n, res = cases[case]
    if device != "cuda" and impl in ("fastep", "fastep_joint"):
        pytest.skip("autocast is off on CPU: same as fastep_fp32")
    if impl == "baseline":
        loss = VGGLossReference(net).to(device)
    else:
        loss = L.PerceptualLoss(net, backbone_weights="random", amp=False if impl == "fastep_fp32" else "auto",
                                target_pass="joint" if impl == "fastep_joint" else "auto").to(device)
    x = (torch.rand(n, 3, res, res, device=device) * 2 - 1).requires_grad_()
    y = torch.rand(n, 3, res, res, device=device) * 2 - 1

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

    fastep_bench(run, group=f"lpips_{net}", case=f"N{n}_{res}", impl=impl, device=device)
