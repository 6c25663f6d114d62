"""Configuration of one ``fastep bench`` run, handed to the pytest suite as JSON."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .paper import APPROACHES

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
BENCH_DIR = REPO_ROOT / "benchmarks"
TRAIN_BENCH_FILE = "test_bench_training.py"
CONFIG_ENV = "FASTEP_TRAIN_BENCH"  # JSON config handed from `fastep bench` to the suite
DEFAULT_CUDA_BUDGET_S = 540.0
GIB = 2 ** 30
MIB = 2 ** 20


def default_out() -> Path:
    """Where results go without ``--out``: ``bench/`` in fastep's cache folder (``$FASTEP_CACHE``,
    else ``$XDG_CACHE_HOME/fastep``, else ``~/.cache/fastep``), outside any source tree (committed
    results are written with an explicit ``--out``)."""
    from fastep._build import cache_root

    return cache_root() / "bench"


IMPLS: Tuple[str, ...] = ("fastep", "baseline", "baseline_bf16")

@dataclasses.dataclass
class BenchConfig:
    """Everything the training suite needs; serialised to JSON in ``FASTEP_TRAIN_BENCH``."""

    approaches: List[str] = dataclasses.field(default_factory=lambda: list(APPROACHES))
    batch: int = 8
    resolution: int = 256
    warmup: int = 5  #: steps after the first (compiling) call, before timing
    steps: int = 20  #: timed steps (the median is reported)
    baseline: bool = True  #: also time the eager fp32 baseline (true fp32: TF32 off)
    baseline_bf16: bool = True  #: also time the eager bf16 baseline (batch 8 only)
    max_batch: bool = True  #: search and time the max batch under the memory cap
    mem_cap_gib: float = 12.0
    max_batch_limit: int = 1024  #: search ceiling (CPU: no memory cap, the ceiling is reported)
    probe_steps: int = 2  #: steps per max-batch probe (the first one compiles)
    probe: str = "inprocess"  #: "inprocess" or "subprocess" (a fresh process per probe)
    #: "exact": search the fast path's max batch like the baseline's (a compile per probe);
    #: "predict": time the fast path at the batch predicted from its memory per image at batch 8
    #: (verified to fit by the timed run itself; one compile instead of ~3)
    fast_max_batch: str = "exact"
    perceptual_backbone: str = "random"  #: VGG weights of the perceptual loss (speed is the same)
    compile: Optional[bool] = None  #: None: TrainConfig's default on CUDA, off on CPU
    cuda_graphs: bool = False
    quick: bool = False
    device: Optional[str] = None  #: "cpu" / "cuda" (set by `fastep bench`)
    results_jsonl: Optional[str] = None  #: where the suite appends one JSON line per record
    deadline: Optional[float] = None  #: epoch seconds; later cases are skipped (and recorded)
    model_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls, default: Optional["BenchConfig"] = None) -> "BenchConfig":
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            return default if default is not None else cls()
        data = json.loads(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

#: The quick mode's default approaches: the paper's fastest and slowest (--approaches all: six).
QUICK_APPROACHES = ("ours_v3", "bicycle_v2")

#: Narrow widths of the quick CPU mode (ModelConfig.tiny()'s): same structure, small cost.
QUICK_MODEL = dict(g_nf=8, n_res=1, e_nf=8, d_nf=8, d_scales=2)

def quick_config(**overrides) -> BenchConfig:
    """The CPU smoke mode: Ours v3 and Bicycle v2 at 64 x 64, narrow nets, batch 2, 2 timed
    steps, max-batch ceiling 4, no compile (checks that the suite works end to end, not speeds)."""
    cfg = BenchConfig(approaches=list(QUICK_APPROACHES), batch=2, resolution=64, warmup=0, steps=2,
                      max_batch_limit=4, probe_steps=1, quick=True, compile=False,
                      model_overrides=dict(QUICK_MODEL))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg
