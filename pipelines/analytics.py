"""The analytics stage: tracks against zones and counting lines, per source.

A :class:`~pipelines.stages.SourceStage` that runs after the tracker (it needs
``Detections.track_id``; untracked detections, ``-1``, never count). Each detection is
reduced to its *anchor*, a point of its box (``anchor:``, bottom centre by default: where
a person or a car touches the ground), and every tracked anchor is tested against the
source's zones and lines (:mod:`streams.analytics_config`, resolved to the source's pixels
at its first frame, and logged once). What happens is added to the frame's
:class:`~streams.frames.FrameResult` as :class:`~streams.events.Event` records, which every
record sink writes; the counts are kept here, for :meth:`AnalyticsStage.report` (the job
summary) and for listeners (the live ``/metrics``: :class:`streams.live.metrics.AnalyticsMetrics`).

Lines, exactly. A line is the segment A→B (``points[0]`` → ``points[1]``). A point's side
is the sign of ``d = ((Bx-Ax)(Py-Ay) - (By-Ay)(Px-Ax)) / |AB|``, its signed distance to the
line through A and B: in image coordinates (y down) ``d > 0`` is the right-hand side of
A→B as drawn on the frame. Moving to the right-hand side is ``in``, to the left-hand side
``out``: a line drawn left to right counts ``in`` what moves down the image, one drawn top
to bottom counts ``in`` what moves from right to left. Per track and line:

- the track is *on a side* once its anchor is at least ``min_distance`` px from the line
  (``|d| >= min_distance``); within that band its side stays what it was;
- its first side is taken when it is first clear of the line (a track first seen across
  the line, or inside the band, has nothing to count yet);
- a crossing counts when the track gets clear of the line on the side opposite its side
  AND its path (the straight steps between its successive anchors) touched the segment
  A-B since it was last clear on its side; then the new side becomes its side;
- so a track that wobbles on the line counts once, when it gets clear on the other side
  (or never, if it goes back); going around an end of the segment counts nothing; a track
  that crosses back counts in the other direction only once it is clear of the line on
  its original side again. Every completed crossing counts: in, out, in gives in 2, out 1.

Zones, exactly. A track enters a zone at the first frame its anchor is inside the polygon
(and its class is in the zone's ``classes``, when given) and exits at the first later
frame its anchor is outside by at least ``min_distance`` px (to the nearest edge), so
wobbling on the border gives one enter and one exit: ``zone_exit`` reason ``left``. A
track not seen for more than ``track_timeout_s`` of stream time exits its zones with
reason ``lost`` (at the frame where that is noticed); at the source's end every track
still inside exits with reason ``source_end`` (at the source's last frame); both carry
``last_seen_frame``. ``dwell_s``: pts seconds from the enter frame to the exit frame
(``lost``/``source_end``: to the last frame the track was seen); ``null`` when a frame has
no pts (such frames are timed frame_index / :data:`NOMINAL_FPS` for the timeout).
Occupancy: tracks inside a zone now, per class at entry (= enters - exits). A zone's
events carry the class at entry, so enters and exits balance per class.

Events at one frame come in this order: ``lost`` exits, line crossings (line order, then
detection order), zone exits and enters (zone order, then detection order)::

    {"event": "line_cross", ..., "track_id": 7, "class": "car", "line": "gate", "direction": "in"}
    {"event": "zone_enter", ..., "zone": "lot"}
    {"event": "zone_exit",  ..., "zone": "lot", "dwell_s": 12.48, "reason": "left"}

To close zones at a source's end the stage holds back the last frame of each source with
zones or lines until the next frame (or the end) comes: its results leave one frame late.

Usage::

    stage = analytics_stage(cfg)               # what pipelines.graph.source_stages does
    stage.add_listener(metrics)                # anything with record_events(events)
    out = stage.process("cam1", results)       # results with events added
    stage.on_event(SourceEnd("cam1", "done"))  # the held frame, with the closing exits
    stage.report()["sources"]["cam1"]["lines"]["gate"]   # {"in": {"car": 3}, "out": {}}
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from operators.geometry import (
    anchor_points,
    distance_to_polygon,
    points_in_polygon,
    polygon_problem,
    segments_intersect,
    signed_distance,
)
from pipelines.stages import Gap, SourceEnd, SourceEvent
from streams.analytics_config import AnalyticsConfig, SourceGeometry
from streams.config import JobConfig
from streams.errors import ConfigError
from streams.events import Event
from streams.frames import FrameMeta, FrameResult

log = logging.getLogger(__name__)

#: Frames without a pts are timed as frame_index / this (track timeouts only; dwell is null).
NOMINAL_FPS = 30.0
#: Per zone, the report lists the dwell records of this many most recent exits (the
#: statistics count all), so a long live run's report stays small.
MAX_DWELL_RECORDS = 10_000


class AnalyticsListener(Protocol):
    """Told of every event as the stage makes it (the live metrics count them)."""

    def record_events(self, events: Sequence[Event]) -> None: ...


def check_geometry(config: AnalyticsConfig) -> None:
    """Refuse zones that are not simple polygons (:func:`operators.geometry.polygon_problem`):
    a :class:`ConfigError` naming the zone's ``points``. Normalized zones are checked as given
    (scaling to a frame keeps a polygon simple and its area non-zero)."""
    for sid, entry in config.sources.items():
        for i, zone in enumerate(entry.zones):
            problem = polygon_problem(np.asarray(zone.points, np.float64))
            if problem is not None:
                raise ConfigError(f"analytics.sources.{sid}.zones[{i}].points", problem)


def analytics_stage(cfg: JobConfig) -> AnalyticsStage:
    """The stage of ``cfg.analytics``; refuses a config without ``tracker:`` (no track ids)."""
    if cfg.analytics is None:
        raise ValueError("the config has no analytics: section")
    if cfg.tracker is None:
        raise ConfigError("analytics", "zones and lines count tracks: add a tracker: section "
                                       "(e.g. tracker: {type: bytetrack})")
    return AnalyticsStage(cfg.analytics)


def _clock(meta: FrameMeta) -> float:
    """Stream time of a frame in seconds (pts; frame_index / NOMINAL_FPS without one)."""
    t = meta.pts_seconds
    return meta.frame_index / NOMINAL_FPS if t is None else t


def _dwell(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 6)


@dataclass
class _Membership:
    """A track inside a zone: since when, and its class then."""

    enter_pts_s: float | None
    enter_frame: int
    class_name: str


@dataclass
class _Track:
    """What the stage remembers of one track of one source."""

    class_name: str
    clock: float
    pts_s: float | None
    frame: int
    anchors: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)  # last, per anchor kind
    sides: dict[int, int] = field(default_factory=dict)  # line index -> side it is clear on (-1, +1)
    touched: set[int] = field(default_factory=set)  # lines its path touched since it was last on its side
    zones: dict[int, _Membership] = field(default_factory=dict)  # zone index -> membership


class _Tally:
    """One source's counts, kept for the whole job (also across a camera's removal and return)."""

    def __init__(self) -> None:
        self.frames = 0
        self.untracked = 0
        self.lines: dict[str, dict[str, Counter[str]]] = {}
        self.zones: dict[str, dict[str, Counter[str]]] = {}
        self.dwell: dict[str, dict[str, list[float]]] = {}  # zone -> class -> [count, sum, min, max]
        self.dwells: dict[str, deque[dict[str, Any]]] = {}

    def add_geometry(self, geometry: SourceGeometry) -> None:
        for line in geometry.lines:
            self.lines.setdefault(line.name, {"in": Counter(), "out": Counter()})
        for zone in geometry.zones:
            self.zones.setdefault(zone.name, {"enters": Counter(), "exits": Counter(), "occupancy": Counter()})
            self.dwell.setdefault(zone.name, {})
            self.dwells.setdefault(zone.name, deque(maxlen=MAX_DWELL_RECORDS))

    def exit(self, zone: str, track_id: int, m: _Membership, frame: int, dwell: float | None, reason: str) -> None:
        counts = self.zones[zone]
        counts["exits"][m.class_name] += 1
        counts["occupancy"][m.class_name] -= 1
        if dwell is not None:
            s = self.dwell[zone].setdefault(m.class_name, [0, 0.0, dwell, dwell])
            s[0] += 1
            s[1] += dwell
            s[2] = min(s[2], dwell)
            s[3] = max(s[3], dwell)
        self.dwells[zone].append({"track_id": track_id, "class": m.class_name, "enter_frame": m.enter_frame,
                                  "exit_frame": frame, "dwell_s": dwell, "reason": reason})

    def report(self) -> dict[str, Any]:
        zones = {}
        for name, c in self.zones.items():
            stats = {cls: {"count": int(n), "mean": round(total / n, 6), "min": lo, "max": hi}
                     for cls, (n, total, lo, hi) in sorted(self.dwell[name].items())}
            zones[name] = {"enters": dict(sorted(c["enters"].items())), "exits": dict(sorted(c["exits"].items())),
                           "occupancy": {k: v for k, v in sorted(c["occupancy"].items()) if v},
                           "dwell_s": stats, "dwells": list(self.dwells[name])}
        lines = {name: {d: dict(sorted(c[d].items())) for d in ("in", "out")} for name, c in self.lines.items()}
        return {"frames": self.frames, "untracked_detections": self.untracked, "lines": lines, "zones": zones}


class _SourceAnalytics:
    """One source's tracks against its zones and lines; makes the events of each frame."""

    def __init__(self, source_id: str, geometry: SourceGeometry, timeout_s: float, tally: _Tally) -> None:
        self.source_id = source_id
        self.geometry = geometry
        self.timeout_s = timeout_s
        self.tally = tally
        self.tracks: OrderedDict[int, _Track] = OrderedDict()  # least recently seen first
        self._kinds = sorted({z.anchor for z in geometry.zones} | {ln.anchor for ln in geometry.lines})
        self._warned_no_tracks = False
        tally.add_geometry(geometry)

    def _event(self, kind: str, meta: FrameMeta, track_id: int, class_name: str, **data: Any) -> Event:
        return Event(kind, self.source_id, meta.frame_index, meta.pts, meta.time_base, track_id, class_name, data)

    def update(self, result: FrameResult) -> list[Event]:
        """The events of one frame (the next of this source)."""
        meta, dets = result.frame, result.detections
        self.tally.frames += 1
        now = _clock(meta)
        events = self._expire(meta, now)
        if dets.track_id is None:
            if len(dets) and not self._warned_no_tracks:
                self._warned_no_tracks = True
                log.warning("analytics: source %r: detections without track ids (did the tracker run?); "
                            "they do not count", self.source_id)
            self.tally.untracked += len(dets)
            return events
        tracked = np.flatnonzero(dets.track_id >= 0)
        self.tally.untracked += len(dets) - len(tracked)
        _, first = np.unique(dets.track_id[tracked], return_index=True)  # one detection per track
        rows = tracked[np.sort(first)]
        if not len(rows):
            return events
        labels = dets.labels
        ids = dets.track_id[rows].tolist()
        classes = [labels[r] for r in rows.tolist()]
        anchors: dict[str, npt.NDArray[np.float64]] = {k: anchor_points(dets.xyxy[rows], k) for k in self._kinds}
        tracks = []
        for tid, cls in zip(ids, classes, strict=True):
            track = self.tracks.pop(tid, None) or _Track(cls, now, meta.pts_seconds, meta.frame_index)
            self.tracks[tid] = track  # most recently seen last
            tracks.append(track)
        events += self._lines(meta, ids, classes, tracks, anchors)
        events += self._zones(meta, ids, classes, tracks, anchors)
        for i, track in enumerate(tracks):
            track.class_name, track.clock, track.frame = classes[i], now, meta.frame_index
            track.pts_s = meta.pts_seconds
            for k in self._kinds:
                track.anchors[k] = anchors[k][i]
        return events

    def _previous(self, tracks: list[_Track], kind: str) -> npt.NDArray[np.float64]:
        """Each track's last anchor of ``kind`` (NaN for a new track): ``float64[N, 2]``."""
        nan = np.full(2, np.nan)
        return np.array([t.anchors.get(kind, nan) for t in tracks], np.float64).reshape(-1, 2)

    def _lines(self, meta: FrameMeta, ids: list[int], classes: list[str], tracks: list[_Track],
               anchors: dict[str, npt.NDArray[np.float64]]) -> list[Event]:
        events: list[Event] = []
        for li, line in enumerate(self.geometry.lines):
            p = anchors[line.anchor]
            q = self._previous(tracks, line.anchor)
            d = signed_distance(p, line.a, line.b)
            seen = ~np.isnan(q[:, 0])
            touched = np.zeros(len(p), bool)
            touched[seen] = segments_intersect(q[seen], p[seen], line.a, line.b)
            for i, track in enumerate(tracks):
                if touched[i]:
                    track.touched.add(li)
                if abs(d[i]) < line.min_distance:
                    continue  # in the band: the side stays
                side = 1 if d[i] > 0 else -1
                old = track.sides.get(li)
                track.sides[li] = side
                crossed = old is not None and old != side and li in track.touched
                track.touched.discard(li)
                if not crossed or (line.classes is not None and classes[i] not in line.classes):
                    continue
                direction = "in" if side > 0 else "out"
                self.tally.lines[line.name][direction][classes[i]] += 1
                events.append(self._event("line_cross", meta, ids[i], classes[i], line=line.name, direction=direction))
        return events

    def _zones(self, meta: FrameMeta, ids: list[int], classes: list[str], tracks: list[_Track],
               anchors: dict[str, npt.NDArray[np.float64]]) -> list[Event]:
        events: list[Event] = []
        for zi, zone in enumerate(self.geometry.zones):
            p = anchors[zone.anchor]
            inside = points_in_polygon(p, zone.polygon)
            members = np.array([zi in t.zones for t in tracks], bool)
            leaving = members & ~inside
            if leaving.any():
                leaving[leaving] = distance_to_polygon(p[leaving], zone.polygon) >= zone.min_distance
            counts = self.tally.zones[zone.name]
            for i in np.flatnonzero(leaving | (inside & ~members)).tolist():
                track = tracks[i]
                if leaving[i]:
                    m = track.zones.pop(zi)
                    dwell = _dwell(m.enter_pts_s, meta.pts_seconds)
                    self.tally.exit(zone.name, ids[i], m, meta.frame_index, dwell, "left")
                    events.append(self._event("zone_exit", meta, ids[i], m.class_name, zone=zone.name,
                                              dwell_s=dwell, reason="left"))
                elif zone.classes is None or classes[i] in zone.classes:
                    track.zones[zi] = _Membership(meta.pts_seconds, meta.frame_index, classes[i])
                    counts["enters"][classes[i]] += 1
                    counts["occupancy"][classes[i]] += 1
                    events.append(self._event("zone_enter", meta, ids[i], classes[i], zone=zone.name))
        return events

    def _close(self, track_id: int, track: _Track, meta: FrameMeta, reason: str) -> list[Event]:
        """Exit every zone ``track`` is in (it is gone): dwell up to when it was last seen."""
        events = []
        for zi, m in sorted(track.zones.items()):
            name = self.geometry.zones[zi].name
            dwell = _dwell(m.enter_pts_s, track.pts_s)
            self.tally.exit(name, track_id, m, meta.frame_index, dwell, reason)
            events.append(self._event("zone_exit", meta, track_id, m.class_name, zone=name, dwell_s=dwell,
                                      reason=reason, last_seen_frame=track.frame))
        track.zones.clear()
        return events

    def _expire(self, meta: FrameMeta, now: float) -> list[Event]:
        events: list[Event] = []
        while self.tracks:
            tid, track = next(iter(self.tracks.items()))
            if abs(now - track.clock) <= self.timeout_s:  # (abs: a source whose pts jumped back)
                break
            del self.tracks[tid]
            events += self._close(tid, track, meta, "lost")
        return events

    def end(self, meta: FrameMeta) -> list[Event]:
        """The source ended after frame ``meta``: every track still in a zone exits."""
        events: list[Event] = []
        for tid, track in sorted(self.tracks.items()):
            events += self._close(tid, track, meta, "source_end")
        self.tracks.clear()
        return events


