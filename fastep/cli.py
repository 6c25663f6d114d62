"""The ``fastep`` command line: ``fastep info | demo | mine | train | bench | eval | sample``.

Each sub-command lives in the module that owns the feature; this file only dispatches, so the
CLI never imports torch-heavy code for a sub-command that is not run.  A command module exposes
``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# name -> (module, one-line help)
COMMANDS = {
    "info": ("fastep.cli_info", "print versions, devices and the backend every op will use"),
    "demo": ("fastep.demo", "small end-to-end style-distance demo on generated images"),
    "mine": ("fastep.mine", "mine exact style-distance neighbours / triplets of an image folder"),
    "train": ("fastep.train.cli", "train StEP (stage 1, 2, 3, mapper or all)"),
    "bench": ("fastep.bench", "run the benchmark suite and print the training-time table"),
    "eval": ("fastep.eval.cli", "evaluate a checkpoint: PSNR, LPIPS, diversity, style capture"),
    "sample": ("fastep.eval.sample_cli", "render a style-transfer grid from a checkpoint"),
}


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(prog="fastep", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            p.set_defaults(_missing=True)
            continue
        mod.add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"fastep {args.command}: not available in this build", file=sys.stderr)
        return 2
    return _run_interruptible(args)


def _run_interruptible(args) -> int:
    """Run a sub-command with Ctrl-C and SIGTERM turned into one line and exit status 130.

    SIGTERM raises :class:`KeyboardInterrupt` like Ctrl-C does (the training loop installs its
    own handlers, which stop at the next log interval after a checkpoint); a command that has
    nothing to save stops where it is.  A command may catch the interrupt itself to say more
    (``fastep train`` names the stage and what ``--resume`` will do).
    """
    import signal

    def _term(signum, frame):
        raise KeyboardInterrupt(f"{signal.Signals(signum).name}")

    try:
        old = signal.signal(signal.SIGTERM, _term)
    except (ValueError, OSError):  # not the main thread: leave signals alone
        old = None
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt as err:
        why = str(err) or "Ctrl-C"
        print(f"fastep {args.command}: interrupted ({why}); stopped", file=sys.stderr, flush=True)
        return 130
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
