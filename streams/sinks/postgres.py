"""PostgreSQL sink: rows into the tables of :mod:`streams.sinks.database` with ``psycopg`` 3.

Config (``sinks:`` entry; the delivery keys of :class:`~streams.sinks.delivery.DeliveryConfig`
apply too: ``path`` (the spool), ``spool_max_mb``, ``flush_timeout_s``, ...)::

    - type: postgres
      dsn: "postgresql://fovea@db.example:5432/analytics"   # no password in it
      password_env: FOVEA_PG_PASSWORD                        # or password_file: /run/secrets/pg
      table_prefix: fovea_                                   # fovea_frames, _detections, _events, _summaries

The tables (and their ``(source, frame_index)`` indexes) are created on first use; their
columns are in :mod:`streams.sinks.database`. A batch of records is written with ``COPY``
(one per table) in one transaction: it is in the database entirely or not at all, and leaves
the spool once the commit returned. A batch whose commit succeeded but whose answer was lost
(the connection dropped at that moment) is written again: ``SELECT DISTINCT`` on a table's
key columns (source, frame_index and det_index / event_index) removes such duplicates.
At the end of a job each source's summary is a row of ``fovea_summaries``
(:mod:`streams.sinks.summaries`).

Usage::

    parsed = SINKS.parse({"type": "postgres", "dsn": "postgresql://postgres@127.0.0.1/postgres"}, "sinks[0]")
    with SINKS.create(parsed) as sink:
        sink.write(results)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from streams.errors import ConfigError, SinkError
from streams.frames import FrameResult
from streams.sinks import SINKS, Sink
from streams.sinks.database import (
    DETECTION_COLUMNS,
    EVENT_COLUMNS,
    FRAME_COLUMNS,
    SUMMARY_COLUMNS,
    event_row,
    frame_rows,
    schema_sql,
    summary_row,
    table_names,
    validate_prefix,
)
from streams.sinks.delivery import DeliveryConfig, OutRecord, ReliableSink, TransportError, read_secret, with_writer
from streams.sinks.summaries import SourceSummary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PostgresConfig(DeliveryConfig):
    """``type: postgres``: see the module docstring."""

    path: str = "fovea-out/postgres-spool"
    dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    table_prefix: str = "fovea_"

    def validate(self, key: str) -> None:
        self.validate_delivery(key)
        validate_prefix(self.table_prefix, f"{key}.table_prefix")
        if not self.dsn.strip():
            raise ConfigError(f"{key}.dsn", "must not be empty")
        if _dsn_parts(self.dsn).get("password"):
            raise ConfigError(f"{key}.dsn", "must not hold a password: use password_env or password_file")


def _dsn_parts(dsn: str) -> dict[str, str]:
    """host, port, dbname, user and password of a URL or ``key=value`` connection string."""
    if dsn.startswith(("postgres://", "postgresql://")):
        try:
            u = urlsplit(dsn)
            port = u.port
        except ValueError:
            return {}
        out = {"host": u.hostname or "", "port": str(port or 5432), "dbname": u.path.lstrip("/"),
               "user": u.username or "", "password": u.password or ""}
        return {k: v for k, v in out.items() if v}
    parts = {}
    for item in dsn.split():
        k, sep, v = item.partition("=")
        if sep:
            parts[k.strip()] = v.strip().strip("'")
    return parts


_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_DET = "%s\t%d\t%d\t%r\t%r\t%r\t%r\t%r\t%d\t%s\t%s\t%s\n"


def _text(value: str | None) -> str:
    """A text field of COPY's text format (``\\N``: NULL)."""
    return "\\N" if value is None else value.translate(_ESCAPE)


def _number(value: float | int | None) -> str:
    return "\\N" if value is None else repr(value)


def copy_lines(result: FrameResult) -> bytes:
    """The frame's row, then its detections' rows, as lines of COPY's text format
    (the columns of :data:`~streams.sinks.database.FRAME_COLUMNS` and ``DETECTION_COLUMNS``)."""
    frame, dets = frame_rows(result)
    src = _text(frame[0])
    head = (f"{src}\t{frame[1]}\t{_number(frame[2])}\t{_number(frame[3])}\t{_text(frame[4])}\t{frame[5]}\t"
            f"{frame[6]}\t{_text(frame[7])}\t{frame[8]}\n")
    if not dets:
        return head.encode()
    labels = {lab: _text(lab) for lab in {d[9] for d in dets}}
    body = "".join([_DET % (src, d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], labels[d[9]],
                            "\\N" if d[10] is None else d[10], _text(d[11])) for d in dets])
    return (head + body).encode()


