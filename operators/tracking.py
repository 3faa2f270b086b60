"""Tracking bookkeeping that needs no tracker library: a source's clock and its track summaries.

:class:`SourceClock` puts each frame of one source on a time line in seconds (its pts),
measures the source's frame rate and reports silences (time with no frame, seen from the
pts or, for live sources, from the frames' arrival times). :class:`TrackBook` keeps the
summary of every track of one source (class, first and last frame, frames seen, why it
ended), bounded for long live runs. :mod:`pipelines.tracking` drives both.

Usage::

    clock = SourceClock()
    clock.learn_rate([r.frame for r in results])   # True once two frames with pts were seen
    t, silence = clock.advance(meta)              # seconds on the source's clock, time since the last frame

    book = TrackBook(keep=1000)
    book.observe(meta, track_ids, detections.class_id, detections.class_names)
    book.end(book.active - alive, "lost")
    book.report()
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.frames import FrameMeta

FALLBACK_FPS = 30.0  # the frame rate of a source whose frames carry no usable pts


class SourceClock:
    """One source's frames on a time line in seconds, its frame rate, and its silences.

    A frame's time is its pts in seconds; frames without a pts are placed at
    ``frame_index / fps``. Times only increase: a frame whose time would not (a repeated
    or damaged pts) is placed ``Δindex / fps`` after the previous one. The frame rate is
    ``Δframe_index / Δseconds`` between the first two frames with pts (frame indices count
    every frame, so a gap between them does not matter), or :data:`FALLBACK_FPS`.
    """

    def __init__(self) -> None:
        self.fps: float | None = None
        self._last: tuple[int, float, float | None] | None = None  # frame index, time, arrival time

    def learn_rate(self, metas: Sequence[FrameMeta], force: bool = False) -> bool:
        """Measure the frame rate from ``metas`` (in frame order) unless it is known; with
        ``force``, fall back to :data:`FALLBACK_FPS` when they do not tell it. Returns
        whether the rate is known now."""
        if self.fps is not None:
            return True
        timed = [(m.frame_index, m.pts_seconds) for m in metas if m.pts_seconds is not None]
        for (i0, t0), (i1, t1) in itertools.pairwise(timed):
            if i1 > i0 and t1 > t0 and math.isfinite(rate := (i1 - i0) / (t1 - t0)):
                self.fps = rate
                return True
        if force or len(metas) >= 2:  # frames without pts, or pts that do not increase
            self.fps = FALLBACK_FPS
        return self.fps is not None

    def advance(self, meta: FrameMeta) -> tuple[float, float]:
        """The frame's time (seconds) and the silence before it: the longer of the time since
        the previous frame on the source's clock and, when both frames have arrival times
        (live), the time between their arrivals. The first frame's silence is 0."""
        fps = self.fps or FALLBACK_FPS
        pts = meta.pts_seconds
        t = meta.frame_index / fps if pts is None else pts
        last = self._last
        silence = 0.0
        if last is not None:
            index, last_t, last_arrival = last
            if not t > last_t:
                t = last_t + max(1, meta.frame_index - index) / fps
            silence = t - last_t
            if meta.arrival_time is not None and last_arrival is not None:
                silence = max(silence, meta.arrival_time - last_arrival)
        self._last = (meta.frame_index, t, meta.arrival_time)
        return t, silence


@dataclass(slots=True)
class TrackSummary:
    """One track of one source: what it was and when it was seen."""

    track_id: int
    first_frame: int
    first_s: float | None
    last_frame: int = -1
    last_s: float | None = None
    frames: int = 0
    classes: Counter[int] = field(default_factory=Counter)
    end: str | None = None  # why it ended; None while it lives

    def record(self, class_names: Sequence[str]) -> dict[str, Any]:
        """The JSON-ready summary; ``class`` is the class most of its detections had."""
        cid = self.classes.most_common(1)[0][0] if self.classes else -1
        name = class_names[cid] if 0 <= cid < len(class_names) else str(cid)
        return {"track_id": self.track_id, "class": name, "first_frame": self.first_frame,
                "last_frame": self.last_frame,
                "first_pts_s": None if self.first_s is None else round(self.first_s, 6),
                "last_pts_s": None if self.last_s is None else round(self.last_s, 6),
                "frames": self.frames, "end": self.end}


class TrackBook:
    """The track summaries of one source, for the end-of-job report.

    Live tracks are all kept (the tracker bounds how many there are); of the ended ones,
    the ``keep`` most recent are, and the others only counted. ``next_id`` is one past the
    highest track id seen, where a new tracker object for the source starts its ids.
    """

    def __init__(self, keep: int) -> None:
        self.live: dict[int, TrackSummary] = {}
        self.ended: deque[TrackSummary] = deque(maxlen=max(0, keep))
        self.ended_total = 0
        self.next_id = 0
        self.class_names: tuple[str, ...] = ()

    @property
    def active(self) -> set[int]:
        """Ids of the tracks that have not ended."""
        return set(self.live)

    def observe(self, meta: FrameMeta, track_ids: npt.NDArray[np.int64], class_ids: npt.NDArray[np.int64],
                class_names: Sequence[str]) -> None:
        """One frame's detections: their track ids (``-1``: none) and classes."""
        self.class_names = tuple(class_names)
        s = meta.pts_seconds
        for tid, cid in zip(track_ids.tolist(), class_ids.tolist(), strict=True):
            if tid < 0:
                continue
            track = self.live.get(tid)
            if track is None:
                track = self.live[tid] = TrackSummary(tid, meta.frame_index, s)
                self.next_id = max(self.next_id, tid + 1)
            if track.last_frame != meta.frame_index:
                track.frames += 1
                track.last_frame, track.last_s = meta.frame_index, s
            track.classes[cid] += 1

    def end(self, track_ids: Iterable[int], reason: str) -> list[int]:
        """End these live tracks (ids not live are ignored); returns the ids ended, in order."""
        ended = sorted(t for t in track_ids if t in self.live)
        for tid in ended:
            track = self.live.pop(tid)
            track.end = reason
            self.ended.append(track)
            self.ended_total += 1
        return ended

    def report(self) -> dict[str, Any]:
        """``tracks``: the live ones and the most recent ended ones, by first frame;
        ``tracks_total``: every track the source had; ``tracks_left_out``: those not listed."""
        listed = sorted([*self.ended, *self.live.values()], key=lambda t: (t.first_frame, t.track_id))
        total = self.ended_total + len(self.live)
        return {"tracks_total": total, "tracks_left_out": total - len(listed),
                "tracks": [t.record(self.class_names) for t in listed]}
