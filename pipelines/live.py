"""The live job: many cameras in, per-frame detections out, continuously.

It runs the same stage graph as a file job (:mod:`pipelines.graph`)::

    RtspSource ×cameras ──► Batcher (bounded queues, ──► InferencePool: live.inference_threads threads,
      (PyAV demux; frames,     drop-oldest; round-robin     each on its own CUDA stream: live DALI graph
       GOPs or NVDEC surfaces)  across cameras)              (LiveFeed) → InferenceStage (engine + postprocess)
                                                   ──► job thread: PerSourceStages (order, per-source
                                                       stages, sinks), latency figures

Every queue is bounded: when inference falls behind, the batcher drops the oldest items
of the camera that overflows (counted per camera, on /metrics and /health, and told to the
per-source stages as gaps) instead of building latency; ``live.batch.policy: block``
processes every frame instead (recorded streams). SIGINT/SIGTERM stop the job gracefully:
cameras closed, batches in hand finished, every sink flushed and closed.

Usage::

    summary = run_live(load_config("live.yaml"), duration_s=60)
    summary.streams["cam1"].frames, summary.streams["cam1"].latency_p95
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engines.factory import resolve_device
from pipelines.analytics import AnalyticsStage
from pipelines.graph import (
    PerSourceStages,
    batch_size_for,
    gil_switch_interval,
    needs_source_frames,
    open_inference_stage,
    open_sinks,
    prepare_inference,
    source_stages,
)
from pipelines.inference_pool import FailedBatch, InferencePool
from pipelines.ingest import IngestPool, IngestSettings, ring_frames_for
from pipelines.live_decode import LiveBatchPipeline
from pipelines.live_memory import malloc_arenas
from pipelines.preprocess import PreprocessSpec
from pipelines.stages import SourceStage
from pipelines.video_decoding import DecodedBatch
from streams.config import JobConfig
from streams.errors import ConfigError, DecodeError
from streams.frames import FrameResult
from streams.live.config import LiveConfig, ingest_processes, parse_live_config
from streams.live.manager import StreamManager
from streams.live.metrics import AnalyticsMetrics, SinkMetrics
from streams.live.stats import Reservoir
from streams.sinks import Sink
from streams.sinks.health import sink_health
from streams.sinks.summaries import write_summaries

log = logging.getLogger(__name__)


@dataclass
class StreamSummary:
    """Per-stream figures of a live run."""

    frames: int = 0
    detections: int = 0
    first_emit: float | None = None
    last_emit: float | None = None
    latencies: Reservoir = field(default_factory=Reservoir)  # a bounded sample: days of frames, same memory

    @property
    def fps(self) -> float:
        if self.first_emit is None or self.last_emit is None or self.last_emit <= self.first_emit:
            return 0.0
        return (self.frames - 1) / (self.last_emit - self.first_emit)

    def latency_quantile(self, q: float) -> float | None:
        return self.latencies.quantile(q)


@dataclass
class LiveSummary:
    """What a live run did: per-stream frames, fps and latency, drops, batch errors."""

    seconds: float = 0.0
    mode: str = ""
    device: str = ""
    streams: dict[str, StreamSummary] = field(default_factory=dict)
    batch_errors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-source stages' reports, by name

    def removed(self, stream_id: str, keep: int = 64) -> None:
        """A stream removed: its latency sample shrinks to ``keep`` values (its quantiles), so
        streams that come and go for days leave a few hundred bytes each, not a full sample."""
        self.states[stream_id] = "removed"
        if (s := self.streams.get(stream_id)) is not None:
            s.latencies.shrink(keep)

    def to_text(self) -> str:
        lines = [f"live: {len(self.streams)} streams, {self.seconds:.1f} s, mode {self.mode} on {self.device}, "
                 f"batch errors {self.batch_errors}"]
        for sid in sorted(set(self.streams) | set(self.states)):
            s = self.streams.get(sid, StreamSummary())
            p95 = s.latency_quantile(0.95)
            lines.append(f"  {sid}: {s.frames} frames  {s.fps:.1f} fps  p95 latency "
                         f"{'n/a' if p95 is None else f'{p95:.3f} s'}  drops {self.dropped.get(sid, 0)}  "
                         f"state {self.states.get(sid, '?')}")
        return "\n".join(lines)


class LiveRunner:
    """Owns the camera manager, the inference pool and the sinks of a live job. Use :func:`run_live`."""

    def __init__(self, cfg: JobConfig, live: LiveConfig | None = None, stages: Sequence[SourceStage] = (),
                 sinks: Sequence[Sink] = (), cameras_later: bool = False) -> None:
        self.cfg = cfg
        self.live = live or parse_live_config(cfg.extra.get("live"))
        # cameras_later: the job may start without cameras, they come through self.manager (pipelines.ray_live)
        if not cameras_later and not [s for s in cfg.sources if s.uri is not None]:
            raise ConfigError("sources", "a live job needs stream sources (rtsp://... or file:///clip.mp4)")
        self.stages = source_stages(cfg) + list(stages)  # the config's, then the caller's
        self.extra_sinks = list(sinks)
        self.stop_event = threading.Event()
        self.summary = LiveSummary()
        self.manager: StreamManager | None = None
        self._count_from = 0.0

    def _mode(self, device: str, fell_back: bool) -> str:
        decode = "cpu" if fell_back else self.live.decode
        if decode in ("gpu", "gop") and not device.startswith("cuda"):
            raise ConfigError("live.decode", f"{decode} decoding needs a CUDA device (engine.device)")
        if decode == "gop":
            mode = "gop"
        else:
            mode = "packets" if (decode == "gpu" or (decode == "auto" and device.startswith("cuda"))) else "frames"
        if self.cfg.secondary and mode == "gop":
            raise ConfigError("secondary", "live cascades crop source-resolution frames, which the gop decode path "
                                           "(kept to compare GOP batches through DALI) does not return: it decodes "
                                           "and scales each GOP in one DALI graph; set live.decode: cpu or gpu")
        return mode

    def run(self, duration_s: float | None = None, warmup_s: float = 0.0) -> LiveSummary:
        """Run until stopped or ``duration_s``; figures count frames emitted after ``warmup_s``."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(malloc_arenas(self.live.malloc_arenas))  # before the job's threads and processes
            requested = resolve_device(self.cfg.engine.device)
            stage = open_inference_stage(self.cfg, requested, stack, self.stages)
            device = stage.engine.device  # the engine may have fallen back to the CPU (logged)
            mode = self._mode(device, fell_back=requested.startswith("cuda") and device == "cpu")
            self.summary.mode, self.summary.device = mode, device
            sinks = open_sinks(self.cfg, stack) + [stack.enter_context(s) for s in self.extra_sinks]
            for source_stage in self.stages:
                stack.enter_context(source_stage)
            batch = batch_size_for(self.cfg, stage.engine)
            device_id = int(device.split(":")[1]) if device.startswith("cuda") else None
            threads = self.live.inference_threads if device_id is not None else 1
            # before any camera (in this process: NVDEC sessions, DALI) touches the GPU: the
            # engine's CUDA graphs, one per inference thread's stream, are captured now (a capture
            # must not overlap other threads' CUDA work); the fused postprocess's kernel builds now too
            infer_streams = prepare_inference(stage, batch, threads)
            sources = [s for s in self.cfg.sources if s.uri is not None]
            factory = None
            pool: IngestPool | None = None
            n_proc = ingest_processes(self.live, mode, len(sources), os.cpu_count() or 1)  # type: ignore[arg-type]
            # a cascade crops source pixels: NVDEC then decodes full-size frames, up to live.max_source_size
            full = self.live.max_source_size if mode == "packets" and needs_source_frames(self.cfg) else None
            if n_proc > 0:
                ring = ring_frames_for(self.live, -(-len(sources) // n_proc), batch, threads, full is not None)
                settings = IngestSettings(self.live, mode, device_id, stage.info.input_size,  # type: ignore[arg-type]
                                          self.cfg.preprocess.resize, ring, logging.getLogger().getEffectiveLevel(),
                                          source_size=full)
                pool = stack.enter_context(IngestPool(settings, n_proc))
            elif mode == "packets":
                from pipelines.nvdec import nvdec_decoder_factory

                assert device_id is not None
                factory = nvdec_decoder_factory(device_id, stage.info.input_size, self.cfg.preprocess.resize,
                                                max_source=full)
            mgr = stack.enter_context(StreamManager(self.live, mode=mode,  # type: ignore[arg-type]
                                                    decoder_factory=factory,
                                                    source_factory=pool.source if pool is not None else None))
            self.manager = mgr
            after = PerSourceStages(self.stages, sinks, first_index=mgr.first_frame_index)
            metrics = AnalyticsMetrics(mgr.registry)  # line crossings and zone events on /metrics
            SinkMetrics(mgr.registry, lambda: sink_health(sinks))  # the network sinks' health on /metrics
            for source_stage in self.stages:
                if isinstance(source_stage, AnalyticsStage):
                    source_stage.add_listener(metrics)
            mgr.add_sources(sources)
            # GOP mode: one item is a whole GOP (about 30 frames at a 1 s GOP), so
            # engine.batch_size // 32 GOPs fill an engine batch
            items_per_batch = max(1, batch // 32) if mode == "gop" else batch
            spec = PreprocessSpec(dtype=stage.engine.input_dtype, layout=stage.engine.input_layout,  # type: ignore[arg-type]
                                  options=self.cfg.preprocess, keep_source=needs_source_frames(self.cfg))
            feed = LiveFeed(mgr, mode, spec, stage.info.input_size, items_per_batch, device_id)
            infer = stack.enter_context(InferencePool(stage, feed, infer_streams, threads))
            start = time.monotonic()
            self._count_from = time.time() + warmup_s
            if device_id is not None:  # many threads each hold the GIL briefly: hand it over sooner
                stack.enter_context(gil_switch_interval(self.live.gil_switch_interval_ms / 1000))
            drops_at_warmup: dict[str, int] | None = None if warmup_s > 0 else {}
            ran_to_end = False  # stopped as asked (a signal, the duration, the API), not by an error
            try:
                with _signals(self.stop_event):
                    while not self.stop_event.is_set():
                        if duration_s is not None and time.monotonic() - start >= duration_s:
                            break
                        if drops_at_warmup is None and time.time() >= self._count_from:
                            drops_at_warmup = {st.id: st.dropped for st in mgr.streams()}
                        for sid, indices in mgr.take_dropped().items():  # the stages must not wait for them
                            after.gap(sid, tuple(indices))
                        for sid in mgr.take_removed():  # its tracker, held frames and series go
                            after.end(sid, "removed")
                            metrics.forget(sid)
                            self.summary.removed(sid)
                        try:
                            item = infer.get(timeout=0.1)
                        except queue.Empty:
                            continue
                        if item is None:
                            break
                        self._emit(item, after, mgr)
                ran_to_end = True
            finally:
                self.stop_event.set()
                mgr.stop()  # cameras closed; the inference threads finish the batch in hand
                infer.stop.set()
                with contextlib.suppress(queue.Empty):  # flush what the inference threads finished
                    while (item := infer.get(timeout=1.0)) is not None:
                        self._emit(item, after, mgr)
                for sid, indices in mgr.take_dropped().items():
                    after.gap(sid, tuple(indices))
                for sid in mgr.stream_ids():
                    after.end(sid, "stopped")
                self.summary.stages = after.reports()
                if ran_to_end:  # one summary record per camera (removed ones too) to the sinks that take them
                    write_summaries(sinks, self.summary.stages)
                self.summary.seconds = time.monotonic() - start
                for st in mgr.streams():  # drops after the warm-up, like every other figure
                    self.summary.dropped[st.id] = st.dropped - (drops_at_warmup or {}).get(st.id, 0)
                    self.summary.states[st.id] = st.state.value
        return self.summary

    def _emit(self, item: list[FrameResult] | FailedBatch, after: PerSourceStages, mgr: StreamManager) -> None:
        if isinstance(item, FailedBatch):
            self.summary.batch_errors += 1
            log.warning("%s (batch of %d frames skipped)", item.reason, len(item.rows))
            for meta in item.rows:
                after.gap(meta.source_id, (meta.frame_index,))
            return
        after.add(item)
        now = time.time()
        mgr.record_emitted([r.frame for r in item])
        if now < self._count_from:
            return
        for r in item:
            s = self.summary.streams.get(r.frame.source_id)
            if s is None:  # (not setdefault: it would build a summary for every frame)
                s = self.summary.streams[r.frame.source_id] = StreamSummary()
            s.frames += 1
            s.detections += len(r.detections)
            s.first_emit = now if s.first_emit is None else s.first_emit
            s.last_emit = now
            if r.frame.arrival_time is not None:
                s.latencies.append(now - r.frame.arrival_time)


class LiveFeed:
    """The live side of the inference pool's :class:`~pipelines.inference_pool.BatchFeed`:
    each inference thread takes batches of camera items from the manager and decodes
    (GOP mode) and preprocesses them with a live DALI graph of its own, on its own stream."""

    def __init__(self, manager: StreamManager, mode: str, spec: PreprocessSpec, input_size: tuple[int, int],
                 items_per_batch: int, device_id: int | None) -> None:
        self.manager = manager
        self.mode = mode
        self.spec = spec
        self.input_size = input_size
        self.items_per_batch = items_per_batch
        self.device_id = device_id

    def open_reader(self, index: int, stream: Any, stop: threading.Event) -> _LiveReader:
        handle = stream.cuda_stream if stream is not None else None
        pipe = LiveBatchPipeline(self.mode, self.spec, self.input_size, self.items_per_batch,  # type: ignore[arg-type]
                                 self.device_id, handle, num_threads=2)
        return _LiveReader(self.manager, pipe, self.items_per_batch, stream, stop)


class _LiveReader:
    def __init__(self, manager: StreamManager, pipe: LiveBatchPipeline, items_per_batch: int, stream: Any,
                 stop: threading.Event) -> None:
        self._manager = manager
        self._pipe = pipe
        self._items = items_per_batch
        self._stream = stream
        self._stop = stop

    def read(self) -> DecodedBatch | FailedBatch | None:
        while not self._stop.is_set():
            items = self._manager.next_batch(self._items)
            if not items:
                continue
            try:
                return self._pipe.run(items)
            except DecodeError as e:
                if self._stream is not None:  # frames in shared slots are let go: done reading them
                    self._stream.synchronize()
                return FailedBatch([m for it in items for m in it.metas], str(e))
        return None


@contextlib.contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (graceful) while inside; restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        log.warning("signal %d: stopping (sources closed, queued detections flushed)", signum)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_live(cfg: JobConfig, duration_s: float | None = None, warmup_s: float = 0.0) -> LiveSummary:
    """Run a live job until SIGINT/SIGTERM or ``duration_s``; returns its summary.

    Frames emitted during the first ``warmup_s`` seconds are written to the sinks but left
    out of the summary's rates and latencies (engine build, CUDA graph capture, ...).
    """
    return LiveRunner(cfg).run(duration_s, warmup_s)
