"""Ops on detection tensors: box geometry, NMS, output decoding, postprocessing, colour.

- :mod:`operators.boxes`: box formats, IoU, letterbox geometry and its inverse.
- :mod:`operators.nms`: batched, class-aware non-maximum suppression.
- :mod:`operators.frame_nms`: per-frame top-k candidates and NMS (Triton kernel or torch).
- :mod:`operators.output_decoding`: decoding of YOLOv8/YOLO11, YOLOv5 and EfficientNMS outputs.
- :mod:`operators.postprocess`: decode → filter → NMS → map back → ``Detections``.
- :mod:`operators.color`: NV12 frames → letterboxed model input.
- :mod:`operators.transfer`: host-to-device copies that do not wait for the GPU.
- :mod:`operators.reference`: small NumPy reference implementations the tests compare to.

The names in ``__all__`` are importable from the package (``from operators import
letterbox_geometry``). Every module here needs torch, so they are imported on first
access, not when the package is: ``import operators`` stays cheap. The postprocess entry
point is :func:`operators.postprocess.postprocess`; it is not re-exported because the
package attribute ``operators.postprocess`` is the module of that name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.lazy import lazy_exports

if TYPE_CHECKING:
    from operators.boxes import (
        LetterboxGeometry,
        ResizeMode,
        box_iou,
        cxcywh_to_xyxy,
        even_letterbox_geometry,
        geometry_tensors,
        letterbox_geometry,
        to_source_pixels,
    )
    from operators.color import nv12_letterbox, nv12_to_rgb_reference, standard_of
    from operators.nms import batched_nms
    from operators.output_decoding import (
        Candidates,
        OutputLayout,
        decode_efficient_nms,
        decode_yolov5,
        decode_yolov8,
        detect_layout,
        select_outputs,
    )

_LAZY: dict[str, str] = {
    "LetterboxGeometry": "operators.boxes",
    "ResizeMode": "operators.boxes",
    "box_iou": "operators.boxes",
    "cxcywh_to_xyxy": "operators.boxes",
    "even_letterbox_geometry": "operators.boxes",
    "geometry_tensors": "operators.boxes",
    "letterbox_geometry": "operators.boxes",
    "to_source_pixels": "operators.boxes",
    "nv12_letterbox": "operators.color",
    "nv12_to_rgb_reference": "operators.color",
    "standard_of": "operators.color",
    "batched_nms": "operators.nms",
    "Candidates": "operators.output_decoding",
    "OutputLayout": "operators.output_decoding",
    "decode_efficient_nms": "operators.output_decoding",
    "decode_yolov5": "operators.output_decoding",
    "decode_yolov8": "operators.output_decoding",
    "detect_layout": "operators.output_decoding",
    "select_outputs": "operators.output_decoding",
}





__all__ = [
    "Candidates",
    "LetterboxGeometry",
    "OutputLayout",
    "ResizeMode",
    "batched_nms",
    "box_iou",
    "cxcywh_to_xyxy",
    "decode_efficient_nms",
    "decode_yolov5",
    "decode_yolov8",
    "detect_layout",
    "even_letterbox_geometry",
    "geometry_tensors",
    "letterbox_geometry",
    "nv12_letterbox",
    "nv12_to_rgb_reference",
    "select_outputs",
    "standard_of",
    "to_source_pixels",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