def postgres_records(results: Sequence[FrameResult]) -> list[OutRecord]:
    """A frame's record: its row and its detections' rows (:func:`copy_lines`); an event's: its row."""
    out: list[OutRecord] = []
    for r in results:
        f = r.frame
        out.append(OutRecord("detections", f.source_id, f.frame_index, 0, copy_lines(r)))
        for i, e in enumerate(r.events):
            row = event_row(e, i)
            line = (f"{_text(row[0])}\t{row[1]}\t{row[2]}\t{_text(row[3])}\t{_number(row[4])}\t"
                    f"{_number(row[5])}\t{row[6]}\t{_text(row[7])}\t{_text(row[8])}\n")
            out.append(OutRecord("events", f.source_id, f.frame_index, i, line.encode(), e.kind))
    return out


def summary_line(summary: SourceSummary) -> bytes:
    """A source summary's row (:data:`~streams.sinks.database.SUMMARY_COLUMNS`) in COPY's text format."""
    row = summary_row(summary)
    return f"{_text(row[0])}\t{row[1]}\t{row[2]}\t{_text(row[3])}\n".encode()


class _PostgresTransport:
    """One connection; a batch is a COPY per table in one transaction."""

    def __init__(self, config: PostgresConfig, where: str) -> None:
        self.config = config
        self.where = where
        self._conn: Any = None
        names = table_names(config.table_prefix)
        cols = {"frames": FRAME_COLUMNS, "detections": DETECTION_COLUMNS, "events": EVENT_COLUMNS,
                "summaries": SUMMARY_COLUMNS}
        self._copy = {t: f'COPY "{names[t]}" ({", ".join(cols[t])}) FROM STDIN' for t in names}

    def __enter__(self) -> _PostgresTransport:
        try:
            import psycopg
        except ImportError as e:
            raise SinkError("the postgres sink needs psycopg 3: pip install 'fovea[postgres]'") from e
        timeout = max(1, round(self.config.send_timeout_s))
        try:
            self._conn = psycopg.connect(self.config.dsn, password=read_secret(self.config), connect_timeout=timeout,
                                         application_name="fovea")
            with self._conn.transaction():
                self._conn.execute(f"SET statement_timeout = {timeout * 1000}")
                for stmt in schema_sql(self.config.table_prefix, "postgres"):
                    self._conn.execute(stmt)
        except psycopg.Error as e:  # libpq's messages name the server, never the password
            self._close()
            raise TransportError(f"{type(e).__name__}: {str(e).strip()}") from None
        return self

    def send(self, records: Sequence[OutRecord], timeout: float) -> int:
        import psycopg

        frames: list[bytes] = []
        dets: list[bytes] = []
        events: list[bytes] = []
        summaries: list[bytes] = []
        for r in records:
            if r.kind == "events":
                events.append(r.payload)
            elif r.kind == "summary":
                summaries.append(r.payload)
            else:
                end = r.payload.index(b"\n") + 1
                frames.append(r.payload[:end])
                dets.append(r.payload[end:])
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                for table, lines in (("frames", frames), ("detections", dets), ("events", events),
                                     ("summaries", summaries)):
                    data = b"".join(lines)
                    if data:
                        with cur.copy(self._copy[table]) as copy:
                            copy.write(data)
        except psycopg.Error as e:
            raise TransportError(f"{type(e).__name__}: {str(e).strip()}") from None
        return len(records)

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception as e:  # closing must not raise
                log.debug("%s: close: %s", self.where, e)
            self._conn = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close()


def postgres_sink(config: PostgresConfig) -> ReliableSink:
    """The sink for ``config``: rows through the spool to PostgreSQL."""
    p = _dsn_parts(config.dsn)
    where = f"postgresql://{p.get('host', 'localhost')}:{p.get('port', '5432')}/{p.get('dbname', '')}"
    return ReliableSink(config, "postgres", where, postgres_records, lambda: _PostgresTransport(config, where),
                        summary_line)


@SINKS.register("postgres", PostgresConfig)
def _postgres(config: PostgresConfig) -> Sink:
    return with_writer("postgres", config, lambda: postgres_sink(config))
