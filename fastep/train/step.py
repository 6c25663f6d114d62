"""Moved: StEP's training step is :mod:`fastep.zoo.step.train_step` (this name stays for the
benchmark harness until it imports from there)."""
from ..zoo.step.nets import Models, build_models  # noqa: F401
from ..zoo.step.train_step import LOSS_KEYS, TrainStep, make_train_step  # noqa: F401
