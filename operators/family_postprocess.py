"""Postprocess of the families beyond plain detection (end-to-end, DETR, segmentation, pose).

:func:`operators.postprocess.postprocess` hands these layouts here; the steps mirror its
exact path: decode and confidence filter (:mod:`operators.family_decoding`) -> batched
class-aware NMS for the ``yolov8_*`` families (the end-to-end and DETR ones are NMS-free:
their rows are only ranked by score) -> boxes, and keypoints, mapped back to source pixels
through each row's letterbox geometry and clipped to the frame -> one device-to-host copy
-> per row, the ``max_detections`` best. A segmentation model's masks are then decoded on
the device for the kept detections (:func:`operators.masks.instance_masks`: one more copy
to the host, of the mask bits).

Usage::

    dets = postprocess_family([pred, protos], "yolov8_seg", geoms, PostprocessConfig(), names)
    dets[0].masks[0].bitmap
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from operators.boxes import LetterboxGeometry, geometry_tensors, to_source_pixels
from operators.family_decoding import FamilyCandidates, decode_family, keypoint_dims
from operators.masks import instance_masks
from operators.nms import batched_nms
from operators.transfer import upload
from streams.config import PostprocessConfig
from streams.detections import Detections
from streams.errors import ShapeError

__all__ = ["FAMILY_LAYOUTS", "postprocess_family"]

logger = logging.getLogger(__name__)

#: The layouts this module postprocesses, with the number of output tensors each takes.
FAMILY_LAYOUTS: dict[str, tuple[int, ...]] = {
    "end2end": (1,), "rtdetr": (1,), "detr": (1, 2), "yolov8_seg": (2,), "end2end_seg": (2,),
    "yolov8_pose": (1,), "end2end_pose": (1,),
}


def postprocess_family(
    outputs: Sequence[torch.Tensor],
    layout: str,
    geometries: Sequence[LetterboxGeometry | None],
    params: PostprocessConfig,
    class_names: Sequence[str] = (),
    *,
    max_candidates: int = 30000,
) -> list[Detections | None]:
    """One :class:`Detections` per batch row (``None`` for padding rows), as
    :func:`operators.postprocess.postprocess` documents; ``masks`` for the segmentation
    layouts, ``keypoints`` for the pose ones."""
    if layout not in FAMILY_LAYOUTS:
        raise ValueError(f"postprocess_family: not a family layout: {layout!r}")
    if len(outputs) not in FAMILY_LAYOUTS[layout]:
        raise ShapeError(f"postprocess: layout {layout!r} expects {' or '.join(map(str, FAMILY_LAYOUTS[layout]))} "
                         f"output tensor(s), got {len(outputs)}")
    names = tuple(class_names)
    batch = outputs[0].shape[0]
    geoms = list(geometries)
    if len(geoms) != batch:
        raise ShapeError(f"postprocess: expected one geometry per batch row ({batch}), got {len(geoms)}")
    result: list[Detections | None] = [None] * batch
    rows = [i for i, g in enumerate(geoms) if g is not None]
    if not rows:
        return result
    valid = [g for g in geoms if g is not None]
    input_hw = (valid[0].dst_h, valid[0].dst_w)
    index = upload(torch.tensor(rows, dtype=torch.int64), outputs[0].device)
    taken = [t.index_select(0, index) for t in outputs]  # every output is batch-first
    dec = decode_family(taken, layout, params.conf_threshold, input_hw, len(names) or None)
    order = _rank(dec, params, max_candidates)
    table, extra_kept = _source_table(dec, order, valid, layout)
    host = table.cpu().numpy()  # the one device-to-host copy of the detections
    row_of = host[:, 6].astype(np.int64)
    bounds = np.searchsorted(row_of, np.arange(len(rows) + 1), side="left")
    keep = np.concatenate([np.arange(bounds[j], min(bounds[j + 1], bounds[j] + params.max_detections))
                           for j in range(len(rows))]).astype(np.int64)
    masks = None
    if layout.endswith("_seg") and extra_kept is not None:
        coefs = extra_kept.index_select(0, upload(torch.from_numpy(keep), extra_kept.device))
        masks = instance_masks(taken[1], coefs, row_of[keep].tolist(), host[keep, :4],
                               [valid[r] for r in row_of[keep]], input_hw)
    kp_dims = keypoint_dims(host.shape[1] - 7) if layout.endswith("_pose") else 0
    start = 0
    for j, r in enumerate(rows):
        lo, hi = int(bounds[j]), min(int(bounds[j + 1]), int(bounds[j]) + params.max_detections)
        part = host[lo:hi]
        n = hi - lo
        result[r] = Detections(
            xyxy=np.ascontiguousarray(part[:, :4]),
            confidence=np.ascontiguousarray(part[:, 4]),
            class_id=part[:, 5].astype(np.int64),
            class_names=names,
            masks=None if masks is None else tuple(masks[start:start + n]),
            keypoints=None if not kp_dims else
            np.ascontiguousarray(part[:, 7:]).reshape(n, (host.shape[1] - 7) // kp_dims, kp_dims),
        )
        start += n
    logger.debug("postprocess %s: %d candidates, %d kept", layout, int(dec.candidates.scores.shape[0]), len(keep))
    return result


def _rank(dec: FamilyCandidates, p: PostprocessConfig, max_candidates: int) -> torch.Tensor:
    """The candidates to keep, by decreasing score: class-aware (or agnostic) NMS where the
    family needs it, else all of them."""
    c = dec.candidates
    if not dec.needs_nms:
        return torch.sort(c.scores, descending=True, stable=True).indices
    groups = c.batch_index
    if not p.class_agnostic:
        groups = groups * (dec.num_classes or 1) + c.class_id
    return batched_nms(c.boxes, c.scores, groups, p.iou_threshold, max_candidates=max_candidates)


def _source_table(
    dec: FamilyCandidates, order: torch.Tensor, geoms: Sequence[LetterboxGeometry], layout: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``float32[M, 7 + P]`` (x1, y1, x2, y2 in source px, score, class, row, then the
    keypoints in source px for pose), grouped by row keeping ``order`` within a row; and the
    kept candidates' extra values (mask coefficients) in the same order."""
    order = order[torch.sort(dec.candidates.batch_index[order], stable=True).indices]
    kept = dec.candidates.select(order)
    device = kept.boxes.device
    pad, scale, size = geometry_tensors(geoms, device)
    row = kept.batch_index
    boxes = to_source_pixels(kept.boxes, pad[row], scale[row], size[row])
    columns = [boxes, kept.scores[:, None], kept.class_id.to(torch.float32)[:, None], row.to(torch.float32)[:, None]]
    extra = None if dec.extra is None else dec.extra[order]
    if layout.endswith("_pose") and extra is not None:
        d = keypoint_dims(extra.shape[1])
        kp = extra.reshape(len(order), extra.shape[1] // d, d).clone()
        xy = (kp[..., :2] - pad[row][:, None, :]) / scale[row][:, None, :]
        kp[..., :2] = torch.minimum(xy.clamp(min=0), size[row][:, None, :])
        columns.append(kp.reshape(len(order), extra.shape[1]))
    return torch.cat(columns, dim=1), extra
