"""The ``analytics:`` section of a job config: zones and lines per source, validated at load.

Zones are polygons, lines are segments from point A to point B; both are given per
source id (a file's path under its source root, ``cam1/a.mp4``; a camera's id), and the
entry ``"*"`` applies to every source (a source gets the ``"*"`` entry's zones and lines
plus its own). Coordinates are source pixels (x right, y down), or fractions of the frame
with ``normalized: true``.

Example::

    tracker: {type: bytetrack}          # analytics needs track ids
    analytics:
      anchor: bottom_center             # the point of a box that counts (default)
      min_distance: 4                   # px: hysteresis of lines and zone exits
      track_timeout_s: 2                # a track unseen this long leaves its zones ("lost")
      sources:
        "*":
          lines:
            - {name: gate, points: [[0.5, 0], [0.5, 1]], normalized: true}
        cam1/a.mp4:
          zones:
            - name: lot
              points: [[100, 200], [400, 200], [400, 500], [100, 500]]
              classes: [car]            # count only these classes (default: all)

What is checked where, always before any frame is processed:

- at load (:func:`streams.config.parse_config`): the structure, names (unique per source,
  ``"*"`` included), point counts (zones >= 3, lines exactly 2 distinct points), finite
  coordinates, normalized coordinates within 0..1, pixel coordinates >= 0, anchors;
- when the job is built (:func:`pipelines.graph.source_stages`): polygon validity (not
  self-intersecting, non-zero area: :func:`operators.geometry.polygon_problem`, which the
  streams layer cannot import) and that a tracker is configured;
- at a source's first frame (:meth:`AnalyticsConfig.resolve`, the frame size is known only
  then): pixel coordinates within the frame.

Every failure is a :class:`~streams.errors.ConfigError` naming the key, e.g.
``analytics.sources.cam1.zones[0].points: a zone needs at least 3 points, got 2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from streams.errors import ConfigError

Anchor = Literal["bottom_center", "center", "top_center", "bottom_left", "bottom_right",
                 "top_left", "top_right", "center_left", "center_right"]

#: Where each anchor sits in a box, as fractions (fx, fy) of its width and height from its
#: top-left corner (:func:`operators.geometry.anchor_points`; the video sink's trails).
ANCHOR_FRACTIONS: dict[str, tuple[float, float]] = {
    "top_left": (0.0, 0.0), "top_center": (0.5, 0.0), "top_right": (1.0, 0.0),
    "center_left": (0.0, 0.5), "center": (0.5, 0.5), "center_right": (1.0, 0.5),
    "bottom_left": (0.0, 1.0), "bottom_center": (0.5, 1.0), "bottom_right": (1.0, 1.0),
}

#: The source key that applies to every source.
ALL_SOURCES = "*"

Point = tuple[float, float]


def _check_points(points: Sequence[Point], normalized: bool, key: str) -> None:
    """Finite, and inside 0..1 (normalized) or >= 0 (pixels; the frame size is checked later)."""
    for i, (x, y) in enumerate(points):
        where = f"{key}[{i}]"
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ConfigError(where, f"coordinates must be finite numbers, got [{x}, {y}]")
        if normalized and not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ConfigError(where, f"[{x}, {y}] is outside the frame: normalized coordinates are 0..1")
        if not normalized and (x < 0 or y < 0):
            raise ConfigError(where, f"[{x}, {y}] is outside the frame: pixel coordinates are >= 0 "
                                     "(set normalized: true for fractions of the frame)")


def _check_common(name: str, classes: list[str] | None, min_distance: float | None, key: str) -> None:
    if not name.strip():
        raise ConfigError(f"{key}.name", "must not be empty")
    if classes is not None and not classes:
        raise ConfigError(f"{key}.classes", "an empty list would count nothing; leave it out to count every class")
    if min_distance is not None and not (math.isfinite(min_distance) and min_distance >= 0):
        raise ConfigError(f"{key}.min_distance", f"expected a number >= 0 (pixels), got {min_distance}")


@dataclass(frozen=True)
class ZoneConfig:
    """A polygon zone: a track's anchor inside it is in the zone.

    Attributes:
        name: unique among the source's zones (``"*"``'s included).
        points: the polygon's vertices in order (>= 3; it closes by itself: do not repeat
            the first point), source pixels or, with ``normalized``, fractions of the frame.
        normalized: the points are fractions (0..1) of the frame's width and height.
        classes: count only tracks of these classes (``None``: every class).
        anchor: the box point that counts; ``None``: the section's ``anchor``.
        min_distance: px a track must be outside the polygon to exit; ``None``: the section's.
    """

    name: str
    points: list[Point]
    normalized: bool = False
    classes: list[str] | None = None
    anchor: Anchor | None = None
    min_distance: float | None = None

    def validate(self, key: str) -> None:
        _check_common(self.name, self.classes, self.min_distance, key)
        if len(self.points) < 3:
            raise ConfigError(f"{key}.points", f"a zone needs at least 3 points, got {len(self.points)}")
        _check_points(self.points, self.normalized, f"{key}.points")


@dataclass(frozen=True)
class LineConfig:
    """A counting line: the segment from ``points[0]`` (A) to ``points[1]`` (B).

    Crossing it to the right-hand side of A→B as drawn on the frame is ``in``, to the
    left-hand side ``out`` (:mod:`pipelines.analytics` has the exact rule). Attributes as
    for :class:`ZoneConfig`; ``min_distance``: px a track must get past the line before
    the crossing counts.
    """

    name: str
    points: tuple[Point, Point]
    normalized: bool = False
    classes: list[str] | None = None
    anchor: Anchor | None = None
    min_distance: float | None = None

    def validate(self, key: str) -> None:
        _check_common(self.name, self.classes, self.min_distance, key)
        _check_points(self.points, self.normalized, f"{key}.points")
        if self.points[0] == self.points[1]:
            raise ConfigError(f"{key}.points", f"both points are {list(self.points[0])}: a line needs two "
                                               "distinct points (a non-zero length)")


@dataclass(frozen=True)
class SourceAnalyticsConfig:
    """``analytics.sources.<source id>``: the zones and lines of one source (or of every
    source, under ``"*"``)."""

    zones: list[ZoneConfig] = field(default_factory=list)
    lines: list[LineConfig] = field(default_factory=list)

    def validate(self, key: str) -> None:
        if not self.zones and not self.lines:
            raise ConfigError(key, "give at least one zone or line")
        for kind, names in (("zones", [z.name for z in self.zones]), ("lines", [ln.name for ln in self.lines])):
            for i, name in enumerate(names):
                if name in names[:i]:
                    raise ConfigError(f"{key}.{kind}[{i}].name", f"{name!r} is used twice")


@dataclass(frozen=True)
class ResolvedZone:
    """A zone in one source's pixels. ``key`` is its config path (for errors)."""

    name: str
    key: str
    polygon: npt.NDArray[np.float64]  # float64[M, 2], source pixels
    classes: frozenset[str] | None
    anchor: Anchor
    min_distance: float


