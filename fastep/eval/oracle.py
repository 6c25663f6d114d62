"""A style oracle for the built-in data set, and the translation metrics built on it.

The built-in data set (:mod:`fastep.data.builtin`) knows every image's true style factors and
shapes, so whether a model *translates* can be measured without a person looking at grids:

* :class:`StyleOracle` -- a small CNN trained on real built-in renderings (seconds to a minute
  on one CPU core) with one head per categorical style factor (palette, gradient, texture), a
  regressed hue (cos, sin), and a foreground-mask head (which pixels lie inside a shape).  Its
  held-out accuracy per factor on the data set's validation split is stored with it and
  reported.  :func:`load_or_train_oracle` caches it as ``ROOT/oracle.pt`` beside the data set.
* :func:`translation_report` -- for a generator ``G(A, z)`` and encoder ``E(B)``:

  ======================  ==================================================================
  ``transfer``            oracle factors of G(A_i, E(B_j)), j != i, equal B_j's (per factor;
                          hue as the share within 30 degrees and the mean error)
  ``content``             IoU of the oracle's foreground mask of G(A_i, E(B_j)) with A_i's
                          true shape mask (the regions A's outline encloses)
  ``reconstruction``      PSNR (and LPIPS when given) of G(A_i, E(B_i)) against B_i
  ``sampling``            oracle confidence and Frechet distance (oracle features) of
                          G(A, z) for sampled codes, against real validation images; the share
                          of bad samples (confidence below ``bad_confidence``, by default the
                          5th percentile of real renderings' confidence); diversity
  ======================  ==================================================================

  each next to its trivial baselines -- a grey image, a flat image of the target's mean colour,
  the data set's mean image -- and its ceiling: real renderings of the target style factors on
  A's shapes (for reconstruction: B re-rendered with another texture phase, i.e. what a model
  that captures every factor but not the phase would score).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import metrics as M

__all__ = ["OracleConfig", "StyleOracle", "train_oracle", "load_or_train_oracle", "oracle_path",
           "OracleTargets", "oracle_targets", "translation_report", "quick_report", "summary_lines",
           "CATEGORICAL"]

CATEGORICAL = ("palette", "gradient", "texture")
ORACLE_FILE = "oracle.pt"
_ORACLE_VERSION = 1


@dataclass
class OracleConfig:
    """How the oracle is trained (defaults: about half a minute on one CPU core at 32 px)."""

    n_images: int = 4000       # training renderings (indices 0.. of the train split's stream)
    steps: int = 1500          # the mask head needs it: foreground IoU 0.74 at 500 steps, 0.92 at 1500 (32 px)
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 32
    max_resolution: int = 64   # larger data sets are judged at this size (area-downsampled)
    noise: float = 0.03        # Gaussian pixel noise added while training (robust to small errors)
    seed: int = 0

    def __post_init__(self):
        for name in ("n_images", "steps", "batch_size", "width", "max_resolution"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"OracleConfig.{name} must be a positive int, got {v!r}")
        if self.width % 2:
            raise ValueError(f"OracleConfig.width must be even, got {self.width}")


# ----------------------------------------------------------------------------- the network

def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class StyleOracle(nn.Module):
    """Style classifier + foreground segmenter for built-in images (in [-1, 1], NCHW).

    ``forward`` returns a dict: ``palette``, ``gradient``, ``texture`` logits, ``hue`` (N, 2)
    unit vectors (cos, sin of 2 pi hue), ``mask`` foreground logits (N, H, W) and ``features``
    (N, 128), the embedding used for the Frechet distance.  Inputs of another size are resized
    to ``resolution`` first (area for downsampling).
    """

    def __init__(self, resolution: int, n_values: Dict[str, int], width: int = 32):
        super().__init__()
        self.resolution = int(resolution)
        self.n_values = {k: int(n_values[k]) for k in CATEGORICAL}
        self.width = int(width)
        w = self.width
        # two coordinate channels let the heads see where a brightness ramp goes
        self.b1 = _block(5, w, 1)
        self.b2 = _block(w, 2 * w, 2)
        self.b3 = _block(2 * w, 3 * w, 2)
        self.b4 = _block(3 * w, 4 * w, 2)
        self.embed = nn.Sequential(nn.Linear(4 * w * 16 + 2 * 3 * w, 128), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({k: nn.Linear(128, n) for k, n in self.n_values.items()})
        self.hue = nn.Linear(128, 2)
        # fore- vs background needs the global colour context (h4) against the local colour (h2)
        self.seg_ctx = nn.Conv2d(4 * w, w, 1)
        self.seg_mid = nn.Sequential(nn.Conv2d(3 * w, w // 2, 3, 1, 1), nn.ReLU(inplace=True))
        # full-resolution read-out: shape boundaries are a large share of a small image's pixels
        self.seg = nn.Sequential(nn.Conv2d(w + w // 2, w, 1), nn.ReLU(inplace=True), nn.Conv2d(w, 1, 1))
        self.register_buffer("accuracy", torch.zeros(len(CATEGORICAL) + 2))  # held-out, see .held_out

    def _prep(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"images: expected (N, 3, H, W), got {tuple(x.shape)}")
        x = x.float()
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            mode = "area" if x.shape[-1] > self.resolution else "bilinear"
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode=mode,
                              **({} if mode == "area" else {"align_corners": False}))
        n, _, h, w = x.shape
        yy = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(n, 1, h, w)
        xx = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w).expand(n, 1, h, w)
        return torch.cat([x, xx, yy], 1)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        size = x.shape[-2:]
        h1 = self.b1(self._prep(x))
        h2 = self.b2(h1)
        h3 = self.b3(h2)
        h4 = self.b4(h3)
        pooled = torch.cat([F.adaptive_avg_pool2d(h4, 4).flatten(1),
                            h3.mean((2, 3)), h3.std((2, 3))], 1)
        f = self.embed(pooled)
        out = {k: head(f) for k, head in self.heads.items()}
        out["hue"] = F.normalize(self.hue(f), dim=1)
        up = F.interpolate(self.seg_ctx(h4), size=h2.shape[-2:], mode="bilinear", align_corners=False)
        mid = F.interpolate(self.seg_mid(torch.cat([h2, up], 1)), size=h1.shape[-2:], mode="bilinear",
                            align_corners=False)
        mask = self.seg(torch.cat([h1, mid], 1))
        if mask.shape[-2:] != size:
            mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
        out["mask"] = mask[:, 0]
        out["features"] = f
        return out

    @property
    def held_out(self) -> Dict[str, float]:
        """Accuracy on the data set's validation split when the oracle was trained:
        palette, gradient, texture, hue within 30 degrees, and foreground-mask IoU."""
        a = self.accuracy.tolist()
        return {"palette": a[0], "gradient": a[1], "texture": a[2], "hue_30deg": a[3], "mask_iou": a[4]}

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 256) -> Dict[str, Tensor]:
        """Batched eval-mode forward on CPU tensors: class ids, probabilities, hue in [0, 1),
        the foreground mask (bool), the confidence (geometric mean of the three heads' top
        probabilities) and the features."""
        self.eval()
        dev = next(self.parameters()).device
        parts: Dict[str, List[Tensor]] = {}
        for chunk in images.split(batch_size):
            out = self(chunk.to(dev))
            for k, v in out.items():
                parts.setdefault(k, []).append(v.float().cpu())
        raw = {k: torch.cat(v) for k, v in parts.items()}
        res: Dict[str, Tensor] = {"features": raw["features"], "mask": raw["mask"] > 0}
        top = []
        for k in CATEGORICAL:
            p = raw[k].softmax(1)
            res[k] = p.argmax(1)
            res[f"{k}_prob"] = p
            top.append(p.max(1).values)
        res["confidence"] = torch.stack(top, 1).log().mean(1).exp()
        res["hue"] = torch.remainder(torch.atan2(raw["hue"][:, 1], raw["hue"][:, 0]) / (2 * math.pi), 1.0)
        return res


# ----------------------------------------------------------------------------- ground truth

@dataclass
class OracleTargets:
    """Everything the oracle is trained / judged against for a list of built-in parameter dicts."""

    images: Tensor      # float [N, 3, R, R] in [-1, 1]
    outlines: Tensor    # float [N, 3, R, R] in [-1, 1] (the A side)
    factors: Dict[str, Tensor]
    hue: Tensor         # float [N]
    mask: Tensor        # bool [N, R, R]: inside a shape


def oracle_targets(params: Sequence[dict], resolution: int, chunk: int = 512) -> OracleTargets:
    """Render built-in images from :func:`fastep.data.builtin.sample_params` dicts, with their
    factors and true foreground masks."""
    from fastep.data import builtin as bi

    imgs, outl, masks = [], [], []
    for s in range(0, len(params), chunk):
        p = params[s:s + chunk]
        a, b = bi.render_batch(p, resolution)
        imgs.append(b.float().div(127.5).sub(1))
        outl.append(a.float().div(127.5).sub(1))
        masks.append(bi._shape_masks(p, resolution) > 0)
    factors = {k: torch.tensor([q[k] for q in params], dtype=torch.int64) for k in CATEGORICAL}
    hue = torch.tensor([q["hue"] for q in params], dtype=torch.float32)
    return OracleTargets(torch.cat(imgs), torch.cat(outl), factors, hue, torch.cat(masks))


def _records_to_params(records: Sequence[dict], seed: int, split: str) -> List[dict]:
    """The full parameter dicts (including the grain field) of a split's records."""
    from fastep.data.builtin import sample_params

    out = []
    for i, r in enumerate(records):
        p = sample_params(seed, split, i)
        if p["palette"] != r["palette"] or p["texture"] != r["texture"] or abs(p["hue"] - r["hue"]) > 1e-9:
            raise ValueError(f"{split}/{r.get('file')}: factors.json does not match the built-in renderer "
                             "(a data set of another fastep version?)")
        out.append(p)
    return out


