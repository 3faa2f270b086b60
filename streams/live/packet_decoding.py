"""Packets of one session into frames: decoded on the CPU (PyAV, RGB) or handed to the
injected packet decoder (an NVDEC session on the GPU).

Both are per-session outputs with the same two calls as the GOP assembler
(:class:`streams.live.gop.GopOutput`): ``packet(packet, arrival) -> bool`` (``False``: the
consumer closed the stream's queue, the source stops) and ``close(flush)`` at the end of
the session. Frames leave through a :class:`FrameEmitter`, which numbers them
(:class:`~streams.live.demux.FrameStamper`), counts them and calls the source's ``emit``.

A packet's arrival time follows it through the decoder (:class:`ArrivalTimes`, by pts), so
a frame's ``FrameMeta.arrival_time`` is its own packet's even when the decoder reorders.

Usage::

    out = CpuDecoder(track, threads=1, frames=FrameEmitter(stamper, stats, emit, session), ...)
    for packet, arrival in reader.packets(container, track.stream):
        if not out.packet(packet, arrival):
            break
    out.close(flush=True)
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import av
import av.error

from streams.errors import SourceError
from streams.live.connection import ReconnectError
from streams.live.demux import AnnexB, FrameStamper, Track
from streams.live.stats import SourceStats
from streams.live.types import LiveFrame, LiveItem, PacketDecoder

log = logging.getLogger(__name__)


class ArrivalTimes:
    """Arrival time of each packet fed to a decoder, by pts, until its frame comes out;
    bounded (a pts the decoder never outputs is forgotten after ``maxlen`` more)."""

    def __init__(self, maxlen: int = 64) -> None:
        self.maxlen = maxlen
        self._times: OrderedDict[int | None, float] = OrderedDict()

    def put(self, pts: int | None, arrival: float) -> None:
        self._times[pts] = arrival
        while len(self._times) > self.maxlen:
            self._times.popitem(last=False)

    def pop(self, pts: int | None, default: float) -> float:
        return self._times.pop(pts, default)


class FrameEmitter:
    """Hands a session's decoded frames out: numbered, counted, as :class:`LiveFrame` items."""

    def __init__(self, stamper: FrameStamper, stats: SourceStats, emit: Callable[[LiveItem], bool],
                 session: int) -> None:
        self.stamper = stamper
        self.stats = stats
        self.emit = emit
        self.session = session
        self.size: tuple[int, int] | None = None  # the session's frame size (its first frame's)

    def frame(self, raw_pts: int | None, width: int, height: int, arrival: float, image: Any) -> bool:
        """Emit one frame; ``False`` when the consumer closed the queue.

        A frame of another size than the session's first ends the session (a content-fault
        :class:`~streams.live.connection.ReconnectError`, before it takes an index): the next
        session starts at a keyframe of the new size with a fresh decoder, and every session
        hands out frames of one size."""
        if self.size is None:
            self.size = (width, height)
        elif self.size != (width, height):
            w, h = self.size
            raise ReconnectError(f"resolution changed mid-stream: {w}x{h} -> {width}x{height}", fault=True)
        meta = self.stamper.stamp(raw_pts, width, height, arrival)
        self.stats.frame_size(width, height)
        self.stats.frames_out(1, time.time())
        return self.emit(LiveFrame(meta, image, self.session))


class CpuDecoder:
    """PyAV decodes the session's packets to RGB ``uint8[H, W, 3]`` frames.

    ``threads`` FFmpeg threads per stream; slice threading only, since frame threading
    would hold frames back. A packet the decoder rejects is counted and skipped (it got no
    frame index: indices are given to decoded frames only).
    """

    def __init__(self, track: Track, threads: int, frames: FrameEmitter,
                 redact: Callable[[str], str]) -> None:
        self._ctx = track.ctx
        self._ctx.thread_count = threads
        if threads != 1:
            self._ctx.thread_type = "SLICE"  # frame threading would add frames of latency
        self._frames = frames
        self._redact = redact
        self._arrivals = ArrivalTimes()

    def packet(self, packet: Any, arrival: float) -> bool:
        self._arrivals.put(packet.pts, arrival)
        try:
            frames = self._ctx.decode(packet)
        except av.error.FFmpegError as e:
            first = self._frames.stats.decode_error() == 1
            log.log(logging.WARNING if first else logging.DEBUG,
                    "stream %s: decode error (frame skipped): %s",
                    self._frames.stamper.source_id, self._redact(str(e)))
            return True
        for frame in frames:
            # converted before it is numbered: a conversion error leaves no index unused
            image = frame.to_ndarray(format="rgb24")
            arrival_f = self._arrivals.pop(frame.pts, arrival)
            if not self._frames.frame(frame.pts, frame.width, frame.height, arrival_f, image):
                return False
        return True

    def close(self, flush: bool) -> None:
        """Nothing to release; frames still inside the decoder were never numbered."""


class PacketDecoding:
    """Each packet, as an Annex-B access unit, through the session's
    :class:`~streams.live.types.PacketDecoder` (e.g. NVDEC); its frames come out in display
    order as it completes them.

    A decode error ends the session (:class:`~streams.live.connection.ReconnectError`): the
    source reconnects and the next session starts a fresh decoder at a keyframe. Frames the
    decoder still held were never numbered, so they leave no gap in the indices.
    """

    def __init__(self, annexb: AnnexB, decoder: PacketDecoder, frames: FrameEmitter) -> None:
        self._annexb = annexb
        self._decoder = decoder
        self._frames = frames
        self._arrivals = ArrivalTimes()

    def packet(self, packet: Any, arrival: float) -> bool:
        raw_pts = packet.pts if packet.pts is not None else packet.dts
        data = self._annexb.convert(packet)
        if not data:
            return True
        self._arrivals.put(raw_pts, arrival)
        try:
            frames = self._decoder.decode(data, raw_pts)
        except SourceError as e:
            first = self._frames.stats.decode_error() == 1
            log.log(logging.WARNING if first else logging.DEBUG, "stream %s: GPU decode error: %s",
                    self._frames.stamper.source_id, e.reason)
            raise ReconnectError(f"GPU decode failed: {e.reason}", fault=True) from e
        emit = self._frames.frame
        return all(emit(f.pts, f.width, f.height, self._arrivals.pop(f.pts, arrival), f) for f in frames)

    def close(self, flush: bool) -> None:
        """Free the decoder (a reconnect starts a fresh one at a keyframe)."""
        self._decoder.close()
