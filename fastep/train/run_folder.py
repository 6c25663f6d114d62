"""The ``--out`` folder of ``fastep train``: never train over an earlier run by accident.

A folder that already holds the outputs of a stage about to run (a finished or an interrupted
run) is refused with one line unless the user says what to do with it: ``--resume`` continues
it, ``--overwrite`` deletes those outputs first.  Only fastep's own outputs are ever deleted
(the stage folders, ``final.pt``, ``metrics.json``, ``eval.*``); the built-in data cache
``OUT/data`` and any other file stay.  Running the next stage in the folder of the previous
one (``--stage 2`` after ``--stage 1``) is the documented workflow and is not refused.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, List, Union

__all__ = ["RunFolderError", "stage_outputs", "existing_outputs", "prepare_run_folder"]

#: what each stage writes under OUT
_STAGE_OUTPUTS = {"1": ("stage1",), "2": ("stage2",), "3": ("stage3",), "mapper": ("mapper", "final.pt"),
                  "biggan": ("biggan",), "transfer": ("transfer", "final.pt"),
                  # a one-stage system (BridgeGAN)
                  "train": ("train", "final.pt", "eval", "metrics.json")}
#: what the main job (every stage) writes besides the stages' own outputs
_JOB_OUTPUTS = ("metrics.json", "eval.json", "eval.md")
_ALL = ("1", "2", "3", "mapper")


class RunFolderError(ValueError):
    """``--out`` holds a run that would be overwritten, or ``--resume`` names no run."""


def stage_outputs(stages: Iterable[str]) -> List[str]:
    """The names under OUT that running ``stages`` writes (relative paths)."""
    stages = tuple(stages)
    names = [n for s in stages for n in _STAGE_OUTPUTS.get(str(s), ())]
    if set(_ALL) <= set(stages):
        names += list(_JOB_OUTPUTS)
    return names


def _present(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()


def existing_outputs(out: Union[str, os.PathLike], stages: Iterable[str]) -> List[Path]:
    """The outputs of ``stages`` already present in ``out`` (empty folders do not count)."""
    out = Path(out)
    return [out / n for n in stage_outputs(stages) if _present(out / n)]


def prepare_run_folder(out: Union[str, os.PathLike], stages: Iterable[str], *, resume: bool = False,
                       overwrite: bool = False) -> None:
    """Check ``out`` before training ``stages`` there; with ``overwrite`` delete their old outputs.

    Raises :class:`RunFolderError` (a one-line message) when ``out`` holds outputs of these
    stages and neither ``resume`` nor ``overwrite`` is set, when ``resume`` names a folder that
    does not exist, or when both are set.  Under DDP only rank 0 deletes.
    """
    out = Path(out)
    stages = tuple(stages)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other: --resume continues the run in "
                             f"{out}, --overwrite deletes it; give one")
    if resume:
        if not out.is_dir():
            raise RunFolderError(f"--resume: {out} does not exist, so there is no run to resume; "
                                 "check --out, or drop --resume to start a new run there")
        return
    found = existing_outputs(out, stages)
    if not found:
        return
    if not overwrite:
        what = "a finished run" if (out / "final.pt").is_file() and "mapper" in stages else "a run"
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise RunFolderError(f"{out} already holds {what} of stage{'s' if len(stages) > 1 else ''} "
                             f"{', '.join(stages)} ({names}); add --resume to continue it or --overwrite "
                             "to replace it, or choose another --out")
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
