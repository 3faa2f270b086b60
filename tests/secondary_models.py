"""A hand-built, deterministic secondary detector for the cascade tests, in three output families.

:class:`BlobBoxes` "detects" in its input (``[B, 3, H, W]``, RGB in 0..1) the bounding box of
the saturated pixels (class 0, ``blob``, score 0.9) and the bounding box of the white pixels
(class 1, ``white``, score 0.6), each where there is one. The letterbox padding (grey 114)
and a dark background are neither, so a test knows, to the pixel, what it must find in a
crop and where that lies in the source frame. Its outputs take the layout of one family the
primary model decodes (:mod:`operators.output_decoding`):

- ``yolov8``: ``[B, 4 + 2, anchors]`` (cx, cy, w, h, class scores), the boxes at anchors 0 and 1;
- ``end2end``: ``[B, 2, 6]`` rows ``x1, y1, x2, y2, score, class``;
- ``detr``: boxes ``[B, 2, 4]`` (cx, cy, w, h normalised to the input) and logits ``[B, 2, 2]``.

Usage::

    save_blob_detector(tmp / "blob.ts", "end2end")
    export_blob_onnx(tmp / "blob.onnx")     # yolov8 layout, Ultralytics-style metadata (names, task)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

LABELS = ("blob", "white")
SCORES = (0.9, 0.6)
FAMILIES = ("yolov8", "end2end", "detr")


class BlobBoxes(nn.Module):
    """See the module docstring."""

    def __init__(self, family: str = "yolov8", anchors: int = 8) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family: one of {FAMILIES}, got {family!r}")
        self.family = family
        self.anchors = anchors

    def _boxes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``xyxy [B, 2, 4]`` in input pixels and ``found [B, 2]`` (0/1) of both masks."""
        x = x.float()
        hi = x.amax(1)
        lo = x.amin(1)
        masks = torch.stack([(hi - lo) > 0.5, lo > 0.8], 1).float()  # [B, 2, H, W]
        h, w = x.shape[2], x.shape[3]
        cols = masks.amax(2) > 0  # [B, 2, W]
        rows = masks.amax(3) > 0  # [B, 2, H]
        xi = torch.arange(w, device=x.device, dtype=torch.float32)
        yi = torch.arange(h, device=x.device, dtype=torch.float32)
        big = 1e6  # above any column or row index
        x1 = torch.where(cols, xi, torch.full_like(xi, big)).amin(-1)
        x2 = torch.where(cols, xi + 1, torch.zeros_like(xi)).amax(-1)
        y1 = torch.where(rows, yi, torch.full_like(yi, big)).amin(-1)
        y2 = torch.where(rows, yi + 1, torch.zeros_like(yi)).amax(-1)
        found = (cols.float().amax(-1) > 0).float()
        boxes = torch.stack([x1, y1, x2, y2], -1) * found[..., None]
        return boxes, found

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        boxes, found = self._boxes(x)
        b = boxes.shape[0]
        score = found * torch.tensor([0.9, 0.6], device=x.device)[None, :]  # [B, 2]: SCORES
        eye = torch.eye(2, device=x.device)
        if self.family == "end2end":
            cls = torch.arange(2, device=x.device, dtype=torch.float32)[None, :, None].expand(b, 2, 1)
            return [torch.cat([boxes, score[..., None], cls], -1)]
        cxcywh = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)
        if self.family == "detr":
            h, w = x.shape[2], x.shape[3]
            norm = cxcywh / torch.tensor([w, h, w, h], device=x.device, dtype=torch.float32)
            logit = torch.where(found > 0, torch.log(score / (1 - score + 1e-9) + 1e-9), torch.full_like(score, -20.0))
            logits = eye[None] * logit[:, :, None] + (1 - eye[None]) * -20.0  # query q scores class q only
            return [norm, logits]
        pad = torch.zeros((b, 6, self.anchors - 2), device=x.device, dtype=torch.float32)
        cls = score[:, None, :] * eye[None]  # [B, class, anchor]
        return [torch.cat([torch.cat([cxcywh.transpose(1, 2), cls], 1), pad], 2)]


def save_blob_detector(path: Path, family: str = "yolov8") -> Path:
    """:class:`BlobBoxes` of ``family`` as TorchScript."""
    torch.jit.save(torch.jit.script(BlobBoxes(family)), str(path))
    return path


def export_blob_onnx(path: Path, size: int = 128, metadata: dict[str, str] | None = None) -> Path:
    """:class:`BlobBoxes` (yolov8 layout) as ONNX with a dynamic batch and, as Ultralytics
    writes them, ``names``, ``task``, ``imgsz`` metadata (``metadata`` replaces them)."""
    import onnx

    torch.onnx.export(BlobBoxes("yolov8"), (torch.zeros(1, 3, size, size),), str(path), input_names=["images"],
                      output_names=["output0"], dynamic_axes={"images": {0: "n"}, "output0": {0: "n"}},
                      dynamo=False)
    model = onnx.load(str(path))
    meta = metadata if metadata is not None else {"names": str(dict(enumerate(LABELS))), "task": "detect",
                                                  "imgsz": str([size, size])}
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path
