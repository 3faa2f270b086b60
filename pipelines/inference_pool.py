"""The inference pool: a few threads, one CUDA stream each, running the batch stage.

A source hands decoded batches to the pool through a :class:`BatchFeed`: each inference
thread opens its own :class:`BatchReader` on its own CUDA stream and reads batches
ordered on that stream (a file source's reader makes the stream wait for the decode
session's CUDA event; a live reader runs the live DALI graph on it). The thread runs the
:class:`~pipelines.stages.BatchStage` on the batch and hands the results to the job's
thread through one bounded queue. Two threads keep the GPU busy while one of them waits
for its detections copy.

The CUDA streams are made (and the engine's CUDA graphs captured on them) before any
decoding starts: see :func:`pipelines.graph.prepare_inference`.

Usage::

    with InferencePool(stage, feed, streams) as pool:
        while (results := pool.get()) is not None:
            ...                       # list[FrameResult] of one batch
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from pipelines.batch_queue import join_draining
from pipelines.stages import BatchStage
from pipelines.video_decoding import DecodedBatch
from streams.errors import EngineError, FoveaError
from streams.frames import FrameResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailedBatch:
    """Frames a batch had that will never have results (its decode failed); the job counts
    them and tells the per-source stages."""

    rows: list[Any]  # FrameMeta of the batch's frames
    reason: str


class BatchReader(Protocol):
    """One inference thread's view of a source's batches."""

    def read(self) -> DecodedBatch | FailedBatch | None:
        """The next batch, ordered on this reader's CUDA stream; ``None`` when there are no more.

        Blocks until a batch is ready; returns ``None`` promptly once the pool stops.
        """
        ...


class BatchFeed(Protocol):
    """What a source offers the inference pool: a reader per inference thread."""

    def open_reader(self, index: int, stream: Any, stop: threading.Event) -> BatchReader:
        """A reader for inference thread ``index``, on ``stream`` (a ``torch.cuda.Stream``,
        or ``None`` on the CPU); it ends its reads once ``stop`` is set."""
        ...


@dataclass(frozen=True)
class _Crash:
    error: BaseException


_END = object()


class InferencePool:
    """``threads`` inference threads over ``feed``; see the module docstring."""

    def __init__(self, stage: BatchStage, feed: BatchFeed, streams: Sequence[Any] = (), threads: int = 1,
                 queue_size: int = 64) -> None:
        self.stage = stage
        self.feed = feed
        self.threads = max(1, len(streams) or threads)
        self._streams = list(streams)
        self._out: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self.stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._running = 0
        self._lock = threading.Lock()
        # seconds summed over threads: where the inference threads' time went (logged at the end)
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.starved_s = 0.0

    def __enter__(self) -> InferencePool:
        self._running = self.threads
        for i in range(self.threads):
            t = threading.Thread(target=self._work, args=(i,), name=f"fovea-infer-{i}", daemon=True)
            self._workers.append(t)
            t.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop.set()
        join_draining(self._workers, self._out)
        self._workers.clear()
        if self.wall_s > 0:
            log.info("inference threads (s, summed): %.1f CPU, %.1f waiting for batches, of %.1f",
                     self.cpu_s, self.starved_s, self.wall_s)

    def get(self, timeout: float | None = None) -> list[FrameResult] | FailedBatch | None:
        """The next batch's results (or a batch that failed to decode); ``None`` once every
        thread has finished. Raises what stopped a thread (engine error, bug).

        With ``timeout``, raises :class:`queue.Empty` when nothing came in time.
        """
        while self._running > 0:
            item = self._out.get(timeout=timeout)
            if item is _END:
                self._running -= 1
                continue
            if isinstance(item, _Crash):
                self.stop.set()
                raise item.error
            return item  # type: ignore[return-value]
        return None

    def _put(self, item: object) -> bool:
        """Hand ``item`` to the job's thread; once the pool stops, only if there is room
        (a batch finished while stopping still reaches the sinks when it can)."""
        while not self.stop.is_set():
            try:
                self._out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        try:
            self._out.put_nowait(item)
        except queue.Full:
            return False
        return True

    def _work(self, index: int) -> None:
        stream = self._streams[index] if index < len(self._streams) else None
        cpu0, wall0, starved = time.thread_time(), time.monotonic(), 0.0
        try:
            reader = self.feed.open_reader(index, stream, self.stop)
            while not self.stop.is_set():
                t = time.monotonic()
                batch = reader.read()
                starved += time.monotonic() - t
                if batch is None:
                    break
                if isinstance(batch, FailedBatch):
                    if not self._put(batch):
                        break
                    continue
                results = self._process(batch)
                del batch  # DALI's buffers go back: the detections are on the host
                if not self._put(results):
                    break
        except BaseException as e:  # an engine failure or a bug: stops the job, with the reason
            self._put(_Crash(e))
        finally:
            with self._lock:
                self.cpu_s += time.thread_time() - cpu0
                self.wall_s += time.monotonic() - wall0
                self.starved_s += starved
            if not self._put(_END):
                self._out.put(_END)

    def _process(self, batch: DecodedBatch) -> list[FrameResult]:
        try:
            return self.stage.process(batch)
        except FoveaError:
            raise
        except Exception as e:  # inference failures are not the input's fault
            where = batch.source.path if batch.source is not None else "a live batch"
            raise EngineError(f"inference failed on {where}: {type(e).__name__}: {e}") from e
