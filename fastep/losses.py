"""Fast drop-in losses for GAN code: perceptual, style, adversarial, R1, feature matching, LPIPS.

* :class:`PerceptualLoss` / :func:`perceptual_loss`: VGG16 conv_i_2 (StEP) or VGG19 relu_i_1
  (pix2pixHD) feature distance with layer weights (1/32, 1/16, 1/8, 1/4, 1), L1 or MSE.
  Swap for pix2pixHD's ``VGGLoss``: ``criterionVGG = PerceptualLoss("pix2pixhd")``.
* :class:`StyleLoss`: Gatys' Gram-matrix loss on fastep's fused Gram ops; a fixed target's Grams
  (``set_target``) are computed once, a target given in the call is that call's target.
* adversarial losses for single- or multi-scale discriminators: :func:`lsgan_d_loss`,
  :func:`lsgan_g_loss`, :func:`hinge_d_loss`, :func:`hinge_g_loss`, :func:`nonsat_d_loss`,
  :func:`nonsat_g_loss` (and :class:`AdversarialLoss`), :func:`r1_penalty`,
  :func:`feature_matching_loss`.
* :class:`LPIPS` / :func:`lpips`: the lpips package's metric (v0.1 heads, AlexNet or VGG16
  backbone), numerically equal given the same backbone weights, with the normalise / difference
  / channel weighting / spatial mean fused.  Swap: ``loss_fn = fastep.losses.LPIPS(net="alex")``
  (lpips' ``forward(in0, in1, retPerLayer=False, normalize=False)``).

Where these differ from the originals they replace (sum over discriminator scales, Gram
normalisation, ...) is listed in README's "Differences from the originals".

Discriminator outputs may be a tensor, a list of tensors (one per scale), or a list of lists
(pix2pixHD's ``getIntermFeat`` discriminators: per scale the intermediate features, the final
output last); adversarial losses use the last entry of each inner list.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import check_images as _check_images
from .nets.cache import shared_module, weights_key
from .ops.reductions import lpips_distance, weighted_feature_distance

__all__ = [
    "PerceptualLoss", "perceptual_loss", "shared_perceptual_loss", "StyleLoss", "AdversarialLoss",
    "lsgan_d_loss", "lsgan_g_loss", "hinge_d_loss", "hinge_g_loss", "nonsat_d_loss", "nonsat_g_loss",
    "r1_penalty", "feature_matching_loss", "LPIPS", "lpips", "PERCEPTUAL_NETS", "DEFAULT_LAYER_WEIGHTS",
]

DEFAULT_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

# net name -> (VGGFeatures layers preset, default distance)
PERCEPTUAL_NETS = {"vgg16": ("vgg16", "mse"), "pix2pixhd": ("pix2pixhd", "l1"),
                   "vgg19": ("pix2pixhd", "l1")}

# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
_RANGE_WARNED: Dict[str, bool] = {}
_RANGE_TOL = 1e-3


def _maybe_warn_range(owner: str, *tensors: Tensor, lo: float = -1.0, hi: float = 1.0) -> None:
    """Warn once per ``owner`` when an input lies outside [lo, hi] (skipped under compile)."""
    if _RANGE_WARNED.get(owner) or torch.compiler.is_compiling():
        return
    for t in tensors:
        with torch.no_grad():
            bad = bool(((t < lo - _RANGE_TOL) | (t > hi + _RANGE_TOL)).any())
        if bad:
            _RANGE_WARNED[owner] = True
            warnings.warn(f"{owner}: inputs should lie in [{lo:g}, {hi:g}], got values in "
                          f"[{float(t.min()):.3g}, {float(t.max()):.3g}] (warned once)", UserWarning,
                          stacklevel=3)
            return


class _RangeCheck:
    """Range checks cost a device sync: done on the first calls only (every call on CPU)."""

    def __init__(self, owner: str, calls: int = 4):
        self.owner, self.left = owner, calls

    def __call__(self, *tensors: Tensor, lo: float = -1.0, hi: float = 1.0) -> None:
        if torch.compiler.is_compiling() or _RANGE_WARNED.get(self.owner):
            return
        if self.left <= 0 and tensors[0].device.type != "cpu":
            return
        self.left -= 1
        _maybe_warn_range(self.owner, *tensors, lo=lo, hi=hi)


def _amp_dtype(amp, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``amp`` on ``device`` (None = no autocast)."""
    if amp is None or amp is False:
        return None
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp is True:
        return torch.bfloat16
    if isinstance(amp, torch.dtype):
        if amp not in (torch.bfloat16, torch.float16):
            raise ValueError(f"amp: expected torch.bfloat16 or torch.float16, got {amp}")
        return amp
    raise ValueError(f"amp: expected 'auto', True, False or a half dtype, got {amp!r}")


