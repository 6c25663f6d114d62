"""Stage 1: triplet pre-training of the style encoder."""
import numpy as np
import pytest
import torch
from torch import nn

from fastep.data import BuiltinStyles, PairedImageDataset, make_builtin_dataset
from fastep.zoo.step.stage1 import (Stage1Config, mine_triplets_from_images, resample_triplets, train_encoder_stage1,
                                 triplet_loss)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tests: see tests/conftest.py


class TinyEncoder(nn.Module):
    def __init__(self, z_dim=8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 3, 2, 1),
                                 nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, z_dim))

    def forward(self, x):
        return self.net(x)


def test_triplet_loss_definition():
    za = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    zp = torch.tensor([[0.1, 0.0], [1.0, 2.0]], dtype=torch.float64)
    zn = torch.tensor([[1.0, 0.0], [1.0, 1.5]], dtype=torch.float64)
    loss, trip, l2 = triplet_loss(za, zp, zn, alpha=0.1, lambda_l2=0.01)
    # hinge: max(0.01 - 1 + 0.1, 0) = 0 ; max(1 - 0.25 + 0.1, 0) = 0.85 -> mean 0.425
    assert trip.item() == pytest.approx(0.425)
    allz = torch.cat([za, zp, zn])
    assert l2.item() == pytest.approx(allz.square().mean().item())
    assert loss.item() == pytest.approx(0.425 + 0.01 * l2.item())