def _hue_error_deg(pred: Tensor, true: Tensor) -> Tensor:
    d = torch.remainder(pred.double() - true.double(), 1.0)
    return torch.minimum(d, 1 - d) * 360.0


def _iou(pred: Tensor, true: Tensor) -> Tensor:
    """Per-image IoU of two boolean masks [N, H, W] (1 when both are empty)."""
    inter = (pred & true).flatten(1).sum(1).double()
    union = (pred | true).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


# ----------------------------------------------------------------------------- training

def _oracle_resolution(data_res: int, cfg: OracleConfig) -> int:
    return int(min(data_res, cfg.max_resolution))


def train_oracle(styles, cfg: OracleConfig = OracleConfig(), device: Union[str, torch.device] = "cpu",
                 progress: bool = False) -> StyleOracle:
    """Train a :class:`StyleOracle` on renderings of the built-in train split's stream (images
    ``0 .. cfg.n_images - 1``, of which the data set's own training images are the first) and
    measure it on the data set's validation split (never trained on)."""
    from fastep.data.builtin import PALETTES, GRADIENTS, TEXTURES, sample_params

    device = torch.device(device)
    data_res = int(styles.params["resolution"])
    seed = int(styles.params["seed"])
    res = _oracle_resolution(data_res, cfg)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    train = oracle_targets([sample_params(seed, "train", i) for i in range(cfg.n_images)], data_res)
    net = StyleOracle(res, {"palette": len(PALETTES), "gradient": len(GRADIENTS), "texture": len(TEXTURES)},
                      cfg.width).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    hue_vec = torch.stack([torch.cos(2 * math.pi * train.hue), torch.sin(2 * math.pi * train.hue)], 1)
    mask_small = train.mask if res == data_res else (
        F.interpolate(train.mask.float().unsqueeze(1), size=(res, res), mode="area")[:, 0] > 0.5)
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, desc="oracle", unit="step", leave=False)
        except ImportError:
            bar = None
    net.train()
    with torch.enable_grad():  # callers may evaluate under no_grad; the oracle still has to learn
        _fit(net, opt, sched, train, hue_vec, mask_small, cfg, gen, device, bar, res)
    if bar is not None:
        bar.close()
    net.eval()
    val = oracle_targets(_records_to_params(styles.records["val"], seed, "val"), data_res)
    acc = _accuracy(net, val)
    net.accuracy.copy_(torch.tensor([acc[k] for k in ("palette", "gradient", "texture", "hue_30deg", "mask_iou")]))
    net.train_seconds = time.perf_counter() - t0
    return net.cpu()


