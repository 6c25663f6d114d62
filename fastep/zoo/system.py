"""What a system of the zoo declares: :class:`System` (the one interface the trainer, the
checkpoint code and the CLI see).

A system is a folder ``fastep/zoo/<name>/`` whose ``__init__`` defines ``SYSTEM = System(...)``,
plus one line in :data:`fastep.zoo.ENTRIES`.  The generic code never imports a system's
modules directly:

* ``fastep.zoo.build(name, preset, **overrides)`` resolves ``presets[preset]`` with the
  overrides (unknown keys are errors) and calls ``build(config)``;
* ``fastep.zoo.load(path)`` reads the checkpoint (:mod:`fastep.train.checkpoint`), finds the
  system named in it and calls ``load(checkpoint, device, ema)``;
* ``fastep train --system NAME`` resolves the system's run configuration and calls
  ``train(run_config)``, which runs the system's stages in order.  A stage may be anything
  the system needs (StEP: triplet pre-training of E, two GAN stages, the IMLE mapper); GAN
  stages drive their own step object through :class:`fastep.train.trainer.Trainer`, which
  only needs the small protocol of :class:`TrainingStep` (so a step may run, say, five critic
  updates with a gradient penalty per generator update).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Tuple, runtime_checkable

__all__ = ["System", "TrainingStep", "Inference"]


@runtime_checkable
class TrainingStep(Protocol):
    """What :class:`fastep.train.trainer.Trainer` needs from a system's training step."""

    def __call__(self, A, B) -> Dict[str, Any]:
        """One optimisation step on a batch; returns detached 0-d loss tensors (no host sync)."""

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue bit for bit (optimizers, EMA, counters)."""

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...

    def set_lr_scale(self, scale: float) -> None:
        """Multiply every optimizer's base learning rate by ``scale``."""

    def networks(self) -> Dict[str, Any]:
        """The plain ``nn.Module`` of every network to checkpoint, by name (EMA copies included)."""


@runtime_checkable
class Inference(Protocol):
    """A trained system, ready to use: float images in [-1, 1], (N, C, H, W), under no_grad."""

    system: str
    device: Any


@dataclass(frozen=True)
class System:
    """One entry of the zoo.

    Attributes:
        name: the registry key, also written into every checkpoint the system makes.
        summary: one line for ``fastep.zoo.systems()`` and ``fastep train --help``.
        config_type: the dataclass of the system's network configuration.
        presets: ``{preset name: () -> config}``; ``paper`` and ``cpu`` at least.
        build: ``config -> {network name: nn.Module}`` (float32, train mode, on CPU).
        load: ``(checkpoint, device, ema, source) -> inference object`` (:class:`Inference`);
            ``source`` names the file in errors.
        config_from_checkpoint: ``checkpoint -> config`` (the networks' configuration it was made with).
        stages: the training stages, in order (names used by ``--stage`` and checkpoints).
        run_config: ``(preset or None, overrides mapping) -> run configuration`` (frozen, validated;
            unknown keys are errors), or ``None``; it has ``out`` and ``to_json()``.
        train: ``run configuration -> metrics dict``: runs the configured stages, or ``None``.
    """

    name: str
    summary: str
    config_type: type
    presets: Mapping[str, Callable[[], Any]]
    build: Callable[[Any], Dict[str, Any]]
    load: Callable[..., Any]
    config_from_checkpoint: Callable[[Any], Any]
    stages: Tuple[str, ...] = ()
    run_config: Optional[Callable[..., Any]] = None
    train: Optional[Callable[[Any], Dict[str, Any]]] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for p in ("paper", "cpu"):
            if p not in self.presets:
                raise ValueError(f"system {self.name!r} must define the presets 'paper' and 'cpu' (missing {p!r})")