class AnalyticsStage:
    """Zones and lines over tracked detections, per source (module docstring).

    Runs on the job's thread (a :class:`~pipelines.stages.SourceStage`). Raises
    :class:`ConfigError` at a source's first frame when a pixel coordinate of its zones or
    lines lies outside that frame.
    """

    def __init__(self, config: AnalyticsConfig, listeners: Sequence[AnalyticsListener] = ()) -> None:
        check_geometry(config)
        self.config = config
        self.listeners: list[AnalyticsListener] = list(listeners)
        self._sources: dict[str, _SourceAnalytics] = {}
        self._without: set[str] = set()  # sources with no zone or line
        self._held: dict[str, FrameResult] = {}
        self._tallies: dict[str, _Tally] = {}

    def __enter__(self) -> AnalyticsStage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def add_listener(self, listener: AnalyticsListener) -> None:
        """Tell ``listener`` of every event from now on."""
        self.listeners.append(listener)

    def _state(self, meta: FrameMeta) -> _SourceAnalytics | None:
        """The source's state, its geometry resolved for this frame's size (``None``: the
        source has no zone or line)."""
        sid = meta.source_id
        if sid in self._without:
            return None
        state = self._sources.get(sid)
        if state is not None and (state.geometry.width, state.geometry.height) == (meta.width, meta.height):
            return state
        if not self.config.applies_to(sid):
            self._without.add(sid)
            return None
        geometry = self.config.resolve(sid, meta.width, meta.height)
        log.info("analytics: source %r (%dx%d): %s", sid, meta.width, meta.height, geometry.describe())
        if state is None:
            state = _SourceAnalytics(sid, geometry, self.config.track_timeout_s,
                                     self._tallies.setdefault(sid, _Tally()))
            self._sources[sid] = state
        else:  # the frame size changed (a camera reconfigured): the same tracks, new pixels
            state.geometry = geometry
            state.tally.add_geometry(geometry)
        return state

    def _tell(self, events: list[Event]) -> None:
        if events:
            for listener in self.listeners:
                listener.record_events(events)

    def process(self, source_id: str, results: Sequence[FrameResult]) -> list[FrameResult]:
        if not results:
            return []
        state = self._state(results[0].frame)
        if state is None:
            return list(results)
        out: list[FrameResult] = []
        held = self._held.pop(source_id, None)
        if held is not None:
            out.append(held)
        for r in results:
            if (r.frame.width, r.frame.height) != (state.geometry.width, state.geometry.height):
                self._state(r.frame)  # re-resolves the geometry of the same state
            events = state.update(r)
            self._tell(events)
            out.append(replace(r, events=r.events + tuple(events)) if events else r)
        self._held[source_id] = out.pop()  # until the next frame or the source's end
        return out

    def on_event(self, event: SourceEvent) -> list[FrameResult]:
        if isinstance(event, Gap):
            return []
        assert isinstance(event, SourceEnd)
        state = self._sources.pop(event.source_id, None)
        held = self._held.pop(event.source_id, None)
        if state is None or held is None:
            return [] if held is None else [held]
        events = state.end(held.frame)
        self._tell(events)
        return [replace(held, events=held.events + tuple(events)) if events else held]

    def report(self) -> dict[str, Any]:
        """Per source: frames, untracked detections, per line ``in``/``out`` per class, per
        zone ``enters``/``exits``/``occupancy`` per class, dwell statistics per class and
        the dwell of each exit (the :data:`MAX_DWELL_RECORDS` most recent per zone)."""
        configured = [s for s in self.config.sources if s != "*" and s not in self._tallies]
        if configured:
            log.warning("analytics: no frame came from configured source(s) %s (source ids: a file's path "
                        "under its source root, a camera's id)", ", ".join(sorted(configured)))
        return {"sources": {sid: t.report() for sid, t in sorted(self._tallies.items())},
                "sources_without_frames": sorted(configured)}