def _fit(net, opt, sched, train, hue_vec, mask_small, cfg, gen, device, bar, res) -> None:
    for step in range(cfg.steps):
        idx = torch.randint(0, len(train.images), (cfg.batch_size,), generator=gen)
        x = train.images[idx]
        if cfg.noise > 0:
            x = x + cfg.noise * torch.randn(x.shape, generator=gen)
        x = x.to(device)
        out = net(x)
        loss = sum(F.cross_entropy(out[k], train.factors[k][idx].to(device)) for k in CATEGORICAL)
        loss = loss + (out["hue"] - hue_vec[idx].to(device)).square().sum(1).mean()
        mask_logits = out["mask"]
        if mask_logits.shape[-1] != res:
            mask_logits = F.interpolate(mask_logits.unsqueeze(1), size=(res, res), mode="bilinear",
                                        align_corners=False)[:, 0]
        m = mask_small[idx].float().to(device)
        # foreground is ~20 % of the pixels: weighted BCE + soft Dice keep the head off the
        # "all background" plateau
        prob = mask_logits.sigmoid()
        dice = 1 - (2 * (prob * m).sum((1, 2)) + 1) / (prob.sum((1, 2)) + m.sum((1, 2)) + 1)
        loss = loss + F.binary_cross_entropy_with_logits(mask_logits, m, pos_weight=torch.tensor(3.0, device=device)) \
            + dice.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")


