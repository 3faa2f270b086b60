"""The TensorRT engine: ONNX → cached TensorRT plan → in-place inference on DALI's buffers.

- :mod:`.builder`: :class:`BuildSpec` and :func:`build_engine` (TensorRT 10 builder API).
- :mod:`.cache`: the engine cache (key, plan + JSON sidecar, file lock, atomic writes).
- :mod:`.calibrator`: implicit INT8 calibration (before TensorRT 11) from videos/batches.
- :mod:`.nms_surgery`: :func:`append_efficient_nms`, in-engine NMS for YOLOv8 layouts.
- :mod:`.runtime`: :class:`TensorRTEngine`, the :class:`engines.base.Engine` implementation.

``fovea build-engine`` (:mod:`pipelines.build_engine_cli`) drives the same functions.

Importing this package imports neither ``tensorrt`` nor ``pycuda``; the functions that
need them raise :class:`streams.errors.MissingDependencyError` naming what to install.

The job's configuration stops at :func:`open_tensorrt_engine`, which turns it into one
:class:`~engines.tensorrt.builder.BuildSpec`; the cache and the builder see only that spec.

Usage::

    spec = BuildSpec(precision="fp16", batch=(1, 16, 16), input_shape=(3, 640, 640))
    with load_or_build("yolov8n.onnx", spec, "~/.cache/fovea/engines") as engine:
        out = engine.infer({engine.inputs[0].name: batch}, stream=handle)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engines.tensorrt._cuda import GpuQuery
    from engines.tensorrt.builder import BuildSpec
    from engines.tensorrt.cache import CachedPlan
    from engines.tensorrt.calibrator import FramePreprocessor
    from engines.tensorrt.runtime import CudaOps, TensorRTEngine
    from streams.config import EngineConfig, PostprocessConfig, PreprocessConfig

__all__ = ["load_or_build", "open_tensorrt_engine", "rect_profile_min_hw"]

log = logging.getLogger(__name__)


def load_or_build(
    onnx_path: str | Path,
    spec: BuildSpec,
    cache_dir: str | Path,
    *,
    gpu_query: GpuQuery | None = None,
    logger: Any = None,
    timing_cache: bool = True,
    cuda: CudaOps | None = None,
) -> TensorRTEngine:
    """The engine of ``onnx_path`` built as ``spec`` says, from the cache or built now.

    The plan is looked up (or built, under the cache's lock) in ``cache_dir`` and
    deserialized once into the returned engine, on ``cuda:<spec.device_index>``; share
    that object across streams and threads. A cached plan that no longer loads (damaged,
    or a driver/TensorRT change the key missed) is removed and rebuilt once.
    ``gpu_query``, ``logger``, ``timing_cache``: see
    :func:`engines.tensorrt.cache.build_cached_plan`; ``cuda``: see
    :class:`engines.tensorrt.runtime.TensorRTEngine`.
    """
    from engines.tensorrt.cache import EngineCache, build_cached_plan
    from engines.tensorrt.runtime import TensorRTEngine, _PlanLoadError

    def build() -> CachedPlan:
        return build_cached_plan(
            onnx_path,
            spec,
            cache_dir,
            gpu_query=gpu_query,
            logger=logger,
            timing_cache=timing_cache,
        )

    device = f"cuda:{spec.device_index}"
    cached = build()
    try:
        return TensorRTEngine(cached.path, device=device, logger=logger, cuda=cuda)
    except _PlanLoadError:
        if cached.built:
            raise
        log.warning("the cached TensorRT plan %s does not load; rebuilding it", cached.path)
        EngineCache(cache_dir).invalidate(cached.path)
        cached = build()
        return TensorRTEngine(cached.path, device=device, logger=logger, cuda=cuda)


def open_tensorrt_engine(
    onnx_path: str | Path,
    engine: EngineConfig,
    device: str,
    input_size: tuple[int, int] | None = None,
    *,
    postprocess: PostprocessConfig | None = None,
    preprocess: PreprocessConfig | None = None,
    frame_preprocessor: FramePreprocessor | None = None,
    cuda: CudaOps | None = None,
) -> TensorRTEngine:
    """The run path's engine (``engine: tensorrt``, or ``auto`` on a GPU with TensorRT).

    Makes the :class:`~engines.tensorrt.builder.BuildSpec` once, from the job's ``engine:``
    section (precision, ``tensorrt.batch`` or ``(1, batch_size, batch_size)``, workspace),
    ``input_size`` (``[H, W]``; Fovea feeds 3 channels; for a dynamic-shape letterbox export,
    unless ``preprocess.canvas`` is ``square``, a profile over every rectangle canvas up to it:
    :func:`rect_profile_min_hw`), ``postprocess`` (the in-engine NMS
    thresholds, with ``tensorrt.efficient_nms``) and, for ``precision: int8`` with
    ``tensorrt.int8_calibration`` videos, their frames through ``frame_preprocessor`` (the
    pipeline's preprocessing, which ``preprocess`` configures); then :func:`load_or_build`
    in ``engine.tensorrt.cache_dir`` on ``device`` (``cuda:N``). On TensorRT 11 an FP32
    model asked for ``fp16`` builds as FP32, with a warning. ``cuda``: see
    :class:`engines.tensorrt.runtime.TensorRTEngine`.
    """
    from engines.tensorrt._cuda import device_index
    from engines.tensorrt.builder import BuildSpec, EfficientNMSOptions, strongly_typed_fallback
    from engines.tensorrt.calibrator import video_calibration
    from streams.config import PostprocessConfig, PreprocessConfig

    trt_cfg = engine.tensorrt
    calibration, calib_id = None, None
    if engine.precision == "int8" and trt_cfg.int8_calibration:
        calibration, calib_id = video_calibration(trt_cfg.int8_calibration, trt_cfg.calibration_frames,
                                                  preprocess or PreprocessConfig(), frame_preprocessor)
    nms = None
    if trt_cfg.efficient_nms:
        post = postprocess or PostprocessConfig()
        nms = EfficientNMSOptions(score_threshold=post.conf_threshold, iou_threshold=post.iou_threshold,
                                  max_output_boxes=post.max_detections, class_agnostic=post.class_agnostic)
    lo, opt, hi = trt_cfg.batch or (1, engine.batch_size, engine.batch_size)
    spec = BuildSpec(
        precision=engine.precision,
        batch=(int(lo), int(opt), int(hi)),
        input_shape=(3, *input_size) if input_size else None,
        workspace_bytes=int(trt_cfg.workspace_mb) << 20,
        efficient_nms=nms,
        calibration=calibration,
        calibration_id=calib_id,
        device_index=device_index(device),
        min_hw=rect_profile_min_hw(onnx_path, input_size, preprocess),
    )
    spec = strongly_typed_fallback(onnx_path, spec)
    return load_or_build(onnx_path, spec, trt_cfg.cache_dir, timing_cache=trt_cfg.timing_cache, cuda=cuda)


def rect_profile_min_hw(
    onnx_path: str | Path, input_size: tuple[int, int] | None, preprocess: PreprocessConfig | None
) -> tuple[int, int] | None:
    """The smallest ``(H, W)`` of the run path's optimization profile, or ``None`` for H and W
    fixed at ``input_size``.

    A job letterboxes a dynamic-shape export's frames into the smallest stride-aligned
    rectangle around them within ``input_size`` (:func:`engines.model_info.rect_canvas_stride`),
    so the profile covers every such rectangle: from :func:`operators.letterbox.min_canvas_hw`
    (the file's ``stride`` metadata, else 32) up to ``input_size``, tuned at ``input_size``, as
    Ultralytics builds its own dynamic TensorRT exports. Fixed where no rectangle can come: a
    static-shape model, ``preprocess.canvas: square``, or a model or config that stretches
    frames. (With ``canvas: auto`` and ``model.input_size`` in the config the job stays
    square; the wider profile still holds it.)
    """
    from engines.model_info import model_resize
    from engines.onnx_model import read_onnx
    from operators.letterbox import min_canvas_hw

    if input_size is None or preprocess is None or preprocess.canvas == "square" or preprocess.resize != "letterbox":
        return None
    facts = read_onnx(Path(onnx_path))
    if facts.input_hw is not None or model_resize(facts) != "letterbox":
        return None
    return min_canvas_hw(input_size, facts.stride or 32)
