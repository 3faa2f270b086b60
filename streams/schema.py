"""Validate plain dicts (parsed YAML) into typed, frozen dataclasses.

Unknown keys, missing keys, wrong types and values outside ``Literal`` choices are
rejected with a :class:`ConfigError` naming the full key path (``sinks[1].qos``).
Extra checks live in a dataclass's ``validate(self, key)`` method, called after parsing.

Supported field types: ``int``, ``float``, ``str``, ``bool``, ``Literal[...]``,
``X | None``, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]``, nested
dataclasses, and ``Any`` (taken as is).

Usage::

    @dataclass(frozen=True)
    class Post:
        conf_threshold: float = 0.25
        layout: Literal["yolov8", "yolov5"] = "yolov8"

    from_dict(Post, {"conf_threshold": 0.5}, "postprocess")
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from streams.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], raw: Any, key: str) -> T:
    """Build dataclass ``cls`` from mapping ``raw``; ``key`` is the path used in errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(key, f"expected a mapping, got {_describe(raw)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{key}.{unknown[0]}" if key else str(unknown[0])
        raise ConfigError(where, f"unknown key; expected one of {sorted(fields)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name in raw:
            values[name] = convert(hints[name], raw[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(sub, "required key is missing")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(key)
    return obj


def convert(tp: Any, value: Any, key: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise :class:`ConfigError` at ``key``."""
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return convert(options[0], value, key)
        errors = []
        for option in options:
            try:
                return convert(option, value, key)
            except ConfigError as e:
                errors.append(e.reason)
        raise ConfigError(key, " or ".join(dict.fromkeys(errors)))
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(key, f"expected {len(args)} items, got {len(value)}")
            return tuple(convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        items = [convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {_describe(value)}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"{key}: unsupported field type {tp!r}")  # a bug in a config class


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"
