"""Plain NumPy references of the family postprocess (:mod:`operators.family_postprocess`).

Written to be obviously right, for the tests: loops over rows, queries and mask pixels;
boxes in float32 with the torch ops' operation order, source-pixel mapping in float64
where :mod:`operators.reference` does.

Usage::

    expected = postprocess_family_np([pred, protos], "yolov8_seg", geoms, PostprocessConfig(), names)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from operators.boxes import LetterboxGeometry
from operators.reference import cxcywh_to_xyxy_np, letterbox_to_source_np, nms_np
from streams.config import PostprocessConfig
from streams.detections import Detections, InstanceMask

__all__ = ["instance_mask_np", "postprocess_family_np"]


def _decode_row(outputs: Sequence[np.ndarray], layout: str, b: int, conf: float, input_hw: tuple[int, int],
                num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (xyxy input px), scores, classes and extras of the candidates of batch row ``b``."""
    h, w = input_hw
    scale = np.array([w, h, w, h], np.float32)
    if layout in ("end2end", "end2end_seg", "end2end_pose"):
        rows = outputs[0][b].astype(np.float32)
        keep = [k for k in range(len(rows)) if rows[k, 4] > conf]
        r = rows[keep].reshape(-1, rows.shape[1])
        return r[:, :4], r[:, 4], np.round(r[:, 5]).astype(np.int64), r[:, 6:]
    if layout == "rtdetr":
        rows = outputs[0][b].astype(np.float32)
        keep = [k for k in range(len(rows)) if rows[k, 4] > conf]
        r = rows[keep].reshape(-1, 6)
        return cxcywh_to_xyxy_np(r[:, :4] * scale), r[:, 4], np.round(r[:, 5]).astype(np.int64), r[:, 6:]
    if layout == "detr":
        if len(outputs) == 1:
            boxes, scores = outputs[0][b, :, :4], outputs[0][b, :, 4:].astype(np.float32)
        else:
            boxes, logits = outputs[0][b], outputs[1][b].astype(np.float32)
            scores = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
        best_c = np.argmax(scores, axis=1)
        best = scores[np.arange(len(scores)), best_c]
        (q,) = np.nonzero(best > conf)
        return (cxcywh_to_xyxy_np(boxes[q].astype(np.float32) * scale), best[q], best_c[q].astype(np.int64),
                np.zeros((len(q), 0), np.float32))
    # yolov8_seg / yolov8_pose: [4 + nc + E, N]
    p = outputs[0][b].astype(np.float32)
    cls = p[4:4 + num_classes]
    best_c = np.argmax(cls, axis=0)
    best = cls[best_c, np.arange(cls.shape[1])]
    (n,) = np.nonzero(best > conf)
    return cxcywh_to_xyxy_np(p[:4, n].T), best[n], best_c[n].astype(np.int64), p[4 + num_classes:, n].T


