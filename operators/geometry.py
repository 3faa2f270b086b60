"""Plane geometry of zones and counting lines: pure NumPy functions on points, segments, polygons.

Coordinates are image pixels: x to the right, y DOWN. Every function takes and returns
NumPy arrays (no torch: the analytics stage runs on the host, per frame, on a few dozen
points), vectorised over the points so that a frame costs a few array operations.

Sides of a line: :func:`signed_distance` is positive on the right-hand side of A→B as
seen on the frame (y down), i.e. where ``(B-A) × (P-A) > 0``. A line drawn from left to
right has its right-hand side below it; one drawn from top to bottom has it on the left.

Usage::

    anchors = anchor_points(dets.xyxy, "bottom_center")             # float64[N, 2]
    inside = points_in_polygon(anchors, polygon)                      # bool[N]
    d = signed_distance(anchors, a, b)                                # float64[N]
    crossed = segments_intersect(prev, anchors, a, b)                 # bool[N]
    polygon_problem(np.array([[0, 0], [1, 1], [1, 0], [0, 1]]))       # "is self-intersecting: ..."
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from streams.analytics_config import ANCHOR_FRACTIONS

FloatArray = npt.NDArray[np.float64]

__all__ = [
    "ANCHOR_FRACTIONS",
    "anchor_points",
    "distance_to_polygon",
    "points_in_polygon",
    "polygon_area",
    "polygon_problem",
    "segments_intersect",
    "signed_distance",
]


def anchor_points(xyxy: npt.ArrayLike, anchor: str) -> FloatArray:
    """The anchor point of each box: ``float[N, 4]`` xyxy -> ``float64[N, 2]`` (x, y).

    ``anchor`` is a key of :data:`~streams.analytics_config.ANCHOR_FRACTIONS`
    (``bottom_center``: the middle of the box's bottom edge, where a person or a car
    touches the ground).
    """
    fx, fy = ANCHOR_FRACTIONS[anchor]
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    return np.stack([b[:, 0] + fx * (b[:, 2] - b[:, 0]), b[:, 1] + fy * (b[:, 3] - b[:, 1])], axis=1)


def _cross(o: FloatArray, p: FloatArray, q: FloatArray) -> FloatArray:
    """``(p - o) × (q - o)`` over the last axis: ``(..., 2)`` x3 -> ``(...)``."""
    return (p[..., 0] - o[..., 0]) * (q[..., 1] - o[..., 1]) - (p[..., 1] - o[..., 1]) * (q[..., 0] - o[..., 0])


def signed_distance(points: npt.ArrayLike, a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Signed distance of each point to the line through ``a`` and ``b`` (``a != b``).

    ``float[N, 2]``, ``float[2]``, ``float[2]`` -> ``float64[N]``: positive on the
    right-hand side of A→B as seen on the frame (y down), negative on the left.

    NumPy reference: ``np.cross(b - a, p - a) / np.linalg.norm(b - a)`` per point.
    """
    p = np.asarray(points, np.float64).reshape(-1, 2)
    a2 = np.asarray(a, np.float64)
    b2 = np.asarray(b, np.float64)
    return _cross(a2, b2, p) / float(np.hypot(*(b2 - a2)))


def _on_segment(p: FloatArray, q: FloatArray, r: FloatArray) -> npt.NDArray[np.bool_]:
    """Whether ``r``, known to be collinear with ``p``-``q``, lies within its bounding box."""
    return ((np.minimum(p[..., 0], q[..., 0]) <= r[..., 0]) & (r[..., 0] <= np.maximum(p[..., 0], q[..., 0]))
            & (np.minimum(p[..., 1], q[..., 1]) <= r[..., 1]) & (r[..., 1] <= np.maximum(p[..., 1], q[..., 1])))


