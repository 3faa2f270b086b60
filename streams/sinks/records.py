"""File sinks: JSON Lines (one record per frame) and CSV (one row per detection).

Both flush after every batch, so a crash or Ctrl-C leaves a valid file holding every
frame written so far (each batch is written as whole lines in one call).

JSONL record::

    {"source": "a", "uri": "/v/a.mp4", "frame_index": 7, "pts": 3584, "time_base": "1/12800",
     "pts_seconds": 0.28, "width": 1920, "height": 1080,
     "detections": [{"box": [x1, y1, x2, y2], "confidence": 0.91, "class_id": 0, "label": "person"}]}

A detection gets ``"track_id"`` when a tracker ran (``-1``: no track took it) and
``"attributes"`` when a stage added some. The frame's events (:class:`~streams.events.Event`:
``line_cross``, ``zone_enter``, ...) follow its record, one line each
(:meth:`Event.to_record`)::

    {"event": "line_cross", "source": "a", "frame_index": 7, "pts": 3584, "pts_seconds": 0.28,
     "track_id": 3, "class": "person", "line": "gate", "direction": "in"}

so a reader tells the two apart by the ``"event"`` key. CSV: detections in ``path``, with a
``track_id`` column always (empty without a tracker) and an ``attributes`` column (the last
one: a JSON object, empty when no stage added any), events in a file of
their own beside it (:func:`events_path`: ``detections.csv`` -> ``detections.events.csv``,
columns :data:`EVENT_CSV_COLUMNS`), created at the first event.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar

from streams import faults
from streams.errors import ConfigError, SinkError
from streams.events import Event
from streams.frames import FrameResult
from streams.registry import PluginConfig
from streams.sinks import SINKS
from streams.sinks.commits import Commit, Journal, lock, read_commits
from streams.sinks.process import ProcessSink

log = logging.getLogger(__name__)

_FileSinkT = TypeVar("_FileSinkT", bound="_FileSink")


def frame_record(result: FrameResult) -> dict[str, Any]:
    """The JSON-ready record of one frame; the JSONL and MQTT sinks write it as :func:`frame_json`."""
    f = result.frame
    return {
        "source": f.source_id,
        "uri": f.uri,
        "frame_index": f.frame_index,
        "pts": f.pts,
        "time_base": f"{f.time_base[0]}/{f.time_base[1]}",
        "pts_seconds": None if f.pts_seconds is None else round(f.pts_seconds, 6),
        "width": f.width,
        "height": f.height,
        "detections": result.detections.to_records(),
    }


_DETECTION_BODY = '{"box":[%.2f,%.2f,%.2f,%.2f],"confidence":%.4f,"class_id":%d,"label":%s'
_DETECTION = _DETECTION_BODY + "}"
_TRACKED = _DETECTION_BODY + ',"track_id":%d}'


@functools.lru_cache(maxsize=64)
def _json_labels(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(json.dumps(n) for n in names)


def frame_json(result: FrameResult) -> str:
    """:func:`frame_record` as compact JSON, formatted directly: much cheaper than ``json.dumps`` of it.

    ``json.loads(frame_json(r)) == frame_record(r)``: the same keys and values (boxes to 2
    decimals, confidences to 4, both correctly rounded; attributes as JSON has them: tuples
    become lists); numbers may be written with trailing zeros (``12.50``). This runs for
    every frame of a job (the JSONL sink and the MQTT payloads), so it formats each
    detection with one ``%`` instead of building dicts.
    """
    f = result.frame
    d = result.detections
    if d.masks is not None or d.keypoints is not None:  # segmentation / pose: RLE masks, keypoints (rare)
        return json.dumps(frame_record(result), separators=(",", ":"))
    pts_s = "null" if f.pts_seconds is None else repr(round(f.pts_seconds, 6))
    head = (
        f'{{"source":{json.dumps(f.source_id)},"uri":{json.dumps(f.uri)},"frame_index":{int(f.frame_index)},'
        f'"pts":{"null" if f.pts is None else int(f.pts)},"time_base":"{f.time_base[0]}/{f.time_base[1]}",'
        f'"pts_seconds":{pts_s},"width":{int(f.width)},"height":{int(f.height)},"detections":['
    )
    n = len(d)
    if n == 0:
        return head + "]}"
    names = _json_labels(d.class_names)
    k = len(names)
    boxes = d.xyxy.tolist()
    labels = [names[i] if 0 <= i < k else f'"{i}"' for i in d.class_id.tolist()]
    rows = zip(boxes, d.confidence.tolist(), d.class_id.tolist(), labels, strict=True)
    tids = None if d.track_id is None else d.track_id.tolist()
    if d.attributes is None:
        if tids is None:
            dets = [_DETECTION % (b[0], b[1], b[2], b[3], c, i, label) for b, c, i, label in rows]
        else:
            dets = [_TRACKED % (b[0], b[1], b[2], b[3], c, i, label, t)
                    for (b, c, i, label), t in zip(rows, tids, strict=True)]
    else:  # rare (a stage added attributes): the general path
        dets = []
        for j, ((b, c, i, label), attrs) in enumerate(zip(rows, d.attributes, strict=True)):
            text = _DETECTION_BODY % (b[0], b[1], b[2], b[3], c, i, label)
            if tids is not None:
                text += f',"track_id":{int(tids[j])}'
            if attrs:
                text += ',"attributes":' + json.dumps(attrs, separators=(",", ":"))
            dets.append(text + "}")
    return head + ",".join(dets) + "]}"


def event_json(event: Event) -> str:
    """An event's record (:meth:`Event.to_record`) as compact JSON, one JSONL line without its newline."""
    return json.dumps(event.to_record(), separators=(",", ":"))


