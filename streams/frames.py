"""Per-frame metadata: where a frame came from and when.

Plain dataclasses with no DALI, CUDA or TensorRT imports, safe to pickle and log.

Usage::

    meta = FrameMeta(source_id="cam1", uri="/videos/a.mp4", frame_index=0, pts=0,
                     time_base=(1, 12800), width=1920, height=1080)
    meta.pts_seconds   # 0.0
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.detections import Detections
from streams.events import Event

#: A live camera restarted on another Ray worker numbers its frames from ``e * FRAME_INDEX_EPOCH``
#: (its ``e``-th add, :mod:`pipelines.ray_live`), so ``(source, frame_index)`` never repeats in
#: a job; 2**40 frames are over 1100 years at 30 fps.
FRAME_INDEX_EPOCH = 2**40
#: Its tracks' ids start at ``e * TRACK_ID_EPOCH`` (:mod:`pipelines.tracking`), so
#: ``(source, track_id)`` never repeats either; both stay below 2**53 (exact in JSON).
TRACK_ID_EPOCH = 2**32


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """Identity of one decoded frame.

    Attributes:
        source_id: stable, unique name of the source (a file's path under its source root, or
            the camera's id).
        uri: the file path or stream URI the frame was decoded from (credentials removed).
        frame_index: 0-based index of the frame in presentation order within the source.
        pts: presentation timestamp in units of ``time_base`` (``None`` if the container has none).
        time_base: ``(numerator, denominator)`` of the stream's time base.
        width: source frame width in pixels (before any resizing).
        height: source frame height in pixels.
        arrival_time: wall-clock time (``time.time()``) the frame's data arrived; live sources only.
    """

    source_id: str
    uri: str
    frame_index: int
    pts: int | None
    time_base: tuple[int, int]
    width: int
    height: int
    arrival_time: float | None = None

    def __post_init__(self) -> None:
        if self.frame_index < 0:
            raise ValueError(f"frame_index must be >= 0, got {self.frame_index}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"frame size must be positive, got {self.width}x{self.height}")
        if self.time_base[1] == 0:
            raise ValueError(f"time_base denominator must be non-zero, got {self.time_base}")

    @property
    def pts_seconds(self) -> float | None:
        """The pts in seconds, or ``None`` when the frame has no pts."""
        if self.pts is None:
            return None
        return self.pts * self.time_base[0] / self.time_base[1]  # exact int product, rounded once


@dataclass(frozen=True, slots=True)
class FrameResult:
    """One frame's metadata with its detections (and the events that happened at it), as
    handed to sinks."""

    frame: FrameMeta
    detections: Detections
    events: tuple[Event, ...] = ()
