"""ONNX → serialized TensorRT plan, with TensorRT 10's Python API.

:func:`build_engine` parses the ONNX file into an explicit-batch network
(``create_network(0)``), sets a workspace limit, one optimization profile for the
dynamic batch (``min <= opt <= max``, H and W from the model or the spec; for a
dynamic-shape export whose frames go onto rectangle canvases, H and W from ``min_hw`` up
to the spec's, tuned at the spec's), the
precision flags, INT8 (explicit Q/DQ models need no calibration; other models are
calibrated where the installed TensorRT still can), an optional in-engine
``EfficientNMS_TRT`` and a persisted timing cache, then returns the plan bytes.

TensorRT 11 removed weak typing (``BuilderFlag.FP16``/``INT8``) and calibrators: there,
a network runs in the types its ONNX model carries, so ``fp16`` needs a model already
converted to mixed precision and ``int8`` a Q/DQ model; anything else raises EngineError
saying so.

:class:`BuildSpec` says what to build from the model, and nothing else: its caller makes
it once from what it has (:func:`engines.tensorrt.open_tensorrt_engine` from the job's
configuration, ``fovea build-engine`` from its arguments). Where the timing and INT8
calibration caches live is not part of it: :func:`build_engine` takes those files.

Usage::

    spec = BuildSpec(precision="fp16", batch=(1, 8, 16), input_shape=(3, 640, 640))
    plan = build_engine("yolov8n.onnx", spec)       # bytes; raises EngineError/ShapeError
    Path("yolov8n.plan").write_bytes(plan)

Most callers want :func:`engines.tensorrt.load_or_build`, which caches plans.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from engines.base import Precision
from engines.tensorrt._cuda import DeviceStaging, default_staging, device_scope
from engines.tensorrt._fs import atomic_write_bytes, file_lock
from engines.tensorrt._imports import import_tensorrt, tensorrt_version, trt_logger
from engines.tensorrt.calibrator import CalibrationSource, make_entropy_calibrator, require_calibrator
from engines.tensorrt.nms_surgery import BOX_CENTER_SIZE, append_efficient_nms
from engines.tensorrt.onnx_utils import (
    ModelInput,
    has_fp16_tensors,
    has_qdq_nodes,
    load_header,
    model_input,
    resolve_input_shape,
)
from streams.errors import ConfigError, EngineError, ShapeError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EfficientNMSOptions:
    """Parameters of the in-engine ``EfficientNMS_TRT`` (see :mod:`.nms_surgery`)."""

    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_output_boxes: int = 300
    background_class: int = -1
    box_coding: int = BOX_CENTER_SIZE
    class_agnostic: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The options as keyword arguments of :func:`append_efficient_nms`."""
        return asdict(self)


@dataclass(frozen=True)
class BuildSpec:
    """What to build from a model: everything the plan depends on besides the model, the
    GPU and TensorRT (the engine cache keys plans by these fields).

    Attributes:
        precision: ``fp32``, ``fp16`` or ``int8`` (INT8 layers fall back to FP16).
        batch: ``(min, opt, max)`` of the dynamic batch; TensorRT tunes for ``opt``.
        input_shape: ``(C, H, W)``; ``None`` takes it from the model (needs static dims).
        min_hw: the smallest ``(H, W)`` of the profile, for a model with dynamic H and W
            whose inputs are rectangles up to ``input_shape``'s (the canvases a job letterboxes
            frames into, :func:`operators.letterbox.min_canvas_hw`); ``opt`` and ``max`` stay
            at ``input_shape``. ``None``: H and W are fixed.
        workspace_bytes: the builder's workspace memory-pool limit.
        efficient_nms: append ``EfficientNMS_TRT`` to a YOLOv8-layout model when set.
        calibration: implicit-INT8 data: NCHW float32 batches, or a function of the
            resolved ``(C, H, W)`` returning them (see
            :func:`engines.tensorrt.calibrator.video_calibration`). Not part of equality
            or the cache key.
        calibration_id: identity of ``calibration`` for the cache key (e.g. video hashes).
        device_index: the CUDA device to build for.
    """

    precision: Precision = "fp16"
    batch: tuple[int, int, int] = (1, 1, 1)
    input_shape: tuple[int, int, int] | None = None
    workspace_bytes: int = 4096 << 20
    efficient_nms: EfficientNMSOptions | None = None
    calibration: CalibrationSource | None = field(default=None, compare=False, repr=False)
    calibration_id: str | None = None
    device_index: int = 0
    min_hw: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                "engine.precision", f"expected one of {list(PRECISIONS)}, got {self.precision!r}"
            )
        if len(self.batch) != 3 or any(not isinstance(b, int) or b < 1 for b in self.batch):
            raise ConfigError(
                "engine.tensorrt.batch",
                f"expected 3 positive integers min, opt, max; got {list(self.batch)}",
            )
        lo, opt, hi = self.batch
        if not lo <= opt <= hi:
            raise ConfigError(
                "engine.tensorrt.batch", f"expected min <= opt <= max, got {lo}, {opt}, {hi}"
            )
        if self.input_shape is not None and (
            len(self.input_shape) != 3 or any(d < 1 for d in self.input_shape)
        ):
            raise ConfigError(
                "model.input_size", f"expected positive (C, H, W), got {self.input_shape}"
            )
        if self.min_hw is not None and (len(self.min_hw) != 2 or any(d < 1 for d in self.min_hw)):
            raise ConfigError("model.input_size", f"expected a positive smallest (H, W), got {self.min_hw}")
        if self.workspace_bytes < 1:
            raise ConfigError(
                "engine.tensorrt.workspace_mb", f"expected > 0, got {self.workspace_bytes} bytes"
            )


