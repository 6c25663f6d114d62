"""Moved: StEP's stage pipeline is :mod:`fastep.zoo.step.pipeline`, its run configuration
:mod:`fastep.zoo.step.run_config`."""
from ..zoo.step.pipeline import run_pipeline  # noqa: F401
from ..zoo.step.run_config import RunConfig, resolve_run_config  # noqa: F401
