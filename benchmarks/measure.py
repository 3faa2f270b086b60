"""The ceilings and the end-to-end figure: what Fovea's throughput is compared with.

* :func:`measure_decode`: DALI's ``fn.experimental.readers.video(device="gpu")`` alone
  (the reader Fovea uses, ``pad_mode="constant"``), ``n`` pipelines in ``n`` threads, for
  each ``n`` of a sweep; the best is the decode ceiling (more sessions than NVDEC engines
  still helps). Frames are counted exactly (frame numbers, padding excluded), in a
  window that starts once every pipeline is built and warm.
* :func:`measure_source`: the pipeline's own source
  (:class:`pipelines.file_source.FileDecodeSource`: probe, keyframe segments over NVDEC sessions,
  letterbox/normalise on the GPU) drained without inference: decode + preprocess.
* :func:`measure_engine`: the engine alone on device-resident batches (the layout and
  dtype the engine asks preprocessing for, filled with real letterboxed frames), timed
  with CUDA events after warm-up (CUDA graphs captured), in 1 thread/stream and in as many
  threads, each with its own stream and buffer, as the pipeline has decode sessions; plus
  the job's ``InferenceStage.process``
  (engine + postprocess) the same way, for reference.
* :func:`measure_e2e`: :func:`pipelines.runner.run_job` on the workload with a JSONL sink;
  every frame is accounted for (JSONL lines = probed frames = ``summary.frames``).

Each returns a :class:`benchmarks.results.Measurement` with utilisation sampled meanwhile.

Usage::

    m = measure_decode(files, sessions=[7, 10, 14], seconds=8, device="cuda:0", codec="h264")
    m.fps, m.extra["sessions"], m.extra["sweep"]
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from benchmarks.results import Measurement
from benchmarks.sampler import UtilSampler
from streams.analytics_config import AnalyticsConfig
from streams.config import DecodeConfig, EngineConfig, JobConfig, ModelConfig, PostprocessConfig, SourceEntry
from streams.schema import from_dict
from streams.tracker_config import TrackerConfig

log = logging.getLogger(__name__)


def _device_id(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------
# decode ceiling


def _count_valid(fnum: Any) -> int:
    numbers = np.asarray(fnum.as_cpu()[0] if hasattr(fnum, "as_cpu") else fnum[0]).reshape(-1)
    return int((numbers >= 0).sum())


def _reader_pipeline(files: Sequence[Path], device_id: int, sequence_length: int) -> Any:
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=1, num_threads=2, device_id=device_id, prefetch_queue_depth=2,
                  exec_dynamic=True)
    def graph() -> Any:
        frames, fnum = fn.experimental.readers.video(
            device="gpu",
            filenames=[str(f) for f in files],
            sequence_length=sequence_length,
            pad_mode="constant",
            enable_frame_num="sequence",
            name="reader",
        )
        return frames, fnum

    pipe = graph()
    pipe.build()
    return pipe


def _decode_run(
    files: Sequence[Path], sessions: int, seconds: float, device_id: int, sequence_length: int, warmup: int = 2
) -> tuple[int, float]:
    """``sessions`` reader pipelines decoding for ``seconds``: (valid frames, seconds)."""
    start: list[float] = []
    barrier = threading.Barrier(sessions, action=lambda: start.append(time.perf_counter()))
    frames = [0] * sessions
    ends = [0.0] * sessions
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        pipe = None
        try:
            pipe = _reader_pipeline([files[i % len(files)]], device_id, sequence_length)
            for _ in range(warmup):
                pipe.run()
            barrier.wait(timeout=600)
            stop_at = start[0] + seconds
            n = 0
            while True:
                _, fnum = pipe.run()
                n += _count_valid(fnum)
                now = time.perf_counter()
                if now >= stop_at:
                    break
            frames[i], ends[i] = n, now
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:
            errors.append(e)
            barrier.abort()
        finally:
            del pipe

    threads = [threading.Thread(target=worker, args=(i,), name=f"bench-decode-{i}", daemon=True)
               for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    if errors:
        raise errors[0]
    return sum(frames), max(ends) - start[0]


def measure_decode(
    files: Sequence[Path],
    sessions: Sequence[int],
    seconds: float,
    device: str,
    sequence_length: int = 32,
    codec: str | None = None,
) -> Measurement:
    """The NVDEC decode ceiling: best fps over the ``sessions`` sweep (see module docstring).

    Pipeline ``i`` reads file ``i mod len(files)`` and wraps around at its end.
    """
    sweep: list[dict[str, Any]] = []
    best: Measurement | None = None
    for n in sessions:
        with UtilSampler(device) as sampler:
            frames, secs = _decode_run(files, n, seconds, _device_id(device), sequence_length)
        fps = frames / secs if secs > 0 else 0.0
        util = sampler.stats()
        sweep.append({"sessions": n, "fps": round(fps, 1), "frames": frames, "seconds": round(secs, 3),
                      "util": util.to_dict()})
        log.info("decode %s: %d sessions: %.0f fps (%d frames in %.1f s, NVDEC %s%%)", codec, n, fps, frames, secs,
                 util.nvdec_util_mean)
        if best is None or fps > (best.fps or 0.0):
            best = Measurement("decode", codec, fps=fps, frames=frames, seconds=secs, util=util,
                               extra={"sessions": n})
    assert best is not None, "no session counts to sweep"
    best.extra.update(sweep=sweep, sequence_length=sequence_length,
                      operator="fn.experimental.readers.video(device='gpu', pad_mode='constant')")
    return best


# ---------------------------------------------------------------------------------------
# the pipeline's source: decode + preprocess


def measure_source(
    files: Sequence[Path],
    sessions: int,
    batch: int,
    input_size: tuple[int, int],
    device: str,
    dtype: str = "float16",
    layout: str = "NHWC",
    max_seconds: float | None = None,
    codec: str | None = None,
) -> Measurement:
    """Drain :class:`~pipelines.file_source.FileDecodeSource` over ``files`` (no inference).

    Runs to the end of the files, or ``max_seconds``. GPU work is waited for before the
    clock stops.
    """
    from pipelines.file_source import DecodePlan, FileDecodeSource, FileEvent
    from pipelines.preprocess import PreprocessSpec
    from pipelines.video_decoding import DecodedBatch
    from streams.config import PreprocessConfig
    from streams.sources.files import VideoFile

    on_cuda = device.startswith("cuda")
    plan = DecodePlan(
        spec=PreprocessSpec(dtype=dtype, layout=layout, options=PreprocessConfig()),  # type: ignore[arg-type]
        input_size=input_size, batch=batch, decode_device="gpu" if on_cuda else "cpu",
        device_id=_device_id(device) if on_cuda else None, sessions=sessions,
    )
    videos = [VideoFile(Path(f), f"{i:03d}_{Path(f).stem}") for i, f in enumerate(files)]
    frames, failures, capped = 0, [], False
    marks: list[tuple[float, int]] = []
    with UtilSampler(device) as sampler:
        t0 = time.perf_counter()
        with FileDecodeSource(videos, plan) as source:
            while (item := source.read()) is not None:
                if isinstance(item, FileEvent):
                    if item.kind == "failed" and item.error is not None:
                        failures.append(str(item.error))
                    continue
                assert isinstance(item, DecodedBatch)  # no inference pool: decoded batches
                frames += item.num_valid
                marks.append((time.perf_counter(), frames))
                if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                    capped = True
                    break
            _sync(device)
            secs = time.perf_counter() - t0
    return Measurement("source", codec, fps=frames / secs if secs > 0 else 0.0, frames=frames, seconds=secs,
                       util=sampler.stats(),
                       extra={"sessions": sessions, "batch": batch, "input_size": list(input_size),
                              "dtype": dtype, "layout": layout, "stopped_at_max_seconds": capped,
                              "failures": failures, "steady_fps": rate_between(marks, 0.1 * frames, 0.9 * frames),
                              "first_batch_s": round(marks[0][0] - t0, 2) if marks else None})


def rate_between(marks: Sequence[tuple[float, int]], lo: float, hi: float) -> float | None:
    """Count per second between the first ``(time, count so far)`` marks at >= ``lo`` and >= ``hi``."""
    a = next((m for m in marks if m[1] >= lo), None)
    b = next((m for m in marks if m[1] >= hi), None)
    if a is None or b is None or b[0] <= a[0]:
        return None
    return round((b[1] - a[1]) / (b[0] - a[0]), 1)


# ---------------------------------------------------------------------------------------
# engine ceiling


def job_config(
    sources: Sequence[str | Path],
    sinks: Sequence[Any],
    model: ModelConfig,
    engine: EngineConfig,
    sessions: int = 1,
    tracking: bool = False,
    cascade: bool = False,
) -> JobConfig:
    """A :class:`JobConfig` for the benchmark: decoding where the engine runs.

    ``tracking``: ByteTrack on every source plus the analytics of :data:`TRACKING_ANALYTICS`
    (one line and one zone per source), the cost issue 24 bounds.
    ``cascade``: DeepStream's workload: ByteTrack and two secondary classifiers on every
    detection (:data:`CASCADE_SECONDARIES`).
    """
    from streams.cascade_config import SecondaryConfig

    backend: Literal["cpu", "gpu"] = "cpu" if engine.device == "cpu" else "gpu"
    tracker = from_dict(TrackerConfig, {"type": "bytetrack"}, "tracker") if (tracking or cascade) else None
    return JobConfig(
        sources=[SourceEntry(path=str(s)) for s in sources],
        sinks=list(sinks),
        model=model,
        engine=engine,
        decode=DecodeConfig(backend=backend, sessions=sessions),
        postprocess=PostprocessConfig(),
        tracker=tracker,
        analytics=from_dict(AnalyticsConfig, TRACKING_ANALYTICS, "analytics") if tracking else None,
        secondary=tuple(from_dict(SecondaryConfig, e, f"secondary[{i}]") for i, e in enumerate(CASCADE_SECONDARIES))
        if cascade else (),
    )


def preprocess_job_rate(files: Sequence[Path], expected: int, model: ModelConfig, engine: EngineConfig,
                        sessions: int, out: Path, **preprocess: Any) -> dict[str, Any]:
    """:func:`pipelines.runner.run_job` over ``files`` with the ``preprocess:`` values given
    (``canvas="square"``, ``resize_filter="opencv"``, ...) and a JSONL sink at ``out`` (removed
    afterwards): frames per second, frames, seconds, and whether every frame has its record.
    The A/Bs of one preprocessing option (:mod:`benchmarks.rect_canvas`,
    :mod:`benchmarks.resize_filter`); :func:`measure_e2e` is the bench's full e2e row."""
    from pipelines.runner import run_job
    from streams.sinks import SINKS

    sink = SINKS.parse({"type": "jsonl", "path": str(out)}, "sinks[0]")
    cfg = job_config(files, [sink], model, engine, sessions)
    cfg = replace(cfg, preprocess=replace(cfg.preprocess, **preprocess))
    summary = run_job(cfg, show_progress=False)
    with out.open("rb") as f:
        lines = sum(1 for _ in f)
    out.unlink()
    return {"fps": round(summary.fps, 1), "frames": summary.frames, "seconds": round(summary.seconds, 2),
            "frames_ok": lines == expected == summary.frames and not summary.failures}


