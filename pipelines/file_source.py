"""The archived-files source: balanced decode sessions, nothing else.

1. Every file is probed (PyAV; in worker processes for large sets) before decoding starts
   (or by a :class:`streams.sources.probe.BackgroundProbe` the caller started earlier, as a
   file job does while it loads the model): unreadable files become
   ``FileEvent(kind="failed")`` at once, the others ``started`` with the frame count their
   header announces (:attr:`~streams.sources.probe.VideoInfo.expected_frames`).
2. Files DALI's reader decodes (NVDEC on the GPU, VP8/VP9/MJPEG on the CPU) are cut at
   keyframes into segments dealt out evenly to ``plan.sessions`` decode sessions
   (:mod:`pipelines.segments`). Each session reads its segments through one long-lived
   reader pipeline (:class:`pipelines.video_decoding.SegmentDecoder`): no pipeline build per
   file, and the sessions finish together instead of idling behind the longest file.
   Files only PyAV decodes are taken whole, one at a time, by sessions that are free.
3. Decoded batches wait in one bounded queue, so decoding runs ahead of inference by a
   bounded amount; a free slot goes to the session with the most frames left
   (:class:`pipelines.batch_queue.BehindFirstQueue`), so that when inference is the slower
   side the sessions still finish together. The inference pool's threads read them
   (:meth:`FileDecodeSource.open_reader`, the :class:`~pipelines.inference_pool.BatchFeed`
   contract), each making its own CUDA stream wait for the batch's CUDA event: no host
   synchronisation.

Events tell the job what happened to each file, in this order: ``started``; one
``segment`` per segment when it ends (its first frame, planned and decoded frames, so the
job knows which frame indices will never come); then ``done`` or ``failed`` once all of
the file's segments have ended, with the frames decoded in all. A segment that fails to
decode fails its file (the reason goes with ``failed``); the session rebuilds its
pipeline for its remaining segments (DALI pipelines are invalid after a decode error), so
the job goes on. Batches of one file can leave out of frame order (its segments are
decoded concurrently); each row carries its frame index and pts.

Per-file bookkeeping is keyed on the :class:`~streams.sources.files.VideoFile` itself.

Usage::

    with FileDecodeSource(files, plan) as source:
        with InferencePool(stage, source, streams) as pool: ...
        source.poll_events()        # FileEvent list
    # or, without inference (tests, the decode ceiling):
    with FileDecodeSource(files, plan) as source:
        while (item := source.read()) is not None: ...   # DecodedBatch | FileEvent
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal

from operators.boxes import letterbox_geometry
from pipelines.batch_queue import BehindFirstQueue, join_draining
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
from streams.errors import DecodeError, FoveaError, SourceError
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
    min_segment: int = 512  # shortest segment a file is cut into (frames; cuts at keyframes)


def probe_processes(sessions: int) -> int:
    """Probe worker processes for ``sessions`` decode sessions (:func:`streams.sources.probe.probe_many`
    decides whether the files are worth workers)."""
    return max(1, min(8, sessions))


@dataclass(frozen=True)
class FileEvent:
    """What happened to a file; see the module docstring for the order.

    ``frames``: ``segment``: frames the segment decoded; ``done``/``failed``: frames the
    file decoded in all. ``expected_frames``: the probe's count (``segment``: the segment's
    planned frames). ``start``: ``segment``: its first frame index.
    """

    file: VideoFile
    kind: Literal["started", "segment", "done", "failed"]
    frames: int = 0
    expected_frames: int = 0
    decoder: str = ""
    error: SourceError | None = None
    start: int = 0


@dataclass(frozen=True)
class _Crash:
    """An error that must stop the job (engine, sink, bug), carried to the consumer."""

    error: BaseException


_END = object()


@dataclass
class _FileState:
    info: VideoInfo
    kind: DecoderKind
    segments: int = 0  # not ended yet
    frames: int = 0
    error: SourceError | None = None


@dataclass
class _SessionLog:
    """One decode session's own figures (its thread only writes them)."""

    planned: int
    first: float | None = None
    frames: int = 0
    blocked: float = 0.0


