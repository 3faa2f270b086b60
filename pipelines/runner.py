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

A job with a manifest (``manifest=True``, as ``fovea run`` runs it) can be resumed after a
kill (:mod:`pipelines.resume`): its JSON Lines and CSV outputs commit in step with it, and
each file's records reach the sinks in frame order. ``resume=True`` skips the files an
earlier run finished and continues the others from what every output holds (without
per-source stages from the last keyframe before it; with them, a tracker for instance, from
the file's first frame, so their state is rebuilt exactly, the outputs dropping what they
hold).

The engine side (:class:`InferenceSetup`) can be set up once and handed to several jobs in
turn (a Ray worker does: :mod:`pipelines.ray_backend`).

The model input's shape (:func:`engines.model_info.rect_canvas_stride`): a dynamic-shape
letterbox export runs each file at the smallest stride-aligned rectangle around its
letterboxed frames, as Ultralytics runs it (``preprocess.canvas: auto``); one file's frames
share a canvas, so every batch is one tensor shape. On a GPU the job knows the canvases once
its files are probed, and before decoding starts it warms the engine up at each (the torch
engine captures a CUDA graph per canvas and stream: :meth:`InferenceSetup.prepare_canvases`).

Usage::

    summary = run_job(load_config("job.yaml"))
    print(summary.to_text()); sys.exit(0 if summary.ok else 1)

    job = FileJob(cfg)                       # the Python API's iterator (pipelines.api)
    for results in job.batches(): ...        # list[FrameResult] as they reach the sinks

    run_job(cfg, manifest=True, resume=True) # fovea run --resume
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from types import TracebackType

from engines.factory import resolve_device
from engines.model_info import rect_canvas_stride
from pipelines.file_source import DecodePlan, FileDecodeSource, FileEvent, canvases, probe_processes
from pipelines.graph import (
    PerSourceStages,
    attach_cascade,
    batch_size_for,
    gil_switch_interval,
    needs_source_frames,
    open_inference_stage,
    prepare_inference,
    source_stages,
    warm_up,
)
from pipelines.inference_pool import FailedBatch, InferencePool
from pipelines.job_sinks import open_job_sinks
from pipelines.preprocess import PreprocessSpec, resolve_resize_filter
from pipelines.progress import FileFailure, JobSummary, Progress
from pipelines.resume import JobState, ManifestBook, prepare_job, with_commits
from pipelines.segments import ResumedFile
from pipelines.stages import InferenceStage, SourceStage
from pipelines.video_decoding import preload_dali
from streams import faults
from streams.config import JobConfig
from streams.errors import ConfigError
from streams.frames import FrameResult
from streams.manifest import Status, keyed_sinks
from streams.sinks import Sink
from streams.sources.files import VideoFile, expand_sources
from streams.sources.probe import BackgroundProbe

log = logging.getLogger(__name__)

#: canvas shapes besides the model's input size a GPU job prepares (warm-up, a CUDA graph per
#: inference stream on the torch engine), those with the most frames first; batches of others
#: run without a graph (logged once). Each is a capture (and, compiled, a compile: torch.compile
#: recompiles a model for at most 8 shapes, the input size and these 7) at start-up.
MAX_CANVASES = 7


def decode_plan(cfg: JobConfig, stage: InferenceStage, device: str, batch: int) -> DecodePlan:
    """Where and how files are decoded for this engine."""
    backend = cfg.decode.backend
    on_cuda = device.startswith("cuda")
    if backend == "gpu" and not on_cuda:
        raise ConfigError("decode.backend", "gpu decoding needs a CUDA device (engine.device)")
    engine = stage.engine
    spec = PreprocessSpec(dtype=engine.input_dtype, layout=engine.input_layout,  # type: ignore[arg-type]
                          options=resolve_resize_filter(cfg.preprocess, stage.info),
                          keep_source=needs_source_frames(cfg))
    stride = rect_canvas_stride(stage.info, cfg.preprocess, pinned=cfg.model.input_size is not None)
    return DecodePlan(
        spec=spec,
        input_size=stage.info.input_size,
        batch=batch,
        decode_device="gpu" if (on_cuda and backend != "cpu") else "cpu",
        device_id=int(device.split(":")[1]) if on_cuda else None,
        sessions=cfg.decode.sessions,
        threads=cfg.decode.threads,
        stall_timeout_s=cfg.decode.stall_timeout_s,
        stride=stride,
    )




