"""Crops of detected objects from source-resolution frames, resized for a secondary model.

A secondary model (a colour classifier, a plate detector) sees each object at the pixels the
camera gave, not at the detector's letterboxed input, where a small object has lost most of
them. Both ops cut every box of a batch out of its frame in one vectorized step, on whatever
device the frames are (DALI's GPU buffer or a host array):

- :func:`crop_resize` stretches each box to the model's input (classifiers);
- :func:`crop_letterbox` fits each box's pixel region into the input with its aspect ratio
  kept, centred on grey 114 (detectors, as Ultralytics' ``LetterBox`` trains them), and
  returns each crop's padding and scale, so boxes found in the crop map back to frame
  pixels: ``frame = (box - pad) / scale + region[:2]``. :func:`letterbox_regions` gives the
  regions: boxes grown to whole pixels, inside the frame.

Sampling is bilinear with pixel centres aligned (``align_corners=False``, no antialias): the
convention of ``cv2.resize(..., INTER_LINEAR)`` and ``torch.nn.functional.interpolate`` on
the box region. :func:`crop_resize_reference` and :func:`crop_letterbox_reference` are the
NumPy references the tests compare with.

Usage::

    frames = torch.zeros((2, 1080, 1920, 3), dtype=torch.uint8)     # HWC, as decoded
    boxes = torch.tensor([[100., 50., 164., 178.]])                  # xyxy, frame pixels
    crops = crop_resize(frames, torch.tensor([1]), boxes, (64, 64))  # float32[1, 3, 64, 64], 0..1

    regions = letterbox_regions(boxes.numpy(), 1920, 1080)          # int64[1, 4]: [100, 50, 164, 178]
    lb = crop_letterbox(frames, torch.tensor([1]), regions, (64, 64))     # regions on the host
    lb.crops, lb.pad, lb.scale      # float32[1, 3, 64, 64]; [[16, 0]]; [[0.5, 0.5]]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from operators.transfer import upload

#: The value of letterbox padding, in 0..1 (Ultralytics' grey 114).
PAD_VALUE = 114.0 / 255.0


def _sample_grid(boxes: torch.Tensor, size: tuple[int, int], height: int, width: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each box, the integer neighbours and weights of every output pixel's sample point.

    Returns ``(y0, y1, wy, x0, x1, wx)``: ``int64[K, h]``, ``int64[K, h]``, ``float32[K, h]``
    and the same along ``w``.
    """
    h, w = size
    dev = boxes.device
    b = boxes.to(torch.float32)
    iy = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h  # [h], fraction of the box
    ix = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
    ys = b[:, 1:2] + iy[None, :] * (b[:, 3:4] - b[:, 1:2]) - 0.5  # [K, h], pixel-centre coordinates
    xs = b[:, 0:1] + ix[None, :] * (b[:, 2:3] - b[:, 0:1]) - 0.5
    ys = ys.clamp(0, height - 1)
    xs = xs.clamp(0, width - 1)
    y0 = ys.floor()
    x0 = xs.floor()
    wy = ys - y0
    wx = xs - x0
    y0i, x0i = y0.long(), x0.long()
    y1i = (y0i + 1).clamp(max=height - 1)
    x1i = (x0i + 1).clamp(max=width - 1)
    return y0i, y1i, wy, x0i, x1i, wx


