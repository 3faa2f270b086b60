"""Multi-object tracking as a per-source stage: ByteTrack or OC-SORT from roboflow's ``trackers``.

:class:`TrackerStage` gives every detection a track id (``Detections.track_id``: unique
within its source for the whole job, ``-1`` for a detection no confirmed track took; no
detection is dropped) and reports, at the end of the job, a summary of each source's tracks
(:class:`~operators.tracking.TrackBook`).

One ``trackers`` tracker object per source, created at the source's first frames and freed
at its end. Time:

- Every frame is passed to the tracker with its time in seconds (its pts,
  :class:`~operators.tracking.SourceClock`). The tracker then predicts each track over the
  real time since the previous frame, and drops a track that has seen no detection for
  ``track_buffer_s`` seconds, whatever the frame rate. A :class:`~pipelines.stages.Gap`
  (frames that will never come) therefore needs no call: the next frame's time carries it,
  and the motion model advances over the missing frames in one step instead of being fed an
  empty frame per missing frame, which would also count them as misses (frames not seen
  are not frames where the object was absent).
- The tracker is created with the source's frame rate, measured from the pts of its first
  two frames (a lone first frame is held back until the second comes): the tracker's motion
  model is tuned per frame, and its time steps are ``seconds * frame_rate``. ``trackers``
  takes the buffer in 30 fps frames and, given times, drops tracks after ``buffer / 30``
  seconds: ``track_buffer_s`` is passed as ``round(track_buffer_s * 30)`` (at least 1).
- A silence longer than ``track_buffer_s`` before a frame (a long :class:`Gap`, or a live
  camera that reconnected: its pts continue, but the frames' arrival times jump) ends every
  track of the source with reason ``gap`` and starts a new tracker object; a
  :class:`~pipelines.stages.SourceEnd` ends them with its reason and frees the tracker.
  A new tracker object starts its ids after the source's highest id so far, so ids are
  never reused within a source. Tracks the tracker drops end with reason ``lost``.

``trackers`` and ``supervision`` are imported when the stage is built, not with this
module: without the ``tracking`` extra, a config with a ``tracker:`` section fails before
any work with :class:`TrackingExtraError` (``fovea run`` / ``fovea live`` exit 2).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from operators.tracking import SourceClock, TrackBook
from pipelines.stages import Gap, SourceEnd, SourceEvent
from streams.errors import MissingExtraError
from streams.frames import FrameResult
from streams.tracker_config import TrackerConfig

log = logging.getLogger(__name__)

TRACKERS_VERSION = "2.6.1"
TRACKING_INSTALL = f'pip install -e ".[tracking]" && pip install --no-deps trackers=={TRACKERS_VERSION}'

# our key names → the parameters of the ``trackers`` classes
_PARAM_NAMES = {"track_threshold": "track_activation_threshold", "high_threshold": "high_conf_det_threshold",
                "match_threshold": "minimum_iou_threshold", "min_consecutive_frames": "minimum_consecutive_frames",
                "direction_consistency_weight": "direction_consistency_weight", "delta_t": "delta_t"}


class TrackingExtraError(MissingExtraError):
    """A ``tracker:`` section without the ``tracking`` extra installed (or with a ``trackers``
    package too old for timestamps). The message says what to install."""

    def __init__(self, missing: Sequence[str], detail: str) -> None:
        super().__init__("run", "tracking", missing)
        self.args = (f"the tracker: section needs the 'tracking' extra ({detail}): {TRACKING_INSTALL}",)


def import_trackers() -> tuple[ModuleType, ModuleType]:
    """``(trackers, supervision)``, or :class:`TrackingExtraError` naming what is missing."""
    try:
        import supervision
        import trackers
    except ImportError as e:  # also an OpenCV build that needs libGL on a headless machine
        raise TrackingExtraError([e.name or "trackers"], f"{e.name or 'trackers'}: {e}") from e
    try:
        found = version("trackers")
    except PackageNotFoundError:
        found = "unknown"
    if found != "unknown" and tuple(int(p) for p in found.split(".")[:2] if p.isdigit()) < (2, 6):
        raise TrackingExtraError(["trackers"], f"trackers {found} is too old, {TRACKERS_VERSION} is needed")
    return trackers, supervision


@dataclass
class _SourceTracker:
    """One source's tracker object, clock, and the frames held back until its frame rate is known."""

    clock: SourceClock
    id_base: int  # added to the tracker object's own ids (which start at 0)
    tracker: Any = None
    held: list[FrameResult] | None = None