def _colour_images(n, seed):
    """Two 'styles' (reddish flat vs bluish striped) with noise; returns uint8 images and labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.where(labels.view(-1, 1, 1, 1) == 0, torch.tensor([200.0, 60, 60]).view(1, 3, 1, 1),
                       torch.tensor([60.0, 60, 200]).view(1, 3, 1, 1)).expand(n, 3, 16, 16).clone()
    stripes = (torch.arange(16) % 4 < 2).float().view(1, 1, 1, 16) * 60
    base = base + stripes * (labels.view(-1, 1, 1, 1) == 1)
    img = (base + torch.randn(n, 3, 16, 16, generator=g) * 20).clamp(0, 255).to(torch.uint8)
    return img, labels


def _class_triplets(labels, per_anchor, seed):
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    out = []
    for a in range(len(labels)):
        pos = np.flatnonzero((labels == labels[a]) & (np.arange(len(labels)) != a))
        neg = np.flatnonzero(labels != labels[a])
        if len(pos) and len(neg):
            out += [(a, rng.choice(pos), rng.choice(neg)) for _ in range(per_anchor)]
    return torch.tensor(out, dtype=torch.long)


def test_loss_falls_on_a_tiny_case():
    imgs, labels = _colour_images(24, 0)
    trips = _class_triplets(labels, 2, 0)
    torch.manual_seed(0)
    enc = TinyEncoder()
    cfg = Stage1Config(steps=40, batch_size=8, log_every=5)
    hist = train_encoder_stage1(enc, imgs, trips, cfg, "cpu", progress=False)
    assert hist["steps"] == 40 and len(hist["loss"]) == 8 and hist["step"][-1] == 40
    assert all(np.isfinite(hist["loss"]))
    assert np.mean(hist["loss"][-2:]) < 0.5 * np.mean(hist["loss"][:1])
    assert hist["active"][-1] <= hist["active"][0]
    assert hist["images"] == 40 * 8 * 3 and hist["config"]["alpha"] == 0.1
    # float input in [-1, 1] is accepted too, and epochs mode covers len(triplets) // batch per epoch
    hist2 = train_encoder_stage1(TinyEncoder(), imgs.float() / 127.5 - 1, trips,
                                 Stage1Config(epochs=2, batch_size=8), "cpu", progress=False)
    assert hist2["steps"] == 2 * (len(trips) // 8) and hist2["epochs"] == 2 and len(hist2["epoch_loss"]) == 2


def test_fixed_triplets_reshuffled_each_epoch():
    t = torch.arange(30).view(10, 3)
    e0, e1 = resample_triplets(t, 0, seed=0), resample_triplets(t, 1, seed=0)
    assert sorted(e0[:, 0].tolist()) == sorted(e1[:, 0].tolist()) == list(range(0, 30, 3))
    assert not torch.equal(e0, e1) and torch.equal(e0, resample_triplets(t, 0, seed=0))
    assert resample_triplets(t, 0, seed=0, n=4).shape == (4, 3)


def test_bad_inputs_name_the_argument():
    imgs, _ = _colour_images(6, 0)
    enc = TinyEncoder()
    with pytest.raises(ValueError, match="triplets"):
        train_encoder_stage1(enc, imgs, torch.tensor([[0, 1, 9]]), Stage1Config(steps=1), "cpu", progress=False)
    with pytest.raises(ValueError, match="triplets"):
        train_encoder_stage1(enc, imgs, torch.tensor([0, 1, 2]), Stage1Config(steps=1), "cpu", progress=False)
    with pytest.raises(TypeError, match="triplets"):
        train_encoder_stage1(enc, imgs, "abc", Stage1Config(steps=1), "cpu", progress=False)
    with pytest.raises(ValueError, match="images_B"):
        train_encoder_stage1(enc, imgs[:, :2], torch.tensor([[0, 1, 2]]), Stage1Config(steps=1), "cpu",
                             progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        Stage1Config(batch_size=0)


def _separation(enc, imgs, cls):
    """Mean distance between codes of different style classes / within the same class."""
    with torch.no_grad():
        z = enc(imgs.float() / 127.5 - 1).double()
    d = torch.cdist(z, z)
    same = torch.as_tensor(cls[:, None] == cls[None])
    eye = torch.eye(len(cls), dtype=torch.bool)
    return float(d[~same].mean() / d[same & ~eye].mean())


@pytest.fixture(scope="module")
def builtin32(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_builtin_dataset(tmp_path_factory.mktemp("b") / "set", 200, 80, resolution=32, seed=11)
    finally:
        torch.set_num_threads(n)


def test_encoder_trained_on_builtin_separates_styles_better_than_random_init(builtin32):
    from fastep.zoo.step import StyleEncoder

    styles = BuiltinStyles.load(builtin32)
    train = PairedImageDataset(builtin32, "train", 32, crop=False, flip=False)
    x_val, _ = PairedImageDataset(builtin32, "val", 32, crop=False, flip=False).stack_images("B")
    key = ("palette", "texture")
    cls_tr, cls_va = styles.style_class("train", key), styles.style_class("val", key)
    trips = _class_triplets(cls_tr, 3, 0)
    torch.manual_seed(0)
    enc = StyleEncoder(z_dim=8, nf=8)
    before = _separation(enc, x_val, cls_va)
    cfg = Stage1Config(steps=60, batch_size=8, lr=3e-3, log_every=20)
    hist = train_encoder_stage1(enc, train, trips, cfg, "cpu", progress=False)  # a dataset as images_B
    after = _separation(enc, x_val, cls_va)
    assert hist["loss"][-1] < hist["loss"][0]
    assert after > 1.5 * before, (before, after)


def test_mined_neighbours_drive_training(builtin32):
    """mine_triplets_from_images (VGG Gram vectors, random weights here) -> Neighbours -> training."""
    train = PairedImageDataset(builtin32, "train", 32, crop=False, flip=False)
    imgs, _ = train.stack_images("B")
    imgs = imgs[:48]
    cfg = Stage1Config(steps=6, batch_size=4, k_near=3, k_far=6, vgg_weights="random", style_layers="vgg16",
                       feature_batch_size=16)
    nb = mine_triplets_from_images(imgs, cfg, "cpu")
    assert nb.near_idx.shape == (48, 3) and nb.far_idx.shape == (48, 6)
    assert not (nb.near_idx == torch.arange(48)[:, None]).any()  # self excluded
    # the style distance sees the palette: near neighbours share it far more often than chance
    pal = torch.as_tensor(BuiltinStyles.load(builtin32).factor("train", "palette")[:48])
    same_near = (pal[nb.near_idx] == pal[:, None]).double().mean()
    chance = (pal[:, None] == pal[None]).double().mean()
    assert same_near > 2 * chance, (same_near, chance)
    trips = resample_triplets(nb, 0, seed=0)
    assert trips.shape == (48, 3) and sorted(trips[:, 0].tolist()) == list(range(48))
    assert not torch.equal(trips[:, 0], torch.arange(48))  # shuffled, not anchors in order
    for a, p, n in trips.tolist():
        assert p in nb.near_idx[a].tolist() and n in nb.far_idx[a].tolist()
    assert not torch.equal(trips, resample_triplets(nb, 1, seed=0))
    hist = train_encoder_stage1(TinyEncoder(), imgs, nb, cfg, "cpu", progress=False)
    assert hist["steps"] == 6 and np.isfinite(hist["loss"]).all()


@pytest.mark.cuda
def test_stage1_on_cuda_bf16_matches_cpu_behaviour():
    imgs, labels = _colour_images(48, 0)
    trips = _class_triplets(labels, 2, 0)
    torch.manual_seed(0)
    enc = TinyEncoder()
    hist = train_encoder_stage1(enc, imgs, trips, Stage1Config(steps=60, batch_size=12, log_every=10), "cuda",
                                progress=False)
    assert next(enc.parameters()).is_cuda and np.isfinite(hist["loss"]).all()
    assert np.mean(hist["loss"][-2:]) < np.mean(hist["loss"][:1])
    hist_c = train_encoder_stage1(TinyEncoder().cuda(), imgs, trips,
                                  Stage1Config(steps=8, batch_size=12, compile=True, log_every=4), "cuda",
                                  progress=False)
    assert hist_c["steps"] == 8 and np.isfinite(hist_c["loss"]).all()


def test_band_negatives_are_the_ranked_neighbours_of_the_style_distance(builtin32):
    """negatives="band": far_idx is exactly ranks lo..hi-1 of the float64 style distance (self excluded)."""
    from fastep.zoo.step.stage1 import style_vectors

    imgs, _ = PairedImageDataset(builtin32, "train", 32, crop=False, flip=False).stack_images("B")
    imgs = imgs[:40]
    cfg = Stage1Config(k_near=3, negatives="band", negative_band=(5, 12), vgg_weights="random",
                       style_layers=("relu1_2", "relu2_2"), mining_features="gram+highpass")
    nb = mine_triplets_from_images(imgs, cfg, "cpu")
    v = style_vectors(imgs, cfg, "cpu").double()
    d = torch.cdist(v, v).square()
    d.fill_diagonal_(float("inf"))
    order = d.argsort(1)
    assert torch.equal(nb.near_idx, order[:, :3])
    assert torch.equal(nb.far_idx, order[:, 5:12])
    with pytest.warns(UserWarning, match="clipped to 5..9"):
        small = mine_triplets_from_images(imgs[:11], cfg, "cpu")
    assert small.far_idx.shape == (11, 5)
    with pytest.raises(ValueError, match="too few"):
        mine_triplets_from_images(imgs[:4], cfg, "cpu")


def test_highpass_features_are_balanced_gram_blocks_of_the_image_and_its_highpass(builtin32):
    from fastep.features import get_style_net, style_features
    from fastep.ops import gram_vector_dim
    from fastep.zoo.step.stage1 import _luminance_highpass, style_vectors

    imgs, _ = PairedImageDataset(builtin32, "train", 32, crop=False, flip=False).stack_images("B")
    imgs = imgs[:24]
    layers = ("relu1_2", "relu2_2")
    cfg = Stage1Config(vgg_weights="random", style_layers=layers, mining_features="gram+highpass")
    v = style_vectors(imgs, cfg, "cpu").double()
    net = get_style_net(layers, weights="random", device="cpu")
    x = imgs.float() / 127.5 - 1
    ref = torch.cat([style_features(x, net=net, output="vectors"),
                     style_features(_luminance_highpass(x), net=net, output="vectors")], 1).double()
    dims = [gram_vector_dim([64]), gram_vector_dim([128])] * 2
    assert v.shape == ref.shape and sum(dims) == v.shape[1]
    start = 0
    for d in dims:
        blk, rblk = v[:, start:start + d], ref[:, start:start + d]
        assert torch.cdist(blk, blk).square().sum() / (24 * 24) == pytest.approx(1.0, rel=1e-4)
        ratio = blk.norm() / rblk.norm()
        torch.testing.assert_close(blk, rblk * ratio, rtol=1e-4, atol=1e-6 * float(blk.abs().max()))
        start += d
    # a flat image has no high-pass (to float32 rounding)
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert _luminance_highpass(flat).abs().max() < 1e-6


def test_stage1_settings_in_the_run_config():
    from fastep.config import ConfigError
    from fastep.zoo.step.run_config import resolve_run_config

    run = resolve_run_config("cpu", {"stage1.negative_band": [25, 70], "stage1_epochs": 7})
    cfg = run.stage1_config("random")
    assert (cfg.epochs, cfg.negatives, cfg.negative_band, cfg.mining_features) == (7, "band", (25, 70), "gram+highpass")
    assert cfg.style_layers == run.mining_layers
    paper = resolve_run_config("paper").stage1_config()
    assert (paper.negatives, paper.mining_features) == ("far", "gram")
    with pytest.raises(ConfigError, match="stage1_epochs"):
        resolve_run_config("cpu", {"stage1.epochs": 3})
    with pytest.raises(ConfigError, match="negatives"):
        resolve_run_config("cpu", {"stage1.negatives": "hard"})
    with pytest.raises(ConfigError, match="unknown|valid"):
        resolve_run_config("cpu", {"stage1.colour": 1})