def instance_mask_np(protos: np.ndarray, coefs: np.ndarray, box: np.ndarray, g: LetterboxGeometry,
                     input_hw: tuple[int, int]) -> InstanceMask:
    """One detection's mask: source pixels whose centre, mapped through the letterbox, falls in
    the box as Ultralytics crops it (centres in ``[x1 + 0.5, x2 + 0.5)`` of the input) and where
    the bilinear (half-pixel, border-clamped) sample of the logit map is above 0."""
    nm, mh, mw = protos.shape
    logits = (coefs.astype(np.float32) @ protos.reshape(nm, -1).astype(np.float32)).reshape(mh, mw)
    x0, y0 = int(np.clip(np.floor(box[0]), 0, g.src_w)), int(np.clip(np.floor(box[1]), 0, g.src_h))
    x1 = int(np.clip(max(np.ceil(box[2] + 0.5 / g.scale_x), x0), 0, g.src_w))
    y1 = int(np.clip(max(np.ceil(box[3] + 0.5 / g.scale_y), y0), 0, g.src_h))
    ih, iw = input_hw
    f32 = np.float32
    crop = [f32(c * s + p + 0.5) for c, s, p in zip(box, (g.scale_x, g.scale_y) * 2, (g.pad_x, g.pad_y) * 2,
                                                      strict=True)]
    bitmap = np.zeros((y1 - y0, x1 - x0), bool)
    for v in range(y0, y1):
        yin = f32(v + 0.5) * f32(g.scale_y) + f32(g.pad_y)
        fy = min(max(yin * f32(mh / ih) - f32(0.5), 0), mh - 1)
        for u in range(x0, x1):
            xin = f32(u + 0.5) * f32(g.scale_x) + f32(g.pad_x)
            if not (crop[0] <= xin < crop[2] and crop[1] <= yin < crop[3]):
                continue
            fx = min(max(xin * f32(mw / iw) - f32(0.5), 0), mw - 1)
            ix, iy = int(np.floor(fx)), int(np.floor(fy))
            jx, jy = min(ix + 1, mw - 1), min(iy + 1, mh - 1)
            wx, wy = f32(fx - ix), f32(fy - iy)
            top = logits[iy, ix] * (1 - wx) + logits[iy, jx] * wx
            bottom = logits[jy, ix] * (1 - wx) + logits[jy, jx] * wx
            bitmap[v - y0, u - x0] = top * (1 - wy) + bottom * wy > 0
    return InstanceMask(x0, y0, bitmap, (g.src_h, g.src_w))


def postprocess_family_np(
    outputs: Sequence[npt.ArrayLike],
    layout: str,
    geometries: Sequence[LetterboxGeometry | None],
    params: PostprocessConfig,
    class_names: Sequence[str] = (),
) -> list[Detections | None]:
    """Reference of :func:`operators.family_postprocess.postprocess_family`: per row, decode,
    NMS per class for the ``yolov8_*`` families (score order otherwise), the
    ``max_detections`` best, boxes and keypoints to source pixels, masks per detection."""
    outs = [np.asarray(o) for o in outputs]
    names = tuple(class_names)
    valid = [g for g in geometries if g is not None]
    result: list[Detections | None] = [None] * len(geometries)
    if not valid:
        return result
    input_hw = (valid[0].dst_h, valid[0].dst_w)
    num_classes = outs[0].shape[1] - 4 - outs[1].shape[1] if layout == "yolov8_seg" else len(names) or 1
    for b, g in enumerate(geometries):
        if g is None:
            continue
        boxes, scores, classes, extra = _decode_row(outs, layout, b, params.conf_threshold, input_hw, num_classes)
        if layout.startswith("yolov8_"):
            groups = np.zeros(len(scores), np.int64) if params.class_agnostic else classes
            ranked = nms_np(boxes, scores, groups, params.iou_threshold)
        else:
            ranked = np.argsort(-scores, kind="stable")
        idx = np.asarray(ranked[: params.max_detections], np.int64)
        masks = None
        keypoints = None
        if layout.endswith("_seg"):
            masks = tuple(instance_mask_np(outs[1][b], extra[i], src, g, input_hw)
                          for i, src in zip(idx, letterbox_to_source_np(boxes[idx], g), strict=True))
        if layout.endswith("_pose"):
            e = extra[idx]
            d = 3 if e.shape[1] % 3 == 0 else 2
            kp = e.reshape(len(idx), -1, d).astype(np.float64)
            kp[..., 0] = np.clip((kp[..., 0] - g.pad_x) / g.scale_x, 0, g.src_w)
            kp[..., 1] = np.clip((kp[..., 1] - g.pad_y) / g.scale_y, 0, g.src_h)
            keypoints = kp.astype(np.float32)
        result[b] = Detections(letterbox_to_source_np(boxes[idx], g), scores[idx], classes[idx], names,
                               masks=masks, keypoints=keypoints)
    return result
