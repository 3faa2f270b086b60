"""The geometry of counting lines and zones for the tracking ground truth, in plain floats.

These are the rules of the analytics stage (:mod:`pipelines.analytics`, whose docstring
states them exactly), written again here for single points: the ground truth applies them
to the objects' exact paths (:mod:`streams.synthetic.counting`), and this layer cannot
import the stage's NumPy geometry (:mod:`operators.geometry`). Two implementations of one
rule also check each other: ``fovea eval --tracking`` compares their counts.

* **Anchor**: the bottom centre of a box, ``((x1 + x2) / 2, y2)`` (the stage's default).
* **Signed distance** of a point to a line A→B: ``((B - A) × (P - A)) / |AB|``; positive
  is the right-hand side of A→B as drawn on the frame (y down): below a line drawn left
  to right. Moving to the positive side is ``in``, to the negative side ``out``.
* **Segments touch** when they share a point (orientation tests; touching counts).
* **Inside a zone**: the even-odd rule with a ray cast to +x (a point exactly on an edge
  may fall either way); the **distance to a zone** is to its nearest edge.

The per-track state (sides, hysteresis, when a crossing or an exit counts) is in
:mod:`streams.synthetic.counting`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from streams.synthetic.spec import CountingLine, CountingZone, Point


def anchor_of(box: Sequence[float]) -> Point:
    """The anchor of an ``xyxy`` box: its bottom centre."""
    x1, _, x2, y2 = (float(v) for v in box[:4])
    return ((x1 + x2) / 2, y2)


def _cross(o: Point, p: Point, q: Point) -> float:
    """``(p - o) × (q - o)``."""
    return (p[0] - o[0]) * (q[1] - o[1]) - (p[1] - o[1]) * (q[0] - o[0])


def signed_distance(line: CountingLine, p: Point) -> float:
    """Distance of ``p`` to the line through ``line.start`` and ``line.end``, positive on
    its right-hand side as drawn on the frame."""
    (ax, ay), (bx, by) = line.start, line.end
    return _cross(line.start, line.end, p) / math.hypot(bx - ax, by - ay)


def _on_segment(p: Point, q: Point, r: Point) -> bool:
    """Whether ``r``, collinear with ``p``-``q``, lies within its bounding box."""
    return min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and min(p[1], q[1]) <= r[1] <= max(p[1], q[1])


def segments_touch(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    """Whether segments ``p1``-``p2`` and ``q1``-``q2`` share a point (touching counts)."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return ((d1 == 0 and _on_segment(q1, q2, p1)) or (d2 == 0 and _on_segment(q1, q2, p2))
            or (d3 == 0 and _on_segment(p1, p2, q1)) or (d4 == 0 and _on_segment(p1, p2, q2)))


def inside(zone: CountingZone, p: Point) -> bool:
    """Whether ``p`` is inside ``zone`` (even-odd rule, a ray cast to +x)."""
    x, y = p
    poly = zone.polygon
    result = False
    for i in range(len(poly)):
        (x1, y1), (x2, y2) = poly[i], poly[(i + 1) % len(poly)]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            result = not result
    return result


def distance_to_zone(zone: CountingZone, p: Point) -> float:
    """Distance of ``p`` to the zone's boundary (its nearest edge), inside or out."""
    best = math.inf
    poly = zone.polygon
    for i in range(len(poly)):
        (ax, ay), (bx, by) = poly[i], poly[(i + 1) % len(poly)]
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = 0.0 if length2 == 0 else min(max(((p[0] - ax) * dx + (p[1] - ay) * dy) / length2, 0.0), 1.0)
        best = min(best, math.hypot(p[0] - (ax + t * dx), p[1] - (ay + t * dy)))
    return best
