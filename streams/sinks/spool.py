"""A bounded on-disk FIFO of records: what a network sink has not delivered yet.

Every record a network sink is given is appended here first (a write-ahead log), and
leaves only when the broker acknowledged it (:meth:`Spool.commit`), so an outage, a slow
broker or a job that ends before the broker came back loses nothing: what is left is in
the folder, and the next job with the same spool sends it first. Records keep their order.

Layout of the folder: segment files ``<first sequence number, 20 digits>.seg`` holding
records back to back, and ``head`` (8 bytes, little-endian): the sequence number of the
first record not yet delivered. A record on disk::

    <u32 length of what follows the header> <u32 crc32> <i64 frame_index> <u32 index>
    <u16 len(kind)> <u16 len(subject)> <u16 len(source)> kind subject source payload

(the CRC covers the numeric fields and the body, so a write torn by a crash is found and
cut off when the spool opens). Appends are ``write`` calls without ``fsync``: they survive
the job's process dying, not the machine losing power.

The size limit (``max_bytes``) counts the segment files on disk. When an append passes it,
the OLDEST segment goes (records are dropped a segment at a time, oldest first, only at the
limit); the records it held that were not delivered are counted in :attr:`Spool.dropped`.
A segment is at most an eighth of the limit (and at most 8 MiB), so a drop never takes
more than that. The most recent records are also kept in memory (``cache_bytes``), so
delivering while the broker keeps up reads nothing back from disk.

One process at a time: :meth:`Spool.open` takes an exclusive lock on the folder, so two
sinks configured with the same spool are refused instead of interleaving.

Usage (not thread-safe: the caller serialises calls)::

    spool = Spool(Path("out/kafka-spool"), max_bytes=256 << 20)
    spool.open()
    spool.append(records)
    first, batch = spool.peek(1000)
    spool.commit(first, len(batch))      # the broker acknowledged them
    spool.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from streams.errors import SinkError

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<IIqIHHH")  # length, crc32, frame_index, index, len(kind), len(subject), len(source)
_NUMBERS = struct.Struct("<qIHHH")  # the header's fields after the CRC (what the CRC covers, with the body)
_SEGMENT_SUFFIX = ".seg"
_MAX_SEGMENT = 8 << 20


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record a network sink delivers.

    ``kind``: ``detections`` (a frame's record) or ``events`` (one event); ``index``: its
    place among the frame's records of that kind (a frame's detections record: 0, or the
    label's place when a sink splits a frame by label; an event: its place in the frame's
    events); ``subject``: what a sink may route by (an event's kind, a label; "" when
    none); ``payload``: the bytes the broker gets (the sink's own encoding).
    """

    kind: str
    source: str
    frame_index: int
    index: int
    payload: bytes
    subject: str = ""

    @property
    def key(self) -> str:
        """The idempotency key: ``source|frame_index|kind|index`` (split it from the right: a
        source id may hold ``|``). Two deliveries of one record carry the same key."""
        return f"{self.source}|{self.frame_index}|{self.kind}|{self.index}"


@dataclass
class _Segment:
    first: int  # sequence number of its first record
    path: Path
    count: int = 0
    size: int = 0

    @property
    def end(self) -> int:
        return self.first + self.count


def encode_record(r: OutRecord) -> bytes:
    """One record as it is stored (module docstring)."""
    kind, subject, source = r.kind.encode(), r.subject.encode(), r.source.encode()
    numbers = _NUMBERS.pack(r.frame_index, r.index, len(kind), len(subject), len(source))
    body = kind + subject + source + r.payload
    crc = zlib.crc32(body, zlib.crc32(numbers))
    return struct.pack("<II", len(body), crc) + numbers + body


def _read_record(fh: IO[bytes]) -> tuple[OutRecord, int] | None:
    """The next record of ``fh`` and its stored size; ``None`` at the end or at a torn/corrupt record."""
    head = fh.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    length, crc, frame_index, index, nk, ns, nsrc = _HEADER.unpack(head)
    if nk + ns + nsrc > length:
        return None
    body = fh.read(length)
    if len(body) < length or zlib.crc32(body, zlib.crc32(head[8:])) != crc:
        return None
    kind = body[:nk].decode()
    subject = body[nk:nk + ns].decode()
    source = body[nk + ns:nk + ns + nsrc].decode()
    return OutRecord(kind, source, frame_index, index, body[nk + ns + nsrc:], subject), _HEADER.size + length


