"""The StEP paper's training-time table as data (supplementary Table 1 / paper Table 6).

Seconds per 1000 training images (time/kimg) at 256 x 256 on the authors' GPU (TensorFlow,
a 12 GB card of that era).  ``max_batch`` is the largest batch that fitted that GPU's memory.
``fastep bench`` measures the same quantities and prints them side by side with these numbers.

The approaches and their loss terms are not copied here: they come from the training presets
(``fastep.zoo.step.config.LossConfig.preset(approach).table_row()``), the one home of the
approach table.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

from fastep.zoo.step.config import APPROACHES  # noqa: F401  (the one approach list)


class PaperRow(NamedTuple):
    """One row of the paper's table."""

    approach: str  #: fastep's preset name (``LossConfig.preset(approach)``)
    label: str  #: the name printed in the paper
    s_per_kimg_b8: float  #: time/kimg at batch 8, seconds
    max_batch: int  #: the largest batch that fitted the authors' GPU
    s_per_kimg_max: float  #: time/kimg at that batch, seconds


PAPER_TABLE: Dict[str, PaperRow] = {
    "bicycle_v1": PaperRow("bicycle_v1", "Bicycle v1", 93.11, 12, 85.36),
    "bicycle_v2": PaperRow("bicycle_v2", "Bicycle v2 (MUNIT-p)", 155.72, 8, 155.72),
    "ours_v1": PaperRow("ours_v1", "Ours v1", 145.50, 8, 145.50),
    "ours_v2": PaperRow("ours_v2", "Ours v2", 98.55, 12, 93.04),
    "ours_v3": PaperRow("ours_v3", "Ours v3", 64.92, 16, 53.80),
    "ours_v4": PaperRow("ours_v4", "Ours v4", 63.96, 16, 51.23),
}


def loss_terms(approach: str) -> Dict[str, bool]:
    """The loss terms of ``approach`` (paper Table 4), from the training preset."""
    from fastep.zoo.step.config import LossConfig

    return LossConfig.preset(approach).table_row()


def passes_per_step(approach: str) -> Dict[str, int]:
    """Approximate network passes of one training step implied by the loss terms (forward passes
    over the batch; G/E/VGG passes on generated images also run backward):
    G: the reconstruction, +1 for a random-code output (D_rand_z / z_recon), +2 for the cross
    cycle (swap codes, swap back); E: E(B), +1 to recover the random code, +2 to re-encode the
    swapped outputs; D: real + each kind of fake, in the D update and again in the G update;
    VGG: output and target of each perceptual term."""
    t = {k: int(v) for k, v in loss_terms(approach).items()}
    rand = t["d_rand_z"] or t["z_recon"]
    return {
        "G": 1 + rand + 2 * t["cyc_recon"],
        "E": 1 + t["z_recon"] + 2 * t["cyc_recon"],
        "D": (1 + t["d_dir"] + t["d_rand_z"]) + (t["d_dir"] + t["d_rand_z"]),
        "VGG": 2 * t["dir_recon"] + 2 * t["cyc_recon"],
    }


#: The arithmetic floor: an Ours v3 / stage 3 step at 256 x 256 costs ~300 GFLOP per image
#: (299.6 by FlopCounterMode over G, E, D and the VGG16 perceptual passes); at ~790 TFLOP/s of bf16 matrix
#: work (H100 SXM) that is ~0.38 s per 1000 images.
FLOOR_GFLOP_PER_IMAGE = 300.0
FLOOR_PEAK_TFLOPS = 790.0
FLOOR_S_PER_KIMG = FLOOR_GFLOP_PER_IMAGE * 1e9 * 1000 / (FLOOR_PEAK_TFLOPS * 1e12)

#: The paper's ordering claim: these are the fastest ...
FASTEST: Tuple[str, ...] = ("ours_v3", "ours_v4")
#: ... and these the slowest (at batch 8).
SLOWEST: Tuple[str, ...] = ("bicycle_v2", "ours_v1")

#: fastep's speed targets on an H100 at 256 x 256 (fast path, Ours v3).
TARGETS = {
    "ours_v3_b8_s_per_kimg_max": 2.0,
    "ours_v3_best_s_per_kimg_max": 1.0,
    "speedup_b8_min": 5.0,
}


def paper_ordering_holds(times: Dict[str, float]) -> bool:
    """Whether ``times`` (approach -> s/kimg) put FASTEST strictly before every other approach and
    SLOWEST strictly after every other approach (the paper's own numbers satisfy this)."""
    fast = [times[a] for a in FASTEST if a in times]
    slow = [times[a] for a in SLOWEST if a in times]
    mid = [t for a, t in times.items() if a not in FASTEST and a not in SLOWEST]
    if not fast or not slow:
        raise ValueError("times: needs at least one of %s and one of %s" % (FASTEST, SLOWEST))
    return max(fast) < min(mid + slow) and min(slow) > max(mid + fast)
