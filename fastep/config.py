"""Strict helpers shared by every config dataclass of fastep (no torch import).

* :func:`choose` -- a name from a fixed set, or a one-line error naming it and listing the valid ones;
* :func:`from_dict` -- a dataclass from a dict that raises on unknown keys (a short, named list
  of retired keys may be dropped, for reading older checkpoints);
* :func:`override` -- ``dataclasses.replace`` that names an unknown field and lists the valid ones;
* :func:`nest_overrides`, :func:`default_preset`, :func:`resolve_preset` -- a zoo system's run
  configuration from a named preset and dotted overrides (``model.g_nf=8``), the one resolution
  every ``fastep train --system`` shares.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Type, TypeVar

T = TypeVar("T")

__all__ = ["ConfigError", "choose", "from_dict", "override", "field_names", "nest_overrides", "default_preset",
           "resolve_preset"]


class ConfigError(ValueError):
    """An unknown system, preset, stage or config key, or a value of the wrong kind."""


def choose(value: str, options: Iterable[str], what: str) -> str:
    """``value`` if it is one of ``options``; else :class:`ConfigError` listing them."""
    options = list(options)
    if value not in options:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(map(str, options))}")
    return value


def field_names(cls) -> tuple:
    return tuple(f.name for f in dataclasses.fields(cls))


def _check_keys(cls, keys: Iterable[str], what: str, retired: Iterable[str] = ()) -> None:
    names = field_names(cls)
    unknown = [k for k in keys if k not in names and k not in set(retired)]
    if unknown:
        raise ConfigError(f"unknown {what} key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(repr, unknown))}; valid: {', '.join(names)}")


def _coerce_nested(cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Lists back to tuples and nested dicts back to dataclasses (what ``asdict`` turned them into)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - forward references we cannot resolve: leave values alone
        hints = {}
    for name, value in list(kwargs.items()):
        hint = hints.get(name)
        if isinstance(value, dict) and dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value)
        elif isinstance(value, list) and (typing.get_origin(hint) is tuple or
                                          any(typing.get_origin(a) is tuple for a in typing.get_args(hint))):
            kwargs[name] = tuple(value)
    return kwargs


def from_dict(cls: Type[T], data: Mapping[str, Any], *, what: Optional[str] = None,
              retired: Iterable[str] = ()) -> T:
    """``cls(**data)``; unknown keys raise :class:`ConfigError`; ``retired`` keys are dropped."""
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    what = what or cls.__name__
    retired = tuple(retired)
    _check_keys(cls, data.keys(), what, retired)
    kwargs = {k: v for k, v in data.items() if k not in retired}
    return cls(**_coerce_nested(cls, kwargs))


def override(cfg: T, overrides: Mapping[str, Any], *, what: Optional[str] = None) -> T:
    """``dataclasses.replace(cfg, **overrides)``; an unknown key raises :class:`ConfigError`."""
    if not overrides:
        return cfg
    _check_keys(type(cfg), overrides.keys(), what or type(cfg).__name__)
    return dataclasses.replace(cfg, **_coerce_nested(type(cfg), dict(overrides)))


def _sub_key_list(sub: Mapping[str, str]) -> str:
    names = [f"{k}.<{v}>" for k, v in sub.items()]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def nest_overrides(overrides: Mapping[str, Any], fields: Iterable[str], sub: Mapping[str, str],
                   what: str) -> Dict[str, Any]:
    """Dotted keys to nested dicts: ``{"model.g_nf": 8, "batch": 2}`` -> ``{"model": {"g_nf": 8}, "batch": 2}``.

    ``fields`` are the run config's top-level keys; ``sub`` names those that take sub-keys and what
    a sub-key is (``{"model": "field", "weights": "term"}``); a mapping given for one of them is
    merged.  An unknown key raises :class:`ConfigError` naming it (``what``: "StEP run config").
    """
    fields = tuple(fields)
    out: Dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = str(key).partition(".")
        if head not in fields:
            raise ConfigError(f"unknown {what} key {key!r}; valid: {', '.join(fields)} "
                              f"(and {', '.join(f'{k}.<{v}>' for k, v in sub.items())})")
        if rest:
            if head not in sub:
                raise ConfigError(f"unknown {what} key {key!r}: only {_sub_key_list(sub)} have sub-keys")
            out.setdefault(head, {})[rest] = value
        elif head in sub and isinstance(value, Mapping):
            out.setdefault(head, {}).update(value)
        else:
            out[head] = value
    return out


def default_preset(device: str, cuda: str = "paper", cpu: str = "cpu") -> str:
    """The run preset a ``device`` gets when none is named: ``cuda`` for a CUDA device (or ``auto``
    with CUDA available), else ``cpu``."""
    import torch

    if device == "auto":
        return cuda if torch.cuda.is_available() else cpu
    return cuda if str(device).startswith("cuda") else cpu


def resolve_preset(cls: Type[T], presets: Mapping[str, Mapping[str, Any]], preset: Optional[str],
                   overrides: Mapping[str, Any], *, system: str,
                   configs: Mapping[str, Callable[[Any], Any]] = None, dicts: Mapping[str, str] = None,
                   pick_default: Callable[[str], str] = default_preset) -> T:
    """Preset -> overrides -> one validated run config ``cls`` (a frozen dataclass).

    ``presets[preset]`` says what the preset changes from ``cls``'s defaults (``preset`` None:
    ``pick_default(device)``, the ``device`` override or ``auto``).  ``configs`` maps each nested
    config field to a function of the preset's value for it (None when the preset sets none) that
    returns the config the overrides' ``<field>.<key>`` then change; ``dicts`` maps each plain-dict
    field (e.g. loss weights) to what its keys are, the preset's and the overrides' entries merged.
    Every error is a one-line :class:`ConfigError` that names ``system``.
    """
    configs, dicts = dict(configs or {}), dict(dicts or {})
    sub = {**{k: "field" for k in configs}, **dicts}
    merged = nest_overrides(overrides, field_names(cls), sub, f"{system} run config")
    if preset is None:
        preset = pick_default(str(merged.get("device", "auto")))
    choose(preset, presets, f"{system} run preset")
    base = {k: (dict(v) if isinstance(v, dict) else v) for k, v in presets[preset].items()}
    try:
        nested = {}
        for name, make in configs.items():
            nested[name] = override(make(base.pop(name, None)), merged.pop(name, {}),
                                    what=f"{system} {name} config")
        for name in dicts:
            nested[name] = {**base.pop(name, {}), **merged.pop(name, {})}
        base.update(merged)
        base.update(nested)
        if isinstance(base.get("stages"), list):
            base["stages"] = tuple(base["stages"])
        return from_dict(cls, base, what=f"{system} run config")
    except (TypeError, ValueError) as err:  # a value of the wrong kind, named by the config that refused it
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from None