def _autocast(dtype: Optional[torch.dtype], device: torch.device):
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# PerceptualLoss
# ---------------------------------------------------------------------------------------------
class PerceptualLoss(nn.Module):
    """VGG feature-matching (perceptual / "VGG") loss: sum_l w_l * mean(|phi_l(x) - phi_l(y)|^p).

    Args:
        net: ``"vgg16"`` (StEP: VGG16 relu1_2 .. relu5_2, i.e. conv_i_2 after ReLU) or
            ``"pix2pixhd"`` (= ``"vgg19"``: VGG19 relu1_1 .. relu5_1, pix2pixHD's VGGLoss).
        weights: layer weights, default ``(1/32, 1/16, 1/8, 1/4, 1)``.
        distance: ``"l1"`` (pix2pixHD) or ``"mse"`` (StEP's official code); default by ``net``
            (``"mse"`` for vgg16, ``"l1"`` for pix2pixhd).
        backbone_weights: ``"imagenet"`` (torchvision's file, found offline; see
            :mod:`fastep.nets.weights`), ``"random"`` (seeded by ``seed``), a path or a state dict.
        layers: override the preset with explicit VGG layer names (``"relu3_2"`` ...).
        amp: autocast the backbone: ``"auto"`` (bf16 on CUDA, off on CPU), True (bf16),
            False, or a half dtype.  The reduction is always accumulated in float32.
        channels_last: run the backbone in channels_last (default: on CUDA).
        input_range: of the images, ``"[-1,1]"`` (default) or ``"[0,1]"`` (see VGGFeatures).

    ``forward(output, target)`` returns a 0-d float32 tensor (float64 for a ``.double()``
    module).  The target is detached, as in pix2pixHD's ``VGGLoss``: no gradient reaches it even
    when it requires grad.  When ``output`` requires grad, the backbone runs on the target under
    ``no_grad`` (half the backward work and saved activations of one pass over the concatenated
    batch); otherwise one pass over ``cat(output, target)`` (``target_pass`` forces either).
    All layers' differences are reduced by one fused kernel (``fastep::weighted_feature_distance``),
    whose backward writes the features' gradients.

    dtypes: images of any floating dtype (fp32, bf16, fp16, fp64) are cast to the backbone's
    dtype (float32 unless the module was converted with ``.double()`` / ``.half()``); ``amp``
    then decides whether the convolutions run under autocast.  Half-precision images therefore
    give the same loss as the same (rounded) values in fp32.

    Features once, distances many times: :meth:`features` runs the backbone on one batch and
    :meth:`distance` reduces two feature lists (what a training step with one target and several
    generated images uses).
    """

    def __init__(self, net: str = "vgg16", weights: Sequence[float] = DEFAULT_LAYER_WEIGHTS,
                 distance: Optional[str] = None, backbone_weights="imagenet", *, seed: int = 0,
                 layers: Optional[Sequence[str]] = None, amp="auto", channels_last: Optional[bool] = None,
                 input_range: str = "[-1,1]", target_pass: str = "auto"):
        super().__init__()
        from .nets import VGGFeatures

        if net not in PERCEPTUAL_NETS:
            raise ValueError(f"net: expected one of {sorted(PERCEPTUAL_NETS)}, got {net!r}")
        preset, default_distance = PERCEPTUAL_NETS[net]
        distance = default_distance if distance is None else str(distance).lower()
        if distance not in ("l1", "mse"):
            raise ValueError(f"distance: expected 'l1' or 'mse', got {distance!r}")
        if target_pass not in ("auto", "separate", "joint"):
            raise ValueError(f"target_pass: expected 'auto', 'separate' or 'joint', got {target_pass!r}")
        _amp_dtype(amp, torch.device("cpu"))  # validate early
        arch = "vgg16" if preset == "vgg16" else "vgg19"
        self.vgg = VGGFeatures(arch=arch, layers=preset if layers is None else list(layers),
                               weights=backbone_weights, seed=seed, input_range=input_range)
        self.weights = [float(w) for w in weights]
        if len(self.weights) != len(self.vgg.layers):
            raise ValueError(f"weights: expected {len(self.vgg.layers)} layer weights (one per layer "
                             f"{list(self.vgg.layers)}), got {len(self.weights)}")
        self.net_name, self.distance_kind, self.amp = net, distance, amp
        self.p = 1 if distance == "l1" else 2
        self.channels_last = channels_last
        self.target_pass = target_pass
        self._range = _RangeCheck("PerceptualLoss")
        self._lo = 0.0 if input_range == "[0,1]" else -1.0

    def extra_repr(self) -> str:
        return (f"net={self.net_name!r}, layers={list(self.vgg.layers)}, weights={self.weights}, "
                f"distance={self.distance_kind!r}, amp={self.amp!r}")

    def _prepare(self, device: torch.device) -> Tuple[Optional[torch.dtype], bool]:
        """Move the backbone to ``device`` / channels_last as configured; (autocast dtype, cl)."""
        amp = _amp_dtype(self.amp, device)
        cl = (device.type == "cuda") if self.channels_last is None else bool(self.channels_last)
        if self.vgg._scale.device != device:
            self.vgg.to(device)
        if cl and not self.vgg.channels_last:
            self.vgg.to(memory_format=torch.channels_last)
            self.vgg.channels_last = True
        return amp, cl

    def _run(self, x: Tensor, amp: Optional[torch.dtype], cl: bool) -> List[Tensor]:
        x = x.to(self.vgg.features[0].weight.dtype)  # the module's dtype policy (see class doc)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(amp, x.device):
            return self.vgg(x)

    def features(self, x: Tensor) -> List[Tensor]:
        """Backbone features of one image batch ``x`` (N, 3, H, W), one map per layer, with the
        module's amp / channels_last / dtype settings.  Differentiable w.r.t. ``x`` when grad
        mode is on; run it under ``torch.no_grad()`` for a fixed target."""
        _check_images(x, "x")
        amp, cl = self._prepare(x.device)
        return self._run(x, amp, cl)

    def distance(self, feats_x: Sequence[Tensor], feats_y: Sequence[Tensor]) -> Tensor:
        """The loss between two feature lists from :meth:`features`: sum_l w_l mean|x_l - y_l|^p
        (one fused reduction; gradients flow into whichever side carries a graph)."""
        feats_x, feats_y = list(feats_x), list(feats_y)
        if len(feats_x) != len(self.weights) or len(feats_y) != len(self.weights):
            raise ValueError(f"feats_x/feats_y: expected {len(self.weights)} feature maps each (layers "
                             f"{list(self.vgg.layers)}), got {len(feats_x)} and {len(feats_y)}")
        return weighted_feature_distance(feats_x, feats_y, self.weights, self.p)

    def pair_features(self, output: Tensor, target: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """Backbone features (output half, detached target half) as used by :meth:`forward`."""
        amp, cl = self._prepare(output.device)
        n = output.shape[0]
        target = target.detach()
        out_grad = torch.is_grad_enabled() and output.requires_grad
        mode = self.target_pass
        if mode == "auto":
            mode = "separate" if out_grad else "joint"
        if mode == "joint":
            dt = self.vgg.features[0].weight.dtype
            feats = self._run(torch.cat([output.to(dt), target.to(dt)]), amp, cl)
            return [f[:n] for f in feats], [f[n:] for f in feats]
        fo = self._run(output, amp, cl)
        with torch.no_grad():
            ft = self._run(target, amp, cl)
        return fo, ft

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        """Loss between generated ``output`` and ``target`` images (N, 3, H, W) in [-1, 1]."""
        _check_images(output, "output")
        _check_images(target, "target", like=output, like_name="output")
        self._range(output, target, lo=self._lo)
        fo, ft = self.pair_features(output, target)
        return weighted_feature_distance(fo, ft, self.weights, self.p)


def shared_perceptual_loss(net: str = "vgg16", weights: Sequence[float] = DEFAULT_LAYER_WEIGHTS,
                           distance: Optional[str] = None, backbone_weights="imagenet", *, seed: int = 0,
                           layers: Optional[Sequence[str]] = None, amp="auto",
                           channels_last: Optional[bool] = None,
                           device: Union[str, torch.device, None] = None) -> PerceptualLoss:
    """The :class:`PerceptualLoss` for this configuration on ``device`` from fastep's one backbone
    cache (:func:`fastep.nets.cache.shared_module`): built once, then shared by every caller
    (the functional :func:`perceptual_loss`, training steps).  Do not convert it in place.
    In-memory state dicts as ``backbone_weights`` give a fresh, uncached module."""
    wkey = weights_key(backbone_weights, seed)
    layers = None if layers is None else tuple(layers)
    key = None if wkey is None else (net, tuple(float(w) for w in weights), distance, wkey, layers, str(amp),
                                     channels_last)
    return shared_module("perceptual", key, device, lambda: PerceptualLoss(
        net, weights, distance, backbone_weights, seed=seed, layers=layers, amp=amp,
        channels_last=channels_last))


def perceptual_loss(output: Tensor, target: Tensor, net: str = "vgg16",
                    weights: Sequence[float] = DEFAULT_LAYER_WEIGHTS, distance: Optional[str] = None,
                    backbone_weights: Union[str, os.PathLike] = "imagenet", *, seed: int = 0,
                    amp="auto") -> Tensor:
    """Functional :class:`PerceptualLoss` (the module comes from :func:`shared_perceptual_loss`:
    built once per config and device)."""
    if not isinstance(backbone_weights, (str, os.PathLike)):
        raise TypeError("backbone_weights: the functional form takes 'imagenet', 'random' or a path; "
                        "build a PerceptualLoss module for a state dict")
    _check_images(output, "output")
    mod = shared_perceptual_loss(net, weights, distance, backbone_weights, seed=seed, amp=amp,
                                 device=output.device)
    return mod(output, target)


# ---------------------------------------------------------------------------------------------
# StyleLoss
# ---------------------------------------------------------------------------------------------
class StyleLoss(nn.Module):
    """Gatys' style loss sum_l w_l * mean((G_l(x) - G_l(target))^2) on fastep's fused Gram ops.

    Args:
        target: optional fixed target image(s) (N_t, 3, H, W) in [-1, 1]; their Grams are
            computed once and kept (also settable later with :meth:`set_target`).
        target_grams: optional precomputed target Grams, one (C_l, C_l) or (N, C_l, C_l) per layer.
        net: VGG layer preset: ``"gatys"`` (VGG19 relu1_1 .. relu5_1, default) or ``"vgg16"``
            (StEP's VGG16 relu_i_2), or a list of VGG16 layer names.
        layer_weights: per-layer weights (default all 1).
        backbone_weights, seed, amp: as in :class:`PerceptualLoss`.

    ``forward(x, target=None)``: a ``target`` given in the call is the target of that call: its
    Grams are computed (under no_grad, no gradient reaches it) for this call only and nothing is
    cached.  Without ``target`` the fixed target (constructor, :meth:`set_target`,
    :meth:`set_target_grams`) is used.  A single target image (or (C, C) Grams) broadcasts over
    the batch.  For a target reused across calls, set it once: recomputing its Grams every call
    is a second backbone pass.
    """

    def __init__(self, target: Optional[Tensor] = None, *, target_grams: Optional[Sequence[Tensor]] = None,
                 net: Union[str, Sequence[str]] = "gatys", layer_weights: Optional[Sequence[float]] = None,
                 backbone_weights="imagenet", seed: int = 0, amp="auto"):
        super().__init__()
        from .nets import VGGFeatures

        self.vgg = VGGFeatures(layers=net, weights=backbone_weights, seed=seed)
        L = len(self.vgg.layers)
        self.layer_weights = [1.0] * L if layer_weights is None else [float(w) for w in layer_weights]
        if len(self.layer_weights) != L:
            raise ValueError(f"layer_weights: expected {L} weights, got {len(self.layer_weights)}")
        self.amp = amp
        _amp_dtype(amp, torch.device("cpu"))
        self._grams: Optional[List[Tensor]] = None
        self._range = _RangeCheck("StyleLoss")
        if target is not None and target_grams is not None:
            raise ValueError("target/target_grams: give one of them, not both")
        if target is not None:
            self.set_target(target)
        elif target_grams is not None:
            self.set_target_grams(target_grams)

    def _feats(self, x: Tensor) -> List[Tensor]:
        if self.vgg._scale.device != x.device:
            self.vgg.to(x.device)
        with _autocast(_amp_dtype(self.amp, x.device), x.device):
            return self.vgg(x)

    def _target_grams_of(self, target: Tensor) -> List[Tensor]:
        from .ops import gram

        _check_images(target, "target")
        self._range(target)
        with torch.no_grad():
            return [gram(f).float() for f in self._feats(target.detach())]

    def set_target(self, target: Tensor) -> "StyleLoss":
        """Compute and keep the Grams of the fixed ``target`` images (no graph kept); later
        in-place changes to ``target`` do not affect them (call again to update)."""
        self._grams = self._target_grams_of(target)
        return self

    def set_target_grams(self, grams: Sequence[Tensor]) -> "StyleLoss":
        """Use precomputed target Grams, one (C_l, C_l) or (N, C_l, C_l) tensor per layer."""
        grams = list(grams)
        if len(grams) != len(self.vgg.channels):
            raise ValueError(f"target_grams: expected {len(self.vgg.channels)} Gram matrices, got {len(grams)}")
        for i, (g, c) in enumerate(zip(grams, self.vgg.channels)):
            if not isinstance(g, Tensor) or g.shape[-2:] != (c, c) or g.dim() not in (2, 3):
                raise ValueError(f"target_grams[{i}]: expected ({c}, {c}) or (N, {c}, {c}), got "
                                 f"{getattr(g, 'shape', type(g).__name__)}")
        self._grams = [g.detach() for g in grams]
        return self

    @property
    def target_grams(self) -> Optional[List[Tensor]]:
        """The fixed target's Grams (None when no fixed target is set)."""
        return self._grams

    def forward(self, x: Tensor, target: Optional[Tensor] = None) -> Tensor:
        from .ops import style_loss

        _check_images(x, "x")
        self._range(x)
        if target is not None:
            target_grams = self._target_grams_of(target)
        elif self._grams is not None:
            target_grams = self._grams
        else:
            raise ValueError("target: no target given (pass target=..., or set_target / target_grams first)")
        grams = []
        for g in target_grams:
            g = g.to(x.device)
            if g.dim() == 3 and g.shape[0] == 1:
                g = g[0]
            if g.dim() == 3 and g.shape[0] != x.shape[0]:
                raise ValueError(f"target: {g.shape[0]} target Grams for a batch of {x.shape[0]}")
            grams.append(g)
        return style_loss(self._feats(x), weights=self.layer_weights, target_grams=grams)


# ---------------------------------------------------------------------------------------------
# adversarial losses
# ---------------------------------------------------------------------------------------------
def _scales(pred, name: str) -> List[Tensor]:
    """Discriminator output(s) -> list of final outputs, one per scale."""
    if isinstance(pred, Tensor):
        return [pred]
    if not isinstance(pred, (list, tuple)) or len(pred) == 0:
        raise TypeError(f"{name}: expected a tensor, a list of tensors (one per scale) or a list of "
                        f"lists (features per scale, final output last), got {type(pred).__name__}")
    out = []
    for i, p in enumerate(pred):
        if isinstance(p, (list, tuple)):
            if not p:
                raise ValueError(f"{name}[{i}]: empty list of discriminator outputs")
            p = p[-1]
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}[{i}]: expected a tensor, got {type(p).__name__}")
        if not p.is_floating_point():
            raise TypeError(f"{name}[{i}]: expected floating-point discriminator outputs, got {p.dtype}")
        out.append(p)
    return out


