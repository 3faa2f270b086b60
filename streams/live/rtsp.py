"""One live camera: an RTSP (or any FFmpeg-readable live URI) reader thread.

:class:`RtspSource` owns one thread that opens the stream with PyAV, demuxes packets and
hands out decoded frames (``mode="frames"``: :class:`~streams.live.types.LiveFrame`, RGB
``uint8[H, W, 3]``), frames of an injected packet decoder (``mode="packets"``: e.g. NVDEC
surfaces) or self-contained encoded GOP buffers (``mode="gop"``:
:class:`~streams.live.types.GopBuffer`). Items go to an ``emit`` callback (normally a
:class:`~streams.live.batcher.StreamQueue`'s ``put``); when ``emit`` returns ``False`` the
source stops.

The source is a composition of units with one job each:

* :mod:`streams.live.connection`: open with timeouts, the watchdog, the state machine
  (``connecting -> live -> stalled/reconnecting -> live ...``, ``stopped``, ``failed``) and
  the reconnect loop with backoff;
* :mod:`streams.live.demux`: the video track, its packets (files paced and looped), Annex-B
  conversion, frame numbering and the pts clock;
* :mod:`streams.live.packet_decoding` (CPU decode, packet decoder) and
  :mod:`streams.live.gop` (GOP assembly): one output per session, made here for the
  source's mode;
* :mod:`streams.live.stats`: the counters and frame rate behind :meth:`RtspSource.stats`.

What this module adds is one session's read loop: packets before the session's first
keyframe are skipped (they cannot be decoded), the first keyframe makes the stream ``live``,
every later packet goes to the session's output.

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
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import av.error

from streams.errors import SourceError
from streams.live.config import LiveConfig, OutputMode
from streams.live.connection import (
    Backoff,
    Connection,
    Failure,
    FatalStreamError,
    ReconnectError,
    StateMachine,
    classify_error,
)
from streams.live.demux import GOP_FORMATS, AnnexB, FrameStamper, PacketReader, PtsClock, Track, open_track
from streams.live.gop import GopOutput
from streams.live.packet_decoding import CpuDecoder, FrameEmitter, PacketDecoding
from streams.live.stats import RateMeter, SourceStats
from streams.live.types import DecoderFactory, LiveItem, StreamSpec, StreamState, StreamStats

__all__ = ["GOP_FORMATS", "Backoff", "PtsClock", "RateMeter", "RtspSource", "classify_error"]

log = logging.getLogger(__name__)


class _SessionOutput(Protocol):
    """What a session's packets go to (:mod:`streams.live.packet_decoding`, :mod:`streams.live.gop`)."""

    def packet(self, packet: Any, arrival: float) -> bool: ...

    def close(self, flush: bool) -> None: ...


