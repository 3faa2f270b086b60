"""Crash points for the kill tests: a process kills itself (SIGKILL) at a named place.

A resumable job must survive a kill at any instant, and some instants are too short to
hit from outside: half of a batch written to an output, half of a commit line, a manifest
written but not yet renamed into place. The code marks those places with
:func:`crash_point`; the environment variable ``FOVEA_CRASH_AT=NAME:N`` makes the process
``kill -9`` itself the ``N``-th time it reaches ``NAME`` (counted per process). Unset, a
crash point costs one dictionary lookup. Names in use:

- ``batch``: the file job received a batch's results (decoding and inference are running);
- ``sink-write``: a file sink wrote half of a batch's lines;
- ``commit``: a file sink wrote half of a commit line to its journal;
- ``manifest``: the job's manifest was written beside its final name, not yet renamed.

Usage::

    if armed("sink-write"):          # only when that crash point is asked for
        fh.write(text[:half]); fh.flush(); crash_point("sink-write")
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "FOVEA_CRASH_AT"

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    name, _, n = spec.partition(":")
    return name, int(n) if n.isdigit() else 1


def armed(name: str) -> bool:
    """True when ``FOVEA_CRASH_AT`` names ``name`` (the caller then takes its slow, splittable path)."""
    target = _target()
    return target is not None and target[0] == name


def crash_point(name: str) -> None:
    """SIGKILL this process when ``FOVEA_CRASH_AT`` is ``name:N`` and this is the ``N``-th call."""
    target = _target()
    if target is None or target[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == target[1]:
        log.warning("crash point %s reached for the %d. time: killing this process (%s)", name, target[1], ENV)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
