"""The TensorRT engine: ONNX → cached TensorRT plan → in-place inference on DALI's buffers.

- :mod:`.builder`: :class:`BuildSpec` and :func:`build_engine` (TensorRT 10 builder API).
- :mod:`.cache`: the engine cache (key, plan + JSON sidecar, file lock, atomic writes).
- :mod:`.calibrator`: implicit INT8 calibration (before TensorRT 11) from videos/batches.
- :mod:`.nms_surgery`: :func:`append_efficient_nms`, in-engine NMS for YOLOv8 layouts.
- :mod:`.runtime`: :class:`TensorRTEngine`, the :class:`engines.base.Engine` implementation.
- :mod:`.cli`: ``fovea build-engine``.

Importing this package imports neither ``tensorrt`` nor ``pycuda``; the functions that
need them raise :class:`streams.errors.MissingDependencyError` naming what to install.

Usage::

    spec = BuildSpec.from_config(cfg.engine, input_size=cfg.model.input_size,
                                 postprocess=cfg.postprocess)
    with load_or_build(cfg.model.path, spec, cfg.engine.tensorrt.cache_dir) as engine:
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
    from engines.tensorrt.runtime import CudaOps, TensorRTEngine
    from streams.config import EngineConfig, PostprocessConfig, PreprocessConfig

__all__ = ["load_or_build", "open_tensorrt_engine"]

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
    cuda: CudaOps | None = None,
) -> TensorRTEngine:
    """The run path's engine (``engine: tensorrt``, or ``auto`` on a GPU with TensorRT).

    Builds the :class:`~engines.tensorrt.builder.BuildSpec` from the job's ``engine:``
    section, ``input_size`` (``[H, W]``), ``postprocess`` (in-engine NMS thresholds) and
    ``preprocess`` (how INT8 calibration videos are letterboxed), then
    :func:`load_or_build` in ``engine.tensorrt.cache_dir`` on ``device`` (``cuda:N``).
    On TensorRT 11 an FP32 model asked for ``fp16`` builds as FP32, with a warning.
    ``cuda``: see :class:`engines.tensorrt.runtime.TensorRTEngine`.
    """
    from engines.tensorrt._cuda import device_index
    from engines.tensorrt.builder import BuildSpec, strongly_typed_fallback

    trt_cfg = engine.tensorrt
    spec = BuildSpec.from_config(
        engine,
        input_size=input_size,
        postprocess=postprocess,
        preprocess=preprocess,
        device_index=device_index(device),
    )
    spec = strongly_typed_fallback(onnx_path, spec)
    return load_or_build(
        onnx_path, spec, trt_cfg.cache_dir, timing_cache=trt_cfg.timing_cache, cuda=cuda
    )