#: the bench's ``--cascade`` secondaries: the bundled classifier twice (DeepStream's workload has
#: two secondary classifiers), on every detection of every frame
CASCADE_SECONDARIES: list[dict[str, Any]] = [
    {"name": "secondary_a", "model": "builtin:pattern", "min_size": 8, "reinfer_interval": 0},
    {"name": "secondary_b", "model": "builtin:pattern", "min_size": 8, "reinfer_interval": 0},
]


#: the bench's ``--tracking`` analytics: a line across the middle and a zone over the left half
TRACKING_ANALYTICS: dict[str, Any] = {"sources": {"*": {
    "lines": [{"name": "middle", "points": [[0, 0.5], [1, 0.5]], "normalized": True}],
    "zones": [{"name": "left", "points": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]], "normalized": True}],
}}}


def _engine_input(frames: torch.Tensor, batch: int, dtype: str, layout: str, device: str) -> torch.Tensor:
    """A device-resident batch in the engine's input layout (``NHWC``: physical [N, H, W, C])."""
    reps = math.ceil(batch / frames.shape[0])
    x = frames.repeat(reps, 1, 1, 1)[:batch]
    x = x.to(device=device, dtype=torch.float16 if dtype == "float16" else torch.float32)
    return x.permute(0, 2, 3, 1).contiguous() if layout == "NHWC" else x.contiguous()


