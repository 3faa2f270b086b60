"""OpenCV's bilinear resize of uint8 frames, bit for bit, as batched integer tensor arithmetic.

Ultralytics (and most models trained with OpenCV pipelines) letterbox frames with
``cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)``. For ``uint8`` images OpenCV
does not interpolate in floating point: it computes fixed-point weights with 11 fractional
bits (``INTER_RESIZE_COEF_BITS``) and runs a horizontal then a vertical pass in integers,
with its own truncations. Any float bilinear (DALI's ``fn.resize``, ``torch.nn.functional.interpolate``)
differs from it by one grey level in a good share of the pixels, which a network can turn
into boxes a few pixels apart. :func:`resize_bilinear_opencv` reproduces OpenCV's result
exactly, on whatever device the frames are (CPU or CUDA), for a batch at once:

- source coordinate of output pixel ``d``: ``f = float32((d + 0.5) * (1 / (dst / src)) - 0.5)``
  (the scale as OpenCV computes it, in double; the coordinate rounded to float), ``s = floor(f)``,
  weights ``saturate_cast<short>((1 - f + s) * 2048)`` and ``saturate_cast<short>((f - s) * 2048)``
  (rounded half to even);
- columns: an ``s`` left of the image or at/after its last column becomes that border
  column with weights ``(2048, 0)``; rows keep their weights and read the border row twice
  (``clip(s, 0, H - 1)``, ``clip(s + 1, 0, H - 1)``), as OpenCV does;
- horizontal pass: ``S = a0 * p[s] + a1 * p[s + 1]`` (int32, exact);
- vertical pass: ``(((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2``.

OpenCV resizes an exact 2x reduction with its area filter instead; for these weights that is
the same arithmetic (``(a + b + c + d + 2) >> 2``), so no special case is needed. A size
equal to the source's is a copy. The tests compare with ``cv2.resize`` itself.

Usage::

    x = torch.from_numpy(frames_rgb)                         # uint8 [N, 1080, 1920, 3]
    y = resize_bilinear_opencv(x.cuda(), (360, 640))         # uint8 [N, 360, 640, 3], cv2's pixels
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from streams.errors import ShapeError

__all__ = ["COEF_BITS", "resize_bilinear_opencv"]

#: OpenCV's ``INTER_RESIZE_COEF_BITS``: the weights' fractional bits (scale 2048)
COEF_BITS = 11
_COEF_SCALE = 1 << COEF_BITS
_CHUNK_BYTES = 64 << 20  # the horizontal pass's int32 rows of one chunk of frames, at most (about)


def resize_bilinear_opencv(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)`` of every frame, exactly.

    Args:
        frames: ``uint8 [N, H, W, C]`` (channels last, any ``C``), on any device.
        size: the output ``(h, w)``, positive.

    Returns:
        ``uint8 [N, h, w, C]`` on the frames' device: a new tensor (a copy when ``size`` is
        ``(H, W)``), computed in integer arithmetic on the frames' current stream.

    Raises:
        ShapeError: ``frames`` is not a 4-dimensional ``uint8`` tensor with positive sizes, or
            ``size`` is not two positive integers.
    """
    if frames.dim() != 4 or frames.dtype != torch.uint8 or min(frames.shape[1:]) <= 0:
        raise ShapeError(f"resize_bilinear_opencv: expected uint8 [N, H, W, C] frames, got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    h, w = size
    if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in (h, w)):
        raise ShapeError(f"resize_bilinear_opencv: expected a positive (h, w) size, got {size}")
    src_h, src_w = int(frames.shape[1]), int(frames.shape[2])
    if (h, w) == (src_h, src_w):
        return frames.clone()
    tables = _tables(src_h, src_w, h, w, frames.device)
    if frames.is_cuda:  # cached tables read on this stream: not reused before its work is done
        for t in tables:
            t.record_stream(torch.cuda.current_stream(frames.device))
    n, c = int(frames.shape[0]), int(frames.shape[3])
    # a few frames at a time: the int32 intermediates of a batch of 1080p frames would take GBs
    chunk = max(1, _CHUNK_BYTES // (4 * int(tables[4].numel()) * w * c))
    if n <= chunk:
        return _resize(frames, tables)
    out = torch.empty((n, h, w, c), dtype=torch.uint8, device=frames.device)
    for i in range(0, n, chunk):
        out[i:i + chunk] = _resize(frames[i:i + chunk], tables)
    return out


def _resize(frames: torch.Tensor, tables: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x0, x1, a0, a1, rows, r0, r1, b0, b1 = tables
    # horizontal pass on the source rows the output needs (each once), then >> 4 as OpenCV does
    # before its 16-bit vertical multiply
    src = frames.index_select(1, rows) if rows.numel() < frames.shape[1] else frames
    hor = src.index_select(2, x0).to(torch.int32).mul_(a0)
    hor += src.index_select(2, x1).to(torch.int32).mul_(a1)
    hor >>= 4
    # vertical pass: OpenCV's (b * s) >> 16 per tap (a 16-bit high multiply), then rounding >> 2
    out = hor.index_select(1, r0).mul_(b0).bitwise_right_shift_(16)
    out += hor.index_select(1, r1).mul_(b1).bitwise_right_shift_(16)
    out += 2
    out >>= 2
    return out.to(torch.uint8)


def _table(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's taps and fixed-point weights of one axis: ``(i0, i1, w0, w1)`` per output index.

    ``clamp``: OpenCV's column rule (a tap outside the image becomes the border column with
    weights ``(2048, 0)``); rows only clip the taps, keeping their weights.
    """
    scale = 1.0 / (dst / src)  # cv::resize: inv_scale = dst / src, then scale = 1 / inv_scale (double)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = f - s.astype(np.float32)  # float32, as OpenCV's ``fx -= sx``
    if clamp:
        left = s < 0
        f[left], s[left] = 0, 0
        right = s >= src - 1
        f[right], s[right] = 0, src - 1
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int64)  # saturate_cast<short>
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


@functools.lru_cache(maxsize=256)
def _tables(src_h: int, src_w: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Both axes' taps and weights on ``device``, made once per sizes: column taps ``int64 [w]``
    and weights ``int32 [w, 1]``; the source rows used (``int64 [k]``, each once), each output
    row's two taps as positions in them (``int64 [h]``) and weights ``int32 [h, 1, 1]``."""
    x0, x1, a0, a1 = _table(src_w, w, True)
    y0, y1, b0, b1 = _table(src_h, h, False)
    rows, pos = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    arrays = (x0, x1, a0.astype(np.int32)[:, None], a1.astype(np.int32)[:, None], rows, pos[:h].astype(np.int64),
              pos[h:].astype(np.int64), b0.astype(np.int32)[:, None, None], b1.astype(np.int32)[:, None, None])
    if device.type != "cuda":
        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays)
    # copied on a stream of their own and waited for: any stream may read them right away
    side = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        out = tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays)
    side.synchronize()
    return out
