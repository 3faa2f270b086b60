"""Postprocessing: raw detector outputs -> per-frame :class:`streams.detections.Detections`.

The whole batch is processed at once on the outputs' device, by one of two paths that give
the same detections:

- **fused** (YOLOv8 / YOLOv5 layouts; by default on CUDA with Triton): every frame's
  ``frame_capacity`` best candidates in fixed shapes -> greedy class-aware NMS per frame
  (:mod:`operators.frame_nms`, one Triton kernel) -> mapping back to source pixels ->
  compaction into a ``[B, D, 6]`` table (``D = min(max_detections, frame_capacity)``).
  No shape depends on the data, so the host waits for the GPU only at the one copy of that
  table. Frames with more than ``frame_capacity`` candidates above the threshold (and
  whole batches with more than ``max_candidates``) are redone by the exact path, with a
  warning logged once.
- **exact** (any layout, any device): decode and confidence filter -> batched
  class-aware NMS (skipped for ``efficient_nms``, which is already suppressed) -> mapping
  back to source pixels through each row's letterbox geometry, clipped to the frame -> one
  device-to-host copy of a ``[K, 7]`` table -> split per row, keeping the
  ``max_detections`` best of each. Host synchronizations: the ``nonzero`` of the
  confidence filter, those of :func:`operators.nms.batched_nms` (a few, none per box) and
  the final copy.

The thresholds and the path's choice come in a :class:`streams.config.PostprocessConfig`
(the job's ``postprocess:`` section, documented there); ``max_candidates`` caps the
candidates of one batch that enter NMS.

Usage::

    geoms = [letterbox_geometry(m.width, m.height, 640, 640) for m in metas]
    geoms += [None] * (batch_size - len(geoms))          # padding rows of a partial batch
    dets = postprocess(select_outputs(out, "yolov8"), "yolov8", geoms,
                       PostprocessConfig(conf_threshold=0.3), class_names=names)
    dets[0].xyxy       # float32[N, 4], source pixels, highest confidence first
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from operators.boxes import LetterboxGeometry, geometry_tensors, to_source_pixels
from operators.frame_nms import (
    FrameCandidates,
    frame_nms,
    top_candidates_yolov5,
    top_candidates_yolov8,
    triton_problem,
)
from operators.nms import batched_nms
from operators.output_decoding import (
    Candidates,
    OutputLayout,
    decode_efficient_nms,
    decode_yolov5,
    decode_yolov8,
)
from operators.transfer import upload
from streams.config import PostprocessConfig
from streams.detections import Detections
from streams.errors import ShapeError

__all__ = ["MAX_CANDIDATES", "fused_device_table", "postprocess"]

logger = logging.getLogger(__name__)

_NUM_INPUTS: dict[str, int] = {"yolov8": 1, "yolov5": 1, "efficient_nms": 4}


#: Candidates of one batch that enter NMS at most (the highest scores); a batch with more
#: than this above ``conf_threshold`` is a degenerate model output, not a scene.
MAX_CANDIDATES = 30000


def _row_selector(rows: list[int]) -> slice | list[int]:
    """Index of the non-padding rows: a slice (a view) when they are contiguous."""
    if rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    return rows


def _take_rows(t: torch.Tensor, sel: slice | list[int]) -> torch.Tensor:
    if isinstance(sel, slice):
        return t[sel]
    return t.index_select(0, upload(torch.tensor(sel, dtype=torch.int64), t.device))


def postprocess(
    outputs: Sequence[torch.Tensor],
    layout: OutputLayout,
    geometries: Sequence[LetterboxGeometry | None],
    params: PostprocessConfig | None = None,
    class_names: Sequence[str] = (),
    *,
    max_candidates: int = MAX_CANDIDATES,
) -> list[Detections | None]:
    """Turn a batch of raw detector outputs into one :class:`Detections` per frame.

    Args:
        outputs: the decoder's tensors in order (see :func:`operators.output_decoding.select_outputs`):
            ``[Tensor[B, 4+nc, N]]`` (yolov8), ``[Tensor[B, N, 5+nc]]`` (yolov5) or
            ``[num_dets [B,1], boxes [B,K,4], scores [B,K], classes [B,K]]`` (efficient_nms),
            on any device, fp16 or fp32.
        layout: ``"yolov8"``, ``"yolov5"`` or ``"efficient_nms"`` (the paths below); the
            other families (end-to-end, DETR, segmentation, pose) go to
            :func:`operators.family_postprocess.postprocess_family`.
        geometries: one per batch row; ``None`` marks a padding row, whose predictions are
            ignored.
        params: thresholds and the path's choice (defaults: :class:`~streams.config.PostprocessConfig`).
        class_names: names indexed by class id, attached to every ``Detections``.
        max_candidates: at most this many candidates per batch enter NMS (the highest scores).

    Returns:
        One entry per batch row: ``None`` for padding rows, otherwise ``Detections`` in
        source-frame pixels sorted by decreasing confidence (ties: model output order).

    Usage::

        dets = postprocess([pred], "yolov8", [letterbox_geometry(1920, 1080, 640, 640)])
    """
    if max_candidates < 1:
        raise ValueError(f"postprocess: max_candidates must be >= 1, got {max_candidates}")
    p = params or PostprocessConfig()
    names = tuple(class_names)
    expected = _NUM_INPUTS.get(layout)
    if expected is None:
        from operators.family_postprocess import FAMILY_LAYOUTS, postprocess_family

        if layout in FAMILY_LAYOUTS:
            return postprocess_family(outputs, layout, geometries, p, names, max_candidates=max_candidates)
        raise ValueError(
            f"postprocess: layout must be one of {['yolov8', 'yolov5', 'efficient_nms', *FAMILY_LAYOUTS]}, "
            f"got {layout!r}"
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
    if all(g is None for g in geoms):
        return result
    if layout != "efficient_nms" and _use_fused(p, first.device):
        redo = _postprocess_fused(outputs[0], layout, geoms, p, names, result, max_candidates)
        if not redo:
            return result
        geoms = [g if i in redo else None for i, g in enumerate(geoms)]
    _postprocess_exact(outputs, layout, geoms, p, names, result, max_candidates)
    return result


def _valid_rows(geoms: Sequence[LetterboxGeometry | None]) -> tuple[list[int], list[LetterboxGeometry]]:
    """The non-padding rows and their geometries."""
    rows = [i for i, g in enumerate(geoms) if g is not None]
    return rows, [g for g in geoms if g is not None]


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    """Log a fallback once per process, as a warning (the guide: no silent fallbacks)."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def _use_fused(p: PostprocessConfig, device: torch.device) -> bool:
    if p.fused == "off":
        return False
    if p.fused == "on":
        return True
    if device.type != "cuda":
        return False
    why = triton_problem(str(device))
    if why is not None:
        _warn_once(
            "no-triton",
            "postprocess: %s, so the fused per-frame NMS is off: the exact path waits for the "
            "GPU a few times per batch (a working triton package, the one that matches torch, "
            "removes those waits)", why,
        )
        return False
    return True