def _accuracy(net: StyleOracle, t: OracleTargets) -> Dict[str, float]:
    pred = net.predict(t.images)
    out = {k: float((pred[k] == t.factors[k]).double().mean()) for k in CATEGORICAL}
    out["hue_30deg"] = float((_hue_error_deg(pred["hue"], t.hue) <= 30).double().mean())
    out["mask_iou"] = float(_iou(pred["mask"], t.mask).mean())
    return out


def oracle_path(root: Union[str, Path]) -> Path:
    """Where the oracle of a built-in data set is cached: ``ROOT/oracle.pt``."""
    return Path(root) / ORACLE_FILE


def load_or_train_oracle(root: Union[str, Path], cfg: OracleConfig = OracleConfig(),
                         device: Union[str, torch.device] = "cpu", progress: bool = False,
                         log: Optional[Callable[[str], None]] = None) -> StyleOracle:
    """The oracle of the built-in data set at ``root``: loaded from ``ROOT/oracle.pt`` when it
    was trained for this data set and these settings, else trained (and cached atomically)."""
    from fastep.data import BuiltinStyles

    styles = BuiltinStyles.load(root)
    path = oracle_path(root)
    # the oracle trains on the train split's stream, not on the data set's training files: it
    # depends on the renderer's seed and resolution and the validation split it is measured on
    # ... and on the renderer's version (an oracle.pt copied from another version's data set is stale)
    from fastep.data import builtin

    data_key = {**{k: styles.params[k] for k in ("resolution", "seed", "n_val")}, "renderer": builtin.VERSION}
    key = {"version": _ORACLE_VERSION, "data": data_key, "cfg": asdict(cfg)}
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") == key:
                net = StyleOracle(blob["resolution"], blob["n_values"], blob["width"])
                net.load_state_dict(blob["state"])
                return net.eval()
        except Exception:  # noqa: BLE001 - a damaged or foreign cache is retrained, not fatal
            pass
    if log:
        log(f"fastep: training the style oracle for {root} (once; cached in {path})")
    net = train_oracle(styles, cfg, device, progress=progress)
    blob = {"key": key, "resolution": net.resolution, "n_values": net.n_values, "width": net.width,
            "state": net.state_dict()}
    tmp = path.with_name(f".{path.name}.tmp-{torch.randint(0, 2**31, ()).item()}")
    torch.save(blob, tmp)
    tmp.replace(path)
    return net.eval()