def _sum(terms: List[Tensor]) -> Tensor:
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _check_pair(real, fake):
    r, f = _scales(real, "real"), _scales(fake, "fake")
    if len(r) != len(f):
        raise ValueError(f"fake: {len(f)} discriminator scales, but real has {len(r)}")
    return r, f


def lsgan_d_loss(real, fake) -> Tensor:
    """LSGAN discriminator loss, summed over scales: 0.5 mean((D(real)-1)^2) + 0.5 mean(D(fake)^2)."""
    r, f = _check_pair(real, fake)
    return _sum([0.5 * (a.float() - 1).square().mean() + 0.5 * b.float().square().mean() for a, b in zip(r, f)])


def lsgan_g_loss(fake) -> Tensor:
    """LSGAN generator loss, summed over scales: mean((D(fake) - 1)^2)."""
    return _sum([(b.float() - 1).square().mean() for b in _scales(fake, "fake")])


def hinge_d_loss(real, fake) -> Tensor:
    """Hinge discriminator loss, summed over scales: mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))."""
    r, f = _check_pair(real, fake)
    return _sum([F.relu(1 - a.float()).mean() + F.relu(1 + b.float()).mean() for a, b in zip(r, f)])


def hinge_g_loss(fake) -> Tensor:
    """Hinge generator loss, summed over scales: -mean(D(fake))."""
    return _sum([-b.float().mean() for b in _scales(fake, "fake")])


