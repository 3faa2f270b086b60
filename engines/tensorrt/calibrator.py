"""Implicit INT8 calibration: an ``IInt8EntropyCalibrator2`` fed with NumPy batches.

TensorRT deprecated implicit INT8 (calibrators) in 10.1 in favour of explicit Q/DQ
quantization, and TensorRT 11 removes it. :func:`calibrator_available` tells whether the
installed TensorRT still has it; :func:`make_entropy_calibrator` builds one whose
batches are ``float32 [N, C, H, W]`` arrays, re-batched to a fixed size (TensorRT
calibrates at one shape, the calibration profile's), copied to the GPU through a
:class:`engines.tensorrt._cuda.DeviceStaging`, and whose calibration cache (TensorRT's
scale table) is read from and written atomically to a file, so later builds skip the
calibration pass.

Calibration batches from videos: :func:`video_calibration` decodes frames with PyAV on
the CPU and runs them through a :data:`FramePreprocessor` its caller supplies. The run
path and ``fovea build-engine`` supply the pipeline's own DALI preprocessing graph
(:class:`pipelines.preprocess.HostPreprocessor`, with the job's ``preprocess:`` section),
so the engine is calibrated on exactly what a job feeds it; this package cannot import it
(``pipelines`` is a higher layer).

Usage::

    calib = make_entropy_calibrator(trt, batches, batch_shape=(8, 3, 640, 640),
                                    cache_path=Path("model.calib"), staging=default_staging(0))
    config.int8_calibrator = calib
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.tensorrt._cuda import DeviceStaging
from engines.tensorrt._fs import atomic_write_bytes
from engines.tensorrt._imports import tensorrt_major, tensorrt_version
from streams.config import PreprocessConfig
from streams.errors import ConfigError, EngineError, MissingDependencyError, ShapeError

log = logging.getLogger(__name__)

# Preprocessed NCHW float32 batches, or a function of the engine's (C, H, W) giving them.
CalibrationSource = Iterable[np.ndarray] | Callable[[tuple[int, int, int]], Iterable[np.ndarray]]

#: Given the engine input's ``(height, width)``, a function from RGB frames (``uint8
#: [H, W, 3]``, any sizes) to the ``float32 [N, 3, height, width]`` batch a job would feed
#: the engine for them, e.g. ``functools.partial(HostPreprocessor, options=cfg.preprocess)``.
FramePreprocessor = Callable[[tuple[int, int]], Callable[[Sequence[np.ndarray]], np.ndarray]]


def calibrator_available(trt: Any) -> bool:
    """True when this TensorRT still offers implicit INT8 calibration (before TensorRT 11)."""
    return hasattr(trt, "IInt8EntropyCalibrator2") and tensorrt_major(trt) < 11


def require_calibrator(trt: Any) -> None:
    """Raise EngineError, explaining explicit Q/DQ, where implicit INT8 is gone."""
    if not calibrator_available(trt):
        raise EngineError(
            f"TensorRT {tensorrt_version(trt)} has no implicit INT8 calibration "
            "(IInt8EntropyCalibrator2 was removed in TensorRT 11): quantize the model "
            "explicitly (an ONNX model with QuantizeLinear/DequantizeLinear nodes, e.g. from "
            "NVIDIA ModelOpt) and build it with precision int8 again"
        )


def rebatch(
    batches: Iterable[np.ndarray], batch_size: int, chw: tuple[int, int, int]
) -> Iterator[np.ndarray]:
    """Regroup ``[N, C, H, W]`` (or ``[C, H, W]``) arrays into ``float32 [batch_size, C, H, W]``.

    Samples of the wrong C/H/W raise ShapeError; a last partial batch is dropped.
    """
    pending: list[np.ndarray] = []
    have = 0
    for batch in batches:
        arr = np.asarray(batch)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != chw:
            raise ShapeError(
                f"calibration batch has shape {list(arr.shape)}; "
                f"expected [N, {chw[0]}, {chw[1]}, {chw[2]}]"
            )
        pending.append(arr)
        have += arr.shape[0]
        while have >= batch_size:
            joined = np.concatenate(pending, axis=0) if len(pending) > 1 else pending[0]
            yield np.ascontiguousarray(joined[:batch_size], dtype=np.float32)
            rest = joined[batch_size:]
            pending = [rest] if len(rest) else []
            have = len(rest)
    if have:
        log.info("INT8 calibration: dropped the last %d sample(s) (not a whole batch)", have)


def make_entropy_calibrator(
    trt: Any,
    batches: Iterable[np.ndarray] | None,
    *,
    batch_shape: tuple[int, int, int, int],
    cache_path: Path | None,
    staging: DeviceStaging | None,
) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``batches`` (``None``: calibration cache only).

    ``batch_shape`` is ``(N, C, H, W)`` of every batch TensorRT receives (the calibration
    profile's shape). With a readable ``cache_path`` TensorRT takes the scales from the
    cache and asks for no batches. Raises EngineError where the installed TensorRT has
    no implicit INT8 (TensorRT 11 and later).
    """
    require_calibrator(trt)
    base = trt.IInt8EntropyCalibrator2
    n, c, h, w = batch_shape

    class EntropyCalibrator(base):  # type: ignore[misc, valid-type]
        """Feeds Fovea's preprocessed batches to TensorRT's entropy calibration."""

        def __init__(self) -> None:
            base.__init__(self)
            self.cache_path = cache_path
            self.batches_fed = 0
            self._batches = rebatch(batches, n, (c, h, w)) if batches is not None else iter(())
            self._staging = staging

        def get_batch_size(self) -> int:
            # Explicit-batch networks take the batch from the calibration profile's
            # shape; TensorRT 10 deprecates this method and expects 1 here.
            return 1

        def get_batch(self, names: Sequence[str], *args: Any) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                log.info("INT8 calibration: %d batch(es) of %d fed", self.batches_fed, n)
                self.close()
                return None
            if self._staging is None:
                raise EngineError("INT8 calibration needs a device staging buffer")
            self.batches_fed += 1
            return [self._staging.upload(batch)]

        def read_calibration_cache(self, *args: Any) -> bytes | None:
            if self.cache_path is not None and self.cache_path.is_file():
                log.info("INT8 calibration: using the calibration cache %s", self.cache_path)
                return self.cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if self.cache_path is not None:
                atomic_write_bytes(self.cache_path, bytes(cache))
                log.info("INT8 calibration: wrote the calibration cache %s", self.cache_path)

        def close(self) -> None:
            if self._staging is not None:
                self._staging.close()

    return EntropyCalibrator()