class FileDecodeSource:
    """Decodes ``files`` with ``plan.sessions`` concurrent sessions; see the module docstring."""

    def __init__(self, files: Sequence[VideoFile], plan: DecodePlan, queue_size: int | None = None,
                 probe: BackgroundProbe | None = None) -> None:
        self.files = list(files)
        if probe is not None and probe.paths != [f.path for f in self.files]:
            raise ValueError("the background probe was started for other files")
        self._probe = probe  # started by the caller for these files (else started on entering)
        self.plan = plan
        self._queue_size = queue_size or max(2, 2 * plan.sessions)
        # decoded batches waiting for inference: a free slot goes to the session furthest behind
        self._decoded = BehindFirstQueue(maxsize=self._queue_size)
        self._events: queue.Queue[FileEvent | _Crash] = queue.Queue()
        self._whole: queue.Queue[VideoFile] = queue.Queue()
        self._state: dict[VideoFile, _FileState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sessions_left = 0
        self._t0 = 0.0
        self._timings: list[tuple[float, float, int]] = []  # per session: first batch, end (s), frames
        self._decode_cpu = 0.0
        self._decode_blocked = 0.0
        self._direct: _FileReader | None = None
        self._pending: deque[FileEvent] = deque()  # events read but not yet returned by read()

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> FileDecodeSource:
        self._t0 = time.monotonic()
        plan = self.plan
        h, w = plan.input_size
        t_probe = time.monotonic()
        probe = self._probe or BackgroundProbe([f.path for f in self.files], probe_processes(plan.sessions))
        infos = probe.result()
        log.info("probed %d files in %.2f s (waited %.2f s for it here)", len(self.files), probe.seconds,
                 time.monotonic() - t_probe)
        readable: list[tuple[VideoFile, VideoInfo, Any]] = []
        for f, res in zip(self.files, infos, strict=True):
            if isinstance(res, SourceError):
                self._events.put(FileEvent(f, "failed", error=res))
                continue
            kind = choose_decoder(res, plan.decode_device)
            self._state[f] = _FileState(res, kind)
            self._events.put(FileEvent(f, "started", expected_frames=res.expected_frames, decoder=kind))
            geom = letterbox_geometry(res.width, res.height, w, h, plan.spec.options.resize)
            if kind == "pyav":
                self._state[f].segments = 1
                self._whole.put(f)
            else:
                readable.append((f, res, geom))
        plans = plan_segments(readable, plan.sessions, min_chunk=plan.min_segment) if readable else []
        for segs in plans:
            for s in segs:
                self._state[s.file].segments += 1
        n = max(1, len(plans), min(plan.sessions, self._whole.qsize()))
        self._sessions_left = n
        for i in range(n):
            t = threading.Thread(target=self._session, args=(plans[i] if i < len(plans) else [],),
                                 name=f"fovea-decode-{i}", daemon=True)
            self._threads.append(t)
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
        join_draining(self._threads, self._decoded)
        self._threads.clear()
        if self._decode_cpu > 0:
            log.info("decode sessions (s, summed): %.1f CPU, %.1f blocked on a full queue",
                     self._decode_cpu, self._decode_blocked)

    @property
    def session_timings(self) -> list[tuple[float, float, int]]:
        """Per finished decode session: (first batch, finished) in seconds after entering, frames."""
        with self._lock:
            return list(self._timings)

    # -- what the job reads ---------------------------------------------------------------
    def open_reader(self, index: int, stream: Any, stop: threading.Event) -> _FileReader:
        """The :class:`~pipelines.inference_pool.BatchFeed` side: batches for one inference thread."""
        return _FileReader(self._decoded, stream, stop)

    def poll_events(self) -> list[FileEvent]:
        """File events so far (never blocks); raises what stopped a decode session."""
        out: list[FileEvent] = []
        with contextlib.suppress(queue.Empty):
            while True:
                ev = self._events.get_nowait()
                if isinstance(ev, _Crash):
                    self._stop.set()
                    raise ev.error
                out.append(ev)
        return out

    def read(self) -> DecodedBatch | FileEvent | None:
        """Batches and events in one stream, for a consumer without an inference pool;
        ``None`` once every session has finished and every event was read."""
        if self._direct is None:
            self._direct = _FileReader(self._decoded, None, self._stop)
        while True:
            self._pending.extend(self.poll_events())
            if self._pending:
                return self._pending.popleft()
            if self._direct.finished:
                return None
            item = self._direct.read(timeout=0.05)
            if isinstance(item, DecodedBatch):
                return item

    # -- decode sessions ----------------------------------------------------------------
    def _session(self, segments: list[Segment]) -> None:
        stream, keep = self._own_stream()
        slog = _SessionLog(planned=sum(s.frames for s in segments))  # grows by the whole files it takes
        cpu0 = time.thread_time()
        try:
            self._decode_segments(segments, stream, slog)
            while not self._stop.is_set():
                try:
                    f = self._whole.get_nowait()
                except queue.Empty:
                    break
                slog.planned += self._state[f].info.num_frames
                self._decode_whole(f, stream, slog)
        except BaseException as e:  # a bug or a stop-the-job error: carried to the consumer
            self._events.put(_Crash(e))
        finally:
            end = time.monotonic() - self._t0
            with self._lock:
                self._decode_cpu += time.thread_time() - cpu0
                self._decode_blocked += slog.blocked
                self._timings.append((end if slog.first is None else slog.first, end, slog.frames))
                self._sessions_left -= 1
                last = self._sessions_left == 0
            if last:
                t = self._timings
                log.info("%d decode sessions: first batches after %.2f-%.2f s, finished after %.2f-%.2f s, "
                         "%d-%d frames each", len(t), min(x[0] for x in t), max(x[0] for x in t),
                         min(x[1] for x in t), max(x[1] for x in t), min(x[2] for x in t), max(x[2] for x in t))
                self._until_stopped(lambda: self._decoded.put(_END, timeout=0.1, left=-math.inf))
            del keep

    def _until_stopped(self, put: Callable[[], None]) -> bool:
        """Retry ``put`` (raising :class:`queue.Full` on its timeout) until it succeeds or the source stops."""
        while not self._stop.is_set():
            try:
                put()
                return True
            except queue.Full:
                continue
        return False

    def _put_batch(self, batch: DecodedBatch, slog: _SessionLog) -> bool:
        if batch.stream is not None:
            import torch

            # the inference stream waits for this batch only, not for later runs of the session
            batch.ready = torch.cuda.Event()
            batch.ready.record(torch.cuda.ExternalStream(batch.stream, device=self.plan.device_id))
        if slog.first is None:
            slog.first = time.monotonic() - self._t0
        slog.frames += batch.num_valid
        t = time.monotonic()
        left = slog.planned - slog.frames
        ok = self._until_stopped(lambda: self._decoded.put(batch, timeout=0.1, left=left))
        slog.blocked += time.monotonic() - t
        return ok

    def _own_stream(self) -> tuple[int | None, Any]:
        """A CUDA stream for the calling thread: (raw handle, the object keeping it alive)."""
        if self.plan.device_id is None:
            return None, None
        import torch

        keep = torch.cuda.Stream(device=self.plan.device_id)
        return keep.cuda_stream, keep

    def _decode_segments(self, segments: list[Segment], stream: int | None, slog: _SessionLog) -> None:
        todo = list(segments)
        while todo and not self._stop.is_set():
            group = _same_geometry_prefix(todo)
            todo = todo[len(group):]
            rest = self._run_group(group, stream, slog)
            todo = rest + todo

    def _run_group(self, group: list[Segment], stream: int | None, slog: _SessionLog) -> list[Segment]:
        """Decode ``group`` with one pipeline; returns segments still to do after a failure."""
        plan = self.plan
        kind = self._state[group[0].file].kind
        dec = SegmentDecoder(group, plan.spec, plan.batch, kind, device_id=plan.device_id, stream=stream,
                             num_threads=plan.threads)
        try:
            with dec:
                for ev in dec:
                    if isinstance(ev, SegmentBatch):
                        if not self._put_batch(ev.batch, slog):
                            return []
                    else:
                        seg = group[ev.index]
                        self._segment_ended(seg.file, seg.start, seg.frames, ev.frames)
        except SegmentDecodeError as e:
            seg = group[e.index]
            self._segment_ended(seg.file, seg.start, seg.frames, e.frames, e)
            return group[e.index + 1:]
        except SourceError as e:  # the pipeline could not be built: find the culprit alone
            if len(group) > 1:
                log.warning("a reader over %d segments failed to open (%s); opening them one by one",
                            len(group), e.reason)
                for s in group:
                    self._run_group([s], stream, slog)
                return []
            seg = group[0]
            self._segment_ended(seg.file, seg.start, seg.frames, 0, SourceError(str(seg.file.path), e.reason))
        return []

    def _segment_ended(self, f: VideoFile, start: int, planned: int, frames: int,
                       error: SourceError | None = None) -> None:
        """One segment of ``f`` ended (``error``: it failed); the file's last one ends the file."""
        with self._lock:  # events of one file stay in order: put under the lock
            st = self._state[f]
            st.frames += frames
            st.segments -= 1
            if error is not None and st.error is None:
                st.error = error
            self._events.put(FileEvent(f, "segment", frames=frames, expected_frames=planned, start=start,
                                       decoder=st.kind))
            if st.segments == 0:
                self._events.put(FileEvent(f, "failed" if st.error is not None else "done", frames=st.frames,
                                           expected_frames=st.info.expected_frames, decoder=st.kind, error=st.error))

    def _decode_whole(self, f: VideoFile, stream: int | None, slog: _SessionLog) -> None:
        """One file through PyAV (codecs DALI's reader does not decode here)."""
        plan = self.plan
        info = self._state[f].info
        h, w = plan.input_size
        geom = letterbox_geometry(info.width, info.height, w, h, plan.spec.options.resize)
        decoder = FileDecoder(f, info, plan.spec, geom, plan.batch, device_id=plan.device_id, stream=stream,
                              num_threads=plan.threads)
        error: SourceError | None = None
        try:
            with decoder:
                for batch in decoder:
                    if not self._put_batch(batch, slog):
                        return
        except SourceError as e:
            error = e
        except FoveaError:
            raise  # not the file's fault
        except Exception as e:  # a DALI/FFmpeg failure we did not foresee: isolate the file
            log.exception("%s: unexpected decode failure", f.path)
            error = DecodeError(str(f.path), f"{type(e).__name__}: {str(e).strip()[:300]}")
        self._segment_ended(f, 0, info.num_frames, decoder.frames_decoded, error)


class _FileReader:
    """Decoded batches for one consumer; see :meth:`FileDecodeSource.open_reader`."""

    def __init__(self, decoded: BehindFirstQueue, stream: Any, stop: threading.Event) -> None:
        self._decoded = decoded
        self._stream = stream  # torch.cuda.Stream of the inference thread, or None
        self._stop = stop
        self.finished = False

    def read(self, timeout: float | None = None) -> DecodedBatch | None:
        """The next batch, ordered on this reader's stream; ``None`` at the end (or on stop,
        or after ``timeout`` seconds without a batch when one is given). A file's batch never
        fails alone (:class:`~pipelines.inference_pool.FailedBatch` is live's): a decode error
        fails the file, through its events."""
        waited = 0.0
        while not self._stop.is_set() and not self.finished:
            try:
                item = self._decoded.get(timeout=0.1 if timeout is None else min(0.1, timeout))
            except queue.Empty:
                waited += 0.1
                if timeout is not None and waited >= timeout:
                    return None
                continue
            if item is _END:
                self.finished = True
                # every reader must see the end: leave it for the next one (the sessions are done,
                # so there is room)
                with contextlib.suppress(queue.Full):
                    self._decoded.put(_END, timeout=0.1, left=-math.inf)
                return None
            assert isinstance(item, DecodedBatch)
            return self._on_my_stream(item)
        return None

    def _on_my_stream(self, batch: DecodedBatch) -> DecodedBatch:
        s = self._stream
        if s is None or batch.stream is None:
            return batch
        if batch.ready is not None:
            s.wait_event(batch.ready)
        else:
            import torch

            s.wait_stream(torch.cuda.ExternalStream(batch.stream, device=s.device))
        return replace(batch, stream=s.cuda_stream)


def _same_geometry_prefix(items: list[Segment]) -> list[Segment]:
    """The leading segments sharing the first one's geometry (one pipeline reads them)."""
    n = 1
    while n < len(items) and items[n].geometry == items[0].geometry:
        n += 1
    return items[:n]
