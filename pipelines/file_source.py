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
   Files only PyAV decodes are taken whole, one at a time, by sessions that are free (a
   resumed one from the keyframe before where it continues: :mod:`pipelines.pyav_frames`).
   Each file's frames go onto its canvas (:meth:`DecodePlan.geometry`: the model input, or
   the smallest stride-aligned rectangle around them for a dynamic-shape export); a
   segment's pipeline reads segments of one geometry, so a batch holds one file's frames
   and has one shape. Which canvas each frame size got is logged once per job.
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

A watchdog ends a stuck decode: a session that yields no frame for ``plan.stall_timeout_s``
seconds while decoding (waiting for room in the queue does not count) fails the file it is
in with the frames it did decode, and a new session takes over its remaining segments. A
thread stuck in native code cannot be stopped, so the stuck one is left behind (its later
output, if any, is dropped) and named when the source closes.

When a file's decoding has ended, two more things fail it, with the frames it decoded: a
frame size change the probe found (:attr:`~streams.sources.probe.VideoInfo.resized`: only
the frames before it are decoded, as one file is decoded at one size), and a file that
changed on disk since it was probed (one still being written: its output is a snapshot).

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
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from operators.boxes import LetterboxGeometry
from pipelines.batch_queue import BehindFirstQueue
from pipelines.preprocess import PreprocessSpec, canvas_geometry
from pipelines.pyav_frames import planned_range
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
    """How files are decoded: devices, model input, batch and concurrency.

    ``stride``: each file's frames go onto the smallest ``stride``-aligned rectangle within
    ``input_size`` that holds them letterboxed (:func:`pipelines.preprocess.canvas_geometry`;
    a dynamic-shape export, :func:`engines.model_info.rect_canvas_stride`); ``None``: onto the
    whole ``input_size``. One file has one canvas, so each batch is one tensor shape.
    """

    spec: PreprocessSpec
    input_size: tuple[int, int]  # (height, width)
    batch: int
    decode_device: Literal["cpu", "gpu"]
    device_id: int | None  # CUDA device for decoding/preprocessing; None = CPU
    sessions: int = 1
    threads: int = 2
    min_segment: int = 512  # shortest segment a file is cut into (frames; cuts at keyframes)
    stall_timeout_s: float = 60.0  # a session yielding no frame this long is abandoned (decode.stall_timeout_s)
    stride: int | None = None  # rectangle canvases (see above); None: the square input_size

    def geometry(self, src_w: int, src_h: int) -> LetterboxGeometry:
        """Where a ``src_w x src_h`` frame goes in the model input (its canvas and placement)."""
        return canvas_geometry(src_w, src_h, self.input_size, self.spec.options.resize, self.stride)


def canvases(plan: DecodePlan, infos: Sequence[VideoInfo | SourceError]) -> Counter[tuple[int, int]]:
    """Frames per model-input canvas ``(h, w)`` over the probed files ``infos`` (failed probes
    left out): the input shapes a job's batches will have."""
    out: Counter[tuple[int, int]] = Counter()
    for info in infos:
        if isinstance(info, VideoInfo):
            g = plan.geometry(info.width, info.height)
            out[(g.dst_h, g.dst_w)] += info.num_frames
    return out


def _log_canvases(plan: DecodePlan, infos: Sequence[VideoInfo]) -> None:
    """Which canvas each frame size got, once per job (INFO)."""
    sizes = Counter((i.width, i.height) for i in infos)
    if not sizes:
        return
    parts = []
    for (w, h), n in sorted(sizes.items(), key=lambda kv: -kv[1]):
        g = plan.geometry(w, h)
        parts.append(f"{w}x{h} -> {g.dst_w}x{g.dst_h} ({n} file{'s' if n > 1 else ''})")
    how = (f"the smallest {plan.stride}-aligned rectangle within" if plan.stride is not None
           else "the whole")
    log.info("model input canvases (w x h; %s %dx%d): %s", how, plan.input_size[1], plan.input_size[0],
             ", ".join(parts))


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


