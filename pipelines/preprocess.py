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

from dataclasses import dataclass
from typing import Any, Literal

from operators.boxes import LetterboxGeometry
from pipelines.config import PreprocessConfig


@dataclass(frozen=True)
class PreprocessSpec:
    """What the engine wants: dtype, memory layout and the user's preprocessing options."""

    dtype: Literal["float16", "float32"] = "float32"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    options: PreprocessConfig = PreprocessConfig()


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
    if opts.channel_order == "bgr":
        x = fn.color_space_conversion(x, image_type=types.RGB, output_type=types.BGR)
    return fn.crop_mirror_normalize(
        x,
        mean=list(opts.mean),
        std=list(opts.std),
        dtype=types.FLOAT16 if spec.dtype == "float16" else types.FLOAT,
        output_layout="FCHW" if spec.layout == "NCHW" else "FHWC",
    )
