"""NV12 frames (NVDEC's output, already scaled to the letterbox size) -> model input.

NVDEC scales in hardware (see :mod:`pipelines.nvdec`), so what is left per frame is the
colour conversion, the letterbox padding, normalisation, dtype and layout, done here for a
batch of frames at once (one set of ops per distinct frame size).

A live job with a cascade decodes frames at full size instead (the crops need the source
pixels): :func:`nv12_resize` makes the letterbox-size frames NVDEC would have made, and
:func:`nv12_to_rgb` converts a full-size frame to RGB when a crop is cut from it.

Colour: limited-range BT.601 or BT.709 (H.273 ``matrix_coefficients`` 1), the chroma
upsampled by repetition, as FFmpeg's default software path does for ``rgb24``.

Usage::

    x = nv12_letterbox([f.nv12 for f in frames], [g1, g2], (640, 640), spec)   # [B,3,640,640]
    ref = nv12_to_rgb_reference(nv12_numpy)                                     # uint8 [h,w,3]
    small = nv12_resize([full_nv12], [(360, 640)])          # [uint8[540, 640]]
    rgb = nv12_to_rgb(full_nv12, 709)                        # uint8 [1080, 1920, 3]
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


def nv12_to_rgb(frames: torch.Tensor, standard: int = 601) -> torch.Tensor:
    """NV12 -> RGB, on the frames' device: :func:`nv12_to_rgb_reference` in torch.

    Args:
        frames: ``uint8[..., h * 3 // 2, w]`` (one frame or a batch), even ``h`` and ``w``.
        standard: 601 or 709 (:func:`standard_of`).

    Returns:
        ``uint8[..., h, w, 3]`` RGB (HWC), the same float32 arithmetic as the reference; the
        chroma terms are computed at half resolution and broadcast over each 2x2 block
        (the reference repeats the chroma first: the same values, a quarter of the work).
    """
    if frames.dim() < 2 or frames.shape[-2] % 3 or frames.shape[-1] % 2:
        raise ShapeError(f"nv12_to_rgb: expected uint8[..., h * 3 // 2, w] with even h and w, got "
                         f"{tuple(frames.shape)}")
    lead = tuple(frames.shape[:-2])
    h, w = frames.shape[-2] * 2 // 3, frames.shape[-1]
    y = ((frames[..., :h, :].float() - 16.0) * (255.0 / 219.0)).reshape(*lead, h // 2, 2, w // 2, 2)
    uv = frames[..., h:, :].float().reshape(*lead, h // 2, 1, w // 2, 1, 2) - 128.0
    u, v = uv[..., 0], uv[..., 1]
    vr, ug, vg, ub = _coefficients(standard)
    rgb = torch.stack([y + vr * v, y + ug * u + vg * v, y + ub * u], dim=-1)  # [..., h/2, 2, w/2, 2, 3]
    return rgb.round_().clamp_(0, 255).to(torch.uint8).view(*lead, h, w, 3)


def _resize_plane(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``float[k, c, h, w]`` -> ``uint8[k, c, h', w']``: bilinear, pixel centres aligned, no antialias."""
    y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def nv12_resize(frames: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]],
                chunk: int = 16) -> list[torch.Tensor]:
    """Resize NV12 frames, each to its own size, on their device (the live GPU path's model
    input from full-size frames: NVDEC's scaling done in torch).

    The luma plane and the interleaved chroma plane (as two channels at half resolution)
    are resized separately, bilinearly with pixel centres aligned and no antialias: the
    convention of DALI's ``INTERP_LINEAR`` resize of the file path and of
    :func:`operators.crops.crop_resize`. :func:`nv12_resize_reference` is the NumPy reference.

    Args:
        frames: ``uint8[h * 3 // 2, w]`` per frame (even ``h`` and ``w``), one device.
        sizes: ``(h', w')`` per frame, even (e.g. ``(g.resized_h, g.resized_w)`` of
            :func:`operators.boxes.even_letterbox_geometry`).
        chunk: at most this many frames are converted to float at once (bounds the
            temporary memory: 12 MiB a 1080p frame).

    Returns:
        ``uint8[h' * 3 // 2, w']`` per frame, in order; a frame already at its size is
        returned as is (not copied).
    """
    if len(frames) != len(sizes):
        raise ShapeError(f"nv12_resize: {len(frames)} frames but {len(sizes)} sizes")
    out: list[torch.Tensor | None] = [None] * len(frames)
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, (f, (hh, ww)) in enumerate(zip(frames, sizes, strict=True)):
        if f.dim() != 2 or f.shape[0] % 3 or f.shape[1] % 2:
            raise ShapeError(f"nv12_resize(frames[{i}]): expected uint8[h * 3 // 2, w] with even h and w, "
                             f"got {tuple(f.shape)}")
        if hh < 2 or ww < 2 or hh % 2 or ww % 2:
            raise ShapeError(f"nv12_resize(sizes[{i}]): expected even (h, w) >= 2, got {(hh, ww)}")
        h, w = f.shape[0] * 2 // 3, f.shape[1]
        if (h, w) == (hh, ww):
            out[i] = f
        else:
            groups.setdefault((h, w, hh, ww), []).append(i)
    for (h, w, hh, ww), idx in groups.items():
        for start in range(0, len(idx), chunk):
            part = idx[start:start + chunk]
            x = torch.stack([frames[i] for i in part])  # uint8[k, h*3/2, w]
            k = len(part)
            res = torch.empty((k, hh * 3 // 2, ww), dtype=torch.uint8, device=x.device)
            res[:, :hh] = _resize_plane(x[:, None, :h].float(), (hh, ww))[:, 0]
            uv = x[:, h:].reshape(k, h // 2, w // 2, 2).permute(0, 3, 1, 2).float()  # [k, 2, h/2, w/2]
            res[:, hh:] = _resize_plane(uv, (hh // 2, ww // 2)).permute(0, 2, 3, 1).reshape(k, hh // 2, ww)
            for j, i in enumerate(part):
                out[i] = res[j]
    return [o for o in out if o is not None]


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling along one axis with pixel centres aligned: ``(i0, i1, weight of i1)``."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def _resize_plane_reference(p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[h, w, c]`` float -> ``[h', w', c]`` float, bilinear (see :func:`nv12_resize`)."""
    y0, y1, fy = _linear_taps(p.shape[0], size[0])
    x0, x1, fx = _linear_taps(p.shape[1], size[1])
    fy, fx = fy[:, None, None], fx[None, :, None]
    top = p[y0][:, x0] * (1 - fx) + p[y0][:, x1] * fx
    bottom = p[y1][:, x0] * (1 - fx) + p[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def nv12_resize_reference(nv12: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """NumPy reference of :func:`nv12_resize` for one frame: ``uint8[h * 3 // 2, w]`` ->
    ``uint8[h' * 3 // 2, w']`` for ``size = (h', w')`` (float64: may differ from torch's
    float32 by one level where a value rounds at .5)."""
    if nv12.ndim != 2 or nv12.shape[0] % 3 or nv12.shape[1] % 2:
        raise ShapeError(f"nv12: expected uint8[h * 3 // 2, w] with even h and w, got {nv12.shape}")
    h, w = nv12.shape[0] * 2 // 3, nv12.shape[1]
    hh, ww = size
    y = _resize_plane_reference(nv12[:h].astype(np.float64)[:, :, None], (hh, ww))[:, :, 0]
    uv = _resize_plane_reference(nv12[h:].reshape(h // 2, w // 2, 2).astype(np.float64), (hh // 2, ww // 2))
    out = np.concatenate([y, uv.reshape(hh // 2, ww)], axis=0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
