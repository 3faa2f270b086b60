"""The ``fovea`` command line.

``fovea run`` lives here; the other subcommands (demo, eval, live, build-engine, bench)
are found through the ``fovea.commands`` entry-point group (pyproject.toml), so this
module imports no higher layer (``benchmarks``) and a package can add a command by
declaring ``name = "module:add_parser"`` in that group. Each ``add_parser(sub)`` adds its
subparser and sets ``func``; a command whose module cannot be imported is left out, with
a warning naming it.

Exit codes (also in ``fovea --help``, ``fovea run --help`` and README): see :data:`EXIT_CODES`.

Usage::

    fovea run job.yaml                         # a config file
    fovea run --source videos/ --out results/  # flags alone (defaults for the rest)
    fovea run job.yaml --device cpu --model yolov8n.onnx
    fovea run job.yaml --resume                # continue a job that was killed
    fovea run job.yaml --ray                   # over the GPUs of a Ray cluster (pip install -e ".[ray]")
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from streams.errors import ConfigError, EngineError, FoveaError, MissingDependencyError, MissingExtraError

log = logging.getLogger("fovea")

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_CONFIG, EXIT_MISSING_DEP, EXIT_ENGINE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

EXIT_CODES = """\
exit codes:
  0    success
  1    some inputs failed (each reported with its reason; the rest were processed),
       or another Fovea error
  2    bad configuration or arguments (the message names the key or flag), or the
       command's optional extra is not installed (the message names the pip command)
  3    a package needed inside the job is missing (tensorrt, pycuda, onnxruntime-gpu, ...)
  4    engine error (the model cannot be loaded, built or run)
  130  interrupted (Ctrl-C / SIGINT); outputs hold everything processed so far
"""

COMMAND_GROUP = "fovea.commands"
# the order of ``fovea --help``; commands not named here follow, alphabetically
_COMMAND_ORDER = ("demo", "eval", "live", "build-engine", "bench")

RUN_HELP = """\
Run a batch job over video files: decode (NVDEC on a GPU, else the CPU), preprocess,
infer, postprocess, and write per-frame detections to the configured sinks.

CONFIG is a YAML file; flags override its common fields, and without CONFIG the defaults
apply (bundled detector, JSONL + CSV under --out, default ./fovea-out). Relative paths in
CONFIG are relative to CONFIG's folder; those given as flags, to the current directory.
Progress (files done, frames/s, ETA) goes to stderr; a summary is printed at the end.
Failed files are listed with their reason and make the exit code 1.

The job keeps a manifest beside its first jsonl/csv output (<name>.manifest.json) and its
jsonl/csv outputs commit as they go (<output>.commits): after a kill, --resume skips the
files that were finished and continues the others from what the outputs hold, so they end
as an uninterrupted run writes them (docs/scale.md). --ray runs the job's files over the
GPUs of a Ray cluster, one pipeline per GPU.
"""

RUN_EPILOG = f"""\
config sections (every key annotated in examples/job.yaml; unknown keys are errors):
  sources      files, globs, directories (recursive), list files; id: per entry
  model        the network: default (bundled), ONNX, TorchScript or .pt2; output layout
  engine       kind (torch, onnxruntime, tensorrt), device, precision, batch size,
               inference_threads, CUDA graphs, torch.compile, TensorRT plan cache
  decode       backend (NVDEC or CPU), concurrent decode sessions, stall timeout
  preprocess   letterbox or stretch, padding, mean/std, channel order
  postprocess  confidence and IoU thresholds, max detections, fused GPU NMS
  tracker      track ids per source: bytetrack or ocsort, thresholds, buffer in seconds
  analytics    zones and counting lines per source, events (examples/tracking.yaml)
  sinks        outputs: jsonl, csv, video (annotated MP4), mqtt
  live         fovea live only: batching, watchdog, reconnects, HTTP metrics (examples/live.yaml)

{EXIT_CODES}"""

MAIN_EPILOG = f"""\
'fovea COMMAND --help' explains a command's options; examples/ holds annotated configs.