def _concurrent(n: int, fn: Any) -> list[Any]:
    """Run ``fn(k)`` in ``n`` threads (inline when ``n == 1``); their results, or the first error."""
    if n == 1:
        return [fn(0)]
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            results[k] = fn(k)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,), name=f"bench-engine-{k}", daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _engine_rate(
    infer: Any, handles: Sequence[int | None], n: int, seconds: float, batch: int, device: str
) -> tuple[float, int, float]:
    """``n`` threads each calling ``infer(k)`` (stream ``handles[k]``): (fps, frames, seconds).

    On CUDA the time is between CUDA events: a start event all ``n`` streams wait on and
    an end event on each stream after its last batch.
    """
    t0 = time.perf_counter()
    for _ in range(3):
        infer(0)
    _sync(device)
    per_call = (time.perf_counter() - t0) / 3
    iters = max(3, int(seconds / max(per_call * n, 1e-6)))  # per thread; n threads share the device

    def loop(k: int) -> None:
        for _ in range(iters):
            infer(k)

    if not device.startswith("cuda"):
        t0 = time.perf_counter()
        _concurrent(n, loop)
        secs = time.perf_counter() - t0
    else:
        torch.cuda.synchronize(device)
        streams = [torch.cuda.ExternalStream(h, device=device) for h in handles[:n]]
        start = torch.cuda.Event(enable_timing=True)
        start.record(streams[0])
        for st in streams[1:]:
            st.wait_event(start)
        _concurrent(n, loop)
        ends = []
        for st in streams:
            e = torch.cuda.Event(enable_timing=True)
            e.record(st)
            ends.append(e)
        for e in ends:
            e.synchronize()
        secs = max(start.elapsed_time(e) for e in ends) / 1000.0
    frames = n * iters * batch
    return frames / secs, frames, secs


