"""A tracking scene: scripted objects that cross a counting line, a zone and each other.

:func:`tracking_scene` returns a :class:`~streams.synthetic.spec.SceneSpec` whose objects
follow fixed paths (``script``), laid out so that one short clip holds what a tracker and
the line/zone analytics get wrong most often, at known frames:

* a **crossing with occlusion**: two objects of the same class pass each other along the
  same row in opposite directions, one drawn in front of the other (an identity switch
  here is the classic tracker error); the objects going up and down cross their row too;
* **line passages** both ways: one object crosses the counting line going down, one going
  up, and one goes down across it, turns well past it and comes back (``in`` and ``out``
  once each);
* a **zone visit**: an object enters the zone from the right, lingers and leaves through
  the bottom of the frame (a dwell of two to three seconds).

The counting line runs across the frame, a little below the middle, left to right (so
``in`` is downwards: see :mod:`streams.synthetic.regions`); the zone is a rectangle in the
lower right, below the line. The seed jitters the paths' places and timings, picks the
classes, sizes and spins, and (as ``SceneSpec.seed``) renders the background and noise.
Its ground truth has identities and the exact counts (:mod:`streams.synthetic.counting`).

Usage::

    spec = tracking_scene(7)                                   # 640x360, 150 frames at 30 fps
    write_clip("clips/track_007.mp4", spec)                    # + .gt.json with "tracking"
    spec = tracking_scene(7, lines=(CountingLine("gate", (320, 0), (320, 360)),))
    make_tracking_clips("clips/", 3)                           # track_000.mp4 ... with truth
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streams.synthetic.clips import write_clip
from streams.synthetic.spec import CLASS_NAMES, CODECS, Codec, CountingLine, CountingZone, SceneSpec, ScriptedObject


def default_line(width: int, height: int) -> CountingLine:
    """The tracking scene's counting line ``"line"``: across the frame at 55 % of its height."""
    y = round(0.55 * height, 2)
    return CountingLine("line", (round(0.03 * width, 2), y), (round(0.97 * width, 2), y))


def default_zone(width: int, height: int) -> CountingZone:
    """The tracking scene's zone ``"zone"``: a rectangle in the lower right, below the line."""
    x1, x2, y1, y2 = (round(v, 2) for v in (0.58 * width, 0.97 * width, 0.64 * height, 0.96 * height))
    return CountingZone("zone", ((x1, y1), (x2, y1), (x2, y2), (x1, y2)))


def _script(rng: np.random.Generator, width: int, height: int, frames: int,
            classes: Sequence[str]) -> tuple[ScriptedObject, ...]:
    """The scene's objects; positions are fractions of the frame, times of the clip's length."""
    w, h, t_end = float(width), float(height), frames - 1

    def j(v: float, amount: float = 0.03) -> float:  # jitter a fraction
        return v + float(rng.uniform(-amount, amount))

    def path(*points: tuple[float, float, float]) -> tuple[tuple[int, float, float], ...]:
        out: list[tuple[int, float, float]] = []
        for ft, fx, fy in points:
            f = min(max(round(ft * t_end), 0), t_end)
            if out and f <= out[-1][0]:
                f = out[-1][0] + 1
            out.append((f, fx * w, fy * h))
        return tuple(out)

    def pick() -> str:
        return classes[int(rng.integers(len(classes)))]

    def obj(cls: str, pts: tuple[tuple[int, float, float], ...], z: float) -> ScriptedObject:
        return ScriptedObject(cls, pts, size=float(rng.uniform(0.12, 0.19)), z=z,
                              angle=float(rng.uniform(0, 2 * np.pi)), spin=float(rng.normal(0, 0.015)))

    pair_cls, pair_y = pick(), j(0.2, 0.02)
    front = bool(rng.integers(2))
    meet = j(0.45)  # the pair passes each other around here (time)
    return (
        # 0: down across the line, left
        obj(pick(), path((j(0.02), j(0.14), -0.12), (j(0.7), j(0.14), 1.2)), z=0.5),
        # 1: up across the line
        obj(pick(), path((j(0.1), j(0.33), 1.2), (j(0.86), j(0.33), -0.15)), z=0.45),
        # 2, 3: the same class passing each other on one row, one in front (occlusion)
        obj(pair_cls, path((meet - 0.38, -0.1, pair_y), (meet + 0.38, 1.1, pair_y)), z=0.9 if front else 0.1),
        obj(pair_cls, path((meet - 0.38, 1.1, pair_y + 0.02), (meet + 0.38, -0.1, pair_y + 0.02)),
            z=0.1 if front else 0.9),
        # 4: down across the line, turns below it, back up across it
        obj(pick(), path((j(0.04), j(0.5), -0.12), (j(0.4), j(0.5), 0.72), (j(0.5), j(0.5), 0.74),
                         (0.95, j(0.5), -0.15)), z=0.6),
        # 5: into the zone from the right edge, lingers, out through the bottom
        obj(pick(), path((0.0, 1.1, j(0.76, 0.02)), (j(0.3), 0.8, 0.77), (j(0.6), 0.74, 0.78),
                         (0.95, 0.74, 1.3)), z=0.7),
    )


def tracking_scene(
    seed: int,
    *,
    width: int = 640,
    height: int = 360,
    num_frames: int = 150,
    fps: float = 30.0,
    lines: Sequence[CountingLine] | None = None,
    zones: Sequence[CountingZone] | None = None,
    classes: Sequence[str] | None = None,
    **spec_kwargs: Any,
) -> SceneSpec:
    """The spec of a tracking scene (see the module docstring).

    Args:
        seed: jitters the layout and seeds the rendering.
        width, height, num_frames, fps: the clip; the paths scale with them (at 150 frames
            objects move 3-5 px a frame at 640x360).
        lines, zones: counting lines and zones (default: :func:`default_line`,
            :func:`default_zone`); the paths are the same whatever they are.
        classes: class names to pick from (default: all).
        spec_kwargs: other :class:`SceneSpec` fields (codec, noise, background, attributes, ...).
    """
    if num_frames < 30:
        raise ValueError(f"tracking_scene: num_frames must be >= 30 for the scripted paths, got {num_frames}")
    names = tuple(classes) if classes else CLASS_NAMES
    rng = np.random.default_rng([seed, 0x7AC4])  # its own stream: SceneSpec.seed drives the pixels
    return SceneSpec(
        width=width, height=height, num_frames=num_frames, fps=fps, seed=seed, identities=True,
        lines=tuple(lines) if lines is not None else (default_line(width, height),),
        zones=tuple(zones) if zones is not None else (default_zone(width, height),),
        script=_script(rng, width, height, num_frames, names), classes=tuple(names) if classes else None,
        **spec_kwargs,
    )


def make_tracking_clips(
    folder: str | Path,
    n: int,
    base_seed: int = 10_000,
    *,
    sizes: Sequence[tuple[int, int]] = ((640, 360),),
    num_frames: int = 150,
    codec: Codec = "h264",
    **scene_kwargs: Any,
) -> list[Path]:
    """Write ``n`` tracking scenes ``track_000.<ext>`` ... into ``folder`` (seeds from
    ``base_seed``, sizes cycled), each with its ``.gt.json``; other keyword arguments go
    to :func:`tracking_scene`. Returns the clip paths."""
    folder = Path(folder)
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        spec = tracking_scene(base_seed + i, width=w, height=h, num_frames=num_frames, codec=codec, **scene_kwargs)
        paths.append(write_clip(folder / f"track_{i:03d}{CODECS[codec][1]}", spec))
    return paths
