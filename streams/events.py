"""Events: what happened at a frame beyond its boxes (a track crossed a line, entered a zone).

An :class:`Event` rides on the :class:`~streams.frames.FrameResult` of the frame it happened
at, so it is ordered and traceable like that frame's detections, and every sink that takes
records writes it as a record of its own kind.

Usage::

    ev = Event("line_cross", "cam1", 120, 4800, (1, 12800), track_id=7, class_name="car",
               data={"line": "north", "direction": "in"})
    ev.to_record()     # {"event": "line_cross", "source": "cam1", "frame_index": 120, ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One event at one frame of one source.

    Attributes:
        kind: what happened: ``line_cross``, ``zone_enter``, ``zone_exit``, ``track_end``, ...
        source_id, frame_index, pts, time_base: the frame it happened at (as in ``FrameMeta``).
        track_id: the track it concerns (``-1`` when none).
        class_name: the track's class.
        data: the kind's own fields (``line``, ``direction``, ``zone``, ``dwell_s``, ``reason``),
            JSON-ready.
    """

    kind: str
    source_id: str
    frame_index: int
    pts: int | None
    time_base: tuple[int, int]
    track_id: int = -1
    class_name: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """The JSON record: ``{"event": kind, "source", "frame_index", "pts", "pts_seconds",
        "track_id", "class", **data}``."""
        pts_s = None if self.pts is None else round(self.pts * self.time_base[0] / self.time_base[1], 6)
        return {"event": self.kind, "source": self.source_id, "frame_index": self.frame_index, "pts": self.pts,
                "pts_seconds": pts_s, "track_id": self.track_id, "class": self.class_name, **self.data}
