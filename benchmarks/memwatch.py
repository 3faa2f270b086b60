"""Where a process's memory goes: run a ``fovea`` command with its memory sampled from inside.

The soak (:mod:`benchmarks.soak`) sees a job's resident memory (RSS) from outside; when it
grows, this tells which heap grows. It runs ``pipelines.cli`` in this process with a daemon
thread that every ``--every`` seconds appends one JSON line to ``--log``:

* ``rss_mib``, ``anon_mib``: ``VmRSS`` and ``RssAnon`` of ``/proc/self/status``;
* ``threads``: the process's threads (``Threads`` of ``/proc/self/status``);
* ``malloc``: glibc's ``mallinfo2()`` summed over every arena, in MiB: ``in_use`` (live
  ``malloc`` blocks: numpy buffers, FFmpeg, Python objects over 512 bytes), ``free`` (freed
  but kept by the arenas: fragmentation), ``mmapped`` (blocks of their own mapping, given
  back on ``free``), and ``arenas`` (``malloc_info``'s heap count);
* ``py_mib`` (with ``--tracemalloc``): what Python code holds (``tracemalloc``, pymalloc
  included; its own bookkeeping excluded).

RSS growing with ``in_use`` and ``py_mib`` is a leak in Python code (the tracemalloc
snapshots, ``--snapshot-every``, name the lines: :func:`diff_snapshots`); with ``in_use``
and not ``py_mib``, native memory held by live objects (codecs, buffers); with ``free``
(or ``arenas``) but not ``in_use``, the allocator keeping freed memory (fragmentation,
new arenas), not a leak. ``--trim-every S`` calls ``malloc_trim(0)`` every S seconds, to
see how much of the RSS the allocator could give back.

Usage::

    python -m benchmarks.memwatch --log mem.jsonl --every 5 -- live soak.yaml --duration 600
    python -m benchmarks.memwatch --log mem.jsonl --tracemalloc 16 --snapshots snaps --snapshot-every 120 \\
        -- live soak.yaml --duration 600
    python -m benchmarks.memwatch --diff snaps/snap-0120.tm snaps/snap-0600.tm   # the lines that grew
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmarks.memwatch")

MIB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


class Glibc:
    """glibc's malloc statistics and ``malloc_trim`` (``available`` is False elsewhere: musl, macOS)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        self._libc: Any = None
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            libc.mallinfo2.restype = _MallInfo2
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            libc.fopen.restype = ctypes.c_void_p
            libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
            libc.fclose.argtypes = [ctypes.c_void_p]
            self._libc = libc
        except (OSError, AttributeError):
            pass

    @property
    def available(self) -> bool:
        return self._libc is not None

    def mallinfo(self) -> dict[str, float] | None:
        """In-use, free and mmapped bytes over every arena (MiB), and the number of arenas."""
        if self._libc is None:
            return None
        m = self._libc.mallinfo2()
        return {"in_use": (m.uordblks + m.hblkhd) / MIB, "free": m.fordblks / MIB, "mmapped": m.hblkhd / MIB,
                "heap": m.arena / MIB, "arenas": self.arenas()}

    def arenas(self) -> int | None:
        """How many malloc arenas exist (``<heap nr=...>`` entries of ``malloc_info``)."""
        fd, path = tempfile.mkstemp(prefix="fovea-malloc-info-")
        os.close(fd)
        try:
            fp = self._libc.fopen(path.encode(), b"w")
            if not fp:
                return None
            self._libc.malloc_info(0, fp)
            self._libc.fclose(fp)
            return len(re.findall(r"<heap nr=", Path(path).read_text()))
        finally:
            os.unlink(path)

    def trim(self) -> None:
        if self._libc is not None:
            self._libc.malloc_trim(0)