class TrackerStage:
    """A :class:`~pipelines.stages.SourceStage` that tracks each source's detections (module docstring)."""

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg = cfg
        self._trackers, self._sv = import_trackers()
        params = cfg.params()
        self._low = float(params.pop("low_threshold"))
        self._kwargs = {_PARAM_NAMES[k]: v for k, v in params.items()}
        self._kwargs["lost_track_buffer"] = max(1, round(cfg.track_buffer_s * 30))
        self._cls = self._trackers.ByteTrackTracker if cfg.type == "bytetrack" else self._trackers.OCSORTTracker
        self._sources: dict[str, _SourceTracker] = {}
        self._books: dict[str, TrackBook] = {}  # kept after a source ends, for the report
        self._rates: dict[str, float] = {}

    def __enter__(self) -> TrackerStage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._sources.clear()

    @property
    def sources(self) -> list[str]:
        """Sources with a tracker now (not ended)."""
        return list(self._sources)

    def process(self, source_id: str, results: Sequence[FrameResult]) -> list[FrameResult]:
        st = self._sources.get(source_id)
        if st is None:
            book = self._books.setdefault(source_id, TrackBook(self.cfg.report_tracks))
            st = self._sources[source_id] = _SourceTracker(SourceClock(), book.next_id)
        pending = [*(st.held or ()), *results]
        st.held = None
        if st.tracker is None:
            if not st.clock.learn_rate([r.frame for r in pending]):
                st.held = pending  # one frame: its rate comes with the next
                return []
            self._start(source_id, st)
        return [self._track(source_id, st, r) for r in pending]

    def on_event(self, event: SourceEvent) -> list[FrameResult]:
        if isinstance(event, Gap):
            return []  # the next frame's time tells the tracker (module docstring)
        assert isinstance(event, SourceEnd)
        st = self._sources.get(event.source_id)
        if st is None:
            return []
        out: list[FrameResult] = []
        if st.held:
            st.clock.learn_rate([r.frame for r in st.held], force=True)
            self._start(event.source_id, st)
            out = [self._track(event.source_id, st, r) for r in st.held]
        del self._sources[event.source_id]
        book = self._books[event.source_id]
        book.end(book.active, event.reason)
        return out

    def report(self) -> dict[str, Any]:
        """The tracker's type and parameters, and per source its frame rate and track summaries."""
        sources: dict[str, Any] = {}
        for sid, book in self._books.items():
            sources[sid] = {"frame_rate": self._rates.get(sid), **book.report()}
        return {"type": self.cfg.type, "track_buffer_s": self.cfg.track_buffer_s, "params": self.cfg.params(),
                "sources": sources}

    def _start(self, source_id: str, st: _SourceTracker) -> None:
        """A new tracker object for the source, at its measured frame rate."""
        fps = st.clock.fps
        assert fps is not None
        self._rates[source_id] = round(fps, 3)
        st.tracker = self._cls(frame_rate=fps, **self._kwargs)
        log.debug("%s: %s tracker at %.3f fps, ids from %d", source_id, self.cfg.type, fps, st.id_base)

    def _track(self, source_id: str, st: _SourceTracker, result: FrameResult) -> FrameResult:
        book = self._books[source_id]
        t, silence = st.clock.advance(result.frame)
        if silence > self.cfg.track_buffer_s and st.tracker.tracks:
            ended = book.end(book.active, "gap")
            log.info("%s: %.2f s without frames at frame %d (track buffer %.2f s): %d tracks ended", source_id,
                     silence, result.frame.frame_index, self.cfg.track_buffer_s, len(ended))
            st.id_base = book.next_id
            self._start(source_id, st)
        dets = result.detections
        n = len(dets)
        track_ids = np.full(n, -1, np.int64)
        shown = np.flatnonzero(dets.confidence >= self._low)
        sv_dets = self._sv.Detections(xyxy=dets.xyxy[shown], confidence=dets.confidence[shown],
                                      class_id=dets.class_id[shown], data={"row": shown})
        tracked = st.tracker.update(sv_dets, timestamp=t)
        if len(tracked):
            local = np.asarray(tracked.tracker_id, np.int64)
            track_ids[tracked.data["row"]] = np.where(local >= 0, local + st.id_base, -1)
        book.observe(result.frame, track_ids, dets.class_id, dets.class_names)
        alive = {st.id_base + int(tr.tracker_id) for tr in st.tracker.tracks if tr.tracker_id >= 0}
        gone = book.live.keys() - alive
        if gone:
            book.end(gone, "lost")
        return replace(result, detections=dets.with_tracks(track_ids))
