"""One live camera: an RTSP (or any FFmpeg-readable live URI) reader thread.

:class:`RtspSource` owns one thread that opens the stream with PyAV, demuxes packets and
hands out either decoded frames (``mode="frames"``: :class:`~streams.live.types.LiveFrame`,
RGB ``uint8[H, W, 3]``) or self-contained encoded GOP buffers for GPU decoding
(``mode="gop"``: :class:`~streams.live.types.GopBuffer`). Items go to an ``emit``
callback (normally a :class:`~streams.live.batcher.StreamQueue`'s ``put``); when ``emit``
returns ``False`` the source stops.

States (:class:`~streams.live.types.StreamState`)::

    connecting --first keyframe--> live --no packet for stall_s--> stalled --+
        |                           |                                        |
        +--open failed--+           +--drop / EOF / error---+                |
                        v                                   v                v
                 reconnecting <--backoff (capped, jittered)-+<---------------+
                        |--first keyframe--> live
    any --stop()--> stopped;  401/403/404, no video, unsupported codec --> failed

The watchdog is PyAV's read timeout (``av.open(..., timeout=(open_timeout_s, stall_s))``):
its interrupt callback aborts a read that has waited ``stall_s`` seconds for a packet, so a
silent camera (server paused, cable pulled, NAT dropped) cannot block its thread forever.
FFmpeg's socket ``timeout`` option (microseconds) bounds the RTSP handshake as well.

Credentials come from the URI or the spec and are redacted from every log line, error
and exported string (:mod:`streams.live.redact`).

Usage::

    q = batcher.add_stream("gate")
    src = RtspSource(StreamSpec("gate", "rtsp://10.0.0.5/main"), q.put, mode="frames",
                     config=LiveConfig()).start()
    src.wait_for_state(StreamState.LIVE, timeout=10)
    src.stats().fps
    src.stop(); src.join(timeout=5)
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.error

from streams.errors import SourceError
from streams.frames import FrameMeta
from streams.live.config import LiveConfig, OutputMode
from streams.live.types import (
    DecoderFactory,
    GopBuffer,
    LiveFrame,
    LiveItem,
    PacketDecoder,
    StreamSpec,
    StreamState,
    StreamStats,
)

log = logging.getLogger(__name__)

# codec -> raw elementary-stream format a GOP buffer is written in
GOP_FORMATS = {"h264": "h264", "hevc": "hevc", "mpeg4": "m4v", "mjpeg": "mjpeg"}
_IN_BAND_PARAMS = {"h264", "hevc", "mpeg4"}  # codecs whose extradata dump_extra re-inserts
_DEFAULT_RTSP_OPTIONS = {
    "allowed_media_types": "video",
    # open fast: SPS/PPS come from the SDP; what probing would learn, the first keyframe tells
    "analyzeduration": "0",
    "probesize": "32",
}


class Backoff:
    """Capped exponential delays with jitter: ``min(max_s, initial_s * multiplier**n)``
    times a uniform factor in ``[1 - jitter, 1 + jitter]``; never above ``max_s`` (at the
    cap the jitter goes downwards only, so cameras that failed together stay spread out).

    Usage::

        b = Backoff(0.5, 30.0)
        b.next()   # ~0.5, then ~1, ~2, ... capped at 30
        b.reset()  # after a successful connection
    """

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The next delay in seconds."""
        base = min(self.max_s, self.initial_s * self.multiplier ** min(self.attempt, 64))
        self.attempt += 1
        delay = base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))
        if delay > self.max_s:  # at the cap, jitter downwards: streams stay spread out
            delay = self.max_s * (1.0 - self._rng.uniform(0.0, self.jitter))
        return max(0.0, delay)

    def reset(self) -> None:
        self.attempt = 0


class RateMeter:
    """Events per second over a sliding window (thread-safe)."""

    def __init__(self, window_s: float = 5.0, maxlen: int = 4096) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._first: float | None = None

    def tick(self, t: float) -> None:
        with self._lock:
            self._times.append(t)
            if self._first is None:
                self._first = t

    def rate(self, now: float) -> float:
        with self._lock:
            if self._first is None:
                return 0.0
            start = max(now - self.window_s, self._first)
            while self._times and self._times[0] < now - self.window_s:
                self._times.popleft()
            n = len(self._times)
            span = now - start
        if n < 2 or span <= 0:
            return 0.0
        return n / span if span >= 1.0 else (n - 1) / span


