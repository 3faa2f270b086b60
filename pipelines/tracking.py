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
  never reused within a source. A source whose first frame index lies in epoch ``e`` (a live
  camera restarted on another Ray worker: :data:`~streams.frames.FRAME_INDEX_EPOCH`) starts
  its ids at ``e * TRACK_ID_EPOCH``, so they do not repeat those of its earlier epochs.
  Tracks the tracker drops end with reason ``lost``.

Implementations (``tracker.implementation``): ``reference`` runs one ``trackers`` object per
source (the default); ``batched`` (ByteTrack only) runs every source's tracks in one
:class:`~operators.batched_tracking.BatchedByteTrack` (flat NumPy arrays, no Python object
per track), which reproduces ``trackers``' ByteTrack: the same ids and boxes on the same
detections (its parity tests). Everything above (the clock, gaps, restarts, id bases, the
track book) is the same for both. Each ``process`` call steps only its own source, and a
one-source step costs about what the reference's update does: the batched tracker is an
order of magnitude cheaper only when one step carries many sources' frames, which this
per-source stage interface does not offer (``benchmarks/tracking_cost.py``).

``trackers`` and ``supervision`` are imported when the stage is built, not with this
module (the batched implementation needs neither, but the ``tracking`` extra stays the
one switch for tracking and the reference is what the batched one is held to): without
the ``tracking`` extra, a config with a ``tracker:`` section fails before any work with
:class:`TrackingExtraError` (``fovea run`` / ``fovea live`` exit 2).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType, TracebackType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from operators.batched_tracking import BatchedByteTrack, ByteTrackParams, SourceFrame
from operators.tracking import SourceClock, TrackBook
from pipelines.stages import Gap, SourceEnd, SourceEvent
from streams.errors import MissingExtraError
from streams.frames import FRAME_INDEX_EPOCH, TRACK_ID_EPOCH, FrameResult
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


class _Tracker(Protocol):
    """One source's tracker, whichever implementation runs it; ids are its own, from 0."""

    def update(self, xyxy: npt.NDArray[np.float32], confidence: npt.NDArray[np.float32],
               class_id: npt.NDArray[np.int64], t: float) -> npt.NDArray[np.int64]:
        """One frame's detections (all shown to the tracker) → their track ids (-1: none)."""
        ...

    def has_tracks(self) -> bool:
        """Whether the tracker holds any track, confirmed or not."""
        ...

    def confirmed_ids(self) -> list[int]:
        """Ids of its live confirmed tracks."""
        ...

    def close(self) -> None:
        """Free the source's state (the source ended)."""
        ...


class _ReferenceTracker:
    """A ``trackers`` object (ByteTrack or OC-SORT) for one source."""

    def __init__(self, tracker: Any, sv: ModuleType) -> None:
        self.tracker = tracker
        self._sv = sv

    def update(self, xyxy: npt.NDArray[np.float32], confidence: npt.NDArray[np.float32],
               class_id: npt.NDArray[np.int64], t: float) -> npt.NDArray[np.int64]:
        ids = np.full(len(confidence), -1, np.int64)
        dets = self._sv.Detections(xyxy=xyxy, confidence=confidence, class_id=class_id,
                                   data={"row": np.arange(len(confidence))})
        tracked = self.tracker.update(dets, timestamp=t)
        if len(tracked):
            ids[tracked.data["row"]] = np.asarray(tracked.tracker_id, np.int64)
        return ids

    def has_tracks(self) -> bool:
        return bool(self.tracker.tracks)

    def confirmed_ids(self) -> list[int]:
        return [int(tr.tracker_id) for tr in self.tracker.tracks if tr.tracker_id >= 0]

    def close(self) -> None:
        pass


class _BatchedTracker:
    """One source's slot in the stage's shared :class:`BatchedByteTrack`."""

    def __init__(self, batched: BatchedByteTrack, slot: int) -> None:
        self.batched = batched
        self.slot = slot

    def update(self, xyxy: npt.NDArray[np.float32], confidence: npt.NDArray[np.float32],
               class_id: npt.NDArray[np.int64], t: float) -> npt.NDArray[np.int64]:
        (ids,) = self.batched.step([SourceFrame(self.slot, xyxy, confidence, t)])
        return ids

    def has_tracks(self) -> bool:
        return self.batched.track_count(self.slot) > 0

    def confirmed_ids(self) -> list[int]:
        ids: list[int] = self.batched.confirmed_ids(self.slot).tolist()
        return ids

    def close(self) -> None:
        self.batched.remove_source(self.slot)


