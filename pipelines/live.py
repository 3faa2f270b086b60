"""The live job: many streams in, per-frame detections out, continuously.

Threads::

    RtspSource ×streams ──► Batcher (bounded queues, drop-oldest) ──► worker ×live.workers
        (PyAV demux;            (round-robin across streams,          (DALI: GOP decode on
         frames or GOPs)         batch size or max wait)                NVDEC or CPU frames →
                                                                        preprocess → engine →
                                                                        postprocess, own stream)
                                                    ──► results queue ──► main thread: sinks,
                                                                          latency metrics

Every queue is bounded: when inference falls behind, the batcher drops the oldest items
of the stream that overflows (counted per stream, on /metrics and /health) instead of
building latency; ``live.batch.policy: block`` processes every frame instead (recorded
streams). SIGINT/SIGTERM stop the job gracefully: sources closed, queued batches finished,
every sink flushed and closed.

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
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engines.factory import resolve_device
from pipelines.ingest import IngestPool, IngestSettings, ring_frames_for
from pipelines.live_decode import LiveBatchPipeline
from pipelines.preprocess import PreprocessSpec
from pipelines.runner import (
    Stage,
    gil_switch_interval,
    open_sinks,
    open_stage,
    prepare_inference,
    warm_postprocess,
)
from streams.config import JobConfig
from streams.errors import ConfigError, DecodeError, FoveaError
from streams.frames import FrameResult
from streams.live.config import LiveConfig, ingest_processes, parse_live_config
from streams.live.manager import StreamManager

log = logging.getLogger(__name__)


@dataclass
class StreamSummary:
    """Per-stream figures of a live run."""

    frames: int = 0
    detections: int = 0
    first_emit: float | None = None
    last_emit: float | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    @property
    def fps(self) -> float:
        if self.first_emit is None or self.last_emit is None or self.last_emit <= self.first_emit:
            return 0.0
        return (self.frames - 1) / (self.last_emit - self.first_emit)

    def latency_quantile(self, q: float) -> float | None:
        return float(np.quantile(np.fromiter(self.latencies, float), q)) if self.latencies else None


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


@dataclass
class _Done:
    results: list[FrameResult]
    emitted_at: float = 0.0


class LiveRunner:
    """Owns the stream manager, workers and sinks of a live job. Use :func:`run_live`."""

    def __init__(self, cfg: JobConfig, live: LiveConfig | None = None) -> None:
        self.cfg = cfg
        self.live = live or parse_live_config(cfg.extra.get("live"))
        if not [s for s in cfg.sources if s.uri is not None]:
            raise ConfigError("sources", "a live job needs stream sources (rtsp://... or file:///clip.mp4)")
        self.stop_event = threading.Event()
        self.summary = LiveSummary()
        self.manager: StreamManager | None = None
        self._results: queue.Queue[_Done] = queue.Queue(maxsize=64)
        self._workers: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._count_from = 0.0

    def _mode(self, device: str, fell_back: bool) -> str:
        decode = "cpu" if fell_back else self.live.decode
        if decode in ("gpu", "gop") and not device.startswith("cuda"):
            raise ConfigError("live.decode", f"{decode} decoding needs a CUDA device (engine.device)")
        if decode == "gop":
            return "gop"
        return "packets" if (decode == "gpu" or (decode == "auto" and device.startswith("cuda"))) else "frames"

    def run(self, duration_s: float | None = None, warmup_s: float = 0.0) -> LiveSummary:
        """Run until stopped or ``duration_s``; figures count frames emitted after ``warmup_s``."""
        with contextlib.ExitStack() as stack:
            requested = resolve_device(self.cfg.engine.device)
            stage = open_stage(self.cfg, requested, stack)
            device = stage.engine.device  # the engine may have fallen back to the CPU (logged)
            mode = self._mode(device, fell_back=requested.startswith("cuda") and device == "cpu")
            self.summary.mode, self.summary.device = mode, device
            sinks = open_sinks(self.cfg, stack)
            batch = self.cfg.engine.batch_size
            if stage.engine.max_batch_size is not None:
                batch = min(batch, stage.engine.max_batch_size)
            device_id = int(device.split(":")[1]) if device.startswith("cuda") else None
            workers = self.live.workers if device_id is not None else 1
            infer_streams: list[torch.cuda.Stream] = []
            if device_id is not None:
                # before any stream (in this process: NVDEC sessions, DALI) touches the GPU: the
                # engine's CUDA graphs, one per worker stream, are captured now (a capture must not
                # overlap other threads' CUDA work); the fused postprocess's kernel builds now too
                infer_streams = prepare_inference(stage.engine, batch, stage.info.input_size, workers, device)
                warm_postprocess(stage, batch, infer_streams[0])
            sources = [s for s in self.cfg.sources if s.uri is not None]
            factory = None
            pool: IngestPool | None = None
            n_proc = ingest_processes(self.live, mode, len(sources), os.cpu_count() or 1)  # type: ignore[arg-type]
            if n_proc > 0:
                ring = ring_frames_for(self.live, -(-len(sources) // n_proc), batch, workers)
                settings = IngestSettings(self.live, mode, device_id, stage.info.input_size,  # type: ignore[arg-type]
                                          self.cfg.preprocess.resize, ring, logging.getLogger().getEffectiveLevel())
                pool = stack.enter_context(IngestPool(settings, n_proc))
            elif mode == "packets":
                from pipelines.nvdec import nvdec_decoder_factory

                assert device_id is not None
                factory = nvdec_decoder_factory(device_id, stage.info.input_size, self.cfg.preprocess.resize)
            mgr = stack.enter_context(StreamManager(self.live, mode=mode,  # type: ignore[arg-type]
                                                    decoder_factory=factory,
                                                    source_factory=pool.source if pool is not None else None))
            self.manager = mgr
            mgr.add_sources(sources)
            # GOP mode: one item is a whole GOP (about 30 frames at a 1 s GOP), so
            # engine.batch_size // 32 GOPs fill an engine batch
            items_per_batch = max(1, batch // 32) if mode == "gop" else batch
            spec = PreprocessSpec(dtype=stage.engine.input_dtype, layout=stage.engine.input_layout,  # type: ignore[arg-type]
                                  options=self.cfg.preprocess)
            for i in range(workers):
                t = threading.Thread(target=self._worker, name=f"live-worker-{i}", daemon=True,
                                     args=(stage, mode, spec, items_per_batch, device_id,
                                           infer_streams[i] if infer_streams else None))
                self._workers.append(t)
                t.start()
            start = time.monotonic()
            self._count_from = time.time() + warmup_s
            if device_id is not None:  # many threads each hold the GIL briefly: hand it over sooner
                stack.enter_context(gil_switch_interval(self.live.gil_switch_interval_ms / 1000))
            drops_at_warmup: dict[str, int] | None = None if warmup_s > 0 else {}
            try:
                with _signals(self.stop_event):
                    while not self.stop_event.is_set():
                        if duration_s is not None and time.monotonic() - start >= duration_s:
                            break
                        if drops_at_warmup is None and time.time() >= self._count_from:
                            drops_at_warmup = {st.id: st.dropped for st in mgr.streams()}
                        if self._error is not None:
                            raise self._error
                        try:
                            done = self._results.get(timeout=0.1)
                        except queue.Empty:
                            continue
                        self._emit(done, sinks, mgr)
            finally:
                self.stop_event.set()
                mgr.stop()  # sources closed; workers finish the batch in hand
                for t in self._workers:
                    t.join(timeout=10)
                while True:  # flush what the workers finished
                    try:
                        self._emit(self._results.get_nowait(), sinks, mgr)
                    except queue.Empty:
                        break
                self.summary.seconds = time.monotonic() - start
                for st in mgr.streams():  # drops after the warm-up, like every other figure
                    self.summary.dropped[st.id] = st.dropped - (drops_at_warmup or {}).get(st.id, 0)
                    self.summary.states[st.id] = st.state.value
        if self._error is not None:
            raise self._error
        return self.summary

    def _emit(self, done: _Done, sinks: list[Any], mgr: StreamManager) -> None:
        for sink in sinks:
            sink.write(done.results)
        now = time.time()
        metas = [r.frame for r in done.results]
        mgr.record_emitted(metas)
        if now < self._count_from:
            return
        for r in done.results:
            s = self.summary.streams.setdefault(r.frame.source_id, StreamSummary())
            s.frames += 1
            s.detections += len(r.detections)
            s.first_emit = now if s.first_emit is None else s.first_emit
            s.last_emit = now
            if r.frame.arrival_time is not None:
                s.latencies.append(now - r.frame.arrival_time)

    def _worker(self, stage: Stage, mode: str, spec: PreprocessSpec, items_per_batch: int,
                device_id: int | None, cuda_stream: torch.cuda.Stream | None) -> None:
        """Batches from the manager -> model input -> engine -> postprocess, on ``cuda_stream``
        (the stream the engine's graph for this worker was captured on; ``None`` on the CPU)."""
        assert self.manager is not None
        handle = cuda_stream.cuda_stream if cuda_stream is not None else None
        pipe = LiveBatchPipeline(mode, spec, stage.info.input_size, items_per_batch,  # type: ignore[arg-type]
                                 device_id, handle, num_threads=2)
        try:
            while not self.stop_event.is_set():
                items = self.manager.next_batch(items_per_batch)
                if not items:
                    continue
                try:
                    batch = pipe.run(items)
                except DecodeError as e:
                    self.summary.batch_errors += 1
                    log.warning("%s (batch of %d skipped)", e, len(items))
                    if cuda_stream is not None:  # frames in shared slots are let go below: done reading
                        cuda_stream.synchronize()
                    continue
                results = stage.process(batch)  # on the batch's (this worker's) stream
                del batch, items  # the detections are on the host: the frames (and their slots) go
                while not self.stop_event.is_set():
                    try:
                        self._results.put(_Done(results), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                else:  # stopping: hand the finished batch over anyway
                    with contextlib.suppress(queue.Full):
                        self._results.put_nowait(_Done(results))
        except FoveaError as e:
            self._error = e
        except Exception as e:  # an engine/CUDA failure stops the job, with the reason
            log.exception("live worker failed")
            self._error = e
        finally:
            if self._error is not None:
                self.stop_event.set()


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
