"""NV12 frames (NVDEC's output, already scaled to the letterbox size) -> model input.

NVDEC scales in hardware (see :mod:`pipelines.nvdec`), so what is left per frame is the
colour conversion, the letterbox padding, normalisation, dtype and layout, done here for a
batch of frames at once (one set of ops per distinct frame size).

Colour: limited-range BT.601 or BT.709 (H.273 ``matrix_coefficients`` 1), the chroma
upsampled by repetition, as FFmpeg's default software path does for ``rgb24``.

Usage::

    x = nv12_letterbox([f.nv12 for f in frames], [g1, g2], (640, 640), spec)   # [B,3,640,640]
    ref = nv12_to_rgb_reference(nv12_numpy)                                     # uint8 [h,w,3]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from operators.boxes import LetterboxGeometry
from streams.errors import ShapeError

#: (Kr, Kb) of the YCbCr matrices
_KRB = {601: (0.299, 0.114), 709: (0.2126, 0.0722)}


def _coefficients(standard: int) -> tuple[float, float, float, float]:
    """(V->R, U->G, V->G, U->B) for limited-range YCbCr (Y scaled by 255/219 separately)."""
    kr, kb = _KRB[standard]
    kg = 1.0 - kr - kb
    s = 255.0 / 224.0
    return (2 * (1 - kr) * s, -2 * (1 - kb) * kb / kg * s, -2 * (1 - kr) * kr / kg * s, 2 * (1 - kb) * s)


def standard_of(matrix_coefficients: int) -> int:
    """601 or 709 from an H.273 ``matrix_coefficients`` code (unspecified: 601, as FFmpeg)."""
    return 709 if matrix_coefficients == 1 else 601


def nv12_to_rgb_reference(nv12: np.ndarray, standard: int = 601) -> np.ndarray:
    """NumPy reference: ``uint8[h * 3 // 2, w]`` NV12 -> ``uint8[h, w, 3]`` RGB."""
    if nv12.ndim != 2 or nv12.shape[0] % 3 or nv12.shape[1] % 2:
        raise ShapeError(f"nv12: expected uint8[h * 3 // 2, w] with even h and w, got {nv12.shape}")
    h = nv12.shape[0] * 2 // 3
    y = (nv12[:h].astype(np.float32) - 16.0) * (255.0 / 219.0)
    uv = nv12[h:].reshape(h // 2, -1, 2).astype(np.float32) - 128.0
    uv = uv.repeat(2, axis=0).repeat(2, axis=1)
    u, v = uv[..., 0], uv[..., 1]
    vr, ug, vg, ub = _coefficients(standard)
    rgb = np.stack([y + vr * v, y + ug * u + vg * v, y + ub * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def nv12_letterbox(
    frames: Sequence[torch.Tensor],
    geometries: Sequence[LetterboxGeometry],
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    pad_value: int = 114,
    dtype: torch.dtype = torch.float16,
    channels_last: bool = True,
    standards: Sequence[int] | None = None,
    out: torch.Tensor | None = None,
    bgr: bool = False,
) -> torch.Tensor:
    """A batch of NV12 frames, each at its letterbox size, -> ``Tensor[B, 3, H, W]`` model input.

    Args:
        frames: ``uint8[h * 3 // 2, w]`` per frame, ``(w, h) == (g.resized_w, g.resized_h)``.
        geometries: the letterbox geometry of each frame (where it sits on the canvas).
        size: model input ``(H, W)``.
        mean, std: per-channel normalisation of 0..255 RGB values.
        pad_value: the canvas colour (0..255, before normalisation).
        dtype: output dtype; ``channels_last``: NHWC memory layout (the torch engine's).
        standards: 601 or 709 per frame (default 601).
        out: optional output buffer of the right shape (reused between batches).
        bgr: channels in B, G, R order (models trained on OpenCV images).

    Returns:
        ``Tensor[B, 3, H, W]`` on the frames' device; row ``i`` is frame ``i``.
    """
    if len(frames) != len(geometries):
        raise ShapeError(f"nv12_letterbox: {len(frames)} frames but {len(geometries)} geometries")
    if not frames:
        raise ShapeError("nv12_letterbox: empty batch")
    n = len(frames)
    hh, ww = size
    device = frames[0].device
    if out is None:
        out = torch.empty((n, 3, hh, ww), dtype=dtype, device=device,
                          memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    elif tuple(out.shape) != (n, 3, hh, ww):
        raise ShapeError(f"nv12_letterbox(out): expected shape {(n, 3, hh, ww)}, got {tuple(out.shape)}")
    m = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, 3, 1, 1)  # in output channel order
    s = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    out.copy_(((torch.full((1, 3, 1, 1), float(pad_value), device=device) - m) / s).expand(n, 3, hh, ww))
    stds = list(standards) if standards is not None else [601] * n
    groups: dict[tuple[int, int, int, int, int], list[int]] = {}
    for i, (f, g) in enumerate(zip(frames, geometries, strict=True)):
        if f.dim() != 2 or tuple(f.shape) != (g.resized_h * 3 // 2, g.resized_w):
            raise ShapeError(f"nv12_letterbox(frames[{i}]): expected shape "
                             f"{(g.resized_h * 3 // 2, g.resized_w)}, got {tuple(f.shape)}")
        groups.setdefault((g.resized_h, g.resized_w, g.pad_y, g.pad_x, stds[i]), []).append(i)
    for (h, w, py, px, std_code), idx in groups.items():
        x = torch.stack([frames[i] for i in idx]).float()  # [k, h*3/2, w]
        y = (x[:, :h] - 16.0) * (255.0 / 219.0)
        uv = (x[:, h:] - 128.0).view(len(idx), h // 2, w // 2, 2)
        uv = uv.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
        u, v = uv[..., 0], uv[..., 1]
        vr, ug, vg, ub = _coefficients(std_code)
        planes = [y + vr * v, y + ug * u + vg * v, y + ub * u]
        rgb = torch.stack(planes[::-1] if bgr else planes, dim=1).round_().clamp_(0, 255)
        rgb = (rgb - m) / s
        rows = torch.tensor(idx, device=device)
        if len(idx) == n and idx == list(range(n)):
            out[:, :, py:py + h, px:px + w] = rgb.to(dtype)
        else:
            out[rows, :, py:py + h, px:px + w] = rgb.to(dtype)
    return out