{EXIT_CODES}"""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a broken entry in sys.modules
        return False


def require_extra(command: str, extra: str, modules: Sequence[str]) -> None:
    """Raise :class:`MissingExtraError` unless every module of ``modules`` can be imported."""
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise MissingExtraError(command, extra, missing)


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="process video files (batch job)", description=RUN_HELP, epilog=RUN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="job YAML file (optional with --source); see examples/job.yaml")
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
    p.add_argument("--resume", action="store_true",
                   help="continue the job of an earlier run that was killed or stopped (its manifest beside the "
                        "outputs): finished files are skipped, the others continue from what the outputs hold; "
                        "a different config is refused; with no manifest the job starts from the beginning")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="spread the files over Ray workers, one pipeline per GPU (needs the 'ray' extra); "
                        "ADDRESS: a running cluster (host:port, or 'auto'), default: a Ray instance on this machine")
    p.add_argument("--ray-workers", type=int, metavar="N",
                   help="with --ray: pipelines to run (default: one per GPU of the cluster, 1 without GPUs)")
    p.set_defaults(func=_cmd_run)


def _sources_from_flags(values: Sequence[str] | None) -> list[object] | None:
    if not values:
        return None
    return [{"list": v[1:]} if v.startswith("@") else v for v in values]


def _cmd_run(args: argparse.Namespace) -> int:
    from streams.config import load_config

    if args.config is None and not args.source:
        raise ConfigError("sources", "give a CONFIG file or at least one --source")
    if args.ray_workers is not None and (args.ray is None or args.ray_workers < 1):
        raise ConfigError("--ray-workers", "a number >= 1, with --ray")
    if args.ray is not None:
        require_extra("run --ray", "ray", ["ray"])
    overrides = {"sources": _sources_from_flags(args.source), "model": args.model,
                 "out": args.out or (None if args.config else "fovea-out"), "device": args.device}
    cfg = load_config(args.config, overrides)
    if args.ray is not None:
        from pipelines.ray_backend import run_ray

        job = run_ray(cfg, address=None if args.ray == "local" else args.ray, workers=args.ray_workers,
                      resume=args.resume, show_progress=not args.no_progress)
        summary, note, nothing = job.summary, job.note, job.nothing_to_do
    else:
        from pipelines.runner import FileJob

        file_job = FileJob(cfg, show_progress=not args.no_progress, manifest=True, resume=args.resume)
        for _ in file_job.batches():
            pass
        summary, note, nothing = file_job.summary, file_job.note, file_job.nothing_to_do
    if note:
        sys.stdout.write(note + "\n")
    text = summary.to_text()
    if nothing:  # only what the earlier runs left: failures, if any
        text = "\n".join(line for line in text.splitlines() if line.startswith(("FAILED ", "INCOMPLETE ")))
    if text:
        sys.stdout.write(text + "\n")
    return EXIT_OK if summary.ok else EXIT_FAILED_INPUTS


def command_hooks() -> list[tuple[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], object]]]:
    """The ``fovea.commands`` entry points, loaded, in help order: ``(name, add_parser)``.

    A command whose module fails to import is left out with a warning (the rest of the
    CLI still works); the import of each module must therefore not need optional extras.
    """
    found = {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}
    if not found:
        log.warning("fovea: no %s entry points, so only 'run' is available: install Fovea "
                    "(pip install -e .) to register the other commands", COMMAND_GROUP)
    rank = {name: i for i, name in enumerate(_COMMAND_ORDER)}
    hooks: list[tuple[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], object]]] = []
    for name in sorted(found, key=lambda n: (rank.get(n, len(rank)), n)):
        if name == "run":
            log.warning("fovea: entry point %r of %s ignored: 'run' is built in", found[name].value, COMMAND_GROUP)
            continue
        try:
            hooks.append((name, found[name].load()))
        except ImportError as e:
            log.warning("fovea: the '%s' command is unavailable (%s: %s)", name, found[name].value, e)
    return hooks


Hook = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], object]


def build_parser(commands: Sequence[tuple[str, Hook]] | None = None) -> argparse.ArgumentParser:
    """The ``fovea`` parser: ``run`` plus ``commands`` (default: the installed entry points)."""
    parser = argparse.ArgumentParser(
        prog="fovea",
        description="Fovea: GPU-resident video analytics (DALI/NVDEC decode, in-place\n"
                    "inference, per-frame detections to sinks).",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    for _name, hook in (command_hooks() if commands is None else commands):
        hook(sub)
    return parser


def main(argv: Sequence[str] | None = None, commands: Sequence[tuple[str, Hook]] | None = None) -> int:
    """Entry point of the ``fovea`` console script; ``commands`` as in :func:`build_parser`
    (a module's own ``__main__`` passes its command, so it runs from a source tree too)."""
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args))
    except MissingExtraError as e:
        sys.stderr.write(f"fovea: {e}\n")
        return EXIT_CONFIG
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
    # ``python -m pipelines.cli``: run the imported module's main, so the commands (which
    # import ``pipelines.cli``) raise the same MissingExtraError class that main catches
    from pipelines.cli import main as _main

    sys.exit(_main())
