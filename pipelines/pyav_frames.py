"""A video file's frames decoded with PyAV from a given frame on: where a resumed job continues.

:class:`~pipelines.video_decoding.FileDecoder` (the CPU path: H.264/HEVC on a CPU-only
machine, codecs NVDEC lacks on the GPU) decodes files whole. A file that ``fovea run
--resume`` continues (:class:`~pipelines.segments.ResumedFile`) is wanted from frame ``N``
on, ``N`` counted as an uninterrupted decode counts: the decoder's first frame is 0. Instead
of decoding the ``N`` frames before it again, :class:`PyAVFrames` starts at the keyframe at
or before frame ``N`` and drops what comes before ``N``, giving every later frame the index
and pts an uninterrupted decode gives it:

1. *Head*: the decoder's first frame. Its pts places frame 0 in the probe's pts list (a file
   can start with frames the decoder never outputs: a recording cut before its first
   keyframe, whose leading frames reference pictures that are not in it).
2. *Seek*: to the pts of the keyframe at or before frame ``N``
   (``container.seek(pts, backward=True, any_frame=False, stream=...)``). Frames with an
   earlier pts are dropped (the leading pictures of an open GOP; a demuxer that lands on an
   earlier keyframe); the keyframe must then come out with its pts, and every frame up to
   ``N`` with the probe's pts: from there on frames are counted, as a decode from the start
   counts them. A demuxer that lands past the keyframe (MPEG-TS has no index: FFmpeg seeks it
   by timestamp and can land a GOP late) is sought again from up to two keyframes earlier.
3. *Fallback*: when that fails (a frame without pts, pts other than the probe's, seeking
   refused, the file ending before frame ``N``, a decode error before it), the file is
   decoded from its start and its first ``N`` frames dropped, with one warning saying why.

The mapping assumes what the DALI path assumes too: after its first frame, the decoder
outputs one frame per demuxed pts, in pts order, up to the keyframe sought (the frames
from there to ``N`` are checked).

Usage::

    with PyAVFrames(path, info, first=n) as frames:
        for index, frame in frames:        # (int, av.VideoFrame), index n, n + 1, ...
            ...
        frames.decoded, frames.started_at, frames.fallback
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from pipelines.segments import ResumedFile, resume_keyframe
from streams.sources.files import VideoFile
from streams.sources.probe import VideoInfo

log = logging.getLogger(__name__)

#: seek targets tried: the keyframe at or before the wanted frame, then the keyframes before it
SEEK_TRIES = 3


def first_index(f: VideoFile) -> int:
    """The first frame index the PyAV path hands on for ``f``: a resumed file's ``resume_at``, else 0."""
    return f.resume_at if isinstance(f, ResumedFile) and f.resume_at > 0 else 0


def planned_range(f: VideoFile, info: VideoInfo) -> tuple[int, int]:
    """The PyAV path's plan for ``f``: (its first frame index handed on, the frames from there
    that the probe found)."""
    start = first_index(f)
    return start, max(0, info.num_frames - start)


class _Miss(Exception):
    """Seeking cannot give the frames an uninterrupted decode gives: why (decode from the start)."""


class _LandedPast(_Miss):
    """The demuxer landed past the keyframe sought (an earlier target may do)."""


