"""Tracking ground truth: line crossings, zone visits and their counts, from exact trajectories.

The renderer records, for every frame, where each object of the scene is
(:class:`TrajectoryRecorder`): its *anchor*, the bottom centre of the part of its shape
inside the frame, whether or not the labelling rule lists it that frame (an occluded
object still moves, and still crosses lines). Each object's path is then run through the
rules of the analytics stage (:mod:`pipelines.analytics`; the geometry is in
:mod:`streams.synthetic.regions`), so the truth is what a perfect tracker would make it count:

* **Lines** (:func:`line_crossings`): an object is *on a side* of a line once its anchor
  is at least ``min_distance`` px from it (inside that band its side stays what it was);
  its first side is taken when it is first clear of the line. A crossing counts when it
  is clear on the other side and its path (the straight steps between its anchors)
  touched the segment since it was last clear on the old side. Every completed crossing
  counts: in, out, in gives ``in`` 2 and ``out`` 1.
* **Zones** (:func:`zone_visits`): an object enters at the first frame its anchor is
  inside the polygon (its first frame, if it starts inside) and exits at the first later
  frame its anchor is at least ``min_distance`` px outside (reason ``left``). A visit
  still open when the object leaves the frame or the clip ends exits with reason ``end``
  at its last frame (the stage's ``lost``/``source_end``). The dwell is
  ``(exit_frame - enter_frame) / fps`` (``end``: to the last frame the anchor was
  recorded): an anchor inside for exactly N frames that then leaves dwells N / fps.

:func:`tracking_truth` puts both, with the lines and zones themselves, in the JSON form
stored under ``"tracking"`` in a clip's ``.gt.json``::

    {"anchor": "bottom_center", "fps": 30.0,
     "lines": [{"name": "line", "start": [x, y], "end": [x, y], "min_distance": 4.0}],
     "zones": [{"name": "zone", "polygon": [[x, y], ...], "min_distance": 4.0}],
     "line_counts": {"line": {"in": {"circle": 2}, "out": {"star": 1}}},
     "zone_counts": {"zone": {"enters": {"square": 1}, "exits": {"square": 1}}},
     "line_crossings": [{"line": "line", "track_id": 3, "class": "circle", "direction": "in",
                         "frame_index": 41}, ...],
     "zone_visits": [{"zone": "zone", "track_id": 5, "class": "square", "enter_frame": 30,
                      "exit_frame": 75, "dwell_s": 1.5, "reason": "left"}, ...]}

Counts use the analytics report's keys and list only the classes that occur (a missing
class or direction counts 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from streams.synthetic.regions import anchor_of, distance_to_zone, inside, segments_touch, signed_distance
from streams.synthetic.scene import SceneObject
from streams.synthetic.shapes import frame_extent
from streams.synthetic.spec import CLASS_NAMES, CountingLine, CountingZone, Point

Direction = Literal["in", "out"]


@dataclass(frozen=True)
class Trajectory:
    """One object's anchor over the frames it was (partly) inside the frame.

    ``points`` are ``(frame_index, x, y)`` with increasing frames; consecutive points are
    the steps the crossing rule looks at (a gap between their frames is one step).
    """

    track_id: int
    class_id: int
    points: tuple[tuple[int, float, float], ...]


@dataclass(frozen=True)
class LineCrossing:
    """One crossing of a line (at ``frame_index``: the frame the object is clear on the new side)."""

    line: str
    track_id: int
    class_id: int
    direction: Direction
    frame_index: int


@dataclass(frozen=True)
class ZoneVisit:
    """An object in a zone from ``enter_frame`` to ``exit_frame``: its first frame clear
    outside (``reason`` ``left``) or its last frame (``end``: it left the frame, or the clip
    ended, while inside)."""

    zone: str
    track_id: int
    class_id: int
    enter_frame: int
    exit_frame: int
    dwell_s: float
    reason: str


class TrajectoryRecorder:
    """Collects the anchors of a scene's objects, frame by frame, while it renders."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._points: dict[int, list[tuple[int, float, float]]] = {}
        self._classes: dict[int, int] = {}

    def add(self, frame_index: int, objects: Iterable[SceneObject]) -> None:
        """Record the anchor of every object with some part inside the frame."""
        for o in objects:
            box = frame_extent(o, self.width, self.height)
            if box is None:
                continue
            x, y = anchor_of(box)
            self._points.setdefault(o.track, []).append((frame_index, x, y))
            self._classes[o.track] = o.cls

    def trajectories(self) -> list[Trajectory]:
        """One trajectory per object seen, by track id."""
        return [Trajectory(t, self._classes[t], tuple(p)) for t, p in sorted(self._points.items())]


