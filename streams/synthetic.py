"""Synthetic scenes with exact ground truth: coloured shapes over moving textured backgrounds.

Used to train and evaluate the bundled detector (:mod:`engines.detector`) and by tests and
benchmarks that need videos whose true boxes are known. Pure NumPy rendering plus PyAV
encoding; no DALI, CUDA or TensorRT imports.

Classes (shape and colour both differ, so a small CNN tells them apart)::

    0 circle    red         3 star   yellow (5 points)
    1 square    green       4 cross  magenta (a plus sign)
    2 triangle  blue

Backgrounds are scrolling smooth-noise textures in desaturated colours with drifting
desaturated elliptical blobs; objects move, grow/shrink, rotate, enter and leave the frame
and overlap (random z-order). Per-frame Gaussian noise and soft (blurred) edges are added.

Labelling rule (what ``GTBox`` lists for a frame):

* A box is the exact bounding box of the object's shape *inside the frame* (the outline
  clipped to the frame rectangle, then boxed), in pixel ``xyxy`` (pixel ``i`` covers
  ``[i, i + 1)``). Occlusion does not shrink it: an object partly hidden by others keeps
  its full (in-frame) extent.
* An object is labelled only if its *visible fraction* — the area of its own pixels that
  are inside the frame and not covered by objects in front of it, divided by its full
  area — is at least :data:`MIN_VISIBLE` (0.4), and the clipped box is at least
  :data:`MIN_BOX_SIZE` (8) pixels on both sides. Anything else is drawn but not labelled.

Usage::

    spec = SceneSpec(width=640, height=360, num_frames=90, seed=3, empty_first_frames=10)
    for rgb, boxes in render_scene(spec):   # rgb: uint8[H, W, 3]; boxes: list[GTBox]
        ...
    clip = write_clip("out/clip.mp4", spec)     # + out/clip.gt.json
    gt = load_ground_truth(clip)
    gt.boxes[12], gt.class_ids[12]              # float32[N, 4], int64[N]
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streams.detections import Detections

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (225, 35, 35),  # circle: red
    (35, 185, 60),  # square: green
    (40, 80, 230),  # triangle: blue
    (240, 205, 30),  # star: yellow
    (205, 45, 205),  # cross: magenta
)
MIN_VISIBLE = 0.4
MIN_BOX_SIZE = 8.0

Codec = Literal["h264", "vp9", "hevc"]
_CODECS: dict[str, tuple[str, str]] = {  # codec -> (encoder, default suffix)
    "h264": ("libx264", ".mp4"),
    "vp9": ("libvpx-vp9", ".webm"),
    "hevc": ("libx265", ".mp4"),
}


@dataclass(frozen=True)
class SceneSpec:
    """What to render and how to encode it.

    Attributes:
        width, height: frame size in pixels (even, >= 16: the clips are yuv420p).
        fps: frames per second of the written clip.
        num_frames: frames rendered (and encoded).
        seed: everything random derives from it; the same spec renders the same pixels.
        num_objects: ``(min, max)`` objects present at once (after ``empty_first_frames``).
        classes: subset of :data:`CLASS_NAMES` to draw (``None``: all). Class ids stay
            indices into :data:`CLASS_NAMES`.
        empty_first_frames: this many leading frames show only the background.
        object_size: ``(min, max)`` object diameter as a fraction of ``min(width, height)``.
        noise: standard deviation of the per-frame Gaussian pixel noise (grey levels).
        blur: edge softness of shapes and blobs in pixels (0: hard, anti-aliased edges).
        distractors: number of drifting background blobs (desaturated colours).
        speed: ``(min, max)`` object speed per frame as a fraction of ``min(width, height)``.
        background: ``"texture"`` (scrolling texture) or ``"plain"`` (uniform grey 114, no
            blobs: for tests that find objects by colour).
        codec: ``"h264"`` (libx264, .mp4), ``"vp9"`` (libvpx-vp9, .webm) or ``"hevc"``
            (libx265, .mp4).
        gop: keyframe interval of the encoded clip in frames.
        crf: encoder quality (``None``: 23 for h264, 28 for hevc, 32 for vp9).
    """

    width: int = 640
    height: int = 360
    fps: float = 30.0
    num_frames: int = 60
    seed: int = 0
    num_objects: tuple[int, int] = (2, 6)
    classes: tuple[str, ...] | None = None
    empty_first_frames: int = 0
    object_size: tuple[float, float] = (0.09, 0.24)
    noise: float = 3.0
    blur: float = 0.7
    distractors: int = 4
    speed: tuple[float, float] = (0.002, 0.012)
    background: Literal["texture", "plain"] = "texture"
    codec: Codec = "h264"
    gop: int = 30
    crf: int | None = None

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"SceneSpec: width and height must be even and >= 16, got {self.width}x{self.height}")
        if self.num_frames < 0 or self.empty_first_frames < 0:
            raise ValueError("SceneSpec: num_frames and empty_first_frames must be >= 0")
        if not 0 <= self.num_objects[0] <= self.num_objects[1]:
            raise ValueError(f"SceneSpec.num_objects: expected 0 <= min <= max, got {self.num_objects}")
        if not 0 < self.object_size[0] <= self.object_size[1]:
            raise ValueError(f"SceneSpec.object_size: expected 0 < min <= max, got {self.object_size}")
        if self.fps <= 0:
            raise ValueError(f"SceneSpec.fps must be > 0, got {self.fps}")
        if self.codec not in _CODECS:
            raise ValueError(f"SceneSpec.codec: expected one of {list(_CODECS)}, got {self.codec!r}")
        if self.gop < 1:
            raise ValueError(f"SceneSpec.gop must be >= 1, got {self.gop}")
        if self.background not in ("texture", "plain"):
            raise ValueError(f"SceneSpec.background: expected 'texture' or 'plain', got {self.background!r}")
        if self.classes is not None:
            unknown = [c for c in self.classes if c not in CLASS_NAMES]
            if unknown or not self.classes:
                raise ValueError(f"SceneSpec.classes: expected a non-empty subset of {CLASS_NAMES}, got {self.classes}")
            object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "num_objects", tuple(self.num_objects))
        object.__setattr__(self, "object_size", tuple(self.object_size))
        object.__setattr__(self, "speed", tuple(self.speed))


@dataclass(frozen=True)
class GTBox:
    """One labelled object in one frame (pixel ``xyxy`` clipped to the frame)."""

    x1: float
    y1: float
    x2: float
    y2: float
    class_id: int
    track_id: int
    visible: float  # visible fraction in [MIN_VISIBLE, 1]

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_id]


def boxes_to_arrays(boxes: Sequence[GTBox]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``(xyxy float32[N, 4], class_id int64[N])`` of a frame's boxes."""
    xyxy = np.array([b.xyxy for b in boxes], np.float32).reshape(-1, 4)
    return xyxy, np.array([b.class_id for b in boxes], np.int64)