def crop_resize(frames: torch.Tensor, frame_index: torch.Tensor, boxes: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
    """Bilinear crops of ``boxes`` from ``frames``, resized to ``size``.

    Args:
        frames: ``uint8[N, H, W, 3]`` (HWC, RGB), on any device.
        frame_index: ``int64[K]``, which frame each box is in (``0 <= i < N``).
        boxes: ``float[K, 4]`` ``(x1, y1, x2, y2)`` in frame pixels; parts outside the frame
            repeat the edge pixels.
        size: ``(h, w)`` of each crop.

    Returns:
        ``float32[K, 3, h, w]`` in ``[0, 1]``, RGB, on the frames' device.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected shape (N, H, W, 3), got {tuple(frames.shape)}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected shape (K, 4), got {tuple(boxes.shape)}")
    if frame_index.shape != (boxes.shape[0],):
        raise ValueError(f"frame_index: expected shape ({boxes.shape[0]},), got {tuple(frame_index.shape)}")
    h, w = size
    k = boxes.shape[0]
    if k == 0:
        return torch.zeros((0, 3, h, w), dtype=torch.float32, device=frames.device)
    n, height, width, _ = frames.shape
    dev = frames.device
    boxes = boxes.to(dev)
    fi = frame_index.to(dev, torch.int64)
    y0, y1, wy, x0, x1, wx = _sample_grid(boxes, size, height, width)
    flat = frames.reshape(n * height * width, 3)
    base = fi[:, None, None] * (height * width)  # [K, 1, 1]

    def gather(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        idx = base + yy[:, :, None] * width + xx[:, None, :]  # [K, h, w]
        return flat[idx.reshape(-1)].reshape(k, h, w, 3).to(torch.float32)

    wy3 = wy[:, :, None, None]
    wx3 = wx[:, None, :, None]
    top = gather(y0, x0) * (1 - wx3) + gather(y0, x1) * wx3
    bottom = gather(y1, x0) * (1 - wx3) + gather(y1, x1) * wx3
    out = top * (1 - wy3) + bottom * wy3  # [K, h, w, 3]
    return (out * (1.0 / 255.0)).permute(0, 3, 1, 2).contiguous()


def crop_resize_reference(frames: npt.NDArray[np.uint8], frame_index: npt.NDArray[np.int64],
                          boxes: npt.NDArray[np.floating], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """NumPy reference of :func:`crop_resize`, one box and one output pixel at a time (slow)."""
    h, w = size
    _, height, width, _ = frames.shape
    out = np.zeros((len(boxes), 3, h, w), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
        img = frames[int(frame_index[k])].astype(np.float64)
        for i in range(h):
            y = min(max(y1 + (i + 0.5) / h * (y2 - y1) - 0.5, 0.0), height - 1.0)
            ya = int(np.floor(y))
            yb = min(ya + 1, height - 1)
            fy = y - ya
            for j in range(w):
                x = min(max(x1 + (j + 0.5) / w * (x2 - x1) - 0.5, 0.0), width - 1.0)
                xa = int(np.floor(x))
                xb = min(xa + 1, width - 1)
                fx = x - xa
                v = ((img[ya, xa] * (1 - fx) + img[ya, xb] * fx) * (1 - fy)
                     + (img[yb, xa] * (1 - fx) + img[yb, xb] * fx) * fy)
                out[k, :, i, j] = v / 255.0
    return out


def letterbox_regions(boxes: npt.NDArray[np.floating], width: int, height: int) -> npt.NDArray[np.int64]:
    """The whole-pixel regions :func:`crop_letterbox` cuts for ``boxes``.

    Args:
        boxes: ``float[K, 4]`` xyxy in frame pixels.
        width, height: the frame's size.

    Returns:
        ``int64[K, 4]`` ``(x1, y1, x2, y2)``: each box grown outwards to whole pixels
        (``floor`` of its top-left, ``ceil`` of its bottom-right), clipped to the frame, at
        least one pixel wide and high.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1 = np.floor(np.clip(b[:, 0], 0, width))
    y1 = np.floor(np.clip(b[:, 1], 0, height))
    x2 = np.ceil(np.clip(b[:, 2], 0, width))
    y2 = np.ceil(np.clip(b[:, 3], 0, height))
    x2 = np.maximum(x2, np.minimum(x1 + 1, width))
    y2 = np.maximum(y2, np.minimum(y1 + 1, height))
    x1 = np.minimum(x1, x2 - 1)
    y1 = np.minimum(y1, y2 - 1)
    return np.stack([x1, y1, x2, y2], 1).astype(np.int64)


class LetterboxCrops(NamedTuple):
    """:func:`crop_letterbox`'s crops and how each was placed.

    Attributes:
        crops: ``float32[K, 3, h, w]`` in ``[0, 1]``, RGB.
        pad: ``float32[K, 2]`` ``(pad_x, pad_y)``: where the region starts in the crop.
        scale: ``float32[K, 2]`` ``(scale_x, scale_y)``: crop pixels per frame pixel.
    """

    crops: torch.Tensor
    pad: torch.Tensor
    scale: torch.Tensor


def _letterbox_axis(start: torch.Tensor, extent: torch.Tensor, resized: torch.Tensor, pad: torch.Tensor,
                    n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Along one axis of the crops: each output pixel's two source neighbours (frame pixel
    indices), the weight of the second, and whether it is inside the resized region.

    ``start``/``extent``: the region in frame pixels, ``resized``: its size in the crop,
    ``pad``: its offset in the crop, all ``[K]``. Returns ``int64[K, n]`` x2, ``float32[K, n]``,
    ``bool[K, n]``."""
    dev = start.device
    i = torch.arange(n, device=dev, dtype=torch.float64)[None, :]  # [1, n]
    step = (extent / resized).to(torch.float64)[:, None]
    local = (i - pad[:, None] + 0.5) * step - 0.5  # position in the region, pixel centres aligned
    local = torch.minimum(local.clamp(min=0), (extent - 1).to(torch.float64)[:, None])
    lo = local.floor()
    frac = (local - lo).to(torch.float32)
    lo_i = lo.long()
    hi_i = torch.minimum(lo_i + 1, (extent - 1)[:, None])
    inside = (i >= pad[:, None]) & (i < (pad + resized)[:, None])
    return start[:, None] + lo_i, start[:, None] + hi_i, frac, inside


def crop_letterbox(frames: torch.Tensor, frame_index: torch.Tensor,
                   regions: npt.NDArray[np.int64] | torch.Tensor, size: tuple[int, int]) -> LetterboxCrops:
    """Letterboxed crops of ``regions`` from ``frames``: aspect kept, centred, grey padding.

    Each region (``rw x rh`` frame pixels) is resized bilinearly by
    ``r = min(w / rw, h / rh)`` to ``round(rw * r) x round(rh * r)`` (at least 1, at most the
    input) and placed at ``pad = ((w - resized_w) // 2, (h - resized_h) // 2)`` on a ``h x w``
    canvas of :data:`PAD_VALUE`: the rounding of
    :func:`operators.boxes.letterbox_geometry` and Ultralytics' ``LetterBox``. Samples near
    the region's border repeat its edge pixels (as resizing the cut-out region would), never
    pixels outside it.

    Args:
        frames: ``uint8[N, H, W, 3]`` (HWC, RGB), on any device.
        frame_index: ``int64[K]``, which frame each region is in (on the frames' device).
        regions: ``int64[K, 4]`` ``(x1, y1, x2, y2)`` on the host (NumPy or a CPU tensor):
            whole frame pixels inside the frame, non-empty (:func:`letterbox_regions`).
            They are checked and the geometry is computed there, then uploaded without
            making the host wait for the device.
        size: ``(h, w)`` of each crop.

    Returns:
        :class:`LetterboxCrops` on the frames' device.

    Raises:
        ValueError: a shape is wrong, or a region is empty or leaves the frame.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected shape (N, H, W, 3), got {tuple(frames.shape)}")
    reg = torch.as_tensor(regions).to("cpu", torch.int64)
    if reg.ndim != 2 or reg.shape[1] != 4:
        raise ValueError(f"regions: expected shape (K, 4), got {tuple(reg.shape)}")
    if frame_index.shape != (reg.shape[0],):
        raise ValueError(f"frame_index: expected shape ({reg.shape[0]},), got {tuple(frame_index.shape)}")
    h, w = size
    k = reg.shape[0]
    dev = frames.device
    if k == 0:
        empty = torch.zeros((0, 2), dtype=torch.float32, device=dev)
        return LetterboxCrops(torch.zeros((0, 3, h, w), dtype=torch.float32, device=dev), empty, empty)
    n, height, width, _ = frames.shape
    rw = reg[:, 2] - reg[:, 0]
    rh = reg[:, 3] - reg[:, 1]
    if bool((rw < 1).any() | (rh < 1).any() | (reg[:, :2] < 0).any() | (reg[:, 2] > width).any()
            | (reg[:, 3] > height).any()):
        raise ValueError(f"regions: expected non-empty whole-pixel regions inside the {width}x{height} frame")
    # the geometry on the host, in float64 as letterbox_geometry's Python floats (round half to even)
    r = torch.minimum(w / rw.to(torch.float64), h / rh.to(torch.float64))
    new_w = torch.round(rw * r).clamp(1, w).long()
    new_h = torch.round(rh * r).clamp(1, h).long()
    pad_x = (w - new_w) // 2
    pad_y = (h - new_h) // 2
    table = upload(torch.stack([reg[:, 0], reg[:, 1], rw, rh, new_w, new_h, pad_x, pad_y], 1), dev)
    x1, y1, rw_d, rh_d, new_w_d, new_h_d, pad_x_d, pad_y_d = table.unbind(1)
    y0, y1i, wy, in_y = _letterbox_axis(y1, rh_d, new_h_d, pad_y_d, h)
    x0, x1i, wx, in_x = _letterbox_axis(x1, rw_d, new_w_d, pad_x_d, w)
    flat = frames.reshape(n * height * width, 3)
    base = frame_index.to(dev, torch.int64)[:, None, None] * (height * width)

    def gather(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        idx = base + yy[:, :, None] * width + xx[:, None, :]  # [K, h, w]
        return flat[idx.reshape(-1)].reshape(k, h, w, 3).to(torch.float32)

    wy3 = wy[:, :, None, None]
    wx3 = wx[:, None, :, None]
    top = gather(y0, x0) * (1 - wx3) + gather(y0, x1i) * wx3
    bottom = gather(y1i, x0) * (1 - wx3) + gather(y1i, x1i) * wx3
    out = (top * (1 - wy3) + bottom * wy3) * (1.0 / 255.0)  # [K, h, w, 3]
    inside = (in_y[:, :, None] & in_x[:, None, :])[..., None]
    out = torch.where(inside, out, torch.full((), PAD_VALUE, dtype=torch.float32, device=dev))
    pad = torch.stack([pad_x, pad_y], 1).to(torch.float32)
    scale = torch.stack([new_w / rw, new_h / rh], 1).to(torch.float32)
    return LetterboxCrops(out.permute(0, 3, 1, 2).contiguous(), upload(pad, dev), upload(scale, dev))


def crop_letterbox_reference(frames: npt.NDArray[np.uint8], frame_index: npt.NDArray[np.int64],
                             regions: npt.NDArray[np.int64], size: tuple[int, int]
                             ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """NumPy reference of :func:`crop_letterbox`, written as Ultralytics' ``LetterBox`` does it:
    cut the region out, resize it (bilinear, one output pixel at a time), paste it on a grey
    canvas. Returns ``(crops, pad, scale)`` as :class:`LetterboxCrops` holds them (slow)."""
    h, w = size
    out = np.full((len(regions), 3, h, w), PAD_VALUE, np.float32)
    pads = np.zeros((len(regions), 2), np.float32)
    scales = np.zeros((len(regions), 2), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.asarray(regions, np.int64).tolist()):
        img = frames[int(frame_index[k])][y1:y2, x1:x2].astype(np.float64)
        rh, rw = img.shape[:2]
        r = min(w / rw, h / rh)
        nw, nh = min(w, max(1, round(rw * r))), min(h, max(1, round(rh * r)))
        px, py = (w - nw) // 2, (h - nh) // 2
        pads[k] = (px, py)
        scales[k] = (nw / rw, nh / rh)
        for i in range(nh):
            y = min(max((i + 0.5) * rh / nh - 0.5, 0.0), rh - 1.0)
            ya = int(np.floor(y))
            yb = min(ya + 1, rh - 1)
            fy = y - ya
            for j in range(nw):
                x = min(max((j + 0.5) * rw / nw - 0.5, 0.0), rw - 1.0)
                xa = int(np.floor(x))
                xb = min(xa + 1, rw - 1)
                fx = x - xa
                v = ((img[ya, xa] * (1 - fx) + img[ya, xb] * fx) * (1 - fy)
                     + (img[yb, xa] * (1 - fx) + img[yb, xb] * fx) * fy)
                out[k, :, py + i, px + j] = v / 255.0
    return out, pads, scales