@dataclass(frozen=True)
class ResolvedInput:
    """The engine input as the spec and the model together fix it."""

    name: str
    chw: tuple[int, int, int]
    qdq: bool  # explicitly quantized (QuantizeLinear/DequantizeLinear nodes)
    fp16: bool = False  # has FP16 tensors (mixed precision already in the model)

    def int8_mode(self, precision: str) -> str:
        """``none``, ``qdq`` (explicitly quantized) or ``calibrated`` (implicit INT8)."""
        if precision != "int8":
            return "none"
        return "qdq" if self.qdq else "calibrated"


def resolve_input(
    onnx_path: str | Path, spec: BuildSpec, model: onnx.ModelProto | None = None
) -> ResolvedInput:
    """Check the model against ``spec`` and give the input's name, ``(C, H, W)`` and Q/DQ-ness."""
    model = model if model is not None else load_header(onnx_path)
    inp = model_input(model, onnx_path)
    chw = resolve_input_shape(inp, spec.input_shape, onnx_path)
    _check_batch(inp, spec.batch, onnx_path)
    _check_min_hw(inp, chw, spec.min_hw, onnx_path)
    return ResolvedInput(
        name=inp.name, chw=chw, qdq=has_qdq_nodes(model), fp16=has_fp16_tensors(model)
    )


def strongly_typed_fallback(onnx_path: str | Path, spec: BuildSpec) -> BuildSpec:
    """``spec`` with ``fp16`` lowered to ``fp32`` (logged) where TensorRT cannot honour it.

    TensorRT 11 has no FP16 builder flag: an FP32 model builds as FP32 whatever is asked.
    :func:`build_engine` refuses that combination (an explicit request must not degrade
    silently); the run path calls this first so ``engine: auto`` keeps working.
    """
    if spec.precision != "fp16":
        return spec
    trt = import_tensorrt("Building a TensorRT engine")
    if hasattr(trt.BuilderFlag, "FP16") or has_fp16_tensors(load_header(onnx_path)):
        return spec
    log.warning(
        "TensorRT %s builds strongly typed networks and %s is FP32: building an FP32 engine; "
        "convert the model with NVIDIA ModelOpt AutoCast for FP16",
        tensorrt_version(trt),
        onnx_path,
    )
    return replace(spec, precision="fp32")


def build_engine(
    onnx_path: str | Path,
    spec: BuildSpec,
    logger: Any = None,
    *,
    staging: DeviceStaging | None = None,
    timing_cache: Path | None = None,
    calibration_cache: Path | None = None,
) -> bytes:
    """Build ``onnx_path`` as ``spec`` says and return the serialized plan.

    ``logger`` is a ``trt.ILogger`` (default: the process-wide one forwarding to
    ``logging``); ``staging`` overrides the device buffer INT8 calibration batches are
    copied into. ``timing_cache`` is TensorRT's timing cache file (read, then merged and
    written); ``calibration_cache`` the file of the INT8 scale table (read, then written).
    Raises MissingDependencyError without TensorRT, ShapeError when the model's input and
    the spec disagree, EngineError when parsing or building fails.
    """
    trt = import_tensorrt("Building a TensorRT engine")
    path = Path(onnx_path)
    resolved = resolve_input(path, spec)
    logger = logger if logger is not None else trt_logger(trt)
    with device_scope(spec.device_index):
        return _build(trt, path, spec, resolved, logger, staging, timing_cache, calibration_cache)


