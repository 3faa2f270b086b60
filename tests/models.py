"""Small torch detectors built in the tests (the bundled model is tested separately).

``BrightSpotDetector`` is a deterministic, hand-built YOLOv8-layout detector: it marks
every stride-8 cell whose mean brightness is high as a box of fixed size centred on the
cell. It needs no training, so tests of the pipeline know where its boxes must appear.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class BrightSpotDetector(nn.Module):
    """``[B, 3, H, W]`` in [0, 1] → ``[B, 4 + 2, H/8 * W/8]`` (YOLOv8 layout).

    Class 0 ("bright") scores the cell's mean brightness; class 1 ("dark") scores
    ``1 - brightness``, scaled down so it rarely passes a threshold.
    """

    def __init__(self, stride: int = 8, box: float = 24.0) -> None:
        super().__init__()
        self.stride = stride
        self.box = box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, _h, _w = x.shape
        g = torch.nn.functional.avg_pool2d(x.float().mean(1, keepdim=True), self.stride)
        gh, gw = g.shape[2], g.shape[3]
        ys = (torch.arange(gh, device=x.device, dtype=torch.float32) + 0.5) * self.stride
        xs = (torch.arange(gw, device=x.device, dtype=torch.float32) + 0.5) * self.stride
        cy = ys.view(gh, 1).expand(gh, gw).reshape(1, 1, -1).expand(b, 1, -1)
        cx = xs.view(1, gw).expand(gh, gw).reshape(1, 1, -1).expand(b, 1, -1)
        wh = torch.full_like(cx, self.box)
        bright = g.reshape(b, 1, -1) ** 3  # pad grey (114) stays below 0.1
        scores = torch.cat([bright, (1 - bright) * 0.2], 1)
        return torch.cat([cx, cy, wh, wh, scores], 1).to(x.dtype)


def save_bright_model(path: Path) -> Path:
    """Save :class:`BrightSpotDetector` as TorchScript."""
    torch.jit.script(BrightSpotDetector()).save(str(path))
    return path
