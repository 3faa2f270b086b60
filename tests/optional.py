"""Skips that must not be silent in CI.

A test that needs something optional (an extra such as ``live`` or ``tracking``, a test
server from ``.ci/apt-packages-live.txt``) skips on a developer's machine without it. CI
installs all of them (``.ci/setup.sh``), so there a missing one is a broken setup, not a
reason to skip: with ``CI`` (set by CI services) or ``FOVEA_REQUIRE_OPTIONAL`` set to
anything but ``""``, ``0`` or ``false``, these helpers fail the test instead.

Usage::

    mqtt = require_module("paho.mqtt.client", "the live extra")   # module level or in a test
    skip_unless_present(reason)                                   # reason None: present
    @pytest.mark.skipif(bool(skip_reason("trackers", "the tracking extra")), reason=...)
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import pytest

_FALSE = ("", "0", "false", "no")


def strict() -> bool:
    """True where every optional dependency must be present (CI)."""
    return any(os.environ.get(v, "").strip().lower() not in _FALSE for v in ("CI", "FOVEA_REQUIRE_OPTIONAL"))


def skip_unless_present(reason: str | None) -> None:
    """Nothing when ``reason`` is None; else skip with it, or fail under :func:`strict`."""
    if reason is None:
        return
    if strict():
        pytest.fail(f"{reason} (CI installs it: a skip here would hide a broken setup)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, provided_by: str) -> ModuleType:
    """``import name``; when it is missing, skip (fail under :func:`strict`)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        skip_unless_present(f"{name} is not installed ({provided_by}): {e}")
        raise  # not reached: skip/fail raise


def skip_reason(name: str, provided_by: str) -> str | None:
    """For ``skipif`` marks: the reason to skip for a missing ``name`` (None when present);
    under :func:`strict` never a reason: the test runs and fails where it uses it."""
    if importlib.util.find_spec(name) is not None or strict():
        return None
    return f"{name} is not installed ({provided_by})"


#: Optional dependencies that CI cannot install, and why. A test that needs one skips
#: everywhere it is missing, CI included, saying so (it runs on the machines that have it).
CI_GAPS: dict[str, str] = {
    "torchvision": (
        "no torchvision matches the CPU build of torch that CI installs (torch==2.13.0 from the local "
        "index; torchvision's CPU wheels are on download.pytorch.org, which is not reachable), and "
        "onnx2torch and ultralytics import it: these tests run on the GPU machine and wherever a "
        "matching torch/torchvision pair is installed"
    ),
}


def skip_for_ci_gap(name: str) -> None:
    """Skip (also under :func:`strict`) when ``name``, one of :data:`CI_GAPS`, cannot be
    imported here; nothing when it can."""
    try:
        importlib.import_module(name)
    except (ImportError, RuntimeError) as e:  # RuntimeError: a torchvision built for another torch
        pytest.skip(f"{name} cannot be imported ({e}); {CI_GAPS[name]}", allow_module_level=True)