class InferenceSetup:
    """The engine side of a file job, set up on entering: the engine opened, its CUDA graphs
    captured and warmed up before any decoding (:func:`pipelines.graph.prepare_inference`),
    the batch size and the decode plan. A job opens its own; a Ray worker keeps one for all
    the jobs it runs.

    ``cfg`` (after entering): the config as it runs, with ``decode.backend: cpu`` when the
    engine fell back to the CPU.
    """

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self._stack = contextlib.ExitStack()
        self._canvases: set[tuple[int, int]] = set()  # input shapes prepared (prepare_canvases)

    def __enter__(self) -> InferenceSetup:
        stack = self._stack
        try:
            cfg = self.cfg
            device = resolve_device(cfg.engine.device)
            stack.callback(preload_dali().join)  # DALI imports while the model loads
            stage = open_inference_stage(cfg, device, stack)
            if device.startswith("cuda") and stage.engine.device == "cpu":  # engine fell back (logged)
                device = "cpu"
                cfg = replace(cfg, decode=replace(cfg.decode, backend="cpu"))
            self.cfg, self.stage, self.device = cfg, stage, device
            self.batch = batch_size_for(cfg, stage.engine)
            self.plan = decode_plan(cfg, stage, device, self.batch)
            self.threads = cfg.engine.inference_threads if device.startswith("cuda") else 1
            self.streams = prepare_inference(stage, self.batch, self.threads)
            self._canvases = {tuple(stage.info.input_size)}  # type: ignore[arg-type]
        except BaseException:
            stack.close()
            raise
        return self

    def prepare_canvases(self, frames: Counter[tuple[int, int]]) -> None:
        """On a GPU, before a job's decoding starts: the engine warmed up on every inference
        stream at each canvas ``(h, w)`` of ``frames`` (frames per canvas) not prepared yet,
        the engine's CUDA graphs captured for it (:meth:`engines.base.Engine.capture_graphs`);
        at most :data:`MAX_CANVASES` besides the input size, those with the most frames first.
        Nothing on the CPU. Captures must not overlap DALI's work: call it while no decode
        pipeline runs (a job's set-up; between the jobs of a Ray worker)."""
        if not self.streams:
            return
        todo = [hw for hw, _ in frames.most_common() if hw not in self._canvases]
        room = MAX_CANVASES + 1 - len(self._canvases)
        if len(todo) > room:
            log.warning("more canvas shapes than the %d prepared at most besides the input size: batches of %s (w x h) "
                        "are not warmed up, and the torch engine runs them without a CUDA graph", MAX_CANVASES,
                        ", ".join(f"{w}x{h}" for h, w in todo[max(0, room):]))
            todo = todo[:max(0, room)]
        if not todo:
            return
        engine = self.stage.engine
        engine.capture_graphs(self.batch, self.streams, todo)
        for hw in todo:
            for s in self.streams:
                warm_up(engine, self.batch, hw, stream=s)
        self._canvases.update(todo)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()