def nonsat_d_loss(real, fake) -> Tensor:
    """Non-saturating (logistic) D loss, summed over scales: mean(softplus(-D(real))) + mean(softplus(D(fake)))."""
    r, f = _check_pair(real, fake)
    return _sum([F.softplus(-a.float()).mean() + F.softplus(b.float()).mean() for a, b in zip(r, f)])


def nonsat_g_loss(fake) -> Tensor:
    """Non-saturating generator loss, summed over scales: mean(softplus(-D(fake)))."""
    return _sum([F.softplus(-b.float()).mean() for b in _scales(fake, "fake")])


_ADV = {"lsgan": (lsgan_d_loss, lsgan_g_loss), "hinge": (hinge_d_loss, hinge_g_loss),
        "nonsat": (nonsat_d_loss, nonsat_g_loss), "nonsaturating": (nonsat_d_loss, nonsat_g_loss)}


class AdversarialLoss(nn.Module):
    """``AdversarialLoss(kind)`` with ``.d_loss(real, fake)`` and ``.g_loss(fake)``.

    kind: ``"lsgan"`` (StEP / pix2pixHD), ``"hinge"`` or ``"nonsat"`` (non-saturating logistic).
    Calling the module is ``d_loss`` when given two arguments and ``g_loss`` when given one.
    """

    def __init__(self, kind: str = "lsgan"):
        super().__init__()
        if kind not in _ADV:
            raise ValueError(f"kind: expected one of {sorted(_ADV)}, got {kind!r}")
        self.kind = kind
        self._d, self._g = _ADV[kind]

    def d_loss(self, real, fake) -> Tensor:
        return self._d(real, fake)

    def g_loss(self, fake) -> Tensor:
        return self._g(fake)

    def forward(self, *preds):
        if len(preds) == 2:
            return self._d(*preds)
        if len(preds) == 1:
            return self._g(preds[0])
        raise TypeError("AdversarialLoss: call with (real, fake) for D or (fake,) for G")

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def r1_penalty(real_pred, real_inputs: Union[Tensor, Sequence[Tensor]], gamma: float = 10.0) -> Tensor:
    """R1 gradient penalty (gamma / 2) * E_n[ |d sum D(real) / d real_n|^2 ] (Mescheder et al.).

    ``real_pred`` is D's output on ``real_inputs`` (a tensor or list per scale, or lists with the
    final output last); ``real_inputs`` (tensor or list of tensors) must require grad.  Outputs
    of all scales are summed before differentiating.  The graph is kept (create_graph=True) so
    the penalty can be backpropagated into D.
    """
    preds = _scales(real_pred, "real_pred")
    inputs = [real_inputs] if isinstance(real_inputs, Tensor) else list(real_inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor) or not t.requires_grad:
            raise ValueError(f"real_inputs[{i}]: must be a tensor that requires grad (call "
                             f".requires_grad_() before running D)")
    out = _sum([p.float().sum() for p in preds])
    grads = torch.autograd.grad(out, inputs, create_graph=True)
    n = inputs[0].shape[0]
    pen = _sum([g.float().square().reshape(g.shape[0], -1).sum(1) for g in grads])
    return (0.5 * float(gamma)) * pen.sum() / n


