"""Small, deliberately plain NumPy reference implementations of the postprocessing ops.

They exist for the tests: each one is written to be obviously correct (loops over rows
and groups, the textbook greedy NMS), not fast. Arithmetic on boxes and IoUs is done in
float32 with the same operation order as the torch ops, so comparisons with an IoU
threshold give bit-identical decisions; only the final mapping to source pixels uses
float64.

Tie-breaking, as in the torch ops: equal scores are ranked by lower candidate index, and
the best class of an anchor is the lowest class id among equal scores.

Usage::

    expected = postprocess_np([pred.numpy()], "yolov8", geoms, PostprocessConfig())
    keep = nms_np(boxes, scores, groups, iou_threshold=0.45)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from operators.boxes import LetterboxGeometry
from streams.detections import Detections

if TYPE_CHECKING:
    from operators.output_decoding import OutputLayout
    from streams.config import PostprocessConfig

__all__ = [
    "CandidatesNp",
    "box_iou_np",
    "cxcywh_to_xyxy_np",
    "decode_efficient_nms_np",
    "decode_yolov5_np",
    "decode_yolov8_np",
    "letterbox_to_source_np",
    "nms_np",
    "postprocess_np",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class CandidatesNp(NamedTuple):
    """NumPy twin of :class:`operators.output_decoding.Candidates`."""

    batch_index: I64
    boxes: F32
    scores: F32
    class_id: I64


def _concat(parts: list[CandidatesNp]) -> CandidatesNp:
    if not parts:
        return CandidatesNp(
            np.zeros(0, np.int64),
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
        )
    return CandidatesNp(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))


def cxcywh_to_xyxy_np(boxes: npt.ArrayLike) -> F32:
    """``float32[N, 4]`` (cx, cy, w, h) -> (x1, y1, x2, y2)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    half_w = b[:, 2] / np.float32(2)
    half_h = b[:, 3] / np.float32(2)
    return np.stack(
        [b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], axis=1
    )


def box_iou_np(a: npt.ArrayLike, b: npt.ArrayLike) -> F32:
    """IoU of every box of ``a [N, 4]`` with every box of ``b [M, 4]``: ``float32[N, M]``.

    Pairs with an empty union get 0.
    """
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter_w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    inter_h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(inter_w, np.float32(0)) * np.maximum(inter_h, np.float32(0))
    union = area_a[:, None] + area_b[None, :] - inter
    safe = np.where(union > 0, union, np.float32(1))
    return np.where(union > 0, inter / safe, np.float32(0)).astype(np.float32)


