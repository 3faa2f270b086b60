"""``fovea bench``: the throughput benchmark's command line (also ``python -m benchmarks``).

``fovea``'s CLI discovers :func:`add_parser`. Exit codes as ``fovea``'s: 0 done (targets
are reported, not enforced, unless ``--check``), 1 a measurement failed or ``--check``
found a target missed, 2 bad arguments.

Usage::

    fovea bench --out bench-out                              # both codecs, all measurements
    fovea bench --codec h264 --seconds 6 --job-seconds 15 --sessions 7,10,14 --out bench-out
    fovea bench --source my_videos/ --out bench-out          # the user's files instead of generated clips
    fovea bench --quick --device cpu --out /tmp/b            # smoke test (tiny clips; GPU-only parts skipped)
    python -m benchmarks.report bench-out/bench.json         # re-render bench.md/bench.png
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.cli import EXIT_FAILED_INPUTS, EXIT_OK
from streams.errors import ConfigError

if TYPE_CHECKING:
    from benchmarks.harness import BenchConfig  # imports torch: only when the command runs
    from benchmarks.results import BenchResults

log = logging.getLogger(__name__)

HELP = """\
Measure Fovea's throughput against its ceilings and what users would write otherwise, on
1080p H.264/HEVC clips generated once (cached in --clips) or on your own files (--source):

  decode       NVDEC decode ceiling: DALI's reader alone, best over a sweep of sessions
  source       the pipeline's decode + preprocess, no inference
  engine       engine ceiling on device-resident batches (CUDA events, CUDA graphs)
  e2e          Fovea end to end (run_job, JSONL sink, every frame checked)
  pyav_fp32    baseline: PyAV CPU decode + eager torch FP32
  pyav_fp16    baseline: PyAV CPU decode + eager torch FP16
  dali_legacy  baseline: DALI fn.readers.video + eager torch FP16