def feature_matching_loss(real_feats, fake_feats, *, layer_weights: Optional[Sequence[float]] = None,
                          distance: str = "l1", exclude_last: bool = True) -> Tensor:
    """Discriminator feature matching (pix2pixHD): mean over scales of sum over layers of
    w_j * mean|D_j(fake) - D_j(real)| (real detached).

    ``real_feats`` / ``fake_feats``: a list (one entry per scale) of lists of feature maps, or a
    single list of feature maps (one scale).  With ``exclude_last`` (default) the last entry of
    each scale (the final prediction) is left out, as in pix2pixHD.  ``layer_weights`` default 1.
    All layers of all scales are reduced by the fused ``weighted_feature_distance`` op.
    """
    def norm(feats, name):
        if isinstance(feats, Tensor) or not isinstance(feats, (list, tuple)) or not feats:
            raise TypeError(f"{name}: expected a list of feature maps or a list (per scale) of lists")
        if isinstance(feats[0], Tensor):
            feats = [feats]
        return [list(s) for s in feats]

    rs, fs = norm(real_feats, "real_feats"), norm(fake_feats, "fake_feats")
    if len(rs) != len(fs):
        raise ValueError(f"fake_feats: {len(fs)} scales, but real_feats has {len(rs)}")
    if distance not in ("l1", "mse"):
        raise ValueError(f"distance: expected 'l1' or 'mse', got {distance!r}")
    xs, ys, ws = [], [], []
    for si, (r, f) in enumerate(zip(rs, fs)):
        if len(r) != len(f):
            raise ValueError(f"fake_feats[{si}]: {len(f)} layers, but real_feats[{si}] has {len(r)}")
        k = len(f) - 1 if exclude_last else len(f)
        if k < 1:
            raise ValueError(f"fake_feats[{si}]: no intermediate features to match")
        lw = [1.0] * k if layer_weights is None else [float(w) for w in layer_weights]
        if len(lw) != k:
            raise ValueError(f"layer_weights: expected {k} weights, got {len(lw)}")
        for j in range(k):
            xs.append(f[j])
            ys.append(r[j].detach())
            ws.append(lw[j] / len(fs))
    return weighted_feature_distance(xs, ys, ws, 1 if distance == "l1" else 2)


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def lpips_head_path(net: str, version: str = "0.1") -> str:
    """Path of the lpips package's linear-head file for ``net`` / ``version`` (not copied)."""
    try:
        import lpips as _lp
    except ImportError:
        raise FileNotFoundError(
            "lin_path: the LPIPS linear heads ship with the lpips package (pip install lpips), "
            "which is not installed; install it or pass lin_path=<path to weights/v0.1/"
            f"{net}.pth from https://github.com/richzhang/PerceptualSimilarity>") from None
    path = os.path.join(os.path.dirname(os.path.abspath(_lp.__file__)), "weights", f"v{version}", f"{net}.pth")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"lin_path: the lpips package has no {path}; pass lin_path= explicitly")
    return path