class Spool:
    """A bounded, persistent FIFO of :class:`OutRecord` (see the module docstring)."""

    def __init__(self, folder: Path, max_bytes: int, cache_bytes: int = 32 << 20) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.folder = Path(folder).expanduser()
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, min(_MAX_SEGMENT, max_bytes // 8))
        self.cache_bytes = cache_bytes
        self.dropped = 0  # undelivered records removed at the size limit, since open
        self.head = 0  # sequence number of the first undelivered record
        self.tail = 0  # sequence number the next appended record gets
        self._segments: list[_Segment] = []
        self._writer: int | None = None  # fd of the last segment, opened for appending
        self._head_fd: int | None = None
        self._lock_fd: int | None = None
        self._cache: deque[tuple[int, OutRecord, int]] = deque()  # (seq, record, stored size), newest last
        self._cached_bytes = 0
        self._reader: tuple[int, IO[bytes], int] | None = None  # (segment first, file, seq of its next record)
        self._next_drop_log = 0.0
        self._created: list[Path] = []

    # ------------------------------------------------------------------ state
    @property
    def depth(self) -> int:
        """Records not delivered yet."""
        return self.tail - self.head

    @property
    def size_bytes(self) -> int:
        """Bytes of the segment files on disk (what ``max_bytes`` bounds)."""
        return sum(s.size for s in self._segments)

    # ------------------------------------------------------------------ open/close
    def open(self) -> Spool:
        """Create or recover the folder; raises :class:`SinkError` when it cannot be used."""
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._created = missing  # folders this spool made: an empty spool removes them again
            self._lock_fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise SinkError(f"spool {self.folder}: cannot create it: {e.strerror or e}") from e
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SinkError(f"spool {self.folder}: in use by another sink or job (each network sink needs a "
                            "spool folder of its own: set its 'path')") from None
        try:
            self._recover()
        except OSError as e:
            self.close()
            raise SinkError(f"spool {self.folder}: cannot read it: {e.strerror or e}") from e
        return self

    def _recover(self) -> None:
        head_path = self.folder / "head"
        self._head_fd = os.open(head_path, os.O_RDWR | os.O_CREAT, 0o644)
        raw = os.pread(self._head_fd, 8, 0)
        self.head = int.from_bytes(raw, "little") if len(raw) == 8 else 0
        names = sorted(p for p in self.folder.iterdir() if p.suffix == _SEGMENT_SUFFIX and p.stem.isdigit())
        for path in names:
            seg = _Segment(int(path.stem), path)
            if self._segments and seg.first != self._segments[-1].end:
                lost = seg.first - self._segments[-1].end
                log.error("spool %s: %d record(s) missing before %s (a damaged segment): counted as dropped",
                          self.folder, lost, path.name)
                self.dropped += max(0, lost)
            good = 0
            with open(path, "rb") as fh:
                while (item := _read_record(fh)) is not None:
                    seg.count += 1
                    good += item[1]
            seg.size = path.stat().st_size
            if good < seg.size:
                log.warning("spool %s: %s ends in %d byte(s) of a torn record (the job stopped mid-write): "
                            "cut off", self.folder, path.name, seg.size - good)
                os.truncate(path, good)
                seg.size = good
            self._segments.append(seg)
        for seg in list(self._segments[:-1]):
            if seg.end <= self.head:
                self._remove(seg)
        if self._segments:
            self.head = max(self.head, self._segments[0].first)
            self.tail = self._segments[-1].end
            self.head = min(self.head, self.tail)
        else:
            self.tail = self.head
        self._roll(reuse_last=True)

    def close(self) -> None:
        """Persist the head and release the folder. An empty spool leaves nothing behind (the folder goes)."""
        self._close_reader()
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None
        empty = self.depth == 0
        if self._head_fd is not None:
            with contextlib.suppress(OSError):
                os.pwrite(self._head_fd, self.head.to_bytes(8, "little"), 0)
            os.close(self._head_fd)
            self._head_fd = None
        if self._lock_fd is not None:
            if empty:  # nothing to keep: the folder goes (while still locked)
                with contextlib.suppress(OSError):
                    for seg in self._segments:
                        seg.path.unlink(missing_ok=True)
                    self._segments = []
                    (self.folder / "head").unlink(missing_ok=True)
                    (self.folder / "lock").unlink(missing_ok=True)
                    self.folder.rmdir()
                    for parent in self._created[1:]:
                        parent.rmdir()  # only while empty: OSError ends the loop
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        self._cache.clear()
        self._cached_bytes = 0

    # ------------------------------------------------------------------ append
    def append(self, records: Sequence[OutRecord]) -> int:
        """Append ``records`` (in order); returns how many undelivered records the size limit dropped."""
        if self._writer is None:
            raise SinkError(f"spool {self.folder}: not open")
        before = self.dropped
        chunk: list[bytes] = []
        chunk_size = 0
        tail_seg = self._segments[-1]
        for r in records:
            data = encode_record(r)
            n = len(data)
            if tail_seg.size + chunk_size + n > self.segment_bytes and tail_seg.size + chunk_size > 0:
                self._write(chunk, chunk_size)
                chunk, chunk_size = [], 0
                self._roll()
                tail_seg = self._segments[-1]
            chunk.append(data)
            chunk_size += n
            self._cache.append((self.tail, r, n))
            self._cached_bytes += n
            self.tail += 1
            tail_seg.count += 1
        if chunk:
            self._write(chunk, chunk_size)
        while self._cached_bytes > self.cache_bytes and self._cache:
            self._cached_bytes -= self._cache.popleft()[2]
        self._enforce_limit()
        return self.dropped - before

    def _write(self, chunk: list[bytes], size: int) -> None:
        assert self._writer is not None
        data = b"".join(chunk)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._writer, view):]
        except OSError as e:
            raise SinkError(f"spool {self.folder}: cannot write: {e.strerror or e}") from e
        self._segments[-1].size += size

    def _roll(self, reuse_last: bool = False) -> None:
        """Start a new segment at :attr:`tail` (``reuse_last``: append to the last one when it has room)."""
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None
        if reuse_last and self._segments and self._segments[-1].size < self.segment_bytes:
            seg = self._segments[-1]
        else:
            seg = _Segment(self.tail, self.folder / f"{self.tail:020d}{_SEGMENT_SUFFIX}")
            self._segments.append(seg)
        self._writer = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _enforce_limit(self) -> None:
        while self.size_bytes > self.max_bytes and self._segments:
            seg = self._segments[0]
            lost = max(0, seg.end - max(self.head, seg.first))
            if lost:
                self.dropped += lost
                now = time.monotonic()
                if now >= self._next_drop_log:  # the first drop, then one line every 10 s at most
                    self._next_drop_log = now + 10.0
                    log.warning("spool %s: size limit %d bytes reached: oldest undelivered records dropped "
                                "(%d so far)", self.folder, self.max_bytes, self.dropped)
            self.head = max(self.head, seg.end)
            last = len(self._segments) == 1
            self._remove(seg)
            if last:
                self._roll()
        self._trim_cache()

    def _remove(self, seg: _Segment) -> None:
        if self._reader is not None and self._reader[0] == seg.first:
            self._close_reader()
        if self._segments and self._segments[-1] is seg and self._writer is not None:
            os.close(self._writer)
            self._writer = None
        self._segments.remove(seg)
        seg.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ read/commit
    def peek(self, max_records: int, max_bytes: int = 4 << 20) -> tuple[int, list[OutRecord]]:
        """The oldest undelivered records (at least one when any; at most ``max_records`` and about
        ``max_bytes``), with the sequence number of the first. They stay until :meth:`commit`."""
        first = self.head
        if self.depth == 0:
            return first, []
        out: list[OutRecord] = []
        size = 0
        if self._cache and self._cache[0][0] <= first:
            start = first - self._cache[0][0]
            for i in range(start, len(self._cache)):
                _, r, n = self._cache[i]
                if out and (len(out) >= max_records or size + n > max_bytes):
                    break
                out.append(r)
                size += n
            return first, out
        seq = first
        cache_start = self._cache[0][0] if self._cache else self.tail
        while seq < cache_start and len(out) < max_records and (not out or size < max_bytes):
            item = self._read_at(seq)
            if item is None:  # unreadable on disk (removed under us): counted, skipped
                log.error("spool %s: record %d cannot be read back: counted as dropped", self.folder, seq)
                self.dropped += 1
                self.head = max(self.head, seq + 1)
                return self.peek(max_records, max_bytes) if self.depth else (self.head, [])
            out.append(item[0])
            size += item[1]
            seq += 1
        return first, out

    def _read_at(self, seq: int) -> tuple[OutRecord, int] | None:
        seg = next((s for s in self._segments if s.first <= seq < s.end), None)
        if seg is None:
            return None
        if self._reader is None or self._reader[0] != seg.first or self._reader[2] > seq:
            self._close_reader()
            opened: IO[bytes] = open(seg.path, "rb")  # noqa: SIM115 (kept open across peeks; _close_reader closes it)
            self._reader = (seg.first, opened, seg.first)
        first, fh, at = self._reader
        item: tuple[OutRecord, int] | None = None
        while at <= seq:
            item = _read_record(fh)
            if item is None:
                self._close_reader()
                return None
            at += 1
        self._reader = (first, fh, at)
        return item

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader[1].close()
            self._reader = None

    def commit(self, first: int, count: int) -> int:
        """Records ``first .. first+count-1`` were delivered. Returns how many of them had been
        counted as dropped meanwhile (the size limit removed them while they were in flight):
        they arrived after all, so :attr:`dropped` no longer counts them."""
        end = first + count
        revived = max(0, min(end, self.head) - first) if self.head > first else 0
        self.dropped -= min(revived, self.dropped)
        if end <= self.head:
            return revived
        self.head = end
        while len(self._segments) > 1 and self._segments[0].end <= self.head:
            self._remove(self._segments[0])
        self._trim_cache()
        if self._head_fd is not None:
            try:
                os.pwrite(self._head_fd, self.head.to_bytes(8, "little"), 0)
            except OSError as e:
                raise SinkError(f"spool {self.folder}: cannot write its head: {e.strerror or e}") from e
        return revived

    def _trim_cache(self) -> None:
        while self._cache and self._cache[0][0] < self.head:
            self._cached_bytes -= self._cache.popleft()[2]
