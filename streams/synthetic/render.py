"""Drawing synthetic frames and labelling them: :func:`render_scene`.

Per frame: the scene model steps, the background is drawn, each object is rasterised as
soft-edged coverage over its box (back to front by ``z``), visibility is counted front to
back to apply the labelling rule (:mod:`streams.synthetic.truth`), the objects are painted
with a gentle top-left shading (and their pattern, :mod:`streams.synthetic.attributes`),
and a window of a fixed Gaussian noise field, shifted at random each frame, is added.

One generator, seeded from ``spec.seed``, drives the background, the scene model and the
noise, in that order: the same spec renders the same pixels and boxes, bit for bit (the
bundled detector was trained on these frames).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from streams.synthetic.attributes import SHADE, SOLID, pattern_alpha
from streams.synthetic.background import Background
from streams.synthetic.counting import TrajectoryRecorder
from streams.synthetic.scene import SceneModel, SceneObject, ScriptedSceneModel
from streams.synthetic.shapes import UNIT_AREA, coverage, extent, frame_extent, signed_distance
from streams.synthetic.spec import SceneSpec
from streams.synthetic.truth import MIN_BOX_SIZE, MIN_VISIBLE, GTBox

# (object, x0, y0, coverage over the object's box from (x0, y0); None: nothing in the frame)
_Raster = tuple[SceneObject, int, int, np.ndarray | None]


class _Renderer:
    """Renders one scene frame by frame (frames must be asked for in order, from 0)."""

    def __init__(self, spec: SceneSpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.bg = Background(self.rng, spec)
        self.model: SceneModel | ScriptedSceneModel = (
            ScriptedSceneModel(spec, self.rng) if spec.script else SceneModel(spec, self.rng))
        self.edge = max(1.0, 1.0 + 2.0 * spec.blur)
        pad = 16
        self.noise: np.ndarray | None = None
        if spec.noise > 0:
            self.noise = np.clip(
                np.round(self.rng.normal(0, spec.noise, (spec.height + pad, spec.width + pad, 3))), -127, 127
            ).astype(np.int16)
        self.pad = pad

    def render(self, t: int) -> tuple[np.ndarray, list[GTBox]]:
        """Frame ``t``: ``(rgb uint8[H, W, 3], boxes sorted by track id)``."""
        spec = self.spec
        h, w = spec.height, spec.width
        self.model.step(t)
        out = np.empty((h, w, 3), np.uint8)
        self.bg.frame(t, out, self.edge)
        drawn = self._rasterise(sorted(self.model.objects, key=lambda o: o.z))  # back to front
        boxes = self._label(drawn)
        self._paint(out, drawn)
        if self.noise is not None:
            oy, ox = self.rng.integers(0, self.pad, 2)
            noisy = out.astype(np.int16)
            noisy += self.noise[oy : oy + h, ox : ox + w]
            np.clip(noisy, 0, 255, out=noisy)
            out = noisy.astype(np.uint8)
        boxes.sort(key=lambda b: b.track_id)
        return out, boxes

    def _rasterise(self, order: list[SceneObject]) -> list[_Raster]:
        """Each object's coverage over its box (grown by the edge ramp, clipped to the frame)."""
        h, w = self.spec.height, self.spec.width
        drawn: list[_Raster] = []
        for o in order:
            ex = extent(o)
            x0, y0 = max(math.floor(ex[0] - self.edge), 0), max(math.floor(ex[1] - self.edge), 0)
            x1, y1 = min(math.ceil(ex[2] + self.edge) + 1, w), min(math.ceil(ex[3] + self.edge) + 1, h)
            if x0 >= x1 or y0 >= y1:
                drawn.append((o, x0, y0, None))
                continue
            gx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
            gy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
            drawn.append((o, x0, y0, coverage(signed_distance(o, gx, gy), self.edge)))
        return drawn

    def _label(self, drawn: list[_Raster]) -> list[GTBox]:
        """Apply the labelling rule: visible fractions counted front to back, boxes clipped to the frame."""
        h, w = self.spec.height, self.spec.width
        covered = np.zeros((h, w), bool)
        boxes: list[GTBox] = []
        for o, x0, y0, alpha in reversed(drawn):
            if alpha is None:
                continue
            inside = alpha >= 0.5
            cov = covered[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
            visible = float(np.count_nonzero(inside & ~cov)) / (UNIT_AREA[o.cls] * o.r * o.r)
            cov |= inside
            if visible < MIN_VISIBLE:
                continue
            fe = frame_extent(o, w, h)
            if fe is None:
                continue
            bx1, by1, bx2, by2 = fe
            if min(bx2 - bx1, by2 - by1) >= MIN_BOX_SIZE:
                boxes.append(GTBox(bx1, by1, bx2, by2, o.cls, o.track, min(visible, 1.0),
                                   o.pattern if self.spec.attributes else None))
        return boxes

    @staticmethod
    def _paint(out: np.ndarray, drawn: list[_Raster]) -> None:
        """Blend the objects over ``out`` back to front, shaded as if lit from the top left."""
        for o, x0, y0, alpha in drawn:
            if alpha is None:
                continue
            ah, aw = alpha.shape
            gy = (np.arange(ah, dtype=np.float32)[:, None] + y0 - o.y) / o.r
            gx = (np.arange(aw, dtype=np.float32)[None, :] + x0 - o.x) / o.r
            shade = 1.0 - 0.08 * (gx + gy)
            if o.pattern != SOLID:  # the pattern's pixels: a darker shade of the colour
                cy = np.arange(ah, dtype=np.float32)[:, None] + (y0 + 0.5 - o.y)  # pixel centres
                cx = np.arange(aw, dtype=np.float32)[None, :] + (x0 + 0.5 - o.x)
                shade = shade * (1.0 - (1.0 - SHADE) * pattern_alpha(o, cx, cy))
            region = out[y0 : y0 + ah, x0 : x0 + aw]
            reg = region.astype(np.float32)
            col = np.clip(o.color * shade[..., None], 0, 255)
            reg += alpha[..., None] * (col - reg)
            region[:] = (reg + 0.5).astype(np.uint8)


def render_scene(
    spec: SceneSpec, recorder: TrajectoryRecorder | None = None
) -> Iterator[tuple[npt.NDArray[np.uint8], list[GTBox]]]:
    """Yield ``(rgb uint8[H, W, 3], boxes)`` for each of ``spec.num_frames`` frames.

    Deterministic: the same spec yields the same pixels and boxes. A ``recorder`` gets
    every object's position each frame, for the tracking ground truth (it only reads the
    scene: the frames are the same with or without it).
    """
    renderer = _Renderer(spec)
    for t in range(spec.num_frames):
        frame = renderer.render(t)
        if recorder is not None:
            recorder.add(t, renderer.model.objects)
        yield frame