# ---------------------------------------------------------------------------------------
# Shapes: each is a union of convex polygons (or a disc) in object-local units (radius 1).


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


_UNIT_AREA = tuple(math.pi if s is None else _poly_area(s[1]) for s in _SHAPES)


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


@dataclass
class _Obj:
    cls: int
    track: int
    x: float
    y: float
    r: float  # scale: the shape's "radius" in pixels
    angle: float
    vx: float
    vy: float
    vr: float  # log-scale change per frame
    va: float
    color: np.ndarray
    z: float


def _extent(o: _Obj) -> tuple[float, float, float, float]:
    if _SHAPES[o.cls] is None:
        return (o.x - o.r, o.y - o.r, o.x + o.r, o.y + o.r)
    p = _outline(o)
    return (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))


def _outline(o: _Obj) -> np.ndarray:
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


def _frame_extent(o: _Obj, w: int, h: int) -> tuple[float, float, float, float] | None:
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


def _sdf(o: _Obj, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------
# Background


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


class _Background:
    """A periodic texture (tiled 2x2 so any scrolled window is a view) plus drifting blobs."""

    def __init__(self, rng: np.random.Generator, spec: SceneSpec) -> None:
        h, w = spec.height, spec.width
        self.h, self.w = h, w
        self.blobs: list[dict[str, Any]] = []
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
            self.blobs.append(
                dict(
                    x=rng.uniform(0, w), y=rng.uniform(0, h), a=a, b=a * rng.uniform(0.3, 0.6),
                    angle=rng.uniform(0, np.pi), vx=rng.normal(0, 0.006 * m), vy=rng.normal(0, 0.006 * m),
                    va=rng.normal(0, 0.02), color=_muted_color(rng, 0.35),
                )
            )

    def frame(self, t: int, out: np.ndarray, edge: float) -> None:
        oy, ox = (self.origin + self.vel * t).astype(np.int64) % (self.h, self.w)
        out[:] = self.tiled[oy : oy + self.h, ox : ox + self.w]
        for b in self.blobs:
            x = (b["x"] + b["vx"] * t) % (self.w + 2 * b["a"]) - b["a"]
            y = (b["y"] + b["vy"] * t) % (self.h + 2 * b["a"]) - b["a"]
            ang = b["angle"] + b["va"] * t
            x0, x1 = max(int(x - b["a"] - 2), 0), min(int(x + b["a"] + 3), self.w)
            y0, y1 = max(int(y - b["a"] - 2), 0), min(int(y + b["a"] + 3), self.h)
            if x0 >= x1 or y0 >= y1:
                continue
            gy, gx = np.ogrid[y0:y1, x0:x1]
            dx, dy = gx + 0.5 - x, gy + 0.5 - y
            c, s = math.cos(ang), math.sin(ang)
            u, v = (dx * c + dy * s) / b["a"], (-dx * s + dy * c) / b["b"]
            d = (np.sqrt(u * u + v * v) - 1) * b["b"]
            _composite(out, x0, y0, _alpha(d, edge), b["color"])


def _alpha(sdf: np.ndarray, edge: float) -> np.ndarray:
    """Coverage in [0, 1]: 0.5 on the outline, a linear ramp ``edge`` pixels wide."""
    return np.clip(0.5 - sdf / edge, 0.0, 1.0).astype(np.float32)


def _composite(out: np.ndarray, x0: int, y0: int, alpha: np.ndarray, color: np.ndarray) -> None:
    h, w = alpha.shape
    region = out[y0 : y0 + h, x0 : x0 + w]
    reg = region.astype(np.float32)
    reg += alpha[..., None] * (color - reg)
    region[:] = (reg + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Scene


class _Scene:
    def __init__(self, spec: SceneSpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.bg = _Background(self.rng, spec)
        self.class_pool = [CLASS_NAMES.index(c) for c in (spec.classes or CLASS_NAMES)]
        self.objs: list[_Obj] = []
        self.next_track = 0
        m = min(spec.width, spec.height)
        self.rmin = spec.object_size[0] * m / 2
        self.rmax = spec.object_size[1] * m / 2
        self.edge = max(1.0, 1.0 + 2.0 * spec.blur)
        pad = 16
        if spec.noise > 0:
            self.noise = np.clip(
                np.round(self.rng.normal(0, spec.noise, (spec.height + pad, spec.width + pad, 3))), -127, 127
            ).astype(np.int16)
        self.pad = pad

    def _new(self, entering: bool) -> _Obj:
        rng, spec = self.rng, self.spec
        m = min(spec.width, spec.height)
        r = float(np.exp(rng.uniform(np.log(self.rmin), np.log(self.rmax))))
        speed = rng.uniform(*spec.speed) * m
        ang = rng.uniform(0, 2 * np.pi)
        vx, vy = speed * math.cos(ang), speed * math.sin(ang)
        if entering:  # just outside an edge, heading in
            side = int(rng.integers(4))
            if side in (0, 1):
                x = -0.9 * r if side == 0 else spec.width + 0.9 * r
                y = rng.uniform(0.1, 0.9) * spec.height
                vx = abs(vx) if side == 0 else -abs(vx)
                vx = math.copysign(max(abs(vx), 0.5 * speed), vx)
            else:
                y = -0.9 * r if side == 2 else spec.height + 0.9 * r
                x = rng.uniform(0.1, 0.9) * spec.width
                vy = abs(vy) if side == 2 else -abs(vy)
                vy = math.copysign(max(abs(vy), 0.5 * speed), vy)
        else:
            x = rng.uniform(0, spec.width)
            y = rng.uniform(0, spec.height)
        cls = self.class_pool[int(rng.integers(len(self.class_pool)))]
        color = np.clip(np.array(CLASS_COLORS[cls], np.float32) + rng.uniform(-18, 18, 3), 0, 255)
        o = _Obj(
            cls=cls, track=self.next_track, x=x, y=y, r=r, angle=rng.uniform(0, 2 * np.pi),
            vx=vx, vy=vy, vr=rng.normal(0, 0.006), va=rng.normal(0, 0.03),
            color=color.astype(np.float32), z=rng.random(),
        )
        self.next_track += 1
        return o

    def _step(self, t: int) -> None:
        spec, rng = self.spec, self.rng
        lo, hi = spec.num_objects
        if t < spec.empty_first_frames:
            return
        if t == spec.empty_first_frames:
            self.objs = [self._new(False) for _ in range(int(rng.integers(lo, hi + 1)))]
            return
        keep = []
        for o in self.objs:
            o.x += o.vx
            o.y += o.vy
            o.angle += o.va
            o.r *= math.exp(o.vr)
            if not self.rmin <= o.r <= self.rmax:
                o.r = min(max(o.r, self.rmin), self.rmax)
                o.vr = -o.vr
            x1, y1, x2, y2 = _extent(o)
            if x2 > 0 and y2 > 0 and x1 < spec.width and y1 < spec.height:
                keep.append(o)
        self.objs = keep
        if len(self.objs) < lo or (len(self.objs) < hi and rng.random() < 0.03):
            self.objs.append(self._new(True))

    def render(self, t: int) -> tuple[np.ndarray, list[GTBox]]:
        spec = self.spec
        h, w = spec.height, spec.width
        self._step(t)
        out = np.empty((h, w, 3), np.uint8)
        self.bg.frame(t, out, self.edge)
        order = sorted(self.objs, key=lambda o: o.z)  # back to front
        drawn: list[tuple[_Obj, int, int, np.ndarray | None]] = []  # (obj, x0, y0, alpha)
        for o in order:
            ex = _extent(o)
            x0, y0 = max(math.floor(ex[0] - self.edge), 0), max(math.floor(ex[1] - self.edge), 0)
            x1, y1 = min(math.ceil(ex[2] + self.edge) + 1, w), min(math.ceil(ex[3] + self.edge) + 1, h)
            if x0 >= x1 or y0 >= y1:
                drawn.append((o, x0, y0, None))
                continue
            gx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
            gy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
            drawn.append((o, x0, y0, _alpha(_sdf(o, gx, gy), self.edge)))
        # visibility, front to back
        covered = np.zeros((h, w), bool)
        boxes: list[GTBox] = []
        for o, x0, y0, alpha in reversed(drawn):
            if alpha is None:
                continue
            inside = alpha >= 0.5
            cov = covered[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
            visible = float(np.count_nonzero(inside & ~cov)) / (_UNIT_AREA[o.cls] * o.r * o.r)
            cov |= inside
            if visible < MIN_VISIBLE:
                continue
            fe = _frame_extent(o, w, h)
            if fe is None:
                continue
            bx1, by1, bx2, by2 = fe
            if min(bx2 - bx1, by2 - by1) >= MIN_BOX_SIZE:
                boxes.append(GTBox(bx1, by1, bx2, by2, o.cls, o.track, min(visible, 1.0)))
        for o, x0, y0, alpha in drawn:
            if alpha is None:
                continue
            # gentle shading across the object, like a light from the top-left
            ah, aw = alpha.shape
            gy = (np.arange(ah, dtype=np.float32)[:, None] + y0 - o.y) / o.r
            gx = (np.arange(aw, dtype=np.float32)[None, :] + x0 - o.x) / o.r
            shade = 1.0 - 0.08 * (gx + gy)
            region = out[y0 : y0 + ah, x0 : x0 + aw]
            reg = region.astype(np.float32)
            col = np.clip(o.color * shade[..., None], 0, 255)
            reg += alpha[..., None] * (col - reg)
            region[:] = (reg + 0.5).astype(np.uint8)
        if spec.noise > 0:
            oy, ox = self.rng.integers(0, self.pad, 2)
            noisy = out.astype(np.int16)
            noisy += self.noise[oy : oy + h, ox : ox + w]
            np.clip(noisy, 0, 255, out=noisy)
            out = noisy.astype(np.uint8)
        boxes.sort(key=lambda b: b.track_id)
        return out, boxes


def render_scene(spec: SceneSpec) -> Iterator[tuple[npt.NDArray[np.uint8], list[GTBox]]]:
    """Yield ``(rgb uint8[H, W, 3], boxes)`` for each of ``spec.num_frames`` frames.

    Deterministic: the same spec yields the same pixels and boxes.
    """
    scene = _Scene(spec)
    for t in range(spec.num_frames):
        yield scene.render(t)


# ---------------------------------------------------------------------------------------
# Clips and ground truth


@dataclass(frozen=True)
class GroundTruth:
    """The ground truth of a written clip: one entry per frame, in presentation order."""

    width: int
    height: int
    fps: float
    class_names: tuple[str, ...]
    boxes: list[npt.NDArray[np.float32]] = field(repr=False)  # float32[N, 4] per frame
    class_ids: list[npt.NDArray[np.int64]] = field(repr=False)  # int64[N] per frame

    @property
    def num_frames(self) -> int:
        return len(self.boxes)

    def detections(self, frame_index: int) -> Detections:
        """A frame's boxes as :class:`Detections` with confidence 1."""
        b = self.boxes[frame_index]
        return Detections(b, np.ones(len(b), np.float32), self.class_ids[frame_index], self.class_names)


def gt_path_for(clip: str | Path) -> Path:
    """Where :func:`write_clip` puts a clip's ground truth: ``a/b.mp4`` -> ``a/b.gt.json``."""
    clip = Path(clip)
    return clip.with_name(clip.stem + ".gt.json")


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def write_clip(path: str | Path, spec: SceneSpec) -> Path:
    """Render ``spec`` and encode it to ``path`` with PyAV; write ``<stem>.gt.json`` beside it.

    ``h264`` uses libx264 with its default settings (B-frames on) in .mp4, ``vp9``
    libvpx-vp9 in .webm, ``hevc`` libx265 in .mp4. A path without a suffix gets the
    codec's. The keyframe interval is ``spec.gop``. Returns the clip's path.
    """
    import av  # local: the renderer itself needs only NumPy

    encoder, suffix = _CODECS[spec.codec]
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    if encoder not in av.codecs_available:
        raise RuntimeError(f"write_clip: this PyAV/FFmpeg build has no {encoder} encoder")
    rate = _fps_fraction(spec.fps)
    frames_gt: list[dict[str, Any]] = []
    options: dict[str, str]
    if spec.codec == "h264":
        options = {"crf": str(23 if spec.crf is None else spec.crf)}
    elif spec.codec == "hevc":
        options = {"crf": str(28 if spec.crf is None else spec.crf), "x265-params": "log-level=error"}
    else:
        options = {
            "crf": str(32 if spec.crf is None else spec.crf), "b": "0",
            "deadline": "realtime", "cpu-used": "8", "row-mt": "1",
        }
    with av.open(str(path), "w") as container:
        stream: Any = container.add_stream(encoder, rate=rate, options=options)
        stream.width, stream.height = spec.width, spec.height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = spec.gop
        if spec.codec == "hevc":
            stream.codec_tag = "hvc1"
        for i, (rgb, boxes) in enumerate(render_scene(spec)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
            xyxy, cls = boxes_to_arrays(boxes)
            frames_gt.append(
                {
                    "frame_index": i,
                    "boxes": np.round(xyxy.astype(np.float64), 2).tolist(),
                    "class_ids": cls.tolist(),
                }
            )
        for packet in stream.encode(None):
            container.mux(packet)
    doc = {
        "width": spec.width,
        "height": spec.height,
        "fps": spec.fps,
        "num_frames": spec.num_frames,
        "class_names": list(CLASS_NAMES),
        "codec": spec.codec,
        "seed": spec.seed,
        "spec": asdict(spec),
        "frames": frames_gt,
    }
    gt_path_for(path).write_text(json.dumps(doc, separators=(",", ":")))
    return path


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Read a clip's ground truth, given the clip's path or the ``.gt.json`` itself."""
    path = Path(path)
    gt = path if path.name.endswith(".gt.json") else gt_path_for(path)
    doc = json.loads(gt.read_text())
    frames = sorted(doc["frames"], key=lambda f: f["frame_index"])
    if [f["frame_index"] for f in frames] != list(range(len(frames))):
        raise ValueError(f"{gt}: frame indices are not 0..{len(frames) - 1}")
    return GroundTruth(
        width=int(doc["width"]),
        height=int(doc["height"]),
        fps=float(doc["fps"]),
        class_names=tuple(doc["class_names"]),
        boxes=[np.array(f["boxes"], np.float32).reshape(-1, 4) for f in frames],
        class_ids=[np.array(f["class_ids"], np.int64) for f in frames],
    )


_DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((640, 360), (480, 360), (360, 640))


def make_clips(
    folder: str | Path,
    n: int,
    base_seed: int = 10_000,
    *,
    sizes: Sequence[tuple[int, int]] = _DEFAULT_SIZES,
    num_frames: int = 60,
    codec: Codec = "h264",
    empty_first_frames: int | Sequence[int] = 0,
    **spec_kwargs: Any,
) -> list[Path]:
    """Write ``n`` clips ``clip_000.<ext>`` ... into ``folder``, cycling through ``sizes``.

    Clip ``i`` uses seed ``base_seed + i`` (the detector trained on seeds below 10 000, so
    the default seeds are held out). ``empty_first_frames`` may be a sequence cycled like
    ``sizes``. Other keyword arguments go to :class:`SceneSpec`. Returns the clip paths.
    """
    folder = Path(folder)
    empties = [empty_first_frames] if isinstance(empty_first_frames, int) else list(empty_first_frames)
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        spec = SceneSpec(
            width=w, height=h, num_frames=num_frames, seed=base_seed + i, codec=codec,
            empty_first_frames=empties[i % len(empties)], **spec_kwargs,
        )
        paths.append(write_clip(folder / f"clip_{i:03d}{_CODECS[codec][1]}", spec))
    return paths


__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "MIN_BOX_SIZE",
    "MIN_VISIBLE",
    "GTBox",
    "GroundTruth",
    "SceneSpec",
    "boxes_to_arrays",
    "gt_path_for",
    "load_ground_truth",
    "make_clips",
    "render_scene",
    "write_clip",
]