Writes bench.json (raw figures, environment), bench.md (tables, ratios, pass/fail against
e2e >= 0.90 x min(decode, engine) and e2e >= 10 x PyAV+FP32) and bench.png into --out;
prints the Markdown at the end. GPU/NVDEC utilisation needs nvidia-ml-py, the chart
matplotlib (both optional).
"""


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or any(v < 1 or v > 64 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers in 1..64, got {text!r}")
    return values


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts if p.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from e
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or any(v <= 0 or v % 32 for v in values):
        raise argparse.ArgumentTypeError(f"expected N or HxW, multiples of 32, got {text!r}")
    return values[0], values[1]


def _skip(text: str) -> frozenset[str]:
    return frozenset(v.strip().replace("-", "_") for v in text.split(",") if v.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``bench`` options (shared by ``fovea bench`` and ``python -m benchmarks``)."""
    p.add_argument("--codec", choices=["h264", "hevc", "both"], default="both", help="which clips (default both)")
    p.add_argument("--files", type=int, metavar="N", help="generated clips per codec (default 6; quick 2)")
    p.add_argument("--seconds", type=float, metavar="S",
                   help="time budget of the ceilings and baselines (default 12; quick 2); the source measurement "
                        "stops after 3 x S")
    p.add_argument("--job-seconds", type=float, metavar="S",
                   help="sizes the end-to-end job: the looped workload holds about --expect-fps x S frames "
                        "(default 60: a sustained run; its start-up and tail are reported apart; quick 2)")
    p.add_argument("--sessions", type=_int_list, metavar="LIST",
                   help="decode sessions to sweep, e.g. 1,7,10,14 (default; quick 1)")
    p.add_argument("--e2e-sessions", type=int, metavar="N",
                   help="decode sessions of the end-to-end run (default: the sweep's best)")
    p.add_argument("--streams", type=int, default=2, metavar="N",
                   help="inference threads (one CUDA stream each) of the end-to-end run (default 2)")
    p.add_argument("--batch", type=int, metavar="B",
                   help="engine batch = frames per decoded sequence (default 64; quick 8)")
    p.add_argument("--model", default="yolov8n",
                   help="yolov8n (built here, random weights; default), default (the bundled detector) or a "
                        ".pt/.pt2/.onnx file")
    p.add_argument("--input-size", type=_size, metavar="HxW", help="model input (default 640x640; quick 128x128)")
    p.add_argument("--precision", choices=["fp16", "fp32", "int8"], default="fp16",
                   help="engine precision for engine/e2e (default fp16; int8 needs a TensorRT engine)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--source", action="append", metavar="PATH",
                   help="your video files (file, glob, folder or @list.txt; repeatable) instead of generated clips")
    p.add_argument("--clips", type=Path, metavar="DIR",
                   help="cache of generated clips, reused when present (default ~/.cache/fovea/bench-clips)")
    p.add_argument("--out", "-o", type=Path, default=Path("bench-out"),
                   help="folder for bench.json, bench.md, bench.png (default bench-out)")
    p.add_argument("--skip", type=_skip, default=frozenset(), metavar="LIST",
                   help="measurements to leave out, e.g. dali_legacy,pyav_fp16")
    p.add_argument("--expect-fps", type=float, default=6000.0, metavar="FPS",
                   help="sizes the looped workload (default 6000; end to end runs at 4,000-6,000 fps on an H200, "
                        "so the job lasts 1-1.5 x --job-seconds there)")
    p.add_argument("--jobs", type=int, metavar="N", help="parallel clip encoders (default: cores / 4)")
    p.add_argument("--quick", action="store_true",
                   help="tiny clips, 1 session, short budgets: a smoke test that runs on a CPU too")
    p.add_argument("--check", action="store_true", help="exit 1 unless every target is met")
    p.add_argument("--tracking", action="store_true",
                   help="end to end with ByteTrack, one line and one zone on every source (needs the tracking "
                        "extra): the cost of tracking and analytics, against a run without")
    p.add_argument("--cascade", action="store_true",
                   help="end to end with ByteTrack and two secondary classifiers (the bundled one) on every "
                        "detection: DeepStream's workload, against a run without")
    p.add_argument("--manifest", action="store_true",
                   help="end to end as fovea run runs a job: a manifest beside the JSONL (resumable) and each "
                        "file's records in frame order; the cost of that, against a run without")
    p.add_argument("--profile", action="store_true",
                   help="run the end-to-end measurement under torch.profiler and report where the GPU's time "
                        "goes (slower: for the shares, not the fps)")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fovea bench`` to ``fovea``'s subcommands."""
    p = subparsers.add_parser("bench", help="throughput benchmark (ceilings, end to end, baselines)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_bench)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`benchmarks.harness.BenchConfig` of parsed arguments."""
    from benchmarks.clips import CODECS
    from benchmarks.harness import BenchConfig

    for name in ("files", "batch", "e2e_sessions", "jobs"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')}", f"expected >= 1, got {v}")
    for name in ("seconds", "job_seconds"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise ConfigError(f"--{name.replace('_', '-')}", f"expected > 0, got {v}")
    return BenchConfig(
        out=args.out, codecs=CODECS if args.codec == "both" else (args.codec,), files=args.files,
        seconds=args.seconds, job_seconds=args.job_seconds, sessions=args.sessions, batch=args.batch,
        model=args.model,
        input_size=args.input_size, clips_dir=args.clips, quick=args.quick, skip=args.skip, device=args.device,
        profile=args.profile, tracking=args.tracking, cascade=args.cascade, manifest=args.manifest,
        sources=tuple(args.source or ()), e2e_sessions=args.e2e_sessions, streams=args.streams,
        expect_fps=args.expect_fps,
        precision=args.precision, jobs=args.jobs,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, write the report, print the Markdown; returns the exit code."""
    from benchmarks.harness import run_bench
    from benchmarks.report import targets_met, to_markdown, write_json, write_report

    cfg = config_from_args(args)
    out = cfg.out
    def save(partial: BenchResults) -> None:  # after each measurement: an interrupted run keeps its figures
        write_json(partial, out / "bench.json")

    results = run_bench(cfg, on_update=save)
    paths = write_report(results, out)
    log.info("report: %s", ", ".join(str(p) for p in paths.values()))
    sys.stdout.write(to_markdown(results) + "\n")
    if results.errors:
        log.error("%d measurement(s) failed: %s", len(results.errors),
                  ", ".join(f"{m.name}/{m.codec or 'all'}" for m in results.errors))
        return EXIT_FAILED_INPUTS
    if args.check and not targets_met(results):
        log.error("--check: a target is not met (see %s)", paths["md"])
        return EXIT_FAILED_INPUTS
    return EXIT_OK
