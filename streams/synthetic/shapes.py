"""Shape geometry of the synthetic classes: outlines, exact boxes, signed distances, coverage.

Each shape is a union of convex polygons (or a disc) in object-local units (radius 1),
placed in the frame by a centre, a scale ``r`` in pixels and a rotation. Ground-truth boxes
come from the outline polygons (clipped to the frame exactly), pixels from the signed
distance, so the labelled box and the drawn shape agree to the pixel.

The functions take any object with the :class:`PlacedShape` attributes, so the scene model
(:mod:`streams.synthetic.scene`) can grow without this module knowing about it.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np


class PlacedShape(Protocol):
    """A class's shape placed in the frame (pixel centre, scale in pixels, rotation in radians)."""

    cls: int
    x: float
    y: float
    r: float
    angle: float


def _regular(n: int, radius: float, phase: float) -> np.ndarray:
    a = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], 1)


_STAR_RO, _STAR_RI = 1.05, 1.05 * 0.45


def _star_outline() -> np.ndarray:
    a = -np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, _STAR_RO, _STAR_RI)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _star_edge() -> tuple[float, float, float]:
    """The edge from the outer vertex at angle 0 to the inner one at 36°: ``n·q <= d`` inside."""
    ox, oy = _STAR_RO, 0.0
    ix, iy = _STAR_RI * math.cos(math.pi / 5), _STAR_RI * math.sin(math.pi / 5)
    nx, ny = iy - oy, -(ix - ox)
    norm = math.hypot(nx, ny)
    nx, ny = nx / norm, ny / norm
    if nx * ox + ny * oy < 0:
        nx, ny = -nx, -ny
    return nx, ny, nx * ox + ny * oy


_STAR_N = _star_edge()


def _star_sdf(lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Signed distance (local units) to the 5-point star: fold the angle into one half-spike."""
    sector = 2 * np.pi / 5
    psi = np.mod(np.arctan2(ly, lx) + np.pi / 2, sector)
    psi = np.minimum(psi, sector - psi)
    r = np.sqrt(lx * lx + ly * ly)
    nx, ny, d = _STAR_N
    return r * (nx * np.cos(psi) + ny * np.sin(psi)) - d


def _cross_parts() -> tuple[list[np.ndarray], np.ndarray]:
    a, b = 0.95, 0.32
    h = np.array([(-a, -b), (a, -b), (a, b), (-a, b)])
    v = np.array([(-b, -a), (b, -a), (b, a), (-b, a)])
    outline = np.array(
        [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
    )
    return [h, v], outline


_SQUARE = _regular(4, 0.8 * math.sqrt(2), math.pi / 4)
_TRIANGLE = _regular(3, 1.05, -math.pi / 2)
_STAR_OUTLINE = _star_outline()
_CROSS_RECTS, _CROSS_OUTLINE = _cross_parts()
# class id -> (convex parts, outline polygon); None for the disc (circle, radius 1).
_SHAPES: tuple[tuple[list[np.ndarray], np.ndarray] | None, ...] = (
    None,
    ([_SQUARE], _SQUARE),
    ([_TRIANGLE], _TRIANGLE),
    ([], _STAR_OUTLINE),  # drawn by _star_sdf
    (_CROSS_RECTS, _CROSS_OUTLINE),
)


_STAR = 3


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# class id -> area of the shape at scale 1 (multiply by r² for pixels)
UNIT_AREA: tuple[float, ...] = tuple(math.pi if s is None else _poly_area(s[1]) for s in _SHAPES)


def _half_planes(poly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward unit normals ``n[k]`` and offsets ``d[k]`` (``n·p <= d`` inside) of a convex polygon."""
    e = np.roll(poly, -1, 0) - poly
    n = np.stack([e[:, 1], -e[:, 0]], 1)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    d = (n * poly).sum(1)
    centroid = poly.mean(0)
    flip = (n @ centroid) > d  # normals pointing inward: flip
    n[flip] *= -1
    d[flip] *= -1
    return n, d


def extent(o: PlacedShape) -> tuple[float, float, float, float]:
    """Bounding box ``xyxy`` of the whole shape in pixels (not clipped to the frame)."""
    if _SHAPES[o.cls] is None:
        return (o.x - o.r, o.y - o.r, o.x + o.r, o.y + o.r)
    p = _outline(o)
    return (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))


