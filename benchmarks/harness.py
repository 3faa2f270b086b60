"""Orchestration of ``fovea bench``: inputs, model, every measurement, in a fixed order.

1. Inputs: generated clips per codec (:mod:`benchmarks.clips`, cached) or the user's files
   grouped by codec; each codec's set is looped (remuxed) to about
   ``expect_fps x job_seconds`` frames so the end-to-end job lasts about ``job_seconds``
   (60 by default: a sustained run, as throughput benchmarks run, e.g. MLPerf Inference's
   offline scenario runs at least 600 s; the job's fixed start-up and tail are reported
   apart, in seconds, so shorter jobs can be judged too).
2. The model: YOLOv8n built here (random weights calibrated on the clips' frames, BN
   folded) and saved as a ``torch.export`` program (``.pt2``, which the torch engine can
   ``torch.compile``), so the engine is opened by
   :func:`engines.factory.open_engine` exactly as ``fovea run`` would; or ``default``
   (the bundled detector) or a model file.
3. The engine ceiling (once: it does not depend on the codec), then per codec: the
   decode sweep, the pipeline source, end to end (with the sweep's best session count)
   and the three baselines.

Every measurement is guarded: a failure is recorded with its reason and the run goes on;
GPU-only measurements on the CPU are recorded as skipped with the reason. ``on_update``
is called after each (the CLI rewrites ``bench.json`` then, so an interrupted run keeps
what it measured).

Usage::

    results = run_bench(BenchConfig(out=Path("bench-out"), quick=True, device="cpu"))
    results.get("e2e", "h264").fps
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.clips import CODECS, build_workload, default_specs, describe_clip, ensure_clips, user_clips
from benchmarks.results import BASELINES, LABELS, NAMES, BenchResults, Measurement
from streams.config import EngineConfig, ModelConfig
from streams.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CLIPS_DIR = Path("~/.cache/fovea/bench-clips")
REPO_ROOT = Path(__file__).resolve().parents[1]
_NEEDS_GPU = {
    "decode": "needs a CUDA GPU: NVDEC decoding (DALI's CPU reader has no H.264/HEVC)",
    "source": "needs a CUDA GPU: the pipeline's NVDEC source",
    "pyav_fp16": "needs a CUDA GPU: FP16 eager inference",
    "dali_legacy": "needs a CUDA GPU: fn.readers.video is GPU-only",
}


@dataclass(frozen=True)
class BenchConfig:
    """What to run; ``None`` fields take the defaults of :meth:`resolved` (smaller with ``quick``)."""

    out: Path
    codecs: tuple[str, ...] = CODECS
    files: int | None = None  # generated clips per codec: 6 (quick: 2)
    seconds: float | None = None  # budget of the ceilings and baselines: 12 (quick: 2)
    job_seconds: float | None = None  # sizes the end-to-end workload: 60 (quick: 2)
    sessions: tuple[int, ...] | None = None  # decode sweep: 1, 7, 10, 14 (quick: 1)
    batch: int | None = None  # engine batch: 64, the best end to end on the H200 (quick: 8)
    model: str = "yolov8n"  # yolov8n | default | a model file
    input_size: tuple[int, int] | None = None  # (H, W): 640x640 (quick: 128x128)
    clips_dir: Path | None = None
    quick: bool = False
    skip: frozenset[str] = frozenset()
    device: str = "auto"
    sources: tuple[str, ...] = ()  # user files instead of generated clips
    e2e_sessions: int | None = None  # default: the decode sweep's best
    expect_fps: float = 6000.0  # sizes the looped workload
    sequence_length: int = 32  # decode-ceiling reader
    precision: str = "fp16"
    jobs: int | None = None  # clip encoder processes
    streams: int = 2  # inference threads of the end-to-end run (engine.inference_threads)
    profile: bool = False  # e2e under torch.profiler: GPU time per stream class (benchmarks.gputime)
    tracking: bool = False  # e2e with a tracker, one line and one zone per source (issue 24's cost)
    cascade: bool = False  # e2e with a tracker and two secondary classifiers (issue 25's workload)
    manifest: bool = False  # e2e as fovea run: a manifest, each file's records in frame order

    def resolved(self) -> BenchConfig:
        q = self.quick
        unknown = set(self.skip) - set(NAMES)
        if unknown:
            raise ConfigError("--skip", f"unknown measurement(s) {sorted(unknown)}; expected {list(NAMES)}")
        bad = [c for c in self.codecs if c not in CODECS]
        if bad and not self.sources:
            raise ConfigError("--codec", f"generated clips are {list(CODECS)}, got {bad}")
        return replace(
            self,
            files=self.files or (2 if q else 6),
            seconds=self.seconds or (2.0 if q else 12.0),
            job_seconds=self.job_seconds or (2.0 if q else 60.0),
            sessions=self.sessions or ((1,) if q else (1, 7, 10, 14)),
            batch=self.batch or (8 if q else 64),
            input_size=self.input_size or (None if self.model == "default" else ((128, 128) if q else (640, 640))),
            clips_dir=Path(self.clips_dir or DEFAULT_CLIPS_DIR).expanduser(),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"], d["clips_dir"] = str(self.out), str(self.clips_dir) if self.clips_dir else None
        d["skip"] = sorted(self.skip)
        return d


@dataclass
class ModelBundle:
    """The model as the pipeline opens it (``config``) and as the baselines run it (``eager``)."""

    config: ModelConfig
    eager: nn.Module | None
    layout: str
    input_size: tuple[int, int]
    description: str
    class_names: tuple[str, ...] = field(default_factory=tuple)


def environment(device: str) -> dict[str, Any]:
    """Versions, GPU, commit, date and command line, for the report."""
    from benchmarks.sampler import gpu_environment, nvml_init, nvml_unavailable_reason

    env: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": device,
    }
    for key, mod in (("dali", "nvidia.dali"), ("pyav", "av"), ("numpy", "numpy")):
        try:
            env[key] = getattr(__import__(mod, fromlist=["__version__"]), "__version__", None)
        except ImportError:
            env[key] = None
    try:
        if os.environ.get("FOVEA_COMMIT"):  # a copy of the tree whose .git is stale or absent
            raise OSError("FOVEA_COMMIT is set")
        env["commit"] = _git("rev-parse", "HEAD")
        env["dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError) as e:
        # a copy of the tree without .git (e.g. on a lent GPU machine): FOVEA_COMMIT names it
        env["commit"] = os.environ.get("FOVEA_COMMIT")
        env["dirty"] = bool(os.environ.get("FOVEA_DIRTY"))
        log.debug("git: %s", e)
    env["nvml"] = "available" if nvml_init() else nvml_unavailable_reason()
    if device.startswith("cuda"):
        env["gpu_name"] = torch.cuda.get_device_name(device)
        env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        env.update(gpu_environment(device))
    return env


def _git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True)
    return r.stdout.strip()


def prepare_model(cfg: BenchConfig, sample: torch.Tensor | None, work_dir: Path) -> ModelBundle:
    """Build/load the benchmark model; ``sample``: letterboxed frames to calibrate YOLOv8n with."""
    from benchmarks.yolov8n import build_yolov8n, calibrate, export_program, fuse

    if cfg.model == "yolov8n":
        assert cfg.input_size is not None
        h, w = cfg.input_size
        net = build_yolov8n(input_size=(h, w))
        if sample is not None:
            calibrate(net, sample)
        fuse(net)
        path = export_program(net, work_dir / f"yolov8n_{h}x{w}.pt2")
        return ModelBundle(ModelConfig(path=str(path), layout="yolov8", input_size=(h, w)), net, "yolov8", (h, w),
                           f"YOLOv8n architecture (random weights, calibrated; BN folded), .pt2, {h}x{w}")
    if cfg.model == "default":
        from engines.detector.model import load_default_detector

        det, info = load_default_detector("cpu")
        size = cfg.input_size or info.input_size
        return ModelBundle(ModelConfig(path="default", layout="yolov8", input_size=size), det, "yolov8", size,
                           f"bundled detector, {size[0]}x{size[1]}", tuple(info.class_names))
    p = Path(cfg.model).expanduser()
    if not p.is_file():
        raise ConfigError("--model", f"expected yolov8n, default or a model file; {cfg.model!r} does not exist")
    size = cfg.input_size or (640, 640)
    eager: nn.Module | None = None
    if p.suffix.lower() in (".pt", ".pth", ".torchscript"):
        eager = torch.jit.load(str(p), map_location="cpu")
    elif p.suffix.lower() == ".pt2":
        eager = torch.export.load(str(p)).module()
    layout = _eager_layout(eager, size) if eager is not None else "auto"
    return ModelBundle(ModelConfig(path=str(p), input_size=size), eager, layout, size, f"{p.name}, {size[0]}x{size[1]}")


def _eager_layout(model: nn.Module, size: tuple[int, int]) -> str:
    from engines.torch_engine import eval_mode
    from operators.output_decoding import detect_layout

    with torch.inference_mode():
        out = eval_mode(model)(torch.zeros(1, 3, *size))
    outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    return detect_layout([tuple(o.shape) for o in outs], [f"output{i}" for i in range(len(outs))])


def _inputs(cfg: BenchConfig) -> dict[str, list[Path]]:
    assert cfg.clips_dir is not None and cfg.files is not None
    if cfg.sources:
        groups = user_clips(cfg.sources)
        if not groups:
            raise ConfigError("--source", "no readable video files")
        if set(cfg.codecs) != set(CODECS):
            groups = {c: v for c, v in groups.items() if c in cfg.codecs}
        return groups
    specs = {c: default_specs(c, cfg.files, cfg.quick) for c in cfg.codecs}  # type: ignore[arg-type]
    flat = [s for c in cfg.codecs for s in specs[c]]
    paths = ensure_clips(flat, cfg.clips_dir, cfg.jobs)
    out: dict[str, list[Path]] = {}
    for s, p in zip(flat, paths, strict=True):
        out.setdefault(s.codec, []).append(p)
    return out


def _workload(
    cfg: BenchConfig, base: list[Path], clips: list[dict[str, Any]], count: int
) -> tuple[list[Path], int, int]:
    """The files every measurement of a codec reads: (files longest first, frames, loops).

    ``count`` files at least (two per decode session: each session has its own and the
    shared queue balances their lengths), each clip looped so that the set holds about
    ``expect_fps x job_seconds`` frames. User files too long for that are not all used.
    """
    from streams.sources.probe import probe_video

    assert cfg.job_seconds is not None and cfg.clips_dir is not None
    target = cfg.expect_fps * cfg.job_seconds
    count = max(len(base), count)
    clip_frames = [int(c["frames"]) for c in clips]
    per_loop = sum(clip_frames[j % len(base)] for j in range(count))
    loops = 1 if cfg.quick else max(1, round(target / per_loop))
    counts: dict[Path, int] = {}
    for f in build_workload(base, loops, cfg.clips_dir / "looped", count):
        counts[f] = probe_video(f).num_frames
        if not cfg.quick and loops == 1 and sum(counts.values()) >= 2 * target:
            log.warning("workload: using %d of the files (%d frames): about %.0f are enough", len(counts),
                        sum(counts.values()), target)
            break
    files = sorted(counts, key=lambda f: -counts[f])  # longest first: a short tail
    return files, sum(counts.values()), loops


def run_bench(cfg: BenchConfig, on_update: Callable[[BenchResults], None] | None = None) -> BenchResults:
    """Run every measurement of ``cfg``; see the module docstring."""
    from benchmarks.baselines import measure_dali_legacy, measure_pyav, sample_frames
    from benchmarks.measure import measure_decode, measure_e2e, measure_engine, measure_source
    from engines.factory import resolve_device

    cfg = cfg.resolved()
    assert cfg.seconds is not None and cfg.sessions is not None and cfg.batch is not None
    assert cfg.clips_dir is not None
    device = resolve_device(cfg.device)
    on_cuda = device.startswith("cuda")
    results = BenchResults(environment=environment(device), config={**cfg.to_dict(), "device": device})
    update = on_update or (lambda r: None)
    seconds, batch = cfg.seconds, cfg.batch

    def guard(name: str, codec: str | None, fn: Callable[[], Measurement], gpu_only: bool = False,
              reason: str | None = None) -> Measurement:
        if name in cfg.skip:
            m = Measurement.skip(name, codec, "skipped by --skip")
        elif gpu_only and not on_cuda:
            m = Measurement.skip(name, codec, _NEEDS_GPU[name])
        elif reason is not None:
            m = Measurement.skip(name, codec, reason)
        else:
            log.info("--- %s%s", LABELS.get(name, name), f" ({codec})" if codec else "")
            try:
                m = fn()
            except Exception as e:  # record and go on with the other measurements
                log.exception("%s%s failed", name, f" ({codec})" if codec else "")
                m = Measurement(name, codec, error=f"{type(e).__name__}: {str(e).strip()[:400]}")
            finally:
                gc.collect()
                if on_cuda:
                    torch.cuda.empty_cache()
        if m.ok:
            log.info("%s%s: %.1f fps (%d frames in %.2f s)", name, f" ({codec})" if codec else "", m.fps or 0.0,
                     m.frames, m.seconds)
        elif m.skipped:
            log.info("%s%s skipped: %s", name, f" ({codec})" if codec else "", m.skipped)
        results.add(m)
        update(results)
        return m

    groups = _inputs(cfg)
    for codec, paths in groups.items():
        results.clips[codec] = [describe_clip(p).to_dict() for p in paths]
    update(results)
    first = next(iter(groups.values()))[0]
    with tempfile.TemporaryDirectory(prefix="fovea-bench-") as tmp:
        size = cfg.input_size or (640, 640)
        frames, src_size = sample_frames(first, min(batch, 8), size)
        model = prepare_model(cfg, frames, Path(tmp))
        if model.input_size != size:
            frames, src_size = sample_frames(first, min(batch, 8), model.input_size)
        results.config["model_description"] = model.description
        results.config["input_size"] = list(model.input_size)
        precision = cfg.precision if on_cuda else "fp32"
        results.config["precision"] = precision
        engine_cfg = EngineConfig(kind="auto", device=device, precision=precision, inference_threads=cfg.streams,  # type: ignore[arg-type]
                                  batch_size=batch, cuda_graphs=True)
        concurrency = cfg.e2e_sessions or max(cfg.sessions)
        engine = guard("engine", None, lambda: measure_engine(model.config, engine_cfg, device, frames, src_size,
                                                              seconds, streams=(1, concurrency)))
        dtype = engine.extra.get("input_dtype", "float16" if on_cuda else "float32")
        layout = engine.extra.get("input_layout", "NHWC" if on_cuda else "NCHW")
        no_eager = f"{model.description}: not a torch module, no eager baseline"

        for codec, base in groups.items():
            files, expected, loops = _workload(cfg, base, results.clips[codec], 2 * concurrency if on_cuda else 1)
            results.workload[codec] = {"files": [str(f) for f in files], "loops": loops, "frames": expected}
            log.info("=== %s: %d files, %d frames (%d clips, looped x%d)", codec, len(files), expected, len(base),
                     loops)
            decode = guard("decode", codec, partial(measure_decode, files, cfg.sessions, seconds, device,
                                                    cfg.sequence_length, codec), gpu_only=True)
            sessions = cfg.e2e_sessions or (int(decode.extra["sessions"]) if decode.ok else
                                            (max(cfg.sessions) if on_cuda else 1))
            guard("source", codec, partial(measure_source, files, sessions, batch, model.input_size, device, dtype,
                                           layout, max_seconds=3 * seconds, codec=codec), gpu_only=True)
            guard("e2e", codec, partial(measure_e2e, files, expected, model.config, engine_cfg, device, sessions,
                                        codec, tmp, profile=cfg.profile and on_cuda, tracking=cfg.tracking,
                                        cascade=cfg.cascade, manifest=cfg.manifest))
            eager = model.eager
            if eager is None:  # an ONNX model: nothing for torch eager to run
                for name in BASELINES:
                    guard(name, codec, partial(Measurement.skip, name, codec, ""), reason=no_eager)
                continue
            common = (batch, seconds, model.input_size)
            guard("pyav_fp32", codec, partial(measure_pyav, files, eager, model.layout, device, "fp32", *common,
                                              class_names=model.class_names, codec=codec))
            guard("pyav_fp16", codec, partial(measure_pyav, files, eager, model.layout, device, "fp16", *common,
                                              class_names=model.class_names, codec=codec), gpu_only=True)
            guard("dali_legacy", codec, partial(measure_dali_legacy, files, eager, model.layout, device, *common,
                                                class_names=model.class_names, codec=codec), gpu_only=True)
    return results

