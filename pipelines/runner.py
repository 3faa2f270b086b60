"""The batch job: files → decode/preprocess → in-place engine → postprocess → sinks.

Every stage is set up (and every config problem found) before the first frame is
decoded: sources expanded, engine loaded, sinks opened. Then batches flow from the
decode sessions through the engine to the sinks; a failing file is reported and skipped
while the rest goes on.

Usage::

    summary = run_job(load_config("job.yaml"))
    print(summary.to_text()); sys.exit(0 if summary.ok else 1)
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from engines.base import Engine
from engines.factory import ModelInfo, open_engine, resolve_device
from engines.inplace import InPlaceInference, on_stream
from operators.boxes import LetterboxGeometry, letterbox_geometry
from operators.output_decoding import detect_layout, select_outputs
from operators.postprocess import PostprocessParams, postprocess
from pipelines.file_source import DecodePlan, FileBatchSource, FileEvent, ProcessedBatch, probe_processes
from pipelines.preprocess import PreprocessSpec
from pipelines.progress import FileFailure, JobSummary, Progress
from pipelines.video_decoding import DecodedBatch, preload_dali
from streams.config import JobConfig
from streams.errors import ConfigError
from streams.frames import FrameResult
from streams.sinks import SINKS, Sink
from streams.sources.files import expand_sources
from streams.sources.probe import BackgroundProbe

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """The inference half of the job, shared by file and live runners."""

    engine: Engine
    info: ModelInfo
    layout: str
    params: PostprocessParams
    operator: InPlaceInference

    def process(self, batch: DecodedBatch) -> list[FrameResult]:
        """Engine + postprocess of one decoded batch; results for its valid rows."""
        gate = getattr(self.engine, "gate", None)  # torch engine: no capture while we run
        with on_stream(batch.stream), (gate.shared() if gate is not None else contextlib.nullcontext()):
            outputs = self.operator(batch.images, batch.layout, batch.stream)
            ordered = select_outputs(outputs, self.layout)  # type: ignore[arg-type]
            dets = postprocess(ordered, self.layout, batch.geometries(), self.params,  # type: ignore[arg-type]
                               self.info.class_names)
        return [FrameResult(meta, d) for meta, d in zip(batch.rows, dets, strict=True)
                if meta is not None and d is not None]


GRAPHS_WITH_DALI = (
    "a CUDA graph capture while DALI decodes in other threads invalidates DALI's work "
    "(cudaErrorStreamCaptureIsolation, seen on an H200) or the capture; graphs are captured "
    "only before decoding starts (one per inference stream of fovea run, per worker of fovea "
    "live; engine: tensorrt needs no graphs)"
)


def open_stage(cfg: JobConfig, device: str, stack: contextlib.ExitStack) -> Stage:
    """Open the engine (entered on ``stack``) and resolve the output layout."""
    engine, info = open_engine(cfg.model, cfg.engine, device, cfg.postprocess, cfg.preprocess)
    engine = stack.enter_context(engine)
    close = getattr(engine, "close_captures", None)  # torch engine: see prepare_inference
    if close is not None and device.startswith("cuda"):
        close(GRAPHS_WITH_DALI)
    layout = info.layout
    if layout == "auto":
        shapes = [o.shape for o in engine.outputs]
        if any(d is None for shape in shapes for d in shape[1:]):
            shapes = _probe_output_shapes(engine, info.input_size)
        layout = detect_layout(shapes, [o.name for o in engine.outputs])
        log.info("model output layout: %s", layout)
    p = cfg.postprocess
    params = PostprocessParams(conf_threshold=p.conf_threshold, iou_threshold=p.iou_threshold,
                               max_detections=p.max_detections, class_agnostic=p.class_agnostic,
                               fused=p.fused, frame_capacity=p.frame_capacity)
    return Stage(engine, info, layout, params, InPlaceInference(engine))


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
    torch.cuda.synchronize(engine.device)
    log.info("engine warmed up on batch %d in %.2f s", batch, time.monotonic() - t)


def prepare_inference(engine: Engine, batch: int, size: tuple[int, int], workers: int,
                      device: str) -> list[torch.cuda.Stream]:
    """Warm ``engine`` up and make one CUDA stream per inference thread, before any decoding.

    An engine that replays CUDA graphs (the torch engine) captures one per stream here:
    captures must not overlap DALI's work. Returns the streams, for the source's
    inference threads.
    """
    streams = [torch.cuda.Stream(device=device) for _ in range(max(1, workers))]
    capture = getattr(engine, "capture_graphs", None)
    if capture is not None:
        capture(batch, streams)
    for s in streams:
        warm_up(engine, batch, size, stream=s)
    return streams


def warm_postprocess(stage: Stage, batch: int, stream: torch.cuda.Stream) -> None:
    """One postprocess of a blank batch's outputs, before the job's clock: it builds the fused
    path's Triton kernel (or finds, and logs once, why it cannot run)."""
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


def _probe_output_shapes(engine: Engine, size: tuple[int, int]) -> list[tuple[int | None, ...]]:
    """Output shapes from one inference on a blank batch (for models with symbolic dims)."""
    outs = engine.infer({engine.inputs[0].name: _blank_batch(engine, 1, size)})
    return [tuple(outs[o.name].shape) for o in engine.outputs]


