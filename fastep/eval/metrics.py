"""Evaluation metrics of the StEP paper (section 4) plus style-capture metrics.

All functions take tensors (images in [-1, 1], NCHW) or plain callables, so they work with any
generator/encoder, not only fastep's.  The LPIPS callable defaults to ``fastep.losses.LPIPS``.

* :func:`psnr`                       reconstruction PSNR of images in [-1, 1]
* :func:`pairwise_mean_distance`     mean over unordered pairs of a distance (diversity)
* :func:`linear_probe_accuracy`      ridge-regression probe from codes to categorical factors
* :func:`linear_probe_r2`            ridge-regression probe from codes to continuous factors
* :func:`nn_retrieval_accuracy`      leave-one-out nearest-neighbour label agreement
* :func:`frechet_distance`, :func:`inception_score`   from Inception features / logits
* :func:`kid`                        kernel inception distance (unbiased MMD^2, cubic kernel)
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

Tensor = torch.Tensor


def _check_images(name: str, x: Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point image tensor in [-1, 1], got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")


def psnr(x: Tensor, y: Tensor, *, data_range: float = 2.0, reduction: str = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (``data_range`` = max - min = 2).

    Computed per image (10 log10(range^2 / MSE)) then averaged, as image-translation papers do.
    Identical images give +inf for that image.
    """
    _check_images("x", x)
    _check_images("y", y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    value = 10.0 * torch.log10(torch.as_tensor(data_range, dtype=torch.float64) ** 2 / mse)
    if reduction == "none":
        return value
    if reduction == "mean":
        return value.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def pairwise_mean_distance(samples: Tensor, distance: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Mean of ``distance(a, b)`` over all unordered pairs of ``samples`` (K, ...), K >= 2.

    The diversity score of the paper: the mean pairwise LPIPS between the K outputs generated
    for one input.  ``distance`` gets two batches of equal size and returns one value per pair.
    """
    k = samples.shape[0]
    if k < 2:
        raise ValueError(f"samples must hold at least 2 outputs, got {k}")
    i, j = torch.triu_indices(k, k, offset=1, device=samples.device)
    d = distance(samples[i], samples[j]).reshape(-1)
    if d.numel() != i.numel():
        raise ValueError(f"distance returned {d.numel()} values for {i.numel()} pairs")
    return d.double().mean()


def _ridge_fit_predict(z_train: Tensor, y_train: Tensor, z_test: Tensor, ridge: float) -> Tensor:
    z_train, z_test, y_train = z_train.double(), z_test.double(), y_train.double()
    mu, sd = z_train.mean(0), z_train.std(0).clamp_min(1e-8)
    a = torch.cat([(z_train - mu) / sd, torch.ones(len(z_train), 1, dtype=torch.float64)], 1)
    b = torch.cat([(z_test - mu) / sd, torch.ones(len(z_test), 1, dtype=torch.float64)], 1)
    reg = ridge * torch.eye(a.shape[1], dtype=torch.float64)
    reg[-1, -1] = 0.0  # never shrink the intercept
    w = torch.linalg.solve(a.T @ a + reg, a.T @ y_train)
    return b @ w


def _check_codes(z: Tensor, y: Tensor, zname: str, yname: str) -> None:
    if z.ndim != 2:
        raise ValueError(f"{zname} must be (N, D) codes, got shape {tuple(z.shape)}")
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"{yname} has {y.shape[0]} rows but {zname} has {z.shape[0]}")
    if z.shape[0] < 2:
        raise ValueError(f"{zname} needs at least 2 rows")


def linear_probe_accuracy(z_train: Tensor, labels_train: Tensor, z_test: Tensor, labels_test: Tensor,
                          *, ridge: float = 1e-3) -> float:
    """Accuracy of a linear (one-hot ridge regression) classifier from codes to a categorical factor.

    A style encoder "captures" a style factor when a linear read-out of its codes recovers the
    factor on held-out images.  Chance level is the frequency of the most common test label.
    """
    _check_codes(z_train, labels_train, "z_train", "labels_train")
    _check_codes(z_test, labels_test, "z_test", "labels_test")
    if labels_train.dtype.is_floating_point or labels_test.dtype.is_floating_point:
        raise TypeError("labels must be integer class ids")
    classes = int(max(labels_train.max(), labels_test.max())) + 1
    onehot = torch.nn.functional.one_hot(labels_train.long(), classes)
    scores = _ridge_fit_predict(z_train, onehot, z_test, ridge)
    return float((scores.argmax(1) == labels_test.long()).double().mean())


def linear_probe_r2(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor,
                    *, ridge: float = 1e-3) -> float:
    """Coefficient of determination R^2 of a ridge-regression read-out of a continuous factor."""
    _check_codes(z_train, y_train, "z_train", "y_train")
    _check_codes(z_test, y_test, "z_test", "y_test")
    y_test = y_test.double().reshape(len(y_test), -1)
    pred = _ridge_fit_predict(z_train, y_train.double().reshape(len(y_train), -1), z_test, ridge)
    ss_res = (y_test - pred).pow(2).sum()
    ss_tot = (y_test - y_test.mean(0)).pow(2).sum().clamp_min(1e-12)
    return float(1.0 - ss_res / ss_tot)


def nn_retrieval_accuracy(z: Tensor, labels: Tensor) -> float:
    """Leave-one-out 1-nearest-neighbour retrieval: how often an image's closest code (Euclidean,
    itself excluded; ties to the lower index) shares its label."""
    _check_codes(z, labels, "z", "labels")
    z = z.double()
    d = torch.cdist(z, z)
    d.fill_diagonal_(math.inf)
    nearest = d.argmin(1)
    return float((labels[nearest] == labels).double().mean())


def chance_accuracy(labels: Tensor) -> float:
    """Accuracy of always answering the most frequent label."""
    counts = torch.bincount(labels.long())
    return float(counts.max()) / float(labels.numel())


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID on Inception pool3)."""
    for name, f in (("feats_a", feats_a), ("feats_b", feats_b)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must be (N >= 2, D), got {tuple(f.shape)}")
    a, b = feats_a.double(), feats_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # tr(sqrt(cov_a cov_b)) through the eigenvalues of sqrt(cov_a) cov_b sqrt(cov_a) (symmetric PSD).
    ea, va = torch.linalg.eigh(cov_a)
    sqrt_a = (va * ea.clamp_min(0).sqrt()) @ va.T
    eigs = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0)
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * eigs.sqrt().sum())