class PtsClock:
    """Makes a source's pts strictly increasing across packets without pts, timestamp
    jumps and reconnects (each new session restarts near 0): a value at or below the last
    one shifts the running offset so the output continues one frame step later."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.offset = 0
        self.step = 1

    def set_step(self, step: int | None) -> None:
        if step and step > 0:
            self.step = step

    def next(self, raw: int | None) -> int:
        if raw is None:
            value = 0 if self.last is None else self.last + self.step
        else:
            value = raw + self.offset
            if self.last is not None and value <= self.last:
                self.offset += self.last + self.step - value
                value = self.last + self.step
        self.last = value
        return value


@dataclass(frozen=True)
class _Failure:
    message: str
    fatal: bool = False
    stall: bool = False


def classify_error(exc: BaseException, redact: Callable[[str], str]) -> _Failure:
    """A clear, redacted message for an open/read error, and whether retrying can help."""
    if isinstance(exc, av.error.HTTPUnauthorizedError):
        return _Failure("authentication failed (401 Unauthorized): wrong or missing "
                        "username/password", fatal=True)
    if isinstance(exc, av.error.HTTPForbiddenError):
        return _Failure("access denied (403 Forbidden)", fatal=True)
    if isinstance(exc, av.error.HTTPNotFoundError):
        return _Failure("stream not found (404 Not Found): check the URI's path", fatal=True)
    if isinstance(exc, (av.error.ProtocolNotFoundError, av.error.DemuxerNotFoundError)):
        return _Failure(f"unsupported URI scheme or format: {redact(str(exc))}", fatal=True)
    if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)):
        return _Failure("timed out waiting for the server", stall=True)
    if isinstance(exc, ConnectionRefusedError):
        return _Failure("connection refused (server down or wrong port)")
    if isinstance(exc, SourceError):
        return _Failure(redact(exc.reason), fatal=True)
    return _Failure(redact(f"{type(exc).__name__}: {exc}"))


class RtspSource:
    """The reader thread of one live stream. See the module docstring.

    Args:
        spec: id, URI, transport and credentials.
        emit: called with every :data:`~streams.live.types.LiveItem`; returning ``False``
            stops the source (its queue was closed).
        mode: ``"frames"`` (CPU decode to RGB), ``"gop"`` (encoded GOP buffers) or
            ``"packets"`` (each Annex-B packet through a per-session decoder made by
            ``decoder_factory``, e.g. an NVDEC session: frames come out as it decodes them).
        config: the ``live:`` config (watchdog, backoff, decode threads, FFmpeg options).
        decoder_factory: makes the packet decoder of each session (``mode="packets"``).
        rng: random source of the backoff jitter (tests pass a seeded one).
    """

    def __init__(
        self,
        spec: StreamSpec,
        emit: Callable[[LiveItem], bool],
        *,
        mode: OutputMode = "frames",
        config: LiveConfig | None = None,
        rng: random.Random | None = None,
        decoder_factory: DecoderFactory | None = None,
    ) -> None:
        if mode not in ("frames", "gop", "packets"):
            raise ValueError(f"mode must be 'frames', 'gop' or 'packets', got {mode!r}")
        if mode == "packets" and decoder_factory is None:
            raise ValueError("mode 'packets' needs a decoder_factory")
        self._decoder_factory = decoder_factory
        self._decoder: PacketDecoder | None = None
        self._due_wall: float | None = None  # paced files: when the packet was due (wall clock)
        self.spec = spec
        self.id = spec.id
        self.mode: OutputMode = mode
        self.config = config or LiveConfig()
        self._creds = spec.credentials()
        self.display_uri = self._creds.display_uri
        self._emit = emit
        b = self.config.backoff
        self._backoff = Backoff(b.initial_s, b.max_s, b.multiplier, b.jitter, rng)
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"live-{spec.id}", daemon=True)
        self._state = StreamState.CONNECTING
        self._state_since = time.time()
        self._history: deque[tuple[float, StreamState]] = deque(maxlen=256)
        self._history.append((self._state_since, self._state))
        self._rate = RateMeter()
        self._clock = PtsClock()
        self._arrivals: OrderedDict[int | None, float] = OrderedDict()
        self._frame_index = 0
        self._session = -1
        # statistics (written by the reader thread; read under _cond by stats())
        self.packets = 0
        self.frames = 0
        self.bytes = 0
        self.reconnects = 0
        self.sessions = 0
        self.stalls = 0
        self.decode_errors = 0
        self.skipped_packets = 0
        self.last_packet_time: float | None = None
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.codec: str | None = None
        self.width: int | None = None
        self.height: int | None = None
        # GOP assembly
        self._gop_data: list[bytes] = []
        self._gop_info: list[tuple[int | None, float]] = []
        self._gop_skip = True

    # ----------------------------------------------------------------- control
    def start(self) -> RtspSource:
        """Start the reader thread; returns ``self``."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to stop (returns at once; see :meth:`join`).

        A healthy stream stops at its next packet; one blocked in a read or an open stops
        within ``watchdog.stall_s`` / ``watchdog.open_timeout_s``.
        """
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; ``True`` if it has."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def state(self) -> StreamState:
        return self._state

    def history(self) -> list[tuple[float, StreamState]]:
        """The last state transitions as ``(time.time(), state)``, oldest first."""
        with self._cond:
            return list(self._history)

    def wait_for_state(self, *states: StreamState, timeout: float | None = None) -> bool:
        """Block until the state is one of ``states``; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._state in states, timeout)

    def stats(self) -> StreamStats:
        """A snapshot of the stream's state and counters."""
        now = time.time()
        with self._cond:
            age = None if self.last_packet_time is None else now - self.last_packet_time
            return StreamStats(
                id=self.id, uri=self.display_uri, transport=self.spec.transport,
                mode=self.mode, state=self._state, state_since=self._state_since,
                packets=self.packets, frames=self.frames, bytes=self.bytes,
                reconnects=self.reconnects, sessions=self.sessions, stalls=self.stalls,
                decode_errors=self.decode_errors, skipped_packets=self.skipped_packets,
                fps=self._rate.rate(now), last_packet_age_s=age, last_error=self.last_error,
                last_error_time=self.last_error_time, codec=self.codec, width=self.width,
                height=self.height,
            )

    # ------------------------------------------------------------ state helpers
    def _set_state(self, state: StreamState) -> None:
        with self._cond:
            if state == self._state:
                return
            old = self._state
            self._state = state
            self._state_since = time.time()
            self._history.append((self._state_since, state))
            self._cond.notify_all()
        level = logging.INFO
        if state == StreamState.STALLED:
            level = logging.WARNING
        elif state == StreamState.FAILED:
            level = logging.ERROR
        log.log(level, "stream %s (%s): %s -> %s", self.id, self.display_uri, old, state)

    def _record_error(self, message: str, level: int = logging.WARNING) -> None:
        message = self._creds.redact(message)
        with self._cond:
            self.last_error = message
            self.last_error_time = time.time()
        log.log(level, "stream %s (%s): %s", self.id, self.display_uri, message)

    # -------------------------------------------------------------- the thread
    def _run(self) -> None:
        try:
            failed = self._loop()
        except Exception as e:  # a bug: report it (redacted) instead of dying silently
            self._record_error(f"reader crashed: {type(e).__name__}: {e}", logging.ERROR)
            self._set_state(StreamState.FAILED)
            return
        self._set_state(StreamState.FAILED if failed else StreamState.STOPPED)

    def _loop(self) -> bool:
        """Connect, read, reconnect until stopped. ``True`` when a fatal error ended it."""
        first = True
        while not self._stop.is_set():
            if not first:
                with self._cond:
                    self.reconnects += 1
            first = False
            failure: _Failure | None
            try:
                container = self._open()
            except Exception as e:
                failure = classify_error(e, self._creds.redact)
                if failure.fatal:
                    self._record_error(failure.message, logging.ERROR)
                    return True
                self._record_error(f"cannot connect: {failure.message}")
            else:
                try:
                    failure = self._read(container)
                except _FatalStreamError as e:
                    self._record_error(str(e), logging.ERROR)
                    return True
                finally:
                    self._close(container)
                if failure is None or self._stop.is_set():
                    break
                if failure.stall:
                    with self._cond:
                        self.stalls += 1
                    self._set_state(StreamState.STALLED)
                self._record_error(failure.message)
            if self._stop.is_set():
                break
            self._set_state(StreamState.RECONNECTING)
            delay = self._backoff.next()
            log.debug("stream %s: reconnecting in %.2f s", self.id, delay)
            if self._stop.wait(delay):
                break
        return False

    def _open(self) -> Any:
        wd = self.config.watchdog
        options: dict[str, str] = {}
        if self._creds.open_uri.lower().startswith("rtsp"):
            options.update(_DEFAULT_RTSP_OPTIONS)
            options["rtsp_transport"] = self.spec.transport
            options["timeout"] = str(int(wd.open_timeout_s * 1_000_000))
        options.update(self.config.ffmpeg_options)
        return av.open(
            self._creds.open_uri,
            mode="r",
            options=options,
            timeout=(wd.open_timeout_s, wd.stall_s),
        )

    def _close(self, container: Any) -> None:
        try:
            container.close()
        except Exception as e:  # closing a dead connection may fail; nothing to do
            log.debug("stream %s: close: %s", self.id, self._creds.redact(str(e)))

    def _read(self, container: Any) -> _Failure | None:
        """Read one session. ``None`` when stopped, else why the session ended."""
        if not container.streams.video:
            raise _FatalStreamError("the stream has no video track")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        codec = ctx.name
        tb = stream.time_base or Fraction(1, 90000)
        rate = stream.guessed_rate or stream.average_rate
        if rate:
            self._clock.set_step(round(1 / (Fraction(rate) * Fraction(tb))))
        bsf = None
        if self.mode in ("gop", "packets"):
            if codec not in GOP_FORMATS:
                raise _FatalStreamError(
                    f"codec {codec!r} is not supported for GPU decoding; use live.decode: cpu"
                )
            if codec in _IN_BAND_PARAMS:
                bsf = av.BitStreamFilterContext(_annexb_filter(codec, ctx.extradata), stream)
            self._gop_data, self._gop_info, self._gop_skip = [], [], True
            if self.mode == "packets":
                assert self._decoder_factory is not None
                try:
                    self._decoder = self._decoder_factory(codec)
                except SourceError as e:
                    raise _FatalStreamError(f"cannot decode {codec!r} on the GPU: {e.reason}") from e
        else:
            ctx.thread_count = self.config.decode_threads
            if self.config.decode_threads != 1:
                ctx.thread_type = "SLICE"  # frame threading would add frames of latency
        with self._cond:
            self.sessions += 1
            self._session = self.sessions - 1
            self.codec = codec
            self.width = ctx.width or self.width
            self.height = ctx.height or self.height
        self._arrivals.clear()
        time_base = (tb.numerator, tb.denominator)
        got_key = False
        session_packets = 0
        try:
            for packet in self._packets(container, stream):
                if self._stop.is_set():
                    return None
                if packet.size == 0:  # the flush packet PyAV yields at end of stream
                    continue
                now = time.time() if self._due_wall is None else self._due_wall
                session_packets += 1
                with self._cond:
                    self.packets += 1
                    self.bytes += packet.size
                    self.last_packet_time = now
                if not got_key:
                    if not packet.is_keyframe:
                        self.skipped_packets += 1
                        continue
                    got_key = True
                    self._backoff.reset()
                    self._set_state(StreamState.LIVE)
                if self.mode == "frames":
                    ok = self._decode(ctx, packet, now, time_base)
                elif self.mode == "packets":
                    ok = self._decode_packet(packet, now, bsf, time_base)
                else:
                    ok = self._add_gop_packet(packet, now, bsf, codec, time_base)
                if not ok:  # the consumer closed our queue
                    self._stop.set()
                    return None
        except (av.error.ExitError, av.error.TimeoutError):
            if self._stop.is_set():
                return None
            what = "packet" if session_packets else "packet since connecting"
            return _Failure(
                f"stalled: no {what} for {self.config.watchdog.stall_s:g} s (watchdog)",
                stall=True,
            )
        except _ReconnectError as e:
            return None if self._stop.is_set() else _Failure(e.message)
        except (av.error.FFmpegError, OSError) as e:
            if self._stop.is_set():
                return None
            return _Failure(f"connection lost: {classify_error(e, self._creds.redact).message}")
        finally:
            if self.mode == "gop" and self._gop_data and not self._stop.is_set():
                self._flush_gop(codec, time_base)  # a GOP prefix is still decodable
            if self._decoder is not None:  # a reconnect starts a fresh decoder at a keyframe
                self._decoder.close()
                self._decoder = None
        if self._stop.is_set():
            return None
        return _Failure("stream ended (server closed the session)")

    def _is_file(self) -> bool:
        return self._creds.open_uri.lower().startswith("file:")

    def _packets(self, container: Any, stream: Any) -> Iterator[Any]:
        """The stream's packets; a file source is paced at its frame rate and looped.

        Pacing and looping turn recorded clips into live-rate streams through this same
        ingest path (``live.pace_files`` / ``live.loop_files``); network streams are read
        as they arrive.
        """
        if not (self._is_file() and self.config.pace_files):
            yield from container.demux(stream)
            return
        tb = float(stream.time_base or Fraction(1, 90000))
        start = time.monotonic()
        offset = 0.0  # seconds added per loop so the pacing clock keeps running
        while not self._stop.is_set():
            first: float | None = None
            last = 0.0
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                ts = packet.dts if packet.dts is not None else packet.pts
                t = float(ts) * tb if ts is not None else last
                if first is None:
                    first = t
                last = t
                due = start + offset + (t - first)
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                # the packet "arrived" when a live camera would have sent it: reading it late
                # (a saturated ingest) counts as latency, as a camera's socket buffer filling would
                self._due_wall = time.time() - (time.monotonic() - due)
                yield packet
            if not self.config.loop_files or first is None:
                return
            rate = stream.average_rate or stream.guessed_rate
            offset += (last - first) + (1.0 / float(rate) if rate else 1 / 30)
            container.seek(0, stream=stream)

    # ---------------------------------------------------------------- outputs
    def _tick(self, now: float, n: int = 1) -> None:
        with self._cond:
            self.frames += n
        for _ in range(n):
            self._rate.tick(now)

    def _next_index(self) -> int:
        i = self._frame_index
        self._frame_index += 1
        return i

    def _decode(self, ctx: Any, packet: Any, arrival: float, time_base: tuple[int, int]) -> bool:
        self._arrivals[packet.pts] = arrival
        while len(self._arrivals) > 64:
            self._arrivals.popitem(last=False)
        try:
            frames = ctx.decode(packet)
        except av.error.FFmpegError as e:
            with self._cond:
                self.decode_errors += 1
                first = self.decode_errors == 1
            log.log(logging.WARNING if first else logging.DEBUG,
                    "stream %s: decode error (frame skipped): %s",
                    self.id, self._creds.redact(str(e)))
            return True
        for frame in frames:
            frame_arrival = self._arrivals.pop(frame.pts, arrival)
            meta = FrameMeta(
                source_id=self.id,
                uri=self.display_uri,
                frame_index=self._next_index(),
                pts=self._clock.next(frame.pts),
                time_base=time_base,
                width=frame.width,
                height=frame.height,
                arrival_time=frame_arrival,
            )
            if self.width != frame.width or self.height != frame.height:
                with self._cond:
                    self.width, self.height = frame.width, frame.height
            image = frame.to_ndarray(format="rgb24")
            self._tick(time.time())
            if not self._emit(LiveFrame(meta, image, self._session)):
                return False
        return True

    def _decode_packet(self, packet: Any, arrival: float, bsf: Any, time_base: tuple[int, int]) -> bool:
        """One packet through this session's decoder; emits the frames it completed."""
        assert self._decoder is not None
        raw_pts = packet.pts if packet.pts is not None else packet.dts
        outs = bsf.filter(packet) if bsf is not None else [packet]
        data = b"".join(bytes(p) for p in outs)
        if not data:
            return True
        self._arrivals[raw_pts] = arrival
        while len(self._arrivals) > 64:
            self._arrivals.popitem(last=False)
        try:
            frames = self._decoder.decode(data, raw_pts)
        except SourceError as e:
            with self._cond:
                self.decode_errors += 1
                first = self.decode_errors == 1
            log.log(logging.WARNING if first else logging.DEBUG, "stream %s: GPU decode error: %s",
                    self.id, e.reason)
            raise _ReconnectError(f"GPU decode failed: {e.reason}") from e
        for f in frames:
            meta = FrameMeta(
                source_id=self.id, uri=self.display_uri, frame_index=self._next_index(),
                pts=self._clock.next(f.pts), time_base=time_base, width=f.width, height=f.height,
                arrival_time=self._arrivals.pop(f.pts, arrival),
            )
            if self.width != f.width or self.height != f.height:
                with self._cond:
                    self.width, self.height = f.width, f.height
            self._tick(time.time())
            if not self._emit(LiveFrame(meta, f, self._session)):
                return False
        return True

    def _add_gop_packet(
        self, packet: Any, arrival: float, bsf: Any, codec: str, time_base: tuple[int, int]
    ) -> bool:
        is_key = bool(packet.is_keyframe)
        raw_pts = packet.pts if packet.pts is not None else packet.dts
        outs = bsf.filter(packet) if bsf is not None else [packet]
        data = b"".join(bytes(p) for p in outs)
        if not data:
            return True
        ok = True
        if is_key:
            if self._gop_data:
                ok = self._flush_gop(codec, time_base)
            self._gop_skip = False
        elif self._gop_skip:
            self.skipped_packets += 1
            return True
        self._gop_data.append(data)
        self._gop_info.append((raw_pts, arrival))
        self._tick(arrival)
        if len(self._gop_data) >= self.config.max_gop_frames:
            log.warning("stream %s: GOP longer than max_gop_frames=%d: cut, skipping to the "
                        "next keyframe", self.id, self.config.max_gop_frames)
            ok = self._flush_gop(codec, time_base) and ok
            self._gop_skip = True
        return ok

    def _flush_gop(self, codec: str, time_base: tuple[int, int]) -> bool:
        data = b"".join(self._gop_data)
        info = self._gop_info
        self._gop_data, self._gop_info = [], []
        if all(p is not None for p, _ in info):
            info = sorted(info, key=lambda x: x[0])  # type: ignore[arg-type, return-value]
        if not self.width or not self.height:
            self._probe_size(codec, data)
        width, height = self.width or 1, self.height or 1
        metas = tuple(
            FrameMeta(
                source_id=self.id, uri=self.display_uri, frame_index=self._next_index(),
                pts=self._clock.next(pts), time_base=time_base, width=width, height=height,
                arrival_time=arrival,
            )
            for pts, arrival in info
        )
        buf = GopBuffer(self.id, data, GOP_FORMATS[codec], codec, metas, self._session)
        return self._emit(buf)

    def _probe_size(self, codec: str, data: bytes) -> None:
        """Learn the frame size by decoding a buffer's first frame (no SDP parameters)."""
        try:
            dec: Any = av.CodecContext.create(codec, "r")
            for packet in dec.parse(data):
                for frame in dec.decode(packet):
                    with self._cond:
                        self.width, self.height = frame.width, frame.height
                    return
        except av.error.FFmpegError as e:
            log.debug("stream %s: size probe failed: %s", self.id, e)


def _annexb_filter(codec: str, extradata: bytes | None) -> str:
    """The bitstream filter that makes every keyframe self-contained Annex-B.

    RTSP delivers Annex-B already (SPS/PPS maybe only in the SDP: ``dump_extra`` puts the
    extradata before each keyframe). MP4/MKV files carry length-prefixed packets and an
    ``avcC``/``hvcC`` record (first byte 1): ``*_mp4toannexb`` converts both.
    """
    if extradata and extradata[:1] == b"\x01" and codec in ("h264", "hevc"):
        return f"{codec}_mp4toannexb"
    return "dump_extra=freq=keyframe"


class _ReconnectError(Exception):
    """A session must end (and reconnect at a keyframe with a fresh decoder)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _FatalStreamError(Exception):
    """The stream can never be read as configured (no video, unsupported codec)."""
