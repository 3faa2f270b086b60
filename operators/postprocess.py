"""Postprocessing: raw detector outputs -> per-frame :class:`streams.detections.Detections`.

The whole batch is processed at once on the outputs' device: decode and confidence filter
-> batched class-aware NMS (skipped for ``efficient_nms``, which is already suppressed) ->
mapping back to source pixels through each row's letterbox geometry, clipped to the frame
-> one device-to-host copy of a ``[K, 7]`` table -> split per row, keeping the
``max_detections`` best of each.

Host synchronizations: the ``nonzero`` of the confidence filter, those of
:func:`operators.nms.batched_nms` (a few, none per box) and the final copy.

Usage::

    geoms = [letterbox_geometry(m.width, m.height, 640, 640) for m in metas]
    geoms += [None] * (batch_size - len(geoms))          # padding rows of a partial batch
    dets = postprocess(select_outputs(out, "yolov8"), "yolov8", geoms,
                       PostprocessParams(conf_threshold=0.3), class_names=names)
    dets[0].xyxy       # float32[N, 4], source pixels, highest confidence first
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from operators.boxes import LetterboxGeometry, geometry_tensors, to_source_pixels
from operators.decode import (
    Candidates,
    OutputLayout,
    decode_efficient_nms,
    decode_yolov5,
    decode_yolov8,
)
from operators.nms import batched_nms
from streams.detections import Detections
from streams.errors import ShapeError

__all__ = ["PostprocessParams", "postprocess"]

logger = logging.getLogger(__name__)

_NUM_INPUTS: dict[str, int] = {"yolov8": 1, "yolov5": 1, "efficient_nms": 4}


@dataclass(frozen=True)
class PostprocessParams:
    """Thresholds of decoding and NMS.

    Attributes:
        conf_threshold: candidates need a score strictly above this.
        iou_threshold: NMS suppresses a box whose IoU with a better kept one is above this.
        max_detections: at most this many detections per frame (the highest scores).
        class_agnostic: NMS across classes (boxes of different classes suppress each other).
        max_candidates: at most this many candidates per batch enter NMS (the highest scores).
    """

    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 300
    class_agnostic: bool = False
    max_candidates: int = 30000


def _row_selector(rows: list[int]) -> slice | list[int]:
    """Index of the non-padding rows: a slice (a view) when they are contiguous."""
    if rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    return rows


def _take_rows(t: torch.Tensor, sel: slice | list[int]) -> torch.Tensor:
    if isinstance(sel, slice):
        return t[sel]
    return t.index_select(0, torch.tensor(sel, dtype=torch.int64, device=t.device))


def postprocess(
    outputs: Sequence[torch.Tensor],
    layout: OutputLayout,
    geometries: Sequence[LetterboxGeometry | None],
    params: PostprocessParams | None = None,
    class_names: Sequence[str] = (),
) -> list[Detections | None]:
    """Turn a batch of raw detector outputs into one :class:`Detections` per frame.

    Args:
        outputs: the decoder's tensors in order (see :func:`operators.decode.select_outputs`):
            ``[Tensor[B, 4+nc, N]]`` (yolov8), ``[Tensor[B, N, 5+nc]]`` (yolov5) or
            ``[num_dets [B,1], boxes [B,K,4], scores [B,K], classes [B,K]]`` (efficient_nms),
            on any device, fp16 or fp32.
        layout: ``"yolov8"``, ``"yolov5"`` or ``"efficient_nms"``.
        geometries: one per batch row; ``None`` marks a padding row, whose predictions are
            ignored.
        params: thresholds (defaults: :class:`PostprocessParams`).
        class_names: names indexed by class id, attached to every ``Detections``.

    Returns:
        One entry per batch row: ``None`` for padding rows, otherwise ``Detections`` in
        source-frame pixels sorted by decreasing confidence (ties: model output order).

    Usage::

        dets = postprocess([pred], "yolov8", [letterbox_geometry(1920, 1080, 640, 640)])
    """
    p = params or PostprocessParams()
    names = tuple(class_names)
    expected = _NUM_INPUTS.get(layout)
    if expected is None:
        raise ValueError(
            f"postprocess: layout must be 'yolov8', 'yolov5' or 'efficient_nms', got {layout!r}"
        )
    if len(outputs) != expected:
        raise ShapeError(
            f"postprocess: layout {layout!r} expects {expected} output tensor(s), "
            f"got {len(outputs)}"
        )
    first = outputs[0] if layout != "efficient_nms" else outputs[1]
    if first.ndim < 1:
        raise ShapeError(f"postprocess: expected a batched output, got shape {tuple(first.shape)}")
    batch = first.shape[0]
    geoms = list(geometries)
    if len(geoms) != batch:
        raise ShapeError(
            f"postprocess: expected one geometry per batch row ({batch}), got {len(geoms)}"
        )
    result: list[Detections | None] = [None] * batch
    rows = [i for i, g in enumerate(geoms) if g is not None]
    if not rows:
        return result
    valid_geoms = [g for g in geoms if g is not None]
    sel = _row_selector(rows)
    device = first.device

    if layout == "efficient_nms":
        num, boxes, scores, classes = (_take_rows(t, sel) for t in outputs)
        cands = decode_efficient_nms(num, boxes, scores, classes, p.conf_threshold)
        order = torch.sort(cands.scores, descending=True, stable=True).indices
    else:
        pred = _take_rows(outputs[0], sel)
        if layout == "yolov8":
            cands = decode_yolov8(pred, p.conf_threshold)
            num_classes = pred.shape[1] - 4
        else:
            cands = decode_yolov5(pred, p.conf_threshold)
            num_classes = pred.shape[2] - 5
        groups = cands.batch_index
        if not p.class_agnostic:
            groups = groups * num_classes + cands.class_id
        order = batched_nms(
            cands.boxes, cands.scores, groups, p.iou_threshold, max_candidates=p.max_candidates
        )
    table = _source_table(cands, order, valid_geoms, device)
    host = table.cpu().numpy()  # the one device-to-host copy
    logger.debug("postprocess: %d candidates, %d after NMS", int(cands.scores.shape[0]), len(host))

    row_of = host[:, 6].astype(np.int64)
    bounds = np.searchsorted(row_of, np.arange(len(rows) + 1), side="left")
    for j, r in enumerate(rows):
        lo = int(bounds[j])
        hi = min(int(bounds[j + 1]), lo + p.max_detections)
        part = host[lo:hi]
        result[r] = Detections(
            xyxy=np.ascontiguousarray(part[:, :4]),
            confidence=np.ascontiguousarray(part[:, 4]),
            class_id=part[:, 5].astype(np.int64),
            class_names=names,
        )
    return result


def _source_table(
    cands: Candidates,
    order: torch.Tensor,
    geoms: Sequence[LetterboxGeometry],
    device: torch.device,
) -> torch.Tensor:
    """``float32[M, 7]`` (x1, y1, x2, y2 in source px, score, class, row), grouped by row.

    ``order`` lists the candidates to keep by decreasing score; a stable sort by row keeps
    that order within each row.
    """
    order = order[torch.sort(cands.batch_index[order], stable=True).indices]
    kept = cands.select(order)
    pad, scale, size = geometry_tensors(geoms, device)
    row = kept.batch_index
    boxes = to_source_pixels(kept.boxes, pad[row], scale[row], size[row])
    return torch.cat(
        [
            boxes,
            kept.scores[:, None],
            kept.class_id.to(torch.float32)[:, None],
            row.to(torch.float32)[:, None],
        ],
        dim=1,
    )
