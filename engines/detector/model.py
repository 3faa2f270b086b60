"""``FoveaDet``: the small anchor-free detector bundled with Fovea.

A YOLOv8-like network sized for CPUs: a CSP (C2f) backbone with strides 8/16/32, a
PAN-lite neck and decoupled per-level heads that predict ``ltrb`` distances (in strides)
and class logits at every grid point. In eval mode ``forward`` returns the Ultralytics
YOLOv8 layout, so Fovea's ``yolov8`` postprocess reads it unchanged::

    Tensor[B, 4 + nc, N]   rows 0-3: cx, cy, w, h in input pixels; rows 4..: sigmoid scores
    N = sum over strides s in (8, 16, 32) of (H / s) * (W / s)

Inputs are ``float32[B, 3, H, W]`` RGB in [0, 1] (letterboxed, pad 114/255), any ``H``
and ``W`` divisible by 32, contiguous or channels_last. In training mode ``forward``
returns the raw per-level maps (see :meth:`FoveaDet.forward`).

Usage::

    model, info = load_default_detector()      # eval mode, on the CPU
    info.class_names, info.input_size          # ("circle", ...), (320, 320)
    preds = model(batch)                       # [B, 4 + 5, 2100] for 320x320
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

STRIDES: tuple[int, int, int] = (8, 16, 32)
WEIGHTS_PACKAGE = "engines"  # files under engines/weights/ (package data of engines)
WEIGHTS_FILE = "fovea_det.pt"
INFO_FILE = "fovea_det.json"


class ConvBNAct(nn.Module):
    """Conv (no bias) + BatchNorm + SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = ConvBNAct(c, c, 3)
        self.cv2 = ConvBNAct(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8's CSP block: split, ``n`` bottlenecks on one half, concat all, fuse."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBNAct(c_in, 2 * self.c, 1)
        self.cv2 = ConvBNAct((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        ys = [y[:, : self.c], y[:, self.c :]]
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.cv1 = ConvBNAct(c, h, 1)
        self.cv2 = ConvBNAct(4 * h, c, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class Head(nn.Module):
    """One level's decoupled head: a box branch (4 ``ltrb`` logits) and a class branch (nc)."""

    def __init__(self, c_in: int, nc: int, c: int = 48) -> None:
        super().__init__()
        self.box = nn.Sequential(ConvBNAct(c_in, c, 3), nn.Conv2d(c, 4, 1))
        self.cls = nn.Sequential(ConvBNAct(c_in, c, 3), nn.Conv2d(c, nc, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.box(x), self.cls(x)


class FoveaDet(nn.Module):
    """Anchor-free detector; see the module docstring for inputs and outputs."""

    def __init__(
        self, num_classes: int = 5, widths: tuple[int, int, int, int] = (24, 48, 96, 128), neck: int = 48
    ) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.num_classes = num_classes
        self.strides = STRIDES
        # space-to-depth stem: no full- or half-resolution activations (cheap on CPUs)
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), ConvBNAct(12, w1, 3, 2))
        self.stage2 = C2f(w1, w1, 1)
        self.stage3 = nn.Sequential(ConvBNAct(w1, w2, 3, 2), C2f(w2, w2, 2))
        self.stage4 = nn.Sequential(ConvBNAct(w2, w3, 3, 2), C2f(w3, w3, 2))
        self.stage5 = nn.Sequential(ConvBNAct(w3, w4, 3, 2), C2f(w4, w4, 1), SPPF(w4))
        self.up4 = C2f(w4 + w3, 2 * neck, 1, shortcut=False)
        self.up3 = C2f(2 * neck + w2, neck, 1, shortcut=False)
        self.down3 = ConvBNAct(neck, neck, 3, 2)
        self.pan4 = C2f(3 * neck, 2 * neck, 1, shortcut=False)
        self.down4 = ConvBNAct(2 * neck, 2 * neck, 3, 2)
        self.pan5 = C2f(2 * neck + w4, w4, 1, shortcut=False)
        self.heads = nn.ModuleList(
            [Head(neck, num_classes), Head(2 * neck, num_classes), Head(w4, num_classes)]
        )
        self._init_bias()

    def _init_bias(self) -> None:
        for head, s in zip(self.heads, STRIDES, strict=True):
            assert isinstance(head, Head)
            last_cls, last_box = head.cls[-1], head.box[-1]
            assert isinstance(last_cls, nn.Conv2d) and isinstance(last_box, nn.Conv2d)
            assert last_cls.bias is not None and last_box.bias is not None
            # prior: ~5 objects of 5 classes on a 640 image (as YOLOv8 does)
            nn.init.constant_(last_cls.bias, float(torch.log(torch.tensor(5.0 / self.num_classes / (640 / s) ** 2))))
            nn.init.constant_(last_box.bias, 1.0)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        x = self.stage2(x)
        p3 = self.stage3(x)
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        n4 = self.up4(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4], 1))
        o3 = self.up3(torch.cat([F.interpolate(n4, scale_factor=2.0, mode="nearest"), p3], 1))
        o4 = self.pan4(torch.cat([self.down3(o3), n4], 1))
        o5 = self.pan5(torch.cat([self.down4(o4), p5], 1))
        return [o3, o4, o5]

    def forward_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ltrb [B, N, 4] in input pixels, class logits [B, N, nc], points [N, 2] in pixels)``.

        ``ltrb`` are the distances from each grid point (cell centre) to the box sides.
        """
        boxes, logits, points = [], [], []
        feats = self.features(x)
        for i, head in enumerate(self.heads):
            feat, s = feats[i], self.strides[i]
            box, cls = head(feat)
            h, w = feat.shape[2], feat.shape[3]
            boxes.append(F.softplus(box).flatten(2) * s)
            logits.append(cls.flatten(2))
            ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) * s
            xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) * s
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1))
        return torch.cat(boxes, 2).transpose(1, 2), torch.cat(logits, 2).transpose(1, 2), torch.cat(points, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eval: ``[B, 4 + nc, N]`` (YOLOv8 layout). Training: :meth:`forward_raw`'s tuple."""
        ltrb, logits, points = self.forward_raw(x)
        if self.training:
            return ltrb, logits, points
        return decode_yolov8(ltrb, logits, points)


def decode_yolov8(ltrb: torch.Tensor, logits: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``[B, 4 + nc, N]``: cx, cy, w, h (pixels) and sigmoid scores, from raw predictions."""
    x1y1 = points[None] - ltrb[..., :2]
    x2y2 = points[None] + ltrb[..., 2:]
    cxcy = (x1y1 + x2y2) / 2
    wh = x2y2 - x1y1
    return torch.cat([cxcy, wh, logits.sigmoid()], 2).transpose(1, 2)


@dataclass(frozen=True)
class DetectorInfo:
    """What the shipped weights are: classes, input size (H, W), how they were trained."""

    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    seed: int
    training: dict[str, Any] = field(default_factory=dict)  # steps, held-out mAP, date, ...


def build_model(num_classes: int = 5) -> FoveaDet:
    """A fresh, untrained :class:`FoveaDet` (the shipped architecture)."""
    return FoveaDet(num_classes)


def load_default_detector(device: str | torch.device = "cpu") -> tuple[FoveaDet, DetectorInfo]:
    """The bundled detector (eval mode, fp32, on ``device``) and its :class:`DetectorInfo`.

    Raises:
        streams.errors.EngineError: the weights are missing from the installed package.
    """
    from streams.errors import EngineError

    root = resources.files(WEIGHTS_PACKAGE) / "weights"
    try:
        meta = json.loads((root / INFO_FILE).read_text())
        with resources.as_file(root / WEIGHTS_FILE) as path:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise EngineError(f"the bundled detector's weights are missing (engines/weights/{WEIGHTS_FILE}): {e}") from e
    info = DetectorInfo(
        class_names=tuple(meta["class_names"]),
        input_size=(int(meta["input_size"][0]), int(meta["input_size"][1])),
        seed=int(meta["seed"]),
        training={k: v for k, v in meta.items() if k not in ("class_names", "input_size", "seed")},
    )
    model = FoveaDet(len(info.class_names))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    return model.to(device), info
