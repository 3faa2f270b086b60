"""Batched, class-aware non-maximum suppression without torchvision.

:func:`batched_nms` returns exactly what greedy NMS run separately on every group returns
(the same kept boxes as ``torchvision.ops.batched_nms``, ties in score broken by the lower
index). It is vectorized for the GPU: the only host synchronizations are one read of the
block boundaries, one convergence check per Cluster-NMS iteration and the final
``nonzero``; there is no per-box host work.

Algorithm (Cluster-NMS, Zheng et al. 2020, "Enhancing Geometric Factors in Model Learning
and Inference for Object Detection and Instance Segmentation"): order the boxes by group,
then by decreasing score, and let ``S[i, j] = IoU(i, j) > t`` for same-group ``j`` ranked
before ``i``. Greedy NMS keeps ``i`` iff no kept ``j`` has ``S[i, j]``; this has exactly one
solution, reached by iterating ``keep <- not any_j (S[i, j] and keep[j])`` from
``keep = all`` until it stops changing (a few iterations in practice: as many as the
longest chain of boxes suppressing each other). ``S`` is built in row blocks whose columns
start at the block's first group, so memory is ``O(K * (block + largest group))`` rather
than ``O(K^2)`` when there are many groups; blocks are solved in order, each one
using the final decisions of the blocks before it.

Groups are kept apart by masking ``S`` with ``group[i] == group[j]`` rather than by the
coordinate-offset trick: adding ``group * max_coordinate`` to float32 coordinates rounds
them (the spacing of float32 around 1e6 is 0.0625 px), which changes IoUs near the
threshold and breaks the exact equality with per-group greedy NMS.

Usage::

    keep = batched_nms(boxes, scores, groups=batch_index * num_classes + class_id,
                       iou_threshold=0.45)
    boxes, scores = boxes[keep], scores[keep]        # sorted by decreasing score
"""

from __future__ import annotations

import logging

import torch

from operators.boxes import box_iou
from streams.errors import ShapeError

__all__ = ["batched_nms"]

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 2048


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    iou_threshold: float,
    max_candidates: int = 30000,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> torch.Tensor:
    """Greedy NMS applied independently within each group.

    A box is suppressed by a higher-ranked kept box of the same group whose IoU with it is
    strictly greater than ``iou_threshold``. Only the ``max_candidates`` highest-scoring
    boxes take part (ties: lower index first); the others are dropped.

    Args:
        boxes: ``Tensor[K, 4]`` xyxy (any float dtype; IoU is computed in float32).
        scores: ``Tensor[K]``.
        groups: ``Tensor[K]`` integer group ids (e.g. ``image * num_classes + class``).
        iou_threshold: suppress when IoU > this.
        max_candidates: at most this many boxes (the highest scores) are considered.
        block_size: rows of the suppression matrix built at a time (memory knob).

    Returns:
        ``Tensor[M]`` int64 indices into ``boxes`` of the kept boxes, sorted by decreasing
        score (ties by increasing index).

    Usage::

        keep = batched_nms(boxes, scores, class_id, iou_threshold=0.5)
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ShapeError(f"batched_nms(boxes): expected shape (K, 4), got {tuple(boxes.shape)}")
    k = boxes.shape[0]
    for name, t in (("scores", scores), ("groups", groups)):
        if tuple(t.shape) != (k,):
            raise ShapeError(f"batched_nms({name}): expected shape ({k},), got {tuple(t.shape)}")
    if max_candidates < 1:
        raise ValueError(f"batched_nms: max_candidates must be >= 1, got {max_candidates}")
    if block_size < 1:
        raise ValueError(f"batched_nms: block_size must be >= 1, got {block_size}")
    device = boxes.device
    if k == 0:
        return torch.zeros((0,), dtype=torch.int64, device=device)

    scores32 = scores.to(torch.float32)
    order = torch.sort(scores32, descending=True, stable=True).indices
    if k > max_candidates:
        logger.debug("batched_nms: %d candidates, keeping the top %d", k, max_candidates)
        order = order[:max_candidates]
    # Group-major, decreasing score within each group (stable sorts keep index order on ties).
    perm = order[torch.sort(groups[order], stable=True).indices]
    keep = _greedy_keep(
        boxes[perm].to(torch.float32), groups[perm], float(iou_threshold), block_size
    )
    kept = perm[keep]
    # Back to decreasing score, ties by increasing index.
    kept = torch.sort(kept).values
    return kept[torch.sort(scores32[kept], descending=True, stable=True).indices]


def _greedy_keep(
    boxes: torch.Tensor, groups: torch.Tensor, iou_threshold: float, block_size: int
) -> torch.Tensor:
    """``bool[K]`` greedy-NMS decisions for boxes sorted by (group, decreasing score)."""
    k = boxes.shape[0]
    device = boxes.device
    pos = torch.arange(k, device=device)
    is_first = torch.ones(k, dtype=torch.bool, device=device)
    is_first[1:] = groups[1:] != groups[:-1]
    # group_start[p]: position of the first box of p's group.
    group_start = torch.cummax(torch.where(is_first, pos, torch.zeros_like(pos)), dim=0).values
    row_starts = list(range(0, k, block_size))
    col_starts = group_start[row_starts].tolist()  # one host sync for all blocks

    keep = torch.ones(k, dtype=torch.bool, device=device)
    for r0, c0 in zip(row_starts, col_starts, strict=True):
        r1 = min(r0 + block_size, k)
        iou = box_iou(boxes[r0:r1], boxes[c0:r1])
        same_group = groups[r0:r1, None] == groups[None, c0:r1]
        ranked_before = pos[None, c0:r1] < pos[r0:r1, None]
        suppresses = (iou > iou_threshold) & same_group & ranked_before  # [rows, cols]
        # Columns before r0 belong to finished blocks: their decisions are final.
        current = keep[c0:r1].clone()
        for _ in range(r1 - r0 + 1):
            rows = ~(suppresses & current[None, :]).any(dim=1)
            if torch.equal(rows, current[r0 - c0 :]):
                break
            current[r0 - c0 :] = rows
        keep[r0:r1] = current[r0 - c0 :]
    return keep