def segments_intersect(p1: npt.ArrayLike, p2: npt.ArrayLike, q1: npt.ArrayLike,
                       q2: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Whether segment ``p1``-``p2`` and segment ``q1``-``q2`` share a point (touching counts).

    All four are ``float[..., 2]`` and broadcast together (e.g. ``[N, 2]`` paths against
    one line's ``[2]`` end points, or ``[M, 1, 2]`` against ``[1, M, 2]`` for all pairs of
    edges); returns ``bool[...]``. Orientation tests, so exact for integer coordinates.

    NumPy reference (non-parallel segments): solve ``p1 + t (p2 - p1) = q1 + u (q2 - q1)``
    and test ``0 <= t, u <= 1``.
    """
    a1, a2, b1, b2 = (np.asarray(v, np.float64) for v in (p1, p2, q1, q2))
    d1, d2 = _cross(b1, b2, a1), _cross(b1, b2, a2)  # sides of p1, p2 of line q
    d3, d4 = _cross(a1, a2, b1), _cross(a1, a2, b2)  # sides of q1, q2 of line p
    proper = (((d1 > 0) & (d2 < 0)) | ((d1 < 0) & (d2 > 0))) & (((d3 > 0) & (d4 < 0)) | ((d3 < 0) & (d4 > 0)))
    touch = (((d1 == 0) & _on_segment(b1, b2, a1)) | ((d2 == 0) & _on_segment(b1, b2, a2))
             | ((d3 == 0) & _on_segment(a1, a2, b1)) | ((d4 == 0) & _on_segment(a1, a2, b2)))
    return np.asarray(proper | touch)


def points_in_polygon(points: npt.ArrayLike, polygon: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Whether each point is inside the polygon (even-odd rule, a ray cast to +x).

    ``float[N, 2]`` points, ``float[M, 2]`` vertices in order (closed implicitly) ->
    ``bool[N]``. A point exactly on an edge may fall either way. Memory ``N * M``.

    NumPy reference: the winding number, ``sum(angle(v[i] - p, v[i+1] - p)) / 2π``, is
    ±1 inside a simple polygon and 0 outside.
    """
    p = np.asarray(points, np.float64).reshape(-1, 2)
    v = np.asarray(polygon, np.float64).reshape(-1, 2)
    x, y = p[:, :1], p[:, 1:]                       # [N, 1]
    x1, y1 = v[:, 0], v[:, 1]                       # [M]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    straddles = (y1 > y) != (y2 > y)                # [N, M]: the edge spans the point's row
    with np.errstate(divide="ignore", invalid="ignore"):  # horizontal edges never straddle
        x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    crossings = np.count_nonzero(straddles & (x < x_at), axis=1)
    return np.asarray(crossings % 2 == 1)


def distance_to_polygon(points: npt.ArrayLike, polygon: npt.ArrayLike) -> FloatArray:
    """Distance of each point to the polygon's boundary (nearest edge), inside or out.

    ``float[N, 2]``, ``float[M, 2]`` -> ``float64[N]``, in the coordinates' units.
    """
    p = np.asarray(points, np.float64).reshape(-1, 1, 2)     # [N, 1, 2]
    a = np.asarray(polygon, np.float64).reshape(1, -1, 2)    # [1, M, 2]
    ab = np.roll(a, -1, axis=1) - a
    length2 = np.einsum("...i,...i->...", ab, ab)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.einsum("...i,...i->...", p - a, ab) / length2
    t = np.clip(np.nan_to_num(t), 0.0, 1.0)                  # a zero-length edge: its vertex
    nearest = a + t[..., None] * ab
    return np.asarray(np.sqrt(((p - nearest) ** 2).sum(-1)).min(axis=1))


def polygon_area(polygon: npt.ArrayLike) -> float:
    """Signed area of ``float[M, 2]`` vertices (shoelace): positive when the vertices run
    clockwise on the frame (y down), negative counter-clockwise."""
    v = np.asarray(polygon, np.float64).reshape(-1, 2)
    x, y = v[:, 0], v[:, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def polygon_problem(polygon: npt.ArrayLike) -> str | None:
    """Why ``float[M, 2]`` vertices are not a usable zone, or ``None`` when they are.

    Refused: fewer than 3 points, non-finite coordinates, a point repeating the previous
    one (the polygon closes by itself), all points on one line (zero area), two edges that
    cross or overlap (self-intersecting; adjacent edges only share their common vertex).
    """
    v = np.asarray(polygon, np.float64).reshape(-1, 2)
    m = len(v)
    if m < 3:
        return f"a zone needs at least 3 points, got {m}"
    if not np.isfinite(v).all():
        return "coordinates must be finite numbers"
    nxt = np.roll(v, -1, axis=0)
    repeats = np.flatnonzero((v == nxt).all(axis=1))
    if len(repeats):
        i = int(repeats[0])
        return (f"point {(i + 1) % m} repeats point {i} (a zone closes by itself: do not repeat its first point)"
                if i == m - 1 else f"point {i + 1} repeats point {i}")
    span = v - v[0]
    singular = np.linalg.svd(span, compute_uv=False)
    if singular[1] <= 1e-12 * max(singular[0], 1e-300):
        return "has zero area: all its points lie on one line"
    i, j = _first_crossing(v)
    if i >= 0:
        return (f"is self-intersecting: edge {i} (points {i}-{(i + 1) % m}) and edge {j} "
                f"(points {j}-{(j + 1) % m}) cross")
    if polygon_area(v) == 0.0:  # cannot happen for a simple polygon; kept as a guard
        return "has zero area"
    return None


def _first_crossing(v: FloatArray) -> tuple[int, int]:
    """The first pair of edges ``(i, j)``, ``i < j``, that share a point they must not share,
    or ``(-1, -1)``. Edge ``k`` runs from vertex ``k`` to vertex ``k + 1`` (mod M)."""
    m = len(v)
    a, b = v, np.roll(v, -1, axis=0)
    hit = segments_intersect(a[:, None], b[:, None], a[None, :], b[None, :])       # [M, M]
    idx = np.arange(m)
    adjacent = (idx[:, None] == idx[None, :]) | ((idx[:, None] + 1) % m == idx[None, :]) \
        | ((idx[None, :] + 1) % m == idx[:, None])
    # adjacent edges always share their common vertex; they overlap only when the second
    # turns straight back along the first (collinear, opposite directions)
    d = b - a
    back = (d[:, 0] * np.roll(d, -1, axis=0)[:, 1] - d[:, 1] * np.roll(d, -1, axis=0)[:, 0] == 0) \
        & ((d * np.roll(d, -1, axis=0)).sum(axis=1) < 0)                               # edge k, k+1
    bad = hit & ~adjacent
    for k in np.flatnonzero(back).tolist():
        bad[k, (k + 1) % m] = bad[(k + 1) % m, k] = True
    bad = np.triu(bad | bad.T, k=1)
    if not bad.any():
        return -1, -1
    i, j = np.argwhere(bad)[0].tolist()
    return int(i), int(j)
