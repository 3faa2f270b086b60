"""Object attributes of synthetic scenes: the ``pattern`` painted on an object, independent of its class.

A class fixes an object's shape and colour, so neither can train or score a secondary
classifier that must look at something else. With ``SceneSpec.attributes`` on, every
object also gets a **pattern**, drawn independently of its class and kept for its whole
life:

* ``solid``: the plain class colour (what every object is with attributes off);
* ``striped``: parallel bands of a darker shade of the class colour, at a random angle
  to the object;
* ``dotted``: a square grid of darker round dots, at a random angle to the object.

The pattern lives in the object's own coordinates (it scales and rotates with it): its
period is a fixed fraction of the object's size (:data:`STRIPE_PERIOD`, :data:`DOT_PERIOD`),
so a crop of the object's box resized to a classifier's input shows about the same number
of stripes or dots whatever the object's size in the frame. At the smallest default size
(a diameter of 9 % of a 360-px frame) stripes are ~4 px wide and dots ~5.5 px across:
coarse enough to survive H.264 at CRF 23-35, which keeps luma edges of that size. The
darker shade keeps the hue, so the detector still sees the class colour.

The draws come from a generator of their own, seeded by ``(SceneSpec.seed, track id)``:
the scene's main generator is untouched, so positions, sizes, boxes and the background
are the same with attributes on or off; only the paint of patterned objects differs.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted")
SOLID, STRIPED, DOTTED = 0, 1, 2
# attribute name -> its values (ids index the tuple): what a clip's ground truth lists
ATTRIBUTES: dict[str, tuple[str, ...]] = {"pattern": PATTERNS}

STRIPE_PERIOD = 0.55  # in units of the object's scale r (the shape spans about 2r)
STRIPE_DUTY = 0.45  # fraction of a period that is dark
DOT_PERIOD = 0.6
DOT_RADIUS = 0.17  # dots cover pi * 0.17^2 / 0.6^2 ~ 25 % of the object
SHADE = 0.5  # a pattern's pixels are the class colour times this
_SEED_TAG = 0x5A77  # separates the attribute generator from the scene's


class Patterned(Protocol):
    """An object placed in the frame with a pattern (the scene model's objects)."""

    x: float
    y: float
    r: float
    angle: float
    pattern: int
    pattern_angle: float
    pattern_phase: tuple[float, float]


def draw_pattern(scene_seed: int, track: int) -> tuple[int, float, tuple[float, float]]:
    """``(pattern id, angle to the object, phase)`` of object ``track`` of a scene (uniform
    over :data:`PATTERNS`), from its own generator."""
    rng = np.random.default_rng([scene_seed, _SEED_TAG, track])
    pattern = int(rng.integers(len(PATTERNS)))
    angle = float(rng.uniform(0, math.pi))
    phase = (float(rng.random()), float(rng.random()))
    return pattern, angle, phase


def pattern_alpha(o: Patterned, gx: np.ndarray, gy: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """How much of the pattern's darker shade covers each pixel (float32 in [0, 1]), at
    offsets ``gx, gy`` from the object's centre in pixels (0 everywhere for a solid object).

    The pattern's edges are a linear ramp ``edge`` pixels wide (anti-aliased, so small
    objects do not alias).
    """
    if o.pattern == SOLID:
        return np.zeros(np.broadcast_shapes(gx.shape, gy.shape), np.float32)
    a = o.angle + o.pattern_angle
    c, s = math.cos(a), math.sin(a)
    u = (gx * c + gy * s) / o.r  # the pattern's own axes, in units of r
    v = (-gx * s + gy * c) / o.r
    if o.pattern == STRIPED:
        f = v / STRIPE_PERIOD + o.pattern_phase[0]
        dist = np.abs(f - np.floor(f) - 0.5)  # from a band's centre, in periods
        inside_px = (STRIPE_DUTY / 2 - dist) * STRIPE_PERIOD * o.r
    elif o.pattern == DOTTED:
        fu = u / DOT_PERIOD + o.pattern_phase[0]
        fv = v / DOT_PERIOD + o.pattern_phase[1]
        du, dv = fu - np.floor(fu) - 0.5, fv - np.floor(fv) - 0.5
        inside_px = (DOT_RADIUS - np.sqrt(du * du + dv * dv) * DOT_PERIOD) * o.r
    else:
        raise ValueError(f"unknown pattern id {o.pattern}")
    return np.clip(0.5 + inside_px / edge, 0.0, 1.0).astype(np.float32)
