"""``fovea build-engine``: build (or reuse) the cached TensorRT plan of an ONNX model.

::

    fovea build-engine MODEL.onnx [--precision fp16|int8|fp32] [--batch MIN:OPT:MAX]
                       [--input-size HxW] [--workspace-mb N] [--calib VIDEO ...]
                       [--efficient-nms] [--cache-dir DIR] [-o OUT.plan]

On success it prints the plan's path on stdout and exits 0. Failures print one line on
stderr and exit as ``fovea`` does: 3 when a dependency is missing (TensorRT, pycuda), 2
for a bad setting (batch profile, device, calibration videos) and for argparse's usage
errors, 4 when the engine cannot be built (unparsable model, shapes, build failure), 1
for anything else (a plan that cannot be written).

The arguments make one :class:`engines.tensorrt.builder.BuildSpec`, built here; INT8
calibration frames (``--calib``) go through the pipeline's own preprocessing
(:class:`pipelines.preprocess.HostPreprocessor`, default ``preprocess:`` settings), which
is why this command lives in ``pipelines`` and not beside the builder in ``engines``.

Wiring into the main parser (the ``fovea.commands`` entry point ``build-engine``)::

    sub = parser.add_subparsers(dest="command")
    add_parser(sub)                       # sets func=build_engine_command
    args = parser.parse_args()
    sys.exit(args.func(args))

Standalone: ``python -m pipelines.build_engine_cli MODEL.onnx ...``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
from pathlib import Path
from typing import Any

from engines.tensorrt._cuda import device_index
from engines.tensorrt._fs import atomic_write_bytes
from engines.tensorrt._imports import import_tensorrt
from engines.tensorrt.builder import BuildSpec, EfficientNMSOptions
from engines.tensorrt.calibrator import CalibrationSource, video_calibration
from pipelines.preprocess import HostPreprocessor
from streams.config import EngineConfig, PostprocessConfig, PreprocessConfig, TensorRTConfig
from streams.errors import ConfigError, EngineError, FoveaError, MissingDependencyError

log = logging.getLogger(__name__)

# The exit statuses of ``fovea`` (pipelines.cli): 0 ok, 1 failed, 2 config, 3 missing dep, 4 engine.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_MISSING_DEP = 3
EXIT_ENGINE = 4

_PROG = "fovea build-engine"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``build-engine`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "build-engine",
        help="build or reuse an ONNX model's cached TensorRT plan",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _add_arguments(parser)
    parser.set_defaults(func=build_engine_command)
    return parser


def _add_arguments(p: argparse.ArgumentParser) -> None:
    engine, trt_cfg, post = EngineConfig(), TensorRTConfig(), PostprocessConfig()
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    p.add_argument("--precision", choices=("fp16", "int8", "fp32"), default=engine.precision)
    p.add_argument(
        "--batch",
        type=_batch_arg,
        metavar="MIN:OPT:MAX",
        help=f"dynamic batch profile (default 1:{engine.batch_size}:{engine.batch_size})",
    )
    p.add_argument(
        "--input-size", type=_size_arg, metavar="HxW", help="input size for dynamic-size models"
    )
    p.add_argument("--workspace-mb", type=int, default=trt_cfg.workspace_mb, metavar="N")
    p.add_argument("--calib", nargs="+", metavar="VIDEO", help="videos whose frames calibrate INT8")
    p.add_argument("--calib-frames", type=int, default=trt_cfg.calibration_frames, metavar="N")
    p.add_argument(
        "--efficient-nms", action="store_true", help="run NMS inside the engine (YOLOv8 layout)"
    )
    p.add_argument(
        "--conf-threshold",
        type=float,
        default=post.conf_threshold,
        help="EfficientNMS score threshold",
    )
    p.add_argument(
        "--iou-threshold", type=float, default=post.iou_threshold, help="EfficientNMS IoU threshold"
    )
    p.add_argument(
        "--max-detections",
        type=int,
        default=post.max_detections,
        help="EfficientNMS boxes per image",
    )
    p.add_argument("--class-agnostic", action="store_true", help="EfficientNMS across classes")
    p.add_argument("--cache-dir", default=trt_cfg.cache_dir, metavar="DIR")
    p.add_argument(
        "--no-timing-cache", action="store_true", help="do not read or write the timing cache"
    )
    p.add_argument("--device", default="cuda:0", help="GPU to build for: cuda:N (default cuda:0)")
    p.add_argument(
        "-o", "--output", metavar="OUT.plan", help="also copy the plan (and its .json) here"
    )


def build_engine_command(args: argparse.Namespace) -> int:
    """Run ``fovea build-engine`` with parsed ``args``; returns the exit status."""
    try:
        import_tensorrt("Building a TensorRT engine")  # fail fast, before decoding videos
        from engines.tensorrt.cache import build_cached_plan

        cached = build_cached_plan(
            args.model, build_spec(args), args.cache_dir, timing_cache=not args.no_timing_cache
        )
        plan = cached.path
        if args.output:
            out = Path(args.output)
            atomic_write_bytes(out, plan.read_bytes())
            sidecar = plan.with_suffix(".json")
            if sidecar.is_file():
                atomic_write_bytes(out.with_suffix(".json"), sidecar.read_bytes())
            plan = out
        print(plan)
        return EXIT_OK
    except MissingDependencyError as e:
        _error(e)
        return EXIT_MISSING_DEP
    except ConfigError as e:
        _error(e)
        return EXIT_CONFIG
    except EngineError as e:
        _error(e)
        return EXIT_ENGINE
    except (FoveaError, OSError) as e:
        _error(e)
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pipelines.build_engine_cli``."""
    parser = argparse.ArgumentParser(
        prog=_PROG, description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    _add_arguments(parser)
    return build_engine_command(parser.parse_args(argv))


def build_spec(args: argparse.Namespace) -> BuildSpec:
    """The :class:`BuildSpec` the parsed arguments describe (``--calib`` videos are checked,
    not decoded: that happens only if TensorRT asks for calibration batches)."""
    if args.calib and args.precision != "int8":
        log.warning("--calib is only used with --precision int8; ignoring it")
    calibration: CalibrationSource | None = None
    calib_id: str | None = None
    if args.calib and args.precision == "int8":
        pre = PreprocessConfig()
        calibration, calib_id = video_calibration(args.calib, args.calib_frames, pre,
                                                  functools.partial(HostPreprocessor, options=pre))
    nms = None
    if args.efficient_nms:
        nms = EfficientNMSOptions(score_threshold=args.conf_threshold, iou_threshold=args.iou_threshold,
                                  max_output_boxes=args.max_detections, class_agnostic=args.class_agnostic)
    batch_size = EngineConfig().batch_size
    return BuildSpec(
        precision=args.precision,
        batch=args.batch or (1, batch_size, batch_size),
        input_shape=(3, *args.input_size) if args.input_size else None,
        workspace_bytes=args.workspace_mb << 20,
        efficient_nms=nms,
        calibration=calibration,
        calibration_id=calib_id,
        device_index=device_index(args.device, "--device"),
    )


def _batch_arg(text: str) -> tuple[int, int, int]:
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected MIN:OPT:MAX positive integers, got {text!r}")
    lo, opt, hi = (int(p) for p in parts)
    if not lo <= opt <= hi:
        raise argparse.ArgumentTypeError(f"expected MIN <= OPT <= MAX, got {text!r}")
    return lo, opt, hi


def _size_arg(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text)
    if m is None or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 640x640), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _error(e: BaseException) -> None:
    message = " ".join(str(e).split())  # exactly one line
    print(f"{_PROG}: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
