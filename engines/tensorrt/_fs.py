"""Crash- and race-safe file helpers for the engine cache (POSIX only: ``fcntl``).

- :func:`atomic_write_bytes`: write to a temporary file in the same folder, ``fsync``,
  then ``os.replace``; readers see the old file or the new one, never a torn write.
- :func:`file_lock`: an exclusive ``fcntl.flock`` on a ``.lock`` file, held by the
  open file description, so it excludes other processes *and* other threads that open
  the lock file themselves.

Usage::

    with file_lock(plan.with_name(plan.name + ".lock")):
        if not plan.exists():
            atomic_write_bytes(plan, build())
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) for the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
