"""Splitting a job's files into keyframe-aligned segments, balanced over decode sessions.

A decode session is one long-lived DALI reader pipeline (one NVDEC session). Giving each
session whole files leaves most sessions idle at the end of a job whose files differ in
length, and building a pipeline per file costs more than decoding a short file. Instead
the files are cut at keyframes into segments of about ``chunk`` frames, the segments are
dealt out longest first to the least-loaded session (LPT scheduling), and each session
reads its segments through one reader (a ``file_list`` with ``start end`` frame ranges).
Cutting at keyframes means no frame is decoded twice.

Dealing everything up front assumes every session decodes at the same speed; they do not
(more sessions than NVDEC engines share engines unevenly, and the GPU is shared with
inference), so the last sessions finished seconds after the first. :func:`plan_work` deals
only ``1 - shared`` of the frames up front and leaves the rest in a :class:`SegmentQueue`
that sessions free early take from (guided self-scheduling: half of a session's fair share of
what is left per take, so takes shrink towards the end and few pipelines are built).

Usage::

    plans = plan_segments([(file, info, geom), ...], sessions=14)
    for session, segs in enumerate(plans):
        sum(s.frames for s in segs)          # about the same for every session

    plans, rest = plan_work(files, sessions=10, shared=0.3)
    queue = SegmentQueue(rest, sessions=10)
    queue.take()                             # segments of one geometry, longest first; [] when empty
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from operators.boxes import LetterboxGeometry
from streams.files import VideoFile
from streams.probe import VideoInfo


@dataclass(frozen=True)
class Segment:
    """Frames ``[start, end)`` of one file (``start`` is a keyframe, or 0)."""

    file: VideoFile
    info: VideoInfo
    geometry: LetterboxGeometry
    start: int
    end: int

    @property
    def frames(self) -> int:
        return self.end - self.start


def cut_points(info: VideoInfo, chunk: int) -> list[int]:
    """Keyframe indices where ``info``'s file is cut into pieces of about ``chunk`` frames.

    Returns the piece starts, ``[0, k1, k2, ...]``; a piece is never shorter than
    ``chunk // 2`` except when the file itself is.
    """
    n = info.num_frames
    starts = [0]
    for k in info.keyframes:
        if k - starts[-1] >= chunk and n - k >= chunk // 2:
            starts.append(k)
    return starts


def plan_segments(
    files: Sequence[tuple[VideoFile, VideoInfo, LetterboxGeometry]],
    sessions: int,
    chunk: int | None = None,
    min_chunk: int = 512,
) -> list[list[Segment]]:
    """Deal keyframe-aligned segments of ``files`` out to ``sessions`` sessions.

    Args:
        files: the probed files with their letterbox geometry, in job order.
        sessions: number of decode sessions; fewer lists come back when there are fewer
            segments than sessions.
        chunk: target segment length in frames; default: a quarter of a session's share,
            at least ``min_chunk``.

    Returns:
        One list of segments per session, loads within about one segment of each other.
        Within a list, segments are ordered by geometry (a pipeline per geometry), then
        job order, then start frame.
    """
    plans, rest = plan_work(files, sessions, chunk, min_chunk, shared=0.0)
    assert not rest
    return plans


def plan_work(
    files: Sequence[tuple[VideoFile, VideoInfo, LetterboxGeometry]],
    sessions: int,
    chunk: int | None = None,
    min_chunk: int = 512,
    shared: float = 0.0,
) -> tuple[list[list[Segment]], list[Segment]]:
    """Like :func:`plan_segments`, keeping about ``shared`` of the frames back.

    Returns ``(plans, rest)``: the per-session lists (LPT, each session loaded up to
    ``(1 - shared)`` of its fair share) and the segments left for a :class:`SegmentQueue`,
    longest first. With ``shared > 0`` the default ``chunk`` is finer (an eighth of a
    session's share, at least ``min_chunk``), so the queue's segments are short.
    """
    if sessions < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    if not 0.0 <= shared < 1.0:
        raise ValueError(f"shared must be in [0, 1), got {shared}")
    total = sum(info.num_frames for _, info, _ in files)
    if chunk is None:
        parts = 8 if shared > 0 else 4
        chunk = max(min_chunk, total // (parts * sessions) if sessions else total)
    order: dict[str, int] = {}
    segs: list[Segment] = []
    for i, (f, info, geom) in enumerate(files):
        order[f.source_id] = i
        starts = cut_points(info, chunk)
        ends = [*starts[1:], info.num_frames]
        segs += [Segment(f, info, geom, a, b) for a, b in zip(starts, ends, strict=True) if b > a]
    n = min(sessions, len(segs))
    if n == 0:
        return [], []
    cap = (1.0 - shared) * total / n if shared > 0 else float("inf")
    heap = [(0, k) for k in range(n)]
    plans: list[list[Segment]] = [[] for _ in range(n)]
    rest: list[Segment] = []
    for seg in sorted(segs, key=lambda s: -s.frames):
        load, k = heapq.heappop(heap)
        if plans[k] and load + seg.frames > cap:  # every session has its share: keep it back
            rest.append(seg)
            heapq.heappush(heap, (load, k))
            continue
        plans[k].append(seg)
        heapq.heappush(heap, (load + seg.frames, k))
    for p in plans:
        p.sort(key=lambda s: (_geom_key(s.geometry), order[s.file.source_id], s.start))
    return plans, rest


class SegmentQueue:
    """Segments taken by whichever session is free first; thread-safe.

    :meth:`take` returns segments of one geometry (one reader pipeline), longest first,
    about half of a session's fair share of the frames left (at least one segment), so
    takes shrink as the queue empties and the sessions finish close together.
    """

    def __init__(self, segments: Sequence[Segment], sessions: int) -> None:
        self._segs = sorted(segments, key=lambda s: -s.frames)
        self._sessions = max(1, sessions)
        self._lock = threading.Lock()
        self.takes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._segs)

    def take(self) -> list[Segment]:
        with self._lock:
            if not self._segs:
                return []
            left = sum(s.frames for s in self._segs)
            want = left / (2 * self._sessions)
            key = _geom_key(self._segs[0].geometry)
            got: list[Segment] = []
            n = 0
            for seg in list(self._segs):
                if got and n >= want:
                    break
                if _geom_key(seg.geometry) != key:
                    continue
                got.append(seg)
                n += seg.frames
                self._segs.remove(seg)
            self.takes += 1
        return got


def _geom_key(g: LetterboxGeometry) -> tuple[int, ...]:
    return (g.src_w, g.src_h, g.resized_w, g.resized_h, g.dst_w, g.dst_h, g.pad_x, g.pad_y)
