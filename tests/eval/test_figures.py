import numpy as np
import torch
from PIL import Image

from fastep.eval import figures as F


class _ToyG(torch.nn.Module):
    def forward(self, a, z):
        return torch.tanh(a + z[:, :3, None, None])


def _toy_e(b):
    return b.mean((2, 3)).repeat(1, 3)[:, :8]


def _load(path):
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.ndim == 3 and img.shape[2] == 3
    assert img.std() > 1.0, "figure is blank"
    return img


def test_style_transfer_grid_size_and_content(tmp_path):
    a, b = torch.rand(3, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 2 - 1
    img = _load(F.style_transfer_grid(_ToyG(), _toy_e, a, b, tmp_path / "grid.png"))
    pad = 2
    assert img.shape[:2] == (4 * (16 + pad) + pad, 5 * (16 + pad) + pad)
    # The corner cell is blank (white); the first row shows the style images.
    assert (img[pad:pad + 16, pad:pad + 16] == 255).all()
    expected = F.to_uint8(b[:1])[0]
    assert (img[pad:pad + 16, 2 * pad + 16:2 * pad + 32] == expected).all()


def test_interpolation_and_sampling(tmp_path):
    a = torch.rand(2, 3, 8, 8) * 2 - 1
    z0, z1 = torch.randn(2, 8), torch.randn(2, 8)
    img = _load(F.interpolation_strips(_ToyG(), a, z0, z1, tmp_path / "interp.png", steps=5))
    assert img.shape[:2] == (2 * 10 + 2, 6 * 10 + 2)
    img = _load(F.sampling_grid(_ToyG(), a, {"mapper": torch.randn(4, 8), "gaussian": torch.randn(4, 8)},
                                tmp_path / "sample.png"))
    assert img.shape[:2] == (4 * 10 + 2, 5 * 10 + 2)


def test_embedding_and_curve_plots(tmp_path):
    codes = torch.randn(60, 8)
    labels = torch.arange(60) % 3
    _load(F.embedding_plot(codes, labels, tmp_path / "pca.png"))
    _load(F.curve_plot([(0, 0.5), (1, 0.4), (2, 0.35)], tmp_path / "curve.png",
                       boundaries={"stage 3": 1.0}))
    xy = F.embed_2d(codes, "pca")
    assert xy.shape == (60, 2)
