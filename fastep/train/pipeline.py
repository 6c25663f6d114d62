"""Moved: StEP's stage pipeline is :mod:`fastep.zoo.step.pipeline`."""
from ..zoo.step.pipeline import PipelineOptions, run_pipeline  # noqa: F401
