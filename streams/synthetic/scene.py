"""The scene model of synthetic videos: which objects exist, and how they appear, move and leave.

Each object is a class's shape with a position, scale and rotation that change every frame
(constant velocity, a slow random growth that bounces between the size limits, a steady
spin). Objects that leave the frame are dropped; new ones enter from an edge to keep the
count within ``spec.num_objects``. Every object gets a ``track`` id, counted from 0 in
order of appearance, that it keeps while it is in the scene, and (``spec.attributes``) a
pattern for life (:mod:`streams.synthetic.attributes`).

A spec with a ``script`` uses :class:`ScriptedSceneModel` instead: its objects follow fixed
paths (:class:`~streams.synthetic.spec.ScriptedObject`), so a tracking scene can stage
crossings, occlusions and line passages at known frames.

This module knows nothing about pixels: :mod:`streams.synthetic.render` draws the model's
objects and labels them. All randomness comes from the generator the renderer passes in
(shared with the background and the pixel noise), and the order of the draws is part of a
seed's output, so changes here must keep it to stay reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from streams.synthetic.attributes import SOLID, draw_pattern
from streams.synthetic.shapes import extent
from streams.synthetic.spec import CLASS_COLORS, CLASS_NAMES, SceneSpec, ScriptedObject


@dataclass
class SceneObject:
    """One object's state in the current frame (mutated in place as the scene steps)."""

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
    z: float  # depth order: higher is in front
    # attributes (SceneSpec.attributes; streams.synthetic.attributes): solid unless asked for
    pattern: int = SOLID
    pattern_angle: float = 0.0
    pattern_phase: tuple[float, float] = (0.0, 0.0)


def _with_attributes(o: SceneObject, spec: SceneSpec) -> SceneObject:
    """``o`` with its attributes drawn (from their own generator: the scene's is untouched)."""
    if spec.attributes:
        o.pattern, o.pattern_angle, o.pattern_phase = draw_pattern(spec.seed, o.track)
    return o


class SceneModel:
    """The objects of one scene, stepped frame by frame with the scene's random generator."""

    def __init__(self, spec: SceneSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.rng = rng
        self.class_pool = [CLASS_NAMES.index(c) for c in (spec.classes or CLASS_NAMES)]
        self.objects: list[SceneObject] = []
        self.next_track = 0
        m = min(spec.width, spec.height)
        self.rmin = spec.object_size[0] * m / 2
        self.rmax = spec.object_size[1] * m / 2

    def spawn(self, entering: bool) -> SceneObject:
        """A new object anywhere in the frame, or (``entering``) just outside an edge heading in."""
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
        o = SceneObject(
            cls=cls, track=self.next_track, x=x, y=y, r=r, angle=rng.uniform(0, 2 * np.pi),
            vx=vx, vy=vy, vr=rng.normal(0, 0.006), va=rng.normal(0, 0.03),
            color=color.astype(np.float32), z=rng.random(),
        )
        self.next_track += 1
        return _with_attributes(o, spec)

    def step(self, t: int) -> None:
        """Advance to frame ``t``: populate the scene at ``spec.empty_first_frames``, then move.

        Objects whose whole extent has left the frame are dropped; one enters when fewer
        than the minimum remain, or now and then (3 % a frame) while below the maximum.
        """
        spec, rng = self.spec, self.rng
        lo, hi = spec.num_objects
        if t < spec.empty_first_frames:
            return
        if t == spec.empty_first_frames:
            self.objects = [self.spawn(False) for _ in range(int(rng.integers(lo, hi + 1)))]
            return
        keep = []
        for o in self.objects:
            o.x += o.vx
            o.y += o.vy
            o.angle += o.va
            o.r *= math.exp(o.vr)
            if not self.rmin <= o.r <= self.rmax:
                o.r = min(max(o.r, self.rmin), self.rmax)
                o.vr = -o.vr
            x1, y1, x2, y2 = extent(o)
            if x2 > 0 and y2 > 0 and x1 < spec.width and y1 < spec.height:
                keep.append(o)
        self.objects = keep
        if len(self.objects) < lo or (len(self.objects) < hi and rng.random() < 0.03):
            self.objects.append(self.spawn(True))


class ScriptedSceneModel:
    """The objects of a scripted scene (``spec.script``): object ``i`` has track id ``i``
    and is in the scene on its path's frames, at its path's positions.

    The random generator gives each object only its colour jitter (as the random model
    does), drawn once, in script order, when the model is made.
    """

    def __init__(self, spec: SceneSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.script: tuple[ScriptedObject, ...] = spec.script
        m = min(spec.width, spec.height)
        self.all: list[SceneObject] = []
        for i, s in enumerate(self.script):
            cls = CLASS_NAMES.index(s.cls)
            color = np.clip(np.array(CLASS_COLORS[cls], np.float32) + rng.uniform(-18, 18, 3), 0, 255)
            x, y = s.path[0][1], s.path[0][2]
            self.all.append(_with_attributes(SceneObject(
                cls=cls, track=i, x=x, y=y, r=s.size * m / 2, angle=s.angle, vx=0.0, vy=0.0, vr=0.0, va=s.spin,
                color=color.astype(np.float32), z=s.z), spec))
        self.objects: list[SceneObject] = []

    def step(self, t: int) -> None:
        """Frame ``t``: the objects whose paths cover ``t``, placed on them."""
        self.objects = []
        for s, o in zip(self.script, self.all, strict=True):
            pos = s.position(t)
            if pos is None:
                continue
            o.x, o.y = pos
            o.angle = s.angle + s.spin * (t - s.path[0][0])
            self.objects.append(o)
