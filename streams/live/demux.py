"""Packets out of a live container, and the numbering and clock of a source's frames.

* :func:`open_track`: the container's video track (codec, time base, frame step).
* :class:`PacketReader`: the track's packets with their arrival times; a ``file://`` source
  is paced at its frame rate and looped (``live.pace_files`` / ``live.loop_files``), so a
  recorded clip runs through the same path as a camera.
* :class:`AnnexB`: each packet as a self-contained Annex-B access unit (parameter sets in
  band before keyframes), what NVDEC and GOP buffers take.
* :class:`PtsClock` and :class:`FrameStamper`: every frame a source outputs gets the next
  frame index (0, 1, 2, ... over the source's whole life, reconnects included) and a
  strictly increasing pts.

Usage::

    track = open_track(container)
    stamper.start_session(track.time_base, track.step)
    for packet, arrival in PacketReader(paced=False, loop=False, stop=ev).packets(container, track.stream):
        data = annexb.convert(packet)
        meta = stamper.stamp(packet.pts, width, height, arrival)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av

from streams.frames import FrameMeta
from streams.live.connection import FatalStreamError

# codec -> raw elementary-stream format a GOP buffer is written in
GOP_FORMATS = {"h264": "h264", "hevc": "hevc", "mpeg4": "m4v", "mjpeg": "mjpeg"}
IN_BAND_PARAMS = {"h264", "hevc", "mpeg4"}  # codecs whose extradata dump_extra re-inserts


@dataclass(frozen=True)
class Track:
    """The video track of one session: its PyAV stream and codec context, the codec's name,
    the time base and the pts step of one frame (``None`` when the rate is unknown)."""

    stream: Any
    ctx: Any
    codec: str
    time_base: Fraction
    step: int | None

    @property
    def time_base_tuple(self) -> tuple[int, int]:
        return (self.time_base.numerator, self.time_base.denominator)


def open_track(container: Any) -> Track:
    """The first video track of ``container``; :class:`FatalStreamError` when there is none."""
    if not container.streams.video:
        raise FatalStreamError("the stream has no video track")
    stream = container.streams.video[0]
    tb = Fraction(stream.time_base or Fraction(1, 90000))
    rate = stream.guessed_rate or stream.average_rate
    step = round(1 / (Fraction(rate) * tb)) if rate else None
    return Track(stream, stream.codec_context, stream.codec_context.name, tb, step)


class PacketReader:
    """A session's packets with the time each arrived; see the module docstring.

    Arrival is ``time.time()`` when the packet left the demuxer; for a paced file it is
    when the packet was due, so a reader that falls behind shows as latency, as a camera's
    socket buffer filling would. The flush packets PyAV yields at end of stream are left out.
    """

    def __init__(self, *, paced: bool, loop: bool, stop: threading.Event) -> None:
        self.paced = paced
        self.loop = loop
        self._stop = stop

    def packets(self, container: Any, stream: Any) -> Iterator[tuple[Any, float]]:
        if not self.paced:
            for packet in container.demux(stream):
                if packet.size:
                    yield packet, time.time()
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
                yield packet, time.time() - (time.monotonic() - due)
            if not self.loop or first is None:
                return
            rate = stream.average_rate or stream.guessed_rate
            offset += (last - first) + (1.0 / float(rate) if rate else 1 / 30)
            container.seek(0, stream=stream)


def annexb_filter(codec: str, extradata: bytes | None) -> str:
    """The bitstream filter that makes every keyframe self-contained Annex-B.

    RTSP delivers Annex-B already (SPS/PPS maybe only in the SDP: ``dump_extra`` puts the
    extradata before each keyframe). MP4/MKV files carry length-prefixed packets and an
    ``avcC``/``hvcC`` record (first byte 1): ``*_mp4toannexb`` converts both.
    """
    if extradata and extradata[:1] == b"\x01" and codec in ("h264", "hevc"):
        return f"{codec}_mp4toannexb"
    return "dump_extra=freq=keyframe"


class AnnexB:
    """A session's packets as self-contained Annex-B access units (one filter per session:
    it keeps state between packets). Codecs without in-band parameter sets pass through."""

    def __init__(self, track: Track) -> None:
        self._bsf: Any = None
        if track.codec in IN_BAND_PARAMS:
            self._bsf = av.BitStreamFilterContext(annexb_filter(track.codec, track.ctx.extradata),
                                                  track.stream)

    def convert(self, packet: Any) -> bytes:
        """The packet's access unit (empty while the filter holds data back)."""
        outs = self._bsf.filter(packet) if self._bsf is not None else [packet]
        return b"".join(bytes(p) for p in outs)


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


class FrameStamper:
    """The identity of every frame one source outputs (not thread-safe: the reader's).

    Frame indices count from 0 over the source's life, one per frame handed out, with no
    gap: a number is taken only when its :class:`FrameMeta` is built, and the caller hands
    that frame out next. pts go through a :class:`PtsClock`.
    """

    def __init__(self, source_id: str, uri: str) -> None:
        self.source_id = source_id
        self.uri = uri
        self.clock = PtsClock()
        self.next_index = 0
        self.time_base = (1, 90000)

    def start_session(self, track: Track) -> None:
        """A new session's time base and frame step (its pts continue the previous ones)."""
        self.time_base = track.time_base_tuple
        self.clock.set_step(track.step)

    def stamp(self, raw_pts: int | None, width: int, height: int, arrival: float | None) -> FrameMeta:
        """The next frame's metadata (takes the next index)."""
        meta = FrameMeta(
            source_id=self.source_id, uri=self.uri, frame_index=self.next_index,
            pts=self.clock.next(raw_pts), time_base=self.time_base, width=width, height=height,
            arrival_time=arrival,
        )
        self.next_index += 1
        return meta
