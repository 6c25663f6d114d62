"""Reference VGG losses: pix2pixHD's ``VGGLoss``, the eager fp32 definition that
``fastep.losses.PerceptualLoss`` is tested against (tests/test_losses.py) and benchmarked
against (benchmarks/test_bench_losses.py), built on a torchvision-layout VGG with fastep's seeded
random weights (no ImageNet download)."""
import torch
from torch import nn

# torchvision vgg `features` module-index slices: pix2pixHD's Vgg19 (relu_i_1, L1) and StEP's
# VGG16 conv_i_2 (post-ReLU, MSE)
VGG_LOSS_SLICES = {"pix2pixhd": ("vgg19", ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30)), "l1"),
                   "vgg16": ("vgg16", ((0, 4), (4, 9), (9, 14), (14, 21), (21, 28)), "mse")}


def torchvision_vgg_features(arch: str, seed: int = 0):
    """torchvision-layout VGG ``features`` (``make_layers``) with fastep's seeded random weights."""
    from .weights import VGG_CFGS, random_state_dict

    layers, cin = [], 3
    for v in VGG_CFGS[arch]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    feats = nn.Sequential(*layers)
    sd = random_state_dict(arch, seed)
    feats.load_state_dict({k[len("features."):]: v for k, v in sd.items()})
    return feats.requires_grad_(False).eval()


class VGGLossReference(nn.Module):
    """pix2pixHD's ``VGGLoss``, its structure verbatim (slices, weights 1/32..1, criterion,
    detached target, two backbone passes, fp32, NCHW), fed ImageNet-normalised images like
    fastep's VGG features (``normalize=False``: the raw [-1, 1] images, as pix2pixHD does).

    ``net``: "pix2pixhd" (VGG19, L1) or "vgg16" (StEP, MSE); ``criterion`` overrides the
    distance; the backbone gets fastep's random weights for ``seed``.
    """

    def __init__(self, net: str = "pix2pixhd", criterion=None, *, seed: int = 0, normalize: bool = True):
        super().__init__()
        from .vgg import IMAGENET_MEAN, IMAGENET_STD

        arch, cuts, dist = VGG_LOSS_SLICES[net]
        f = torchvision_vgg_features(arch, seed)
        self.slices = nn.ModuleList(nn.Sequential(*[f[i] for i in range(a, b)]) for a, b in cuts)
        self.criterion = criterion if criterion is not None else (
            nn.L1Loss() if dist == "l1" else nn.MSELoss())
        self.normalize = normalize
        self.weights = [1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0]
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
        self.register_buffer("a", (0.5 / std).float().view(1, 3, 1, 1))
        self.register_buffer("b", ((0.5 - mean) / std).float().view(1, 3, 1, 1))

    def vgg(self, x):
        h = x * self.a.to(x.dtype) + self.b.to(x.dtype) if self.normalize else x
        out = []
        for s in self.slices:
            h = s(h)
            out.append(h)
        return out

    def forward(self, x, y):
        x_vgg, y_vgg = self.vgg(x), self.vgg(y)
        loss = 0
        for i in range(len(x_vgg)):
            loss += self.weights[i] * self.criterion(x_vgg[i], y_vgg[i].detach())
        return loss
