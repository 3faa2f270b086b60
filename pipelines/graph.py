"""The stage graph every job runs, files and live alike, and how it is set up.

::

    source (files: FileDecodeSource; live: the camera manager's batches)
      │ decode + preprocess (DALI), batches on the device
      ▼
    InferencePool: inference threads, one CUDA stream each ── InferenceStage (engine + postprocess)
      │ FrameResult lists, in any order
      ▼
    PerSourceStages: per-source order (ReorderBuffer) → SourceStage … → sinks

Files and live build the same graph from the config (:func:`open_inference_stage`,
:func:`prepare_inference`, :class:`~pipelines.inference_pool.InferencePool`,
:class:`PerSourceStages`); what differs (pacing, reconnects, drop policy, segments) lives
in their sources.

Set-up order matters on a GPU: the engine is opened, its CUDA graphs captured on the
inference threads' streams and the postprocess kernel built **before** any decoding
starts, because a CUDA graph capture while DALI works in other threads invalidates
DALI's work or the capture.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import torch

from engines.base import Engine
from engines.factory import open_engine, output_layout
from operators.boxes import LetterboxGeometry, letterbox_geometry
from operators.output_decoding import select_outputs
from operators.postprocess import postprocess
from pipelines.cascade import CascadeStage
from pipelines.ordering import ReorderBuffer
from pipelines.preprocess import HostPreprocessor
from pipelines.stages import BatchingSourceStage, Gap, InferenceStage, SourceEnd, SourceStage
from streams.config import JobConfig
from streams.frames import FrameResult
from streams.sinks import SINKS, Sink

log = logging.getLogger(__name__)

GRAPHS_WITH_DALI = (
    "a CUDA graph capture while DALI decodes in other threads invalidates DALI's work "
    "(cudaErrorStreamCaptureIsolation) or the capture; graphs are captured only before "
    "decoding starts (one per inference thread); engine: tensorrt needs no graphs"
)


def open_inference_stage(cfg: JobConfig, device: str, stack: contextlib.ExitStack,
                         stages: Sequence[SourceStage] = ()) -> InferenceStage:
    """Open the engine (entered on ``stack``) and resolve the model's output layout.

    A cascade among the job's per-source ``stages`` gets its secondary models opened on the
    engine's device here (checked against the primary model's classes, before any decoding),
    and the inference stage cuts its crops from each batch."""
    engine, info = open_engine(cfg.model, cfg.engine, device, cfg.postprocess, cfg.preprocess,
                               frame_preprocessor=functools.partial(HostPreprocessor, options=cfg.preprocess))
    engine = stack.enter_context(engine)
    if device.startswith("cuda"):
        engine.close_captures(GRAPHS_WITH_DALI)  # captures happen in prepare_inference only
    layout = output_layout(engine, info)
    stage = stack.enter_context(InferenceStage(engine, info, layout, cfg.postprocess))
    attach_cascade(stage, stages)
    return stage


def attach_cascade(stage: InferenceStage, stages: Sequence[SourceStage]) -> None:
    """The cascade among a job's per-source ``stages`` (if any): its models opened on the
    engine's device and checked against the primary model's classes, and the inference stage
    set to cut its crops from each batch (which then must keep the source frames:
    ``PreprocessSpec.keep_source``, from :func:`needs_source_frames`)."""
    stage.cropper = None
    for st in stages:
        if isinstance(st, CascadeStage):
            if not st.secondaries:
                st.load(stage.engine.device, stage.info.class_names)
            stage.cropper = st


def needs_source_frames(cfg: JobConfig) -> bool:
    """Whether the job's batches must carry the decoded full-size frames (a cascade crops them)."""
    return bool(cfg.secondary)


def batch_size_for(cfg: JobConfig, engine: Engine) -> int:
    """The job's batch: ``engine.batch_size``, capped by the engine's maximum (logged)."""
    batch = cfg.engine.batch_size
    if engine.max_batch_size is not None and engine.max_batch_size < batch:
        log.info("batch size limited to the engine's maximum %d", engine.max_batch_size)
        batch = engine.max_batch_size
    return batch


def prepare_inference(stage: InferenceStage, batch: int, threads: int) -> list[torch.cuda.Stream]:
    """On a GPU, before any decoding: one CUDA stream per inference thread, the engine's
    CUDA graphs captured on them, every stream warmed up, the postprocess kernel built.

    Returns the streams (empty on the CPU, where the inference thread needs none).
    """
    engine = stage.engine
    if not engine.device.startswith("cuda"):
        return []
    size = stage.info.input_size
    streams = [torch.cuda.Stream(device=engine.device) for _ in range(max(1, threads))]
    engine.capture_graphs(batch, streams)
    for s in streams:
        warm_up(engine, batch, size, stream=s)
    _warm_postprocess(stage, batch, streams[0])
    return streams