# ----------------------------------------------------------------------------- metrics

def _style_swap(content: Sequence[dict], style: Sequence[dict]) -> List[dict]:
    """``content[i]``'s shapes rendered in ``style[i]``'s style factors (and texture phase/grain)."""
    keys = ("palette", "gradient", "texture", "hue", "texture_phase", "_grain")
    return [{**c, **{k: s[k] for k in keys}} for c, s in zip(content, style)]


def _judge(oracle: StyleOracle, images: Tensor, factors: Dict[str, Tensor], hue: Tensor, mask: Tensor) -> Dict[str, float]:
    pred = oracle.predict(images)
    out = {k: float((pred[k] == factors[k]).double().mean()) for k in CATEGORICAL}
    err = _hue_error_deg(pred["hue"], hue)
    out["hue_30deg"] = float((err <= 30).double().mean())
    out["hue_err_deg"] = float(err.mean())
    out["all3"] = float(torch.stack([pred[k] == factors[k] for k in CATEGORICAL]).all(0).double().mean())
    out["iou"] = float(_iou(pred["mask"], mask).mean())
    out["confidence"] = float(pred["confidence"].mean())
    return out


def _flat_mean(x: Tensor) -> Tensor:
    return x.mean((2, 3), keepdim=True).expand_as(x).contiguous()


@torch.no_grad()
def _batched(fn, *tensors: Tensor, batch_size: int = 64, device="cpu") -> Tensor:
    outs = []
    for i in range(0, len(tensors[0]), batch_size):
        outs.append(fn(*(t[i:i + batch_size].to(device) for t in tensors)).float().cpu())
    return torch.cat(outs)


def _code(E, x: Tensor) -> Tensor:
    z = E(x)
    return z[0] if isinstance(z, (tuple, list)) else z


