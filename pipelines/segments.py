"""Splitting a job's files into keyframe-aligned segments, balanced over decode sessions.

A decode session is one long-lived DALI reader pipeline (one NVDEC session). Giving each
session whole files leaves most sessions idle at the end of a job whose files differ in
length, and building a pipeline per file costs more than decoding a short file. Instead
the files are cut at keyframes into segments of about ``chunk`` frames, the segments are
dealt out longest first to the least-loaded session (LPT scheduling), and each session
reads its segments through one reader (a ``file_list`` with ``start end`` frame ranges).
Cutting at keyframes means no frame is decoded twice.

LPT leaves the loads up to about one segment apart, and the sessions would finish that far
apart. A rebalancing pass then cuts a piece off one of the most-loaded session's segments
at a keyframe and hands it to a lighter session reading the same geometry (the piece and
the receiver chosen so the pair ends up most even), counting each extra segment as
``switch_cost`` frames (a reader opening another file range costs about that much decoding
time; the default is an estimate, see benchmarks/RESULTS.md), until no move shortens the
longest session.

The plan is fixed before decoding, one pipeline per session, because reader pipelines are
expensive beyond their own build: sessions that decode several pipelines in turn (even with
the next one started early) decode markedly slower than sessions with one long-lived
pipeline each, and work pools that hand out units as sessions free up lose more to
pipeline builds than an even finish wins back (see benchmarks/RESULTS.md).

A file a resumed job continues (:class:`ResumedFile`: its outputs already hold the frames
before ``resume_at``) is cut from the last keyframe at or before that frame: the frames in
front of it are not decoded again.

Usage::

    plans = plan_segments([(file, info, geom), ...], sessions=14)
    for session, segs in enumerate(plans):
        sum(s.frames for s in segs)          # about the same for every session
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from operators.boxes import LetterboxGeometry
from streams.sources.files import VideoFile
from streams.sources.probe import VideoInfo


@dataclass(frozen=True)
class ResumedFile(VideoFile):
    """A file continued by a resumed job: the job's outputs hold its frames before ``resume_at``."""

    resume_at: int = 0


def resume_keyframe(info: VideoInfo, frame: int) -> int:
    """The last keyframe at or before ``frame`` (0 when none is): where decoding restarts."""
    i = bisect.bisect_right(info.keyframes, frame)
    return info.keyframes[i - 1] if i else 0


def first_frame(f: VideoFile, info: VideoInfo) -> int:
    """The frame ``f``'s decoding starts at: 0, or for a :class:`ResumedFile` its resume keyframe."""
    return resume_keyframe(info, f.resume_at) if isinstance(f, ResumedFile) and f.resume_at > 0 else 0


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


def cut_points(info: VideoInfo, chunk: int, first: int = 0) -> list[int]:
    """Keyframe indices where ``info``'s file, from frame ``first`` (0 or a keyframe) on, is
    cut into pieces of about ``chunk`` frames.

    Returns the piece starts, ``[first, k1, k2, ...]``; a piece is never shorter than
    ``chunk // 2`` except when the file itself is.
    """
    n = info.num_frames
    starts = [first]
    for k in info.keyframes:
        if k > first and k - starts[-1] >= chunk and n - k >= chunk // 2:
            starts.append(k)
    return starts