def warm_up(engine: Engine, batch: int, size: tuple[int, int], runs: int = 3,
            stream: torch.cuda.Stream | None = None) -> None:
    """A few runs on a blank full batch, so autotuning and JIT passes happen before the job's clock."""
    x = _blank_batch(engine, batch, size)
    t = time.monotonic()
    handle = stream.cuda_stream if stream is not None else None
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream(stream.device))
    for _ in range(runs):
        engine.infer({engine.inputs[0].name: x}, stream=handle)
    if engine.device.startswith("cuda"):
        torch.cuda.synchronize(engine.device)
    log.info("engine warmed up on batch %d in %.2f s", batch, time.monotonic() - t)


def _warm_postprocess(stage: InferenceStage, batch: int, stream: torch.cuda.Stream) -> None:
    """One postprocess of a blank batch's outputs: builds the fused path's Triton kernel
    (or finds, and logs once, why it cannot run) before the job's clock."""
    t = time.monotonic()
    h, w = stage.info.input_size
    geoms: list[LetterboxGeometry | None] = [letterbox_geometry(w, h, w, h)] * batch
    with torch.cuda.stream(stream):
        outs = stage.engine.infer({stage.engine.inputs[0].name: _blank_batch(stage.engine, batch, (h, w))},
                                  stream=stream.cuda_stream)
        ordered = select_outputs(outs, stage.layout)  # type: ignore[arg-type]
        postprocess(ordered, stage.layout, geoms, stage.params, stage.info.class_names)  # type: ignore[arg-type]
    log.info("postprocess warmed up in %.2f s", time.monotonic() - t)