def translation_report(G, E, root: Union[str, Path], oracle: Optional[StyleOracle] = None, *,
                       sample_codes: Optional[Dict[str, Callable[[int, torch.Generator], Tensor]]] = None,
                       lpips: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                       max_images: Optional[int] = None, n_div_inputs: int = 16, n_div_styles: int = 8,
                       bad_confidence: Optional[float] = None, device: Union[str, torch.device] = "cpu",
                       seed: int = 0, batch_size: int = 64) -> Dict[str, object]:
    """The oracle metrics of ``G`` and ``E`` on the built-in validation split (see the module
    docstring), each with its baselines and ceiling.

    ``sample_codes``: ``{name: f(n, generator) -> (n, z_dim) codes}`` for sampled outputs (e.g.
    the mapper and N(mu, sigma)); each gets realism (confidence, Frechet distance, share of bad
    samples) and, with ``lpips``, diversity.  A sample is bad when the oracle's confidence in it
    is below ``bad_confidence``; None (default) calibrates the threshold on real renderings: their
    5th percentile, so 5 % of real images count as bad and a grey image (which the oracle still
    labels with some confidence) is bad.  Images are taken at the data set's resolution.
    """
    from fastep.data import BuiltinStyles

    device = torch.device(device)
    styles = BuiltinStyles.load(root)
    if oracle is None:
        oracle = load_or_train_oracle(root, device=device)
    oracle = oracle.eval()
    seed_data = int(styles.params["seed"])
    res = int(styles.params["resolution"])
    recs = styles.records["val"] if max_images is None else styles.records["val"][:max_images]
    n = len(recs)
    if n < 2:
        raise ValueError(f"data: {root} has {n} validation images; the transfer metrics need at least 2")
    params = _records_to_params(recs, seed_data, "val")
    val = oracle_targets(params, res)
    A, B = val.outlines, val.images
    gen = torch.Generator().manual_seed(seed)
    # a derangement: image i takes the style of image perm[i] != i
    perm = (torch.arange(n) + 1 + torch.randint(0, n - 1, (n,), generator=gen)) % n
    mean_image = _train_mean_image(styles, res)
    report: Dict[str, object] = {"n": n, "resolution": res, "oracle_held_out": oracle.held_out,
                                 "bad_confidence": bad_confidence}

    # style transfer + content on transfers
    was_training = [(m, m.training) for m in (G, E) if isinstance(m, nn.Module)]
    for m, _ in was_training:
        m.eval()
    try:
        fake_t = _batched(lambda a, b: G(a, _code(E, b)), A, B[perm], batch_size=batch_size, device=device)
        fake_r = _batched(lambda a, b: G(a, _code(E, b)), A, B, batch_size=batch_size, device=device)
        tgt_f = {k: v[perm] for k, v in val.factors.items()}
        tgt_h = val.hue[perm]
        ideal = oracle_targets(_style_swap(params, [params[int(j)] for j in perm]), res).images
        grey = torch.zeros_like(B)
        cand = {"model": fake_t, "grey": grey, "flat_mean_colour": _flat_mean(B[perm]),
                "dataset_mean": mean_image.expand_as(B).contiguous(), "ceiling_real": ideal}
        report["transfer"] = {k: _judge(oracle, v, tgt_f, tgt_h, val.mask) for k, v in cand.items()}
        # reconstruction
        rephase = [dict(p, texture_phase=(p["texture_phase"] + 0.5) % 1.0,
                        _grain=np.ascontiguousarray(np.flip(p["_grain"], 0))) for p in params]
        recon_ceiling = oracle_targets(rephase, res).images
        rc = {"model": fake_r, "grey": grey, "flat_mean_colour": _flat_mean(B),
              "dataset_mean": mean_image.expand_as(B).contiguous(), "ceiling_real": recon_ceiling}
        rec: Dict[str, Dict[str, float]] = {}
        for k, v in rc.items():
            per = M.psnr(v.clamp(-1, 1), B, reduction="none")
            if k == "ceiling_real":  # flat-textured images re-render identically (inf): left out
                per = per[torch.isfinite(per)] if torch.isfinite(per).any() else per
            rec[k] = {"psnr": float(per.mean())}
            if lpips is not None:
                rec[k]["lpips"] = float(_batched(lambda x, y: lpips(x, y).reshape(-1), v, B,
                                                 batch_size=batch_size, device=device).double().mean())
        rec_j = _judge(oracle, fake_r, val.factors, val.hue, val.mask)
        rec["model"].update({f"oracle_{k}": v for k, v in rec_j.items()})
        report["reconstruction"] = rec
        # sampling: realism and diversity
        if sample_codes:
            real_feats = oracle.predict(B)["features"]
            k_in = min(n_div_inputs, n)
            rand_style = [params[int(j)] for j in torch.randint(0, n, (k_in * n_div_styles,), generator=gen)]
            cont = [params[i] for i in range(k_in) for _ in range(n_div_styles)]
            real_div = oracle_targets(_style_swap(cont, rand_style), res).images
            if bad_confidence is None:
                bad_confidence = float(torch.quantile(oracle.predict(real_div)["confidence"].double(), 0.05))
                report["bad_confidence_from"] = "the 5th percentile of real renderings"
            report["bad_confidence"] = bad_confidence
            samp: Dict[str, Dict[str, float]] = {}
            samp["ceiling_real"] = _realism(oracle, real_div, real_feats, bad_confidence)
            for name, img in (("grey", grey), ("flat_mean_colour", _flat_mean(B)),
                              ("dataset_mean", mean_image.expand_as(B).contiguous())):
                samp[name] = _realism(oracle, img, real_feats, bad_confidence)
            if lpips is not None:
                samp["ceiling_real"]["lpips_diversity"] = _diversity(real_div, k_in, n_div_styles, lpips, device)
                for name in ("grey", "flat_mean_colour", "dataset_mean"):
                    samp[name]["lpips_diversity"] = 0.0
            for name, fn in sample_codes.items():
                A_rep = A[:k_in].repeat_interleave(n_div_styles, 0)
                z = fn(len(A_rep), gen).float().cpu()
                out = _batched(lambda a, zz: G(a, zz), A_rep, z, batch_size=batch_size, device=device)
                samp[name] = _realism(oracle, out, real_feats, bad_confidence)
                samp[name]["iou"] = float(_iou(oracle.predict(out)["mask"], val.mask[:k_in].repeat_interleave(
                    n_div_styles, 0)).mean())
                if lpips is not None:
                    samp[name]["lpips_diversity"] = _diversity(out, k_in, n_div_styles, lpips, device)
            report["sampling"] = samp
    finally:
        for m, mode in was_training:
            m.train(mode)
    report["headline"] = headline(report)
    return report


