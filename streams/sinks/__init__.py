"""Sinks: where per-frame results go. One Protocol, a registry of plugins by name.

Usage::

    parsed = SINKS.parse({"type": "jsonl", "path": "out/dets.jsonl"}, key="sinks[0]")
    with SINKS.create(parsed) as sink:
        sink.write(results)          # Sequence[FrameResult]

Plugins register themselves in their own modules; :data:`SINKS` imports the built-in
ones lazily on first use, so importing this package has no side effects beyond that.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, runtime_checkable

from streams.frames import FrameResult
from streams.registry import PluginConfig, Registry


@runtime_checkable
class Sink(Protocol):
    """Receives frame results in order, per source. ``write`` is the hot path."""

    def __enter__(self) -> Sink: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def write(self, results: Sequence[FrameResult]) -> None:
        """Persist or publish ``results``; called once per processed batch."""
        ...


class _SinkRegistry(Registry[Sink]):
    """The sink registry; loads the built-in plugin modules on first lookup."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            from streams.sinks import (
                records,  # noqa: F401  (registers jsonl, csv)
                video,  # noqa: F401  (registers video)
            )

            with contextlib.suppress(ImportError):  # the mqtt module itself imports paho lazily
                from streams.sinks import mqtt  # noqa: F401  (registers mqtt)
            with contextlib.suppress(ImportError):  # sqlite, postgres, kafka, redis (clients imported on open)
                from streams.sinks import database, kafka, postgres, redis_streams  # noqa: F401  (register)

    def names(self) -> list[str]:
        self._load()
        return super().names()

    def config_class(self, name: str) -> type:
        self._load()
        return super().config_class(name)

    def parse(self, raw: object, key: str) -> PluginConfig:
        self._load()
        return super().parse(raw, key)  # type: ignore[arg-type]

    def create(self, parsed: PluginConfig) -> Sink:
        self._load()
        return super().create(parsed)


SINKS: Registry[Sink] = _SinkRegistry("sink")


def default_path(sink_type: object) -> str | None:
    """The default ``path`` of sink type ``sink_type`` (a sink configured without one writes
    there; ``fovea run --out DIR`` moves it into DIR); ``None`` for an unknown type or one
    whose ``path`` has no default."""
    if not isinstance(sink_type, str) or sink_type not in SINKS.names():
        return None
    for f in dataclasses.fields(SINKS.config_class(sink_type)):
        if f.name == "path" and isinstance(f.default, str):
            return f.default
    return None


__all__ = ["SINKS", "Sink", "default_path"]
