"""The stages of Fovea's pipeline and the inference stage itself.

A job is one graph, the same for files and live cameras (:mod:`pipelines.graph`)::

    source ─► decode + preprocess (DALI) ─► BatchStage (engine + postprocess, on the device)
           ─► per-source order ─► SourceStage … (one source's frames, in order) ─► sinks

Two kinds of stage:

- A :class:`BatchStage` works on a device batch (:class:`~pipelines.video_decoding.DecodedBatch`,
  still in DALI's buffer) and returns one :class:`~streams.frames.FrameResult` per valid
  row. :class:`InferenceStage` is the one every job has.
- A :class:`SourceStage` sees one source's results at a time, in frame-index order, and
  is told of frames that will never come (:class:`Gap`) and of the source's end
  (:class:`SourceEnd`). Trackers, analytics and secondary models go here: they need
  each source's frames in order and keep state per source.

Sinks (:class:`streams.sinks.Sink`) are the last stage. Every stage is a context manager
(set up on ``__enter__``, released on ``__exit__``) with one hot-path method, ``process``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from engines.base import Engine
from engines.factory import ModelInfo
from engines.inplace import InPlaceInference, on_stream
from operators.output_decoding import select_outputs
from operators.postprocess import postprocess
from pipelines.video_decoding import DecodedBatch
from streams.config import PostprocessConfig
from streams.frames import FrameResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gap:
    """Frames of a source that will never come: dropped by a live queue, lost with a
    failed batch, or past the end of a segment that decoded fewer frames than planned."""

    source_id: str
    frame_indices: range | tuple[int, ...]


@dataclass(frozen=True)
class SourceEnd:
    """A source has ended: a file decoded (completely or not), a camera removed or the job stopped."""

    source_id: str
    reason: str  # "done", "incomplete", "failed", "removed", "stopped"


SourceEvent = Gap | SourceEnd


@runtime_checkable
class BatchStage(Protocol):
    """Works on one decoded device batch; returns results for its valid rows, in row order."""

    def __enter__(self) -> BatchStage: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def process(self, batch: DecodedBatch) -> list[FrameResult]:
        """Called by the inference threads, each on its own CUDA stream (``batch.stream``)."""
        ...


@runtime_checkable
class SourceStage(Protocol):
    """Sees one source's results in frame order; keeps per-source state.

    ``process`` is called from one thread (the job's), with results of one source whose
    frame indices increase; frames between two calls that are missing were announced by
    a :class:`Gap`. It returns the results to pass on (it may add to them, e.g. track ids,
    or hold some back until it knows more, and return them later).
    """

    def __enter__(self) -> SourceStage: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def process(self, source_id: str, results: Sequence[FrameResult]) -> list[FrameResult]: ...

    def on_event(self, event: SourceEvent) -> list[FrameResult]:
        """A gap or the end of a source; returns results it was still holding for that source."""
        ...

    def report(self) -> dict[str, Any]:
        """What the stage has to say at the end of the job (JSON-ready; the job summary
        keeps it under the stage's name): track summaries, counts per line and zone, ..."""
        ...


@runtime_checkable
class BatchingSourceStage(SourceStage, Protocol):
    """A per-source stage that can take several sources' in-order runs in one call, so it can
    do its per-frame work for all of them at once (the batched tracker steps every source's
    next frame in one vectorized step).

    ``process_many(runs)`` must give what ``process(source_id, results)`` would give for each
    run in turn: per source, the results to pass on, in order.
    """

    def process_many(self, runs: Sequence[tuple[str, Sequence[FrameResult]]]
                     ) -> list[tuple[str, list[FrameResult]]]: ...


@runtime_checkable
class Cropper(Protocol):
    """Takes what it needs from a batch's source frames while they are on the device
    (:class:`pipelines.cascade.CascadeStage`): ``rows[i]`` is the frame of ``results[i]``."""

    def cut(self, frames: Any, rows: Sequence[int], results: Sequence[FrameResult]) -> None: ...


class InferenceStage:
    """Engine + postprocess of one decoded batch, on the batch's CUDA stream.

    The engine reads DALI's buffer in place (:class:`engines.inplace.InPlaceInference`);
    postprocess runs on the device and the host waits once, for the detections copy.
    The engine's :meth:`~engines.base.Engine.running` section is held meanwhile, so that
    no CUDA-graph capture overlaps this work.
    """

    def __init__(self, engine: Engine, info: ModelInfo, layout: str, params: PostprocessConfig,
                 cropper: Cropper | None = None) -> None:
        self.engine = engine
        self.info = info
        self.layout = layout
        self.params = params
        self.cropper = cropper  # cuts source-pixel crops of the detections while the batch is on the device
        self.operator = InPlaceInference(engine)  # the engine on DALI's buffer, in place

    def __enter__(self) -> InferenceStage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def process(self, batch: DecodedBatch) -> list[FrameResult]:
        with on_stream(batch.stream), self.engine.running():
            outputs = self.operator(batch.images, batch.layout, batch.stream)
            ordered = select_outputs(outputs, self.layout)  # type: ignore[arg-type]
            dets = postprocess(ordered, self.layout, batch.geometries(), self.params,  # type: ignore[arg-type]
                               self.info.class_names)
            rows = [i for i, (meta, d) in enumerate(zip(batch.rows, dets, strict=True))
                    if meta is not None and d is not None]
            results = [FrameResult(batch.rows[i], dets[i]) for i in rows]  # type: ignore[arg-type]
            if self.cropper is not None and results:
                if batch.source_frames is None:
                    raise RuntimeError("a cascade needs the batch's source frames (PreprocessSpec.keep_source)")
                self.cropper.cut(batch.source_frames, rows, results)
        return results