def result_lines(result: FrameResult) -> str:
    """A frame's JSONL lines: its record, then one line per event, each ending in a newline."""
    if not result.events:
        return frame_json(result) + "\n"
    return frame_json(result) + "\n" + "".join(event_json(e) + "\n" for e in result.events)


#: How a file sink keeps its commit journal (:mod:`streams.sinks.commits`).
CommitMode = Literal["off", "start", "resume"]


class _FileSink:
    """Shared open/commit/close logic of the line-oriented file sinks.

    ``commits`` (set by a file job that keeps a manifest, :mod:`streams.sinks.commits`):
    ``off``: no journal; ``start``: a fresh output with a journal, committed every
    ``commit_interval_s`` seconds and on close; ``resume``: continue the output from its
    journal's last commit, dropping records of frames it already holds.
    """

    def __init__(self, path: str | Path, append: bool = False, commits: CommitMode = "off",
                 commit_interval_s: float = 1.0) -> None:
        self.path = Path(path).expanduser()
        self.append = append
        self.commits = commits
        self.commit_interval_s = commit_interval_s
        self._fh: IO[str] | None = None
        self._journal = Journal(self.path) if commits != "off" else None
        self._skip: dict[str, int] = {}  # resume: per source, frames below this are in the output already
        self._next: dict[str, int] = {}  # per source: the frame after the last one written
        self._changed: set[str] = set()  # sources written since the last commit
        self._last_commit = 0.0
        self._torn = False  # a write failed part-way: what follows the last commit is not whole lines

    def _other_files(self) -> list[Path]:
        """Files besides ``path`` that the sink writes (committed with it)."""
        return []

    def __enter__(self: _FileSinkT) -> _FileSinkT:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as e:
            raise SinkError(f"cannot open {self.path} for writing: {e.strerror or e}") from e
        try:
            lock(fd, self.path)  # one writer at a time (held until the file is closed)
            if self._journal is None:
                if not self.append and stat.S_ISREG(os.fstat(fd).st_mode):  # not /dev/stdout
                    os.ftruncate(fd, 0)
            else:
                self._prepare_commits(fd)
            self._fh = open(fd, "a", encoding="utf-8", newline="")
        except OSError as e:
            os.close(fd)
            raise SinkError(f"cannot open {self.path} for writing: {e.strerror or e}") from e
        except BaseException:
            os.close(fd)
            raise
        self._last_commit = time.monotonic()
        self._start(resumed=os.fstat(fd).st_size > 0)
        return self

    def _prepare_commits(self, fd: int) -> None:
        """A fresh journal (``start``), or the output cut back to its last commit (``resume``)."""
        assert self._journal is not None
        files = [self.path, *self._other_files()]
        sizes = [os.fstat(fd).st_size] + [p.stat().st_size if p.exists() else 0 for p in files[1:]]
        if self.commits == "start":
            start = tuple(sizes) if self.append else tuple(0 for _ in files)
            self._journal.reset(Commit(start))  # before truncating: a kill in between leaves a consistent pair
            if not self.append:
                os.ftruncate(fd, 0)
            return
        commit = read_commits(self.path)
        if commit is None:
            if self.append and sizes[0] > 0:
                raise SinkError(f"cannot resume {self.path}: it has no commit journal ({self._journal.path}), so "
                                "what an earlier job wrote cannot be told from this one's; start the job over")
            commit = Commit(tuple(0 for _ in files))
        if len(commit.offsets) != len(files) or any(s < o for s, o in zip(sizes, commit.offsets, strict=True)):
            raise SinkError(f"cannot resume {self.path}: its files ({sizes} bytes) are shorter than its journal "
                            f"{self._journal.path} records ({list(commit.offsets)}): they were changed after the "
                            "job wrote them; start the job over")
        self._journal.reset(commit)
        os.ftruncate(fd, commit.offsets[0])
        for p, size, offset in zip(files[1:], sizes[1:], commit.offsets[1:], strict=True):
            if size > offset:
                os.truncate(p, offset)
        dropped = sum(sizes) - sum(commit.offsets)
        log.info("%s: resumed at its last commit: %d bytes kept, %d bytes written after it dropped; %d sources "
                 "already written", self.path, sum(commit.offsets), dropped, len(commit.frames))
        self._skip = dict(commit.frames)
        self._next = dict(commit.frames)

    def _start(self, resumed: bool) -> None:
        """Hook: write a header."""

    def _unseen(self, results: Sequence[FrameResult]) -> Sequence[FrameResult]:
        """``results`` without the frames the output held before a resume (each source's
        frames arrive in order, so a source is forgotten here at its first new frame)."""
        skip = self._skip
        if not skip:
            return results
        out = []
        for r in results:
            sid = r.frame.source_id
            first = skip.get(sid)
            if first is None:
                out.append(r)
            elif r.frame.frame_index >= first:
                del skip[sid]
                out.append(r)
        return out

    def _written(self, results: Sequence[FrameResult]) -> None:
        """Book ``results`` as written; commit when it is time."""
        if self._journal is None:
            return
        nxt = self._next
        for r in results:
            nxt[r.frame.source_id] = r.frame.frame_index + 1
        self._changed.update(r.frame.source_id for r in results)
        if time.monotonic() - self._last_commit >= self.commit_interval_s:
            self.commit()

    def _sync(self) -> list[int]:
        """Flush and fsync every file of the sink; their sizes, ``path`` first."""
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return [os.fstat(self._fh.fileno()).st_size]

    def commit(self) -> None:
        """Make everything written so far durable and record it in the journal."""
        if self._journal is None or self._fh is None or self._torn:
            return
        try:
            offsets = tuple(self._sync())
        except OSError as e:
            raise SinkError(f"cannot write {self.path}: {e.strerror or e}") from e
        self._journal.append(offsets, {sid: self._next[sid] for sid in self._changed})
        self._changed.clear()
        self._last_commit = time.monotonic()

    def _emit(self, text: str) -> None:
        if self._fh is None:
            raise SinkError(f"{self.path}: write() called outside 'with'")
        try:
            if faults.armed("sink-write"):  # the kill tests: die with half a batch written
                half = len(text) // 2
                self._fh.write(text[:half])
                self._fh.flush()
                faults.crash_point("sink-write")
                text = text[half:]
            self._fh.write(text)
            self._fh.flush()
        except OSError as e:
            self._torn = True
            raise SinkError(f"cannot write {self.path}: {e.strerror or e}") from e

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fh is not None:
            try:
                self.commit()  # whole lines only (a failed write stops commits), so also on an error
            except SinkError as e:
                if exc_type is None:
                    raise
                log.error("%s", e)
            finally:
                self._fh.flush()
                with contextlib.suppress(OSError):
                    os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None
                if self._journal is not None:
                    self._journal.close()
            log.info("wrote %s", self.path)


