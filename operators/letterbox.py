"""The exporting framework's preprocessing: Ultralytics' letterbox, canvas and image.

Ultralytics' ``LetterBox`` scales a frame by ``r = min(h / src_h, w / src_w)`` for an image
size ``(h, w)`` (``imgsz``), resizes it to ``round(src * r)`` with OpenCV's bilinear resize
(``cv2.INTER_LINEAR``, no antialias), and pads it, centred, with grey 114. A static-shape
export runs on the whole ``(h, w)`` canvas; a dynamic-shape one (and a ``.pt`` model) on the
smallest canvas whose sides are multiples of the model's stride and hold the resized frame
(``auto=True``): a 768x432 frame at ``imgsz`` 320 runs at 320x192, not 320x320.

:func:`canvas_hw` gives that canvas, and :func:`operators.boxes.letterbox_geometry` on it
gives the very placement Ultralytics uses (same scale, same left/top padding), so boxes map
back the same way. :func:`letterbox_reference` is the CPU reference of the image itself,
with OpenCV, for tests that compare Fovea's preprocessing with the framework's.

Usage::

    h, w = canvas_hw(768, 432, (320, 320), stride=32, rect=True)     # (192, 320)
    geom = letterbox_geometry(768, 432, w, h)
    img = letterbox_reference(frame_rgb, (h, w))                      # uint8 [192, 320, 3]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from streams.errors import MissingDependencyError, ShapeError

__all__ = ["canvas_hw", "letterbox_reference", "min_canvas_hw"]


def canvas_hw(src_w: int, src_h: int, imgsz: tuple[int, int], stride: int = 32, rect: bool = False) -> tuple[int, int]:
    """The model input ``(h, w)`` for a ``src_w x src_h`` frame at image size ``imgsz``.

    ``rect=False``: ``imgsz`` itself (a static-shape export). ``rect=True``: the resized frame
    ``round(src * r)`` grown to the next multiple of ``stride`` on each side, as Ultralytics'
    ``LetterBox(auto=True)`` pads it (``(imgsz - resized) % stride`` of padding).
    """
    h, w = imgsz
    if min(src_w, src_h, h, w, stride) <= 0:
        raise ShapeError(f"canvas_hw: expected positive sizes, got frame {src_w}x{src_h}, imgsz {imgsz}, "
                         f"stride {stride}")
    if not rect:
        return (h, w)
    r = min(h / src_h, w / src_w)
    new_w, new_h = max(1, round(src_w * r)), max(1, round(src_h * r))  # as letterbox_geometry clamps it
    return (new_h + (h - new_h) % stride, new_w + (w - new_w) % stride)


def min_canvas_hw(imgsz: tuple[int, int], stride: int = 32) -> tuple[int, int]:
    """The smallest ``(h, w)`` :func:`canvas_hw` gives with ``rect=True`` at ``imgsz``, whatever
    the frame: each side is congruent to ``imgsz``'s modulo ``stride`` and at least 1, so
    ``imgsz % stride``, or ``stride`` where that is 0 (the bounds of a TensorRT optimization
    profile for a dynamic-shape export, up to ``imgsz`` itself)."""
    h, w = imgsz
    if min(h, w, stride) <= 0:
        raise ShapeError(f"min_canvas_hw: expected positive sizes, got imgsz {imgsz}, stride {stride}")
    return (h % stride or stride, w % stride or stride)


def letterbox_reference(frame: npt.NDArray[np.uint8], out_hw: tuple[int, int], pad_value: int = 114
                        ) -> npt.NDArray[np.uint8]:
    """Ultralytics' letterbox of one ``uint8 [H, W, 3]`` frame onto an ``out_hw`` canvas, with
    OpenCV (``cv2.resize(..., INTER_LINEAR)``, then centred padding of ``pad_value``): the
    reference the tests compare Fovea's preprocessing with. Needs ``opencv-python-headless``."""
    try:
        import cv2
    except ImportError as e:
        raise MissingDependencyError("opencv-python-headless", "the letterbox reference",
                                     "pip install opencv-python-headless") from e
    src_h, src_w = frame.shape[:2]
    h, w = out_hw
    r = min(h / src_h, w / src_w)
    new_w, new_h = round(src_w * r), round(src_h * r)
    img = frame if (new_w, new_h) == (src_w, src_h) else cv2.resize(frame, (new_w, new_h),
                                                                     interpolation=cv2.INTER_LINEAR)
    dw, dh = (w - new_w) / 2, (h - new_h) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    out = np.full((h, w, frame.shape[2]), pad_value, np.uint8)
    out[top:top + new_h, left:left + new_w] = img
    return out