def read_video_frames(paths: Sequence[str | Path], max_frames: int) -> Iterator[np.ndarray]:
    """Up to ``max_frames`` RGB frames (``uint8 [H, W, 3]``) spread evenly over ``paths``.

    Decodes with PyAV on the CPU; each file gives about ``max_frames / len(paths)`` frames
    taken at a regular stride over the file.
    """
    try:
        import av
    except ImportError as e:
        raise MissingDependencyError("av", "INT8 calibration from videos", "pip install av") from e
    if not paths:
        return
    per_file = max(1, max_frames // len(paths))
    total = 0
    for path in paths:
        try:
            container = av.open(str(path))
        except Exception as e:  # PyAV raises its own error classes (av.error.*)
            raise EngineError(f"INT8 calibration: cannot open {path}: {e}") from e
        with container:
            stream = container.streams.video[0]
            stride = max(1, int(stream.frames or 0) // per_file)
            taken = 0
            for i, frame in enumerate(container.decode(stream)):
                if i % stride:
                    continue
                yield frame.to_ndarray(format="rgb24")
                taken += 1
                total += 1
                if taken >= per_file or total >= max_frames:
                    break
        if total >= max_frames:
            return


def video_calibration_source(
    paths: Sequence[str | Path],
    max_frames: int,
    preprocessor: FramePreprocessor,
    batch_size: int = 8,
) -> Callable[[tuple[int, int, int]], Iterator[np.ndarray]]:
    """A :data:`CalibrationSource` decoding ``paths`` once the engine's (C, H, W) is known,
    ``batch_size`` frames at a time through ``preprocessor``."""

    def batches(chw: tuple[int, int, int]) -> Iterator[np.ndarray]:
        if chw[0] != 3:
            raise ShapeError(f"video calibration needs a 3-channel input, the model takes {chw[0]}")
        prepare = preprocessor((chw[1], chw[2]))
        pending: list[np.ndarray] = []
        for frame in read_video_frames(paths, max_frames):
            pending.append(frame)
            if len(pending) == batch_size:
                yield prepare(pending)
                pending = []
        if pending:
            yield prepare(pending)

    return batches


def video_calibration(
    paths: Sequence[str | Path],
    max_frames: int,
    preprocess: PreprocessConfig,
    preprocessor: FramePreprocessor | None,
) -> tuple[CalibrationSource, str]:
    """INT8 calibration from videos: the :data:`CalibrationSource` and its identity (for the
    engine cache key), for :class:`~engines.tensorrt.builder.BuildSpec`'s ``calibration``
    and ``calibration_id``.

    ``preprocess`` is the job's ``preprocess:`` section, which ``preprocessor`` applies
    (part of the identity). Nothing is decoded until TensorRT asks for the batches (a cached
    plan or calibration cache needs none). A missing video is a ConfigError; a missing
    ``preprocessor`` an EngineError (the caller above this package must supply it).
    """
    missing = [str(v) for v in paths if not Path(v).expanduser().is_file()]
    if missing:
        raise ConfigError("engine.tensorrt.int8_calibration", f"no such video file(s): {missing}")
    if preprocessor is None:
        raise EngineError(
            "INT8 calibration from videos needs a frame preprocessor (pipelines.preprocess."
            "HostPreprocessor): open the engine through fovea run / build-engine, or pass one"
        )
    return (video_calibration_source(paths, max_frames, preprocessor),
            calibration_id(paths, max_frames, preprocess))


def calibration_id(
    paths: Sequence[str | Path], max_frames: int, preprocess: PreprocessConfig | None = None
) -> str:
    """A short, stable identity of a video calibration set, for the engine cache key."""
    files = []
    for p in paths:
        path = Path(p).expanduser().resolve()
        size = path.stat().st_size if path.is_file() else -1
        files.append([str(path), size])
    pre = preprocess or PreprocessConfig()
    blob = json.dumps({"files": files, "frames": max_frames, "pre": repr(pre)}, sort_keys=True)
    return "videos-" + hashlib.sha256(blob.encode()).hexdigest()[:16]
