"""operators.geometry against brute-force NumPy references (other algorithms, same answers)."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from operators.geometry import (
    ANCHOR_FRACTIONS,
    anchor_points,
    distance_to_polygon,
    points_in_polygon,
    polygon_area,
    polygon_problem,
    segments_intersect,
    signed_distance,
)
from streams.analytics_config import Anchor


def _winding_inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Reference: the winding number (sum of the angles the edges subtend) is ±1 inside."""
    out = []
    for p in points:
        a = polygon - p
        b = np.roll(polygon, -1, axis=0) - p
        angles = np.arctan2(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0], (a * b).sum(axis=1))
        out.append(abs(round(angles.sum() / (2 * np.pi))) == 1)
    return np.array(out)


def _star_polygon(rng: np.random.Generator, m: int) -> np.ndarray:
    """A random simple (star-shaped, often non-convex) polygon around (50, 50)."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, m))
    radii = rng.uniform(10, 40, m)
    return np.stack([50 + radii * np.cos(angles), 50 + radii * np.sin(angles)], axis=1)


def _solve_intersect(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> bool:
    """Reference: solve p1 + t (p2 - p1) = q1 + u (q2 - q1) for non-parallel segments."""
    m = np.array([p2 - p1, q1 - q2]).T
    t, u = np.linalg.solve(m, q1 - p1)
    return bool(0 <= t <= 1 and 0 <= u <= 1)


def test_anchor_names_match_the_config() -> None:
    assert set(get_args(Anchor)) == set(ANCHOR_FRACTIONS)


def test_anchor_points() -> None:
    boxes = np.array([[10, 20, 30, 60], [0, 0, 4, 2]], np.float32)
    np.testing.assert_allclose(anchor_points(boxes, "bottom_center"), [[20, 60], [2, 2]])
    np.testing.assert_allclose(anchor_points(boxes, "center"), [[20, 40], [2, 1]])
    np.testing.assert_allclose(anchor_points(boxes, "top_left"), [[10, 20], [0, 0]])
    assert anchor_points(np.zeros((0, 4)), "center").shape == (0, 2)


@pytest.mark.parametrize("seed", range(5))
def test_points_in_polygon_equals_the_winding_number(seed: int) -> None:
    rng = np.random.default_rng(seed)
    polygon = _star_polygon(rng, int(rng.integers(3, 12)))
    points = rng.uniform(0, 100, (400, 2))
    got = points_in_polygon(points, polygon)
    expected = _winding_inside(points, polygon)
    np.testing.assert_array_equal(got, expected)
    assert 0 < got.sum() < len(points)  # both answers occur


def test_points_in_a_non_convex_polygon() -> None:
    u_shape = np.array([[0, 0], [30, 0], [30, 30], [20, 30], [20, 10], [10, 10], [10, 30], [0, 30]], float)
    pts = np.array([[5, 20], [15, 20], [25, 20], [15, 5], [35, 5]], float)
    np.testing.assert_array_equal(points_in_polygon(pts, u_shape), [True, False, True, True, False])
    np.testing.assert_array_equal(points_in_polygon(pts, u_shape[::-1]), [True, False, True, True, False])


def test_signed_distance_sides() -> None:
    # a line drawn left to right: below it (y larger, on screen) is the right-hand side
    d = signed_distance([[5, 3], [5, -2], [100, 0]], [0, 0], [10, 0])
    np.testing.assert_allclose(d, [3, -2, 0])
    # drawn top to bottom: the right-hand side is on the screen's left
    d = signed_distance([[-4, 5], [4, 5]], [0, 0], [0, 10])
    np.testing.assert_allclose(d, [4, -4])
    rng = np.random.default_rng(1)
    p, a, b = rng.uniform(-50, 50, (50, 2)), rng.uniform(-50, 50, 2), rng.uniform(-50, 50, 2)
    ab, ap = b - a, p - a
    expected = (ab[0] * ap[:, 1] - ab[1] * ap[:, 0]) / np.linalg.norm(ab)
    np.testing.assert_allclose(signed_distance(p, a, b), expected)


def test_segments_intersect_equals_solving_for_the_crossing() -> None:
    rng = np.random.default_rng(2)
    p1, p2 = rng.uniform(0, 10, (2000, 2)), rng.uniform(0, 10, (2000, 2))
    q1, q2 = np.array([3.0, 2.0]), np.array([7.0, 8.0])
    got = segments_intersect(p1, p2, q1, q2)
    expected = np.array([_solve_intersect(a, b, q1, q2) for a, b in zip(p1, p2, strict=True)])
    np.testing.assert_array_equal(got, expected)
    assert 100 < got.sum() < 1900


def test_segments_touching_and_collinear() -> None:
    a, b = np.array([0.0, 0.0]), np.array([10.0, 0.0])
    cases = {
        ((5, 0), (5, 5)): True,     # an end on the line
        ((10, 0), (12, 3)): True,   # touches B
        ((2, 0), (4, 0)): True,     # collinear, overlapping
        ((11, 0), (14, 0)): False,  # collinear, beyond B
        ((11, -1), (11, 1)): False,  # crosses the line beyond the segment
        ((5, 1), (6, 2)): False,
    }
    for (p, q), expected in cases.items():
        assert bool(segments_intersect(np.array(p, float), np.array(q, float), a, b)) is expected, (p, q)


def test_distance_to_polygon() -> None:
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    d = distance_to_polygon([[5, 5], [13, 5], [13, 14], [5, -2]], square)
    np.testing.assert_allclose(d, [5, 3, 5, 2])
    rng = np.random.default_rng(3)
    pts = rng.uniform(-5, 15, (200, 2))
    dense = np.concatenate([np.linspace(square[i], square[(i + 1) % 4], 2001) for i in range(4)])
    reference = np.linalg.norm(pts[:, None] - dense[None], axis=2).min(axis=1)  # sampled boundary
    np.testing.assert_allclose(distance_to_polygon(pts, square), reference, atol=0.01)


def test_polygon_area_sign() -> None:
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]  # clockwise on the frame (y down)
    assert polygon_area(square) == 100.0
    assert polygon_area(square[::-1]) == -100.0


@pytest.mark.parametrize(("points", "reason"), [
    ([[0, 0], [10, 0]], "at least 3 points, got 2"),
    ([[0, 0], [10, 0], [10, 10], [0, 0]], "repeats point"),
    ([[0, 0], [10, 0], [10, 0], [0, 10]], "point 2 repeats point 1"),
    ([[0, 0], [5, 5], [10, 10]], "zero area"),
    ([[0, 0], [10, 10], [10, 0], [0, 10]], "self-intersecting: edge 0 (points 0-1) and edge 2 (points 2-3)"),
    ([[0, 0], [20, 0], [20, 10], [10, 10], [10, -5], [0, 5]], "self-intersecting"),
    ([[0, 0], [10, 0], [5, 0], [5, 5]], "self-intersecting"),  # edge 1 turns straight back on edge 0
    ([[0, 0], [float("nan"), 0], [0, 5]], "finite"),
])
def test_polygon_problems(points: list[list[float]], reason: str) -> None:
    problem = polygon_problem(np.array(points, float))
    assert problem is not None and reason in problem


def test_valid_polygons_have_no_problem() -> None:
    rng = np.random.default_rng(4)
    for m in (3, 5, 9, 20):
        assert polygon_problem(_star_polygon(rng, m)) is None
    u_shape = [[0, 0], [30, 0], [30, 30], [20, 30], [20, 10], [10, 10], [10, 30], [0, 30]]
    assert polygon_problem(np.array(u_shape, float)) is None