class ProgressWatch:
    """Ends a session whose packets yield no frame for ``limit_s`` seconds: no keyframe
    (garbage, or a codec other than the announced one that no parser takes for a keyframe)
    or, once one came, nothing the decoder accepts. Raises a content-fault
    :class:`~streams.live.connection.ReconnectError` saying which. ``frames=False`` (GOP
    buffers, decoded later) watches for the keyframe only."""

    def __init__(self, stats: SourceStats, limit_s: float, codec: str, frames: bool = True) -> None:
        self._stats = stats
        self.limit_s = limit_s
        self.codec = codec
        self.frames = frames
        self._seen = stats.frames
        self._skipped = stats.skipped_packets
        self._errors = stats.decode_errors
        self._since = time.monotonic()

    def check(self, got_key: bool) -> None:
        now = time.monotonic()
        if self._stats.frames != self._seen:  # written by this (the reader) thread only
            self._seen = self._stats.frames
            self._since = now
            return
        if now - self._since < self.limit_s or (got_key and not self.frames):
            return
        if not got_key:
            raise ReconnectError(
                f"no keyframe in {self.limit_s:g} s ({self._stats.skipped_packets - self._skipped} packets "
                f"skipped): garbage, or not the announced codec {self.codec}", fault=True)
        raise ReconnectError(
            f"packets arrive but none decoded to a frame for {self.limit_s:g} s "
            f"({self._stats.decode_errors - self._errors} rejected by the {self.codec} decoder): garbage, "
            f"or a codec other than the announced {self.codec}", fault=True)


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
        self.spec = spec
        self.id = spec.id
        self.mode: OutputMode = mode
        self.config = config or LiveConfig()
        self.display_uri = spec.credentials().display_uri
        self._emit = emit
        self._decoder_factory = decoder_factory
        self._stop = threading.Event()
        self._states = StateMachine(spec.id, self.display_uri)
        self._stats = SourceStats()
        self._conn = Connection(spec, self.config, self._states, self._stats, self._stop, rng)
        self._stamper = FrameStamper(spec.id, self.display_uri)
        self._reader = PacketReader(paced=self._conn.is_file and self.config.pace_files,
                                    loop=self.config.loop_files, stop=self._stop)
        self._thread = threading.Thread(target=self._run, name=f"live-{spec.id}", daemon=True)

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
        self._states.wake()

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
        return self._states.state

    def history(self) -> list[tuple[float, StreamState]]:
        """The last state transitions as ``(time.time(), state)``, oldest first."""
        return self._states.history()

    def wait_for_state(self, *states: StreamState, timeout: float | None = None) -> bool:
        """Block until the state is one of ``states``; ``False`` on timeout."""
        return self._states.wait_for(states, timeout)

    def stats(self) -> StreamStats:
        """A snapshot of the stream's state and counters."""
        state, since = self._states.current()
        return self._stats.snapshot(id=self.id, uri=self.display_uri, transport=self.spec.transport,
                                    mode=self.mode, state=state, state_since=since)

    def take_dropped(self) -> list[int]:
        """Frame indices this source numbered but did not hand to ``emit``: none (an index is
        taken only for a frame that is emitted next). Part of the ``LiveSource`` protocol."""
        return []

    # -------------------------------------------------------------- the thread
    def _run(self) -> None:
        try:
            failed = self._conn.run(self._read_session)
        except Exception as e:  # a bug: report it (redacted, traceback included) instead of dying silently
            log.error("stream %s: reader traceback:\n%s", self.id, self._conn.creds.redact(traceback.format_exc()))
            self._conn.record_error(f"reader crashed: {type(e).__name__}: {e}", logging.ERROR)
            self._states.set(StreamState.FAILED)
            return
        self._states.set(StreamState.FAILED if failed else StreamState.STOPPED)

    def _read_session(self, container: Any) -> Failure | None:
        """Read one session. ``None`` when stopped, else why the session ended."""
        track = open_track(container)
        out = self._session_output(track)
        watch = ProgressWatch(self._stats, self.config.watchdog.undecodable_s, track.codec,
                              frames=self.mode != "gop")
        got_key = False
        got_packets = False
        try:
            for packet, arrival in self._reader.packets(container, track.stream):
                if self._stop.is_set():
                    return None
                got_packets = True
                self._stats.packet(packet.size, arrival)
                if not got_key:
                    if not packet.is_keyframe:
                        self._stats.skipped()
                        watch.check(got_key)
                        continue
                    got_key = True
                    self._conn.connected()
                if not out.packet(packet, arrival):  # the consumer closed our queue
                    self._stop.set()
                    return None
                watch.check(got_key)
        except (av.error.FFmpegError, OSError, ReconnectError) as e:
            return self._conn.read_failure(e, got_packets)
        finally:
            out.close(flush=not self._stop.is_set())
        if self._stop.is_set():
            return None
        return Failure("stream ended (server closed the session)")

    def _session_output(self, track: Track) -> _SessionOutput:
        """The output of this session for the source's mode (a fresh decoder or assembler).

        Raises :class:`FatalStreamError` when the codec cannot be used in this mode.
        """
        if self.mode == "frames":
            return CpuDecoder(track, self.config.decode_threads, self._frame_emitter(track),
                              self._conn.creds.redact)
        if track.codec not in GOP_FORMATS:
            raise FatalStreamError(f"codec {track.codec!r} is not supported for GPU decoding; use live.decode: cpu")
        annexb = AnnexB(track)
        if self.mode == "gop":
            return GopOutput(track.codec, annexb, self.config.max_gop_frames, self._stamper, self._stats,
                             self._emit, self._new_session(track))
        assert self._decoder_factory is not None
        try:
            decoder = self._decoder_factory(track.codec)
        except SourceError as e:
            raise FatalStreamError(f"cannot decode {track.codec!r} on the GPU: {e.reason}") from e
        return PacketDecoding(annexb, decoder, self._frame_emitter(track))

    def _new_session(self, track: Track) -> int:
        """Count a session (its codec and size) and continue the frame clock into it."""
        before = self._stats.codec
        session = self._stats.new_session(track.codec, track.ctx.width, track.ctx.height)
        if before is not None and before != track.codec:
            log.warning("stream %s: the camera now sends %s (was %s)", self.id, track.codec, before)
        self._stamper.start_session(track)
        return session

    def _frame_emitter(self, track: Track) -> FrameEmitter:
        return FrameEmitter(self._stamper, self._stats, self._emit, self._new_session(track))