@dataclass(frozen=True)
class ResolvedLine:
    """A line in one source's pixels: the segment ``a`` → ``b`` (``float64[2]`` each)."""

    name: str
    key: str
    a: npt.NDArray[np.float64]
    b: npt.NDArray[np.float64]
    classes: frozenset[str] | None
    anchor: Anchor
    min_distance: float


@dataclass(frozen=True)
class SourceGeometry:
    """The zones and lines of one source, in its pixels (:meth:`AnalyticsConfig.resolve`)."""

    width: int
    height: int
    zones: tuple[ResolvedZone, ...]
    lines: tuple[ResolvedLine, ...]

    def describe(self) -> str:
        """One line per zone and line, for the log."""
        parts = [f"zone {z.name!r} {[[round(v, 1) for v in p] for p in z.polygon.tolist()]}" for z in self.zones]
        parts += [f"line {ln.name!r} {[round(v, 1) for v in ln.a.tolist()]} -> {[round(v, 1) for v in ln.b.tolist()]}"
                  for ln in self.lines]
        return "; ".join(parts)


@dataclass(frozen=True)
class AnalyticsConfig:
    """``analytics:``: polygon zones and counting lines, per source (module docstring).

    Attributes:
        sources: source id (or ``"*"``) -> its zones and lines.
        anchor: the point of a detection's box that is tested against zones and lines.
        min_distance: default hysteresis in source pixels (lines: how far past the line a
            track must get; zones: how far outside a track must get to exit).
        track_timeout_s: a track not seen for this long (stream time) is gone: it exits its
            zones with reason ``lost``.
    """

    sources: dict[str, SourceAnalyticsConfig]
    anchor: Anchor = "bottom_center"
    min_distance: float = 4.0
    track_timeout_s: float = 2.0

    def validate(self, key: str) -> None:
        if not self.sources:
            raise ConfigError(f"{key}.sources", "give at least one source id (or \"*\") with zones or lines")
        if not (math.isfinite(self.min_distance) and self.min_distance >= 0):
            raise ConfigError(f"{key}.min_distance", f"expected a number >= 0 (pixels), got {self.min_distance}")
        if not (math.isfinite(self.track_timeout_s) and self.track_timeout_s > 0):
            raise ConfigError(f"{key}.track_timeout_s", f"expected a number > 0 (seconds), got {self.track_timeout_s}")
        common = self.sources.get(ALL_SOURCES)
        if common is None:
            return
        for sid, entry in self.sources.items():
            if sid == ALL_SOURCES:
                continue
            pairs = (("zones", [z.name for z in entry.zones], {z.name for z in common.zones}),
                     ("lines", [ln.name for ln in entry.lines], {ln.name for ln in common.lines}))
            for kind, names, shared in pairs:
                for i, name in enumerate(names):
                    if name in shared:
                        raise ConfigError(f"{key}.sources.{sid}.{kind}[{i}].name",
                                          f"{name!r} is also a {kind[:-1]} of \"*\" (every source)")

    def entries(self, source_id: str) -> tuple[list[tuple[str, ZoneConfig]], list[tuple[str, LineConfig]]]:
        """The zones and lines of ``source_id`` (``"*"``'s first), each with its config key."""
        zones: list[tuple[str, ZoneConfig]] = []
        lines: list[tuple[str, LineConfig]] = []
        for sid in (ALL_SOURCES, source_id) if source_id != ALL_SOURCES else (ALL_SOURCES,):
            entry = self.sources.get(sid)
            if entry is not None:
                zones += [(f"analytics.sources.{sid}.zones[{i}]", z) for i, z in enumerate(entry.zones)]
                lines += [(f"analytics.sources.{sid}.lines[{i}]", ln) for i, ln in enumerate(entry.lines)]
        return zones, lines

    def applies_to(self, source_id: str) -> bool:
        """Whether ``source_id`` has any zone or line."""
        return ALL_SOURCES in self.sources or source_id in self.sources

    def resolve(self, source_id: str, width: int, height: int) -> SourceGeometry:
        """``source_id``'s zones and lines in pixels of a ``width`` x ``height`` frame.

        Raises :class:`ConfigError` (naming the point's key) for a pixel coordinate outside
        the frame (``0..width``, ``0..height``: the frame's edges included).
        """
        zone_entries, line_entries = self.entries(source_id)
        zones = tuple(
            ResolvedZone(z.name, key, _to_pixels(z.points, z.normalized, width, height, f"{key}.points", source_id),
                         None if z.classes is None else frozenset(z.classes), z.anchor or self.anchor,
                         self.min_distance if z.min_distance is None else z.min_distance)
            for key, z in zone_entries)
        lines = []
        for key, ln in line_entries:
            ab = _to_pixels(ln.points, ln.normalized, width, height, f"{key}.points", source_id)
            lines.append(ResolvedLine(ln.name, key, ab[0], ab[1], None if ln.classes is None else frozenset(ln.classes),
                                      ln.anchor or self.anchor,
                                      self.min_distance if ln.min_distance is None else ln.min_distance))
        return SourceGeometry(width, height, zones, tuple(lines))


def _to_pixels(points: Sequence[Point], normalized: bool, width: int, height: int, key: str,
               source_id: str) -> npt.NDArray[np.float64]:
    """``float64[M, 2]`` pixel coordinates; pixel input is checked against the frame."""
    xy = np.asarray(points, np.float64).reshape(-1, 2)
    if normalized:
        return xy * np.array([width, height], np.float64)
    for i, (x, y) in enumerate(xy.tolist()):
        if x > width or y > height:
            raise ConfigError(f"{key}[{i}]", f"[{x:g}, {y:g}] is outside the {width}x{height} frame of source "
                                             f"{source_id!r} (pixel coordinates are 0..{width}, 0..{height}; "
                                             "or set normalized: true)")
    return xy


@runtime_checkable
class AnalyticsAware(Protocol):
    """A sink that draws or uses the job's zones and lines (the video sink): the job hands it
    the ``analytics:`` section before entering it (:func:`pipelines.graph.open_sinks`)."""

    def use_analytics(self, config: AnalyticsConfig) -> None: ...
