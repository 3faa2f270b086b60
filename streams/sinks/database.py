"""Database sinks' tables, and the SQLite sink (a file next to the other outputs).

Four tables per sink, one per record type, created on first use (``IF NOT EXISTS``), each
with an index on ``(source, frame_index)`` (the summaries: on ``source``); ``table_prefix``
(default ``fovea_``) starts their names::

    fovea_frames      one row per frame (frames without detections too)
        source TEXT, frame_index BIGINT, pts BIGINT NULL, pts_seconds DOUBLE NULL,
        time_base TEXT ('1/12800'), width INT, height INT, uri TEXT, detections INT (how many)
    fovea_detections  one row per detection
        source, frame_index, det_index INT (its place in the frame),
        x1, y1, x2, y2 REAL, confidence REAL, class_id INT, label TEXT,
        track_id BIGINT NULL (no tracker: NULL; -1: no track took it),
        attributes JSON NULL (what a stage added)
    fovea_events      one row per event (line_cross, zone_enter, ...)
        source, frame_index, event_index INT (its place among the frame's events),
        event TEXT, pts BIGINT NULL, pts_seconds DOUBLE NULL, track_id BIGINT, class TEXT,
        data JSON (the kind's own fields: line, direction, zone, dwell_s, reason, ...)
    fovea_summaries   one row per source, at the end of a job that ran to its end
        source, frames BIGINT, detections BIGINT (what the sink was given),
        stages JSON (per per-source stage, its report about the source: tracks, line and
        zone counts, ...; :mod:`streams.sinks.summaries`)

(PostgreSQL types: ``real``, ``double precision``, ``jsonb``; SQLite stores the same columns
with its own affinities.) A row is identified by ``(source, frame_index)`` plus
``det_index`` / ``event_index`` (a summary: ``source``): the idempotency key of the delivery contract
(:mod:`streams.sinks.delivery`), so ``SELECT DISTINCT`` on those columns removes the rare
duplicate a retried PostgreSQL batch can leave. Per-source counts::

    SELECT f.source, count(*) AS frames, sum(f.detections) AS detections
    FROM fovea_frames f GROUP BY f.source ORDER BY f.source;

SQLite (``type: sqlite``): ``path`` is the database file (relative to the config's folder;
``fovea run --out DIR`` puts it in DIR, beside the JSONL and CSV files). Each batch is one
transaction, so a crash leaves every batch fully in or fully out. ``append: false`` (the
default, like the file sinks) starts a new database file; ``true`` adds to the tables that
are there. ``writer: process`` (the default) writes in a process of its own, like the JSONL
sink (:class:`~streams.sinks.process.ProcessSink`).

Usage::

    parsed = SINKS.parse({"type": "sqlite", "path": "out/detections.sqlite"}, "sinks[0]")
    with SINKS.create(parsed) as sink:
        sink.write(results)
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from streams.errors import ConfigError, SinkError
from streams.events import Event
from streams.frames import FrameResult
from streams.registry import PluginConfig
from streams.sinks import SINKS, Sink
from streams.sinks.process import ProcessSink
from streams.sinks.summaries import SourceCounts, SourceSummary

log = logging.getLogger(__name__)

Dialect = Literal["sqlite", "postgres"]

FRAME_COLUMNS = ("source", "frame_index", "pts", "pts_seconds", "time_base", "width", "height", "uri", "detections")
DETECTION_COLUMNS = ("source", "frame_index", "det_index", "x1", "y1", "x2", "y2", "confidence", "class_id",
                     "label", "track_id", "attributes")
EVENT_COLUMNS = ("source", "frame_index", "event_index", "event", "pts", "pts_seconds", "track_id", "class",
                 "data")
SUMMARY_COLUMNS = ("source", "frames", "detections", "stages")
_EVENT_TOP = frozenset({"event", "source", "frame_index", "pts", "pts_seconds", "track_id", "class"})

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"text": "TEXT", "big": "INTEGER", "int": "INTEGER", "real": "REAL", "double": "REAL",
               "json": "TEXT"},
    "postgres": {"text": "text", "big": "bigint", "int": "integer", "real": "real", "double": "double precision",
                 "json": "jsonb"},
}
_SCHEMA = {
    "frames": [("source", "text NOT NULL"), ("frame_index", "big NOT NULL"), ("pts", "big"),
               ("pts_seconds", "double"), ("time_base", "text"), ("width", "int"), ("height", "int"),
               ("uri", "text"), ("detections", "int NOT NULL")],
    "detections": [("source", "text NOT NULL"), ("frame_index", "big NOT NULL"), ("det_index", "int NOT NULL"),
                   ("x1", "real"), ("y1", "real"), ("x2", "real"), ("y2", "real"), ("confidence", "real"),
                   ("class_id", "int"), ("label", "text"), ("track_id", "big"), ("attributes", "json")],
    "events": [("source", "text NOT NULL"), ("frame_index", "big NOT NULL"), ("event_index", "int NOT NULL"),
               ("event", "text NOT NULL"), ("pts", "big"), ("pts_seconds", "double"), ("track_id", "big"),
               ("class", "text"), ("data", "json")],
    "summaries": [("source", "text NOT NULL"), ("frames", "big"), ("detections", "big"), ("stages", "json")],
}


def table_names(prefix: str) -> dict[str, str]:
    """``{"frames": ..., "detections": ..., "events": ..., "summaries": ...}`` with ``prefix``."""
    return {t: f"{prefix}{t}" for t in _SCHEMA}


def schema_sql(prefix: str, dialect: Dialect) -> list[str]:
    """The ``CREATE TABLE`` / ``CREATE INDEX`` statements (idempotent) of the tables."""
    types = _TYPES[dialect]
    out = []
    for table, name in table_names(prefix).items():
        cols = []
        for col, spec in _SCHEMA[table]:
            kind, _, rest = spec.partition(" ")
            cols.append(f'"{col}" {types[kind]}{" " + rest if rest else ""}')
        out.append(f'CREATE TABLE IF NOT EXISTS "{name}" ({", ".join(cols)})')
        if table == "summaries":
            out.append(f'CREATE INDEX IF NOT EXISTS "{name}_source" ON "{name}" (source)')
        else:
            out.append(f'CREATE INDEX IF NOT EXISTS "{name}_source_frame" ON "{name}" (source, frame_index)')
    return out


def validate_prefix(prefix: str, key: str) -> None:
    if prefix and not (prefix[0].isalpha() or prefix[0] == "_"):
        raise ConfigError(key, f"{prefix!r}: must start with a letter or '_'")
    if not all(c.isalnum() or c == "_" for c in prefix) or len(prefix) > 40:
        raise ConfigError(key, f"{prefix!r}: letters, digits and '_' only (at most 40)")


def frame_rows(result: FrameResult) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """A frame's row (:data:`FRAME_COLUMNS`) and its detections' rows (:data:`DETECTION_COLUMNS`);
    attributes as JSON text."""
    f = result.frame
    d = result.detections
    n = len(d)
    frame = (f.source_id, f.frame_index, f.pts, f.pts_seconds, f"{f.time_base[0]}/{f.time_base[1]}",
             f.width, f.height, f.uri, n)
    if n == 0:
        return frame, []
    names = d.class_names
    k = len(names)
    ids = d.class_id.tolist()
    labels = [names[i] if 0 <= i < k else str(i) for i in ids]
    tids: list[Any] = [None] * n if d.track_id is None else d.track_id.tolist()
    attrs: list[Any] = ([None] * n if d.attributes is None
                        else [json.dumps(a, separators=(",", ":")) if a else None for a in d.attributes])
    src, fi = f.source_id, f.frame_index
    dets = [(src, fi, j, b[0], b[1], b[2], b[3], c, i, lab, t, a)
            for j, (b, c, i, lab, t, a) in enumerate(zip(d.xyxy.tolist(), d.confidence.tolist(), ids, labels,
                                                         tids, attrs, strict=True))]
    return frame, dets


def event_row(event: Event, index: int) -> tuple[Any, ...]:
    """An event's row (:data:`EVENT_COLUMNS`): its kind's own fields as JSON text in ``data``."""
    rec = event.to_record()
    data = {k: v for k, v in rec.items() if k not in _EVENT_TOP}
    return (event.source_id, event.frame_index, index, event.kind, event.pts, rec["pts_seconds"],
            event.track_id, event.class_name, json.dumps(data, separators=(",", ":")))


def summary_row(summary: SourceSummary) -> tuple[Any, ...]:
    """A source summary's row (:data:`SUMMARY_COLUMNS`): its stages' reports as JSON text."""
    return (summary.source, summary.frames, summary.detections, summary.stages_json())


# ---------------------------------------------------------------------------------------- SQLite
@dataclass(frozen=True)
class SqliteConfig:
    """``type: sqlite``: see the module docstring."""

    path: str = "fovea-out/detections.sqlite"
    append: bool = False
    table_prefix: str = "fovea_"
    writer: Literal["process", "inline"] = "process"

    def validate(self, key: str) -> None:
        if not self.path:
            raise ConfigError(f"{key}.path", "must not be empty")
        validate_prefix(self.table_prefix, f"{key}.table_prefix")


class SqliteSink:
    """Rows into a SQLite file, one transaction per batch (module docstring)."""

    def __init__(self, config: SqliteConfig) -> None:
        self.config = config
        self.path = Path(config.path).expanduser()
        self._db: sqlite3.Connection | None = None
        names = table_names(config.table_prefix)
        self._insert = {
            t: f'INSERT INTO "{names[t]}" VALUES ({", ".join("?" * len(cols))})'
            for t, cols in (("frames", FRAME_COLUMNS), ("detections", DETECTION_COLUMNS), ("events", EVENT_COLUMNS),
                            ("summaries", SUMMARY_COLUMNS))
        }
        self._counts = SourceCounts()

    def __enter__(self) -> SqliteSink:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.config.append:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise SinkError(f"cannot open {self.path}: {e}") from e
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for stmt in schema_sql(self.config.table_prefix, "sqlite"):
                db.execute(stmt)
        except sqlite3.Error as e:
            db.close()
            raise SinkError(f"{self.path}: cannot create the tables: {e}") from e
        self._db = db
        return self

    def write(self, results: Sequence[FrameResult]) -> None:
        db = self._db
        if db is None:
            raise SinkError(f"{self.path}: write() called outside 'with'")
        frames = []
        dets: list[tuple[Any, ...]] = []
        events = []
        for r in results:
            frame, rows = frame_rows(r)
            frames.append(frame)
            dets += rows
            events += [event_row(e, i) for i, e in enumerate(r.events)]
        self._insert_rows(db, [("frames", frames), ("detections", dets), ("events", events)])
        self._counts.add(results)

    def write_summary(self, summaries: Sequence[SourceSummary]) -> None:
        """A row per source in the summaries table (:mod:`streams.sinks.summaries`)."""
        if self._db is None:
            raise SinkError(f"{self.path}: write_summary() called outside 'with'")
        self._insert_rows(self._db, [("summaries", [summary_row(s) for s in self._counts.complete(summaries)])])

    def _insert_rows(self, db: sqlite3.Connection, tables: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """Insert the rows of each table in one transaction."""
        try:
            db.execute("BEGIN")
            for table, rows in tables:
                if rows:
                    db.executemany(self._insert[table], rows)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise SinkError(f"cannot write {self.path}: {e}") from e

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._db is not None:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                log.warning("%s: checkpoint failed: %s", self.path, e)
            self._db.close()
            self._db = None
            log.info("wrote %s", self.path)


@SINKS.register("sqlite", SqliteConfig)
def _sqlite(config: SqliteConfig) -> Sink:
    if config.writer == "process":
        return ProcessSink(PluginConfig("sqlite", config))
    return SqliteSink(config)
