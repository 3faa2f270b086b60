"""The ``tracker:`` section of a job config (multi-object tracking, per source)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrackerConfig:
    """``tracker:``: which tracker follows each source's detections, and its thresholds."""

    type: Literal["bytetrack", "ocsort"] = "bytetrack"
