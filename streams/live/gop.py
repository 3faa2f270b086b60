"""GOP assembly: a session's Annex-B packets into self-contained GOP buffers (``decode: gop``).

DALI's video decoders take buffers that start at a keyframe and carry their parameter sets,
and keep no decoder state between buffers. :class:`GopAssembler` collects the access units
of one GOP and completes it when the next keyframe arrives; a GOP longer than
``max_gop_frames`` is cut and the rest skipped until the next keyframe; the packets before a
session's first keyframe are skipped. :class:`GopOutput` is the session output around it
(same calls as :mod:`streams.live.packet_decoding`'s): Annex-B conversion, frame
numbering, the frame size (probed from the first buffer when the stream did not tell it)
and one :class:`~streams.live.types.GopBuffer` per GOP. A session that ends mid-GOP emits
what it has: a GOP prefix is still decodable.

Usage::

    asm = GopAssembler(max_frames=300)
    accepted, done = asm.add(access_unit, is_key=True, pts=0, arrival=t)   # done: finished GOPs
    tail = asm.flush()                                                     # the open GOP, if any
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import av.error

from streams.live.demux import GOP_FORMATS, AnnexB, FrameStamper
from streams.live.stats import SourceStats
from streams.live.types import GopBuffer, LiveItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gop:
    """One assembled GOP: its Annex-B bytes and its frames' ``(pts, arrival)`` in
    presentation order (sorted by pts when every frame has one; else decode order)."""

    data: bytes
    frames: tuple[tuple[int | None, float], ...]


class GopAssembler:
    """Collects access units into GOPs; see the module docstring. Pure: no I/O, no clock."""

    def __init__(self, max_frames: int, label: str = "") -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = max_frames
        self.label = label
        self._parts: list[bytes] = []
        self._frames: list[tuple[int | None, float]] = []
        self._skip = True  # until a keyframe

    @property
    def pending(self) -> int:
        """Frames in the open GOP."""
        return len(self._parts)

    def add(self, data: bytes, is_key: bool, pts: int | None, arrival: float) -> tuple[bool, list[Gop]]:
        """Add one access unit. Returns whether it was kept (``False``: skipped while waiting
        for a keyframe) and the GOPs it completed (a keyframe completes the open one; the
        ``max_frames``-th frame cuts it)."""
        done: list[Gop] = []
        if is_key:
            if self._parts:
                done.append(self._take())
            self._skip = False
        elif self._skip:
            return False, done
        self._parts.append(data)
        self._frames.append((pts, arrival))
        if len(self._parts) >= self.max_frames:
            log.warning("stream %s: GOP longer than max_gop_frames=%d: cut, skipping to the "
                        "next keyframe", self.label, self.max_frames)
            done.append(self._take())
            self._skip = True
        return True, done

    def flush(self) -> Gop | None:
        """The open GOP (a prefix: still decodable), or ``None``."""
        return self._take() if self._parts else None

    def _take(self) -> Gop:
        data = b"".join(self._parts)
        frames = self._frames
        self._parts, self._frames = [], []
        if all(p is not None for p, _ in frames):
            frames = sorted(frames, key=lambda x: x[0])  # type: ignore[arg-type, return-value]
        return Gop(data, tuple(frames))


def probe_size(codec: str, data: bytes) -> tuple[int, int] | None:
    """The ``(width, height)`` of a buffer's first frame, decoded on the CPU (a stream whose
    SDP did not give the size); ``None`` if it cannot be decoded."""
    try:
        dec: Any = av.CodecContext.create(codec, "r")
        for packet in dec.parse(data):
            for frame in dec.decode(packet):
                return frame.width, frame.height
    except av.error.FFmpegError as e:
        log.debug("size probe failed: %s", e)
    return None


class GopOutput:
    """A session's packets as :class:`GopBuffer` items (the ``gop`` output mode).

    Each GOP's frames are numbered when the GOP is complete, in presentation order; the
    frame rate counts a frame per packet kept.
    """

    def __init__(self, codec: str, annexb: AnnexB, max_frames: int, stamper: FrameStamper, stats: SourceStats,
                 emit: Callable[[LiveItem], bool], session: int) -> None:
        self._codec = codec
        self._annexb = annexb
        self._assembler = GopAssembler(max_frames, stamper.source_id)
        self._stamper = stamper
        self._stats = stats
        self._emit = emit
        self._session = session

    def packet(self, packet: Any, arrival: float) -> bool:
        is_key = bool(packet.is_keyframe)
        raw_pts = packet.pts if packet.pts is not None else packet.dts
        data = self._annexb.convert(packet)
        if not data:
            return True
        kept, done = self._assembler.add(data, is_key, raw_pts, arrival)
        if not kept:
            self._stats.skipped()
            return True
        self._stats.frames_out(1, arrival)
        ok = True
        for gop in done:
            ok = self._send(gop) and ok
        return ok

    def close(self, flush: bool) -> None:
        """End of session: emit the open GOP when ``flush`` (not when the source stops)."""
        gop = self._assembler.flush()
        if flush and gop is not None:
            self._send(gop)

    def _send(self, gop: Gop) -> bool:
        if not self._stats.width or not self._stats.height:
            size = probe_size(self._codec, gop.data)
            if size is not None:
                self._stats.frame_size(*size)
        width, height = self._stats.width or 1, self._stats.height or 1
        metas = tuple(self._stamper.stamp(pts, width, height, arrival) for pts, arrival in gop.frames)
        return self._emit(GopBuffer(self._stamper.source_id, gop.data, GOP_FORMATS[self._codec], self._codec,
                                    metas, self._session))