@dataclass(frozen=True)
class JsonlConfig:
    """``type: jsonl``: one JSON record per frame (frames without detections included).

    ``writer``: ``process`` formats and writes in a process of its own
    (:class:`streams.sinks.process.ProcessSink`: off the job's GIL); ``inline`` in the
    calling thread. ``commit_interval_s``: how often the output is made durable (flush,
    fsync, a line in its commit journal) when the job keeps a manifest (``fovea run``);
    ``commits`` is set by that job (:mod:`streams.sinks.commits`), not in a config file.
    """

    path: str
    append: bool = False
    writer: Literal["process", "inline"] = "process"
    commit_interval_s: float = 1.0
    commits: CommitMode = "off"

    def validate(self, key: str) -> None:
        _check_interval(self.commit_interval_s, key)


def _check_interval(seconds: float, key: str) -> None:
    if not 0 <= seconds <= 3600:
        raise ConfigError(f"{key}.commit_interval_s", f"expected 0..3600 seconds, got {seconds}")


class JsonlSink(_FileSink):
    """JSON Lines: one record per frame, see the module docstring."""

    def write(self, results: Sequence[FrameResult]) -> None:
        results = self._unseen(results)
        if results:
            self._emit("".join([result_lines(r) for r in results]))
            self._written(results)


