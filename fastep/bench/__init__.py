"""``fastep bench``: the training-time benchmark suite and the paper's table side by side.

What it measures (per approach: Bicycle v1, v2, Ours v1..v4 of the StEP paper's Table 6):

* **time/kimg** = steady-state seconds per 1000 training images of ONE full optimisation step
  (D update + G/E update) on a fixed random batch: warm-up and compilation excluded, the
  device synchronised around every timed step, the median over the timed steps.  Data loading
  is not included (the step is what the approaches differ in).
* at **batch 8** and at the **max batch** that fits a memory cap (12 GiB, a GPU of the paper's
  era; ``torch.cuda.set_per_process_memory_fraction``), found by an exact search (doubling or a
  galloping search seeded by the memory per image at batch 8, then bisection; a probe that
  raises an out-of-memory error does not fit);
* **peak memory** per image (CUDA: the allocator's high-water mark of one step, weights and
  optimizer state included, divided by the batch);
* for fastep's **fast path** (torch.compile, bf16 autocast, channels_last, fused Adam, fused
  ops) and the **eager baselines** (plain PyTorch, reference ops) in the same run, with the
  speedups.

``fastep bench`` runs the pytest-benchmark suite (benchmarks/test_bench_training.py, and with
``--kernels`` every other benchmarks/test_bench_*.py) in a subprocess, then prints the table
next to the paper's numbers and writes ``train_<device>.json`` / ``.md`` (device, versions,
commit, date, the ordering check and the targets) under ``--out``.  ``--scaling`` adds time/kimg
against batch size and resolution (benchmarks/scaling.py, a PNG).

Modules: :mod:`.config` (``BenchConfig``), :mod:`.timing` (building and timing a step),
:mod:`.memory` (max-batch search), :mod:`.report` (table, checks, files), :mod:`.paper` (the
paper's table as data), :mod:`.cli` (the command).
"""
from __future__ import annotations

from . import config, memory, paper, report, timing  # noqa: F401
from .cli import add_arguments, config_from_args, run  # noqa: F401
from .config import (BENCH_DIR, CONFIG_ENV, GIB, IMPLS, MIB, REPO_ROOT, BenchConfig,  # noqa: F401
                     default_out, quick_config)
from .memory import (SearchResult, find_max_batch, fits_from_runner, free_memory,  # noqa: F401
                     guess_max_batch, is_oom, memory_cap, probe_batch, probe_batch_subprocess,
                     run_max_batch_case, search_max_batch)
from .paper import APPROACHES  # noqa: F401
from .report import (build_report, env_info, markdown_training_table, ordering_check,  # noqa: F401
                     read_header, read_records, report_markdown, scaling_markdown, targets_check,
                     training_rows, write_report)
from .timing import (effective_switches, make_step, random_batch, reset_compiler,  # noqa: F401
                     step_switches, sync, time_steps)
