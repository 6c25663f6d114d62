"""``fastep info``: versions, devices, whether _C / Triton / CUDA are there, and op backends."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    from fastep._ext import info_lines

    print("\n".join(info_lines()))
    return 0
