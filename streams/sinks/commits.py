"""Commit journals: what a file sink has made durable, so a killed job continues exactly.

A file sink (JSON Lines, CSV) appends whole lines and, every ``commit_interval_s`` seconds
and when it closes, *commits*: it flushes and fsyncs its files, then appends one line to its
journal beside them, ``<output>.commits``, and fsyncs that. A commit line is::

    {"offsets": [1048576, 0], "frames": {"cam1/a.mp4": 512, "b.mp4": 90}}

``offsets``: the size of each of the sink's files at the commit (JSONL: one file; CSV: the
detections and the events file). ``frames``: per source, the frame index after the last
frame the sink has written (frames of a source reach the sinks in frame order in a
resumable job), for the sources that changed since the previous line; a reader merges the
lines in order. The first line is where the sink started. A line cut short by a kill is
ignored: the line before it is the last commit.

On resume a sink truncates its files to the last commit's offsets (dropping whatever was
written after it, a torn last line included) and drops the records of frames it already
has (:class:`Commit.frames`), so each source's records come out once, in order, byte for
byte as an uninterrupted run writes them.

One writer at a time: an open sink holds an exclusive ``flock`` on its main file. After a
``kill -9`` of a job, its sink processes (``writer: process``) still write what they had
received and commit it before they exit; a resumed job waits for that lock
(:func:`locked`), so it never truncates under them.

Usage::

    with locked(Path("out/detections.jsonl")):         # wait for an earlier writer to finish
        commit = read_commits(Path("out/detections.jsonl"))
    journal = Journal(Path("out/detections.jsonl"))
    journal.reset(Commit((0,), {}))                    # a fresh start (atomic rewrite)
    journal.append((4096,), {"a.mp4": 40})             # after flush + fsync of the data
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from streams import faults
from streams.errors import SinkError

log = logging.getLogger(__name__)

#: How long a sink or a resuming job waits for another process writing the same output.
LOCK_WAIT_S = 120.0


@dataclass
class Commit:
    """A sink's durable state: its files' sizes and, per source, the next frame index."""

    offsets: tuple[int, ...]
    frames: dict[str, int] = field(default_factory=dict)


def journal_path(path: str | Path) -> Path:
    """The journal of the output ``path``: ``out/detections.jsonl`` -> ``out/detections.jsonl.commits``."""
    p = Path(path).expanduser()
    return p.with_name(p.name + ".commits")


def read_commits(path: str | Path) -> Commit | None:
    """The last commit of the output ``path`` (its journal merged), or None without a journal
    or without one whole line in it."""
    tail = JournalTail(path)
    tail.read()
    return tail.commit


class JournalTail:
    """Reads an output's journal as it grows (each :meth:`read` parses only the new lines)."""

    def __init__(self, path: str | Path) -> None:
        self.path = journal_path(path)
        self.commit: Commit | None = None
        self._offset = 0
        self._inode: int | None = None
        self._broken = False

    def read(self) -> Commit | None:
        """Merge the lines added since the last call; the last commit so far (None: none yet)."""
        try:
            with open(self.path, "rb") as fh:
                inode = os.fstat(fh.fileno()).st_ino
                if inode != self._inode:  # a new journal (the sink started or resumed): from its start
                    self._inode, self._offset, self.commit, self._broken = inode, 0, None, False
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return self.commit
        except OSError as e:
            raise SinkError(f"cannot read {self.path}: {e.strerror or e}") from e
        whole = data[:data.rfind(b"\n") + 1]  # a line without its newline is torn (or still being written)
        for line in whole.splitlines():
            if not self._broken:
                self._merge(line)
        self._offset += len(whole)
        return self.commit

    def _merge(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
            offsets = tuple(int(x) for x in rec["offsets"])
            frames = {str(k): int(v) for k, v in rec["frames"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("%s: an unreadable line and what follows it ignored (a torn write?); the lines before "
                        "it count", self.path)
            self._broken = True
            return
        if self.commit is None:
            self.commit = Commit(offsets, frames)
        else:
            self.commit.offsets = offsets
            self.commit.frames.update(frames)


def lock(fd: int, name: str | Path, wait_s: float | None = None) -> None:
    """Take an exclusive ``flock`` on ``fd``, waiting up to ``wait_s`` (default :data:`LOCK_WAIT_S`)
    for another writer of ``name``."""
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise SinkError(f"{name} is being written by another process (waited {wait_s:.0f} s for it); "
                                "is another job writing the same output?") from None
            if not told:
                told = True
                log.warning("waiting for another process writing %s to finish (the sink process of a job that "
                            "was killed writes what it had received, then exits)", name)
            time.sleep(0.05)


@contextlib.contextmanager
def locked(path: str | Path, wait_s: float | None = None) -> Iterator[None]:
    """Hold the writer's lock of the output ``path`` (nothing to lock when it does not exist)."""
    p = Path(path).expanduser()
    try:
        fd = os.open(p, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    except OSError as e:
        raise SinkError(f"cannot open {p}: {e.strerror or e}") from e
    try:
        lock(fd, p, wait_s)
        yield
    finally:
        os.close(fd)  # releases the lock


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path``'s folder durable."""
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, text: str, crash_name: str | None = None) -> None:
    """Replace ``path`` with ``text`` so that a kill leaves either the old or the new file:
    write a temporary file beside it, fsync, rename over it, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if crash_name is not None:
            faults.crash_point(crash_name)
        os.replace(tmp, path)
    except OSError as e:
        raise SinkError(f"cannot write {path}: {e.strerror or e}") from e
    fsync_dir(path)


def _line(offsets: tuple[int, ...], frames: Mapping[str, int]) -> str:
    return json.dumps({"offsets": list(offsets), "frames": dict(frames)}, separators=(",", ":")) + "\n"


class Journal:
    """The journal of one output: :meth:`reset` rewrites it, :meth:`append` adds a commit."""

    def __init__(self, path: str | Path) -> None:
        self.path = journal_path(path)
        self._fh: IO[str] | None = None

    def reset(self, commit: Commit) -> None:
        """Start the journal afresh with ``commit`` as its only line (atomically)."""
        self.close()
        write_atomic(self.path, _line(commit.offsets, commit.frames))

    def append(self, offsets: tuple[int, ...], frames: Mapping[str, int]) -> None:
        """Record a commit; the data it covers must already be flushed and fsynced."""
        line = _line(offsets, frames)
        try:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
            fh = self._fh
            if faults.armed("commit"):  # the kill tests: die with half a commit line written
                half = len(line) // 2
                fh.write(line[:half])
                fh.flush()
                faults.crash_point("commit")
                line = line[half:]
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as e:
            raise SinkError(f"cannot write {self.path}: {e.strerror or e}") from e

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
