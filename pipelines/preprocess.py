"""The preprocessing graph, shared by every decode path: DALI ops on the decode device.

Frames (``FHWC`` uint8 sequences, RGB) are resized to the letterbox geometry computed by
:func:`operators.boxes.letterbox_geometry`, padded to the model input with an exact
integer offset (``fn.slice`` with a negative start), normalised, cast and laid out in one
``crop_mirror_normalize``. The mapping back to source pixels uses the same geometry, so
boxes round-trip exactly.

Usage (inside a ``pipeline_def``)::

    geom = letterbox_geometry(1920, 1080, 640, 640)
    x = preprocess(frames, geom, PreprocessSpec(dtype="float16", layout="NCHW"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from operators.boxes import LetterboxGeometry, letterbox_geometry
from streams.config import PreprocessConfig


@dataclass(frozen=True)
class PreprocessSpec:
    """What the engine wants: dtype, memory layout and the user's preprocessing options."""

    dtype: Literal["float16", "float32"] = "float32"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    options: PreprocessConfig = field(default_factory=PreprocessConfig)
    # also return the decoded full-size frames (``DecodedBatch.source_frames``), for the
    # stages that need source pixels (the crops of :mod:`pipelines.cascade`)
    keep_source: bool = False


def preprocess(frames: Any, geom: LetterboxGeometry, spec: PreprocessSpec) -> Any:
    """DALI graph: ``FHWC uint8`` frames → model input sequence (``FCHW`` or ``FHWC``).

    Must be called inside a DALI pipeline definition; ``frames`` is a DataNode on the
    CPU or GPU and the ops run on the same device.
    """
    from nvidia.dali import fn, types

    opts = spec.options
    x = frames
    if (geom.resized_w, geom.resized_h) != (geom.src_w, geom.src_h):
        x = fn.resize(
            x,
            resize_x=float(geom.resized_w),
            resize_y=float(geom.resized_h),
            interp_type=types.INTERP_LINEAR,
            antialias=False,
        )
    if (geom.resized_w, geom.resized_h) != (geom.dst_w, geom.dst_h):
        x = fn.slice(
            x,
            start=[-geom.pad_y, -geom.pad_x],
            shape=[geom.dst_h, geom.dst_w],
            axis_names="HW",
            out_of_bounds_policy="pad",
            fill_values=float(opts.pad_value),
        )
    return _normalize(x, spec, sequence=True)


def preprocess_per_sample(
    frames: Any, resize_w: Any, resize_h: Any, start: Any, dst: tuple[int, int],
    spec: PreprocessSpec, sequence: bool,
) -> Any:
    """Like :func:`preprocess`, with a geometry per sample given as DALI inputs.

    For batches mixing sources of different sizes (live streams): ``resize_w`` and
    ``resize_h`` are float scalars per sample (``LetterboxGeometry.resized_w/h``) and
    ``start`` is ``int32 [-pad_y, -pad_x]`` per sample; ``dst`` is the model input ``(h, w)``.
    ``frames`` are ``HWC`` images, or ``FHWC`` sequences when ``sequence`` is true.
    """
    from nvidia.dali import fn, types

    x = fn.resize(frames, resize_x=resize_w, resize_y=resize_h,
                  interp_type=types.INTERP_LINEAR, antialias=False)
    x = fn.slice(x, start=start, shape=[dst[0], dst[1]], axis_names="HW",
                 out_of_bounds_policy="pad", fill_values=float(spec.options.pad_value))
    return _normalize(x, spec, sequence)


def per_sample_inputs(geoms: Sequence[LetterboxGeometry]) -> dict[str, list[Any]]:
    """The ``rw``/``rh``/``start`` inputs of :func:`preprocess_per_sample` for ``geoms``."""
    return {
        "rw": [np.float32(g.resized_w) for g in geoms],
        "rh": [np.float32(g.resized_h) for g in geoms],
        "start": [np.array([-g.pad_y, -g.pad_x], np.int32) for g in geoms],
    }


class HostPreprocessor:
    """The preprocessing graph on DALI's CPU operators, for RGB frames already on the host.

    For frames that do not come out of a decode pipeline (INT8 calibration samples,
    benchmark samples): they go through the very same DALI ops as the pipeline's frames,
    with a letterbox geometry per frame, so they match what the engine sees in a job.

    Usage::

        pre = HostPreprocessor((640, 640), PreprocessConfig())
        x = pre([frame_a, frame_b])        # float32 [2, 3, 640, 640]
    """

    def __init__(self, size: tuple[int, int], options: PreprocessConfig, max_batch: int = 8) -> None:
        self.size = size
        self.spec = PreprocessSpec(dtype="float32", layout="NCHW", options=options)
        self.max_batch = max_batch
        self._pipe: Any = None

    def _build(self) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=self.max_batch, num_threads=1, device_id=None, prefetch_queue_depth=1)
        def graph() -> Any:
            frames = fn.external_source(name="data", dtype=types.UINT8, ndim=3, layout="HWC")
            rw = fn.external_source(name="rw", dtype=types.FLOAT)
            rh = fn.external_source(name="rh", dtype=types.FLOAT)
            start = fn.external_source(name="start", dtype=types.INT32)
            return preprocess_per_sample(frames, rw, rh, start, self.size, self.spec, sequence=False)

        pipe = graph()
        pipe.build()
        return pipe

    def __call__(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """``uint8 [H, W, 3]`` RGB frames (any sizes) → ``float32 [N, 3, h, w]``."""
        if self._pipe is None:
            self._pipe = self._build()
        h, w = self.size
        out: list[np.ndarray] = []
        for i in range(0, len(frames), self.max_batch):
            chunk = [np.ascontiguousarray(f) for f in frames[i:i + self.max_batch]]
            geoms = [letterbox_geometry(f.shape[1], f.shape[0], w, h, self.spec.options.resize) for f in chunk]
            (res,) = self._pipe.run(data=chunk, **per_sample_inputs(geoms))
            out.append(np.array(res.as_tensor()))
        return np.concatenate(out) if out else np.zeros((0, 3, h, w), np.float32)


def _normalize(x: Any, spec: PreprocessSpec, sequence: bool) -> Any:
    from nvidia.dali import fn, types

    opts = spec.options
    if opts.channel_order == "bgr":
        x = fn.color_space_conversion(x, image_type=types.RGB, output_type=types.BGR)
    layout = "CHW" if spec.layout == "NCHW" else "HWC"
    return fn.crop_mirror_normalize(
        x,
        mean=list(opts.mean),
        std=list(opts.std),
        dtype=types.FLOAT16 if spec.dtype == "float16" else types.FLOAT,
        output_layout=("F" + layout) if sequence else layout,
    )