def decode_plan(cfg: JobConfig, stage: Stage, device: str) -> DecodePlan:
    """Where and how files are decoded for this engine."""
    backend = cfg.decode.backend
    on_cuda = device.startswith("cuda")
    if backend == "gpu" and not on_cuda:
        raise ConfigError("decode.backend", "gpu decoding needs a CUDA device (engine.device)")
    decode_device = "gpu" if (on_cuda and backend != "cpu") else "cpu"
    engine = stage.engine
    batch = cfg.engine.batch_size
    if engine.max_batch_size is not None and engine.max_batch_size < batch:
        log.info("batch size limited to the engine's maximum %d", engine.max_batch_size)
        batch = engine.max_batch_size
    spec = PreprocessSpec(dtype=engine.input_dtype, layout=engine.input_layout,  # type: ignore[arg-type]
                          options=cfg.preprocess)
    return DecodePlan(
        spec=spec,
        input_size=stage.info.input_size,
        batch=batch,
        decode_device=decode_device,  # type: ignore[arg-type]
        device_id=int(device.split(":")[1]) if on_cuda else None,
        sessions=cfg.decode.sessions,
        threads=cfg.decode.threads,
        workers=cfg.engine.streams if on_cuda else 1,
    )


def open_sinks(cfg: JobConfig, stack: contextlib.ExitStack) -> list[Sink]:
    """Create and enter every configured sink."""
    return [stack.enter_context(SINKS.create(s)) for s in cfg.sinks]


def run_job(cfg: JobConfig, show_progress: bool = True) -> JobSummary:
    """Run a file job to the end (or Ctrl-C: sinks are still closed cleanly)."""
    files, problems = expand_sources(cfg.sources)
    live = [s for s in cfg.sources if s.uri is not None]
    if live:
        raise ConfigError("sources", "stream URIs (rtsp://) run with 'fovea live'; "
                          "'fovea run' processes files")
    summary = JobSummary(files_total=len(files) + len(problems))
    summary.failures += [FileFailure(e.source, e.reason) for e in problems]
    for e in problems:
        log.error("skipping %s", e)
    device = resolve_device(cfg.engine.device)
    # probing needs only the file list: it runs while the model loads, compiles and warms up
    probe = BackgroundProbe([f.path for f in files], processes=probe_processes(cfg.decode.sessions))
    preload_dali()  # off the job's clock too (the first pipeline build would import it)
    with contextlib.ExitStack() as stack:
        stage = open_stage(cfg, device, stack)
        if device.startswith("cuda") and stage.engine.device == "cpu":  # engine fell back (logged)
            device = "cpu"
            cfg = replace(cfg, decode=replace(cfg.decode, backend="cpu"))
        plan = decode_plan(cfg, stage, device)
        infer_streams: list[torch.cuda.Stream] = []
        if device.startswith("cuda"):
            infer_streams = prepare_inference(stage.engine, plan.batch, stage.info.input_size, plan.workers, device)
            warm_postprocess(stage, plan.batch, infer_streams[0])
        sinks = open_sinks(cfg, stack)
        summary.engine = type(stage.engine).__name__
        summary.device = device
        summary.outputs = [str(getattr(s.config, "path", s.type)) for s in cfg.sinks]
        progress = Progress(total_files=summary.files_total, enabled=show_progress)
        progress.files_finished = len(problems)
        start = time.monotonic()
        sink_s = 0.0
        if device.startswith("cuda"):
            stack.enter_context(gil_switch_interval(cfg.engine.gil_switch_interval_ms / 1000))
        source: FileBatchSource | None = None
        try:
            # engine + postprocess run in plan.workers inference threads, one CUDA stream each
            source = stack.enter_context(FileBatchSource(files, plan, process=stage.process,
                                                                infer_streams=infer_streams, probe=probe))
            while (item := source.read()) is not None:
                if isinstance(item, FileEvent):
                    _on_event(item, summary, progress)
                    continue
                results = item.results if isinstance(item, ProcessedBatch) else stage.process(item)
                t = time.monotonic()
                for sink in sinks:
                    sink.write(results)
                sink_s += time.monotonic() - t
                summary.frames += len(results)
                summary.detections += sum(len(r.detections) for r in results)
                progress.frames_done(len(results))
        finally:
            summary.seconds = time.monotonic() - start
            if source is not None:
                summary.sessions = source.session_timings
            progress.close()
            log.info("sinks took %.1f s of the job's %.1f s", sink_s, summary.seconds)
    return summary


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


def _on_event(ev: FileEvent, summary: JobSummary, progress: Progress) -> None:
    name = str(ev.file.path)
    if ev.kind == "started":
        progress.add_expected(ev.expected_frames)
        summary.decoders[ev.decoder] = summary.decoders.get(ev.decoder, 0) + 1
        log.debug("%s: %d frames, decoder %s", name, ev.expected_frames, ev.decoder)
    elif ev.kind == "done":
        summary.files_done += 1
        progress.file_finished()
        if ev.frames != ev.expected_frames:
            log.warning("%s: %d frames decoded, %d expected", name, ev.frames, ev.expected_frames)
    else:
        assert ev.error is not None
        log.error("skipping %s", ev.error)
        summary.failures.append(FileFailure(name, ev.error.reason, ev.frames))
        progress.file_finished()