#: The detections CSV's columns. ``track_id`` and ``attributes`` are always there (the header is the same for
#: every job, tracker or not): the track's id, ``-1`` for a detection no track took, empty
#: when no tracker ran.
CSV_COLUMNS = (
    "source", "uri", "frame_index", "pts", "pts_seconds",
    "x1", "y1", "x2", "y2", "confidence", "class_id", "label", "track_id", "attributes",
)

#: The events CSV's columns: the fields of every event kind (empty where a kind has none);
#: ``data``: any other field of the event, as a JSON object (empty when none).
EVENT_CSV_COLUMNS = (
    "event", "source", "frame_index", "pts", "pts_seconds", "track_id", "class",
    "line", "direction", "zone", "dwell_s", "reason", "data",
)
_EVENT_FIELDS = ("line", "direction", "zone", "dwell_s", "reason")


def events_path(path: str | Path) -> Path:
    """Where a CSV sink writing ``path`` writes events: ``out/detections.csv`` ->
    ``out/detections.events.csv``."""
    p = Path(path).expanduser()
    return p.with_name(f"{p.stem}.events{p.suffix or '.csv'}")


def event_row(event: Event) -> list[Any]:
    """An event's CSV row (:data:`EVENT_CSV_COLUMNS`)."""
    pts_s = "" if event.pts is None else f"{event.pts * event.time_base[0] / event.time_base[1]:.6f}"
    extra = {k: v for k, v in event.data.items() if k not in _EVENT_FIELDS}
    return [event.kind, event.source_id, event.frame_index, "" if event.pts is None else event.pts, pts_s,
            event.track_id, event.class_name,
            *("" if event.data.get(k) is None else event.data[k] for k in _EVENT_FIELDS),
            json.dumps(extra, separators=(",", ":")) if extra else ""]


@dataclass(frozen=True)
class CsvConfig:
    """``type: csv``: one row per detection (frames without detections have no row), events
    in a file of their own beside it (:func:`events_path`); ``writer``, ``commit_interval_s``
    and ``commits`` as for :class:`JsonlConfig`."""

    path: str
    append: bool = False
    writer: Literal["process", "inline"] = "process"
    commit_interval_s: float = 1.0
    commits: CommitMode = "off"

    def validate(self, key: str) -> None:
        _check_interval(self.commit_interval_s, key)