class LPIPS(nn.Module):
    """LPIPS perceptual distance (Zhang et al. 2018), equal to ``lpips.LPIPS`` given the same backbone.

    Args:
        net: ``"alex"`` (AlexNet, the standard metric) or ``"vgg"`` (VGG16).
        version: ``"0.1"`` (default; the heads shipped with the lpips package) or ``"0.0"``.
        lin_path: explicit path of the linear-head file (default: the installed lpips package's
            ``weights/v{version}/{net}.pth``).
        backbone_weights: ``"imagenet"`` (torchvision's file, offline), ``"random"``, a path or a
            state dict (torchvision ``features.*`` keys); ``seed`` for random.
        amp: autocast the backbone (False by default: the fp32 metric equals lpips; ``"auto"``
            uses bf16 on CUDA for speed).
        channels_last: backbone in channels_last (default: on CUDA).

    ``forward(in0, in1, retPerLayer=False, normalize=False)`` is ``lpips.LPIPS.forward``: the
    same positional order, ``(N, 1, 1, 1)`` distances, or ``(total, [per layer (N, 1, 1, 1)])``
    with ``retPerLayer=True``; inputs in [-1, 1] (or [0, 1] with ``normalize=True``).  As in
    lpips, an input with batch 1 broadcasts against the other's batch N (one image against
    many).  Differentiable w.r.t. both inputs.  The backbone runs once over ``cat(in0, in1)``
    unless exactly one input requires grad (then the other one runs under no_grad).

    dtypes: inputs of any floating dtype (bf16, fp16, fp32, fp64) are cast to the module's dtype
    (float32 unless converted with ``.double()`` / ``.half()``), as lpips' float32 scaling layer
    does; ``amp`` then decides whether the backbone runs under autocast.  The result has the
    module's dtype (float32 by default) whatever the input dtype.
    """

    def __init__(self, net: str = "alex", version: str = "0.1", lin_path: Optional[str] = None,
                 backbone_weights="imagenet", *, seed: int = 0, amp=False,
                 channels_last: Optional[bool] = None, eps: float = 1e-10):
        super().__init__()
        if net in ("vgg16",):
            net = "vgg"
        if net not in _LPIPS_CHANNELS:
            raise ValueError(f"net: expected 'alex' or 'vgg', got {net!r}")
        version = str(version).lstrip("v")
        if version not in ("0.1", "0.0"):
            raise ValueError(f"version: expected '0.1' or '0.0', got {version!r}")
        _amp_dtype(amp, torch.device("cpu"))
        self.net_name, self.version, self.amp, self.eps = net, version, amp, float(eps)
        self.channels_last = channels_last
        if net == "alex":
            from .nets.alexnet import AlexNetFeatures

            self.net = AlexNetFeatures(weights=backbone_weights, seed=seed)
        else:
            from .nets import VGGFeatures

            self.net = VGGFeatures(layers="lpips_vgg", weights=backbone_weights, seed=seed,
                                   input_range="imagenet_normalized")
        path = lin_path or lpips_head_path(net, version)
        sd = torch.load(path, map_location="cpu", weights_only=True)
        for l, c in enumerate(_LPIPS_CHANNELS[net]):
            key = f"lin{l}.model.1.weight"
            if key not in sd:
                key = f"lin{l}.model.0.weight"  # heads saved without dropout
            if key not in sd or sd[key].numel() != c:
                raise ValueError(f"lin_path: {path} lacks a ({c},) weight for lin{l} (keys: {sorted(sd)[:6]}...)")
            self.register_buffer(f"lin{l}", sd[key].detach().float().reshape(c).clone())
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))
        self._range = _RangeCheck("LPIPS")
        self.eval()

    @property
    def lin_weights(self) -> List[Tensor]:
        return [getattr(self, f"lin{l}") for l in range(5)]

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, version={self.version!r}, amp={self.amp!r}"

    def _backbone(self, x: Tensor, amp, cl) -> List[Tensor]:
        x = x.to(self.shift.dtype)  # the module's dtype policy (see class doc)
        if self.version == "0.1":
            x = (x - self.shift) / self.scale
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(amp, x.device):
            return self.net(x)

    def forward(self, in0: Tensor, in1: Tensor, retPerLayer: bool = False, normalize: bool = False):
        """LPIPS distance between ``in0`` and ``in1`` (see the class doc); lpips' signature."""
        _check_images(in0, "in0")
        _check_images(in1, "in1")
        if in1.shape[1:] != in0.shape[1:] or (in0.shape[0] != in1.shape[0] and 1 not in (in0.shape[0], in1.shape[0])):
            raise ValueError(f"in1: shape {tuple(in1.shape)} does not match in0 {tuple(in0.shape)} "
                             f"(equal shapes, or one batch of 1 against N)")
        if in1.device != in0.device:
            raise ValueError(f"in1: on {in1.device}, but in0 is on {in0.device}")
        min_size = 31 if self.net_name == "alex" else 16
        if min(in0.shape[-2:]) < min_size:
            raise ValueError(f"in0: LPIPS({self.net_name!r}) needs images of at least {min_size} x {min_size} "
                             f"pixels, got {tuple(in0.shape[-2:])}")
        if normalize:
            self._range(in0, in1, lo=0.0, hi=1.0)
            in0, in1 = 2 * in0 - 1, 2 * in1 - 1
        else:
            self._range(in0, in1)
        dev = in0.device
        if self.shift.device != dev:
            self.to(dev)
        amp = _amp_dtype(self.amp, dev)
        cl = (dev.type == "cuda") if self.channels_last is None else bool(self.channels_last)
        if cl and not getattr(self.net, "channels_last", False):
            self.net.to(memory_format=torch.channels_last)
            self.net.channels_last = True
        grad_on = torch.is_grad_enabled()
        g0, g1 = grad_on and in0.requires_grad, grad_on and in1.requires_grad
        n0, n1 = in0.shape[0], in1.shape[0]
        n = max(n0, n1)
        if g0 == g1 and n0 == n1:
            dt = self.shift.dtype
            feats = self._backbone(torch.cat([in0.to(dt), in1.to(dt)]), amp, cl)
            f0s, f1s = [f[:n] for f in feats], [f[n:] for f in feats]
        else:
            with torch.set_grad_enabled(g0):
                f0s = self._backbone(in0, amp, cl)
            with torch.set_grad_enabled(g1):
                f1s = self._backbone(in1, amp, cl)
            if n0 != n1:  # one image against many: lpips broadcasts the batch-1 side
                # dense copies: the fused kernels take dense (contiguous / channels_last) maps
                f0s = [f if f.shape[0] == n else f.expand(n, *f.shape[1:]).contiguous() for f in f0s]
                f1s = [f if f.shape[0] == n else f.expand(n, *f.shape[1:]).contiguous() for f in f1s]
        ws = self.lin_weights
        if retPerLayer:
            per = [lpips_distance([a], [b], [w], self.eps).view(n, 1, 1, 1) for a, b, w in zip(f0s, f1s, ws)]
            return _sum(per), per
        return lpips_distance(f0s, f1s, ws, self.eps).view(n, 1, 1, 1)


def lpips(in0: Tensor, in1: Tensor, net: str = "alex", *, normalize: bool = False,
          backbone_weights: Union[str, os.PathLike] = "imagenet", seed: int = 0, amp=False) -> Tensor:
    """Functional :class:`LPIPS`: per-sample distances (N,) (the module is built once and cached)."""
    _check_images(in0, "in0")
    wkey = weights_key(backbone_weights, seed)
    key = None if wkey is None else (net, wkey, str(amp))
    mod = shared_module("lpips", key, in0.device,
                        lambda: LPIPS(net, backbone_weights=backbone_weights, seed=seed, amp=amp))
    return mod(in0, in1, normalize=normalize).view(-1)
