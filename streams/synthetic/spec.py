"""What a synthetic scene shows and how it is encoded: :class:`SceneSpec` and the class table.

The class table is part of the bundled detector's contract (its class ids index
:data:`CLASS_NAMES`), so it lives here, beside the spec that selects from it, rather than
in the renderer.

The spec also describes what tracking scenes add (:class:`CountingLine`, :class:`CountingZone`,
:class:`ScriptedObject`): plain data, kept beside the fields that hold them. Those fields,
and ``attributes`` (object patterns for secondary classifiers), came after the detector's
training data; at their defaults a spec renders, and writes, exactly what it did before
them (:func:`spec_record` leaves them out of the ground-truth file).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (225, 35, 35),  # circle: red
    (35, 185, 60),  # square: green
    (40, 80, 230),  # triangle: blue
    (240, 205, 30),  # star: yellow
    (205, 45, 205),  # cross: magenta
)

Codec = Literal["h264", "vp9", "hevc"]
CODECS: dict[str, tuple[str, str]] = {  # codec -> (PyAV encoder, default file suffix)
    "h264": ("libx264", ".mp4"),
    "vp9": ("libvpx-vp9", ".webm"),
    "hevc": ("libx265", ".mp4"),
}


Point = tuple[float, float]


@dataclass(frozen=True)
class CountingLine:
    """A counting line: the segment from ``start`` to ``end`` in pixels (``x, y``).

    Crossing to the right-hand side of start→end as drawn on the frame is ``in`` (a line
    drawn left to right counts ``in`` what moves down): reverse ``start`` and ``end`` to
    swap ``in`` and ``out``. ``min_distance``: px an anchor must get past the line for a
    crossing to count (the analytics stage's hysteresis, and its default).
    """

    name: str
    start: Point
    end: Point
    min_distance: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _point(self.start, f"CountingLine {self.name!r}: start"))
        object.__setattr__(self, "end", _point(self.end, f"CountingLine {self.name!r}: end"))
        if self.start == self.end:
            raise ValueError(f"CountingLine {self.name!r}: start and end are the same point")


@dataclass(frozen=True)
class CountingZone:
    """A polygon zone in pixels (``x, y`` vertices in order; at least 3). ``min_distance``:
    px an anchor must be outside it to exit (the analytics stage's hysteresis and default)."""

    name: str
    polygon: tuple[Point, ...]
    min_distance: float = 4.0

    def __post_init__(self) -> None:
        poly = tuple(_point(p, f"CountingZone {self.name!r}: vertex") for p in self.polygon)
        if len(poly) < 3:
            raise ValueError(f"CountingZone {self.name!r}: a polygon needs at least 3 vertices, got {len(poly)}")
        object.__setattr__(self, "polygon", poly)


@dataclass(frozen=True)
class ScriptedObject:
    """An object that follows a fixed path instead of the random motion of :class:`SceneSpec`.

    Attributes:
        cls: class name (one of :data:`CLASS_NAMES`).
        path: waypoints ``(frame_index, x, y)`` of the object's centre in pixels, frames
            strictly increasing. The object exists from the first waypoint's frame to the
            last one's (inclusive) and moves in a straight line at constant speed between
            consecutive waypoints (a waypoint repeated at a later frame holds it still).
        size: diameter as a fraction of ``min(width, height)`` (the random objects use
            ``SceneSpec.object_size``).
        z: depth order: higher is drawn in front.
        angle, spin: rotation at the first waypoint and per frame, in radians.
    """

    cls: str
    path: tuple[tuple[int, float, float], ...]
    size: float = 0.15
    z: float = 0.5
    angle: float = 0.0
    spin: float = 0.0

    def __post_init__(self) -> None:
        if self.cls not in CLASS_NAMES:
            raise ValueError(f"ScriptedObject.cls: expected one of {CLASS_NAMES}, got {self.cls!r}")
        path = tuple((int(f), float(x), float(y)) for f, x, y in self.path)
        if not path:
            raise ValueError("ScriptedObject.path: needs at least one waypoint")
        frames = [f for f, _, _ in path]
        if frames[0] < 0 or any(b <= a for a, b in itertools.pairwise(frames)):
            raise ValueError(f"ScriptedObject.path: frames must be >= 0 and strictly increasing, got {frames}")
        if self.size <= 0:
            raise ValueError(f"ScriptedObject.size must be > 0, got {self.size}")
        object.__setattr__(self, "path", path)

    def position(self, frame: int) -> Point | None:
        """The centre at ``frame`` (``None`` outside the path's frames)."""
        path = self.path
        if not path[0][0] <= frame <= path[-1][0]:
            return None
        for (f0, x0, y0), (f1, x1, y1) in itertools.pairwise(path):
            if frame <= f1:
                a = (frame - f0) / (f1 - f0)
                return (x0 + a * (x1 - x0), y0 + a * (y1 - y0))
        return (path[-1][1], path[-1][2])  # a one-waypoint path


def _point(p: Any, what: str) -> Point:
    try:
        x, y = p
        return (float(x), float(y))
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected (x, y), got {p!r}") from None


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
        identities: also write each labelled box's object id (``track_ids`` per frame) to
            the ground-truth file, for tracking metrics. Ids are the objects' ``track``:
            counted from 0 in order of appearance, kept while the object is in the scene.
        lines, zones: counting lines and zones: the ground-truth file gets the exact
            crossings, zone visits and their counts (:mod:`streams.synthetic.counting`).
            They are not drawn: the pixels are those of the same spec without them.
        script: objects on fixed paths (:class:`ScriptedObject`) instead of the random ones:
            with a script, ``num_objects``, ``object_size``, ``speed`` and
            ``empty_first_frames`` have no effect, and object ``i`` has track id ``i``.
        attributes: give every object attributes independent of its class (a ``pattern``:
            solid, striped or dotted; :mod:`streams.synthetic.attributes`), painted on it
            and listed per box in the ground-truth file (``"attributes"``). Positions,
            boxes and background are those of the same spec without them.
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
    # added for tracking; see ADDED_FIELDS
    identities: bool = False
    lines: tuple[CountingLine, ...] = ()
    zones: tuple[CountingZone, ...] = ()
    script: tuple[ScriptedObject, ...] = ()
    # added for secondary classifiers; see ADDED_FIELDS
    attributes: bool = False

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
        if self.codec not in CODECS:
            raise ValueError(f"SceneSpec.codec: expected one of {list(CODECS)}, got {self.codec!r}")
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
        object.__setattr__(self, "lines", tuple(self.lines))
        object.__setattr__(self, "zones", tuple(self.zones))
        object.__setattr__(self, "script", tuple(self.script))
        for kind, items in (("lines", self.lines), ("zones", self.zones)):
            names = [r.name for r in items]
            if len(set(names)) != len(names):
                raise ValueError(f"SceneSpec.{kind}: names must be unique, got {names}")


# Fields added after the bundled detector's training data: at their defaults they change
# nothing, and spec_record leaves them out so that ground-truth files stay byte-identical.
ADDED_FIELDS: tuple[str, ...] = ("identities", "lines", "zones", "script", "attributes")


def spec_record(spec: SceneSpec) -> dict[str, Any]:
    """The spec as JSON-ready data for the ground-truth file: every field, except the
    :data:`ADDED_FIELDS` still at their defaults."""
    record = asdict(spec)
    for f in fields(spec):
        if f.name in ADDED_FIELDS and getattr(spec, f.name) == f.default:
            del record[f.name]
    return record