def _postprocess_fused(
    output: torch.Tensor,
    layout: str,
    geoms: list[LetterboxGeometry | None],
    p: PostprocessConfig,
    names: tuple[str, ...],
    result: list[Detections | None],
    max_candidates: int,
) -> set[int]:
    """The fused path: fills ``result`` for the rows with a geometry; returns the rows the
    exact path must redo."""
    rows, valid_geoms = _valid_rows(geoms)
    packed, k, d = fused_device_table(output, layout, rows, valid_geoms, p)
    host = packed.cpu().numpy()  # the one device-to-host copy: the host's only wait
    counts = host[:, -1].astype(np.int64)
    kept = host[:, -2].astype(np.int64)
    if int(counts.sum()) > max_candidates:
        _warn_once(
            "max-candidates",
            "postprocess: a batch had %d candidates above conf_threshold, more than "
            "max_candidates=%d: such batches go through the exact path, which waits for the GPU",
            int(counts.sum()), max_candidates,
        )
        return set(rows)
    redo: set[int] = set()
    table = host[:, : d * 6].reshape(len(rows), d, 6)
    for j, r in enumerate(rows):
        if counts[j] > k:
            redo.add(r)
            continue
        result[r] = _detections(table[j, : kept[j]], names)
    if redo:
        _warn_once(
            "frame-capacity",
            "postprocess: %d frame(s) had more than frame_capacity=%d candidates above "
            "conf_threshold (most: %d): such frames go through the exact path, which waits "
            "for the GPU (raise postprocess.frame_capacity to keep them on the fused path)",
            len(redo), k, int(counts.max()),
        )
    return redo