def measure_engine(
    model: ModelConfig,
    engine: EngineConfig,
    device: str,
    frames: torch.Tensor,
    source_size: tuple[int, int],
    seconds: float,
    streams: Sequence[int] = (1,),
) -> Measurement:
    """The engine ceiling; ``frames``: float ``[F, 3, H, W]`` letterboxed frames in [0, 1].

    For each count ``n`` in ``streams``, ``n`` threads each feed their own buffer on their
    own CUDA stream, as the pipeline's decode sessions do; ``fps`` is the best.
    ``extra["with_postprocess_fps"]`` is the job's ``InferenceStage.process`` (engine +
    postprocess, its host syncs included) in as many threads. ``source_size`` is
    ``(width, height)`` of the source frames (for the postprocess geometry).
    """
    from operators.boxes import letterbox_geometry
    from pipelines.graph import open_inference_stage, prepare_inference
    from pipelines.video_decoding import DecodedBatch
    from streams.frames import FrameMeta
    from streams.sources.files import VideoFile

    cfg = job_config([], [], model, engine)
    on_cuda = device.startswith("cuda")
    counts = sorted({max(1, s) for s in streams}) if on_cuda else [1]
    budget = seconds / (len(counts) + 1)
    by_streams: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        stage = open_inference_stage(cfg, device, stack)
        eng = stage.engine
        batch = min(engine.batch_size, eng.max_batch_size or engine.batch_size)
        h, w = stage.info.input_size
        layout, dtype = eng.input_layout, eng.input_dtype
        log.info("engine: %s on %s, %s %s, batch %d, streams %s", type(eng).__name__, device, dtype, layout, batch,
                 counts)
        # as the job does: one stream per thread, graphs captured on them, warmed up, before the clock
        cuda_streams = prepare_inference(stage, batch, max(counts)) if on_cuda else []
        handles: list[int | None] = [s.cuda_stream for s in cuda_streams] if on_cuda else [None]
        bufs = [_engine_input(frames, batch, dtype, layout, device) for _ in handles]

        def infer(k: int) -> None:
            stage.operator(bufs[k], layout, handles[k])

        with UtilSampler(device) as sampler:
            if not on_cuda:  # on CUDA prepare_inference has warmed every stream up
                for _ in range(3):
                    infer(0)
            _sync(device)
            best = (0.0, 0, 0.0)
            for n in counts:
                fps, done, secs = _engine_rate(infer, handles, n, budget, batch, device)
                by_streams[str(n)] = round(fps, 1)
                log.info("engine: %d stream(s): %.0f fps (%d frames in %.2f s)", n, fps, done, secs)
                if fps > best[0]:
                    best = (fps, done, secs)
            engine_util = sampler.stats()

        # the job's InferenceStage.process in every inference thread: engine + postprocess, host syncs included
        src_w, src_h = source_size
        geom = letterbox_geometry(src_w, src_h, w, h)
        video = VideoFile(Path("engine-bench"), "engine-bench")
        rows: list[FrameMeta | None] = [FrameMeta("engine-bench", "engine-bench", i, i, (1, 30), src_w, src_h)
                                        for i in range(batch)]
        batches = [DecodedBatch(b, layout, rows, geom, hd, video) for b, hd in zip(bufs, handles, strict=True)]
        for b in batches:
            stage.process(b)  # warm-up
        stop_at = time.perf_counter() + budget

        def process(k: int) -> tuple[int, int, float]:
            n_frames = n_dets = 0
            while True:
                results = stage.process(batches[k])
                n_frames += len(results)
                n_dets += sum(len(r.detections) for r in results)
                now = time.perf_counter()
                if now >= stop_at:
                    return n_frames, n_dets, now

        t0 = time.perf_counter()
        done_pp = _concurrent(len(batches), process)
        pp_frames = sum(r[0] for r in done_pp)
        pp_secs = max(r[2] for r in done_pp) - t0
    extra = {
        "engine": type(eng).__name__, "precision": engine.precision,
        "cuda_graphs": bool(getattr(eng, "cuda_graphs_active", False)),  # as run, not as configured
        "batch": batch, "input_size": [h, w], "input_dtype": dtype, "input_layout": layout,
        "fps_by_streams": by_streams, "with_postprocess_fps": round(pp_frames / pp_secs, 1),
        "with_postprocess_streams": len(batches),
        "detections_per_frame": round(sum(r[1] for r in done_pp) / max(1, pp_frames), 2),
        "timing": "CUDA events" if on_cuda else "wall clock",
    }
    log.info("engine + postprocess (%d threads): %.0f fps, %.1f detections/frame", len(batches),
             extra["with_postprocess_fps"], extra["detections_per_frame"])
    return Measurement("engine", None, fps=best[0], frames=best[1], seconds=best[2], util=engine_util, extra=extra)