class FileJob:
    """One file job over ``cfg``: :meth:`batches` runs it; :attr:`summary` tells what it did.

    ``stages`` are per-source stages (run in every source's frame order) and ``sinks``
    extra sinks (entered by the job, e.g. a callback), both after the configured ones.
    ``manifest``: keep a manifest and commit journals, so the job can be resumed;
    ``resume``: continue the job of an earlier run (module docstring). ``setup``: an entered
    :class:`InferenceSetup` for ``cfg`` to use instead of opening one.

    After :meth:`batches`: :attr:`note` says what a resumed job found (None for a fresh one),
    :attr:`nothing_to_do` whether an earlier run had finished everything.
    """

    def __init__(self, cfg: JobConfig, show_progress: bool = True, stages: Sequence[SourceStage] = (),
                 sinks: Sequence[Sink] = (), manifest: bool = False, resume: bool = False,
                 setup: InferenceSetup | None = None) -> None:
        if [s for s in cfg.sources if s.uri is not None]:
            raise ConfigError("sources", "stream URIs (rtsp://) run with 'fovea live'; 'fovea run' processes files")
        self.cfg = cfg
        self.show_progress = show_progress
        self.stages = source_stages(cfg) + list(stages)  # the config's, then the caller's
        self.extra_sinks = list(sinks)
        self.keep_manifest = manifest or resume
        self.resume = resume
        self.setup = setup
        self.summary = JobSummary()
        self.note: str | None = None
        self.nothing_to_do = False
        self.state: JobState | None = None
        self._book: ManifestBook | None = None
        self._received: Counter[str] = Counter()  # per source id: frames with results so far
        # per ended file's source id: frames decoded, status, frames in all (resumed: from its decode start), reason
        self._ending: dict[str, tuple[int, Status, int, str]] = {}
        self._decode_start: dict[str, int] = {}  # per file: the first segment's first frame
        self._drop_below: dict[str, int] = {}  # per continued file: frames the outputs hold already
        self._end: dict[str, int] = {}  # per source: the frame index after the last one that reached the sinks

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
        if self.keep_manifest:
            if self.resume and self.extra_sinks:
                raise ConfigError("sinks", "a resumed job writes to its configured sinks only (extra sinks cannot "
                                           "tell records they already had from new ones)")
            device = self.setup.device if self.setup is not None else resolve_device(cfg.engine.device)
            self.state = prepare_job(cfg, files, device, self.resume)
            files = self._plan(self.state, files)
            if not files:
                return
            cfg = with_commits(cfg, "resume" if self.state.resumed else "start")
        with contextlib.ExitStack() as stack:
            # probing and importing DALI need only the file list: they run while the model loads,
            # compiles and warms up; both are waited for if that fails, so no native thread is
            # left running while the process exits (which can abort it)
            probe = BackgroundProbe([f.path for f in files], processes=probe_processes(cfg.decode.sessions))
            stack.callback(probe.join)
            setup = self.setup if self.setup is not None else stack.enter_context(InferenceSetup(cfg))
            device = setup.device
            attach_cascade(setup.stage, self.stages)  # the job's secondary models, on the engine's device
            if self.state is not None:  # entered before the sinks: its last save sees their last commits
                self._book = stack.enter_context(ManifestBook(self.state, cfg))
            sinks = open_job_sinks(cfg, stack, self.extra_sinks, summary)  # at the end: summaries, then health
            for st in self.stages:
                stack.enter_context(st)
            # commits are per-source prefixes: with a manifest each file's records reach the sinks in frame order
            after = PerSourceStages(self.stages, sinks, ordered=self._book is not None)
            if self._book is not None:
                self._book.save(force=True)  # after the sinks: they start their journals first
                for sid, held in self._drop_below.items():
                    after.gap(sid, range(held))  # the outputs hold these frames: never waited for
            summary.engine = type(setup.stage.engine).__name__
            summary.device = device
            summary.outputs = [str(getattr(s.config, "path", s.type)) for s in cfg.sinks]
            progress = stack.enter_context(Progress(total_files=summary.files_total, enabled=self.show_progress))
            progress.files_finished = summary.files_total - len(files)  # failed sources, files finished earlier
            if setup.plan.stride is not None and setup.streams:  # rectangle canvases: known once probed
                setup.prepare_canvases(canvases(setup.plan, probe.result()))
            start = time.monotonic()
            if device.startswith("cuda"):
                stack.enter_context(gil_switch_interval(cfg.engine.gil_switch_interval_ms / 1000))
            source: FileDecodeSource | None = None
            try:
                source = stack.enter_context(FileDecodeSource(files, setup.plan, probe=probe))
                pool = stack.enter_context(InferencePool(setup.stage, source, setup.streams, setup.threads))
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
                    faults.crash_point("batch")
                    kept = self._new(item) if self._drop_below else item
                    progress.frames_done(len(kept))
                    summary.frames += len(kept)
                    summary.detections += sum(len(r.detections) for r in kept)
                    yield from _nonempty(self._passed(after.add(kept)))
                    yield from _nonempty(self._count(item, after))
                for ev in source.poll_events():
                    yield from _nonempty(self._on_event(ev, after, progress))
                if self._book is not None:
                    self._book.completed = True
            finally:
                summary.seconds = time.monotonic() - start
                if source is not None:
                    summary.sessions = source.session_timings
                summary.reorder_peak = after.reorder.peak
                summary.stages = after.reports()
                log.info("sinks took %.1f s of the job's %.1f s", after.sink_seconds, summary.seconds)

    def _plan(self, state: JobState, files: list[VideoFile]) -> list[VideoFile]:
        """The files still to do: those an earlier run finished are counted and skipped; the
        others continue from what the outputs hold (module docstring)."""
        summary = self.summary
        for sid, rec in state.finished.items():
            name = rec.identity.path if rec.identity is not None else sid
            if rec.status == "done":
                summary.files_done += 1
            else:
                summary.failures.append(FileFailure(name, rec.reason, rec.frames, expected=rec.expected,
                                                    kind="incomplete" if rec.status == "incomplete" else "failed"))
        todo = [f for f in files if f.source_id not in state.finished]
        if not state.resumed:
            return todo
        held = {sid: n for sid, n in state.committed.items() if n > 0}
        whole = bool(self.stages) or keyed_sinks(self.cfg)
        if not whole:  # stateless, file outputs only: decoding restarts at the keyframe before what they hold
            self._drop_below = held
            todo = [ResumedFile(f.path, f.source_id, held[f.source_id]) if f.source_id in held else f
                    for f in todo]
        if not todo:
            self.nothing_to_do = True
            self.note = (f"nothing to do: every file of the job in {state.path} was finished by an earlier run "
                         f"({len(state.finished)} files); the outputs are unchanged")
            if not state.manifest.finished:
                state.manifest.finished = True
                state.manifest.save(state.path)
            return todo
        where = ", ".join(f"{sid} at frame {n}" for sid, n in list(held.items())[:5])
        more = f" and {len(held) - 5} more" if len(held) > 5 else ""
        how = ("" if not held or not whole else
               " (from their first frame: " + ("the per-source stages rebuild their state; " if self.stages else
                                               "keyed sinks get those records again, with the same keys; ")
               + "the file outputs skip what they hold)")
        self.note = (f"resumed the job in {state.path}: {len(state.finished)} of {len(files)} files finished "
                     f"earlier (skipped), {len(todo)} to do" + (f"; continuing {where}{more}{how}" if held else ""))
        log.info("%s", self.note)
        return todo

    def _new(self, results: list[FrameResult]) -> list[FrameResult]:
        """``results`` without the frames of continued files that the outputs hold already."""
        drop = self._drop_below
        return [r for r in results if r.frame.frame_index >= drop.get(r.frame.source_id, 0)]

    def _passed(self, results: list[FrameResult]) -> list[FrameResult]:
        """Results that reached the sinks: each source's last frame index is booked."""
        if self._book is not None:
            end = self._end
            for r in results:
                sid, n = r.frame.source_id, r.frame.frame_index + 1
                if n > end.get(sid, 0):
                    end[sid] = n
        return results

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
        out = self._passed(after.end(sid, ending[1]))
        if self._book is not None:
            rec = self._book.manifest.files.get(sid)
            self._book.ended(sid, ending[1], ending[2], rec.expected if rec is not None else 0,
                             self._end.get(sid, 0), ending[3])
        return out

    def _on_event(self, ev: FileEvent, after: PerSourceStages, progress: Progress) -> list[FrameResult]:
        summary = self.summary
        name = str(ev.file.path)
        sid = ev.file.source_id
        if ev.kind == "started":
            progress.add_expected(ev.expected_frames - self._drop_below.get(sid, 0))
            summary.decoders[ev.decoder] = summary.decoders.get(ev.decoder, 0) + 1
            log.debug("%s: %d frames, decoder %s", name, ev.expected_frames, ev.decoder)
            if self._book is not None:
                self._book.started(ev.file, ev.expected_frames)
            return []
        if ev.kind == "segment":
            self._decode_start[sid] = min(ev.start, self._decode_start.get(sid, ev.start))
            if ev.frames < ev.expected_frames:  # frames past a short segment's end never come
                return self._passed(after.gap(sid, range(ev.start + ev.frames, ev.start + ev.expected_frames)))
            return []
        progress.file_finished()
        status: Status = "done"
        reason = ""
        frames = ev.frames + self._decode_start.pop(sid, 0)  # a continued file decodes from a later frame
        if ev.kind == "done" and frames >= ev.expected_frames:
            summary.files_done += 1
            if frames > ev.expected_frames:
                log.info("%s: %d frames decoded, %d announced by its header", name, frames, ev.expected_frames)
        elif ev.kind == "done":
            reason = (f"incomplete: decoded {frames} of the {ev.expected_frames} frames its header announces "
                      "(the file ends early: truncated or damaged); the decoded frames were processed")
            log.error("%s: %s", name, reason)
            status = "incomplete"
            summary.failures.append(FileFailure(name, reason, frames, kind="incomplete",
                                                expected=ev.expected_frames))
        else:
            assert ev.error is not None
            log.error("skipping %s", ev.error)
            status = "failed"
            reason = ev.error.reason
            summary.failures.append(FileFailure(name, reason, frames, expected=ev.expected_frames))
        if self._book is not None and ev.expected_frames:
            self._book.manifest.files[sid].expected = ev.expected_frames
        self._ending[sid] = (ev.frames, status, frames, reason)
        return self._maybe_end(sid, after)


def _nonempty(results: list[FrameResult]) -> Iterator[list[FrameResult]]:
    if results:
        yield results


def run_job(cfg: JobConfig, show_progress: bool = True, stages: Sequence[SourceStage] = (),
            sinks: Sequence[Sink] = (), manifest: bool = False, resume: bool = False) -> JobSummary:
    """Run a file job to the end (or Ctrl-C: sinks are still closed cleanly); ``manifest`` and
    ``resume`` as for :class:`FileJob`."""
    job = FileJob(cfg, show_progress, stages, sinks, manifest=manifest, resume=resume)
    for _ in job.batches():
        pass
    return job.summary
