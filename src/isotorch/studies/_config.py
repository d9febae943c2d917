"""Typed study configs: frozen dataclasses, presets, and ``key=value`` overrides parsed by the field types.

A study's config is a frozen dataclass whose fields all have defaults. Overrides come from the command line as
strings (``--set widths=16,32 --set lr=1e-3``) and are parsed by each field's annotation: ``int``, ``float``,
``bool`` (``true/false/yes/no/1/0``), ``str``, ``Literal[...]``, ``X | None`` (``none``), and tuples
(``tuple[int, ...]`` from ``16,32``; an empty string is the empty tuple). Unknown keys are an error listing the valid
ones; a value that does not parse is an error naming the key. Validation beyond types belongs in the dataclass's
``__post_init__`` (raise ``ValueError`` naming the field).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from isotorch._util import check_finite, check_int, json_safe

__all__ = [
    "ConfigError",
    "check_positive",
    "config_from_dict",
    "config_to_dict",
    "make_config",
    "parse_overrides",
    "parse_value",
]

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


class ConfigError(ValueError):
    """An invalid study config: an unknown key, or a value that does not parse or validate."""


def check_positive(config: Any, *, ints: Iterable[str] = (), floats: Iterable[str] = ()) -> None:
    """Refuse a config (from its ``__post_init__``) whose fields named in ``ints`` are not ints ≥ 1, or whose fields
    named in ``floats`` are not positive and finite (``isotorch._util``'s checks, the first such field named).

    Examples:
        >>> from types import SimpleNamespace
        >>> check_positive(SimpleNamespace(steps=3, lr=0.1), ints=("steps",), floats=("lr",))
        >>> check_positive(SimpleNamespace(steps=3, lr=float("inf")), ints=("steps",), floats=("lr",))
        Traceback (most recent call last):
        ...
        ValueError: lr must be a finite float > 0, got inf
        >>> check_positive(SimpleNamespace(steps=0), ints=("steps",))
        Traceback (most recent call last):
        ...
        ValueError: steps must be an int >= 1, got 0
    """
    for name in ints:
        check_int(getattr(config, name), name, minimum=1)
    for name in floats:
        check_finite(getattr(config, name), name, minimum=0, strict=True)


def _fields(cls: type) -> dict[str, Any]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"a study config must be a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def parse_value(text: str, annotation: Any, key: str = "value") -> Any:
    """Parse one string into a value of ``annotation`` (see the module docstring for the supported types).

    Examples:
        >>> parse_value("16,32", tuple[int, ...], "widths")
        (16, 32)
        >>> parse_value("yes", bool, "flag")
        True
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if type(None) in args and text.strip().lower() in {"none", "null", ""}:
            return None
        errors = []
        for option in options:
            try:
                return parse_value(text, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: cannot parse {text!r} as {_type_name(annotation)}")
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == text.strip():
                return choice
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {text!r}")
    if origin is tuple:
        parts = [p.strip() for p in text.split(",")] if text.strip() else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(p, args[0], key) for p in parts)
        if len(parts) != len(args):
            raise ConfigError(f"{key} needs {len(args)} comma-separated values, got {text!r}")
        return tuple(parse_value(p, a, key) for p, a in zip(parts, args, strict=True))
    if annotation is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{key} must be a bool (true/false), got {text!r}")
    if annotation is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(f"{key} must be an int, got {text!r}") from None
    if annotation is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ConfigError(f"{key} must be a float, got {text!r}") from None
    if annotation is str:
        return text
    raise ConfigError(f"{key}: fields of type {_type_name(annotation)} cannot be set from the command line")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def parse_overrides(cls: type, items: Iterable[str]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` into typed values for the dataclass ``cls``.

    Raises:
        ConfigError: an item without ``=``, an unknown key (the message lists the valid keys) or a bad value.

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class C:
        ...     lr: float = 0.1
        ...     widths: tuple[int, ...] = (8,)
        >>> parse_overrides(C, ["lr=1e-3", "widths=16,32"])
        {'lr': 0.001, 'widths': (16, 32)}
    """
    fields = _fields(cls)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"overrides must look like key=value, got {item!r}")
        _check_key(cls, key, fields)
        out[key] = parse_value(text, fields[key], key)
    return out


def _check_key(cls: type, key: str, fields: Mapping[str, Any]) -> None:
    if key not in fields:
        raise ConfigError(f"unknown config key {key!r} for {cls.__name__}; valid keys: {', '.join(sorted(fields))}")


def make_config(
    cls: type,
    *,
    preset: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> Any:
    """Build ``cls`` from its defaults, then a preset (typed values), then overrides (typed values or strings).

    Errors raised by the dataclass's own validation (``ValueError``/``TypeError``) become :class:`ConfigError`.
    """
    fields = _fields(cls)
    values: dict[str, Any] = {}
    for key, value in dict(preset or {}).items():
        _check_key(cls, key, fields)
        values[key] = value
    if overrides is not None:
        if isinstance(overrides, Mapping):
            for key, value in overrides.items():
                _check_key(cls, key, fields)
                values[key] = parse_value(value, fields[key], key) if isinstance(value, str) else value
        else:
            values.update(parse_overrides(cls, overrides))
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON-ready dict (tuples become lists)."""
    return {f.name: json_safe(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild a config from :func:`config_to_dict`'s output (lists become tuples where the field is a tuple)."""
    fields = _fields(cls)
    values = {}
    for key, value in data.items():
        _check_key(cls, key, fields)
        values[key] = _retuple(value, fields[key])
    return make_config(cls, overrides=values)


def _retuple(value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if typing.get_origin(option) is tuple and isinstance(value, list):
                return _retuple(value, option)
        return value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(annotation)
        inner = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return tuple(_retuple(v, a) for v, a in zip(value, inner, strict=False))
    return value
