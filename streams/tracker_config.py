"""The ``tracker:`` section of a job config (multi-object tracking, per source).

Usage::

    tracker:
      type: bytetrack          # or ocsort
      track_buffer_s: 1.0      # a lost track is kept this long (seconds of the source's time)
      high_threshold: 0.5
      implementation: reference  # bytetrack: batched (the default) or reference

    cfg.tracker.params()       # every threshold, the type's defaults filled in

The thresholds map to the parameters of roboflow's ``trackers`` package (2.6), which runs
the trackers (:mod:`pipelines.tracking`); a threshold left out takes that package's default
for the type (:data:`TRACKER_DEFAULTS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from streams.errors import ConfigError

TrackerType = Literal["bytetrack", "ocsort"]
TrackerImplementation = Literal["batched", "reference"]

# the ``trackers`` package's defaults (2.6.1), by our key names; a key a type lacks is not
# valid for that type
TRACKER_DEFAULTS: dict[str, dict[str, float | int]] = {
    "bytetrack": {"track_threshold": 0.7, "high_threshold": 0.6, "match_threshold": 0.1,
                  "min_consecutive_frames": 2},
    "ocsort": {"high_threshold": 0.6, "match_threshold": 0.3, "min_consecutive_frames": 3,
               "direction_consistency_weight": 0.2, "delta_t": 3},
}

_THRESHOLDS = ("track_threshold", "high_threshold", "low_threshold", "match_threshold")


@dataclass(frozen=True)
class TrackerConfig:
    """``tracker:``: which tracker follows each source's detections, and its thresholds.

    Attributes:
        type: ``bytetrack`` (two-stage association: confident detections first, then the
            less confident ones revive lost tracks) or ``ocsort`` (observation-centric SORT:
            direction consistency, re-association with a lost track's last box).
        track_buffer_s: how long a track that sees no detection is kept for re-association,
            in seconds of the source's own time (pts); a source silent for longer (frames
            dropped, a camera reconnecting) ends its tracks with reason ``gap``.
        track_threshold: a detection starts a new track only with at least this confidence
            (bytetrack only; default 0.7).
        high_threshold: detections at or above it are associated first; ByteTrack matches
            the ones below it (down to ``low_threshold``) to tracks left unmatched, OC-SORT
            leaves them untracked (default 0.6).
        low_threshold: detections below it are not shown to the tracker at all (they stay
            in the output, with track id -1). Default 0.1, as in ByteTrack's paper.
        match_threshold: the least IoU between a track's predicted box and a detection for
            them to match (bytetrack 0.1, ocsort 0.3).
        min_consecutive_frames: a new track gets its id after this many consecutive frames
            with a detection; until then its detections have track id -1 (bytetrack 2,
            ocsort 3).
        direction_consistency_weight: weight of motion-direction agreement in OC-SORT's
            association cost (ocsort only; default 0.2).
        delta_t: frames back OC-SORT looks to estimate a track's direction (ocsort only;
            default 3).
        report_tracks: per source, how many ended tracks the end-of-job report lists (the
            most recent; the others are only counted), so a long live run's report stays
            small.
        implementation: who runs the tracker. ``reference``: one ``trackers`` object per
            source; ``batched``: :mod:`operators.batched_tracking`, every source's tracks in
            flat arrays, which gives the same tracks (ids and boxes; its parity tests).
            ``batched`` exists for ``bytetrack`` only and is its default: the stage takes the
            in-order runs of every ready source in one call and steps their frames together,
            which is what makes it cheap (a step for one source costs about what the
            reference does); ``ocsort`` runs the reference.
    """

    type: TrackerType = "bytetrack"
    track_buffer_s: float = 1.0
    track_threshold: float | None = None
    high_threshold: float | None = None
    low_threshold: float = 0.1
    match_threshold: float | None = None
    min_consecutive_frames: int | None = None
    direction_consistency_weight: float | None = None
    delta_t: int | None = None
    report_tracks: int = 1000
    implementation: TrackerImplementation | None = None

    def validate(self, key: str) -> None:
        defaults = TRACKER_DEFAULTS[self.type]
        for name in ("track_threshold", "match_threshold", "min_consecutive_frames",
                     "direction_consistency_weight", "delta_t"):
            if getattr(self, name) is not None and name not in defaults:
                raise ConfigError(f"{key}.{name}", f"not a parameter of type {self.type}; "
                                                   f"it has {sorted(defaults)}")
        if not (math.isfinite(self.track_buffer_s) and self.track_buffer_s > 0):
            raise ConfigError(f"{key}.track_buffer_s", f"expected a number of seconds > 0, got {self.track_buffer_s}")
        for name in _THRESHOLDS:
            v = getattr(self, name)
            if v is not None and not 0.0 < v <= 1.0:
                raise ConfigError(f"{key}.{name}", f"expected a number in (0, 1], got {v}")
        high = self.params()["high_threshold"]
        if self.low_threshold > high:
            raise ConfigError(f"{key}.low_threshold", f"must not exceed high_threshold ({high}), got "
                                                      f"{self.low_threshold}")
        if self.min_consecutive_frames is not None and self.min_consecutive_frames < 1:
            raise ConfigError(f"{key}.min_consecutive_frames", f"expected >= 1, got {self.min_consecutive_frames}")
        if self.delta_t is not None and self.delta_t < 1:
            raise ConfigError(f"{key}.delta_t", f"expected >= 1, got {self.delta_t}")
        w = self.direction_consistency_weight
        if w is not None and not (math.isfinite(w) and w >= 0):
            raise ConfigError(f"{key}.direction_consistency_weight", f"expected a number >= 0, got {w}")
        if self.report_tracks < 0:
            raise ConfigError(f"{key}.report_tracks", f"expected >= 0, got {self.report_tracks}")
        if self.implementation == "batched" and self.type != "bytetrack":
            raise ConfigError(f"{key}.implementation", f"batched exists for bytetrack only, not {self.type}")

    def resolved_implementation(self) -> TrackerImplementation:
        """The implementation that runs: the one given, else ``batched`` for ByteTrack and
        ``reference`` for OC-SORT."""
        if self.implementation is not None:
            return self.implementation
        return "batched" if self.type == "bytetrack" else "reference"

    def params(self) -> dict[str, Any]:
        """The type's thresholds by key name: those given, the type's defaults for the rest."""
        out: dict[str, Any] = dict(TRACKER_DEFAULTS[self.type])
        for name in out:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["low_threshold"] = self.low_threshold
        return out
