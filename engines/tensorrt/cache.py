"""The engine cache: one plan per (model, input/profile, precision, GPU, TensorRT, NMS) key.

A plan is only valid for the model, shapes and precision it was built with, and for the
GPU (compute capability) and TensorRT version that built it. :func:`cache_key` collects
all of that into a :class:`CacheKey`; its SHA-256 names the plan::

    <cache_dir>/<model-stem>-<key16>.plan     the serialized engine
    <cache_dir>/<model-stem>-<key16>.json     sidecar: the key's fields, to read and to verify
    <cache_dir>/<model-stem>-<key16>.plan.lock  held while checking, building and writing
    <cache_dir>/<model-stem>-<key16>.calib    INT8 calibration cache (implicit INT8 only)
    <cache_dir>/timing-<gpu>-sm<cc>-trt<version>.cache   TensorRT timing cache, shared

A missing plan, a missing or mismatched sidecar, or a changed key means a rebuild, never
a failure. Concurrent builders (threads or processes) are safe: the check-build-write
sequence runs under an ``fcntl.flock`` on the plan's ``.lock`` file, so a second builder
waits and then reuses the first one's plan; files are written to a temporary file in the
same folder and renamed into place with ``os.replace``.

Usage::

    cached = build_cached_plan("yolov8n.onnx", spec, "~/.cache/fovea/engines")
    cached.path      # PosixPath('.../yolov8n-1f0c9a2b3d4e5f60.plan')
    cached.built     # False when an existing plan was reused
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engines.tensorrt._cuda import DeviceStaging, GpuInfo, GpuQuery, query_gpu
from engines.tensorrt._fs import atomic_write_bytes, file_lock
from engines.tensorrt._imports import import_tensorrt, tensorrt_version
from engines.tensorrt.builder import BuildSpec, EfficientNMSOptions, build_engine, resolve_input
from engines.tensorrt.onnx_utils import load_header, model_digest

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CacheKey:
    """Everything a plan depends on. Any change gives another :attr:`digest`."""

    model_sha256: str
    input_name: str
    input_shape: tuple[int, int, int]
    batch: tuple[int, int, int]
    precision: str
    int8: str  # none | qdq | calibrated
    calibration_id: str | None
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    efficient_nms: EfficientNMSOptions | None
    format_version: int = CACHE_FORMAT_VERSION
    min_hw: tuple[int, int] | None = None  # the profile's smallest (H, W); None: H, W fixed

    def fields(self) -> dict[str, Any]:
        """The key as JSON-ready fields (what the sidecar records); ``min_hw`` only where set,
        so the plans of fixed-size profiles keep the keys they had before it existed."""
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["batch"] = list(self.batch)
        if self.min_hw is None:
            del out["min_hw"]
        else:
            out["min_hw"] = list(self.min_hw)
        return out

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the key's fields."""
        blob = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class CachedPlan:
    """A plan file in the cache and how it got there."""

    path: Path
    key: CacheKey
    built: bool  # True: built by this call; False: reused


def cache_key(
    onnx_path: str | Path, spec: BuildSpec, *, gpu: GpuInfo, trt_version: str
) -> CacheKey:
    """The :class:`CacheKey` of building ``onnx_path`` as ``spec`` says on ``gpu``."""
    model = load_header(onnx_path)
    inp = resolve_input(onnx_path, spec, model)
    int8 = inp.int8_mode(spec.precision)
    return CacheKey(
        model_sha256=model_digest(onnx_path, model),
        input_name=inp.name,
        input_shape=inp.chw,
        batch=spec.batch,
        precision=spec.precision,
        int8=int8,
        calibration_id=spec.calibration_id if int8 == "calibrated" else None,
        gpu_name=gpu.name,
        compute_capability=gpu.sm,
        tensorrt_version=trt_version,
        efficient_nms=spec.efficient_nms,
        min_hw=spec.min_hw,
    )


