"""The live job's malloc arenas: a bounded number, so cameras that come and go cannot grow it.

glibc gives each new thread a malloc arena of its own until there are 8 per core, then
shares them. A live job starts a reader thread for every camera added over the API (and a
thread for every HTTP request); each lands in one of the arenas, whose footprint grows to
the most any of its threads ever held at once and never shrinks back. With 16 arenas (2
cores) or 512 (64 cores) the job's RSS keeps climbing for as long as streams churn, by
memory that is free but kept (``benchmarks/memwatch.py`` shows it: glibc's in-use bytes
flat, its free bytes growing); with two it levels off within minutes. ``live.malloc_arenas``
(default 2) caps them for the job's process and, through ``MALLOC_ARENA_MAX`` in the
environment, for the processes it starts (ingest, sink writers). The threads then share
arenas; they mostly allocate while holding the GIL, so they seldom wait for each other.

A ``MALLOC_ARENA_MAX`` (or ``glibc.malloc.arena_max`` in ``GLIBC_TUNABLES``) already in
the environment wins: the operator chose. Elsewhere than glibc (musl, macOS) nothing is
done and the job says so once at INFO level.

Usage::

    with malloc_arenas(live.malloc_arenas):    # first thing in a live job, before its threads
        ...                                    # the job; MALLOC_ARENA_MAX restored after
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's malloc.h
ENV = "MALLOC_ARENA_MAX"


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas of this process at ``arenas``; ``True`` when this call set
    the cap (``0``, a cap from the environment or another C library: nothing done). The cap
    stays for the process's life (glibc cannot take arenas back)."""
    if arenas <= 0:
        return False
    if ENV in os.environ or "glibc.malloc.arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        log.info("live: malloc arenas left as the environment sets them (%s=%s)", ENV, os.environ.get(ENV, "tunable"))
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("live: not glibc's malloc: live.malloc_arenas has no effect here")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if mallopt(M_ARENA_MAX, arenas) != 1:
        log.warning("live: mallopt(M_ARENA_MAX, %d) refused: the job's memory may grow while streams churn", arenas)
        return False
    log.debug("live: malloc arenas capped at %d", arenas)
    return True


@contextlib.contextmanager
def malloc_arenas(arenas: int) -> Iterator[None]:
    """:func:`limit_malloc_arenas`, and ``MALLOC_ARENA_MAX`` set for the processes started
    inside (ingest, sink writers; restored on exit)."""
    if not limit_malloc_arenas(arenas):
        yield
        return
    os.environ[ENV] = str(arenas)
    try:
        yield
    finally:
        os.environ.pop(ENV, None)
