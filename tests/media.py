"""Test videos made with PyAV: a white square moving over a dark background.

``square_position(i, w, h)`` tells where the square is in frame ``i``, so tests can
check that detections land on it.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

SQUARE = 32


def square_position(i: int, width: int, height: int) -> tuple[int, int, int, int]:
    """xyxy of the square in frame ``i``."""
    x = (8 + 5 * i) % max(1, width - SQUARE - 8)
    y = (height - SQUARE) // 2
    return x, y, x + SQUARE, y + SQUARE


def render(i: int, width: int, height: int) -> np.ndarray:
    img = np.full((height, width, 3), 20, np.uint8)
    img[:, :, 2] = (i * 3) % 60
    x1, y1, x2, y2 = square_position(i, width, height)
    img[y1:y2, x1:x2] = 255
    return img


def write_clip(path: Path, codec: str = "libx264", frames: int = 40, width: int = 320,
               height: int = 240, fps: int = 25, options: dict[str, str] | None = None) -> Path:
    """Write a clip; ``codec`` is an FFmpeg encoder (libx264, libvpx-vp9, libx265, mjpeg)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = width, height
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if options:
            s.options = options
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(render(i, width, height), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def pyav_frames(path: Path) -> list[tuple[int, int | None]]:
    """(index, pts) of every frame PyAV decodes, in presentation order."""
    with av.open(str(path)) as c:
        return [(i, f.pts) for i, f in enumerate(c.decode(c.streams.video[0]))]
