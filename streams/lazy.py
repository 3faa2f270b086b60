"""Lazy public names for a package's ``__init__`` (PEP 562), so importing the package stays cheap.

A package that exports names from heavy modules (torch, DALI, prometheus) lists where each
lives; the module is imported on first use of the name, and the value is kept in the
package's namespace so later lookups are plain attribute reads.

Usage (in a package's ``__init__.py``)::

    __getattr__, __dir__ = lazy_exports(__name__, globals(), {"TorchEngine": "engines.torch_engine"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_exports(package: str, namespace: MutableMapping[str, Any], where: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``where`` maps a public name to the
    module that defines it; ``namespace`` is the package's ``globals()``."""

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(where))

    return getattr_, dir_
