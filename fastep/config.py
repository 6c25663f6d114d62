"""Strict helpers shared by every config dataclass of fastep (no torch import).

* :func:`choose` -- a name from a fixed set, or a one-line error naming it and listing the valid ones;
* :func:`from_dict` -- a dataclass from a dict that raises on unknown keys (a short, named list
  of retired keys may be dropped, for reading older checkpoints);
* :func:`override` -- ``dataclasses.replace`` that names an unknown field and lists the valid ones.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Iterable, Mapping, Optional, Type, TypeVar

T = TypeVar("T")

__all__ = ["ConfigError", "choose", "from_dict", "override", "field_names"]


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
