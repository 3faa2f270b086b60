"""Prometheus metrics of live streams, on an explicit (non-global) ``CollectorRegistry``.

Per-stream counters and gauges are read from the sources' statistics at scrape time (a
custom collector: no double bookkeeping, and a removed stream's series disappear). What
only the runner knows is pushed: :meth:`LiveMetrics.record_emitted` counts a frame whose
detections were emitted and observes its latency, packet arrival -> emitted.

Series (label ``stream`` = stream id; URIs appear only redacted, in ``fovea_live_stream_info``)::

    fovea_live_stream_info{stream,uri,transport,mode} 1
    fovea_live_stream_state{stream,state}             1 for the current state, else 0
    fovea_live_frames_in_total / _packets_total / _bytes_total
    fovea_live_frames_out_total                       frames emitted by the runner
    fovea_live_dropped_total                          items dropped by a full queue
    fovea_live_reconnects_total / _stalls_total / _decode_errors_total
    fovea_live_faults_total / _quarantines_total      content faults, quarantines
    fovea_live_fps / _queue_depth / _last_packet_age_seconds
    fovea_live_latency_seconds (histogram)            arrival -> detections emitted

With an ``analytics:`` section, :class:`AnalyticsMetrics` counts the analytics stage's
events (it is the stage's listener: ``record_events``; streams does not import pipelines)::

    fovea_live_line_crossings_total{stream,line,direction,class}   direction: in | out
    fovea_live_zone_events_total{stream,zone,kind,class}           kind: enter | exit
    fovea_live_zone_occupancy{stream,zone,class}                   tracks in the zone now

Usage::

    registry = CollectorRegistry()
    metrics = LiveMetrics(registry)
    metrics.bind(manager.streams)              # done by StreamManager
    metrics.record_emitted(frame_meta)         # by the runner, after its sinks wrote
    generate_latest(registry)                  # what GET /metrics serves
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from streams.events import Event
from streams.frames import FrameMeta
from streams.live.types import StreamState, StreamStats
from streams.sinks.health import DeliveryHealth

NAMESPACE = "fovea_live"
# live latency spans a few ms (CPU decode) to seconds (GOP buffers: >= one keyframe interval)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)

_COUNTERS = (
    ("frames_in", "frames", "Frames produced by the source (decoded or packed into GOPs)."),
    ("packets", "packets", "Packets demuxed from the stream."),
    ("bytes", "bytes", "Encoded bytes received."),
    ("dropped", "dropped", "Items (frames or GOP buffers) dropped by the full-queue policy."),
    ("reconnects", "reconnects", "Reconnection attempts."),
    ("stalls", "stalls", "Sessions ended by the stall watchdog."),
    ("decode_errors", "decode_errors", "Packets the decoder rejected."),
    ("faults", "faults", "Sessions ended by a content fault (nothing decodable, format change)."),
    ("quarantines", "quarantines", "Times the stream was quarantined after repeated faults."),
)


class _StreamsCollector:
    """Yields the per-stream series from a snapshot callable at scrape time."""

    def __init__(self) -> None:
        self.snapshot: Callable[[], Sequence[StreamStats]] = lambda: ()

    def describe(self) -> list[Metric]:
        return []  # dynamic series: nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        stats = list(self.snapshot())
        info = GaugeMetricFamily(
            f"{NAMESPACE}_stream_info", "Stream identity (URI redacted).",
            labels=["stream", "uri", "transport", "mode"],
        )
        state = GaugeMetricFamily(
            f"{NAMESPACE}_stream_state", "1 for the stream's current state.",
            labels=["stream", "state"],
        )
        counters = {
            name: CounterMetricFamily(f"{NAMESPACE}_{name}", doc, labels=["stream"])
            for name, _, doc in _COUNTERS
        }
        fps = GaugeMetricFamily(f"{NAMESPACE}_fps", "Frames per second, last seconds.",
                                labels=["stream"])
        depth = GaugeMetricFamily(f"{NAMESPACE}_queue_depth", "Items waiting in the queue.",
                                  labels=["stream"])
        age = GaugeMetricFamily(f"{NAMESPACE}_last_packet_age_seconds",
                                "Seconds since the last packet arrived.", labels=["stream"])
        for s in stats:
            info.add_metric([s.id, s.uri, s.transport, s.mode], 1.0)
            for st in StreamState:
                state.add_metric([s.id, st.value], 1.0 if s.state == st else 0.0)
            for name, attr, _ in _COUNTERS:
                counters[name].add_metric([s.id], float(getattr(s, attr)))
            fps.add_metric([s.id], s.fps)
            depth.add_metric([s.id], float(s.queued))
            if s.last_packet_age_s is not None:
                age.add_metric([s.id], s.last_packet_age_s)
        yield info
        yield state
        yield from counters.values()
        yield fps
        yield depth
        yield age


class LiveMetrics:
    """The live metrics of one :class:`~streams.live.manager.StreamManager`.

    Args:
        registry: where the series are registered (never the global default registry).
        latency_buckets: histogram buckets of ``fovea_live_latency_seconds``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._frames_out = Counter(
            "frames_out", "Frames whose detections were emitted to the sinks.",
            ["stream"], namespace=NAMESPACE, registry=registry,
        )
        self._latency = Histogram(
            "latency_seconds", "Packet arrival to detections emitted, per frame.",
            ["stream"], namespace=NAMESPACE, buckets=tuple(latency_buckets), registry=registry,
        )
        self._collector = _StreamsCollector()
        registry.register(self._collector)

    def bind(self, snapshot: Callable[[], Sequence[StreamStats]]) -> None:
        """Set the callable giving the streams' statistics at scrape time."""
        self._collector.snapshot = snapshot

    def record_emitted(self, meta: FrameMeta, now: float | None = None) -> float | None:
        """Count one emitted frame; observe and return its latency (``None`` without
        ``meta.arrival_time``). Call it after the sinks have written the frame."""
        with self._lock:
            self._known.add(meta.source_id)
        self._frames_out.labels(meta.source_id).inc()
        if meta.arrival_time is None:
            return None
        latency = max(0.0, (time.time() if now is None else now) - meta.arrival_time)
        self._latency.labels(meta.source_id).observe(latency)
        return latency

    def record_emitted_many(self, stream_id: str, metas: Sequence[FrameMeta], now: float) -> None:
        """:meth:`record_emitted` for several frames of one stream (one label lookup)."""
        with self._lock:
            self._known.add(stream_id)
        self._frames_out.labels(stream_id).inc(len(metas))
        hist = self._latency.labels(stream_id)
        for m in metas:
            if m.arrival_time is not None:
                hist.observe(max(0.0, now - m.arrival_time))

    def forget(self, stream_id: str) -> None:
        """Drop the pushed series of a removed stream."""
        with self._lock:
            if stream_id not in self._known:
                return
            self._known.discard(stream_id)
        for metric in (self._frames_out, self._latency):
            with contextlib.suppress(KeyError):
                metric.remove(stream_id)