def _build(
    trt: Any,
    path: Path,
    spec: BuildSpec,
    inp: ResolvedInput,
    logger: Any,
    staging: DeviceStaging | None,
    timing_cache: Path | None,
    calibration_cache: Path | None,
) -> bytes:
    trt.init_libnvinfer_plugins(logger, "")  # registers EfficientNMS_TRT among others
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode of TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if spec.efficient_nms is not None:
        with_nms = append_efficient_nms(onnx.load(str(path)), **spec.efficient_nms.as_dict())
        parsed = parser.parse(with_nms.SerializeToString(), str(path))
    else:
        parsed = parser.parse_from_file(str(path))
    if not parsed:
        raise EngineError(parser_errors(parser, path))
    if not any(network.get_input(i).name == inp.name for i in range(network.num_inputs)):
        raise EngineError(f"{path}: TensorRT's network has no input {inp.name!r}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    # One context per CUDA stream, all on profile 0: TensorRT 10 allows it (on by default).
    sharing = getattr(getattr(trt, "PreviewFeature", None), "PROFILE_SHARING_0806", None)
    if sharing is not None:
        config.set_preview_feature(sharing, True)
    lo, opt, hi = spec.batch
    c, h, w = inp.chw
    min_h, min_w = spec.min_hw or (h, w)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (lo, c, min_h, min_w), (opt, *inp.chw), (hi, *inp.chw))
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(
            f"{path}: TensorRT rejected the optimization profile batch {lo}:{opt}:{hi}, "
            f"H {min_h}..{h}, W {min_w}..{w}"
        )
    _set_precision(trt, builder, config, spec, inp, staging, calibration_cache)

    loaded_timing = _attach_timing_cache(config, timing_cache)
    log.info(
        "building a TensorRT %s engine from %s: input %s [%d..%d, %d, %s, %s]%s",
        spec.precision, path, inp.name, lo, hi, c, _span(min_h, h), _span(min_w, w),
        " with EfficientNMS" if spec.efficient_nms else "",
    )  # fmt: skip
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(
            f"TensorRT could not build an engine from {path} ({spec.precision}, batch "
            f"{lo}:{opt}:{hi}); TensorRT's own errors are logged under 'fovea.tensorrt'"
        )
    if timing_cache is not None:
        _save_timing_cache(config, timing_cache, loaded_timing)
    return bytes(plan)


def _set_precision(
    trt: Any,
    builder: Any,
    config: Any,
    spec: BuildSpec,
    inp: ResolvedInput,
    staging: DeviceStaging | None,
    cache: Path | None,
) -> None:
    if spec.precision == "fp32":
        return
    if hasattr(trt.BuilderFlag, "FP16"):  # weak typing: TensorRT 10
        config.set_flag(trt.BuilderFlag.FP16)  # int8 too: layers without INT8 run in FP16
        if spec.precision == "int8" and hasattr(trt.BuilderFlag, "INT8"):
            config.set_flag(trt.BuilderFlag.INT8)
    elif spec.precision == "fp16" and not inp.fp16:
        raise EngineError(
            f"TensorRT {tensorrt_version(trt)} builds strongly typed networks only (no FP16 "
            "builder flag) and this model has no FP16 tensors: convert it to mixed precision "
            "first (NVIDIA ModelOpt AutoCast, keeping FP32 inputs and outputs) or build with "
            "precision fp32"
        )
    if spec.precision == "fp16":
        return
    if inp.qdq:
        log.info("the model has Q/DQ nodes: explicit INT8, no calibration")
        return
    require_calibrator(trt)
    source = spec.calibration
    batches = source(inp.chw) if callable(source) else source
    if batches is None and (cache is None or not cache.is_file()):
        raise EngineError(
            "INT8 needs calibration data for a model without Q/DQ nodes: give calibration "
            "videos (engine.tensorrt.int8_calibration / --calib VIDEO), an existing "
            "calibration cache, or an explicitly quantized (Q/DQ) ONNX model"
        )
    batch_shape = (spec.batch[1], *inp.chw)
    if batches is not None and staging is None:
        staging = default_staging(spec.device_index)
    config.int8_calibrator = make_entropy_calibrator(
        trt, batches, batch_shape=batch_shape, cache_path=cache, staging=staging
    )
    calib_profile = builder.create_optimization_profile()
    calib_profile.set_shape(inp.name, batch_shape, batch_shape, batch_shape)
    config.set_calibration_profile(calib_profile)