def kid(feats_a: Tensor, feats_b: Tensor, subsets: int = 10, subset_size: Optional[int] = None,
        seed: int = 0) -> float:
    """Kernel inception distance: the unbiased MMD^2 of two feature sets with the kernel
    k(a, b) = (a.b / d + 1)^3, averaged over ``subsets`` random subsets of ``subset_size``
    rows of each (default: all rows, once, when both sets are at most 1000 rows)."""
    for name, f in (("feats_a", feats_a), ("feats_b", feats_b)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must be (N >= 2, D), got {tuple(f.shape)}")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature sizes differ: {feats_a.shape[1]} and {feats_b.shape[1]}")
    a, b = feats_a.double(), feats_b.double()
    d = a.shape[1]
    m = min(len(a), len(b), subset_size or 1000)
    if subset_size is None and len(a) <= 1000 and len(b) <= 1000:
        pairs = [(a, b)]
    else:
        gen = torch.Generator().manual_seed(int(seed))
        pairs = [(a[torch.randperm(len(a), generator=gen)[:m]], b[torch.randperm(len(b), generator=gen)[:m]])
                 for _ in range(subsets)]
    vals = []
    for x, y in pairs:
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        n1, n2 = len(x), len(y)
        vals.append((kxx.sum() - kxx.diagonal().sum()) / (n1 * (n1 - 1))
                    + (kyy.sum() - kyy.diagonal().sum()) / (n2 * (n2 - 1)) - 2 * kxy.mean())
    return float(torch.stack(vals).mean())


def inception_score(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception score exp(E_x KL(p(y|x) || p(y))) from classifier logits: (mean, std) over splits."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got {tuple(logits.shape)}")
    if splits < 1 or logits.shape[0] < splits:
        raise ValueError(f"splits must be in [1, N={logits.shape[0]}], got {splits}")
    p = torch.softmax(logits.double(), dim=1)
    scores = []
    for part in p.chunk(splits):
        py = part.mean(0, keepdim=True)
        kl = (part * (torch.log(part.clamp_min(1e-30)) - torch.log(py.clamp_min(1e-30)))).sum(1).mean()
        scores.append(torch.exp(kl))
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False))


def load_inception(weights_path: Optional[str], device: torch.device | str = "cpu") -> torch.nn.Module:
    """torchvision Inception-v3 from a local torchvision-format state-dict file.

    Inception weights cannot be downloaded by fastep; pass the file you have (e.g. torchvision's
    ``inception_v3_google-0cc3c7bd.pth``).  Raises FileNotFoundError with instructions otherwise.
    """
    import os

    import torchvision

    if not weights_path or not os.path.isfile(weights_path):
        raise FileNotFoundError(
            "Inception score / FID need Inception-v3 weights as a local file: download "
            "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth on a machine with "
            f"network access and pass its path (got {weights_path!r}).")
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return net.eval().to(device)


@torch.no_grad()
def inception_outputs(net: torch.nn.Module, images: Tensor, batch_size: int = 50) -> tuple[Tensor, Tensor]:
    """(pool3 features (N, 2048), logits (N, 1000)) of images in [-1, 1], resized to 299."""
    _check_images("images", images)
    feats, logits = [], []
    captured = {}
    hook = net.avgpool.register_forward_hook(lambda m, i, o: captured.__setitem__("f", o.flatten(1)))
    try:
        mean = torch.tensor([0.485, 0.456, 0.406], device=images.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=images.device).view(1, 3, 1, 1)
        for chunk in images.split(batch_size):
            x = torch.nn.functional.interpolate(chunk.float(), size=(299, 299), mode="bilinear",
                                                align_corners=False)
            x = ((x + 1) / 2 - mean) / std
            out = net(x)
            logits.append(out if isinstance(out, torch.Tensor) else out[0])
            feats.append(captured["f"])
    finally:
        hook.remove()
    return torch.cat(feats), torch.cat(logits)
