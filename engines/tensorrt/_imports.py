"""Lazy imports of TensorRT and pycuda, and the one TensorRT logger of the process.

Nothing in :mod:`engines.tensorrt` imports ``tensorrt`` or ``pycuda`` at module import
time: every function that needs them calls :func:`import_tensorrt` /
:func:`import_pycuda_driver` first, which raise
:class:`streams.errors.MissingDependencyError` with a one-line message naming what to
install.

Usage::

    trt = import_tensorrt("building a TensorRT engine")
    logger = trt_logger(trt)           # routes TensorRT's messages to logging
    builder = trt.Builder(logger)
"""

from __future__ import annotations

import importlib
import logging
import threading
from types import ModuleType
from typing import Any

from streams.errors import MissingDependencyError

TENSORRT_INSTALL = "pip install tensorrt --extra-index-url https://pypi.nvidia.com"
PYCUDA_INSTALL = "pip install pycuda"

log = logging.getLogger("fovea.tensorrt")

# The process-wide TensorRT logger: TensorRT keeps the first logger it is given for the
# whole process, so every Builder and Runtime here shares one. Keyed by the module object
# so a different ``tensorrt`` module (a reload, a test stand-in) gets its own.
_LOGGER: tuple[ModuleType, Any] | None = None
_LOGGER_LOCK = threading.Lock()


def import_tensorrt(purpose: str = "The TensorRT engine") -> Any:
    """Import and return the ``tensorrt`` module, or raise MissingDependencyError."""
    return _import("tensorrt", "tensorrt", purpose, TENSORRT_INSTALL)


def import_pycuda_driver(purpose: str = "CUDA without a CUDA build of torch") -> Any:
    """Import and return ``pycuda.driver`` (never ``pycuda.autoinit``)."""
    return _import("pycuda.driver", "pycuda", purpose, PYCUDA_INSTALL)


def _import(module: str, package: str, purpose: str, install: str) -> Any:
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as e:  # OSError: the wheel is there, its libraries are not
        raise MissingDependencyError(package, purpose, install) from e


def tensorrt_version(trt: Any) -> str:
    """The installed TensorRT version string, e.g. ``"10.8.0.43"``."""
    return str(getattr(trt, "__version__", "unknown"))


def tensorrt_major(trt: Any) -> int:
    """The major version of TensorRT (0 when it cannot be read)."""
    head = tensorrt_version(trt).split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def trt_logger(trt: Any) -> Any:
    """The process-wide ``trt.ILogger`` that forwards TensorRT's messages to ``logging``.

    Severities map to the ``fovea.tensorrt`` logger: errors to ERROR, warnings to
    WARNING, info and verbose messages to DEBUG (TensorRT's info output is chatty).
    """
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None or _LOGGER[0] is not trt:
            _LOGGER = (trt, _make_logger(trt))
        return _LOGGER[1]


def _make_logger(trt: Any) -> Any:
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.ERROR,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,
        severity.VERBOSE: logging.DEBUG,
    }

    class _LoggingBridge(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, sev: Any, msg: str) -> None:
            log.log(levels.get(sev, logging.INFO), "TensorRT: %s", msg)

    return _LoggingBridge()