def fused_device_table(
    output: torch.Tensor,
    layout: str,
    rows: list[int],
    geoms: Sequence[LetterboxGeometry],
    p: PostprocessConfig,
) -> tuple[torch.Tensor, int, int]:
    """The device half of the fused path; queues GPU work only, never waits for it.

    Args:
        output: ``Tensor[B, 4+nc, N]`` (yolov8) or ``Tensor[B, N, 5+nc]`` (yolov5).
        layout: ``"yolov8"`` or ``"yolov5"``.
        rows: the batch rows to process (the others are padding).
        geoms: the letterbox geometry of each of ``rows``.
        p: thresholds.

    Returns:
        ``(table, K, D)``: ``table`` is ``float32[len(rows), D * 6 + 2]`` (see
        :func:`_compact`), ``K`` the candidate slots per frame, ``D`` the detection slots.
    """
    pred = _take_rows(output, _row_selector(rows))
    top = top_candidates_yolov8 if layout == "yolov8" else top_candidates_yolov5
    cands = top(pred, p.conf_threshold, p.frame_capacity)
    k = cands.scores.shape[1]
    keep = frame_nms(cands.boxes, cands.class_id, cands.num_candidates, p.iou_threshold,
                     p.class_agnostic, impl="auto" if pred.is_cuda else "torch")
    d = min(p.max_detections, k)
    return _compact(cands, keep, d, geoms), k, d


def _compact(
    cands: FrameCandidates, keep: torch.Tensor, d: int, geoms: Sequence[LetterboxGeometry]
) -> torch.Tensor:
    """``float32[R, d * 6 + 2]``: per row, ``d`` slots of (x1, y1, x2, y2 in source px,
    score, class) by decreasing score, then the number of kept detections in those slots
    and the frame's candidate count. Fixed shapes only: no host synchronization.
    """
    r, k = keep.shape
    device = keep.device
    slot = keep.cumsum(dim=1) - 1
    take = keep & (slot < d)
    dest = torch.where(take, slot, torch.full_like(slot, d))  # slot d: the discarded ones
    pad, scale, size = geometry_tensors(geoms, device)
    row = torch.arange(r, device=device)[:, None].expand(r, k).reshape(r * k)  # no sizing sync
    boxes = to_source_pixels(cands.boxes.reshape(r * k, 4), pad[row], scale[row], size[row])
    values = torch.cat(
        [boxes.reshape(r, k, 4), cands.scores[..., None],
         cands.class_id.to(torch.float32)[..., None]],
        dim=2,
    )
    table = torch.zeros((r, d + 1, 6), dtype=torch.float32, device=device)
    table.scatter_(1, dest[..., None].expand(-1, -1, 6), values)
    return torch.cat(
        [table[:, :d].reshape(r, d * 6), take.sum(dim=1, dtype=torch.float32)[:, None],
         cands.num_candidates.to(torch.float32)[:, None]],
        dim=1,
    )


def _postprocess_exact(
    outputs: Sequence[torch.Tensor],
    layout: OutputLayout,
    geoms: list[LetterboxGeometry | None],
    p: PostprocessConfig,
    names: tuple[str, ...],
    result: list[Detections | None],
    max_candidates: int,
) -> None:
    """The exact path: fills ``result`` for the rows with a geometry."""
    rows, valid_geoms = _valid_rows(geoms)
    sel = _row_selector(rows)
    first = outputs[0] if layout != "efficient_nms" else outputs[1]
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
            cands.boxes, cands.scores, groups, p.iou_threshold, max_candidates=max_candidates
        )
    table = _source_table(cands, order, valid_geoms, device)
    host = table.cpu().numpy()  # the one device-to-host copy
    logger.debug("postprocess: %d candidates, %d after NMS", int(cands.scores.shape[0]), len(host))

    row_of = host[:, 6].astype(np.int64)
    bounds = np.searchsorted(row_of, np.arange(len(rows) + 1), side="left")
    for j, r in enumerate(rows):
        lo = int(bounds[j])
        hi = min(int(bounds[j + 1]), lo + p.max_detections)
        result[r] = _detections(host[lo:hi], names)


def _detections(part: np.ndarray, names: tuple[str, ...]) -> Detections:
    """One frame's rows of a host table (x1, y1, x2, y2, score, class, ...) as :class:`Detections`."""
    return Detections(
        xyxy=np.ascontiguousarray(part[:, :4]),
        confidence=np.ascontiguousarray(part[:, 4]),
        class_id=part[:, 5].astype(np.int64),
        class_names=names,
    )


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