class PyAVFrames:
    """The frames of ``path`` from index ``first`` on, as ``(index, frame)``; see the module docstring.

    After iterating: :attr:`decoded` (frames the decoder output, dropped ones included: the
    work done), :attr:`started_at` (the frame index decoding ran from: the keyframe sought,
    or 0), :attr:`fallback` (why the file was decoded from its start for a ``first`` > 0, or
    ``None``). Decode errors past frame ``first`` raise PyAV's errors, as a decode from the
    start would. ``progress`` is called for every frame decoded, dropped ones included (a
    watchdog waiting for frames sees the work: a fallback can decode for hours before it hands
    on its first frame).
    """

    def __init__(self, path: Path | str, info: VideoInfo, first: int = 0,
                 progress: Callable[[], object] | None = None) -> None:
        if first < 0:
            raise ValueError(f"first must be >= 0, got {first}")
        self.path = str(path)
        self.info = info
        self.first = first
        self.decoded = 0
        self.started_at = 0
        self.fallback: str | None = None
        self._progress = progress
        self._container: Any = None

    def __enter__(self) -> PyAVFrames:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (the figures stay); iterating again opens it again."""
        if self._container is not None:
            self._container.close()
            self._container = None

    def _open(self) -> tuple[Any, Any]:
        """A fresh container (closing the previous one) and its first video stream."""
        import av

        self.close()
        # metadata that is not UTF-8 (a Latin-1 title) must not make the video unreadable
        self._container = av.open(self.path, metadata_errors="replace")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        return self._container, stream

    def _frames(self, container: Any, stream: Any) -> Iterator[Any]:
        progress = self._progress
        for frame in container.decode(stream):
            self.decoded += 1
            if progress is not None:
                progress()
            yield frame

    # -- the hot path ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, Any]]:
        n = self.first
        if n == 0:
            yield from self._from_start(0)
            return
        found = self._seek_or_say_why(n)
        if self.fallback is not None:
            log.warning("%s: cannot continue it at frame %d from a keyframe: %s; decoding it from its first "
                        "frame instead (the %d frames before are decoded again and dropped)",
                        self.path, n, self.fallback, n)
            yield from self._from_start(n)
            return
        if found is None:  # no seek worth it: the keyframe is the decoder's first frame
            yield from self._from_start(n)
            return
        index, frame, rest = found
        if frame is None:
            return  # the file ends right before frame ``n``
        log.info("%s: continuing at frame %d, decoded from the keyframe at frame %d", self.path, n, self.started_at)
        yield index, frame
        for frame in rest:
            index += 1
            yield index, frame

    def _from_start(self, n: int) -> Iterator[tuple[int, Any]]:
        """Every frame from the file's start, those before ``n`` dropped."""
        self.started_at = 0
        container, stream = self._open()
        for index, frame in enumerate(self._frames(container, stream)):
            if index >= n:
                yield index, frame

    # -- seeking -------------------------------------------------------------------------
    def _seek_or_say_why(self, n: int) -> tuple[int, Any, Iterator[Any]] | None:
        """:meth:`_seek`, its failure's reason in :attr:`fallback`."""
        import av

        try:
            return self._seek(n)
        except _Miss as miss:
            self.fallback = str(miss)
        except av.error.FFmpegError as e:
            self.fallback = f"decoding failed while seeking ({e.strerror or e})"
        return None

    def _seek(self, n: int) -> tuple[int, Any, Iterator[Any]] | None:
        """Decode from the keyframe at or before frame ``n``: (``n``, its frame or ``None`` when
        the file ends before it, the decoder's next frames), or ``None`` when that keyframe is
        the file's first frame. Raises :class:`_Miss` (or PyAV's errors) when it cannot."""
        info = self.info
        if not info.keyframes:
            raise _Miss("the probe found no keyframe in it")
        offset = self._head()
        want = n + offset  # frame ``n`` in the probe's pts list
        key = resume_keyframe(info, want)
        if key <= offset:
            return None
        keys = list(info.keyframes)
        at = keys.index(key)
        targets = [k for k in keys[max(0, at - SEEK_TRIES + 1):at + 1] if k >= offset][::-1]
        past: _LandedPast | None = None
        for target in targets:
            try:
                return self._decode_from(target, key, want, offset)
            except _LandedPast as e:
                past = e
        assert past is not None
        raise _Miss(f"{past}{' (also from earlier keyframes)' if len(targets) > 1 else ''}")

    def _head(self) -> int:
        """Where the decoder's first frame is in the probe's pts list."""
        import av

        container, stream = self._open()
        try:
            first = next(self._frames(container, stream), None)
        except av.error.FFmpegError as e:
            raise _Miss(f"its first frame does not decode ({e.strerror or e})") from e
        if first is None:
            raise _Miss("the decoder outputs no frame")
        pts = self.info.pts
        i = bisect.bisect_left(pts, first.pts) if first.pts is not None else len(pts)
        if i == len(pts) or pts[i] != first.pts:
            raise _Miss(f"its first decoded frame has pts {first.pts}, not one the probe found")
        return i

    def _decode_from(self, target: int, key: int, want: int, offset: int) -> tuple[int, Any, Iterator[Any]]:
        """Seek to the probe's frame ``target`` (a keyframe at or before ``key``), decode to the
        probe's frame ``want``, checking every frame from the keyframe ``key`` on."""
        import av

        pts = self.info.pts
        container, stream = self._open()
        try:
            container.seek(pts[target], backward=True, any_frame=False, stream=stream)
        except (av.error.FFmpegError, OSError) as e:  # e.g. input that cannot seek
            raise _Miss(f"seeking is refused ({e})") from e
        self.started_at = key - offset
        frames = self._frames(container, stream)
        index: int | None = None  # the probe's index of the last frame, once the keyframe came
        for frame in frames:
            p = frame.pts
            if p is None:
                raise _Miss(f"a frame without pts after seeking to frame {key - offset}")
            if index is None:
                if p < pts[key]:
                    continue  # before the keyframe: an open GOP's leading pictures, or an earlier landing
                if p != pts[key]:
                    raise _LandedPast(f"seeking to frame {key - offset} (pts {pts[key]}) lands at pts {p}")
                index = key
            else:
                index += 1
                if index >= len(pts) or p != pts[index]:
                    want_pts = pts[index] if index < len(pts) else "none"
                    raise _Miss(f"frame {index - offset} decodes with pts {p} after seeking, the probe found "
                                f"{want_pts}")
            if index == want:
                return want - offset, frame, frames
        if index is None:
            raise _LandedPast(f"seeking to frame {key - offset} (pts {pts[key]}) lands at the end of the file")
        if index == want - 1:
            return want - offset, None, frames
        raise _Miss(f"the decode ended before frame {want - offset} after seeking to frame {key - offset}")