def _blank_batch(engine: Engine, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """Zeros in the engine's input dtype, device and memory layout: ``Tensor[batch, 3, *size]``."""
    dtype = torch.float16 if engine.input_dtype == "float16" else torch.float32
    x = torch.zeros((batch, 3, *size), dtype=dtype, device=engine.device)
    return x.contiguous(memory_format=torch.channels_last) if engine.input_layout == "NHWC" else x


def source_stages(cfg: JobConfig) -> list[SourceStage]:
    """The per-source stages the config asks for, in the order they run (tracker first,
    then the secondary models, then the analytics that read the tracks). Not entered yet.

    A ``tracker:`` section without the ``tracking`` extra raises
    :class:`~pipelines.tracking.TrackingExtraError` here, before any work."""
    stages: list[SourceStage] = []
    if cfg.tracker is not None:
        from pipelines.tracking import TrackerStage  # imports trackers (the tracking extra)

        stages.append(TrackerStage(cfg.tracker))
    if cfg.secondary:  # after the tracker (a track is classified every reinfer_interval frames)
        stages.append(CascadeStage(cfg.secondary))
    if cfg.analytics is not None:  # after the tracker: it counts tracks (refused without one)
        from pipelines.analytics import analytics_stage

        stages.append(analytics_stage(cfg))
    return stages


def open_sinks(cfg: JobConfig, stack: contextlib.ExitStack) -> list[Sink]:
    """Create and enter every configured sink; one that draws zones and lines (the video
    sink, :class:`~streams.analytics_config.AnalyticsAware`) gets the job's ``analytics:`` first."""
    from streams.analytics_config import AnalyticsAware

    sinks = [SINKS.create(s) for s in cfg.sinks]
    for sink in sinks:
        if cfg.analytics is not None and isinstance(sink, AnalyticsAware):
            sink.use_analytics(cfg.analytics)
    return [stack.enter_context(s) for s in sinks]


@contextlib.contextmanager
def gil_switch_interval(seconds: float) -> Iterator[None]:
    """Set Python's thread switch interval for a block, restoring it after.

    GPU jobs run several threads that each hold the GIL only briefly between CUDA calls;
    with the default 5 ms interval, a thread doing pure Python work (sink formatting)
    makes them wait that long for every re-acquisition.
    """
    old = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    log.debug("GIL switch interval %.2f ms (was %.2f ms)", seconds * 1e3, old * 1e3)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class PerSourceStages:
    """The graph after inference: per-source order, the per-source stages, then the sinks.

    Called from the job's thread only. With no per-source stage and ``ordered`` not asked
    for, results go to the sinks as they come (sinks take any order; each record names its
    frame); with one (or ``ordered=True``: a resumable job's outputs commit per-source
    prefixes), every source's frames pass the stages and reach the sinks in frame order
    (:class:`~pipelines.ordering.ReorderBuffer`). Each method returns what reached the sinks,
    for the Python API's iterator.
    """

    def __init__(self, stages: Sequence[SourceStage], sinks: Sequence[Sink], ordered: bool = False,
                 first_index: Callable[[str], int] | None = None) -> None:
        self.stages = list(stages)
        self.sinks = list(sinks)
        self.ordered = ordered or bool(self.stages)  # per-source stages need each source's frames in order
        self.reorder = ReorderBuffer(first_index=first_index)  # (a live camera's first frame index)
        self.sink_seconds = 0.0
        self._ended: set[str] = set()  # sources ended: a late frame of theirs skips the stages

    def __enter__(self) -> PerSourceStages:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def reports(self) -> dict[str, dict[str, Any]]:
        """Each per-source stage's end-of-job report, by the stage's class name."""
        return {type(stage).__name__: stage.report() for stage in self.stages}

    def add(self, results: list[FrameResult]) -> list[FrameResult]:
        """Results of one batch (any sources, any order)."""
        if not self.ordered:
            return self._write(results)
        late: list[FrameResult] = []
        if self._ended and any(r.frame.source_id in self._ended for r in results):
            late = [r for r in results if r.frame.source_id in self._ended]
            results = [r for r in results if r.frame.source_id not in self._ended]
            log.debug("%d frames of ended sources (a camera removed with batches in flight) go to the sinks "
                      "without the per-source stages", len(late))
        self.reorder.add(results)
        return self._write(late) + self._release()

    def gap(self, source_id: str, frame_indices: range | tuple[int, ...]) -> list[FrameResult]:
        """Frames of ``source_id`` that will never come (the stages hear of them in their place)."""
        if not self.ordered or not len(frame_indices):
            return []
        self.reorder.skip(source_id, frame_indices)
        return self._release()

    def end(self, source_id: str, reason: str) -> list[FrameResult]:
        """``source_id`` has ended: everything it still holds leaves, then the stages are told."""
        if not self.ordered:
            return []
        self._ended.add(source_id)
        self.reorder.end(source_id)
        out = self._release()
        return out + self._event(SourceEnd(source_id, reason))

    def _release(self) -> list[FrameResult]:
        out: list[FrameResult] = []
        runs = self.reorder.release()
        if len(runs) > 1 and any(isinstance(st, BatchingSourceStage) for st in self.stages):
            # runs without a gap pass every stage together (a batching stage does one step for all)
            gapless = [(sid, run) for sid, run in runs if not any(isinstance(x, range) for x in run)]
            if len(gapless) > 1:
                runs = [(sid, run) for sid, run in runs if any(isinstance(x, range) for x in run)]
                out += self._pass_many(gapless)  # type: ignore[arg-type]
        for sid, run in runs:
            frames: list[FrameResult] = []
            for item in run:
                if isinstance(item, range):  # frames before the gap pass first, then the gap
                    out += self._pass(sid, frames) + self._event(Gap(sid, item))
                    frames = []
                else:
                    frames.append(item)
            out += self._pass(sid, frames)
        return out

    def _pass_many(self, runs: list[tuple[str, list[FrameResult]]]) -> list[FrameResult]:
        """Several sources' gapless runs through the stages, each batching stage once for all."""
        for stage in self.stages:
            runs = [(sid, r) for sid, r in runs if r]
            if not runs:
                break
            if isinstance(stage, BatchingSourceStage) and len(runs) > 1:
                runs = stage.process_many(runs)
            else:
                runs = [(sid, stage.process(sid, r)) for sid, r in runs]
        return self._write([r for _, run in runs for r in run])

    def _pass(self, source_id: str, results: list[FrameResult], start: int = 0) -> list[FrameResult]:
        """``results`` of one source through the stages from ``start`` on, then to the sinks."""
        for stage in self.stages[start:]:
            if not results:
                break
            results = stage.process(source_id, results)
        return self._write(results)

    def _event(self, event: Gap | SourceEnd) -> list[FrameResult]:
        held: list[FrameResult] = []
        for stage in self.stages:
            if held:
                held = stage.process(event.source_id, held)
            held += stage.on_event(event)
        return self._write(held)

    def _write(self, results: list[FrameResult]) -> list[FrameResult]:
        if results:
            t = time.monotonic()
            for sink in self.sinks:
                sink.write(results)
            self.sink_seconds += time.monotonic() - t
        return results
