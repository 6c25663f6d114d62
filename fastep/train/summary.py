"""The end of the main job: evaluate the finished model and say what was made and where.

:func:`evaluate_run` runs :func:`fastep.eval.evaluate.evaluate_checkpoint` (what ``fastep eval``
computes) on the validation split of the run's data and writes ``OUT/eval.json`` and
``OUT/eval.md``; :func:`format_summary` is the text ``fastep train`` prints last: the
evaluation's own table (whatever metrics it returns) and the paths of the checkpoint, the
metrics and the sample grids.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["evaluate_run", "format_summary", "picture_paths"]


def _lpips_weights(net: str = "alex") -> str:
    """ImageNet LPIPS backbone weights when they are on disk, else the seeded random backbone."""
    try:
        from ..nets.weights import resolve_state_dict

        resolve_state_dict({"alex": "alexnet", "vgg": "vgg16"}.get(net, net), "imagenet")
        return "imagenet"
    except (FileNotFoundError, ValueError):
        return "random"


def eval_config(lpips_weights: str):
    """The :class:`~fastep.eval.evaluate.EvalConfig` of the closing evaluation (``fastep eval``'s
    defaults with the given LPIPS weights)."""
    from ..eval.evaluate import EvalConfig

    return EvalConfig(lpips_weights=lpips_weights)


def evaluate_run(summary: Dict[str, Any], *, progress: bool = True, log=None) -> Optional[Dict[str, Any]]:
    """Evaluate ``summary["final_checkpoint"]`` on ``summary["data"]``; the report, or ``None``
    (with one line on stderr) when the data has no validation split or the model cannot be read."""
    from ..eval.evaluate import evaluate_checkpoint, write_report
    from .checkpoint import CheckpointError

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out = Path((summary.get("config") or summary.get("options"))["out"])
    weights = _lpips_weights()
    if weights == "random":
        log("fastep: note: evaluating with LPIPS on a seeded random AlexNet (no ImageNet weights on disk; "
            "fastep eval --lpips-weights PATH uses real ones)")
    log("fastep: evaluating the final model on the validation split")
    try:
        report = evaluate_checkpoint(summary["final_checkpoint"], summary["data"], eval_config(weights),
                                     summary.get("device", "cpu"), progress=progress)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        log(f"fastep: no evaluation: {err}")
        return None
    write_report(report, out / "eval.json")
    return report


def picture_paths(out: Path) -> List[Path]:
    """The newest sample grid of every GAN stage, and the mapper's grid, that exist in ``out``."""
    pics = []
    for stage in ("2", "3"):
        grids = sorted((out / f"stage{stage}" / "samples").glob("*.png"))
        if grids:
            pics.append(grids[-1])
    if (out / "mapper" / "samples.png").is_file():
        pics.append(out / "mapper" / "samples.png")
    return pics


def format_summary(summary: Dict[str, Any], report: Optional[Dict[str, Any]]) -> str:
    """The closing text of the main job (see the module docstring)."""
    out = Path((summary.get("config") or summary.get("options"))["out"])
    lines = ["", f"fastep train: summary of {out} ({summary.get('wall_s', 0.0):.0f} s, {summary.get('device')})"]
    lines.append(f"  model      {summary.get('final_checkpoint')}   (fastep eval / fastep sample read it)")
    if report is not None:
        from ..eval.evaluate import markdown_report

        lines.append(f"  metrics    {out / 'eval.json'} and {out / 'eval.md'} (validation split of {summary.get('data')})")
        if report.get("note"):
            lines.append(f"  note       {report['note']}")
    pics = picture_paths(out)
    for i, p in enumerate(pics):
        lines.append(("  pictures   " if i == 0 else "             ") + str(p))
    if pics:
        lines.append("             (each grid names its rows at the left: input, target, reconstruction, transfer, samples; "
                     "the mapper's: input, mapper, N(mu, sigma))")
    lines.append(f"  all stages {out / 'metrics.json'}")
    if report is not None:
        lines += ["", markdown_report([report], names=[out.name])]
        oracle = report.get("oracle")
        if oracle is not None:
            try:
                from ..eval.oracle import summary_lines

                lines += [""] + list(summary_lines(oracle))
            except ImportError:
                pass
    return "\n".join(lines)
