"""Instance masks of a segmentation model, decoded on the outputs' device from its prototypes.

A YOLOv8/11/26 segmentation model gives every detection ``nm`` mask coefficients and every
frame ``nm`` prototype maps ``[nm, mh, mw]`` covering the model input (a quarter of its
resolution). A detection's mask logits are ``coefficients @ prototypes``; Ultralytics
upsamples them bilinearly (half-pixel centres) to the input, thresholds at 0 (probability
0.5) and crops them to the box.

Fovea writes masks in source-frame pixels: each source pixel's centre is mapped through
the frame's letterbox to a point of the model input; the pixel is in the mask when that
point is inside the box as Ultralytics crops it (the input pixels whose index lies in
``[x1, x2)``: their centres in ``[x1 + 0.5, x2 + 0.5)``) and the logit map, sampled there
bilinearly (half-pixel centres, clamped at the borders, as ``F.interpolate(...,
mode="bilinear")``), is above 0. The bitmap covers the source pixels that can pass
(:func:`box_pixel_bounds`). All sampling happens on the device in a few vectorised
operations per batch, whatever the number of detections; the host gets one copy of the bits.

Usage::

    masks = instance_masks(protos, coefs, proto_rows, boxes_src, geoms, (640, 640))
    masks[0].bitmap        # bool[h, w], masks[0].x, masks[0].y: its top-left in frame pixels
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from operators.boxes import LetterboxGeometry
from operators.transfer import upload
from streams.detections import InstanceMask
from streams.errors import ShapeError

__all__ = ["box_pixel_bounds", "instance_masks", "mask_logit_maps"]

#: Mask pixels sampled per device pass (bounds the temporaries: ~10 floats a pixel).
PIXELS_PER_PASS = 4_000_000


def box_pixel_bounds(boxes: npt.ArrayLike, geoms: Sequence[LetterboxGeometry]) -> npt.NDArray[np.int64]:
    """``int64[M, 4]`` (x0, y0, x1, y1): the source pixels a mask of each xyxy box (source
    pixels) may cover: those it touches, and half an input pixel more to the right and the
    bottom (the crop's half-pixel shift), clipped to the frame."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(geoms) != len(b):
        raise ShapeError(f"box_pixel_bounds: {len(b)} boxes but {len(geoms)} geometries")
    size = np.array([[g.src_w, g.src_h, g.src_w, g.src_h] for g in geoms], np.float64).reshape(-1, 4)
    half = np.array([[0.5 / g.scale_x, 0.5 / g.scale_y] for g in geoms], np.float64).reshape(-1, 2)
    lo = np.floor(b[:, :2])
    hi = np.ceil(b[:, 2:] + half)
    out = np.concatenate([lo, np.maximum(hi, lo)], axis=1)
    return np.clip(out, 0, size).astype(np.int64)


def mask_logit_maps(protos: torch.Tensor, coefs: torch.Tensor, proto_rows: Sequence[int]) -> torch.Tensor:
    """``float32[M, mh, mw]``: each detection's coefficients times its frame's prototypes.

    ``protos`` is ``[B, nm, mh, mw]``; ``proto_rows[i]`` is detection ``i``'s batch row.
    """
    if protos.ndim != 4 or coefs.ndim != 2 or coefs.shape[1] != protos.shape[1] or len(proto_rows) != len(coefs):
        raise ShapeError(f"mask_logit_maps: prototypes {tuple(protos.shape)}, coefficients {tuple(coefs.shape)}, "
                         f"{len(proto_rows)} rows")
    _, nm, mh, mw = protos.shape
    maps = torch.empty((len(coefs), mh * mw), dtype=torch.float32, device=coefs.device)
    rows = np.asarray(proto_rows, np.int64)
    start = 0
    while start < len(rows):  # detections come grouped by row: one matmul per run
        stop = start + int(np.argmax(np.append(rows[start:] != rows[start], True)))
        maps[start:stop] = coefs[start:stop].to(torch.float32) @ protos[int(rows[start])].reshape(nm, -1).float()
        start = stop
    return maps.view(len(coefs), mh, mw)


def instance_masks(
    protos: torch.Tensor,
    coefs: torch.Tensor,
    proto_rows: Sequence[int],
    boxes: npt.ArrayLike,
    geoms: Sequence[LetterboxGeometry],
    input_hw: tuple[int, int],
) -> list[InstanceMask]:
    """Each detection's mask over its box, in source-frame pixels (see the module docstring).

    Args:
        protos: ``[B, nm, mh, mw]`` prototypes of the batch (any float dtype, any device).
        coefs: ``[M, nm]`` the kept detections' coefficients, on the same device.
        proto_rows: each detection's batch row in ``protos``; detections of one row together.
        boxes: ``float[M, 4]`` xyxy in source pixels (host).
        geoms: each detection's frame geometry.
        input_hw: the model input ``(h, w)`` the prototypes cover.
    """
    m = len(coefs)
    if m == 0:
        return []
    maps = mask_logit_maps(protos, coefs, proto_rows).reshape(m, -1)
    mh, mw = protos.shape[2], protos.shape[3]
    bounds = box_pixel_bounds(boxes, geoms)
    widths = bounds[:, 2] - bounds[:, 0]
    heights = bounds[:, 3] - bounds[:, 1]
    areas = widths * heights
    src = np.asarray(boxes, np.float64).reshape(-1, 4)
    params = np.array([[b[0], b[1], w, g.scale_x, g.pad_x, g.scale_y, g.pad_y,
                        s[0] * g.scale_x + g.pad_x + 0.5, s[1] * g.scale_y + g.pad_y + 0.5,
                        s[2] * g.scale_x + g.pad_x + 0.5, s[3] * g.scale_y + g.pad_y + 0.5]
                       for b, w, g, s in zip(bounds, widths, geoms, src, strict=True)], np.float64).astype(np.float32)
    params_d = upload(torch.from_numpy(params), coefs.device)
    bits: list[torch.Tensor] = []
    start = 0
    while start < m:  # passes of at most PIXELS_PER_PASS pixels (at least one detection each)
        stop = start + max(1, int(np.searchsorted(np.cumsum(areas[start:]), PIXELS_PER_PASS, side="right")))
        bits.append(_sample(maps, params_d, start, stop, areas[start:stop], (mh, mw), input_hw))
        start = stop
    host = torch.cat(bits).cpu().numpy() if bits else np.zeros(0, bool)  # the one copy to the host
    out: list[InstanceMask] = []
    offset = 0
    for i in range(m):
        h, w, a = int(heights[i]), int(widths[i]), int(areas[i])
        bitmap = host[offset:offset + a].reshape(h, w)
        offset += a
        g = geoms[i]
        out.append(InstanceMask(int(bounds[i, 0]), int(bounds[i, 1]), bitmap, (g.src_h, g.src_w)))
    return out


def _sample(
    maps: torch.Tensor, params: torch.Tensor, start: int, stop: int, areas: npt.NDArray[np.int64],
    proto_hw: tuple[int, int], input_hw: tuple[int, int],
) -> torch.Tensor:
    """The mask bits of detections ``start:stop``, row-major over each box, concatenated."""
    device = maps.device
    total = int(areas.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.bool, device=device)
    counts = upload(torch.from_numpy(areas.astype(np.int64)), device)
    det = torch.repeat_interleave(torch.arange(start, stop, device=device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=device) - first[det - start]
    p = params[det]
    width = p[:, 2].to(torch.int64)
    u = p[:, 0] + (local % width).to(torch.float32)
    v = p[:, 1] + torch.div(local, width, rounding_mode="floor").to(torch.float32)
    mh, mw = proto_hw
    ih, iw = input_hw
    xin = (u + 0.5) * p[:, 3] + p[:, 4]  # the pixel centre in model-input pixels
    yin = (v + 0.5) * p[:, 5] + p[:, 6]
    inside = (xin >= p[:, 7]) & (xin < p[:, 9]) & (yin >= p[:, 8]) & (yin < p[:, 10])
    fx = (xin * (mw / iw) - 0.5).clamp(0, mw - 1)
    fy = (yin * (mh / ih) - 0.5).clamp(0, mh - 1)
    x0 = fx.floor()
    y0 = fy.floor()
    wx = fx - x0
    wy = fy - y0
    x0i, y0i = x0.to(torch.int64), y0.to(torch.int64)
    x1i = (x0i + 1).clamp(max=mw - 1)
    y1i = (y0i + 1).clamp(max=mh - 1)
    flat = maps.reshape(-1)

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:  # the four neighbours, gathered
        return flat[det * (mh * mw) + yi * mw + xi]

    top = at(y0i, x0i) * (1 - wx) + at(y0i, x1i) * wx
    bottom = at(y1i, x0i) * (1 - wx) + at(y1i, x1i) * wx
    return ((top * (1 - wy) + bottom * wy) > 0) & inside
