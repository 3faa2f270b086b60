"""The archived-files source: concurrent decode sessions feeding one consumer.

``sessions`` worker threads take files from a shared queue; each probes its file
(PyAV), builds a :class:`pipelines.decode.FileDecoder` for it and pushes the decoded
batches into one bounded queue, so decoding runs ahead of inference by a bounded
amount. On the GPU each worker has its own CUDA stream: DALI orders the outputs on it
and the consumer runs the engine on it, so no host synchronisation is needed between
decode and inference.

With a ``process`` callback (engine + postprocess), each worker also runs inference on
its own batches, on its own stream, and hands back :class:`ProcessedBatch` results: the
sessions then overlap engine work as well as decoding, a file's batches stay in order,
and DALI's buffers are released as soon as the detections are on the host.

A file that fails (probe or decode) becomes a ``FileEvent(kind="failed")`` with the
reason; its worker builds a fresh pipeline for the next file (DALI pipelines are
invalid after a decode error), so the job goes on.

Usage::

    with FileBatchSource(files, plan) as source:
        while (item := source.read()) is not None:
            if isinstance(item, FileEvent): ...
            else: ...  # DecodedBatch
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from operators.boxes import letterbox_geometry
from pipelines.decode import DecodedBatch, FileDecoder, choose_decoder
from pipelines.preprocess import PreprocessSpec
from streams.errors import DecodeError, EngineError, FoveaError, SourceError
from streams.files import VideoFile
from streams.frames import FrameResult
from streams.probe import probe_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodePlan:
    """How files are decoded: devices, model input, batch and concurrency."""

    spec: PreprocessSpec
    input_size: tuple[int, int]  # (height, width)
    batch: int
    decode_device: Literal["cpu", "gpu"]
    device_id: int | None  # CUDA device for decoding/preprocessing; None = CPU
    sessions: int = 1
    threads: int = 2


@dataclass(frozen=True)
class FileEvent:
    """A file's life cycle: ``started`` (probed), ``done`` or ``failed`` (with the reason)."""

    file: VideoFile
    kind: Literal["started", "done", "failed"]
    frames: int = 0
    expected_frames: int = 0
    decoder: str = ""
    error: SourceError | None = None


@dataclass(frozen=True)
class ProcessedBatch:
    """The results of one batch processed by a worker's ``process`` callback."""

    file: VideoFile
    results: list[FrameResult]


Processor = Callable[[DecodedBatch], list[FrameResult]]

_END = object()


@dataclass(frozen=True)
class _WorkerCrash:
    """An error that must stop the job (engine, sink, bug), carried to the consumer."""

    error: BaseException


class FileBatchSource:
    """Decodes ``files`` with ``plan.sessions`` concurrent pipelines; see module docstring."""

    def __init__(self, files: Sequence[VideoFile], plan: DecodePlan, queue_size: int | None = None,
                 process: Processor | None = None) -> None:
        self.files = list(files)
        self.plan = plan
        self.process = process
        self._jobs: queue.Queue[VideoFile] = queue.Queue()
        self._out: queue.Queue[object] = queue.Queue(maxsize=queue_size or max(2, 2 * plan.sessions))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running = 0

    def __enter__(self) -> FileBatchSource:
        for f in self.files:
            self._jobs.put(f)
        n = max(1, min(self.plan.sessions, len(self.files)))
        self._running = n
        for i in range(n):
            t = threading.Thread(target=self._worker, name=f"fovea-decode-{i}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        while any(t.is_alive() for t in self._threads):
            try:  # unblock producers waiting on a full queue
                while True:
                    self._out.get_nowait()
            except queue.Empty:
                pass
            for t in self._threads:
                t.join(timeout=0.05)
        self._threads.clear()

    def read(self) -> DecodedBatch | ProcessedBatch | FileEvent | None:
        """The next batch (or processed batch) or file event; ``None`` once all files are done."""
        while self._running > 0:
            item = self._out.get()
            if item is _END:
                self._running -= 1
                continue
            if isinstance(item, _WorkerCrash):
                self._stop.set()
                raise item.error
            assert isinstance(item, (DecodedBatch, ProcessedBatch, FileEvent))
            return item
        return None

    # -- workers ------------------------------------------------------------------------
    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _worker(self) -> None:
        stream: int | None = None
        keep_stream = None
        if self.plan.device_id is not None:
            import torch

            keep_stream = torch.cuda.Stream(device=self.plan.device_id)
            stream = keep_stream.cuda_stream
        try:
            while not self._stop.is_set():
                try:
                    f = self._jobs.get_nowait()
                except queue.Empty:
                    break
                self._decode_file(f, stream)
        except BaseException as e:  # engine failures etc. stop the job, in the consumer
            self._put(_WorkerCrash(e))
        finally:
            if not self._put(_END):
                self._out.put(_END)
            del keep_stream

    def _run_process(self, batch: DecodedBatch) -> list[FrameResult]:
        assert self.process is not None
        try:
            return self.process(batch)
        except FoveaError:
            raise
        except Exception as e:  # inference failures are not the file's fault
            where = batch.source.path if batch.source is not None else "a live batch"
            raise EngineError(f"inference failed on {where}: {type(e).__name__}: {e}") from e

    def _decode_file(self, f: VideoFile, stream: int | None) -> None:
        plan = self.plan
        try:
            info = probe_video(f.path)
        except SourceError as e:
            self._put(FileEvent(f, "failed", error=e))
            return
        h, w = plan.input_size
        geom = letterbox_geometry(info.width, info.height, w, h, plan.spec.options.resize)
        kind = choose_decoder(info, plan.decode_device)
        if not self._put(FileEvent(f, "started", expected_frames=info.num_frames, decoder=kind)):
            return
        decoder = FileDecoder(f, info, plan.spec, geom, plan.batch, kind,
                              device_id=plan.device_id, stream=stream, num_threads=plan.threads)
        try:
            with decoder:
                for batch in decoder:
                    item: object = batch
                    if self.process is not None:
                        item = ProcessedBatch(f, self._run_process(batch))
                        del batch  # DALI's buffers go back as soon as detections are on the host
                    if not self._put(item):
                        return
        except SourceError as e:
            self._put(FileEvent(f, "failed", frames=decoder.frames_decoded,
                                expected_frames=info.num_frames, decoder=kind, error=e))
            return
        except FoveaError:
            raise  # not the file's fault: an engine or sink problem stops the job
        except Exception as e:  # a DALI/FFmpeg failure we did not foresee: isolate the file
            log.exception("%s: unexpected decode failure", f.path)
            err = DecodeError(str(f.path), f"{type(e).__name__}: {str(e).strip()[:300]}")
            self._put(FileEvent(f, "failed", frames=decoder.frames_decoded,
                                expected_frames=info.num_frames, decoder=kind, error=err))
            return
        self._put(FileEvent(f, "done", frames=decoder.frames_decoded,
                            expected_frames=info.num_frames, decoder=kind))
