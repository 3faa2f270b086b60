"""What a synthetic scene shows and how it is encoded: :class:`SceneSpec` and the class table.

The class table is part of the bundled detector's contract (its class ids index
:data:`CLASS_NAMES`), so it lives here, beside the spec that selects from it, rather than
in the renderer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
