"""The delivery contract of every network sink (Kafka, Redis Streams, PostgreSQL, MQTT).

**At least once.** Each record carries an idempotency key, ``source|frame_index|kind|index``
(:attr:`OutRecord.key`), so a consumer drops the duplicates that a retry after a lost
acknowledgement delivers. ``write`` appends the batch's records to an on-disk spool
(:class:`~streams.sinks.spool.Spool`, a write-ahead log in the sink's ``path``) and
returns: it never waits for the broker. A delivery thread sends the spool's oldest records
and removes them only once the broker acknowledged them, so records keep their order, and
while the broker is unreachable they stay in the spool and are sent, in order, when it
comes back (reconnecting with capped exponential delays, ``retry_min_s`` ..
``retry_max_s``). The spool is bounded (``spool_max_mb``): only when it is full are the
oldest records dropped, counted and reported.

**Never blocks beyond a bound, never crashes on a broker.** A broker that refuses, hangs or
disappears only ever affects the delivery thread (every client call has a timeout). Leaving
the ``with`` block waits at most ``flush_timeout_s`` for the spool to drain; what is still
there then stays on disk and :meth:`ReliableSink.__exit__` raises
:class:`~streams.errors.SinkError` saying how many records are undelivered (and dropped)
and where the spool is, so the job exits non-zero; the next job with the same spool sends
them first.

**Health.** :meth:`ReliableSink.health` gives :class:`~streams.sinks.health.DeliveryHealth`:
connected, records delivered, spool depth and bytes, dropped, re-sent (an upper bound on the
duplicates), disconnects, the last error (the sink is
:class:`~streams.sinks.health.HealthReporting`; with ``writer: process`` the sink's process
passes it back). Errors and ``where`` never contain a password: credentials come from an
environment variable (``password_env``) or a file (``password_file``), read when the sink
opens (:func:`read_secret`).

**Summaries.** :meth:`ReliableSink.write_summary` (the sink is
:class:`~streams.sinks.summaries.SummaryAware`) spools one record of kind ``summary`` per
source at the end of a job (key ``source|-1|summary|0``), after the source's frames.

A sink plugs in three pieces: an encoder (``results -> list[OutRecord]``), a transport
factory (``() -> Transport``: one connection, a context manager whose ``send`` delivers a
batch and says how many of its leading records were acknowledged) and, when it delivers
summaries, their encoder (``SourceSummary -> bytes``).

Usage::

    sink = ReliableSink(config, "kafka", "kafka://127.0.0.1:9092", encode, connect)
    with sink:
        sink.write(results)
    sink.health().spooled      # 0 after a clean exit
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol

from streams.errors import ConfigError, SinkError
from streams.frames import FrameResult
from streams.registry import PluginConfig
from streams.sinks import Sink
from streams.sinks.health import DeliveryHealth
from streams.sinks.process import ProcessSink
from streams.sinks.records import event_json, frame_json
from streams.sinks.spool import OutRecord, Spool
from streams.sinks.summaries import SourceCounts, SourceSummary

log = logging.getLogger(__name__)

_GRACE_S = 1.0  # how long past flush_timeout_s closing waits for a client call in progress

__all__ = ["DeliveryConfig", "DeliveryHealth", "OutRecord", "ReliableSink", "Transport", "TransportError",
           "json_records", "read_secret", "with_writer"]


class TransportError(SinkError):
    """A broker cannot take records now (unreachable, refused, timed out): the records stay in
    the spool and are retried. Raised by transports, handled by :class:`ReliableSink`."""


@dataclass(frozen=True)
class DeliveryConfig:
    """The keys every network sink shares (see the module docstring).

    ``path``: the spool folder (relative to the config's folder, like every sink's path;
    ``fovea run --out DIR`` puts it in DIR); each network sink needs its own. ``writer``:
    ``process`` (the default) runs the sink (encoding, spool, delivery thread) in a process
    of its own (:class:`~streams.sinks.process.ProcessSink`, as the JSONL sink does), off the
    job's GIL, which passes the sink's health back; ``inline`` in the job's process.
    """

    path: str = "fovea-out/spool"
    writer: Literal["process", "inline"] = "process"
    spool_max_mb: float = 256.0
    flush_timeout_s: float = 10.0
    send_timeout_s: float = 10.0
    retry_min_s: float = 0.5
    retry_max_s: float = 10.0
    batch_records: int = 2000
    password_env: str | None = None
    password_file: str | None = None

    def validate_delivery(self, key: str) -> None:
        """The shared keys' checks; each sink's ``validate`` calls it."""
        if not self.path:
            raise ConfigError(f"{key}.path", "the spool folder must not be empty")
        if not self.spool_max_mb > 0:
            raise ConfigError(f"{key}.spool_max_mb", f"expected > 0, got {self.spool_max_mb}")
        for name in ("flush_timeout_s", "send_timeout_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{key}.{name}", f"expected >= 0, got {getattr(self, name)}")
        if not 0 < self.retry_min_s <= self.retry_max_s:
            raise ConfigError(f"{key}.retry_min_s", "expected 0 < retry_min_s <= retry_max_s, got "
                                                    f"{self.retry_min_s} and {self.retry_max_s}")
        if self.batch_records < 1:
            raise ConfigError(f"{key}.batch_records", f"expected >= 1, got {self.batch_records}")
        if self.password_env is not None and self.password_file is not None:
            raise ConfigError(f"{key}.password_env", "give password_env or password_file, not both")
        if self.password_env is not None and not os.environ.get(self.password_env):
            raise ConfigError(f"{key}.password_env", f"the environment variable {self.password_env} is not set")
        if self.password_file is not None and not os.access(Path(self.password_file).expanduser(), os.R_OK):
            raise ConfigError(f"{key}.password_file", f"{self.password_file} does not exist or is not readable")


def with_writer(sink_type: str, config: DeliveryConfig, make: Callable[[], ReliableSink]) -> Sink:
    """The sink a network plugin's factory returns: ``make()`` itself with ``writer: inline``,
    else a :class:`~streams.sinks.process.ProcessSink` running it (built there with ``inline``)."""
    if config.writer == "process":
        return ProcessSink(PluginConfig(sink_type, config))
    return make()


def read_secret(config: DeliveryConfig) -> str | None:
    """The password named by ``password_env`` or ``password_file`` (its first line), or ``None``."""
    if config.password_env is not None:
        value = os.environ.get(config.password_env)
        if not value:
            raise SinkError(f"the environment variable {config.password_env} (password_env) is not set")
        return value
    if config.password_file is not None:
        try:
            text = Path(config.password_file).expanduser().read_text(encoding="utf-8")
        except OSError as e:
            raise SinkError(f"cannot read password_file {config.password_file}: {e.strerror or e}") from e
        return text.splitlines()[0] if text else ""
    return None


def json_records(results: Sequence[FrameResult]) -> list[OutRecord]:
    """Each frame's JSON record (:func:`~streams.sinks.records.frame_json`), then one per event
    (:func:`~streams.sinks.records.event_json`, ``subject``: the event's kind)."""
    out: list[OutRecord] = []
    for r in results:
        f = r.frame
        out.append(OutRecord("detections", f.source_id, f.frame_index, 0, frame_json(r).encode()))
        for i, e in enumerate(r.events):
            out.append(OutRecord("events", f.source_id, f.frame_index, i, event_json(e).encode(), e.kind))
    return out


class Transport(Protocol):
    """One connection to a broker. ``__enter__`` connects (:class:`TransportError` when it
    cannot); ``send`` is the hot path; ``__exit__`` disconnects and must not raise."""

    def __enter__(self) -> Transport: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def send(self, records: Sequence[OutRecord], timeout: float) -> int:
        """Deliver ``records`` in order within about ``timeout`` seconds; return how many of the
        leading ones the broker acknowledged. Raise :class:`TransportError` when none could be
        delivered because of the broker or the connection."""
        ...


class ReliableSink:
    """A :class:`~streams.sinks.Sink` that delivers through a spool and a delivery thread (module docstring).

    ``encode_summary``: a summary record's payload; ``None``: the sink delivers no summaries.
    """

    def __init__(self, config: DeliveryConfig, sink_type: str, where: str,
                 encode: Callable[[Sequence[FrameResult]], list[OutRecord]],
                 connect: Callable[[], Transport],
                 encode_summary: Callable[[SourceSummary], bytes] | None = None) -> None:
        self.config = config
        self.sink_type = sink_type
        self.where = where
        self._encode = encode
        self._connect = connect
        self._encode_summary = encode_summary
        self._counts = SourceCounts()
        self.spool = Spool(Path(config.path), max_bytes=max(1, int(config.spool_max_mb * (1 << 20))))
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._deadline = 0.0
        self._open = False
        self._connected = False
        self._delivered = 0
        self._resent = 0
        self._disconnects = 0
        self._sent_upto = 0  # records below this sequence number were sent at least once
        self._last_error: str | None = None
        self._logged_outage = False
        self._closing_started = threading.Event()  # ends a reconnect delay when the job closes the sink
        self._gave_up = threading.Event()  # the job stopped waiting: no more reconnect tries

    # ------------------------------------------------------------------ health
    def health(self) -> DeliveryHealth:
        """The sink's state now (also after it closed: then what it left)."""
        with self._cond:
            return self._health_locked()

    def _health_locked(self) -> DeliveryHealth:
        return DeliveryHealth(self.sink_type, self.where, str(self.spool.folder), self._connected,
                              self._delivered, self.spool.depth, self.spool.size_bytes, self.spool.dropped,
                              self._resent, self._disconnects, self._last_error)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ReliableSink:
        self.spool.open()
        self._sent_upto = self.spool.tail  # an earlier job's leftovers may have been sent once
        if self.spool.depth:
            log.warning("%s: %d undelivered record(s) from an earlier job in %s: they are sent first",
                        self.where, self.spool.depth, self.spool.folder)
        self._open = True
        self._thread = threading.Thread(target=self._run, name=f"{self.sink_type}-delivery", daemon=True)
        self._thread.start()
        return self

    def write(self, results: Sequence[FrameResult]) -> None:
        """Append the records of ``results`` to the spool; the delivery thread sends them."""
        if not self._open:
            raise SinkError(f"{self.where}: write() called outside 'with'")
        records = self._encode(results)
        self._counts.add(results)
        self._append(records)

    def write_summary(self, summaries: Sequence[SourceSummary]) -> None:
        """Spool a ``summary`` record per source (:meth:`SourceCounts.complete
        <streams.sinks.summaries.SourceCounts.complete>`); nothing without ``encode_summary``."""
        if not self._open:
            raise SinkError(f"{self.where}: write_summary() called outside 'with'")
        if self._encode_summary is None:
            return
        encode = self._encode_summary
        self._append([OutRecord("summary", s.source, -1, 0, encode(s)) for s in self._counts.complete(summaries)])

    def _append(self, records: list[OutRecord]) -> None:
        if not records:
            return
        with self._cond:
            self.spool.append(records)
            self._cond.notify_all()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._open:
            return
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + self.config.flush_timeout_s
            self._cond.notify_all()
        self._closing_started.set()
        assert self._thread is not None
        # a send in progress is bounded by the deadline; a connect by its client's timeout: the
        # job waits for neither beyond the grace second (the spool keeps what was not acknowledged)
        self._thread.join(self.config.flush_timeout_s + _GRACE_S)
        self._gave_up.set()
        with self._cond:
            self._open = False
            h = self._health_locked()
            self.spool.close()
            self._cond.notify_all()
        log.info("%s: closed: %d record(s) delivered, %d in the spool, %d dropped, %d re-sent",
                 self.where, h.delivered, h.spooled, h.dropped, h.resent)
        if h.spooled or h.dropped:
            parts = []
            if h.spooled:
                parts.append(f"{h.spooled} record(s) not delivered within flush_timeout_s="
                             f"{self.config.flush_timeout_s:g} s are in the spool {h.spool} (a job with this "
                             "sink sends them first)")
            if h.dropped:
                parts.append(f"{h.dropped} record(s) were dropped at the spool's limit (spool_max_mb="
                             f"{self.config.spool_max_mb:g})")
            reason = f" (last error: {h.last_error})" if h.last_error else ""
            message = f"{self.where}: " + "; ".join(parts) + reason
            if exc_type is None:
                raise SinkError(message)
            log.error("%s", message)

    # ------------------------------------------------------------------ delivery thread
    def _run(self) -> None:
        delay = self.config.retry_min_s
        while True:
            try:
                with self._connect() as transport:
                    self._on_connected()
                    delay = self.config.retry_min_s
                    self._deliver(transport)
                    return
            except TransportError as e:
                self._on_failure(str(e))
            except Exception as e:  # a client's unexpected error must not end delivery: logged, retried
                if not self._logged_outage:  # its traceback once an outage
                    log.exception("%s: unexpected error in the delivery thread", self.where)
                self._on_failure(f"{type(e).__name__}: {e}")
            with self._cond:
                if not self._open or self._finished():
                    return
                closing = self._closing
                wait = delay if not closing else min(delay, max(0.0, self._deadline - time.monotonic()))
            (self._gave_up if closing else self._closing_started).wait(wait)
            delay = min(delay * 2, self.config.retry_max_s)

    def _finished(self) -> bool:
        """Closing, and the spool is empty or the deadline passed (call with the lock held)."""
        return self._closing and (self.spool.depth == 0 or time.monotonic() >= self._deadline)

    def _on_connected(self) -> None:
        with self._cond:
            self._connected = True
            pending = self.spool.depth
        if self._logged_outage:
            log.warning("%s: connected again; sending the %d spooled record(s)", self.where, pending)
            self._logged_outage = False
        else:
            log.info("%s: connected", self.where)

    def _on_failure(self, reason: str) -> None:
        with self._cond:
            if self._connected:
                self._disconnects += 1
            self._connected = False
            self._last_error = reason
            pending = self.spool.depth
        if not self._logged_outage:
            log.warning("%s: cannot deliver (%s); %d record(s) kept in the spool %s, retrying every %g..%g s",
                        self.where, reason, pending, self.spool.folder, self.config.retry_min_s,
                        self.config.retry_max_s)
            self._logged_outage = True
        else:
            log.debug("%s: still cannot deliver: %s", self.where, reason)

    def _deliver(self, transport: Transport) -> None:
        """Send the spool's head until closing ends it; raises :class:`TransportError` on trouble."""
        while True:
            with self._cond:
                while self._open and self.spool.depth == 0 and not self._closing:
                    self._cond.wait(0.5)
                if not self._open or self._finished():
                    return
                first, batch = self.spool.peek(self.config.batch_records)
                again = max(0, min(self._sent_upto, first + len(batch)) - first)
                self._resent += again
                self._sent_upto = max(self._sent_upto, first + len(batch))
                timeout = self.config.send_timeout_s
                if self._closing:
                    timeout = min(timeout, max(0.0, self._deadline - time.monotonic()))
            done = transport.send(batch, timeout)
            with self._cond:
                if not self._open:
                    return  # closed meanwhile (the job gave up waiting): the spool keeps them
                if done:
                    self.spool.commit(first, done)
                    self._delivered += done
                    self._last_error = None
                self._cond.notify_all()
            if done < len(batch):
                raise TransportError(f"{len(batch) - done} of {len(batch)} record(s) not acknowledged in time")