def _attach_timing_cache(config: Any, path: Path | None) -> bytes:
    """Load the persisted timing cache into ``config``; return the file's bytes as read.

    A cache TensorRT refuses (another TensorRT version or GPU) is replaced by an empty one
    and overwritten after the build.
    """
    if path is None:
        return b""
    on_disk = path.read_bytes() if path.is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(on_disk), ignore_mismatch=False):
        log.warning(
            "the timing cache %s does not match this TensorRT or GPU; starting afresh", path
        )
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return on_disk


def _save_timing_cache(config: Any, path: Path, loaded: bytes) -> None:
    """Write the build's timing cache back, merging entries another builder added meanwhile."""
    cache = config.get_timing_cache()
    with file_lock(path.with_name(path.name + ".lock")):
        if path.is_file():
            on_disk = path.read_bytes()
            if on_disk != loaded and not cache.combine(
                config.create_timing_cache(on_disk), ignore_mismatch=False
            ):
                log.warning("could not merge the timing cache %s; overwriting it", path)
        atomic_write_bytes(path, bytes(cache.serialize()))


def parser_errors(parser: Any, path: str | Path) -> str:
    """One message naming every error the ONNX parser reported: node, operator and reason."""
    parts = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        node = _maybe(err, "node")
        name = _maybe(err, "node_name")
        op = _maybe(err, "node_operator")
        code = _maybe(err, "code")
        where = []
        if isinstance(node, int) and node >= 0:
            where.append(f"node {node}")
        if name:
            where.append(repr(str(name)))
        if op:
            where.append(f"(op {op})")
        reason = str(_maybe(err, "desc") or "no description")
        code_name = getattr(code, "name", None) or (str(code) if code is not None else "")
        parts.append(
            f"{' '.join(where) or 'model'}: {reason}" + (f" [{code_name}]" if code_name else "")
        )
    if not parts:
        parts = ["the parser gave no reason"]
    return f"TensorRT cannot parse {path}: " + "; ".join(parts)


def _maybe(obj: Any, method: str) -> Any:
    fn = getattr(obj, method, None)  # node_name / node_operator exist from TensorRT 10 on
    return fn() if callable(fn) else None


def _span(lo: int, hi: int) -> str:
    return str(hi) if lo == hi else f"{lo}..{hi}"


def _check_min_hw(
    inp: ModelInput, chw: tuple[int, int, int], min_hw: tuple[int, int] | None, source: str | Path
) -> None:
    """``min_hw`` needs dynamic H and W and must not exceed the input's ``(H, W)``."""
    if min_hw is None:
        return
    if inp.dims[2] is not None or inp.dims[3] is not None:
        raise ShapeError(
            f"{source}: input {inp.name!r} has a fixed H or W (shape {list(inp.dims)}); a profile "
            f"over input sizes from {list(min_hw)} needs a dynamic-shape export"
        )
    if min_hw[0] > chw[1] or min_hw[1] > chw[2]:
        raise ShapeError(
            f"{source}: the profile's smallest input {list(min_hw)} exceeds its size {list(chw[1:])}"
        )


def _check_batch(inp: ModelInput, batch: tuple[int, int, int], source: str | Path) -> None:
    fixed = inp.static_batch
    if fixed is not None and batch != (fixed, fixed, fixed):
        raise ShapeError(
            f"{source}: input {inp.name!r} has a fixed batch of {fixed}, but the batch profile "
            f"is {batch[0]}:{batch[1]}:{batch[2]}; build with batch {fixed}:{fixed}:{fixed} or "
            "re-export the model with a dynamic batch axis"
        )