def _realism(oracle: StyleOracle, images: Tensor, real_feats: Tensor, bad: float) -> Dict[str, float]:
    pred = oracle.predict(images)
    conf = pred["confidence"]
    return {"confidence": float(conf.mean()), "bad_share": float((conf < bad).double().mean()),
            "frechet": M.frechet_distance(pred["features"], real_feats)}


def _diversity(images: Tensor, k_in: int, k_st: int, lpips, device) -> float:
    scores = []
    for i in range(k_in):
        s = images[i * k_st:(i + 1) * k_st].to(device)
        scores.append(float(M.pairwise_mean_distance(s, lambda x, y: lpips(x, y).reshape(-1))))
    return sum(scores) / len(scores)


def _train_mean_image(styles, res: int, limit: int = 512) -> Tensor:
    from fastep.data.builtin import sample_params

    n = min(limit, int(styles.params["n_train"]))
    t = oracle_targets([sample_params(int(styles.params["seed"]), "train", i) for i in range(n)], res)
    return t.images.mean(0, keepdim=True)


def headline(report: Dict[str, object]) -> Dict[str, float]:
    """The few numbers a run is judged by (the targets of the CPU preset)."""
    t = report["transfer"]["model"]
    r = report["reconstruction"]
    out = {"palette_transfer": t["palette"], "gradient_transfer": t["gradient"],
           "texture_transfer": t["texture"], "hue_transfer_30deg": t["hue_30deg"], "content_iou": t["iou"],
           "psnr": r["model"]["psnr"], "psnr_flat_mean_colour": r["flat_mean_colour"]["psnr"],
           "psnr_gain_over_flat": r["model"]["psnr"] - r["flat_mean_colour"]["psnr"]}
    if "lpips" in r["model"]:
        out["lpips"] = r["model"]["lpips"]
    return out


#: the targets of the CPU main job (README, "CPU preset")
TARGETS = {"palette_transfer": 0.80, "texture_transfer": 0.70, "content_iou": 0.80, "psnr_gain_over_flat": 3.0}


