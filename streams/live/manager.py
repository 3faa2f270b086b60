"""The live-stream manager: owns the RTSP sources, the batcher, the metrics and the
optional HTTP server; streams can be added and removed at runtime.

Threads: one reader per stream (:class:`~streams.live.rtsp.RtspSource`), one monitor
(periodic summary log line), the HTTP server's; the consumer (the runner) calls
:meth:`StreamManager.next_batch` from its own thread.

Usage (what a runner does)::

    live = parse_live_config(job.extra.get("live"))
    with StreamManager(live) as mgr:                       # start(): monitor + HTTP
        for i, src in enumerate(job.sources):
            mgr.add_stream(StreamSpec.from_source(src, i))
        while not stopping:
            batch = mgr.next_batch(job.engine.batch_size)  # LiveFrame or GopBuffer items
            ... infer, postprocess, sinks.write(results) ...
            for r in results:
                mgr.record_emitted(r.frame)                # latency + frames_out
            for sid, indices in mgr.take_dropped().items():  # frames that will never come
                reorder.skip(sid, indices)
    # __exit__ -> stop(timeout): every source closed within a bounded time

Per stream, every frame index from 0 (or the stream's ``first_frame_index``) up is either
handed out by :meth:`StreamManager.next_batch` or reported once by
:meth:`StreamManager.take_dropped` (see :mod:`streams.live.types`).
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry

from streams.errors import ConfigError, SourceError
from streams.frames import FrameMeta
from streams.live.batcher import Batcher
from streams.live.config import LiveConfig, OutputMode, resolve_output_mode
from streams.live.drops import DropLog
from streams.live.health import health_report, summary_line
from streams.live.http import LiveHttpServer
from streams.live.metrics import LiveMetrics
from streams.live.rtsp import RtspSource
from streams.live.types import (
    FRAME_INDEX_LIMIT,
    DecoderFactory,
    LiveItem,
    LiveSource,
    SourceFactory,
    StreamSpec,
    StreamStats,
    renumbered,
)

log = logging.getLogger(__name__)


class StreamManager:
    """Owns live sources, their queues, metrics and HTTP endpoints. Thread-safe.

    Args:
        config: the ``live:`` section (defaults if ``None``).
        mode: ``"frames"`` (CPU-decoded RGB frames), ``"packets"`` (a GPU decoder per stream,
            made by ``decoder_factory``) or ``"gop"`` (GOP buffers for DALI); ``None`` resolves
            ``config.decode`` (see :func:`resolve_output_mode`).
        registry: the Prometheus registry to use (a fresh one if ``None``).
        rng: random source of the reconnect jitter (tests pass a seeded one).
        decoder_factory: the per-stream packet decoder of mode ``"packets"`` (in-process readers).
        source_factory: makes each stream's source instead of an in-process
            :class:`RtspSource` (e.g. readers in ingest processes, :mod:`pipelines.ingest`).
    """

    def __init__(
        self,
        config: LiveConfig | None = None,
        *,
        mode: OutputMode | None = None,
        registry: CollectorRegistry | None = None,
        rng: random.Random | None = None,
        decoder_factory: DecoderFactory | None = None,
        source_factory: SourceFactory | None = None,
    ) -> None:
        self.config = config or LiveConfig()
        self.mode: OutputMode = mode or resolve_output_mode(self.config.decode)
        if self.mode == "packets" and decoder_factory is None and source_factory is None:
            raise ValueError("mode 'packets' (GPU decode per stream) needs a decoder_factory")
        self._decoder_factory = decoder_factory
        self._source_factory = source_factory
        b = self.config.batch
        self._drops = DropLog()
        self.batcher: Batcher[LiveItem] = Batcher(b.queue_size, b.policy, on_drop=self._drops.add_item)
        self.metrics = LiveMetrics(registry if registry is not None else CollectorRegistry())
        self.metrics.bind(self.streams)
        self.http: LiveHttpServer | None = None
        self._rng = rng
        self._lock = threading.RLock()
        self._sources: dict[str, LiveSource] = {}
        self._retired: list[LiveSource] = []  # removed, thread not ended yet
        self._removed: set[str] = set()  # ids removed in this job: not reused (frame indices restart)
        self._removed_untold: list[str] = []  # removed since the last take_removed()
        self._first: dict[str, int] = {}  # stream id -> its first frame index, where not 0 (kept once removed)
        self._stop = threading.Event()
        self._started = False
        self._monitor: threading.Thread | None = None

    # --------------------------------------------------------------- life cycle
    def start(self) -> StreamManager:
        """Start the monitor thread and, if ``config.http.enabled``, the HTTP server."""
        with self._lock:
            if self._started:
                return self
            if self._stop.is_set():
                raise SourceError("live", "the stream manager was stopped; make a new one")
            self._started = True
        if self.config.http.enabled:
            self.http = LiveHttpServer.from_config(self, self.config.http).start()
        if self.config.log_interval_s > 0:
            self._monitor = threading.Thread(target=self._monitor_loop, name="live-monitor",
                                             daemon=True)
            self._monitor.start()
        return self

    def __enter__(self) -> StreamManager:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the HTTP server, every source and the batcher; wait at most ``timeout``
        seconds for the reader threads (default: the longest a blocked read or open can
        take, ``max(watchdog.stall_s, watchdog.open_timeout_s) + 1``).

        Returns ``True`` when every thread ended in time. Threads still blocked in a read
        are daemons; they end on their own once their read or open times out.
        Queued items stay readable through :meth:`next_batch`.
        """
        if timeout is None:
            wd = self.config.watchdog
            timeout = max(wd.stall_s, wd.open_timeout_s) + 1.0
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self.http is not None:
            self.http.stop()
            self.http = None
        with self._lock:
            sources = list(self._sources.values()) + self._retired
        for s in sources:
            s.stop()
        self.batcher.close()
        alive = [s.id for s in sources if not s.join(max(0.0, deadline - time.monotonic()))]
        if self._monitor is not None:
            self._monitor.join(max(0.0, deadline - time.monotonic()))
        if alive:
            log.warning("live: %d reader thread(s) still blocked after %.1f s: %s",
                        len(alive), timeout, ", ".join(alive))
        else:
            log.info("live: all %d stream(s) stopped", len(sources))
        return not alive

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry of the live metrics (what ``GET /metrics`` serves)."""
        return self.metrics.registry

    # ------------------------------------------------------------------ streams
    def add_stream(self, spec: StreamSpec, first_frame_index: int = 0) -> StreamStats:
        """Start reading ``spec``; other streams are not disturbed.

        ``first_frame_index``: the stream's frames are numbered from it instead of 0 (a
        camera restarted on another Ray worker, :mod:`pipelines.ray_live`); its source still
        numbers from 0 and the manager shifts what it hands out and reports.

        Raises :class:`~streams.errors.ConfigError` for a bad spec or first index and
        :class:`~streams.errors.SourceError` when the id is taken or the manager stopped.
        """
        spec.validate("stream")
        if not 0 <= first_frame_index < FRAME_INDEX_LIMIT:
            raise ConfigError("first_frame_index", f"expected 0 <= first_frame_index < 2**53, got {first_frame_index}")
        with self._lock:
            if self._stop.is_set():
                raise SourceError(spec.id, "the stream manager is stopped")
            if spec.id in self._sources:
                raise SourceError(spec.id, "a stream with this id already exists")
            if spec.id in self._removed:
                raise SourceError(spec.id, "a stream with this id was removed earlier in this job; ids are not "
                                           "reused within a job (its frame indices and tracks would mix): "
                                           "add it under a new id")
            queue = self.batcher.add_stream(spec.id)
            emit: Callable[[LiveItem], bool] = queue.put
            if first_frame_index:
                self._first[spec.id] = first_frame_index
                emit = functools.partial(_emit_renumbered, queue.put, first_frame_index)
            source: LiveSource
            if self._source_factory is not None:
                source = self._source_factory(spec, emit)
            else:
                source = RtspSource(spec, emit, mode=self.mode, config=self.config, rng=self._rng,
                                    decoder_factory=self._decoder_factory)
            self._sources[spec.id] = source
            source.start()
        log.info("live: added stream %s (%s, %s, %s%s)", spec.id, source.display_uri, spec.transport, self.mode,
                 f", frames from {first_frame_index}" if first_frame_index else "")
        return source.stats()

    def add_sources(self, entries: Iterable[Any]) -> list[StreamStats]:
        """Add every ``sources:`` entry that has a ``uri`` (see :meth:`StreamSpec.from_source`)."""
        return [
            self.add_stream(StreamSpec.from_source(e, i))
            for i, e in enumerate(entries)
            if getattr(e, "uri", None)
        ]

    def remove_stream(self, stream_id: str, timeout: float = 2.0) -> bool:
        """Stop and forget a stream (its queued items are dropped). ``False`` if unknown.

        Waits up to ``timeout`` s for its thread; a thread blocked in a read is left to
        end on its own (bounded by ``watchdog.stall_s``) and cannot emit any more.
        """
        with self._lock:
            source = self._sources.pop(stream_id, None)
            if source is None:
                return False
            source.stop()
            queue = self.batcher.remove_stream(stream_id)
            self.metrics.forget(stream_id)
            self._drops.forget(stream_id)
            self._removed.add(stream_id)
            self._removed_untold.append(stream_id)
        ended = source.join(timeout)
        with self._lock:  # (pruned here too: the monitor that also prunes them may be off)
            self._retired = [s for s in self._retired if s.alive] + ([] if ended else [source])
        final = _with_queue(source.stats(), queue)
        log.info("live: removed stream %s (%d frames read, %d dropped, %d discarded from its queue)",
                 stream_id, final.frames, final.dropped, final.queued)
        return True

    def source(self, stream_id: str) -> LiveSource | None:
        """The source object of a stream (for its state history), or ``None``."""
        with self._lock:
            return self._sources.get(stream_id)

    def first_frame_index(self, stream_id: str) -> int:
        """The index a stream's frames start at (0 unless added with another; also once removed)."""
        with self._lock:
            return self._first.get(stream_id, 0)

    def stream_ids(self) -> list[str]:
        with self._lock:
            return list(self._sources)

    def stats(self, stream_id: str) -> StreamStats | None:
        """One stream's snapshot (with its queue counters), or ``None``."""
        source = self.source(stream_id)
        if source is None:
            return None
        return _with_queue(source.stats(), self.batcher.stats().get(stream_id))

    def streams(self) -> list[StreamStats]:
        """Snapshots of every stream, in the order they were added."""
        with self._lock:
            sources = list(self._sources.values())
        queues = self.batcher.stats()
        return [_with_queue(source.stats(), queues.get(source.id)) for source in sources]

    # ----------------------------------------------------------------- consumer
    def next_batch(self, max_batch: int, max_wait_s: float | None = None) -> list[LiveItem]:
        """Up to ``max_batch`` items from all streams, round-robin; waits at most
        ``max_wait_s`` (default ``live.batch.max_wait_ms``). See :class:`Batcher`."""
        if max_wait_s is None:
            max_wait_s = self.config.batch.max_wait_s
        return self.batcher.next_batch(max_batch, max_wait_s)

    def take_removed(self) -> list[str]:
        """Ids of the streams removed since the last call (the job ends them in its stages)."""
        with self._lock:
            out, self._removed_untold = self._removed_untold, []
        return out

    def take_dropped(self) -> dict[str, list[int]]:
        """Frame indices dropped since the last call, per stream id, ascending; cleared on
        read (thread-safe). Streams with none are left out.

        Covers the queue's ``drop_oldest`` drops (for a GOP buffer, all its frames), frames
        an ingest process dropped from its outbox, and frames reported with
        :meth:`record_skipped`. The ``dropped`` counters of :meth:`streams` are unchanged:
        they count queue drops per item (a GOP buffer is one) plus an ingest process's drops,
        including NVDEC pictures it had no ring slot for (those were never numbered, so they
        are not gaps); skipped frames are not counted there.
        """
        with self._lock:
            sources = list(self._sources.values())
            dropped = self._drops.take()
            for source in sources:
                more = source.take_dropped()
                first = self._first.get(source.id, 0)
                if more and first:
                    more = [i + first for i in more]
                if more:
                    dropped[source.id] = sorted(dropped.get(source.id, []) + more)
        return dropped

    def record_skipped(self, metas: Iterable[FrameMeta]) -> None:
        """Frames the consumer took but will not emit (a batch that failed to decode):
        :meth:`take_dropped` reports them with the drops, so a per-source stage hears of
        every missing frame in one place. Frames of removed streams are ignored."""
        by_stream: dict[str, list[int]] = {}
        for m in metas:
            by_stream.setdefault(m.source_id, []).append(m.frame_index)
        with self._lock:
            for sid, indices in by_stream.items():
                if sid in self._sources:
                    self._drops.add(sid, indices)

    def record_emitted(self, meta: FrameMeta | Sequence[FrameMeta]) -> None:
        """Tell the metrics that these frames' detections were emitted (latency, count).

        Frames of streams removed meanwhile (still in the runner's hands) are ignored, so
        a removed stream's series do not come back.
        """
        now = time.time()
        metas = (meta,) if isinstance(meta, FrameMeta) else meta
        by_stream: dict[str, list[FrameMeta]] = {}
        for m in metas:
            by_stream.setdefault(m.source_id, []).append(m)
        with self._lock:  # held while recording: a stream removed meanwhile would get its series back
            for sid, ms in by_stream.items():
                if sid in self._sources:
                    self.metrics.record_emitted_many(sid, ms, now)

    # ------------------------------------------------------------------- health
    def health(self) -> tuple[int, dict[str, Any]]:
        """``(http_status, payload)`` of ``/health`` (:func:`~streams.live.health.health_report`)."""
        return health_report(self.streams(), self.mode)

    def summary_line(self) -> str:
        """One line describing every stream (what the monitor logs)."""
        return summary_line(self.streams())

    def _monitor_loop(self) -> None:
        interval = self.config.log_interval_s
        while not self._stop.wait(interval):
            log.info("live: %s", self.summary_line())
            with self._lock:
                self._retired = [s for s in self._retired if s.alive]


def _emit_renumbered(put: Callable[[LiveItem], bool], offset: int, item: LiveItem) -> bool:
    """A source's ``emit`` for a stream numbered from ``offset`` (:meth:`StreamManager.add_stream`)."""
    return put(renumbered(item, offset))


def _with_queue(s: StreamStats, q: Any) -> StreamStats:
    """A source's snapshot with its queue's depth and drops (plus the drops of its ingest)."""
    if q is None:
        return replace(s, dropped=s.ingest_dropped)
    return replace(s, queued=q.depth, dropped=q.dropped + s.ingest_dropped)
