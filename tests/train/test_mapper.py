"""The mapper network, IMLE training, N(mu, sigma) statistics and code sampling."""
import numpy as np
import pytest
import torch

import fastep
from fastep.zoo.step.mapper import Mapper
from fastep.zoo.step.imle import MapperConfig, fit_code_stats, match_nearest, sample_codes, train_mapper


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tests: see tests/conftest.py


def test_mapper_shapes_and_architecture():
    m = Mapper()
    assert m(torch.randn(5, 8)).shape == (5, 8)
    linears = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(8, 128), (128, 128), (128, 128), (128, 8)]
    assert sum(isinstance(l, torch.nn.Tanh) for l in m.modules()) == 3
    m2 = Mapper(z_dim=4, noise_dim=16, hidden=32, n_hidden=2)
    assert m2(torch.randn(3, 16)).shape == (3, 4) and m2.sample(7).shape == (7, 4)
    assert Mapper(**m2.config()).config() == m2.config()
    assert fastep.Mapper is Mapper
    with pytest.raises(ValueError, match="noise"):
        m(torch.randn(5, 4))
    with pytest.raises(ValueError, match="hidden"):
        Mapper(hidden=0)


def test_fit_code_stats_matches_numpy():
    codes = np.random.default_rng(0).normal(3.0, 2.0, (257, 8)).astype(np.float32)
    mu, sigma = fit_code_stats(torch.from_numpy(codes))
    assert mu.dtype == torch.float32 and mu.shape == sigma.shape == (8,)
    np.testing.assert_allclose(mu.numpy(), codes.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma.numpy(), codes.astype(np.float64).std(0), rtol=1e-6)
    mu2, _ = fit_code_stats(codes)  # numpy input
    assert torch.equal(mu, mu2)
    with pytest.raises(ValueError, match="codes"):
        fit_code_stats(torch.zeros(0, 8))
    with pytest.raises(ValueError, match="NaN"):
        fit_code_stats(torch.tensor([[float("nan")] * 8]))
    with pytest.raises(TypeError, match="codes"):
        fit_code_stats(torch.zeros(4, 8, dtype=torch.long))


def test_match_nearest_is_exact():
    g = torch.Generator().manual_seed(1)
    codes, samples = torch.randn(37, 5, generator=g), torch.randn(211, 5, generator=g)
    idx, dist = match_nearest(codes, samples, chunk=8)
    d = torch.cdist(codes.double(), samples.double()) ** 2
    assert torch.equal(idx, d.argmin(1))
    torch.testing.assert_close(dist.double(), d.min(1).values, rtol=1e-5, atol=1e-6)
    idx1, dist1 = match_nearest(codes, samples, distance=lambda a, b: (a[:, None] - b[None]).abs().sum(-1))
    assert torch.equal(idx1, (codes[:, None] - samples[None]).abs().sum(-1).argmin(1))


def test_imle_reduces_matching_distance_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    # a code distribution far from N(0, I): two tight, offset clusters
    codes = torch.cat([torch.randn(96, 8, generator=g) * 0.1 + 2.0, torch.randn(96, 8, generator=g) * 0.2 - 1.0])
    cfg = MapperConfig(epochs=30, rematch_every=5, decay_every=10, batch_size=32, seed=3)
    m = train_mapper(codes, cfg, "cpu")
    h = m.history
    assert h["match_epoch"][:2] == [0, 5] and h["match_epoch"][-1] == 30
    assert h["match_dist"][-1] < 0.2 * h["match_dist"][0], h["match_dist"]
    assert h["lr"][0] == pytest.approx(0.01) and h["lr"][-1] == pytest.approx(0.01 * 0.7 ** 2)
    assert not m.training
    # samples land near the codes: each sample's nearest code is close
    z = sample_codes(300, mapper=m, generator=torch.Generator().manual_seed(0))
    near = torch.cdist(z, codes).min(1).values
    far = torch.cdist(torch.randn(300, 8, generator=g), codes).min(1).values
    assert near.median() < 0.5 * far.median()
    m2 = train_mapper(codes, cfg, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_sample_codes_from_stats():
    mu, sigma = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.1, 2.0, 0.0])
    z = sample_codes(20000, stats=(mu, sigma), generator=torch.Generator().manual_seed(0))
    assert z.shape == (20000, 3)
    torch.testing.assert_close(z.mean(0), mu, atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), sigma, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="exactly one"):
        sample_codes(3)
    with pytest.raises(ValueError, match="exactly one"):
        sample_codes(3, mapper=Mapper(z_dim=3), stats=(mu, sigma))
    with pytest.raises(ValueError, match="stats"):
        sample_codes(3, stats=(mu, sigma[:2]))
    with pytest.raises(ValueError, match="epochs"):
        MapperConfig(epochs=0)


@pytest.mark.cuda
def test_mapper_trains_on_cuda():
    g = torch.Generator().manual_seed(0)
    codes = (torch.randn(256, 8, generator=g) * 0.2 + 1.5).cuda()
    m = train_mapper(codes, MapperConfig(epochs=20, decay_every=10, batch_size=32), "cuda")
    assert next(m.parameters()).is_cuda
    assert m.history["match_dist"][-1] < 0.5 * m.history["match_dist"][0]
    assert sample_codes(5, mapper=m).device.type == "cuda"
    mu, sigma = fit_code_stats(codes)
    assert mu.is_cuda and sample_codes(5, stats=(mu, sigma)).is_cuda