class _Ledger:
    """What happened to each file: its state, and its events in order (see the module docstring)."""

    def __init__(self) -> None:
        self.state: dict[VideoFile, _FileState] = {}
        self.events: queue.Queue[FileEvent | _Crash] = queue.Queue()
        self._lock = threading.Lock()

    def segment_ended(self, f: VideoFile, start: int, planned: int, frames: int,
                      error: SourceError | None = None) -> None:
        """One segment of ``f`` ended (``error``: it failed); the file's last one ends the file."""
        with self._lock:  # events of one file stay in order: put under the lock
            st = self.state[f]
            st.frames += frames
            st.segments -= 1
            if error is not None and st.error is None:
                st.error = error
            self.events.put(FileEvent(f, "segment", frames=frames, expected_frames=planned, start=start,
                                      decoder=st.kind))
            if st.segments == 0:
                err = _file_end_error(f, st)
                self.events.put(FileEvent(f, "failed" if err is not None else "done", frames=st.frames,
                                          expected_frames=st.info.expected_frames, decoder=st.kind, error=err))


def _file_end_error(f: VideoFile, st: _FileState) -> SourceError | None:
    """What fails a file whose segments have all ended: the size change the probe found (the
    cause of any decode error at it), a decode error, or a change on disk since the probe
    (noted after either)."""
    info, path = st.info, str(f.path)
    changed = _changed_on_disk(f.path, info)
    if info.resized is not None:
        at, w, h = info.resized
        reason = (f"the frame size changes mid-stream, from {info.width}x{info.height} to {w}x{h} at frame {at}: "
                  f"the {st.frames} frames before it were processed (a file is decoded at one frame size)")
        if st.error is not None and st.frames < at:
            reason += f"; decoding also failed before it: {st.error.reason}"
        return DecodeError(path, reason if changed is None else f"{reason} ({changed})")
    if st.error is not None:
        if changed is None:
            return st.error
        return type(st.error)(st.error.source, f"{st.error.reason} ({changed})")
    if changed is not None:
        return SourceError(path, f"{changed}: it is still being written, or was replaced; the {st.frames} frames "
                                 "decoded were processed, run it again once it is complete")
    return None


def _changed_on_disk(path: Path, info: VideoInfo) -> str | None:
    """How ``path`` differs from what the probe saw (``None``: it does not, or is unknown)."""
    if info.size < 0:
        return None
    try:
        st = path.stat()
    except OSError as e:
        return f"the file is gone since it was probed ({e.strerror or e})"
    if st.st_size != info.size:
        return f"the file changed while it was read ({info.size} bytes when probed, {st.st_size} now)"
    if st.st_mtime_ns != info.mtime_ns:
        return "the file was modified while it was read"
    return None


@dataclass
class _Session:
    """A decode session as :class:`_Sessions` sees it (its fields change under their lock).

    ``todo``: its segments not ended yet, in order (the first is being decoded while a reader
    runs); ``group``: how many of them the current reader reads, ``opened``: whether it
    has yielded anything yet; ``alone``: how many of them to read one reader each (a reader
    over several stalled before its first frame: the culprit is found alone); ``whole``: the
    file it decodes with PyAV now; ``frames``: frames of the first segment / the whole file
    handed on so far; ``since``: when it last showed progress while decoding (``None`` while
    it waits for room in the queue, or once it has finished).
    """

    index: int
    todo: deque[Segment]
    alone: int = 0
    group: int = 0
    opened: bool = False
    whole: VideoFile | None = None
    frames: int = 0
    since: float | None = None
    abandoned: bool = False
    thread: threading.Thread | None = None


