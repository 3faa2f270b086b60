"""Frame sizes announced inside a video stream: how the probe finds a size change mid-stream.

Fovea decodes a file at one frame size (one letterbox geometry, one reader buffer shape).
DALI's readers do not report a size change: a VP9 file going from 96x64 to 64x48 comes
out of the CPU reader as the smaller frames' bytes laid out at the larger size, with no
error. So the probe, while it demuxes, watches the size that keyframes announce:

* VP9: a keyframe's uncompressed header carries its frame size (a few bits, parsed here;
  every frame of a superframe is looked at).
* H.264/HEVC: a new size needs a new sequence parameter set, which only takes effect at an
  IDR/IRAP picture, i.e. a keyframe. The SPS NAL units at the head of each keyframe packet
  are compared with the last one seen; a keyframe whose SPS differs is decoded alone to
  read its size (rare: encoders repeat an unchanged SPS, and comparing bytes is cheap).

Not seen: VP9 frames that change size through their reference frames (libvpx's dynamic
resize, a real-time feature) or intra-only frames, and an SPS beyond the first
:data:`HEAD_BYTES` of a packet.

Usage::

    watch = SizeWatch(stream.codec_context.name, stream.codec_context.extradata, 1920, 1080)
    for packet in container.demux(stream):
        if packet.is_keyframe and (size := watch.keyframe(packet)) is not None:
            ...  # (width, height) differs from 1920x1080 from this packet on
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

HEAD_BYTES = 1024  # how much of a keyframe packet is searched for parameter sets
_VP9_SYNC = 0x498342


class _Bits:
    """Big-endian bit reader over ``data``; reading past the end raises :class:`IndexError`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            v = (v << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v


def vp9_keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """The frame size in a VP9 keyframe's uncompressed header; ``None`` for another frame
    type or a header that does not parse."""
    r = _Bits(frame)
    try:
        if r.u(2) != 2:  # frame_marker
            return None
        profile = r.u(1) | (r.u(1) << 1)
        if profile == 3:
            r.u(1)
        if r.u(1):  # show_existing_frame
            return None
        if r.u(1) != 0:  # frame_type: 0 is a keyframe
            return None
        r.u(2)  # show_frame, error_resilient_mode
        if r.u(24) != _VP9_SYNC:
            return None
        if profile >= 2:
            r.u(1)  # ten_or_twelve_bit
        if r.u(3) != 7:  # color_space other than RGB
            r.u(1)  # color_range
            if profile in (1, 3):
                r.u(3)  # subsampling_x, subsampling_y, reserved_zero
        elif profile in (1, 3):
            r.u(1)  # reserved_zero
        return r.u(16) + 1, r.u(16) + 1
    except IndexError:
        return None


_VP9_INDEX_MAX = 2 + 4 * 8  # the longest superframe index: 8 frames, 4-byte sizes


def vp9_frame_spans(length: int, tail: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the frames of a VP9 packet of ``length`` bytes ending in ``tail``
    (its last :data:`_VP9_INDEX_MAX` bytes or fewer): one, or those a superframe index lists."""
    if not length or not tail:
        return []
    marker = tail[-1]
    if marker & 0xE0 == 0xC0:
        count = (marker & 7) + 1
        width = ((marker >> 3) & 3) + 1
        size = 2 + width * count
        if len(tail) >= size and tail[-size] == marker:
            out, at = [], 0
            index = tail[-size + 1:-1]
            for i in range(count):
                n = int.from_bytes(index[i * width:(i + 1) * width], "little")
                out.append((at, min(n, length - at)))
                at += n
            return [(a, n) for a, n in out if n > 0]
    return [(0, length)]


def nal_units(head: bytes, length_size: int | None) -> Iterator[bytes]:
    """The complete NAL units in ``head``: Annex B (``length_size`` None) or length-prefixed."""
    if length_size is None:
        starts = []
        i = head.find(b"\x00\x00\x01")
        while i >= 0:
            starts.append(i + 3)
            i = head.find(b"\x00\x00\x01", i + 3)
        for a, b in itertools.pairwise(starts):
            yield head[a:b - 3].rstrip(b"\x00")  # the next start code may be 4 bytes long
        return
    pos = 0
    while pos + length_size <= len(head):
        n = int.from_bytes(head[pos:pos + length_size], "big")
        if n == 0 or pos + length_size + n > len(head):
            return
        yield head[pos + length_size:pos + length_size + n]
        pos += length_size + n


def _length_size(codec: str, extradata: bytes | None) -> int | None:
    """NAL length-prefix size of an avcC/hvcC stream; ``None`` for Annex B (no such record)."""
    if not extradata or extradata[0] != 1:
        return None
    if codec == "h264" and len(extradata) >= 5:
        return (extradata[4] & 3) + 1
    if codec == "hevc" and len(extradata) >= 23:
        return (extradata[21] & 3) + 1
    return None


def _is_sps(codec: str, nal: bytes) -> bool:
    if not nal:
        return False
    return (nal[0] & 0x1F) == 7 if codec == "h264" else ((nal[0] >> 1) & 0x3F) == 33


class SizeWatch:
    """Finds the first keyframe whose frame size differs from ``width`` x ``height``; see
    the module docstring. Feed it keyframe packets in demux order."""

    def __init__(self, codec: str, extradata: bytes | None, width: int, height: int) -> None:
        self.codec = codec
        self.extradata = extradata
        self.size = (width, height)
        self._length = _length_size(codec, extradata)
        self._sps: bytes | None = None

    @property
    def watches(self) -> bool:
        return self.codec in ("vp9", "h264", "hevc")

    def keyframe(self, packet: Any) -> tuple[int, int] | None:
        """The packet's frame size when it differs from the stream's, else ``None``."""
        view = memoryview(packet)
        if self.codec == "vp9":  # a few header bytes per frame are copied, not the packet
            for at, n in vp9_frame_spans(len(view), bytes(view[-_VP9_INDEX_MAX:])):
                size = vp9_keyframe_size(bytes(view[at:at + min(n, 64)]))
                if size is not None and size != self.size:
                    return size
            return None
        if self.codec not in ("h264", "hevc"):
            return None
        sps = next((n for n in nal_units(bytes(view[:HEAD_BYTES]), self._length) if _is_sps(self.codec, n)), None)
        if sps is None or sps == self._sps:
            return None
        first = self._sps is None
        self._sps = sps
        if first:  # the SPS the stream's size was read from (the probe decodes the first frame)
            return None
        size = self._decoded_size(bytes(view))
        return size if size is not None and size != self.size else None

    def _decoded_size(self, data: bytes) -> tuple[int, int] | None:
        """Decode one keyframe alone (its SPS/PPS travel with it) for its frame size."""
        import av

        try:
            ctx: Any = av.CodecContext.create(self.codec, "r")
            if self.extradata:
                ctx.extradata = self.extradata
            frames = list(ctx.decode(av.Packet(data))) + list(ctx.decode(None))
        except (av.error.FFmpegError, ValueError) as e:
            log.debug("a keyframe with a new SPS does not decode alone: %s", e)
            return None
        return (frames[0].width, frames[0].height) if frames else None