def nms_np(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    groups: npt.ArrayLike,
    iou_threshold: float,
    max_candidates: int = 30000,
) -> I64:
    """Textbook greedy NMS, run separately for each group.

    Only the ``max_candidates`` best scores take part. Returns the kept indices sorted by
    decreasing score (ties: increasing index).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32)
    groups = np.asarray(groups, dtype=np.int64)
    ranked = np.argsort(-scores, kind="stable")[:max_candidates]
    keep: list[int] = []
    for g in np.unique(groups[ranked]):
        remaining = [int(i) for i in ranked if groups[i] == g]  # best first
        while remaining:
            best = remaining.pop(0)
            keep.append(best)
            ious = box_iou_np(boxes[best], boxes[remaining])[0]
            remaining = [
                i for i, iou in zip(remaining, ious, strict=True) if not iou > iou_threshold
            ]
    kept = np.array(sorted(keep, key=lambda i: (-scores[i], i)), dtype=np.int64)
    return kept


def decode_yolov8_np(
    pred: npt.ArrayLike, conf_threshold: float, multi_label: bool = False
) -> CandidatesNp:
    """Decode ``[B, 4 + nc, N]`` (Ultralytics YOLOv8/YOLO11), one row at a time."""
    p = np.asarray(pred).astype(np.float32)
    parts = []
    for b in range(p.shape[0]):
        boxes = cxcywh_to_xyxy_np(p[b, :4].T)  # [N, 4]
        cls = p[b, 4:]  # [nc, N]
        if multi_label:
            c, n = np.nonzero(cls > conf_threshold)
            score = cls[c, n]
        else:
            best_c = np.argmax(cls, axis=0)  # first maximum
            best = cls[best_c, np.arange(cls.shape[1])]
            (n,) = np.nonzero(best > conf_threshold)
            c, score = best_c[n], best[n]
        parts.append(
            CandidatesNp(np.full(len(n), b, np.int64), boxes[n], score, c.astype(np.int64))
        )
    return _concat(parts)


def decode_yolov5_np(pred: npt.ArrayLike, conf_threshold: float) -> CandidatesNp:
    """Decode ``[B, N, 5 + nc]`` (YOLOv5), one row at a time."""
    p = np.asarray(pred).astype(np.float32)
    parts = []
    for b in range(p.shape[0]):
        obj = p[b, :, 4]
        cls_scores = p[b, :, 5:] * obj[:, None]
        best_c = np.argmax(cls_scores, axis=1)
        best = cls_scores[np.arange(len(best_c)), best_c]
        (n,) = np.nonzero((obj > conf_threshold) & (best > conf_threshold))
        parts.append(
            CandidatesNp(
                np.full(len(n), b, np.int64),
                cxcywh_to_xyxy_np(p[b, n, :4]),
                best[n],
                best_c[n].astype(np.int64),
            )
        )
    return _concat(parts)


def decode_efficient_nms_np(
    num_dets: npt.ArrayLike,
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    classes: npt.ArrayLike,
    conf_threshold: float,
) -> CandidatesNp:
    """First ``num_dets[b]`` slots of each row with score ``> conf_threshold``."""
    num = np.asarray(num_dets).reshape(-1)
    bx = np.asarray(boxes).astype(np.float32)
    sc = np.asarray(scores).astype(np.float32)
    cl = np.asarray(classes)
    parts = []
    for b in range(bx.shape[0]):
        slots = [j for j in range(int(num[b])) if j < bx.shape[1] and sc[b, j] > conf_threshold]
        idx = np.array(slots, dtype=np.int64)
        parts.append(
            CandidatesNp(
                np.full(len(idx), b, np.int64),
                bx[b, idx].reshape(-1, 4),
                sc[b, idx],
                np.round(cl[b, idx]).astype(np.int64),
            )
        )
    return _concat(parts)


def letterbox_to_source_np(boxes: npt.ArrayLike, geometry: LetterboxGeometry) -> F32:
    """Map ``[N, 4]`` xyxy model-input boxes of one frame to source pixels, clipped."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x = (b[:, [0, 2]] - geometry.pad_x) / geometry.scale_x
    y = (b[:, [1, 3]] - geometry.pad_y) / geometry.scale_y
    x = np.clip(x, 0, geometry.src_w)
    y = np.clip(y, 0, geometry.src_h)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32)


def postprocess_np(
    outputs: Sequence[npt.ArrayLike],
    layout: OutputLayout,
    geometries: Sequence[LetterboxGeometry | None],
    params: PostprocessConfig,
    class_names: Sequence[str] = (),
    *,
    max_candidates: int = 30000,
) -> list[Detections | None]:
    """Reference of :func:`operators.postprocess.postprocess` on NumPy arrays.

    Decodes the non-padding rows one by one, keeps the ``max_candidates`` best candidates
    of the batch, runs :func:`nms_np` per (row, class) (per row when class-agnostic), then
    per row takes the ``max_detections`` best and maps them to source pixels.
    """
    names = tuple(class_names)
    rows = [b for b, g in enumerate(geometries) if g is not None]
    parts = []
    for b in rows:
        if layout == "yolov8":
            c = decode_yolov8_np(np.asarray(outputs[0])[b : b + 1], params.conf_threshold)
        elif layout == "yolov5":
            c = decode_yolov5_np(np.asarray(outputs[0])[b : b + 1], params.conf_threshold)
        else:
            num, bx, sc, cl = (np.asarray(t)[b : b + 1] for t in outputs)
            c = decode_efficient_nms_np(num, bx, sc, cl, params.conf_threshold)
        parts.append(c._replace(batch_index=np.full(len(c.scores), b, np.int64)))
    cands = _concat(parts)

    if layout == "efficient_nms":
        ranked = np.argsort(-cands.scores, kind="stable")
    else:
        groups = (
            cands.batch_index
            if params.class_agnostic
            else cands.batch_index * 1_000_000 + cands.class_id
        )
        ranked = nms_np(
            cands.boxes, cands.scores, groups, params.iou_threshold, max_candidates
        )

    result: list[Detections | None] = [None] * len(geometries)
    for b in rows:
        geometry = geometries[b]
        assert geometry is not None
        mine = [i for i in ranked if cands.batch_index[i] == b][: params.max_detections]
        idx = np.array(mine, dtype=np.int64)
        result[b] = Detections(
            xyxy=letterbox_to_source_np(cands.boxes[idx], geometry),
            confidence=cands.scores[idx],
            class_id=cands.class_id[idx],
            class_names=names,
        )
    return result
