"""The file job: the stage graph (:mod:`pipelines.graph`) over archived video files.

Every stage is set up (and every config problem found) before the first frame is
decoded: sources expanded, engine loaded, CUDA graphs captured, sinks opened. Then
batches flow from the decode sessions through the inference pool and the per-source
stages to the sinks; a failing file is reported and skipped while the rest goes on.

A file counts as done only when it decoded as many frames as its header promised; one
that ends early (truncated, damaged) keeps the frames it did decode (they are real) and is
reported as incomplete, with the reason and the counts, like a failed file: the job's
``ok`` is False and ``fovea run`` exits 1. A job with no input at all opens no sink, so
no output that looks like a finished empty job is left behind.

Usage::

    summary = run_job(load_config("job.yaml"))
    print(summary.to_text()); sys.exit(0 if summary.ok else 1)

    job = FileJob(cfg)                       # the Python API's iterator (pipelines.api)
    for results in job.batches(): ...        # list[FrameResult] as they reach the sinks
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace

from engines.factory import resolve_device
from pipelines.file_source import DecodePlan, FileDecodeSource, FileEvent, probe_processes
from pipelines.graph import (
    PerSourceStages,
    batch_size_for,
    gil_switch_interval,
    open_inference_stage,
    open_sinks,
    prepare_inference,
    source_stages,
)
from pipelines.inference_pool import FailedBatch, InferencePool
from pipelines.preprocess import PreprocessSpec
from pipelines.progress import FileFailure, JobSummary, Progress
from pipelines.stages import InferenceStage, SourceStage
from pipelines.video_decoding import preload_dali
from streams.config import JobConfig
from streams.errors import ConfigError
from streams.frames import FrameResult
from streams.sinks import Sink
from streams.sources.files import expand_sources
from streams.sources.probe import BackgroundProbe

log = logging.getLogger(__name__)


def decode_plan(cfg: JobConfig, stage: InferenceStage, device: str, batch: int) -> DecodePlan:
    """Where and how files are decoded for this engine."""
    backend = cfg.decode.backend
    on_cuda = device.startswith("cuda")
    if backend == "gpu" and not on_cuda:
        raise ConfigError("decode.backend", "gpu decoding needs a CUDA device (engine.device)")
    engine = stage.engine
    spec = PreprocessSpec(dtype=engine.input_dtype, layout=engine.input_layout,  # type: ignore[arg-type]
                          options=cfg.preprocess)
    return DecodePlan(
        spec=spec,
        input_size=stage.info.input_size,
        batch=batch,
        decode_device="gpu" if (on_cuda and backend != "cpu") else "cpu",
        device_id=int(device.split(":")[1]) if on_cuda else None,
        sessions=cfg.decode.sessions,
        threads=cfg.decode.threads,
    )


class FileJob:
    """One file job over ``cfg``: :meth:`batches` runs it; :attr:`summary` tells what it did.

    ``stages`` are per-source stages (run in every source's frame order) and ``sinks``
    extra sinks (entered by the job, e.g. a callback), both after the configured ones.
    """

    def __init__(self, cfg: JobConfig, show_progress: bool = True, stages: Sequence[SourceStage] = (),
                 sinks: Sequence[Sink] = ()) -> None:
        if [s for s in cfg.sources if s.uri is not None]:
            raise ConfigError("sources", "stream URIs (rtsp://) run with 'fovea live'; 'fovea run' processes files")
        self.cfg = cfg
        self.show_progress = show_progress
        self.stages = source_stages(cfg) + list(stages)  # the config's, then the caller's
        self.extra_sinks = list(sinks)
        self.summary = JobSummary()
        self._received: Counter[str] = Counter()  # per source id: frames with results so far
        self._ending: dict[str, tuple[int, str]] = {}  # per ended file's source id: frames decoded, status

    def batches(self) -> Iterator[list[FrameResult]]:
        """Run the job; yields each batch's results as they leave the last stage."""
        cfg, summary = self.cfg, self.summary
        files, problems = expand_sources(cfg.sources)  # unique ids: per-source bookkeeping keys on them
        summary.files_total = len(files) + len(problems)
        for e in problems:
            log.error("skipping %s", e)
            summary.failures.append(FileFailure(e.source, e.reason))
        if not files:
            summary.no_input = True
            log.error("no input: none of the sources gave a video file; nothing was processed and no output "
                      "was written")
            return
        device = resolve_device(cfg.engine.device)
        with contextlib.ExitStack() as stack:
            # probing and importing DALI need only the file list: they run while the model loads,
            # compiles and warms up; both are waited for if that fails, so no native thread is
            # left running while the process exits (which can abort it)
            probe = BackgroundProbe([f.path for f in files], processes=probe_processes(cfg.decode.sessions))
            stack.callback(probe.join)
            stack.callback(preload_dali().join)
            stage = open_inference_stage(cfg, device, stack)
            if device.startswith("cuda") and stage.engine.device == "cpu":  # engine fell back (logged)
                device = "cpu"
                cfg = replace(cfg, decode=replace(cfg.decode, backend="cpu"))
            batch = batch_size_for(cfg, stage.engine)
            plan = decode_plan(cfg, stage, device, batch)
            threads = cfg.engine.inference_threads if device.startswith("cuda") else 1
            infer_streams = prepare_inference(stage, batch, threads)
            sinks = open_sinks(cfg, stack) + [stack.enter_context(s) for s in self.extra_sinks]
            for st in self.stages:
                stack.enter_context(st)
            after = PerSourceStages(self.stages, sinks)
            summary.engine = type(stage.engine).__name__
            summary.device = device
            summary.outputs = [str(getattr(s.config, "path", s.type)) for s in cfg.sinks]
            progress = stack.enter_context(Progress(total_files=summary.files_total, enabled=self.show_progress))
            progress.files_finished = len(problems)
            start = time.monotonic()
            if device.startswith("cuda"):
                stack.enter_context(gil_switch_interval(cfg.engine.gil_switch_interval_ms / 1000))
            source: FileDecodeSource | None = None
            try:
                source = stack.enter_context(FileDecodeSource(files, plan, probe=probe))
                pool = stack.enter_context(InferencePool(stage, source, infer_streams, threads))
                while True:
                    for ev in source.poll_events():
                        yield from _nonempty(self._on_event(ev, after, progress))
                    try:
                        item = pool.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    if item is None:
                        break
                    assert not isinstance(item, FailedBatch)  # a file's decode error fails its file instead
                    progress.frames_done(len(item))
                    summary.frames += len(item)
                    summary.detections += sum(len(r.detections) for r in item)
                    yield from _nonempty(after.add(item))
                    yield from _nonempty(self._count(item, after))
                for ev in source.poll_events():
                    yield from _nonempty(self._on_event(ev, after, progress))
            finally:
                summary.seconds = time.monotonic() - start
                if source is not None:
                    summary.sessions = source.session_timings
                summary.reorder_peak = after.reorder.peak
                summary.stages = after.reports()
                log.info("sinks took %.1f s of the job's %.1f s", after.sink_seconds, summary.seconds)

    def _count(self, results: list[FrameResult], after: PerSourceStages) -> list[FrameResult]:
        """Count results per source; a file whose results are all in ends its source."""
        counts = Counter(r.frame.source_id for r in results)
        self._received.update(counts)
        out: list[FrameResult] = []
        for sid in counts:
            out += self._maybe_end(sid, after)
        return out

    def _maybe_end(self, sid: str, after: PerSourceStages) -> list[FrameResult]:
        """End ``sid``'s source once its file has ended and all its decoded frames' results are in."""
        ending = self._ending.get(sid)
        if ending is None or self._received[sid] < ending[0]:
            return []
        del self._ending[sid]
        return after.end(sid, ending[1])

    def _on_event(self, ev: FileEvent, after: PerSourceStages, progress: Progress) -> list[FrameResult]:
        summary = self.summary
        name = str(ev.file.path)
        sid = ev.file.source_id
        if ev.kind == "started":
            progress.add_expected(ev.expected_frames)
            summary.decoders[ev.decoder] = summary.decoders.get(ev.decoder, 0) + 1
            log.debug("%s: %d frames, decoder %s", name, ev.expected_frames, ev.decoder)
            return []
        if ev.kind == "segment":
            if ev.frames < ev.expected_frames:  # frames past a short segment's end never come
                return after.gap(sid, range(ev.start + ev.frames, ev.start + ev.expected_frames))
            return []
        progress.file_finished()
        status = "done"
        if ev.kind == "done" and ev.frames >= ev.expected_frames:
            summary.files_done += 1
            if ev.frames > ev.expected_frames:
                log.info("%s: %d frames decoded, %d announced by its header", name, ev.frames, ev.expected_frames)
        elif ev.kind == "done":
            reason = (f"incomplete: decoded {ev.frames} of the {ev.expected_frames} frames its header announces "
                      "(the file ends early: truncated or damaged); the decoded frames were processed")
            log.error("%s: %s", name, reason)
            status = "incomplete"
            summary.failures.append(FileFailure(name, reason, ev.frames, kind="incomplete",
                                                expected=ev.expected_frames))
        else:
            assert ev.error is not None
            log.error("skipping %s", ev.error)
            status = "failed"
            summary.failures.append(FileFailure(name, ev.error.reason, ev.frames, expected=ev.expected_frames))
        self._ending[sid] = (ev.frames, status)
        return self._maybe_end(sid, after)


def _nonempty(results: list[FrameResult]) -> Iterator[list[FrameResult]]:
    if results:
        yield results


def run_job(cfg: JobConfig, show_progress: bool = True, stages: Sequence[SourceStage] = (),
            sinks: Sequence[Sink] = ()) -> JobSummary:
    """Run a file job to the end (or Ctrl-C: sinks are still closed cleanly)."""
    job = FileJob(cfg, show_progress, stages, sinks)
    for _ in job.batches():
        pass
    return job.summary