class EngineCache:
    """Plans and their sidecars in one folder; see the module docstring for the layout."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir).expanduser()

    def plan_path(self, onnx_path: str | Path, key: CacheKey) -> Path:
        """``<cache_dir>/<model-stem>-<key16>.plan``."""
        return self.dir / f"{Path(onnx_path).stem}-{key.digest[:16]}.plan"

    @staticmethod
    def sidecar_path(plan: Path) -> Path:
        """The JSON sidecar next to ``plan``."""
        return plan.with_suffix(".json")

    @staticmethod
    def lock_path(plan: Path) -> Path:
        """The lock file guarding ``plan``."""
        return plan.with_name(plan.name + ".lock")

    def calibration_cache_path(self, onnx_path: str | Path, key: CacheKey) -> Path:
        """Where the INT8 calibration cache of ``key`` lives."""
        return self.dir / f"{Path(onnx_path).stem}-{key.digest[:16]}.calib"

    def timing_cache_path(self, gpu: GpuInfo, trt_version: str) -> Path:
        """The timing cache shared by all builds on this GPU model and TensorRT version."""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu.name).strip("-").lower() or "gpu"
        return self.dir / f"timing-{slug}-sm{gpu.sm.replace('.', '')}-trt{trt_version}.cache"

    def is_valid(self, plan: Path, key: CacheKey) -> bool:
        """True when ``plan`` exists, is non-empty and its sidecar records exactly ``key``."""
        try:
            if plan.stat().st_size == 0:
                return False
            sidecar = json.loads(self.sidecar_path(plan).read_text())
        except (OSError, ValueError):
            return False
        return (
            isinstance(sidecar, dict)
            and sidecar.get("key") == key.digest
            and sidecar.get("fields") == key.fields()
        )

    def get_or_build(
        self, onnx_path: str | Path, key: CacheKey, build: Callable[[], bytes]
    ) -> CachedPlan:
        """The cached plan of ``key``; calls ``build`` once, under the lock, when there is none."""
        plan = self.plan_path(onnx_path, key)
        if self.is_valid(plan, key):
            log.debug("reusing the TensorRT plan %s", plan)
            return CachedPlan(plan, key, built=False)
        with file_lock(self.lock_path(plan)):
            if self.is_valid(plan, key):  # another builder finished while we waited
                log.info("reusing the TensorRT plan %s (built concurrently)", plan)
                return CachedPlan(plan, key, built=False)
            if plan.exists():
                log.info("the TensorRT plan %s does not match its key; rebuilding it", plan)
            started = time.monotonic()
            data = build()
            atomic_write_bytes(plan, data)
            sidecar = {
                "key": key.digest,
                "fields": key.fields(),
                "model": str(Path(onnx_path).resolve()),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_seconds": round(time.monotonic() - started, 3),
            }
            atomic_write_bytes(self.sidecar_path(plan), json.dumps(sidecar, indent=2).encode())
            log.info("built the TensorRT plan %s in %.1f s", plan, time.monotonic() - started)
            return CachedPlan(plan, key, built=True)

    def invalidate(self, plan: Path) -> None:
        """Remove ``plan`` and its sidecar (under the lock), so the next lookup rebuilds."""
        with file_lock(self.lock_path(plan)):
            for p in (plan, self.sidecar_path(plan)):
                p.unlink(missing_ok=True)


def build_cached_plan(
    onnx_path: str | Path,
    spec: BuildSpec,
    cache_dir: str | Path,
    *,
    gpu_query: GpuQuery | None = None,
    logger: Any = None,
    timing_cache: bool = True,
    staging: DeviceStaging | None = None,
) -> CachedPlan:
    """Reuse or build the plan of ``onnx_path`` + ``spec`` in ``cache_dir``.

    ``gpu_query(device_index) -> GpuInfo`` names the GPU for the key (default: torch's
    CUDA, else pycuda). With ``timing_cache`` TensorRT's timing cache persists in
    ``cache_dir`` (one per GPU model and TensorRT version). Implicit-INT8 builds keep
    their calibration cache next to the plan.
    """
    trt = import_tensorrt("Building a TensorRT engine")
    gpu = (gpu_query or query_gpu)(spec.device_index)
    version = tensorrt_version(trt)
    cache = EngineCache(cache_dir)
    key = cache_key(onnx_path, spec, gpu=gpu, trt_version=version)
    timing = cache.timing_cache_path(gpu, version) if timing_cache else None
    calibration = cache.calibration_cache_path(onnx_path, key) if key.int8 == "calibrated" else None
    return cache.get_or_build(
        onnx_path, key, lambda: build_engine(onnx_path, spec, logger, staging=staging, timing_cache=timing,
                                             calibration_cache=calibration)
    )
