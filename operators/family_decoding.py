"""Decoding of the model families beyond plain detection: end-to-end, DETR, segmentation, pose.

Each decoder turns a batch's raw outputs (see :mod:`operators.output_decoding` for the
layouts) into score-filtered :class:`~operators.output_decoding.Candidates` in model-input
pixels, plus each candidate's extra values: the mask coefficients of a segmentation model
or the keypoints of a pose model (``x, y`` in model-input pixels, then the visibility
score when there is one). Whether the candidates still need NMS is the layout's: the
``yolov8_*`` families do, the end-to-end and DETR ones do not.

Decoders accept tensors on any device in fp16 or fp32 and compute in fp32; their only host
synchronization is the ``nonzero`` of the confidence filter.

Usage::

    dec = decode_family([pred, protos], "yolov8_seg", conf_threshold=0.25, input_hw=(640, 640))
    dec.candidates.boxes      # float32[K, 4] xyxy, model-input pixels
    dec.extra                 # float32[K, 32]: mask coefficients
    dec.needs_nms             # True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from operators.boxes import cxcywh_to_xyxy
from operators.output_decoding import Candidates
from streams.errors import ShapeError

__all__ = [
    "NMS_FREE",
    "FamilyCandidates",
    "decode_detr",
    "decode_end2end",
    "decode_family",
    "decode_rtdetr",
    "decode_yolov8_extra",
    "keypoint_dims",
]

#: Layouts whose outputs are already one box per object (no NMS).
NMS_FREE = frozenset({"end2end", "end2end_seg", "end2end_pose", "rtdetr", "detr"})


class FamilyCandidates(NamedTuple):
    """A batch's candidates and their extra values.

    Attributes:
        candidates: boxes (xyxy, model-input pixels), scores, classes and batch rows.
        extra: ``float32[K, E]`` per candidate (mask coefficients, or keypoints flattened
            ``x, y[, v]`` per keypoint), or ``None`` for a plain detector.
        needs_nms: whether NMS must still run on the candidates.
        num_classes: classes the model scores (``None`` where the layout does not say).
    """

    candidates: Candidates
    extra: torch.Tensor | None
    needs_nms: bool
    num_classes: int | None


def keypoint_dims(values: int) -> int:
    """Values per keypoint for ``values`` keypoint numbers per box: 3 (x, y, visibility) when
    they divide by 3 (Ultralytics' default ``kpt_shape [17, 3]``), else 2 (x, y)."""
    if values > 0 and values % 3 == 0:
        return 3
    if values > 0 and values % 2 == 0:
        return 2
    raise ShapeError(f"pose output: {values} keypoint values per box are neither (x, y) pairs nor (x, y, v) triples")


def decode_yolov8_extra(pred: torch.Tensor, num_classes: int, conf_threshold: float) -> FamilyCandidates:
    """Decode ``[B, 4 + nc + E, N]`` (YOLOv8/11 segmentation or pose): each anchor's best class
    (ties: the lowest id) above ``conf_threshold``, with its ``E`` extra values."""
    if pred.ndim != 3 or num_classes < 1 or pred.shape[1] <= 4 + num_classes:
        raise ShapeError(f"decode_yolov8_extra: expected shape (B, 4 + {num_classes} + E, N) with E >= 1, "
                         f"got {tuple(pred.shape)}")
    best, best_cls = pred[:, 4:4 + num_classes, :].max(dim=1)
    b, n = (best.to(torch.float32) > conf_threshold).nonzero(as_tuple=True)
    boxes = cxcywh_to_xyxy(pred[b, :4, n].to(torch.float32))
    extra = pred[b, 4 + num_classes:, n].to(torch.float32)
    cands = Candidates(b, boxes, best[b, n].to(torch.float32), best_cls[b, n].to(torch.int64))
    return FamilyCandidates(cands, extra, True, num_classes)


def decode_end2end(pred: torch.Tensor, conf_threshold: float) -> FamilyCandidates:
    """Decode ``[B, K, 6 + E]`` end-to-end rows (x1, y1, x2, y2, score, class, extra...):
    the rows whose score is above ``conf_threshold``, in (batch row, slot) order."""
    if pred.ndim != 3 or pred.shape[2] < 6:
        raise ShapeError(f"decode_end2end: expected shape (B, K, 6 + E), got {tuple(pred.shape)}")
    p = pred.to(torch.float32)
    b, k = (p[..., 4] > conf_threshold).nonzero(as_tuple=True)
    rows = p[b, k]
    extra = rows[:, 6:] if p.shape[2] > 6 else None
    cands = Candidates(b, rows[:, :4], rows[:, 4], rows[:, 5].round().to(torch.int64))
    return FamilyCandidates(cands, extra, False, None)


def _input_scale(input_hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    h, w = input_hw
    return torch.tensor([w, h, w, h], dtype=torch.float32).to(device)


def decode_rtdetr(pred: torch.Tensor, conf_threshold: float, input_hw: tuple[int, int]) -> FamilyCandidates:
    """Decode Ultralytics RT-DETR's ``[B, Q, 6]`` (cx, cy, w, h normalised to the input,
    score, class) into input-pixel xyxy boxes."""
    if pred.ndim != 3 or pred.shape[2] != 6:
        raise ShapeError(f"decode_rtdetr: expected shape (B, Q, 6), got {tuple(pred.shape)}")
    p = pred.to(torch.float32)
    b, q = (p[..., 4] > conf_threshold).nonzero(as_tuple=True)
    rows = p[b, q]
    boxes = cxcywh_to_xyxy(rows[:, :4] * _input_scale(input_hw, p.device))
    cands = Candidates(b, boxes, rows[:, 4], rows[:, 5].round().to(torch.int64))
    return FamilyCandidates(cands, None, False, None)


def decode_detr(outputs: Sequence[torch.Tensor], conf_threshold: float, input_hw: tuple[int, int]) -> FamilyCandidates:
    """Decode DETR-style outputs: ``[pred [B, Q, 4 + nc]]`` (class probabilities) or
    ``[boxes [B, Q, 4], logits [B, Q, nc]]`` (sigmoid applied); boxes are cx, cy, w, h
    normalised to the input. Each query's best class (ties: the lowest id) above
    ``conf_threshold``."""
    if len(outputs) == 1:
        pred = outputs[0]
        if pred.ndim != 3 or pred.shape[2] < 5:
            raise ShapeError(f"decode_detr: expected shape (B, Q, 4 + nc), got {tuple(pred.shape)}")
        boxes_n, scores = pred[..., :4], pred[..., 4:].to(torch.float32)
    elif len(outputs) == 2:
        boxes_n, logits = outputs
        if boxes_n.ndim != 3 or boxes_n.shape[2] != 4 or logits.ndim != 3 or logits.shape[:2] != boxes_n.shape[:2]:
            raise ShapeError(f"decode_detr: expected boxes (B, Q, 4) and logits (B, Q, nc), got "
                             f"{tuple(boxes_n.shape)} and {tuple(logits.shape)}")
        scores = logits.to(torch.float32).sigmoid()
    else:
        raise ShapeError(f"decode_detr: expected 1 or 2 outputs, got {len(outputs)}")
    best, best_cls = scores.max(dim=2)
    b, q = (best > conf_threshold).nonzero(as_tuple=True)
    boxes = cxcywh_to_xyxy(boxes_n[b, q].to(torch.float32) * _input_scale(input_hw, boxes_n.device))
    cands = Candidates(b, boxes, best[b, q], best_cls[b, q].to(torch.int64))
    return FamilyCandidates(cands, None, False, scores.shape[2])


def decode_family(
    outputs: Sequence[torch.Tensor],
    layout: str,
    conf_threshold: float,
    input_hw: tuple[int, int],
    num_classes: int | None = None,
) -> FamilyCandidates:
    """Decode one of the families of this module; ``outputs`` as
    :func:`operators.output_decoding.select_outputs` orders them.

    ``num_classes`` (the class names' count) tells a pose model's classes from its keypoint
    values (1 when unknown, as in Ultralytics' pose models); a segmentation model's classes
    follow from its prototypes.
    """
    if layout == "end2end" or layout == "end2end_pose":
        return decode_end2end(outputs[0], conf_threshold)
    if layout == "end2end_seg":
        dec = decode_end2end(outputs[0], conf_threshold)
        nm = outputs[1].shape[1]
        if dec.extra is None or dec.extra.shape[1] != nm:
            raise ShapeError(f"end2end_seg: the detections carry {outputs[0].shape[2] - 6} values after the class; "
                             f"the prototypes have {nm} channels")
        return dec
    if layout == "rtdetr":
        return decode_rtdetr(outputs[0], conf_threshold, input_hw)
    if layout == "detr":
        return decode_detr(outputs, conf_threshold, input_hw)
    if layout == "yolov8_seg":
        pred, protos = outputs
        nc = pred.shape[1] - 4 - protos.shape[1]
        if protos.ndim != 4 or nc < 1:
            raise ShapeError(f"yolov8_seg: output {tuple(pred.shape)} and prototypes {tuple(protos.shape)} leave "
                             f"{nc} classes")
        return decode_yolov8_extra(pred, nc, conf_threshold)
    if layout == "yolov8_pose":
        return decode_yolov8_extra(outputs[0], num_classes or 1, conf_threshold)
    raise ValueError(f"decode_family: not a family layout: {layout!r}")