def plan_segments(
    files: Sequence[tuple[VideoFile, VideoInfo, LetterboxGeometry]],
    sessions: int,
    chunk: int | None = None,
    min_chunk: int = 512,
    min_piece: int = 64,
    switch_cost: int = 32,
) -> list[list[Segment]]:
    """Deal keyframe-aligned segments of ``files`` out to ``sessions`` sessions.

    Args:
        files: the probed files with their letterbox geometry, in job order; a
            :class:`ResumedFile` starts at its resume keyframe.
        sessions: number of decode sessions; fewer lists come back when there are fewer
            segments than sessions.
        chunk: target segment length in frames; default: a quarter of a session's share,
            at least ``min_chunk``.
        min_piece: the shortest piece the rebalancing pass cuts off or leaves behind.
        switch_cost: what one more segment in a session's list weighs, in frames.

    Returns:
        One list of segments per session, loads within about a GOP of each other where the
        files' keyframes allow (each extra segment counted as ``switch_cost`` frames).
        Within a list, segments are ordered by geometry (a pipeline per geometry), then
        job order, then start frame.
    """
    if sessions < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    firsts = [first_frame(f, info) for f, info, _ in files]
    total = sum(info.num_frames - a for (_, info, _), a in zip(files, firsts, strict=True))
    if chunk is None:
        chunk = max(min_chunk, total // (4 * sessions) if sessions else total)
    order: dict[str, int] = {}
    segs: list[Segment] = []
    for i, ((f, info, geom), first) in enumerate(zip(files, firsts, strict=True)):
        order[f.source_id] = i
        starts = cut_points(info, chunk, first)
        ends = [*starts[1:], info.num_frames]
        segs += [Segment(f, info, geom, a, b) for a, b in zip(starts, ends, strict=True) if b > a]
    n = min(sessions, len(segs))
    if n == 0:
        return []
    heap = [(0, k) for k in range(n)]
    plans: list[list[Segment]] = [[] for _ in range(n)]
    for seg in sorted(segs, key=lambda s: -s.frames):
        load, k = heapq.heappop(heap)
        plans[k].append(seg)
        heapq.heappush(heap, (load + seg.frames, k))
    _rebalance(plans, min_piece, switch_cost)
    for p in plans:
        p.sort(key=lambda s: (_geom_key(s.geometry), order[s.file.source_id], s.start))
    return plans


def _rebalance(plans: list[list[Segment]], min_piece: int, switch_cost: int) -> None:
    """Move keyframe-aligned pieces off the most-loaded session while that shortens it
    without making another session as long (in place; see the module docstring)."""
    n = len(plans)
    if n < 2:
        return
    loads = [sum(s.frames for s in p) + switch_cost * (len(p) - 1) for p in plans]
    for _ in range(4 * n):
        hi = max(range(n), key=loads.__getitem__)
        best: tuple[int, int, int, int] | None = None  # (the pair's new max load, receiver, segment, cut)
        for lo in sorted(range(n), key=loads.__getitem__):
            if loads[lo] + switch_cost >= loads[hi] or (best is not None and loads[lo] >= best[0]):
                break  # receivers are sorted: none further on can do better
            geoms = {s.geometry for s in plans[lo]}
            target = (loads[hi] - loads[lo] - switch_cost) // 2  # frames to move for equal loads
            for j, seg in enumerate(plans[hi]):
                if geoms and seg.geometry not in geoms:  # another geometry: another pipeline for ``lo``
                    continue
                for cut in _cuts_near(seg, seg.end - target, min_piece):
                    moved = seg.end - cut
                    whole = cut == seg.start  # the segment moves: ``hi`` also has one segment less
                    worst = max(loads[hi] - moved - (switch_cost if whole else 0), loads[lo] + moved + switch_cost)
                    if worst < loads[hi] and (best is None or worst < best[0]):
                        best = (worst, lo, j, cut)
        if best is None:
            return
        _, lo, j, cut = best
        seg = plans[hi][j]
        moved = seg.end - cut
        if cut == seg.start:
            plans[hi].pop(j)
            loads[hi] -= moved + switch_cost
        else:
            plans[hi][j] = Segment(seg.file, seg.info, seg.geometry, seg.start, cut)
            loads[hi] -= moved
        plans[lo].append(Segment(seg.file, seg.info, seg.geometry, cut, seg.end))
        loads[lo] += moved + switch_cost


def _cuts_near(seg: Segment, at: int, min_piece: int) -> list[int]:
    """Where ``seg`` can be cut near frame ``at``: the nearest keyframes on either side that
    leave both pieces at least ``min_piece`` long, and the segment's own start (moving it whole)."""
    keys = seg.info.keyframes
    lo = bisect.bisect_left(keys, seg.start + min_piece)
    hi = bisect.bisect_right(keys, seg.end - min_piece)
    i = min(max(bisect.bisect_left(keys, at, lo, hi), lo), hi)
    return [*keys[max(lo, i - 1):min(hi, i + 1)], seg.start]


def _geom_key(g: LetterboxGeometry) -> tuple[int, ...]:
    return (g.src_w, g.src_h, g.resized_w, g.resized_h, g.dst_w, g.dst_h, g.pad_x, g.pad_y)
