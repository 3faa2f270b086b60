"""Ingest processes: a live job's stream readers (and their NVDEC sessions) spread over
worker processes, so that one GIL does not cap the number of cameras.

In one Python process, the reader threads of many cameras (demux, bitstream filter, NVDEC
calls and callbacks, frame metadata) share one GIL, which caps the frames one process can
read well below what NVDEC and the engine sustain (figures in ``docs/live.md``).
``live.ingest.processes: N`` (or ``auto``) spawns N ingest processes; each runs the
:class:`~streams.live.rtsp.RtspSource` threads of its share of the streams, and the job's
process keeps everything else: the batcher, the engine, the sinks, metrics, health and the
HTTP API. To the :class:`~streams.live.manager.StreamManager` a stream read elsewhere is a
:class:`RemoteSource`, a :class:`~streams.live.types.LiveSource` like any other.

How frames cross the process boundary:

* GPU decode (``packets``): each ingest process allocates a ring of ``ring_frames`` NV12
  slots on the GPU and shares it once with the job's process (CUDA IPC, through
  ``torch.multiprocessing``). NVDEC's output is copied into a free slot (the copy out of
  NVDEC's surface that is made anyway) and the pipe carries only the frame's metadata and
  slot number. A slot is free again when the job's process lets go of the frame (processed,
  or dropped by the drop-oldest policy): one shared byte per slot. With no free slot, the
  ingest process drops the frame (counted per stream in ``dropped``/``ingest_dropped``).
  The copy into a slot is complete before its message is sent (the session waits for it),
  and the job's inference finishes reading a batch before its frames are let go.
* GPU decode for a job with a cascade (``IngestSettings.source_size``): the crops need the
  source pixels, so NVDEC decodes at full size and a slot holds a frame up to
  ``live.max_source_size`` (default 1920x1080: 3,110,400 bytes a slot); a stream larger than
  that is refused with its reason (it reconnects and is quarantined like any content fault)
  before a frame is decoded. The ring is smaller (:func:`ring_frames_for`): its streams'
  queues once plus one engine batch per inference thread: 8 x 24 + 2 x 16 = 224 slots, 0.65
  GiB of GPU memory per process of 24 cameras with the default queue, threads and batch;
  16 x 24 + 4 x 128 = 896 slots, 2.6 GiB, with ``benchmarks.live_sim``'s (queue 16, 4
  threads, batch 128). ``live.ingest.ring_frames`` sets it; the start-up log line gives it.
* CPU decode (``frames``): the RGB frames are pickled through the pipe.

Every buffer is bounded: at most ``_OUTBOX_MAX`` frames wait in an ingest process and
``_EVENTS_MAX`` messages in the pipe. When the job falls behind, ``drop_oldest`` drops the
oldest waiting frames (counted per stream) and ``block`` makes the stream's reader wait (for
room, or for a free slot), so every frame of a recorded stream is kept.

An ingest process sends what it has every ~2 ms, its streams' statistics 4 times a second
(the job's process answers ``/health`` and ``/metrics`` from them) and its log records.
An ingest process that dies is restarted with a backoff and its streams re-added (they
reconnect, as after a dropped connection); the other processes' streams are not disturbed.
The new process numbers a stream's frames from 0 again: :class:`RemoteSource` shifts its
frame indices, sessions and pts so they continue where the job last saw them (what the dead
process had numbered but not delivered never reached the job, so this leaves no gap).

Frames an ingest process drops from its full outbox are reported with the next frames it
sends, by frame index, so that :meth:`StreamManager.take_dropped
<streams.live.manager.StreamManager.take_dropped>` tells the job (:meth:`RemoteSource.take_dropped`).

Usage (what :class:`pipelines.live.LiveRunner` does)::

    settings = IngestSettings(live, "packets", device_id=0, input_size=(640, 640), ring_frames=1024)
    with IngestPool(settings, processes=4) as pool, \\
            StreamManager(live, mode="packets", source_factory=pool.source) as mgr:
        mgr.add_stream(StreamSpec("gate", "rtsp://10.0.0.5/main"))
        items = mgr.next_batch(64)    # LiveFrame items; image: SharedSurface (NV12 on the GPU)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from streams.errors import SourceError
from streams.frames import FrameMeta
from streams.live.config import LiveConfig, OutputMode
from streams.live.connection import Backoff
from streams.live.rtsp import RtspSource
from streams.live.types import LiveFrame, LiveItem, StreamSpec, StreamState, StreamStats

log = logging.getLogger(__name__)

_FLUSH_S = 0.002  # an ingest process sends its frames this often
_STATS_S = 0.25  # and its streams' statistics
_START_TIMEOUT_S = 120.0  # spawn + imports + CUDA initialisation
_EVENTS_MAX = 256  # messages in flight from an ingest process
_OUTBOX_MAX = 1024  # frames waiting in an ingest process to be sent


@dataclass(frozen=True)
class IngestSettings:
    """What an ingest process needs (picklable: it is sent to the spawned process).

    ``mode`` is ``"packets"`` (NVDEC, frames to the GPU ring) or ``"frames"`` (PyAV, RGB);
    ``input_size`` (h, w) bounds the NV12 frames (scaled to their letterbox size in it).
    ``source_size`` (w, h): decode at full size instead (a cascade crops source pixels),
    streams up to that size in either orientation (``live.max_source_size``).
    """

    live: LiveConfig
    mode: OutputMode
    device_id: int | None = None
    input_size: tuple[int, int] = (640, 640)
    resize: str = "letterbox"
    ring_frames: int = 512
    log_level: int = logging.INFO
    source_size: tuple[int, int] | None = None

    @property
    def slot_bytes(self) -> int:
        """Bytes of one ring slot: the largest NV12 frame a session hands out."""
        if self.source_size is not None:
            w, h = self.source_size
            return max(h * 3 // 2 * w, w * 3 // 2 * h)  # either orientation
        h, w = self.input_size
        return h * 3 // 2 * w

    def __post_init__(self) -> None:
        if self.mode not in ("packets", "frames"):
            raise ValueError(f"ingest processes read streams in mode 'packets' or 'frames', not {self.mode!r}")
        if self.mode == "packets" and self.device_id is None:
            raise ValueError("mode 'packets' needs a device_id")


def ring_frames_for(config: LiveConfig, streams_per_process: int, batch: int, workers: int,
                    full_size: bool = False) -> int:
    """Slots per ingest process: ``live.ingest.ring_frames``, or enough for twice its
    streams' queues plus two engine batches per worker (frames held by the job at once).

    ``full_size`` (source-size frames, for a cascade): each slot is several times larger, so
    the ring holds its streams' queues once plus one batch per worker; beyond that the
    frames are dropped as a full queue would drop them (counted per stream)."""
    if config.ingest.ring_frames:
        return config.ingest.ring_frames
    if full_size:
        return max(32, config.batch.queue_size * streams_per_process + workers * batch)
    return max(64, 2 * config.batch.queue_size * streams_per_process + 2 * workers * batch)


class SharedSurface:
    """An NV12 frame in a slot of an ingest process's ring (a :class:`~streams.live.types.DecodedImage`).

    ``nv12`` is ``uint8[h * 3 // 2, w]`` on the GPU (the letterbox size). The slot goes back
    to the ingest process when this object is released: explicitly, or when the last
    reference to it goes (the frame was processed, or dropped from a full queue).
    """

    __slots__ = ("_flags", "_slot", "height", "matrix", "nv12", "pts", "width")

    def __init__(self, nv12: Any, pts: int | None, width: int, height: int, matrix: int,
                 flags: Any, slot: int) -> None:
        self.nv12 = nv12
        self.pts = pts
        self.width = width
        self.height = height
        self.matrix = matrix
        self._flags = flags
        self._slot = slot

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        if self._slot >= 0:
            self._flags[self._slot] = 0
            self._slot = -1

    def __del__(self) -> None:
        self.release()


class _Renumber:
    """Keeps a remote stream's frame indices, sessions and pts continuing across restarts of
    its ingest process (the new reader numbers from 0 again). Used by the shard's receiver
    thread only.

    Until the first restart the numbers pass through unchanged (the pts too, as long as they
    increase). :meth:`restart` makes the next process's numbers continue after the highest
    the job has seen, delivered or reported dropped; pts that go back are shifted to
    continue one frame step (the last increase seen) after the last pts.
    """

    def __init__(self) -> None:
        self._index_base = 0
        self._session_base = 0
        self.next_index = 0
        self._next_session = 0
        self._pts_offset = 0
        self._last_pts: int | None = None
        self._step = 1

    def restart(self) -> None:
        self._index_base = self.next_index
        self._session_base = self._next_session

    def index(self, raw: int) -> int:
        index = raw + self._index_base
        if index >= self.next_index:
            self.next_index = index + 1
        return index

    def frame(self, meta: FrameMeta, session: int) -> tuple[FrameMeta, int]:
        index = self.index(meta.frame_index)
        session += self._session_base
        self._next_session = max(self._next_session, session + 1)
        pts = meta.pts
        if pts is not None:
            pts += self._pts_offset
            last = self._last_pts
            if last is not None:
                if pts > last:
                    self._step = pts - last
                else:
                    self._pts_offset += last + self._step - pts
                    pts = last + self._step
            self._last_pts = pts
        if index != meta.frame_index or pts != meta.pts:
            meta = replace(meta, frame_index=index, pts=pts)
        return meta, session


class RemoteSource:
    """A stream read by an ingest process, as the manager sees it (a ``LiveSource``).

    State and statistics are the last snapshot the ingest process sent (at most
    ``_STATS_S`` old); ``stop()`` asks the process to stop the stream and ``join()`` waits
    until it has. Frames are numbered as if the stream had been read in this process
    (:class:`_Renumber`); the frames the ingest process dropped are reported by
    :meth:`take_dropped`.
    """

    def __init__(self, pool: IngestPool, spec: StreamSpec, emit: Any) -> None:
        self.spec = spec
        self.id = spec.id
        self.display_uri = spec.credentials().display_uri
        self.emit = emit
        self._pool = pool
        self._cond = threading.Condition()
        now = time.time()
        self._stats = StreamStats(id=spec.id, uri=self.display_uri, transport=spec.transport,
                                  mode=pool.settings.mode, state=StreamState.CONNECTING, state_since=now)
        self._history: list[tuple[float, StreamState]] = [(now, StreamState.CONNECTING)]
        self._started = False
        self._ended = threading.Event()
        self.stopping = False
        self.shard: _Shard | None = None
        self._renumber = _Renumber()
        self._dropped: list[int] = []

    def start(self) -> RemoteSource:
        self._pool._place(self)
        self._started = True
        return self

    def stop(self) -> None:
        with self._cond:
            if self.stopping:
                return
            self.stopping = True
        if self.shard is not None:
            self.shard.command(("remove", self.id))

    def join(self, timeout: float | None = None) -> bool:
        return not self._started or self._ended.wait(timeout)

    @property
    def alive(self) -> bool:
        return self._started and not self._ended.is_set()

    @property
    def state(self) -> StreamState:
        return self._stats.state

    def stats(self) -> StreamStats:
        with self._cond:
            return self._stats

    def history(self) -> list[tuple[float, StreamState]]:
        with self._cond:
            return list(self._history)

    def wait_for_state(self, *states: StreamState, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._stats.state in states, timeout)

    def take_dropped(self) -> list[int]:
        """Frame indices the ingest process dropped since the last call (cleared on read)."""
        with self._cond:
            dropped, self._dropped = self._dropped, []
        return dropped

    # -- from the shard's receiver thread -------------------------------------------------
    def _deliver(self, meta: FrameMeta, image: Any, session: int) -> bool:
        """A frame from the ingest process, renumbered, to the stream's queue."""
        meta, session = self._renumber.frame(meta, session)
        return bool(self.emit(LiveFrame(meta, image, session)))

    def _drops(self, indices: list[int]) -> None:
        """Frames the ingest process dropped (its numbers), before the frames sent with them."""
        mapped = [self._renumber.index(i) for i in indices]
        with self._cond:
            self._dropped.extend(mapped)

    def _update(self, stats: StreamStats, history: list[tuple[float, StreamState]]) -> None:
        with self._cond:
            self._stats = stats
            self._history = history
            self._cond.notify_all()

    def _interrupted(self, reason: str) -> None:
        self._renumber.restart()  # the restarted process numbers from 0: continue after what was seen
        now = time.time()
        with self._cond:
            self._stats = replace(self._stats, state=StreamState.RECONNECTING, state_since=now, fps=0.0,
                                  last_error=reason, last_error_time=now)
            self._history.append((now, StreamState.RECONNECTING))
            self._cond.notify_all()

    def _end(self) -> None:
        now = time.time()
        with self._cond:
            if self._stats.state != StreamState.STOPPED:
                self._stats = replace(self._stats, state=StreamState.STOPPED, state_since=now, fps=0.0)
                self._history.append((now, StreamState.STOPPED))
            self._cond.notify_all()
        self._ended.set()


def close_write_end(events: Any) -> None:
    """Close this process's copy of the write end of a ``multiprocessing`` queue that only a
    child process puts on, once the child has started (it holds its own copy).

    While any write end of the pipe is open, a reader cannot tell a dead writer from a slow
    one: a child killed in the middle of a message (a batch of frames is larger than the pipe's
    buffer) leaves half a message, and ``get()`` waits forever for the rest, so the stream of
    that process would stay "live" and never be restarted. With the child's copy the only one,
    its death closes the pipe: ``get()`` raises ``EOFError`` (between messages) or ``OSError``
    (in the middle of one) at once, and the receiver restarts the process.
    """
    writer = getattr(events, "_writer", None)  # multiprocessing.queues.Queue's write Connection
    if writer is None:
        raise TypeError(f"expected a multiprocessing queue, got {type(events).__name__}")
    writer.close()


class IngestPool:
    """Ingest processes and the streams placed on them; see the module docstring.

    :meth:`source` is a :data:`~streams.live.types.SourceFactory` for the stream manager;
    a new stream goes to the process with the fewest streams.
    """

    def __init__(self, settings: IngestSettings, processes: int) -> None:
        if processes < 1:
            raise ValueError(f"an ingest pool needs at least one process, got {processes}")
        self.settings = settings
        if settings.mode == "packets":
            import torch.multiprocessing  # noqa: F401  (registers CUDA tensor sharing for the pipes)
        self._mp = multiprocessing.get_context("spawn")  # CUDA cannot be used after fork
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._shards = [_Shard(self, i) for i in range(processes)]

    def start(self) -> IngestPool:
        """Spawn every process and wait until each is ready (raises :class:`SourceError` if one
        cannot start, e.g. no GPU in the child)."""
        t = time.monotonic()
        for s in self._shards:  # spawn all first: their start-ups overlap
            s.spawn()
        try:
            for s in self._shards:
                s.wait_ready()
        except BaseException:
            self.close()
            raise
        for s in self._shards:
            s.start_receiver()
        st = self.settings
        ring = (f", {st.ring_frames} frame slots of {st.slot_bytes} bytes each: "
                f"{st.ring_frames * st.slot_bytes / 2**30:.2f} GiB of GPU memory per process") \
            if st.mode == "packets" else ""
        log.info("%d ingest processes ready in %.1f s (%s%s)", len(self._shards), time.monotonic() - t,
                 st.mode, ring)
        return self

    def source(self, spec: StreamSpec, emit: Any) -> RemoteSource:
        """A :data:`~streams.live.types.SourceFactory`: the stream, read by one of the processes."""
        return RemoteSource(self, spec, emit)

    def _place(self, src: RemoteSource) -> None:
        with self._lock:
            shard = min(self._shards, key=lambda s: len(s.sources))
            shard.add(src)

    def placement(self) -> dict[str, int]:
        """Which process reads each stream (stream id -> process index)."""
        with self._lock:
            return {sid: s.index for s in self._shards for sid in s.sources}

    def processes(self) -> list[Any]:
        """The current ``multiprocessing.Process`` objects (a restarted one is replaced)."""
        return [s.process for s in self._shards]

    def close(self, timeout: float = 10.0) -> None:
        """Stop every process (its streams stopped, last frames sent) and the receivers."""
        if self._closing.is_set():
            return
        self._closing.set()
        for s in self._shards:
            s.command(("stop",))
        deadline = time.monotonic() + timeout
        for s in self._shards:
            s.finish(max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> IngestPool:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Shard:
    """One ingest process, seen from the job's process: its pipes, ring and streams."""

    def __init__(self, pool: IngestPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.sources: dict[str, RemoteSource] = {}
        self.process: Any = None
        self.ring: Any = None
        self.flags: Any = None
        self._commands: Any = None
        self._events: Any = None
        self._receiver: threading.Thread | None = None
        self._send_lock = threading.Lock()
        b = pool.settings.live.backoff
        self._backoff = Backoff(b.initial_s, b.max_s, b.multiplier, b.jitter)
        self._full_logged = False

    # -- process life cycle -------------------------------------------------------------
    def spawn(self) -> None:
        mp, st = self.pool._mp, self.pool.settings
        self.flags = mp.RawArray(ctypes.c_uint8, st.ring_frames) if st.mode == "packets" else None
        self._commands = mp.Queue()
        self._events = mp.Queue(maxsize=_EVENTS_MAX)  # a slow job blocks the sender, not memory
        self.process = mp.Process(target=_ingest_main, name=f"fovea-ingest-{self.index}", daemon=True,
                                  args=(self.index, st, self._commands, self._events, self.flags))
        self.process.start()
        close_write_end(self._events)  # the child has its own copy now

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                msg = self._events.get(timeout=0.5)
            except (queue.Empty, EOFError, OSError) as e:
                if not isinstance(e, queue.Empty) or not self.process.is_alive():
                    self.process.join(1.0)  # EOF: it is exiting; its exit code comes with it
                    raise SourceError(f"ingest-{self.index}", f"the ingest process exited while starting "
                                      f"(code {self.process.exitcode})") from None
                if time.monotonic() > deadline:
                    self.process.kill()
                    raise SourceError(f"ingest-{self.index}", f"the ingest process did not start within "
                                      f"{_START_TIMEOUT_S:g} s") from None
                continue
            if msg[0] == "log":
                _log_record(msg[1])
            elif msg[0] == "ready":
                self.ring = msg[1]
                return
            elif msg[0] == "failed":
                raise SourceError(f"ingest-{self.index}", f"the ingest process failed to start: {msg[1]}")

    def start_receiver(self) -> None:
        self._receiver = threading.Thread(target=self._receive, name=f"fovea-ingest-rx-{self.index}",
                                          daemon=True)
        self._receiver.start()

    def finish(self, timeout: float) -> None:
        if self._receiver is not None:
            self._receiver.join(timeout)
        if self.process is not None:
            self.process.join(max(0.1, timeout / 2))
            if self.process.is_alive():
                log.warning("ingest process %d did not stop in time; terminating it", self.index)
                self.process.terminate()
                self.process.join(2)
        for src in list(self.sources.values()):
            src._end()

    def command(self, cmd: tuple[Any, ...]) -> None:
        with self._send_lock, contextlib.suppress(Exception):  # a dead process: the receiver restarts it
            self._commands.put(cmd)

    def add(self, src: RemoteSource) -> None:
        src.shard = self
        self.sources[src.id] = src
        self.command(("add", src.spec))

    # -- the receiver thread ------------------------------------------------------------
    def _receive(self) -> None:
        closing = self.pool._closing
        while True:
            try:
                msg = self._events.get(timeout=0.5)
            except queue.Empty:
                if self.process.is_alive():
                    continue
                if closing.is_set():
                    return
                self._restart()
                continue
            except (EOFError, OSError):
                if closing.is_set():
                    return
                self._restart()
                continue
            kind = msg[0]
            if kind == "frames":
                self._frames(msg[1], msg[2])
            elif kind == "stats":
                for sid, stats, history in msg[1]:
                    src = self.sources.get(sid)
                    if src is not None and not src._ended.is_set():
                        src._update(stats, history)
            elif kind == "ended":
                src = self.sources.get(msg[1])
                if src is not None and src.stopping:
                    with self.pool._lock:
                        self.sources.pop(msg[1], None)
                    src._end()
            elif kind == "log":
                _log_record(msg[1])
            elif kind == "ring_full" and not self._full_logged:
                self._full_logged = True
                log.warning("ingest process %d: all %d frame slots in use, frames dropped (counted per "
                            "stream); the job falls behind, or raise live.ingest.ring_frames",
                            self.index, self.pool.settings.ring_frames)
            elif kind == "bye":
                return

    def _frames(self, items: list[tuple[str, Any, Any, int]], dropped: dict[str, list[int]]) -> None:
        for sid, indices in dropped.items():  # older than the frames that came with them
            src = self.sources.get(sid)
            if src is not None and not src.stopping:
                src._drops(indices)
        ring, flags = self.ring, self.flags
        for sid, meta, payload, session in items:
            if ring is not None:
                slot, rows, w, matrix, pts = payload
                image: Any = SharedSurface(ring[slot, : rows * w].view(rows, w), pts, meta.width, meta.height,
                                           matrix, flags, slot)
            else:
                image = payload
            src = self.sources.get(sid)
            if src is None or src.stopping:
                continue  # a removed stream's last frames (a slot is released with its surface)
            if not src._deliver(meta, image, session):
                src.stop()

    def _restart(self) -> None:
        """The process died: report it on its streams, restart it (with a backoff), re-add them."""
        self.process.join(1.0)  # reaped, for its exit code (its pipe may close a moment before)
        code = self.process.exitcode
        reason = f"ingest process {self.index} exited (code {code}); restarting it"
        log.error("%s with its %d streams", reason, len(self.sources))
        for src in list(self.sources.values()):
            src._interrupted(reason)
        closing = self.pool._closing
        while not closing.is_set():
            if closing.wait(self._backoff.next()):
                return
            try:
                self.spawn()
                self.wait_ready()
            except SourceError as e:
                log.error("%s", e)
                continue
            self._backoff.reset()
            self._full_logged = False
            with self.pool._lock:
                for sid, src in list(self.sources.items()):
                    if src.stopping:
                        self.sources.pop(sid, None)
                        src._end()
                    else:
                        self.command(("add", src.spec))
            log.info("ingest process %d restarted with %d streams", self.index, len(self.sources))
            return


def _log_record(record: logging.LogRecord) -> None:
    logging.getLogger(record.name).handle(record)


# ------------------------------------------------------------------ the ingest process
class _ForwardLogs(logging.Handler):
    """Sends the ingest process's log records to the job's process (formatted first)."""

    def __init__(self, events: Any, index: int) -> None:
        super().__init__()
        self._events = events
        self._prefix = f"[ingest {index}] "

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self._prefix + record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            out = logging.makeLogRecord({**record.__dict__, "msg": msg, "args": None, "exc_info": None,
                                         "exc_text": None})
            self._events.put(("log", out))
        except Exception:
            self.handleError(record)


class _SlotRing:
    """The ingest process's side of the ring: takes free slots (the job's process frees them).

    With no free slot, :meth:`take` returns ``None`` (the frame is dropped: ``drop_oldest``),
    or with ``wait`` set (``block``: every frame processed) waits for one until ``stop`` is set.
    """

    def __init__(self, ring: Any, flags: Any, on_full: Any, wait: bool = False,
                 stop: threading.Event | None = None) -> None:
        self.ring = ring
        self.flags = flags
        self.n = len(flags)
        self.cols = int(ring.shape[1])
        self._next = 0
        self._lock = threading.Lock()
        self._on_full = on_full
        self._wait = wait
        self._stop = stop or threading.Event()

    def take(self, h: int, w: int) -> tuple[Any, int] | None:
        rows = h * 3 // 2
        if rows * w > self.cols:  # a session's target is checked before: this is a bug, not memory corruption
            raise SourceError("ingest", f"an NV12 frame of {w}x{h} does not fit a slot of {self.cols} bytes")
        while True:
            i = self._take_free()
            if i is not None:
                return self.ring[i, : rows * w].view(rows, w), i
            self._on_full()
            if not self._wait or self._stop.wait(0.001):
                return None

    def _take_free(self) -> int | None:
        flags, n = self.flags, self.n
        with self._lock:
            i = self._next
            for _ in range(n):
                if flags[i] == 0:
                    flags[i] = 1
                    self._next = i + 1 if i + 1 < n else 0
                    return i
                i = i + 1 if i + 1 < n else 0
        return None

    def release(self, slot: int) -> None:
        """Give back a slot whose frame never left this process."""
        self.flags[slot] = 0


class _IngestWorker:
    """Runs in the ingest process: the stream readers, the outbox, the sender thread."""

    def __init__(self, index: int, settings: IngestSettings, events: Any, flags: Any) -> None:
        self.index = index
        self.settings = settings
        self.events = events
        self.sources: dict[str, RtspSource] = {}
        self.removed: list[RtspSource] = []
        self.outbox: deque[tuple[str, Any, Any, int]] = deque()
        self.drops: dict[str, int] = {}  # frames dropped per stream (counted in its statistics)
        self.dropped_indices: dict[str, list[int]] = {}  # their indices, not yet sent
        self.ring: Any = None
        self._slots: _SlotRing | None = None
        self._full = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._block = settings.live.batch.policy == "block"
        self._room = threading.Condition(self._lock)  # the outbox has room again
        if settings.mode == "packets":
            import torch
            import torch.multiprocessing  # registers CUDA tensor sharing for the pipe

            assert settings.device_id is not None
            torch.cuda.set_device(settings.device_id)
            self.ring = torch.empty((settings.ring_frames, settings.slot_bytes), dtype=torch.uint8,
                                    device=torch.device("cuda", settings.device_id))
            self._slots = _SlotRing(self.ring, flags, self._ring_full, wait=self._block, stop=self._stop)
            sys.setswitchinterval(settings.live.gil_switch_interval_ms / 1000)
        self._sender = threading.Thread(target=self._send_loop, name="ingest-sender", daemon=True)
        self._sender.start()

    def _ring_full(self) -> None:
        if not self._full:
            self._full = True
            self.events.put(("ring_full",))

    def _decoder_factory(self, sid: str) -> Any:
        from pipelines.nvdec import nvdec_decoder_factory

        slots = self._slots
        assert slots is not None and self.settings.device_id is not None

        def allocate(h: int, w: int) -> tuple[Any, int] | None:
            got = slots.take(h, w)
            if got is None:
                with self._lock:
                    self.drops[sid] = self.drops.get(sid, 0) + 1
            return got

        return nvdec_decoder_factory(self.settings.device_id, self.settings.input_size,
                                     self.settings.resize, allocator=allocate,  # type: ignore[arg-type]
                                     max_source=self.settings.source_size)

    def add(self, spec: StreamSpec) -> None:
        if spec.id in self.sources:
            log.warning("stream %s is already read here; ignored", spec.id)
            return
        factory = self._decoder_factory(spec.id) if self.settings.mode == "packets" else None
        src = RtspSource(spec, functools.partial(self._emit, spec.id), mode=self.settings.mode,
                         config=self.settings.live, decoder_factory=factory)
        with self._lock:
            self.sources[spec.id] = src
        src.start()

    def remove(self, sid: str) -> None:
        with self._lock:
            src = self.sources.pop(sid, None)
            if src is not None:
                self.removed.append(src)
        if src is not None:
            src.stop()
        else:
            self.events.put(("ended", sid))

    def _emit(self, sid: str, item: LiveItem) -> bool:
        """A reader thread's frame: to the outbox (sent within ~2 ms)."""
        if sid not in self.sources:
            return False
        assert isinstance(item, LiveFrame)
        img: Any = item.image
        if self.settings.mode == "packets":
            payload: Any = (img.slot, int(img.nv12.shape[0]), int(img.nv12.shape[1]), img.matrix, img.pts)
        else:
            payload = img
        with self._room:
            while len(self.outbox) >= _OUTBOX_MAX:  # the job is not taking frames fast enough
                if self._block:
                    if self._stop.is_set() or sid not in self.sources:
                        return False
                    self._room.wait(0.05)
                    continue
                old_sid, old_meta, old, _ = self.outbox.popleft()  # drop_oldest, counted per stream
                self.drops[old_sid] = self.drops.get(old_sid, 0) + 1
                self.dropped_indices.setdefault(old_sid, []).append(old_meta.frame_index)
                if self._slots is not None:
                    self._slots.release(old[0])
            self.outbox.append((sid, item.meta, payload, item.session))
        return True

    def _flush(self) -> None:
        with self._room:
            items = list(self.outbox)
            self.outbox.clear()
            dropped, self.dropped_indices = self.dropped_indices, {}
            self._room.notify_all()
        if items or dropped:
            self.events.put(("frames", items, dropped))  # blocks while the job's process is behind

    def _send_stats(self) -> None:
        with self._lock:
            sources = list(self.sources.items())
            drops = dict(self.drops)
            ended = [s for s in self.removed if not s.alive]
            self.removed = [s for s in self.removed if s.alive]
        snap = [(sid, replace(src.stats(), ingest_dropped=drops.get(sid, 0)), src.history()[-32:])
                for sid, src in sources]
        if snap:
            self.events.put(("stats", snap))
        for src in ended:
            self.events.put(("ended", src.id))

    def _send_loop(self) -> None:
        next_stats = 0.0
        while not self._stop.is_set():
            time.sleep(_FLUSH_S)
            self._flush()
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + _STATS_S
                self._send_stats()
                self._full = False  # log again (once) if it fills again

    def serve(self, commands: Any) -> None:
        parent = os.getppid()
        while True:
            try:
                cmd = commands.get(timeout=0.5)
            except queue.Empty:
                if os.getppid() != parent:  # the job's process is gone
                    return
                continue
            if cmd[0] == "add":
                self.add(cmd[1])
            elif cmd[0] == "remove":
                self.remove(cmd[1])
            elif cmd[0] == "stop":
                return

    def close(self) -> None:
        with self._lock:
            sources = list(self.sources.values()) + self.removed
        for src in sources:
            src.stop()
        self._stop.set()  # readers waiting for room or a slot give up; the rest is flushed below
        wd = self.settings.live.watchdog
        deadline = time.monotonic() + max(wd.stall_s, wd.open_timeout_s) + 1.0
        for src in sources:
            src.join(max(0.0, deadline - time.monotonic()))
        self._sender.join(2)
        self._flush()
        self._send_stats()
        for sid in list(self.sources):
            self.events.put(("ended", sid))
        self.events.put(("bye",))


def _ingest_main(index: int, settings: IngestSettings, commands: Any, events: Any, flags: Any) -> None:
    """The ingest process's entry point (spawned)."""
    root = logging.getLogger()
    root.handlers[:] = [_ForwardLogs(events, index)]
    root.setLevel(settings.log_level)
    try:
        worker = _IngestWorker(index, settings, events, flags)
    except BaseException as e:
        events.put(("failed", f"{type(e).__name__}: {e}"))
        events.close()
        events.join_thread()
        return
    events.put(("ready", worker.ring))
    try:
        worker.serve(commands)
    finally:
        worker.close()
        events.close()
        events.join_thread()  # everything sent before exiting (the ring stays alive until then)
