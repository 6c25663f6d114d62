import math

import numpy as np
import pytest
import torch

from fastep.eval import metrics as M


def test_psnr_hand_computed():
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[0] += 0.5          # MSE 0.25 -> 10 log10(4 / 0.25) = 12.0412 dB
    y[1, :, :2] += 1.0   # MSE 0.5  -> 10 log10(4 / 0.5)  = 9.0309 dB
    per = M.psnr(x, y, reduction="none")
    assert per.tolist() == pytest.approx([10 * math.log10(16), 10 * math.log10(8)], rel=1e-12)
    assert float(M.psnr(x, y)) == pytest.approx((10 * math.log10(16) + 10 * math.log10(8)) / 2)
    assert math.isinf(float(M.psnr(x, x)))


def test_psnr_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(TypeError, match="floating"):
        M.psnr(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        M.psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4))


def test_pairwise_mean_distance_matches_loop():
    s = torch.randn(5, 3, 2, 2)
    dist = lambda a, b: (a - b).abs().flatten(1).mean(1)  # noqa: E731
    expected = np.mean([float(dist(s[i:i + 1], s[j:j + 1])) for i in range(5) for j in range(i + 1, 5)])
    assert float(M.pairwise_mean_distance(s, dist)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        M.pairwise_mean_distance(s[:1], dist)


def test_linear_probe_and_retrieval_separate_informative_from_noise():
    n, classes = 300, 4
    labels = torch.randint(0, classes, (n,))
    centers = torch.randn(classes, 8) * 4
    z_good = centers[labels] + 0.3 * torch.randn(n, 8)
    z_noise = torch.randn(n, 8)
    tr, te = slice(0, 200), slice(200, None)
    good = M.linear_probe_accuracy(z_good[tr], labels[tr], z_good[te], labels[te])
    noise = M.linear_probe_accuracy(z_noise[tr], labels[tr], z_noise[te], labels[te])
    chance = M.chance_accuracy(labels[te])
    assert good > 0.95 and noise < chance + 0.2
    assert M.nn_retrieval_accuracy(z_good, labels) > 0.95
    assert M.nn_retrieval_accuracy(z_noise, labels) < chance + 0.2


def test_nn_retrieval_hand_computed():
    z = torch.tensor([[0.0], [0.1], [5.0], [5.2], [10.0]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    # nearest: 0->1 (same), 1->0 (same), 2->3 (same), 3->2 (same), 4->3 (different)
    assert M.nn_retrieval_accuracy(z, labels) == pytest.approx(4 / 5)


def test_linear_probe_r2_exact_on_linear_target():
    z = torch.randn(100, 3, dtype=torch.float64)
    y = z @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 3.0
    assert M.linear_probe_r2(z[:70], y[:70], z[70:], y[70:], ridge=0.0) == pytest.approx(1.0, abs=1e-9)


def test_frechet_distance_against_closed_form():
    # Gaussians with diagonal covariances: FID = |mu_a - mu_b|^2 + sum (sa - sb)^2 (std devs).
    a = torch.randn(20000, 3, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5]) + 1.0
    b = torch.randn(20000, 3, dtype=torch.float64) * torch.tensor([2.0, 1.0, 0.5])
    sa, sb = a.std(0), b.std(0)
    closed = float((a.mean(0) - b.mean(0)).pow(2).sum() + (sa - sb).pow(2).sum())
    assert M.frechet_distance(a, b) == pytest.approx(closed, rel=0.02, abs=0.02)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_inception_score_extremes():
    # Confident and uniformly spread over 10 classes -> IS = 10; identical predictions -> IS = 1.
    logits = torch.full((100, 10), -30.0)
    logits[torch.arange(100), torch.arange(100) % 10] = 30.0
    mean, _ = M.inception_score(logits, splits=1)
    assert mean == pytest.approx(10.0, rel=1e-6)
    same = torch.randn(1, 10).expand(50, 10)
    assert M.inception_score(same, splits=5)[0] == pytest.approx(1.0, abs=1e-9)


def test_load_inception_without_weights_explains():
    with pytest.raises(FileNotFoundError, match="inception_v3_google"):
        M.load_inception(None)