class _Sessions:
    """The decode sessions' shared state and the watchdog that ends a stuck one.

    Every change to a session, and every segment or file it ends, goes through here under
    one lock, so the watchdog abandoning a session and the session ending its segment never
    both happen: whatever an abandoned session does afterwards is dropped.
    """

    def __init__(self, ledger: _Ledger, timeout: float, run: Callable[[_Session], None]) -> None:
        self.lock = threading.Lock()  # taken before the ledger's
        self.left = 0  # sessions still to finish (a successor takes an abandoned session's place)
        self._all: list[_Session] = []
        self._ledger = ledger
        self._timeout = timeout
        self._run = run
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="fovea-decode-watchdog", daemon=True)

    def start(self, plans: list[deque[Segment]]) -> None:
        """One session per segment list, and the watchdog."""
        with self.lock:
            self.left = len(plans)
            for todo in plans:
                self._start(todo)
        self._watchdog.start()

    def close(self, drain: Callable[[], None]) -> None:
        """Wait for the sessions (told to stop already) to end or be abandoned, calling ``drain``
        meanwhile (so none stays blocked on a full queue); then stop the watchdog and name the
        abandoned sessions still stuck."""
        while True:
            with self.lock:
                live = [s.thread for s in self._all if not s.abandoned and s.thread is not None and s.thread.is_alive()]
            if not live:
                break
            drain()
            for t in live:
                t.join(timeout=0.05)
        self._stop.set()
        with self.lock:
            stuck = [s.thread.name for s in self._all if s.abandoned and s.thread is not None and s.thread.is_alive()]
        if self._watchdog.ident is not None:
            self._watchdog.join()
        if stuck:
            log.warning("%d abandoned decode sessions are still stuck in their decoder (%s); they are left "
                        "behind and end with the process", len(stuck), ", ".join(stuck))

    def _start(self, todo: deque[Segment], alone: int = 0) -> None:  # with the lock held
        sess = _Session(len(self._all), todo, alone=alone, since=time.monotonic())
        sess.thread = threading.Thread(target=self._run, args=(sess,), name=f"fovea-decode-{sess.index}",
                                       daemon=True)
        self._all.append(sess)
        sess.thread.start()

    # -- what a session reports ------------------------------------------------------------
    def alive(self, sess: _Session, progress: bool = True) -> bool:
        """False once ``sess`` was abandoned; else notes its progress (now)."""
        with self.lock:
            if sess.abandoned:
                return False
            if progress:
                sess.since = time.monotonic()
            return True

    def handing_on(self, sess: _Session, frames: int) -> bool:
        """``sess`` hands on a batch of ``frames`` (it may wait for room: not a stall); False
        once it was abandoned (drop the batch)."""
        with self.lock:
            if sess.abandoned:
                return False
            sess.since = None
            sess.frames += frames
            return True

    def next_group(self, sess: _Session) -> list[Segment]:
        """The segments ``sess`` reads with its next reader (none left: empty)."""
        with self.lock:
            if sess.abandoned or not sess.todo:
                return []
            if sess.alone > 0:
                sess.alone -= 1
                group = [sess.todo[0]]
            else:
                group = _same_geometry_prefix(list(sess.todo))
            sess.group, sess.opened = len(group), False
            return group

    def segment_ended(self, sess: _Session, frames: int, error: SourceError | None = None) -> bool:
        """The first segment of ``sess.todo`` ended; False when ``sess`` was abandoned (nothing done)."""
        with self.lock:
            if sess.abandoned or not sess.todo:
                return False
            seg = sess.todo.popleft()
            sess.frames, sess.since = 0, time.monotonic()
            self._ledger.segment_ended(seg.file, seg.start, seg.frames, frames, error)
            return True

    def whole_started(self, sess: _Session, f: VideoFile) -> bool:
        with self.lock:
            if sess.abandoned:
                return False
            sess.whole, sess.frames, sess.since = f, 0, time.monotonic()
            return True

    def whole_ended(self, sess: _Session, frames: int, error: SourceError | None) -> None:
        with self.lock:
            f = sess.whole
            if sess.abandoned or f is None:
                return
            sess.whole, sess.since = None, time.monotonic()
            self._ledger.segment_ended(f, *planned_range(f, self._ledger.state[f].info), frames, error)

    def finished(self, sess: _Session) -> bool | None:
        """``sess`` ended: whether it was the last one (``None``: it had been abandoned)."""
        with self.lock:
            sess.since = None
            if sess.abandoned:
                return None
            self.left -= 1
            return self.left == 0

    # -- the watchdog ------------------------------------------------------------------------
    def _watch(self) -> None:
        """Abandon sessions that show no progress for ``timeout`` seconds while decoding."""
        while not self._stop.wait(min(1.0, self._timeout / 4)):
            now = time.monotonic()
            with self.lock:
                if self.left == 0:
                    return
                for sess in list(self._all):
                    if not sess.abandoned and sess.since is not None and now - sess.since > self._timeout:
                        self._abandon(sess, now - sess.since)

    def _abandon(self, sess: _Session, idle: float) -> None:  # with the lock held
        """Fail what ``sess`` decodes, hand its other segments to a new session."""
        sess.abandoned = True
        reason = (f"decoding stalled: no frame for {idle:.0f} s (decode.stall_timeout_s: {self._timeout:g}) "
                  f"after {sess.frames} frames; the decoder was abandoned")
        what, alone = "between files", 0
        if sess.whole is not None:
            f = sess.whole
            what = str(f.path)
            self._ledger.segment_ended(f, *planned_range(f, self._ledger.state[f].info), sess.frames,
                                       DecodeError(str(f.path), reason))
        elif sess.group > 1 and not sess.opened:  # which of the reader's files? read them one by one
            what, alone = f"a reader over {sess.group} segments, before its first frame", sess.group
        elif sess.todo:
            seg = sess.todo.popleft()
            what = f"{seg.file.path} (frames {seg.start}-{seg.end - 1})"
            self._ledger.segment_ended(seg.file, seg.start, seg.frames, sess.frames,
                                       DecodeError(str(seg.file.path), reason))
        log.error("decode session %d stalled on %s: no frame for %.0f s (decode.stall_timeout_s: %g); abandoning "
                  "it, a new session takes its %d remaining segments", sess.index, what, idle, self._timeout,
                  len(sess.todo))
        rest, sess.todo = sess.todo, deque()
        self._start(rest, alone)


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
        if plan.stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {plan.stall_timeout_s}")
        self.files = list(files)
        if probe is not None and probe.paths != [f.path for f in self.files]:
            raise ValueError("the background probe was started for other files")
        self._probe = probe  # started by the caller for these files (else started on entering)
        self.plan = plan
        self._queue_size = queue_size or max(2, 2 * plan.sessions)
        # decoded batches waiting for inference: a free slot goes to the session furthest behind
        self._decoded = BehindFirstQueue(maxsize=self._queue_size)
        self._ledger = _Ledger()
        self._sessions = _Sessions(self._ledger, plan.stall_timeout_s, self._session)
        self._whole: queue.Queue[VideoFile] = queue.Queue()
        self._stop = threading.Event()
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
        t_probe = time.monotonic()
        probe = self._probe or BackgroundProbe([f.path for f in self.files], probe_processes(plan.sessions))
        infos = probe.result()
        log.info("probed %d files in %.2f s (waited %.2f s for it here)", len(self.files), probe.seconds,
                 time.monotonic() - t_probe)
        _log_canvases(plan, [i for i in infos if isinstance(i, VideoInfo)])
        ledger = self._ledger
        readable: list[tuple[VideoFile, VideoInfo, Any]] = []
        for f, res in zip(self.files, infos, strict=True):
            if isinstance(res, SourceError):
                ledger.events.put(FileEvent(f, "failed", error=res))
                continue
            kind = choose_decoder(res, plan.decode_device)
            ledger.state[f] = _FileState(res, kind)
            ledger.events.put(FileEvent(f, "started", expected_frames=res.expected_frames, decoder=kind))
            geom = plan.geometry(res.width, res.height)
            if kind == "pyav":
                ledger.state[f].segments = 1
                self._whole.put(f)
            elif res.resized is not None and res.resized[0] == 0:  # nothing before the size change
                ledger.state[f].segments = 1
                ledger.segment_ended(f, 0, res.num_frames, 0)
            else:  # the reader decodes the frames before a size change only
                readable.append((f, _before_resize(res), geom))
        plans = plan_segments(readable, plan.sessions, min_chunk=plan.min_segment) if readable else []
        for segs in plans:
            for s in segs:
                ledger.state[s.file].segments += 1
        n = max(1, len(plans), min(plan.sessions, self._whole.qsize()))
        self._sessions.start([deque(plans[i] if i < len(plans) else []) for i in range(n)])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._sessions.close(self._drop_decoded)
        if self._decode_cpu > 0:
            log.info("decode sessions (s, summed): %.1f CPU, %.1f blocked on a full queue",
                     self._decode_cpu, self._decode_blocked)

    def _drop_decoded(self) -> None:
        """Empty the queue of decoded batches (the consumer has stopped)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._decoded.get_nowait()

    @property
    def session_timings(self) -> list[tuple[float, float, int]]:
        """Per finished decode session: (first batch, finished) in seconds after entering, frames."""
        with self._sessions.lock:
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
                ev = self._ledger.events.get_nowait()
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
    def _session(self, sess: _Session) -> None:
        stream, keep = self._own_stream()
        slog = _SessionLog(planned=sum(s.frames for s in sess.todo))  # grows by the whole files it takes
        cpu0 = time.thread_time()
        sessions = self._sessions
        try:
            while not self._stop.is_set() and (group := sessions.next_group(sess)):
                self._run_group(group, sess, stream, slog)
            while not self._stop.is_set() and sessions.alive(sess):
                try:
                    f = self._whole.get_nowait()
                except queue.Empty:
                    break
                slog.planned += planned_range(f, self._ledger.state[f].info)[1]
                self._decode_whole(f, sess, stream, slog)
        except BaseException as e:  # a bug or a stop-the-job error: carried to the consumer
            if sessions.alive(sess, progress=False):
                self._ledger.events.put(_Crash(e))
        finally:
            end = time.monotonic() - self._t0
            last = sessions.finished(sess)
            with sessions.lock:
                self._decode_cpu += time.thread_time() - cpu0
                if last is not None:  # an abandoned session's share went to its successor
                    self._decode_blocked += slog.blocked
                    self._timings.append((end if slog.first is None else slog.first, end, slog.frames))
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

    def _put_batch(self, batch: DecodedBatch, sess: _Session, slog: _SessionLog) -> bool:
        """Hand ``batch`` on; False when the source stopped or ``sess`` was abandoned (dropped)."""
        if not self._sessions.handing_on(sess, batch.num_valid):
            return False
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
        return self._sessions.alive(sess) and ok

    def _own_stream(self) -> tuple[int | None, Any]:
        """A CUDA stream for the calling thread: (raw handle, the object keeping it alive)."""
        if self.plan.device_id is None:
            return None, None
        import torch

        keep = torch.cuda.Stream(device=self.plan.device_id)
        return keep.cuda_stream, keep

    def _run_group(self, group: list[Segment], sess: _Session, stream: int | None, slog: _SessionLog) -> None:
        """Decode ``group`` (the front of ``sess.todo``) with one pipeline, until it ends or fails."""
        plan = self.plan
        kind = self._ledger.state[group[0].file].kind
        dec = SegmentDecoder(group, plan.spec, plan.batch, kind, device_id=plan.device_id, stream=stream,
                             num_threads=plan.threads)
        try:
            with dec:
                for ev in dec:
                    sess.opened = True
                    if isinstance(ev, SegmentBatch):
                        if not self._put_batch(ev.batch, sess, slog):
                            return
                    elif not self._sessions.segment_ended(sess, ev.frames):
                        return
        except SegmentDecodeError as e:
            self._sessions.segment_ended(sess, e.frames, e)
        except SourceError as e:  # the pipeline could not be built: find the culprit alone
            if len(group) > 1:
                log.warning("a reader over %d segments failed to open (%s); opening them one by one",
                            len(group), e.reason)
                with self._sessions.lock:
                    sess.alone = len(group)
                return
            self._sessions.segment_ended(sess, 0, SourceError(str(group[0].file.path), e.reason))

    def _decode_whole(self, f: VideoFile, sess: _Session, stream: int | None, slog: _SessionLog) -> None:
        """One file through PyAV (codecs DALI's reader does not decode here)."""
        plan = self.plan
        info = self._ledger.state[f].info
        if not self._sessions.whole_started(sess, f):
            self._whole.put(f)  # abandoned meanwhile: its successor takes the file
            return
        geom = plan.geometry(info.width, info.height)
        decoder = FileDecoder(f, info, plan.spec, geom, plan.batch, device_id=plan.device_id, stream=stream,
                              num_threads=plan.threads, progress=lambda: self._sessions.alive(sess))
        error: SourceError | None = None
        try:
            with decoder:
                for batch in decoder:
                    if not self._put_batch(batch, sess, slog):
                        return
        except SourceError as e:
            error = e
        except FoveaError:
            raise  # not the file's fault
        except Exception as e:  # a DALI/FFmpeg failure we did not foresee: isolate the file
            if not self._sessions.alive(sess, progress=False):
                return
            log.exception("%s: unexpected decode failure", f.path)
            error = DecodeError(str(f.path), f"{type(e).__name__}: {str(e).strip()[:300]}")
        self._sessions.whole_ended(sess, decoder.frames_decoded, error)


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


def _before_resize(info: VideoInfo) -> VideoInfo:
    """``info`` cut to the frames before the size change the probe found (if any)."""
    if info.resized is None:
        return info
    at = info.resized[0]
    return replace(info, pts=info.pts[:at], keyframes=tuple(k for k in info.keyframes if k < at))


def _same_geometry_prefix(items: list[Segment]) -> list[Segment]:
    """The leading segments sharing the first one's geometry (one pipeline reads them)."""
    n = 1
    while n < len(items) and items[n].geometry == items[0].geometry:
        n += 1
    return items[:n]