class CsvSink(_FileSink):
    """CSV: one row per detection with the columns of :data:`CSV_COLUMNS`; events in
    :func:`events_path` (:data:`EVENT_CSV_COLUMNS`), created at the first event.

    With ``append: false`` an events file left beside ``path`` by an earlier job is removed
    when the sink opens, so the two files always come from the same job (on resume both are
    cut back to their last commit instead). Appending to (or resuming) a CSV whose header is
    not :data:`CSV_COLUMNS` (an older Fovea's) is refused.
    """

    def __init__(self, path: str | Path, append: bool = False, commits: CommitMode = "off",
                 commit_interval_s: float = 1.0) -> None:
        super().__init__(path, append, commits, commit_interval_s)
        self.events_path = events_path(path)
        self._events_fh: IO[str] | None = None

    def _other_files(self) -> list[Path]:
        return [self.events_path]

    def __enter__(self) -> CsvSink:
        header = ",".join(CSV_COLUMNS)
        keeps = self.append or self.commits == "resume"
        if keeps and self.path.exists() and self.path.stat().st_size > 0:
            try:
                with open(self.path, encoding="utf-8", newline="") as fh:
                    first = fh.readline().rstrip("\r\n")
            except OSError as e:
                raise SinkError(f"cannot read {self.path}: {e.strerror or e}") from e
            if first != header:
                raise SinkError(f"cannot append to {self.path}: its columns ({first}) are not this version's "
                                f"({header}); write to a new file or set append: false")
        if not keeps:
            try:
                self.events_path.unlink(missing_ok=True)
            except OSError as e:
                raise SinkError(f"cannot remove the earlier job's {self.events_path}: {e.strerror or e}") from e
        return super().__enter__()

    def _start(self, resumed: bool) -> None:
        if not resumed:
            self._emit(",".join(CSV_COLUMNS) + "\r\n")

    def write(self, results: Sequence[FrameResult]) -> None:
        results = self._unseen(results)
        buf = io.StringIO()
        w = csv.writer(buf)
        events: list[Event] = []
        for r in results:
            f = r.frame
            pts_s = "" if f.pts_seconds is None else f"{f.pts_seconds:.6f}"
            records = r.detections.to_records()
            tids = [""] * len(records) if r.detections.track_id is None else r.detections.track_id.tolist()
            for det, tid in zip(records, tids, strict=True):
                x1, y1, x2, y2 = det["box"]
                attrs = det.get("attributes")  # a cascade's results, as a JSON object
                w.writerow([f.source_id, f.uri, f.frame_index, "" if f.pts is None else f.pts, pts_s,
                            x1, y1, x2, y2, det["confidence"], det["class_id"], det["label"], tid,
                            json.dumps(attrs, separators=(",", ":")) if attrs else ""])
            events += r.events
        if buf.tell():
            self._emit(buf.getvalue())
        if events:
            self._write_events(events)
        if results:
            self._written(results)

    def _write_events(self, events: Sequence[Event]) -> None:
        if self._fh is None:
            raise SinkError(f"{self.path}: write() called outside 'with'")
        buf = io.StringIO()
        w = csv.writer(buf)
        try:
            if self._events_fh is None:
                existed = self.events_path.exists() and self.events_path.stat().st_size > 0
                self._events_fh = open(self.events_path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (__exit__ closes it)
                if not existed:
                    w.writerow(EVENT_CSV_COLUMNS)
            for e in events:
                w.writerow(event_row(e))
            self._events_fh.write(buf.getvalue())
            self._events_fh.flush()
        except OSError as e:
            self._torn = True
            raise SinkError(f"cannot write {self.events_path}: {e.strerror or e}") from e

    def _sync(self) -> list[int]:
        sizes = super()._sync()
        fh = self._events_fh
        if fh is None:
            return [*sizes, self.events_path.stat().st_size if self.events_path.exists() else 0]
        fh.flush()
        os.fsync(fh.fileno())
        return [*sizes, os.fstat(fh.fileno()).st_size]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(exc_type, exc, tb)  # its last commit covers the events file too
        finally:
            fh, self._events_fh = self._events_fh, None
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.flush()
                    os.fsync(fh.fileno())
                fh.close()
                log.info("wrote %s", self.events_path)


@SINKS.register("jsonl", JsonlConfig)
def _jsonl(config: JsonlConfig) -> JsonlSink | ProcessSink:
    if config.writer == "process":
        return ProcessSink(PluginConfig("jsonl", config))
    return JsonlSink(config.path, config.append, config.commits, config.commit_interval_s)


@SINKS.register("csv", CsvConfig)
def _csv(config: CsvConfig) -> CsvSink | ProcessSink:
    if config.writer == "process":
        return ProcessSink(PluginConfig("csv", config))
    return CsvSink(config.path, config.append, config.commits, config.commit_interval_s)