class AnalyticsMetrics:
    """Prometheus series of the analytics stage's events (module docstring), on ``registry``.

    A listener of :class:`pipelines.analytics.AnalyticsStage`: ``stage.add_listener(m)``;
    :meth:`record_events` is called on the job's thread with each frame's events. The
    occupancy gauge follows the events (``+1`` per enter, ``-1`` per exit, by the class at
    entry, which a zone's exit event carries), so it equals the stage's own occupancy.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._lines = Counter(
            "line_crossings", "Tracks that crossed a counting line, per direction and class.",
            ["stream", "line", "direction", "class"], namespace=NAMESPACE, registry=registry,
        )
        self._zones = Counter(
            "zone_events", "Tracks that entered or left a zone, per class.",
            ["stream", "zone", "kind", "class"], namespace=NAMESPACE, registry=registry,
        )
        self._occupancy = Gauge(
            "zone_occupancy", "Tracks in a zone now, per class.",
            ["stream", "zone", "class"], namespace=NAMESPACE, registry=registry,
        )
        self._series: dict[str, set[tuple[Counter | Gauge, tuple[str, ...]]]] = {}  # stream -> its series

    def record_events(self, events: Sequence[Event]) -> None:
        """Count ``line_cross``, ``zone_enter`` and ``zone_exit`` events; others are ignored."""
        for e in events:
            if e.kind == "line_cross":
                self._child(self._lines, e.source_id, str(e.data.get("line", "")), str(e.data.get("direction", "")),
                            e.class_name).inc()
            elif e.kind in ("zone_enter", "zone_exit"):
                zone = str(e.data.get("zone", ""))
                enter = e.kind == "zone_enter"
                self._child(self._zones, e.source_id, zone, "enter" if enter else "exit", e.class_name).inc()
                self._child(self._occupancy, e.source_id, zone, e.class_name).inc(1 if enter else -1)

    def forget(self, stream_id: str) -> None:
        """Drop the series of a removed stream (they would stay on /metrics, one set per stream ever added)."""
        for metric, labels in self._series.pop(stream_id, set()):
            with contextlib.suppress(KeyError):
                metric.remove(*labels)

    def _child(self, metric: Counter | Gauge, stream_id: str, *labels: str) -> Any:
        self._series.setdefault(stream_id, set()).add((metric, (stream_id, *labels)))
        return metric.labels(stream_id, *labels)


class SinkMetrics:
    """The network sinks' delivery health on ``registry``, read at scrape time from ``health``
    (e.g. ``lambda: sink_health(sinks)``, :mod:`streams.sinks.health`). Labels ``sink`` (its
    type), ``where`` (the broker, without credentials), ``spool`` (its folder, one per sink)::

        fovea_sink_connected                      1 while the broker is reachable, else 0
        fovea_sink_spooled / fovea_sink_spool_bytes   records (bytes) waiting in the spool
        fovea_sink_delivered_total / _dropped_total / _resent_total / _disconnects_total
    """

    _GAUGES = (("connected", "1 while the sink's broker is reachable."),
               ("spooled", "Records waiting in the sink's spool."),
               ("spool_bytes", "Bytes of the sink's spool files."))
    _COUNTERS = (("delivered", "Records the broker acknowledged."),
                 ("dropped", "Records dropped at the spool's size limit."),
                 ("resent", "Records sent again after an unacknowledged try (at most as many duplicates)."),
                 ("disconnects", "Times the broker went away after being connected."))

    def __init__(self, registry: CollectorRegistry, health: Callable[[], Sequence[DeliveryHealth]]) -> None:
        self._health = health
        registry.register(self)

    def describe(self) -> list[Metric]:
        return []  # dynamic series: nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        labels = ["sink", "where", "spool"]
        gauges = {n: GaugeMetricFamily(f"fovea_sink_{n}", doc, labels=labels) for n, doc in self._GAUGES}
        counters = {n: CounterMetricFamily(f"fovea_sink_{n}", doc, labels=labels) for n, doc in self._COUNTERS}
        for h in self._health():
            values = [h.sink, h.where, h.spool]
            gauges["connected"].add_metric(values, 1.0 if h.connected else 0.0)
            gauges["spooled"].add_metric(values, float(h.spooled))
            gauges["spool_bytes"].add_metric(values, float(h.spool_bytes))
            for name, value in (("delivered", h.delivered), ("dropped", h.dropped), ("resent", h.resent),
                                ("disconnects", h.disconnects)):
                counters[name].add_metric(values, float(value))
        yield from gauges.values()
        yield from counters.values()
