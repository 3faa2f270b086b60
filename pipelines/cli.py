"""The ``fovea`` command line.

Exit codes: 0 success; 1 some inputs failed (reported, the rest processed);
2 bad configuration or arguments; 3 a required package is missing; 4 engine error;
130 interrupted.

Usage::

    fovea run job.yaml                         # a config file
    fovea run --source videos/ --out results/  # flags alone (defaults for the rest)
    fovea run job.yaml --device cpu --model yolov8n.onnx
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from streams.errors import ConfigError, EngineError, FoveaError, MissingDependencyError

log = logging.getLogger("fovea")

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_CONFIG, EXIT_MISSING_DEP, EXIT_ENGINE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

RUN_HELP = """\
Run a batch job over video files: decode (NVDEC on a GPU, else the CPU), preprocess,
infer, postprocess, and write per-frame detections to the configured sinks.

CONFIG is a YAML file (see examples/job.yaml); flags override its common fields, and
without CONFIG the defaults apply (bundled detector, JSONL + CSV under --out).
Progress (files done, frames/s, ETA) goes to stderr; a summary is printed at the end.
Failed files are listed with their reason and make the exit code 1.
"""


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="process video files (batch job)", description=RUN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="job YAML file (optional with --source)")
    p.add_argument("--source", "-s", action="append", metavar="PATH",
                   help="video file, glob ('clips/*.mp4'), directory (recursive) or @list.txt; "
                        "repeatable; replaces the config's sources")
    p.add_argument("--model", "-m", metavar="FILE",
                   help="model: 'default' (bundled detector), an ONNX file or a TorchScript/.pt2 file")
    p.add_argument("--out", "-o", metavar="DIR",
                   help="output folder: the config's file sinks write there (default sinks: "
                        "detections.jsonl and detections.csv)")
    p.add_argument("--device", "-d", metavar="DEV",
                   help="auto (GPU when present), cpu, cuda or cuda:N: engine and decoding")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=_cmd_run)


def _sources_from_flags(values: Sequence[str] | None) -> list[object] | None:
    if not values:
        return None
    return [{"list": v[1:]} if v.startswith("@") else v for v in values]


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.runner import run_job
    from streams.config import load_config

    if args.config is None and not args.source:
        raise ConfigError("sources", "give a CONFIG file or at least one --source")
    overrides = {"sources": _sources_from_flags(args.source), "model": args.model,
                 "out": args.out or (None if args.config else "fovea-out"), "device": args.device}
    cfg = load_config(args.config, overrides)
    summary = run_job(cfg, show_progress=not args.no_progress)
    sys.stdout.write(summary.to_text() + "\n")
    return EXIT_OK if summary.ok else EXIT_FAILED_INPUTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fovea",
        description="Fovea: GPU-resident video analytics (DALI/NVDEC decode, in-place "
                    "inference, per-frame detections to sinks).",
    )
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    for hook in _extra_commands():
        hook(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    """Subcommands contributed by other modules (demo, eval, live, build-engine, bench)."""
    hooks = []
    for module, attr in (
        ("pipelines.demo", "add_parser"),
        ("pipelines.eval_cli", "add_parser"),
        ("pipelines.live_cli", "add_parser"),
        ("engines.tensorrt.cli", "add_build_engine_parser"),
        ("benchmarks.cli", "add_parser"),
    ):
        try:
            mod = __import__(module, fromlist=[attr])
        except ImportError as e:
            if e.name and module.startswith(e.name):
                continue  # that part of Fovea is not present in this build
            raise
        hooks.append(getattr(mod, attr))
    return hooks


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fovea`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args))
    except ConfigError as e:
        sys.stderr.write(f"fovea: config error: {e}\n")
        return EXIT_CONFIG
    except MissingDependencyError as e:
        sys.stderr.write(f"fovea: {e}\n")
        return EXIT_MISSING_DEP
    except EngineError as e:
        sys.stderr.write(f"fovea: engine error: {e}\n")
        return EXIT_ENGINE
    except FoveaError as e:
        sys.stderr.write(f"fovea: {e}\n")
        return EXIT_FAILED_INPUTS
    except KeyboardInterrupt:
        sys.stderr.write("fovea: interrupted; outputs hold everything processed so far\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
