"""A small, typed plugin registry: names → (config dataclass, factory).

Each plugin kind (sinks, engines, ...) owns one :class:`Registry` instance; there are no
module-level singletons hidden elsewhere. A plugin's config is a dataclass validated by
:func:`streams.schema.from_dict`, so bad keys are rejected before anything is built.

Usage::

    SINKS: Registry[Sink] = Registry("sink")

    @dataclass
    class JsonlConfig:
        path: str

    @SINKS.register("jsonl", JsonlConfig)
    def _make(config: JsonlConfig) -> Sink:
        return JsonlSink(config.path)

    cfg = SINKS.parse({"type": "jsonl", "path": "out.jsonl"}, key="sinks[0]")
    sink = SINKS.create(cfg)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from streams.errors import ConfigError
from streams.schema import from_dict

T = TypeVar("T")


@dataclass(frozen=True)
class PluginConfig:
    """A parsed plugin entry: its registered name and its typed config."""

    type: str
    config: Any


class Registry(Generic[T]):
    """Maps plugin names to a config dataclass and a factory building the plugin."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[type, Callable[[Any], T]]] = {}

    def register(
        self, name: str, config_cls: type
    ) -> Callable[[Callable[[Any], T]], Callable[[Any], T]]:
        """Decorator registering ``factory(config) -> plugin`` under ``name``."""

        def deco(factory: Callable[[Any], T]) -> Callable[[Any], T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = (config_cls, factory)
            return factory

        return deco

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def config_class(self, name: str) -> type:
        """The config dataclass of plugin ``name``."""
        return self._entries[name][0]

    def parse(self, raw: Mapping[str, Any], key: str) -> PluginConfig:
        """Validate ``{"type": name, **options}`` into a :class:`PluginConfig`."""
        if not isinstance(raw, Mapping):
            raise ConfigError(key, f"expected a mapping with a 'type' key, got {type(raw).__name__}")
        name = raw.get("type")
        if not isinstance(name, str):
            raise ConfigError(f"{key}.type", f"required; one of {self.names()}")
        if name not in self._entries:
            raise ConfigError(f"{key}.type", f"unknown {self.kind} '{name}'; one of {self.names()}")
        options = {k: v for k, v in raw.items() if k != "type"}
        return PluginConfig(name, from_dict(self._entries[name][0], options, key))

    def create(self, parsed: PluginConfig) -> T:
        """Build the plugin from a parsed config."""
        return self._entries[parsed.type][1](parsed.config)