def summary_lines(report: Dict[str, object]) -> List[str]:
    """A few human-readable lines: headline metrics against their targets, baselines, ceiling."""
    h = report["headline"]
    t = report["transfer"]
    lines = []
    for key, label in (("palette_transfer", "palette"), ("texture_transfer", "texture"),
                       ("gradient_transfer", "gradient")):
        f = key.split("_")[0]
        goal = TARGETS.get(key)
        lines.append(f"  {label + ' transfer':<18} {h[key]:6.1%}"
                     + (f"  (target >= {goal:.0%})" if goal else "")
                     + f"   grey {t['grey'][f]:.0%}, flat colour {t['flat_mean_colour'][f]:.0%}, "
                       f"real ceiling {t['ceiling_real'][f]:.0%}")
    lines.append(f"  {'content IoU':<18} {h['content_iou']:6.3f}  (target >= 0.8)   grey {t['grey']['iou']:.2f}, "
                 f"mean image {t['dataset_mean']['iou']:.2f}, real ceiling {t['ceiling_real']['iou']:.2f}")
    r = report["reconstruction"]
    lines.append(f"  {'recon PSNR':<18} {h['psnr']:6.2f} dB (target >= flat colour + 3 = "
                 f"{r['flat_mean_colour']['psnr'] + 3:.2f})   grey {r['grey']['psnr']:.2f}, "
                 f"mean image {r['dataset_mean']['psnr']:.2f}, re-phased real {r['ceiling_real']['psnr']:.2f} "
                 "(textured images)")
    if "sampling" in report:
        real = report["sampling"]["ceiling_real"]
        if report.get("bad_confidence") is not None:
            lines.append(f"  (bad sample: oracle confidence below {report['bad_confidence']:.2f}, "
                         f"{report.get('bad_confidence_from', 'given')})")
        lines.append(f"  sampling (real)    confidence {real['confidence']:.2f}, bad {real['bad_share']:.0%}, "
                     f"Frechet {real['frechet']:.3g}"
                     + (f", diversity {real['lpips_diversity']:.3f}" if "lpips_diversity" in real else ""))
        for name, s in report["sampling"].items():
            if name in ("grey", "flat_mean_colour", "dataset_mean", "ceiling_real"):
                continue
            lines.append(f"  sampling {name:<9} confidence {s['confidence']:.2f}, bad {s['bad_share']:.0%}, "
                         f"Frechet {s['frechet']:.3g}"
                         + (f", diversity {s['lpips_diversity']:.3f}" if "lpips_diversity" in s else ""))
    return lines


def checkpoint_code_samplers(extras: Dict[str, object], z_dim: int, device) -> Dict[str, Callable]:
    """The sampled-code generators ``(k, generator) -> codes`` a checkpoint's extras provide: its
    mapper (``"mapper"``) and its N(mu, sigma) code statistics (``"gaussian"``), where present."""
    codes: Dict[str, Callable] = {}
    mapper, zs = extras.get("mapper"), extras.get("z_stats")
    if mapper is not None:
        nd = getattr(mapper, "noise_dim", None) or z_dim
        codes["mapper"] = lambda k, g: mapper(torch.randn(k, nd, generator=g).to(device))
    if zs is not None:
        codes["gaussian"] = lambda k, g: zs["mu"].to(device) + zs["sigma"].to(device) * torch.randn(
            k, len(zs["mu"]), generator=g).to(device)
    return codes


def quick_report(checkpoint: Union[str, Path], root: Union[str, Path], device="cpu", ema: bool = True,
                 **kw) -> Dict[str, object]:
    """:func:`translation_report` of a checkpoint written by ``fastep train`` (EMA weights unless
    ``ema=False``), with its mapper and N(mu, sigma) as the sampled codes when it has them; no LPIPS."""
    from fastep.train.checkpoint import load_models

    kw.setdefault("oracle", load_or_train_oracle(root, device=device))
    G, E, mcfg, extras = load_models(checkpoint, device, ema=ema)
    codes = checkpoint_code_samplers(extras, mcfg.z_dim, device)
    with torch.no_grad():
        return translation_report(G, E, root, sample_codes=codes or None, device=device, **kw)