# ---------------------------------------------------------------------------------------
# end to end


class _LogWatch(logging.Handler):
    """Collects warnings from Fovea's modules during a run (frame-count mismatches, graphs off)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in ("pipelines", "engines", "operators", "streams", "fovea"):
            self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:300])

    @contextlib.contextmanager
    def attached(self) -> Iterator[_LogWatch]:
        root = logging.getLogger()
        root.addHandler(self)
        try:
            yield self
        finally:
            root.removeHandler(self)


class _LineCounter:
    """Counts the lines of a growing file from a thread, with (time, lines) samples."""

    def __init__(self, path: Path, interval: float = 0.05) -> None:
        self.path = path
        self.interval = interval
        self.lines = 0  # frame records (event records, written after their frame's, are counted apart)
        self.events = 0
        self.samples: list[tuple[float, int]] = []
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-jsonl-counter", daemon=True)

    def __enter__(self) -> _LineCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()  # whatever was written last

    def _poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        complete = data.rfind(b"\n") + 1  # whole lines only; the rest is read next time
        self._offset += complete
        events = data.count(b'\n{"event"', 0, complete) + data.startswith(b'{"event"')
        self.events += events
        self.lines += data.count(b"\n", 0, complete) - events
        self.samples.append((time.perf_counter(), self.lines))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def time_at(self, lines: int, t0: float) -> float | None:
        """Seconds after ``t0`` (a ``perf_counter`` time) when the file first held ``lines`` lines."""
        hit = next((s for s in self.samples if s[1] >= lines), None)
        return None if hit is None else round(hit[0] - t0, 2)

    def rate_between(self, lo: float, hi: float) -> float | None:
        """Lines per second between the first samples at >= ``lo`` and >= ``hi`` lines."""
        return rate_between(self.samples, lo, hi)


def _span(values: Iterable[float]) -> list[float]:
    v = list(values)
    return [round(min(v), 2), round(max(v), 2)]


def measure_e2e(
    files: Sequence[Path],
    expected_frames: int,
    model: ModelConfig,
    engine: EngineConfig,
    device: str,
    sessions: int,
    codec: str | None = None,
    work_dir: str | Path | None = None,
    profile: bool = False,
    tracking: bool = False,
    cascade: bool = False,
    manifest: bool = False,
) -> Measurement:
    """``run_job`` over ``files`` with a JSONL sink; checks every frame has its record.

    ``cascade``: with a tracker and the secondaries of :data:`CASCADE_SECONDARIES`.

    ``tracking``: with a tracker, one line and one zone per source (:func:`job_config`);
    event records in the JSONL are counted apart (``extra["events"]``).

    ``manifest``: as ``fovea run``: a manifest beside the JSONL, so the job is resumable and
    each file's records reach the sink in frame order.

    ``profile``: under ``torch.profiler``; ``extra["gpu_time"]`` then says where the GPU's
    time went (:func:`benchmarks.gputime.gpu_time_breakdown`).

    ``fps`` is ``summary.frames / summary.seconds`` (from the first decode to the last
    sink write; engine loading excluded, ``extra["wall_seconds"]`` includes it).
    ``extra["steady_fps"]`` is the rate records reached the sink between 10 % and 90 % of
    the frames: without start-up (probing, pipeline builds, graph captures) and the tail
    (sessions running out of files at different times).
    """
    from pipelines.runner import run_job
    from streams.sinks import SINKS

    with tempfile.TemporaryDirectory(prefix="fovea-bench-", dir=work_dir) as tmp:
        out = Path(tmp) / "detections.jsonl"
        sink = SINKS.parse({"type": "jsonl", "path": str(out)}, "sinks[0]")
        cfg = job_config(files, [sink], model, engine, sessions, tracking=tracking, cascade=cascade)
        prof: Any = contextlib.nullcontext()
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            prof = torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        with UtilSampler(device) as sampler, _LogWatch().attached() as watch, _LineCounter(out) as counter, \
                prof as p:
            t0 = time.perf_counter()
            summary = run_job(cfg, show_progress=False, manifest=manifest)
            wall = time.perf_counter() - t0
        gpu_time = None
        if profile:
            from benchmarks.gputime import gpu_time_breakdown

            trace = Path(tmp) / "trace.json"
            p.export_chrome_trace(str(trace))
            gpu_time = gpu_time_breakdown(trace)
            log.info("e2e %s GPU time: %s", codec, json.dumps(gpu_time))
        lines = counter.lines
        size = out.stat().st_size if out.exists() else 0
    ok = lines == expected_frames == summary.frames and not summary.failures
    if not ok:
        log.warning("e2e %s: %d JSONL records, %d frames processed, %d expected, %d failed files", codec, lines,
                    summary.frames, expected_frames, len(summary.failures))
    graphs_off = any("CUDA graphs disabled" in m or "CUDA graphs off" in m for m in watch.messages)
    extra = {
        "sessions": sessions, "batch": engine.batch_size, "precision": engine.precision,
        "expected_frames": expected_frames, "jsonl_records": lines, "jsonl_bytes": size, "frames_ok": ok,
        "tracking": tracking, "cascade": cascade, "manifest": manifest, "events": counter.events,
        "stages": summary.stages if cascade else {},
        "files": len(files), "failures": [f"{f.name}: {f.reason}" for f in summary.failures],
        "decoders": summary.decoders, "engine": summary.engine,
        "detections_per_frame": round(summary.detections / summary.frames, 2) if summary.frames else 0.0,
        "wall_seconds": round(wall, 3), "cuda_graphs_disabled": graphs_off, "warnings": watch.messages[:20],
        "steady_fps": counter.rate_between(0.1 * expected_frames, 0.9 * expected_frames),
        "streams": engine.inference_threads,
        # the decode sessions: [min, max] of their first batch and finish (s after decoding started), frames
        **({"session_first_batch_s": _span(x[0] for x in summary.sessions),
            "session_finished_s": _span(x[1] for x in summary.sessions),
            "session_frames": _span(x[2] for x in summary.sessions)} if summary.sessions else {}),
        **({"gpu_time": gpu_time, "profiled": True} if gpu_time is not None else {}),
        # seconds after the job started at which the JSONL held 1 / 10 / 50 / 90 / 100 % of the frames
        "timeline_s": {f"{int(q * 100)}%": counter.time_at(max(1, int(q * expected_frames)), t0)
                       for q in (0.0, 0.1, 0.5, 0.9, 1.0)},
    }
    return Measurement("e2e", codec, fps=summary.fps, frames=summary.frames, seconds=summary.seconds,
                       util=sampler.stats(), extra=extra)
