"""Box formats, IoU, and the letterbox geometry between source frames and model input.

The letterbox geometry is shared by preprocessing (the DALI pipelines resize each frame to
``(resized_w, resized_h)`` and paste it at ``(pad_x, pad_y)`` on a ``dst_w x dst_h``
canvas) and postprocessing (boxes found in model-input pixels are mapped back with
:func:`to_source_pixels`). Both sides must use :func:`letterbox_geometry` so they agree
to the pixel.

Usage::

    g = letterbox_geometry(1920, 1080, 640, 640)
    (g.resized_w, g.resized_h, g.pad_x, g.pad_y)      # (640, 360, 0, 140)
    pad, scale, size = geometry_tensors([g, g], device="cpu")
    src_boxes = to_source_pixels(model_boxes, pad, scale, size)   # Tensor[N, 4] xyxy

Boxes are ``xyxy`` (x1, y1, x2, y2) in pixels unless a name says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from operators.transfer import upload
from streams.errors import ShapeError

ResizeMode = Literal["letterbox", "stretch"]

__all__ = [
    "LetterboxGeometry",
    "ResizeMode",
    "box_iou",
    "cxcywh_to_xyxy",
    "geometry_tensors",
    "letterbox_geometry",
    "to_source_pixels",
]


@dataclass(frozen=True)
class LetterboxGeometry:
    """How one source frame was placed on the model-input canvas.

    Attributes:
        src_w, src_h: source frame size in pixels.
        dst_w, dst_h: model-input canvas size in pixels.
        resized_w, resized_h: size the frame was resized to (``<= dst``).
        pad_x, pad_y: left and top padding in model-input pixels (the frame's offset).
        scale_x, scale_y: ``resized / src`` per axis (model-input px per source px).
    """

    src_w: int
    src_h: int
    dst_w: int
    dst_h: int
    resized_w: int
    resized_h: int
    pad_x: int
    pad_y: int
    scale_x: float
    scale_y: float


def letterbox_geometry(
    src_w: int, src_h: int, dst_w: int, dst_h: int, mode: ResizeMode = "letterbox"
) -> LetterboxGeometry:
    """The geometry of resizing a ``src_w x src_h`` frame onto a ``dst_w x dst_h`` canvas.

    ``"letterbox"`` keeps the aspect ratio: ``r = min(dst_w / src_w, dst_h / src_h)``,
    ``resized = max(1, round(src * r))`` (clamped to the canvas) and the image is centred,
    ``pad = (dst - resized) // 2`` (the same rounding as Ultralytics' ``LetterBox``).
    ``"stretch"`` resizes to the whole canvas without padding.

    Usage::

        letterbox_geometry(640, 480, 640, 640)
        # LetterboxGeometry(src_w=640, src_h=480, dst_w=640, dst_h=640, resized_w=640,
        #                   resized_h=480, pad_x=0, pad_y=80, scale_x=1.0, scale_y=1.0)

    Raises:
        ShapeError: a size is not a positive integer.
        ValueError: ``mode`` is neither ``"letterbox"`` nor ``"stretch"``.
    """
    sizes = (src_w, src_h, dst_w, dst_h)
    if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in sizes):
        raise ShapeError(
            f"letterbox_geometry: expected positive integer sizes (src_w, src_h, dst_w, dst_h), "
            f"got {sizes}"
        )
    if mode == "letterbox":
        r = min(dst_w / src_w, dst_h / src_h)
        resized_w = min(dst_w, max(1, round(src_w * r)))
        resized_h = min(dst_h, max(1, round(src_h * r)))
    elif mode == "stretch":
        resized_w, resized_h = dst_w, dst_h
    else:
        raise ValueError(f"letterbox_geometry: mode must be 'letterbox' or 'stretch', got {mode!r}")
    return LetterboxGeometry(
        src_w=src_w,
        src_h=src_h,
        dst_w=dst_w,
        dst_h=dst_h,
        resized_w=resized_w,
        resized_h=resized_h,
        pad_x=(dst_w - resized_w) // 2,
        pad_y=(dst_h - resized_h) // 2,
        scale_x=resized_w / src_w,
        scale_y=resized_h / src_h,
    )


def even_letterbox_geometry(
    src_w: int, src_h: int, dst_w: int, dst_h: int, mode: ResizeMode = "letterbox"
) -> LetterboxGeometry:
    """:func:`letterbox_geometry` with the resized size rounded down to even numbers.

    NVDEC scales to even sizes only (:mod:`pipelines.nvdec`); the live GPU path places and
    maps back frames with this geometry so both sides agree to the pixel.
    """
    g = letterbox_geometry(src_w, src_h, dst_w, dst_h, mode)
    rw, rh = max(2, g.resized_w - g.resized_w % 2), max(2, g.resized_h - g.resized_h % 2)
    if (rw, rh) == (g.resized_w, g.resized_h):
        return g
    return LetterboxGeometry(src_w=src_w, src_h=src_h, dst_w=dst_w, dst_h=dst_h, resized_w=rw, resized_h=rh,
                             pad_x=(dst_w - rw) // 2, pad_y=(dst_h - rh) // 2, scale_x=rw / src_w,
                             scale_y=rh / src_h)


def _check_boxes(name: str, boxes: torch.Tensor) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ShapeError(f"{name}: expected shape (N, 4), got {tuple(boxes.shape)}")


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Convert ``Tensor[..., 4]`` (cx, cy, w, h) boxes to (x1, y1, x2, y2).

    Usage::

        cxcywh_to_xyxy(torch.tensor([[50.0, 40.0, 20.0, 10.0]]))   # [[40, 35, 60, 45]]
    """
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ShapeError(f"cxcywh_to_xyxy: expected shape (..., 4), got {tuple(boxes.shape)}")
    centre = boxes[..., :2]
    half = boxes[..., 2:] / 2
    return torch.cat([centre - half, centre + half], dim=-1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``a: Tensor[N, 4]`` and ``b: Tensor[M, 4]`` xyxy boxes: ``Tensor[N, M]``.

    Pairs whose union is empty (degenerate boxes) get IoU 0. Computed in the inputs' dtype
    (pass float32 for exact agreement with :func:`operators.reference.box_iou_np`).

    Usage::

        box_iou(torch.tensor([[0.0, 0, 2, 1]]), torch.tensor([[1.0, 0, 2, 1]]))  # [[0.5]]
    """
    _check_boxes("box_iou(a)", a)
    _check_boxes("box_iou(b)", b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def to_source_pixels(
    boxes: torch.Tensor, pad: torch.Tensor, scale: torch.Tensor, size: torch.Tensor
) -> torch.Tensor:
    """Map ``Tensor[N, 4]`` xyxy boxes from model-input pixels to source-frame pixels.

    ``x = (x - pad_x) / scale_x`` clipped to ``[0, src_w]``, and likewise for y.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy in model-input pixels.
        pad: ``Tensor[N, 2]`` (pad_x, pad_y) of each box's frame.
        scale: ``Tensor[N, 2]`` (scale_x, scale_y) of each box's frame.
        size: ``Tensor[N, 2]`` (src_w, src_h) of each box's frame.

    Returns:
        ``Tensor[N, 4]`` float32 xyxy in source-frame pixels.

    Usage::

        pad, scale, size = geometry_tensors([geometry] * len(boxes), boxes.device)
        src = to_source_pixels(boxes, pad, scale, size)
    """
    _check_boxes("to_source_pixels(boxes)", boxes)
    n = boxes.shape[0]
    for name, t in (("pad", pad), ("scale", scale), ("size", size)):
        if tuple(t.shape) != (n, 2):
            raise ShapeError(
                f"to_source_pixels({name}): expected shape ({n}, 2), got {tuple(t.shape)}"
            )
    dtype = torch.float32
    pad4 = pad.to(dtype).repeat(1, 2)
    scale4 = scale.to(dtype).repeat(1, 2)
    size4 = size.to(dtype).repeat(1, 2)
    out = (boxes.to(dtype) - pad4) / scale4
    return torch.minimum(out.clamp(min=0), size4)


def geometry_tensors(
    geoms: Sequence[LetterboxGeometry], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-geometry ``(pad, scale, size)``, each ``float32[len(geoms), 2]`` on ``device``.

    Index the rows with each box's frame index to feed :func:`to_source_pixels`.

    Usage::

        pad, scale, size = geometry_tensors(geoms, "cuda:0")
        src = to_source_pixels(boxes, pad[frame_idx], scale[frame_idx], size[frame_idx])
    """
    rows = [(g.pad_x, g.pad_y, g.scale_x, g.scale_y, g.src_w, g.src_h) for g in geoms]
    table = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), 6).to(torch.float32)
    table = upload(table, device)  # no wait for the GPU (a pageable copy would wait)
    return table[:, 0:2], table[:, 2:4], table[:, 4:6]
