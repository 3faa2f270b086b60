"""Moving backgrounds of synthetic scenes: a scrolling smooth-noise texture and drifting blobs.

The texture and blob colours are desaturated so they are never confused with a class colour,
yet the blobs are object-like (soft ellipses that move), which keeps the detector from
learning "anything that moves is an object".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from streams.synthetic.shapes import coverage
from streams.synthetic.spec import SceneSpec


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Periodic smooth noise in [0, 1], float32[h, w] (smoothstep-interpolated random grid)."""
    grid = rng.random((cells_y, cells_x)).astype(np.float32)

    def axis(n: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n, dtype=np.float32) + 0.5) * cells / n - 0.5
        i0 = np.floor(pos).astype(np.int64)
        f = pos - i0
        f = f * f * (3 - 2 * f)
        return i0 % cells, (i0 + 1) % cells, f.astype(np.float32)

    y0, y1, fy = axis(h, cells_y)
    x0, x1, fx = axis(w, cells_x)
    rows = grid[y0] * (1 - fy)[:, None] + grid[y1] * fy[:, None]  # (h, cells_x)
    return rows[:, x0] * (1 - fx)[None, :] + rows[:, x1] * fx[None, :]


def _muted_color(rng: np.random.Generator, sat_max: float = 0.3) -> np.ndarray:
    """A desaturated RGB colour (float32[3], 0..255): never confusable with a class colour."""
    hue = rng.random()
    sat = rng.uniform(0.0, sat_max)
    val = rng.uniform(0.2, 0.9)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    rgb = val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)
    return (rgb * 255).astype(np.float32)


@dataclass(frozen=True)
class _Blob:
    """A drifting, rotating ellipse (semi-axes ``a >= b`` in pixels) that wraps around the frame."""

    x: float
    y: float
    a: float
    b: float
    angle: float
    vx: float
    vy: float
    va: float
    color: np.ndarray


class Background:
    """A periodic texture (tiled 2x2 so any scrolled window is a view) plus drifting blobs.

    Construction draws from ``rng`` (the scene's generator): the draw order is part of what
    makes a seed reproduce the same pixels, so it must not change.
    """

    def __init__(self, rng: np.random.Generator, spec: SceneSpec) -> None:
        h, w = spec.height, spec.width
        self.h, self.w = h, w
        self.blobs: list[_Blob] = []
        if spec.background == "plain":
            self.tiled = np.full((2 * h, 2 * w, 3), 114, np.uint8)
            self.origin = np.zeros(2)
            self.vel = np.zeros(2)
            return
        c0, c1 = _muted_color(rng), _muted_color(rng)
        n1 = _smooth_noise(rng, h, w, int(rng.integers(2, 6)), int(rng.integers(2, 8)))
        n2 = _smooth_noise(rng, h, w, int(rng.integers(8, 40)), int(rng.integers(8, 60)))
        amp = rng.uniform(10, 45)
        tex = c0 + (c1 - c0) * n1[..., None] + (amp * (n2 - 0.5))[..., None]
        if rng.random() < 0.5:  # stripes, gently
            period = rng.uniform(0.05, 0.3) * max(h, w)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            theta = rng.uniform(0, np.pi)
            # periodic in both axes so the tiled texture has no seams
            kx = round(w / period * math.cos(theta)) * 2 * math.pi / w
            ky = round(h / period * math.sin(theta)) * 2 * math.pi / h
            tex += (rng.uniform(5, 20) * np.sin(kx * xx + ky * yy))[..., None]
        tile = np.clip(tex, 0, 255).astype(np.uint8)
        self.tiled = np.tile(tile, (2, 2, 1))
        self.origin = rng.random(2) * (h, w)
        scale = min(h, w) / 360.0
        ang = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.2, 3.0) * scale
        self.vel = np.array([math.sin(ang), math.cos(ang)]) * speed
        m = min(h, w)
        for _ in range(spec.distractors):
            a = rng.uniform(0.04, 0.2) * m
            self.blobs.append(  # keyword arguments evaluate left to right: this is the draw order
                _Blob(
                    x=rng.uniform(0, w), y=rng.uniform(0, h), a=a, b=a * rng.uniform(0.3, 0.6),
                    angle=rng.uniform(0, np.pi), vx=rng.normal(0, 0.006 * m), vy=rng.normal(0, 0.006 * m),
                    va=rng.normal(0, 0.02), color=_muted_color(rng, 0.35),
                )
            )

    def frame(self, t: int, out: np.ndarray, edge: float) -> None:
        """Draw frame ``t`` into ``out`` (uint8[H, W, 3]); blob edges ramp over ``edge`` pixels."""
        oy, ox = (self.origin + self.vel * t).astype(np.int64) % (self.h, self.w)
        out[:] = self.tiled[oy : oy + self.h, ox : ox + self.w]
        for b in self.blobs:
            x = (b.x + b.vx * t) % (self.w + 2 * b.a) - b.a
            y = (b.y + b.vy * t) % (self.h + 2 * b.a) - b.a
            ang = b.angle + b.va * t
            x0, x1 = max(int(x - b.a - 2), 0), min(int(x + b.a + 3), self.w)
            y0, y1 = max(int(y - b.a - 2), 0), min(int(y + b.a + 3), self.h)
            if x0 >= x1 or y0 >= y1:
                continue
            gy, gx = np.ogrid[y0:y1, x0:x1]
            dx, dy = gx + 0.5 - x, gy + 0.5 - y
            c, s = math.cos(ang), math.sin(ang)
            u, v = (dx * c + dy * s) / b.a, (-dx * s + dy * c) / b.b
            d = (np.sqrt(u * u + v * v) - 1) * b.b
            _composite(out, x0, y0, coverage(d, edge), b.color)


def _composite(out: np.ndarray, x0: int, y0: int, alpha: np.ndarray, color: np.ndarray) -> None:
    """Blend ``color`` over ``out`` at ``(x0, y0)`` with per-pixel ``alpha``, rounding to uint8."""
    h, w = alpha.shape
    region = out[y0 : y0 + h, x0 : x0 + w]
    reg = region.astype(np.float32)
    reg += alpha[..., None] * (color - reg)
    region[:] = (reg + 0.5).astype(np.uint8)
