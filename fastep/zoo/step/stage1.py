"""Stage 1: pre-train the style encoder E with a triplet loss on style-distance neighbours.

For every anchor image, its ``k_near`` (5) nearest and ``k_far`` (13) furthest images under the
Gatys style distance are mined exactly (:func:`mine_triplets_from_images`: VGG16 Gram vectors via
:func:`fastep.features.style_features`, then :func:`fastep.ops.mine_neighbours`).  Each epoch draws
fresh triplets (anchor, positive uniform from its near set, negative uniform from its far set)
and trains E on

    max(|za - zp|^2 - |za - zn|^2 + alpha, 0) + lambda * mean(z^2 over the three codes)

with alpha = 0.1, lambda = 0.01, batch 12 triplets, Adam(1e-3, betas (0, 0.99)) (official code; docs/step.md).

Two options beyond the paper (:class:`Stage1Config`, used by the CPU preset): ``mining_features=
"gram+highpass"`` adds the Gram vectors of B's luminance high-pass image and balances every layer's
block, and ``negatives="band"`` draws negatives from a band of nearer ranks (semi-hard) instead of
the furthest images.  With random-weight VGG features the plain Gram distance is ruled by colour,
so the furthest images differ in palette and the triplets teach E colour only.

>>> nb = mine_triplets_from_images(images_B, cfg, device)      # a Neighbours
>>> history = train_encoder_stage1(E, images_B, nb, cfg, device)
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MINING_FEATURES = ("gram", "gram+highpass")
NEGATIVES = ("far", "band")

__all__ = ["Stage1Config", "triplet_loss", "train_encoder_stage1", "mine_triplets_from_images",
           "resample_triplets", "images_tensor"]


@dataclass
class Stage1Config:
    """Stage-1 (triplet pre-training of E) settings; defaults from the official code (docs/step.md).

    ``steps`` (optimizer steps), when set, overrides ``epochs``.  An epoch is one pass over
    ``triplets_per_epoch`` triplets (default: one per anchor image).
    """

    alpha: float = 0.1
    lambda_l2: float = 0.01
    batch_size: int = 12  # triplets per step (3x as many images through E)
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.0, 0.99)
    epochs: int = 10
    steps: Optional[int] = None
    k_near: int = 5
    k_far: int = 13
    triplets_per_epoch: Optional[int] = None
    seed: int = 0
    flip: bool = False  # random horizontal flips (changes the built-in set's gradient/stripe factors)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True
    compile: bool = False
    log_every: int = 25  # steps between loss read-backs (host syncs)
    # mining (mine_triplets_from_images)
    style_layers: Union[str, Sequence[str]] = "vgg16"
    vgg_weights: str = "imagenet"
    feature_batch_size: int = 32
    feature_resolution: Optional[int] = None  # resize images for the style features (None: as is)
    mining_distance: Any = "style"
    # "gram" (the paper): Gram vectors of B.  "gram+highpass": also the Gram vectors of B's
    # luminance high-pass (B minus its 5x5 box blur), and every layer's block of both scaled to a
    # mean pairwise squared distance of 1.  With random-weight VGG features the plain Gram distance
    # is ruled by colour (hue and palette); the high-pass image carries the texture without it.
    mining_features: str = "gram"
    # "far" (the paper): negatives drawn from the k_far furthest images.  "band": from the images
    # ranked negative_band[0] .. negative_band[1] - 1 nearest (semi-hard: mostly the anchor's
    # colours, other textures), so that colour alone no longer satisfies the triplets.
    negatives: str = "far"
    negative_band: Tuple[int, int] = (20, 60)

    def __post_init__(self):
        for name in ("batch_size", "epochs", "k_near", "k_far", "log_every", "feature_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps: expected a positive integer or None, got {self.steps!r}")
        if self.mining_features not in MINING_FEATURES:
            raise ValueError(f"mining_features: expected one of {', '.join(MINING_FEATURES)}, "
                             f"got {self.mining_features!r}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives: expected one of {', '.join(NEGATIVES)}, got {self.negatives!r}")
        band = tuple(self.negative_band) if isinstance(self.negative_band, (list, tuple)) else ()
        if len(band) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) for b in band) \
                or not (0 <= band[0] < band[1]) or (self.negatives == "band" and band[0] < self.k_near):
            raise ValueError(f"negative_band: expected two integers lo < hi (lo >= k_near={self.k_near} with "
                             f"negatives='band'), got {self.negative_band!r}")
        self.negative_band = band
        if self.alpha < 0 or self.lambda_l2 < 0 or not self.lr > 0:
            raise ValueError(f"alpha, lambda_l2: expected >= 0 and lr > 0, got {self.alpha}, "
                             f"{self.lambda_l2}, {self.lr}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if callable(self.mining_distance):
            d["mining_distance"] = getattr(self.mining_distance, "__name__", "callable")
        return d


def triplet_loss(za: Tensor, zp: Tensor, zn: Tensor, alpha: float = 0.1,
                 lambda_l2: float = 0.01) -> Tuple[Tensor, Tensor, Tensor]:
    """``(loss, triplet_term, l2_term)``: mean hinge triplet loss + lambda * mean(z^2) of all codes."""
    d_ap = (za - zp).square().sum(1)
    d_an = (za - zn).square().sum(1)
    trip = F.relu(d_ap - d_an + alpha).mean()
    l2 = torch.cat([za, zp, zn]).square().mean()
    return trip + lambda_l2 * l2, trip, l2


# --------------------------------------------------------------------------------------------
# inputs


def images_tensor(images) -> Tuple[Tensor, Optional[Tensor]]:
    """Normalise ``images_B`` to a tensor [N, 3, H, W] (uint8, or float in [-1, 1]).

    Accepts a tensor, a :class:`fastep.data.PairedImageDataset` (its B images, resized, no
    augmentation; returns the dataset indices of the rows as the second value), or any map-style
    dataset whose items are tensors or dicts with a ``"B"`` entry.
    """
    if isinstance(images, Tensor):
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
            raise ValueError(f"images_B: expected [N, 3, H, W] with N >= 1, got {tuple(images.shape)}")
        if not (images.dtype == torch.uint8 or images.is_floating_point()):
            raise TypeError(f"images_B: expected uint8 or float (in [-1, 1]), got {images.dtype}")
        return images, None
    stack = getattr(images, "stack_images", None)
    if callable(stack):
        return stack("B")
    if hasattr(images, "__getitem__") and hasattr(images, "__len__"):
        items = []
        for i in range(len(images)):
            it = images[i]
            it = it["B"] if isinstance(it, dict) else it
            if not isinstance(it, Tensor):
                raise TypeError(f"images_B: dataset item {i} is {type(it).__name__}, expected a tensor "
                                f"or a dict with 'B'")
            items.append(it)
        return images_tensor(torch.stack(items))
    raise TypeError(f"images_B: expected a Tensor [N, 3, H, W] or a dataset, got {type(images).__name__}")


def _to_model_input(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    x = x.float().div_(127.5).sub_(1.0) if x.dtype == torch.uint8 else x.float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def resample_triplets(source, epoch: int, seed: int, n: Optional[int] = None) -> Tensor:
    """The triplets [T, 3] (anchor, positive, negative) of one epoch.

    ``source`` is a neighbours object (``near_idx[N, k_near]``, ``far_idx[N, k_far]``, e.g. from
    :func:`fastep.ops.mine_neighbours`): one anchor per image (or ``n`` anchors), a positive drawn
    uniformly from the anchor's near set and a negative from its far set, seeded by
    ``(seed, epoch)`` -- through :func:`fastep.ops.sample_triplets`.  Or a fixed LongTensor
    [T, 3]: returned in a fresh ``(seed, epoch)`` order.
    """
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    if isinstance(source, Tensor):
        perm = torch.randperm(source.shape[0], generator=g)
        out = source[perm]
        return out if n is None else out[: n]
    from fastep.ops import sample_triplets

    t = sample_triplets(source, n=n, seed=int(seed) * 1_000_003 + int(epoch)).cpu().long()
    return t[torch.randperm(t.shape[0], generator=g)]  # sample_triplets lists anchors in order


def _check_triplets(triplets, n_images: int):
    if isinstance(triplets, Tensor):
        if triplets.dim() != 2 or triplets.shape[1] != 3 or triplets.shape[0] < 1:
            raise ValueError(f"triplets: expected a LongTensor [T, 3] with T >= 1, got {tuple(triplets.shape)}")
        if triplets.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"triplets: expected an integer tensor, got {triplets.dtype}")
        lo, hi = int(triplets.min()), int(triplets.max())
        if lo < 0 or hi >= n_images:
            raise ValueError(f"triplets: indices must be in [0, {n_images}), got [{lo}, {hi}]")
        return triplets.long().cpu()
    near = getattr(triplets, "near_idx", None)
    far = getattr(triplets, "far_idx", None)
    if not (isinstance(near, Tensor) and isinstance(far, Tensor)):
        raise TypeError(f"triplets: expected a LongTensor [T, 3] or a Neighbours (near_idx, far_idx), "
                        f"got {type(triplets).__name__}")
    if near.shape[0] != n_images or far.shape[0] != n_images:
        raise ValueError(f"triplets: neighbours cover {near.shape[0]} anchors but images_B has {n_images} images")
    return triplets


# --------------------------------------------------------------------------------------------
# training


def train_encoder_stage1(encoder: nn.Module, images_B, triplets, cfg: Optional[Stage1Config] = None,
                         device: Union[str, torch.device, None] = None, progress: bool = True) -> Dict[str, Any]:
    """Train ``encoder`` (in place) with the triplet loss; return the history.

    Args:
        encoder: ``E(images[N, 3, H, W] in [-1, 1]) -> z[N, D]`` (a tuple output uses its first
            element); moved to ``device``.
        images_B: uint8 tensor [N, 3, H, W] (or float in [-1, 1]), or a dataset (see
            :func:`images_tensor`).  Kept on the CPU (pinned) unless it fits easily on the device.
        triplets: a Neighbours (re-sampled every epoch) or a fixed LongTensor [T, 3] (re-shuffled).
        cfg: :class:`Stage1Config`.
        progress: show a tqdm bar.

    Returns ``dict(step=[...], loss=[...], triplet=[...], l2=[...], active=[...] (fraction of
    triplets with a positive hinge), epoch_loss=[...], steps, epochs, images, time_s,
    images_per_s, config)``; losses are means over the ``log_every`` steps ending at ``step``.
    """
    cfg = cfg or Stage1Config()
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    images, _ = images_tensor(images_B)
    n_images = images.shape[0]
    triplets = _check_triplets(triplets, n_images)
    cuda = device.type == "cuda"
    if cuda and images.numel() * images.element_size() < 4 * 2**30:
        images = images.to(device)
    elif cuda:
        images = images.pin_memory()
    channels_last = cfg.channels_last  # also ~20% faster for convs on CPU (oneDNN)
    encoder.to(device)
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    was_training = encoder.training
    encoder.train()
    params = [p for p in encoder.parameters() if p.requires_grad]
    if not params:
        raise ValueError("encoder: has no trainable parameters")
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), fused=cuda)
    use_amp = bool(cuda and cfg.amp)

    def loss_fn(x: Tensor, b: int):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            z = encoder(x)
        z = (z[0] if isinstance(z, (tuple, list)) else z).float()
        za, zp, zn = z[:b], z[b:2 * b], z[2 * b:]
        loss, trip, l2 = triplet_loss(za, zp, zn, cfg.alpha, cfg.lambda_l2)
        with torch.no_grad():
            margin = (za - zp).square().sum(1) - (za - zn).square().sum(1) + cfg.alpha
            active = (margin > 0).float().mean()
        return loss, trip, l2, active

    step_loss = torch.compile(loss_fn, dynamic=False) if cfg.compile else loss_fn

    g_flip = torch.Generator().manual_seed(int(cfg.seed) + 7)
    hist: Dict[str, Any] = {"step": [], "loss": [], "triplet": [], "l2": [], "active": [], "epoch_loss": []}
    per_epoch = resample_triplets(triplets, 0, cfg.seed, cfg.triplets_per_epoch).shape[0]
    bs = min(cfg.batch_size, per_epoch)
    batches_per_epoch = per_epoch // bs
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * batches_per_epoch
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, desc="stage 1 (triplet E)", unit="step")
    acc = torch.zeros(4, device=device)  # loss, triplet, l2, active (sums since last read-back)
    acc_n = 0
    step, epoch = 0, 0
    t0 = time.perf_counter()
    while step < total_steps:
        trips = resample_triplets(triplets, epoch, cfg.seed, cfg.triplets_per_epoch)
        ep_sum = torch.zeros((), device=device)
        ep_n = 0
        for b in range(batches_per_epoch):
            if step >= total_steps:
                break
            t = trips[b * bs:(b + 1) * bs]
            idx = t.t().reshape(-1)  # anchors, positives, negatives
            x = images[idx.to(images.device)]
            if cfg.flip:
                flip = torch.rand(idx.shape[0], generator=g_flip) < 0.5
                x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
            x = _to_model_input(x, device, channels_last)
            loss, trip, l2, active = step_loss(x, t.shape[0])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc += torch.stack([loss.detach(), trip.detach(), l2.detach(), active])
            acc_n += 1
            ep_sum += loss.detach()
            ep_n += 1
            step += 1
            if acc_n == cfg.log_every or step == total_steps:
                vals = (acc / acc_n).tolist()
                hist["step"].append(step)
                for k, v in zip(("loss", "triplet", "l2", "active"), vals):
                    hist[k].append(v)
                acc.zero_()
                acc_n = 0
                if bar is not None:
                    bar.set_postfix(loss=f"{vals[0]:.4f}", triplet=f"{vals[1]:.4f}")
            if bar is not None:
                bar.update(1)
        if ep_n:
            hist["epoch_loss"].append(float(ep_sum) / ep_n)
        epoch += 1
    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    encoder.train(was_training)
    hist.update(steps=step, epochs=epoch, images=step * bs * 3, time_s=dt,
                images_per_s=step * bs * 3 / max(dt, 1e-9), config=cfg.to_dict())
    return hist


# --------------------------------------------------------------------------------------------
# mining


def _luminance_highpass(x: Tensor) -> Tensor:
    """B's luminance minus its 5x5 box blur, as a 3-channel image (what is left is pattern, not colour)."""
    g = x.mean(1, keepdim=True)
    blur = F.avg_pool2d(F.pad(g, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return (g - blur).expand(-1, 3, -1, -1)


def _balance_blocks(v: Tensor, dims: Sequence[int]) -> Tensor:
    """Scale each block of columns of ``v`` [N, D] to a mean pairwise squared distance of 1
    (that mean is 2 x the block's total variance), in place."""
    start = 0
    for d in dims:
        block = v[:, start:start + d]
        spread = 2 * (block.double() - block.double().mean(0)).square().sum(1).mean()
        block.mul_(float(spread.clamp_min(1e-30).rsqrt()))
        start += d
    return v


@torch.no_grad()
def style_vectors(images_B, cfg: Optional[Stage1Config] = None, device: Union[str, torch.device, None] = None,
                  out_dtype: Optional[torch.dtype] = None, progress: bool = False) -> Tensor:
    """Gram (style) vectors [N, D] of all B images on ``device``, computed in batches
    (``progress``: a bar in images); with ``cfg.mining_features == "gram+highpass"`` the high-pass
    image's vectors follow, and every layer's block is balanced (:class:`Stage1Config`)."""
    from tqdm.auto import tqdm

    from fastep.features import get_style_net, style_features
    from fastep.ops import gram_vector_dim

    cfg = cfg or Stage1Config()
    device = torch.device(device or "cpu")
    images, _ = images_tensor(images_B)
    net = get_style_net(cfg.style_layers, weights=cfg.vgg_weights, device=device)
    amp = torch.bfloat16 if (device.type == "cuda" and cfg.amp) else None
    highpass = cfg.mining_features == "gram+highpass"
    n = images.shape[0]
    out = None
    bar = tqdm(total=n, desc="mining: style vectors", unit="img", disable=not progress, leave=False)
    for s in range(0, n, cfg.feature_batch_size):
        x = _to_model_input(images[s:s + cfg.feature_batch_size], device, False)
        if cfg.feature_resolution is not None and x.shape[-1] != cfg.feature_resolution:
            x = F.interpolate(x, size=(cfg.feature_resolution,) * 2, mode="bilinear", align_corners=False,
                              antialias=True)
        v = style_features(x, net=net, output="vectors", out_dtype=out_dtype, autocast_dtype=amp)
        if highpass:
            v = torch.cat([v, style_features(_luminance_highpass(x), net=net, output="vectors",
                                             out_dtype=out_dtype, autocast_dtype=amp)], 1)
        if out is None:
            # all N x D vectors: on the device when they take < 1/4 of its free memory, else in
            # pinned host memory (mine_neighbours streams them to the device in blocks)
            nbytes = n * v.shape[1] * v.element_size()
            where = device
            if device.type == "cuda" and nbytes > torch.cuda.mem_get_info(device)[0] // 4:
                where = torch.device("cpu")
            out = torch.empty(n, v.shape[1], dtype=v.dtype, device=where,
                              pin_memory=where.type == "cpu" and device.type == "cuda")
        out[s:s + v.shape[0]].copy_(v, non_blocking=True)
        bar.update(v.shape[0])
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if highpass:
        chans = [f.shape[1] for f in net(_to_model_input(images[:1], device, False))]
        _balance_blocks(out, [gram_vector_dim([c]) for c in chans] * 2)
    return out


def mine_triplets_from_images(images_B, cfg: Optional[Stage1Config] = None,
                              device: Union[str, torch.device, None] = None, progress: bool = False):
    """Exact style-distance neighbours of every B image -> a Neighbours for :func:`train_encoder_stage1`.

    VGG Gram vectors (``cfg.style_layers``, ``cfg.vgg_weights``) by :func:`style_vectors`, then
    :func:`fastep.ops.mine_neighbours` with ``k_near``/``k_far`` (and ``cfg.mining_distance``).
    Triplets are drawn from it afresh every epoch by the trainer (or once with
    :func:`fastep.ops.sample_triplets`).
    """
    from fastep.ops import mine_neighbours

    cfg = cfg or Stage1Config()
    device = torch.device(device or "cpu")
    vectors = style_vectors(images_B, cfg, device, progress=progress)
    n = vectors.shape[0]
    if cfg.negatives == "far" and n < cfg.k_near + cfg.k_far + 1:
        raise ValueError(f"images_B: {n} images are too few to mine k_near={cfg.k_near} and "
                         f"k_far={cfg.k_far} neighbours (need at least {cfg.k_near + cfg.k_far + 1})")
    kwargs = {}
    if cfg.mining_distance != "style":
        kwargs["distance"] = cfg.mining_distance
    if cfg.negatives == "far":
        return mine_neighbours(vectors, k_near=cfg.k_near, k_far=cfg.k_far, device=device, **kwargs)
    lo, hi = cfg.negative_band
    if n - 1 < hi:  # a small set: the band ends at the furthest image instead
        lo2, hi2 = max(cfg.k_near, min(lo, n - 2)), n - 1
        if lo2 >= hi2:
            raise ValueError(f"images_B: {n} images are too few for k_near={cfg.k_near} and band negatives "
                             f"(need at least {cfg.k_near + 2})")
        warnings.warn(f"stage 1: {n} images: negative band {lo}..{hi - 1} clipped to {lo2}..{hi2 - 1}", stacklevel=2)
        lo, hi = lo2, hi2
    nb = mine_neighbours(vectors, k_near=hi, k_far=1, device=device, **kwargs)
    return dataclasses.replace(nb, near_idx=nb.near_idx[:, :cfg.k_near].contiguous(),
                               near_dist=nb.near_dist[:, :cfg.k_near].contiguous(),
                               far_idx=nb.near_idx[:, lo:hi].contiguous(),
                               far_dist=nb.near_dist[:, lo:hi].contiguous())