def line_crossings(trajectories: Iterable[Trajectory], lines: Sequence[CountingLine]) -> list[LineCrossing]:
    """Every crossing of every line by every object, by frame then track (module docstring)."""
    out: list[LineCrossing] = []
    for traj in trajectories:
        for line in lines:
            side = 0  # 0: not yet clear of the line
            touched = False
            prev: Point | None = None
            for f, x, y in traj.points:
                p = (x, y)
                if prev is not None and segments_touch(prev, p, line.start, line.end):
                    touched = True
                prev = p
                d = signed_distance(line, p)
                if abs(d) < line.min_distance:
                    continue  # in the band: the side stays
                new = 1 if d > 0 else -1
                if side and new != side and touched:
                    out.append(LineCrossing(line.name, traj.track_id, traj.class_id, "in" if new > 0 else "out", f))
                side, touched = new, False
    out.sort(key=lambda c: (c.frame_index, c.track_id, c.line))
    return out


def zone_visits(trajectories: Iterable[Trajectory], zones: Sequence[CountingZone], fps: float) -> list[ZoneVisit]:
    """Every visit of every object to every zone, by enter frame then track (module docstring)."""
    out: list[ZoneVisit] = []
    for traj in trajectories:
        for zone in zones:
            entered: int | None = None
            for f, x, y in traj.points:
                p = (x, y)
                if entered is None:
                    if inside(zone, p):
                        entered = f
                elif not inside(zone, p) and distance_to_zone(zone, p) >= zone.min_distance:
                    out.append(ZoneVisit(zone.name, traj.track_id, traj.class_id, entered, f, (f - entered) / fps,
                                         "left"))
                    entered = None
            if entered is not None:
                last = traj.points[-1][0]
                out.append(ZoneVisit(zone.name, traj.track_id, traj.class_id, entered, last, (last - entered) / fps,
                                     "end"))
    out.sort(key=lambda v: (v.enter_frame, v.track_id, v.zone))
    return out


def _bump(table: dict[str, dict[str, dict[str, int]]], region: str, key: str, cls: str) -> None:
    per_cls = table[region][key]
    per_cls[cls] = per_cls.get(cls, 0) + 1


def tracking_truth(
    trajectories: Sequence[Trajectory],
    lines: Sequence[CountingLine],
    zones: Sequence[CountingZone],
    fps: float,
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict[str, Any]:
    """The ``"tracking"`` entry of a ground-truth file (see the module docstring)."""
    crossings = line_crossings(trajectories, lines)
    visits = zone_visits(trajectories, zones, fps)
    line_counts: dict[str, dict[str, dict[str, int]]] = {ln.name: {"in": {}, "out": {}} for ln in lines}
    for c in crossings:
        _bump(line_counts, c.line, c.direction, class_names[c.class_id])
    zone_counts: dict[str, dict[str, dict[str, int]]] = {z.name: {"enters": {}, "exits": {}} for z in zones}
    for v in visits:
        _bump(zone_counts, v.zone, "enters", class_names[v.class_id])
        _bump(zone_counts, v.zone, "exits", class_names[v.class_id])
    return {
        "anchor": "bottom_center",
        "fps": fps,
        "lines": [{"name": ln.name, "start": list(ln.start), "end": list(ln.end), "min_distance": ln.min_distance}
                  for ln in lines],
        "zones": [{"name": z.name, "polygon": [list(p) for p in z.polygon], "min_distance": z.min_distance}
                  for z in zones],
        "line_counts": line_counts,
        "zone_counts": zone_counts,
        "line_crossings": [
            {"line": c.line, "track_id": c.track_id, "class": class_names[c.class_id], "direction": c.direction,
             "frame_index": c.frame_index} for c in crossings
        ],
        "zone_visits": [
            {"zone": v.zone, "track_id": v.track_id, "class": class_names[v.class_id], "enter_frame": v.enter_frame,
             "exit_frame": v.exit_frame, "dwell_s": round(v.dwell_s, 6), "reason": v.reason}
            for v in visits
        ],
    }
