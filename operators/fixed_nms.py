"""Per-frame YOLO decoding and class-aware NMS in fixed shapes: no host synchronization.

:func:`operators.postprocess.postprocess` on a CUDA device uses this path. Every tensor has
a shape known before the model ran (``[R, K, ...]``: ``K`` candidates per frame), so the
whole batch is decoded, suppressed, ranked and mapped to source pixels without the host
waiting for the GPU; the caller's single device-to-host copy of the result is the only
synchronization. (The variable-length path, :func:`operators.decode.decode_yolov8` +
:func:`operators.nms.batched_nms`, needs the candidate counts on the host: a ``nonzero``
and a few convergence checks per batch, each a wait for the GPU.)

Per frame: the anchors whose score passes the threshold are ranked by decreasing score
(ties: anchor order) and the first ``K`` kept; greedy NMS among them is solved by the same
fixed-point iteration as :mod:`operators.nms` (Cluster-NMS), run ``iterations`` times; the
kept boxes are ranked again and the first ``max_detections`` mapped to source pixels.

The result equals the variable-length path's exactly when a frame has at most ``K``
candidates above the threshold and its NMS converged within ``iterations``; ``ok`` says so
per frame (computed on the device, copied with the detections), and the caller redoes the
frames where it is false with the exact path.

Usage::

    table, count, ok = fixed_yolo_nms(pred, "yolov8", pad, scale, size, params)
    host = pack(table, count, ok).cpu()        # the one synchronization
"""

from __future__ import annotations

import torch

from operators.boxes import cxcywh_to_xyxy
from operators.decode import OutputLayout

__all__ = ["fixed_yolo_nms", "pack", "unpack"]

DEFAULT_CANDIDATES = 512  # per frame
DEFAULT_ITERATIONS = 8


def _anchor_scores(pred: torch.Tensor, layout: OutputLayout, conf_threshold: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(score float32[R, N], class int64[R, N], passes bool[R, N], cxcywh[R, 4, N] or [R, N, 4])``
    with the same arithmetic as :func:`operators.decode.decode_yolov8` / ``decode_yolov5``."""
    if layout == "yolov8":
        best, best_cls = pred[:, 4:, :].max(dim=1)  # in the model's dtype, exact in fp16 too
        best = best.to(torch.float32)
        return best, best_cls, best > conf_threshold, pred[:, :4, :]
    p = pred.to(torch.float32)
    obj = p[..., 4]
    best, best_cls = (p[..., 5:] * obj[..., None]).max(dim=2)
    return best, best_cls, (obj > conf_threshold) & (best > conf_threshold), p[..., :4]


def _batched_iou(boxes: torch.Tensor) -> torch.Tensor:
    """``float32[R, K, K]`` IoU of each frame's ``[K, 4]`` xyxy boxes with each other
    (the arithmetic of :func:`operators.boxes.box_iou`)."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, :, None] + area[:, None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def fixed_yolo_nms(
    pred: torch.Tensor,
    layout: OutputLayout,
    pad: torch.Tensor,
    scale: torch.Tensor,
    size: torch.Tensor,
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
    class_agnostic: bool = False,
    max_candidates: int | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    iterations: int = DEFAULT_ITERATIONS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode, suppress and rank a batch of YOLO outputs per frame, in fixed shapes.

    Args:
        pred: ``Tensor[R, 4 + nc, N]`` (yolov8) or ``Tensor[R, N, 5 + nc]`` (yolov5), the
            frames' rows only (no padding rows).
        layout: ``"yolov8"`` or ``"yolov5"``.
        pad, scale, size: ``float32[R, 2]`` letterbox geometry of each frame
            (:func:`operators.boxes.geometry_tensors`).
        conf_threshold, iou_threshold, max_detections, class_agnostic, max_candidates: as
            in :class:`operators.postprocess.PostprocessParams` (``max_candidates`` counts
            the whole batch: a batch over it is not ``ok``, the exact path caps it).
        candidates: ``K``, candidates per frame taking part in NMS.
        iterations: fixed-point iterations of the suppression.

    Returns:
        ``(table float32[R, M, 6], count int64[R], ok bool[R])``: per frame its first
        ``count`` rows are the detections (x1, y1, x2, y2 in source pixels clipped to the
        frame, score, class id) by decreasing score; ``M = min(max_detections, K)``. ``ok``
        is false where the result may differ from exact greedy NMS (more than ``K``
        candidates, no convergence, or the batch over ``max_candidates``): redo those
        frames with the exact path.
    """
    score, cls, passes, raw = _anchor_scores(pred, layout, conf_threshold)
    r, n = score.shape
    k = min(candidates, n)
    masked = torch.where(passes, score, torch.full_like(score, float("-inf")))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]  # [R, K]
    sc = masked.gather(1, order)
    valid = passes.gather(1, order)
    cls_k = cls.gather(1, order)
    if layout == "yolov8":
        picked = raw.gather(2, order[:, None, :].expand(r, 4, k)).transpose(1, 2)
    else:
        picked = raw.gather(1, order[:, :, None].expand(r, k, 4))
    boxes = cxcywh_to_xyxy(picked.to(torch.float32))  # [R, K, 4]

    rank = torch.arange(k, device=pred.device)
    suppress = (_batched_iou(boxes) > iou_threshold) & (rank[None, :] < rank[:, None])[None]
    if not class_agnostic:
        suppress &= cls_k[:, :, None] == cls_k[:, None, :]
    suppress &= valid[:, None, :]
    keep = valid
    changed = torch.zeros(r, dtype=torch.bool, device=pred.device)
    for _ in range(iterations):
        new = valid & ~(suppress & keep[:, None, :]).any(dim=2)
        changed = (new != keep).any(dim=1)
        keep = new
    per_frame = passes.sum(dim=1)
    ok = ~changed & (per_frame <= k)
    if max_candidates is not None:
        ok &= per_frame.sum() <= max_candidates

    m = min(max_detections, k)
    kept = torch.where(keep, sc, torch.full_like(sc, float("-inf")))
    top = torch.sort(kept, dim=1, descending=True, stable=True).indices[:, :m]  # [R, M]
    count = keep.sum(dim=1).clamp(max=m)
    out_boxes = boxes.gather(1, top[:, :, None].expand(r, m, 4))
    pad4 = pad.to(torch.float32).repeat(1, 2)[:, None, :]
    scale4 = scale.to(torch.float32).repeat(1, 2)[:, None, :]
    size4 = size.to(torch.float32).repeat(1, 2)[:, None, :]
    src = torch.minimum(((out_boxes - pad4) / scale4).clamp(min=0), size4)
    table = torch.cat([src, sc.gather(1, top)[:, :, None],
                       cls_k.gather(1, top).to(torch.float32)[:, :, None]], dim=2)
    return table, count, ok


def pack(table: torch.Tensor, count: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """One ``float32[R, M * 6 + 2]`` tensor of :func:`fixed_yolo_nms`'s results (one copy)."""
    r = table.shape[0]
    return torch.cat([table.reshape(r, -1), count.to(torch.float32)[:, None],
                      ok.to(torch.float32)[:, None]], dim=1)


def unpack(host: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack`: ``(table[R, M, 6], count int64[R], ok bool[R])``."""
    r = host.shape[0]
    return (host[:, : m * 6].reshape(r, m, 6), host[:, m * 6].to(torch.int64),
            host[:, m * 6 + 1] > 0.5)
