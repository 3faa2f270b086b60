"""Crops of detected objects from source-resolution frames, resized for a secondary model.

A secondary model (a colour classifier, a plate detector) sees each object at the pixels the
camera gave, not at the detector's letterboxed input, where a small object has lost most of
them. :func:`crop_resize` cuts every box of a batch out of its frame and resizes it to the
secondary model's input in one vectorized step, on whatever device the frames are (DALI's
GPU buffer or a host array).

Sampling is bilinear with pixel centres aligned (``align_corners=False``, no antialias): the
convention of ``cv2.resize(..., INTER_LINEAR)`` and ``torch.nn.functional.interpolate`` on
the box region. :func:`crop_resize_reference` is the NumPy reference the tests compare with.

Usage::

    frames = torch.zeros((2, 1080, 1920, 3), dtype=torch.uint8)     # HWC, as decoded
    boxes = torch.tensor([[100., 50., 164., 178.]])                  # xyxy, frame pixels
    crops = crop_resize(frames, torch.tensor([1]), boxes, (64, 64))  # float32[1, 3, 64, 64], 0..1
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch


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
