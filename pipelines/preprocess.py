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
from operators.letterbox import canvas_hw
from streams.config import PreprocessConfig
from streams.errors import ShapeError


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
    frames: Any, resize_w: Any, resize_h: Any, start: Any, dst: tuple[int, int] | Any,
    spec: PreprocessSpec, sequence: bool,
) -> Any:
    """Like :func:`preprocess`, with a geometry per sample given as DALI inputs.

    For batches mixing sources of different sizes (live streams): ``resize_w`` and
    ``resize_h`` are float scalars per sample (``LetterboxGeometry.resized_w/h``) and
    ``start`` is ``int32 [-pad_y, -pad_x]`` per sample; ``dst`` is the model input ``(h, w)``,
    or a DALI input of ``int32 [h, w]`` per sample (a canvas per frame shape).
    ``frames`` are ``HWC`` images, or ``FHWC`` sequences when ``sequence`` is true.
    """
    from nvidia.dali import fn, types

    x = fn.resize(frames, resize_x=resize_w, resize_y=resize_h,
                  interp_type=types.INTERP_LINEAR, antialias=False)
    shape = [dst[0], dst[1]] if isinstance(dst, tuple) else dst  # a DataNode: a canvas per sample
    x = fn.slice(x, start=start, shape=shape, axis_names="HW",
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
    benchmark samples, the parity tests against the exporting framework): they go through
    the very same DALI ops as the pipeline's frames, with a letterbox geometry per frame, so
    they match what the engine sees in a job.

    With ``stride`` (a dynamic-shape export), each frame is letterboxed into the smallest
    canvas whose sides are multiples of ``stride`` around its resized frame, as Ultralytics
    runs such a model (:func:`operators.letterbox.canvas_hw`): frames of one shape share a
    canvas, so a batch of one source's frames stays one array.

    Usage::

        pre = HostPreprocessor((640, 640), PreprocessConfig())
        x = pre([frame_a, frame_b])        # float32 [2, 3, 640, 640]
        rect = HostPreprocessor((320, 320), PreprocessConfig(), stride=32)
        rect.geometry(768, 432)            # a 320x192 canvas
        x = rect([frame_768x432])          # float32 [1, 3, 192, 320]
    """

    def __init__(self, size: tuple[int, int], options: PreprocessConfig, max_batch: int = 8,
                 stride: int | None = None) -> None:
        self.size = size
        self.spec = PreprocessSpec(dtype="float32", layout="NCHW", options=options)
        self.max_batch = max_batch
        self.stride = stride
        self._pipe: Any = None

    def geometry(self, src_w: int, src_h: int) -> LetterboxGeometry:
        """Where a ``src_w x src_h`` frame goes: the model input, or its rectangle with ``stride``."""
        h, w = self.size
        if self.stride is not None and self.spec.options.resize == "letterbox":
            h, w = canvas_hw(src_w, src_h, self.size, self.stride, rect=True)
        return letterbox_geometry(src_w, src_h, w, h, self.spec.options.resize)

    def _build(self) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=self.max_batch, num_threads=1, device_id=None, prefetch_queue_depth=1)
        def graph() -> Any:
            frames = fn.external_source(name="data", dtype=types.UINT8, ndim=3, layout="HWC")
            rw = fn.external_source(name="rw", dtype=types.FLOAT)
            rh = fn.external_source(name="rh", dtype=types.FLOAT)
            start = fn.external_source(name="start", dtype=types.INT32)
            shape = fn.external_source(name="shape", dtype=types.INT32)
            return preprocess_per_sample(frames, rw, rh, start, shape, self.spec, sequence=False)

        pipe = graph()
        pipe.build()
        return pipe

    def __call__(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """``uint8 [H, W, 3]`` RGB frames (any sizes; with ``stride``, of one canvas) →
        ``float32 [N, 3, h, w]``."""
        if self._pipe is None:
            self._pipe = self._build()
        geoms = [self.geometry(f.shape[1], f.shape[0]) for f in frames]
        canvases = {(g.dst_h, g.dst_w) for g in geoms}
        if len(canvases) > 1:
            raise ShapeError(f"HostPreprocessor: frames of {len(canvases)} canvases {sorted(canvases)} in one call; "
                             "with stride, give frames of one shape (one source) at a time")
        h, w = canvases.pop() if canvases else self.size
        out: list[np.ndarray] = []
        for i in range(0, len(frames), self.max_batch):
            chunk = [np.ascontiguousarray(f) for f in frames[i:i + self.max_batch]]
            part = geoms[i:i + self.max_batch]
            shapes = [np.array([g.dst_h, g.dst_w], np.int32) for g in part]
            (res,) = self._pipe.run(data=chunk, shape=shapes, **per_sample_inputs(part))
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