@dataclass
class _SourceTracker:
    """One source's tracker, clock, and the frames held back until its frame rate is known."""

    clock: SourceClock
    id_base: int  # added to the tracker's own ids (which start at 0)
    tracker: _Tracker | None = None
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
        self.implementation = cfg.resolved_implementation()
        self._batched = (BatchedByteTrack(ByteTrackParams(**self._kwargs)) if self.implementation == "batched"
                         else None)
        self._sources: dict[str, _SourceTracker] = {}
        self._books: dict[str, TrackBook] = {}  # kept after a source ends, for the report
        self._rates: dict[str, float] = {}

    def __enter__(self) -> TrackerStage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for st in self._sources.values():
            if st.tracker is not None:
                st.tracker.close()
        self._sources.clear()

    @property
    def sources(self) -> list[str]:
        """Sources with a tracker now (not ended)."""
        return list(self._sources)

    def process(self, source_id: str, results: Sequence[FrameResult]) -> list[FrameResult]:
        st = self._sources.get(source_id)
        if st is None:
            book = self._books.setdefault(source_id, TrackBook(self.cfg.report_tracks))
            first = results[0].frame.frame_index if results else 0
            base = max(book.next_id, first // FRAME_INDEX_EPOCH * TRACK_ID_EPOCH)
            st = self._sources[source_id] = _SourceTracker(SourceClock(), base)
        pending = [*(st.held or ()), *results]
        st.held = None
        if st.tracker is None:
            if not st.clock.learn_rate([r.frame for r in pending]):
                st.held = pending  # one frame: its rate comes with the next
                return []
            self._start(source_id, st)
        return [self._track(source_id, st, r) for r in pending]

    def process_many(self, runs: Sequence[tuple[str, Sequence[FrameResult]]]
                     ) -> list[tuple[str, list[FrameResult]]]:
        """Several sources' runs at once: with the batched implementation, the k-th frames of
        every run go through one vectorized tracker step (the same tracks as one source at a
        time: the step is per source inside); otherwise :meth:`process` for each run."""
        if self._batched is None:
            return [(sid, self.process(sid, results)) for sid, results in runs]
        out: dict[str, list[FrameResult]] = {}
        queues: list[tuple[str, _SourceTracker, list[FrameResult]]] = []
        for sid, results in runs:
            st = self._sources.get(sid)
            if st is None or st.tracker is None or st.held:  # a source's first frames: its rate first
                out[sid] = self.process(sid, results)
                continue
            out[sid] = []
            queues.append((sid, st, list(results)))
        for k in range(max((len(q) for _, _, q in queues), default=0)):
            stepping = [(sid, st, q[k]) for sid, st, q in queues if k < len(q)]
            prepared = [self._before_step(sid, st, r) for sid, st, r in stepping]
            assert self._batched is not None
            ids = self._batched.step([frame for frame, _ in prepared])
            for (sid, st, r), (_, shown), local in zip(stepping, prepared, ids, strict=True):
                out[sid].append(self._after_step(sid, st, r, shown, local))
        return [(sid, out[sid]) for sid, _ in runs]

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
        if st.tracker is not None:
            st.tracker.close()
        book = self._books[event.source_id]
        book.end(book.active, event.reason)
        return out

    def report(self) -> dict[str, Any]:
        """The tracker's type and parameters, and per source its frame rate and track summaries."""
        sources: dict[str, Any] = {}
        for sid, book in self._books.items():
            sources[sid] = {"frame_rate": self._rates.get(sid), **book.report()}
        return {"type": self.cfg.type, "implementation": self.implementation,
                "track_buffer_s": self.cfg.track_buffer_s, "params": self.cfg.params(), "sources": sources}

    def _start(self, source_id: str, st: _SourceTracker) -> None:
        """A new tracker for the source (its ids from 0), at its measured frame rate."""
        fps = st.clock.fps
        assert fps is not None
        self._rates[source_id] = round(fps, 3)
        if self._batched is None:
            st.tracker = _ReferenceTracker(self._cls(frame_rate=fps, **self._kwargs), self._sv)
        elif isinstance(st.tracker, _BatchedTracker):
            self._batched.reset_source(st.tracker.slot, fps)
        else:
            st.tracker = _BatchedTracker(self._batched, self._batched.add_source(fps))
        log.debug("%s: %s tracker at %.3f fps, ids from %d", source_id, self.cfg.type, fps, st.id_base)

    def _track(self, source_id: str, st: _SourceTracker, result: FrameResult) -> FrameResult:
        t = self._advance(source_id, st, result)
        assert st.tracker is not None
        dets = result.detections
        shown = np.flatnonzero(dets.confidence >= self._low)
        local = st.tracker.update(dets.xyxy[shown], dets.confidence[shown], dets.class_id[shown], t)
        return self._after_step(source_id, st, result, shown, local)

    def _advance(self, source_id: str, st: _SourceTracker, result: FrameResult) -> float:
        """The frame's time; a silence longer than the track buffer ends the source's tracks
        ("gap") and starts its tracker afresh first."""
        assert st.tracker is not None
        t, silence = st.clock.advance(result.frame)
        if silence > self.cfg.track_buffer_s and st.tracker.has_tracks():
            book = self._books[source_id]
            ended = book.end(book.active, "gap")
            log.info("%s: %.2f s without frames at frame %d (track buffer %.2f s): %d tracks ended", source_id,
                     silence, result.frame.frame_index, self.cfg.track_buffer_s, len(ended))
            st.id_base = max(book.next_id, st.id_base)  # (a restarted camera's epoch base, no track yet)
            self._start(source_id, st)
        return t

    def _before_step(self, source_id: str, st: _SourceTracker, result: FrameResult
                     ) -> tuple[SourceFrame, npt.NDArray[np.intp]]:
        """The batched tracker's input for one frame, and which detections it sees."""
        t = self._advance(source_id, st, result)
        assert isinstance(st.tracker, _BatchedTracker)
        dets = result.detections
        shown = np.flatnonzero(dets.confidence >= self._low)
        return SourceFrame(st.tracker.slot, dets.xyxy[shown], dets.confidence[shown], t), shown

    def _after_step(self, source_id: str, st: _SourceTracker, result: FrameResult, shown: npt.NDArray[np.intp],
                    local: npt.NDArray[np.int64]) -> FrameResult:
        """Track ids on the frame's detections, and the books: observed, confirmed, lost."""
        assert st.tracker is not None
        book = self._books[source_id]
        dets = result.detections
        track_ids = np.full(len(dets), -1, np.int64)
        track_ids[shown] = np.where(local >= 0, local + st.id_base, -1)
        book.observe(result.frame, track_ids, dets.class_id, dets.class_names)
        alive = {st.id_base + i for i in st.tracker.confirmed_ids()}
        gone = book.live.keys() - alive
        if gone:
            book.end(gone, "lost")
        return replace(result, detections=dets.with_tracks(track_ids))
