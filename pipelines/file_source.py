"""The archived-files source: balanced decode sessions feeding a few inference threads.

1. Every file is probed (PyAV; in worker processes for large sets) before decoding starts
   (or by a :class:`streams.sources.probe.BackgroundProbe` the caller started earlier, as ``fovea
   run`` does while it loads the model): unreadable files
   become ``FileEvent(kind="failed")`` at once, the others ``started`` with their frame
   count.
2. Files DALI's reader decodes (NVDEC on the GPU, VP8/VP9/MJPEG on the CPU) are cut at
   keyframes into segments dealt out evenly to ``plan.sessions`` decode sessions
   (:mod:`pipelines.segments`). Each session reads its segments through one long-lived
   reader pipeline (:class:`pipelines.video_decoding.SegmentDecoder`): no pipeline build per
   file, and the sessions finish together instead of idling behind the longest file.
   Files only PyAV decodes are taken whole, one at a time, by sessions that are free.
3. Decoded batches go into one bounded queue, so decoding runs ahead of inference by a
   bounded amount; a free slot goes to the session with the most frames left
   (:class:`pipelines.batch_queue.BehindFirstQueue`), so that when inference is the slower
   side the sessions still finish together. With a ``process`` callback (engine + postprocess), ``plan.workers``
   inference threads take batches from it, each on its own CUDA stream (``infer_streams``,
   when the caller captured the engine's CUDA graphs on them) made to wait for the
   decode stream (no host synchronisation), and hand back :class:`ProcessedBatch`
   results; DALI's buffers are released once the detections are on the host. Two
   workers keep the GPU busy while one waits for its detections.

A segment that fails to decode fails its file (one ``failed`` event with the reason);
the session rebuilds its pipeline for its remaining segments (DALI pipelines are invalid
after a decode error), so the job goes on. Records of one file can arrive out of frame
order (its segments are decoded concurrently); each carries its frame index and pts.

Usage::

    with FileBatchSource(files, plan, process=stage.process) as source:
        while (item := source.read()) is not None:
            if isinstance(item, FileEvent): ...
            else: ...  # ProcessedBatch (DecodedBatch without a process callback)
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal

from operators.boxes import letterbox_geometry
from pipelines.batch_queue import BehindFirstQueue
from pipelines.preprocess import PreprocessSpec
from pipelines.segments import Segment, plan_segments
from pipelines.video_decoding import (
    DecodedBatch,
    DecoderKind,
    FileDecoder,
    SegmentBatch,
    SegmentDecodeError,
    SegmentDecoder,
    choose_decoder,
)
from streams.errors import DecodeError, EngineError, FoveaError, SourceError
from streams.frames import FrameResult
from streams.sources.files import VideoFile
from streams.sources.probe import BackgroundProbe, VideoInfo

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
    workers: int = 1  # inference threads (with a process callback)
    min_segment: int = 512  # shortest segment a file is cut into (frames; cuts at keyframes)


def probe_processes(sessions: int) -> int:
    """Probe worker processes for ``sessions`` decode sessions (:func:`streams.sources.probe.probe_many`
    decides whether the files are worth workers)."""
    return max(1, min(8, sessions))


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

    file: VideoFile | None
    results: list[FrameResult]


Processor = Callable[[DecodedBatch], list[FrameResult]]

_END = object()


@dataclass(frozen=True)
class _WorkerCrash:
    """An error that must stop the job (engine, sink, bug), carried to the consumer."""

    error: BaseException


@dataclass
class _FileState:
    info: VideoInfo
    kind: DecoderKind
    segments: int = 0
    frames: int = 0
    failed: bool = False


class FileBatchSource:
    """Decodes ``files`` with ``plan.sessions`` concurrent sessions; see module docstring."""

    def __init__(self, files: Sequence[VideoFile], plan: DecodePlan, queue_size: int | None = None,
                 process: Processor | None = None, infer_streams: Sequence[Any] = (),
                 probe: BackgroundProbe | None = None) -> None:
        self.files = list(files)
        if probe is not None and probe.paths != [f.path for f in self.files]:
            raise ValueError("the background probe was started for other files")
        self._probe = probe  # started by the caller for these files (else started on entering)
        self.plan = plan
        self.process = process
        self._infer_streams = list(infer_streams)  # torch.cuda.Stream per inference thread (else its own)
        self._queue_size = queue_size or max(2, 2 * plan.sessions)
        self._out: queue.Queue[object] = queue.Queue(maxsize=self._queue_size)
        # decoded batches waiting for inference: a free slot goes to the session furthest behind
        self._decoded = BehindFirstQueue(maxsize=self._queue_size)
        self._early: list[FileEvent] = []
        self._whole: queue.Queue[VideoFile] = queue.Queue()
        self._state: dict[str, _FileState] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._sessions_left = 0
        self._t0 = 0.0
        self._timings: list[tuple[float, float, int]] = []  # per session: first batch, end (s), frames
        # seconds summed over threads, for the end-of-job log line: where the time went
        self._acct: dict[str, float] = {"decode_cpu": 0.0, "decode_blocked": 0.0, "infer_cpu": 0.0,
                                        "infer_starved": 0.0, "infer_wall": 0.0}

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> FileBatchSource:
        self._t0 = time.monotonic()
        plan = self.plan
        h, w = plan.input_size
        t_probe = time.monotonic()
        probe = self._probe or BackgroundProbe([f.path for f in self.files], probe_processes(plan.sessions))
        infos = probe.result()
        log.info("probed %d files in %.2f s (waited %.2f s for it here)", len(self.files), probe.seconds,
                 time.monotonic() - t_probe)
        probed = list(zip(self.files, infos, strict=True))
        readable: list[tuple[VideoFile, VideoInfo, Any]] = []
        for f, res in probed:
            if isinstance(res, SourceError):
                self._early.append(FileEvent(f, "failed", error=res))
                continue
            kind = choose_decoder(res, plan.decode_device)
            self._state[f.source_id] = _FileState(res, kind)
            self._early.append(FileEvent(f, "started", expected_frames=res.num_frames, decoder=kind))
            geom = letterbox_geometry(res.width, res.height, w, h, plan.spec.options.resize)
            if kind == "pyav":
                self._whole.put(f)
            else:
                readable.append((f, res, geom))
        plans = plan_segments(readable, plan.sessions, min_chunk=plan.min_segment) if readable else []
        for segs in plans:
            for s in segs:
                self._state[s.file.source_id].segments += 1
        n = max(len(plans), min(plan.sessions, self._whole.qsize()))
        n = max(n, 1)
        self._sessions_left = n
        for i in range(n):
            t = threading.Thread(target=self._session, args=(plans[i] if i < len(plans) else [],),
                                 name=f"fovea-decode-{i}", daemon=True)
            self._threads.append(t)
        if self.process is not None:
            for i in range(max(1, plan.workers)):
                self._threads.append(threading.Thread(target=self._infer_worker, args=(i,),
                                                      name=f"fovea-infer-{i}", daemon=True))
            self._running = max(1, plan.workers)
        else:
            self._running = n
        for t in self._threads:
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
            for q in (self._out, self._decoded):  # unblock producers waiting on a full queue
                try:
                    while True:
                        q.get_nowait()
                except queue.Empty:
                    pass
            for t in self._threads:
                t.join(timeout=0.05)
        self._threads.clear()
        a = self._acct
        if a["infer_wall"] > 0:
            log.info("threads (s, summed): decode sessions %.1f CPU, %.1f blocked on a full queue; inference "
                     "%.1f CPU, %.1f waiting for batches, of %.1f", a["decode_cpu"], a["decode_blocked"],
                     a["infer_cpu"], a["infer_starved"], a["infer_wall"])

    def _account(self, **seconds: float) -> None:
        with self._lock:
            for k, v in seconds.items():
                self._acct[k] += v

    @property
    def session_timings(self) -> list[tuple[float, float, int]]:
        """Per finished decode session: (first batch, finished) in seconds after entering, frames."""
        with self._lock:
            return list(self._timings)

    def read(self) -> DecodedBatch | ProcessedBatch | FileEvent | None:
        """The next batch (or processed batch) or file event; ``None`` once all files are done."""
        if self._early:
            return self._early.pop(0)
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

    # -- plumbing -----------------------------------------------------------------------
    def _put(self, item: object) -> bool:
        """To the consumer (:meth:`read`); ``False`` if the source stopped first."""
        return self._until_stopped(lambda: self._out.put(item, timeout=0.1))

    def _put_decoded(self, item: object, left: float) -> bool:
        """To the inference threads, ranked by the session's frames ``left``; ``False`` if stopped first."""
        return self._until_stopped(lambda: self._decoded.put(item, timeout=0.1, left=left))

    def _until_stopped(self, put: Callable[[], None]) -> bool:
        """Retry ``put`` (raising :class:`queue.Full` on its timeout) until it succeeds or the source stops."""
        while not self._stop.is_set():
            try:
                put()
                return True
            except queue.Full:
                continue
        return False

    def _put_batch(self, batch: DecodedBatch) -> bool:
        if batch.stream is not None and self.process is not None:
            import torch

            # the inference stream waits for this batch only, not for later runs of the session
            batch.ready = torch.cuda.Event()
            batch.ready.record(torch.cuda.ExternalStream(batch.stream, device=self.plan.device_id))
        if self._local.first is None:
            self._local.first = time.monotonic() - self._t0
        self._local.frames += batch.num_valid
        t = time.monotonic()
        if self.process is not None:
            ok = self._put_decoded(batch, left=self._local.planned - self._local.frames)
        else:
            ok = self._put(batch)
        self._local.blocked += time.monotonic() - t
        return ok

    def _own_stream(self) -> tuple[int | None, Any]:
        """A CUDA stream for the calling thread: (raw handle, the object keeping it alive)."""
        if self.plan.device_id is None:
            return None, None
        import torch

        keep = torch.cuda.Stream(device=self.plan.device_id)
        return keep.cuda_stream, keep

    # -- decode sessions ----------------------------------------------------------------
    def _session(self, segments: list[Segment]) -> None:
        stream, keep = self._own_stream()
        self._local.first = None
        self._local.frames = 0
        self._local.planned = sum(s.frames for s in segments)  # grows by the whole files it takes
        self._local.blocked = 0.0
        cpu0 = time.thread_time()
        try:
            self._decode_segments(segments, stream)
            while not self._stop.is_set():
                try:
                    f = self._whole.get_nowait()
                except queue.Empty:
                    break
                self._local.planned += self._state[f.source_id].info.num_frames
                self._decode_whole(f, stream)
        except BaseException as e:  # a bug or a stop-the-job error: carried to the consumer
            self._put(_WorkerCrash(e))
        finally:
            self._account(decode_cpu=time.thread_time() - cpu0, decode_blocked=self._local.blocked)
            end = time.monotonic() - self._t0
            first = self._local.first
            with self._lock:
                self._timings.append((end if first is None else first, end, self._local.frames))
                self._sessions_left -= 1
                last = self._sessions_left == 0
            if last:
                t = self._timings
                log.info("%d decode sessions: first batches after %.2f-%.2f s, finished after %.2f-%.2f s, "
                         "%d-%d frames each", len(t), min(x[0] for x in t), max(x[0] for x in t),
                         min(x[1] for x in t), max(x[1] for x in t), min(x[2] for x in t), max(x[2] for x in t))
            if self.process is None:
                if not self._put(_END):
                    self._out.put(_END)
            elif last:
                for _ in range(max(1, self.plan.workers)):
                    if not self._put_decoded(_END, left=-math.inf):
                        self._decoded.put(_END, left=-math.inf)
            del keep

    def _decode_segments(self, segments: list[Segment], stream: int | None) -> None:
        todo = list(segments)
        while todo and not self._stop.is_set():
            group = _same_geometry_prefix(todo)
            todo = todo[len(group):]
            rest = self._run_group(group, stream)
            todo = rest + todo

    def _run_group(self, group: list[Segment], stream: int | None) -> list[Segment]:
        """Decode ``group`` with one pipeline; returns segments still to do after a failure."""
        plan = self.plan
        kind = self._state[group[0].file.source_id].kind
        dec = SegmentDecoder(group, plan.spec, plan.batch, kind, device_id=plan.device_id, stream=stream,
                             num_threads=plan.threads)
        try:
            with dec:
                for ev in dec:
                    if isinstance(ev, SegmentBatch):
                        if not self._put_batch(ev.batch):
                            return []
                    else:
                        self._segment_done(group[ev.index], ev.frames)
        except SegmentDecodeError as e:
            seg = group[e.index]
            self._file_failed(seg.file, e, e.frames)
            return group[e.index + 1:]
        except SourceError as e:  # the pipeline could not be built: find the culprit alone
            if len(group) > 1:
                log.warning("a reader over %d segments failed to open (%s); opening them one by one",
                            len(group), e.reason)
                for s in group:
                    self._run_group([s], stream)
                return []
            self._file_failed(group[0].file, SourceError(str(group[0].file.path), e.reason), 0)
        return []

    def _segment_done(self, seg: Segment, frames: int) -> None:
        with self._lock:
            st = self._state[seg.file.source_id]
            st.frames += frames
            st.segments -= 1
            finished = st.segments == 0 and not st.failed
            total = st.frames
        if finished:
            self._put(FileEvent(seg.file, "done", frames=total, expected_frames=st.info.num_frames,
                                decoder=st.kind))

    def _file_failed(self, f: VideoFile, error: SourceError, frames: int) -> None:
        with self._lock:
            st = self._state[f.source_id]
            first = not st.failed
            st.failed = True
            st.frames += frames
            total = st.frames
        if first:
            self._put(FileEvent(f, "failed", frames=total, expected_frames=st.info.num_frames,
                                decoder=st.kind, error=error))

    def _decode_whole(self, f: VideoFile, stream: int | None) -> None:
        """One file through PyAV (codecs DALI's reader does not decode here)."""
        plan = self.plan
        st = self._state[f.source_id]
        info = st.info
        h, w = plan.input_size
        geom = letterbox_geometry(info.width, info.height, w, h, plan.spec.options.resize)
        decoder = FileDecoder(f, info, plan.spec, geom, plan.batch, device_id=plan.device_id, stream=stream,
                              num_threads=plan.threads)
        try:
            with decoder:
                for batch in decoder:
                    if not self._put_batch(batch):
                        return
        except SourceError as e:
            self._file_failed(f, e, decoder.frames_decoded)
            return
        except FoveaError:
            raise  # not the file's fault
        except Exception as e:  # a DALI/FFmpeg failure we did not foresee: isolate the file
            log.exception("%s: unexpected decode failure", f.path)
            self._file_failed(f, DecodeError(str(f.path), f"{type(e).__name__}: {str(e).strip()[:300]}"),
                              decoder.frames_decoded)
            return
        self._put(FileEvent(f, "done", frames=decoder.frames_decoded, expected_frames=info.num_frames,
                            decoder=st.kind))

    # -- inference workers --------------------------------------------------------------
    def _infer_worker(self, index: int) -> None:
        if index < len(self._infer_streams):
            keep = self._infer_streams[index]
            stream = keep.cuda_stream
        else:
            stream, keep = self._own_stream()
        cpu0, wall0, starved = time.thread_time(), time.monotonic(), 0.0
        try:
            while not self._stop.is_set():
                t = time.monotonic()
                try:
                    item = self._decoded.get(timeout=0.1)
                except queue.Empty:
                    starved += time.monotonic() - t
                    continue
                starved += time.monotonic() - t
                if item is _END:
                    break
                assert isinstance(item, DecodedBatch)
                batch = item
                if keep is not None and batch.stream is not None:
                    if batch.ready is not None:
                        keep.wait_event(batch.ready)
                    else:
                        import torch

                        keep.wait_stream(torch.cuda.ExternalStream(batch.stream, device=keep.device))
                    batch = replace(batch, stream=stream)
                results = self._run_process(batch)
                del batch, item  # DALI's buffers go back: the detections are on the host
                if not self._put(ProcessedBatch(None, results)):
                    break
        except BaseException as e:
            self._put(_WorkerCrash(e))
        finally:
            self._account(infer_cpu=time.thread_time() - cpu0, infer_starved=starved,
                          infer_wall=time.monotonic() - wall0)
            if not self._put(_END):
                self._out.put(_END)
            del keep

    def _run_process(self, batch: DecodedBatch) -> list[FrameResult]:
        assert self.process is not None
        try:
            return self.process(batch)
        except FoveaError:
            raise
        except Exception as e:  # inference failures are not the file's fault
            where = batch.source.path if batch.source is not None else "a live batch"
            raise EngineError(f"inference failed on {where}: {type(e).__name__}: {e}") from e


def _same_geometry_prefix(items: list[Segment]) -> list[Segment]:
    """The leading segments sharing the first one's geometry (one pipeline reads them)."""
    n = 1
    while n < len(items) and items[n].geometry == items[0].geometry:
        n += 1
    return items[:n]