def proc_status() -> dict[str, float]:
    """``VmRSS``, ``RssAnon`` (MiB) and ``Threads`` of this process."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(value.split()[0]) / 1024
            elif key == "Threads":
                out[key] = int(value)
    return out


class Watcher:
    """The sampling thread; see the module docstring."""

    def __init__(self, log_path: Path, every_s: float, snapshots: Path | None = None,
                 snapshot_every_s: float = 0.0, trim_every_s: float = 0.0) -> None:
        self.log_path = log_path
        self.every_s = every_s
        self.snapshots = snapshots
        self.snapshot_every_s = snapshot_every_s
        self.trim_every_s = trim_every_s
        self.glibc = Glibc()
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memwatch", daemon=True)

    def __enter__(self) -> Watcher:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.snapshots is not None:
            self.snapshots.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample(final=True)  # the job's resources released (not part of a slope)

    def sample(self, final: bool = False) -> dict[str, Any]:
        t = time.monotonic() - self.start
        st = proc_status()
        row: dict[str, Any] = {"t": round(t, 2), "rss_mib": st.get("VmRSS"), "anon_mib": st.get("RssAnon"),
                               "threads": st.get("Threads"), "malloc": self.glibc.mallinfo()}
        if final:
            row["final"] = True
        if tracemalloc.is_tracing():
            row["py_mib"] = tracemalloc.get_traced_memory()[0] / MIB
            row["tracemalloc_overhead_mib"] = tracemalloc.get_tracemalloc_memory() / MIB
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def _run(self) -> None:
        next_snap = self.snapshot_every_s
        next_trim = self.trim_every_s
        while not self._stop.wait(self.every_s):
            t = time.monotonic() - self.start
            if self.trim_every_s and t >= next_trim:
                self.glibc.trim()
                next_trim = t + self.trim_every_s
            self.sample()
            if self.snapshots is not None and self.snapshot_every_s and t >= next_snap and tracemalloc.is_tracing():
                tracemalloc.take_snapshot().dump(str(self.snapshots / f"snap-{int(t):05d}.tm"))
                next_snap = t + self.snapshot_every_s


def diff_snapshots(old: Path, new: Path, top: int = 25, key: str = "traceback") -> list[str]:
    """The ``top`` allocation sites whose memory grew most from ``old`` to ``new`` (one line each,
    then the traceback's frames, innermost last), the allocator's own files left out."""
    filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__),
               tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    a = tracemalloc.Snapshot.load(str(old)).filter_traces(filters)
    b = tracemalloc.Snapshot.load(str(new)).filter_traces(filters)
    stats = b.compare_to(a, key)
    total = sum(s.size_diff for s in stats)
    blocks = sum(s.count_diff for s in stats)
    lines = [f"total {total / MIB:+.2f} MiB ({blocks:+d} blocks) from {old.name} to {new.name}"]
    for s in stats[:top]:
        lines.append(f"{s.size_diff / 1024:+10.1f} KiB {s.count_diff:+7d} blocks  (now {s.size / 1024:.1f} KiB)")
        lines += [f"      {fr.filename}:{fr.lineno}" for fr in list(s.traceback)[-6:]]
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memwatch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=Path, default=Path("memwatch.jsonl"), help="JSON lines, one per sample")
    p.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                   help="trace Python allocations with this many frames each (0: off; slows the job)")
    p.add_argument("--snapshots", type=Path, help="folder for tracemalloc snapshots")
    p.add_argument("--snapshot-every", type=float, default=0.0, help="seconds between snapshots")
    p.add_argument("--trim-every", type=float, default=0.0, help="malloc_trim(0) every N s (0: never)")
    p.add_argument("--diff", nargs=2, type=Path, metavar=("OLD", "NEW"),
                   help="print what grew between two snapshots and exit")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- and the fovea command line (e.g. live job.yaml)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.diff:
        sys.stdout.write("\n".join(diff_snapshots(args.diff[0], args.diff[1], top=args.top)) + "\n")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("give the fovea command after --, e.g. -- live job.yaml --duration 60")
    if args.tracemalloc:
        tracemalloc.start(args.tracemalloc)
    from pipelines.cli import main as fovea_main

    with Watcher(args.log, args.every, args.snapshots, args.snapshot_every, args.trim_every):
        return fovea_main(command)


if __name__ == "__main__":
    sys.exit(main())