def _outline(o: PlacedShape) -> np.ndarray:
    shape = _SHAPES[o.cls]
    assert shape is not None
    c, s = math.cos(o.angle), math.sin(o.angle)
    p = shape[1]
    return np.stack([o.x + o.r * (p[:, 0] * c - p[:, 1] * s), o.y + o.r * (p[:, 0] * s + p[:, 1] * c)], 1)


def _clip_poly(p: np.ndarray, axis: int, bound: float, keep_below: bool) -> np.ndarray:
    """Sutherland–Hodgman against one frame edge (works for non-convex subjects too)."""
    if len(p) == 0:
        return p
    v = p[:, axis] - bound
    inside = v <= 0 if keep_below else v >= 0
    out = []
    n = len(p)
    for i in range(n):
        j = (i + 1) % n
        if inside[i]:
            out.append(p[i])
        if inside[i] != inside[j]:
            t = v[i] / (v[i] - v[j])
            out.append(p[i] + t * (p[j] - p[i]))
    return np.array(out).reshape(-1, 2)


def frame_extent(o: PlacedShape, w: int, h: int) -> tuple[float, float, float, float] | None:
    """Bounding box of the part of the shape inside the frame, or ``None`` if none is."""
    if _SHAPES[o.cls] is None:  # disc ∩ rectangle
        dy = max(0.0 - o.y, o.y - h, 0.0)
        dx = max(0.0 - o.x, o.x - w, 0.0)
        if dx >= o.r or dy >= o.r:
            return None
        hx, hy = math.sqrt(o.r * o.r - dy * dy), math.sqrt(o.r * o.r - dx * dx)
        box = (max(o.x - hx, 0.0), max(o.y - hy, 0.0), min(o.x + hx, w), min(o.y + hy, h))
    else:
        p = _outline(o)
        for axis, bound, below in ((0, 0.0, False), (0, w, True), (1, 0.0, False), (1, h, True)):
            p = _clip_poly(p, axis, float(bound), below)
        if len(p) < 3:
            return None
        box = (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))
    # exact clamp: the clipped vertices can miss the frame edge by rounding (e.g. -1e-16)
    box = (min(max(box[0], 0.0), w), min(max(box[1], 0.0), h), min(max(box[2], 0.0), w), min(max(box[3], 0.0), h))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box


def signed_distance(o: PlacedShape, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Signed distance in pixels (negative inside) at pixel centres ``(gx, gy)``.

    Exact in sign (so the ``<= 0`` set is the shape); an under-estimate outside corners,
    which only affects the soft edge.
    """
    dx, dy = gx - o.x, gy - o.y
    shape = _SHAPES[o.cls]
    if shape is None:
        return np.sqrt(dx * dx + dy * dy) - o.r
    c, s = math.cos(o.angle), math.sin(o.angle)
    lx = (dx * c + dy * s) / o.r  # rotate into the shape's frame
    ly = (-dx * s + dy * c) / o.r
    if o.cls == _STAR:
        return _star_sdf(lx, ly) * o.r
    out: np.ndarray | None = None
    for part in shape[0]:
        n, d = _half_planes(part)
        dist = None
        for k in range(len(d)):
            v = lx * n[k, 0] + ly * n[k, 1] - d[k]
            dist = v if dist is None else np.maximum(dist, v)
        assert dist is not None
        out = dist if out is None else np.minimum(out, dist)
    assert out is not None
    return out * o.r


def coverage(sdf: np.ndarray, edge: float) -> np.ndarray:
    """Coverage in [0, 1]: 0.5 on the outline, a linear ramp ``edge`` pixels wide."""
    return np.clip(0.5 - sdf / edge, 0.0, 1.0).astype(np.float32)
