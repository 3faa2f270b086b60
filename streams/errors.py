"""The one exception hierarchy of Fovea.

Every error Fovea raises on purpose derives from :class:`FoveaError`, so callers can
catch all of them at once and still tell the kinds apart::

    FoveaError
    ├── ConfigError          bad YAML, unknown key, bad value (raised before any work starts)
    ├── SourceError          a video file or stream that cannot be opened or decoded
    │   └── DecodeError      decoding failed part-way (corrupt or truncated data)
    ├── EngineError          model loading, engine build or inference failed
    │   ├── MissingDependencyError   an optional package (tensorrt, pycuda, ...) is absent
    │   └── ShapeError       a tensor's shape is not what the engine or op expects
    ├── MissingExtraError    a command or stage needs an optional extra ("live", "tracking")
    └── SinkError            a sink cannot be opened or written

``fovea`` maps them to exit codes (pipelines/cli.py, README "Exit codes"): ConfigError and
MissingExtraError 2, MissingDependencyError 3, other EngineErrors 4, SourceError and
SinkError 1.

Usage::

    try:
        run_job(config)
    except ConfigError as e:
        print(e)          # "model.input_size: expected 2 integers, got [640]"
"""

from __future__ import annotations

from collections.abc import Sequence


class FoveaError(Exception):
    """Base class of every error Fovea raises on purpose."""


class ConfigError(FoveaError):
    """A configuration is invalid. The message starts with the key path, e.g. ``sinks[0].path``."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if key else reason)


class SourceError(FoveaError):
    """A source (file or stream) cannot be used. The message names the source."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class DecodeError(SourceError):
    """Decoding a source failed part-way (corrupt or truncated data)."""


class EngineError(FoveaError):
    """Loading, building or running an inference engine failed."""


class MissingDependencyError(EngineError):
    """An optional dependency is not installed. The message says what to install."""

    def __init__(self, package: str, purpose: str, install: str) -> None:
        self.package = package
        super().__init__(f"{purpose} needs the '{package}' package, which is not installed: {install}")


class MissingExtraError(FoveaError):
    """A command needs an optional extra (``pip install -e ".[live]"``) that is not installed.

    Raised by a command before it imports the modules that need the extra, so the user
    gets one line naming the extra instead of a ``ModuleNotFoundError`` traceback; exit 2
    (a setup problem of the command, like a bad argument), while a package missing deep
    inside a job (:class:`MissingDependencyError`) exits 3.
    """

    def __init__(self, command: str, extra: str, missing: Sequence[str]) -> None:
        self.command = command
        self.extra = extra
        self.missing = list(missing)
        super().__init__(f"fovea {command} needs the '{extra}' extra ({', '.join(missing)} not installed): "
                         f'pip install -e ".[{extra}]"')


class ShapeError(EngineError, ValueError):
    """A tensor or array has the wrong shape; the message states expected and actual."""


class SinkError(FoveaError):
    """A sink cannot be opened or written."""
