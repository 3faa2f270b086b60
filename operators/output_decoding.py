"""Decoding of raw detector outputs into score-filtered candidate boxes.

Output layouts, each one family of exports (:func:`detect_layout` tells them apart from the
outputs' shapes and names, helped by the exporter's metadata as :class:`LayoutHints`):

- ``"yolov8"``: Ultralytics YOLOv8 / YOLO11 export, one ``Tensor[B, 4 + nc, N]``: rows
  0-3 are cx, cy, w, h in model-input pixels, rows 4.. the (already sigmoid) class scores.
- ``"yolov5"``: YOLOv5 export, one ``Tensor[B, N, 5 + nc]``: cx, cy, w, h, objectness,
  class probabilities; the score of a class is ``objectness * probability``.
- ``"efficient_nms"``: TensorRT ``EfficientNMS_TRT`` outputs, already suppressed:
  ``num_dets [B, 1]``, ``boxes [B, K, 4]`` xyxy, ``scores [B, K]``, ``classes [B, K]``.
- ``"end2end"``: an NMS-free head (YOLOv10, YOLO26 exported with ``nms=False``) or an
  export with NMS inside (``nms=True``): one ``Tensor[B, K, 6]`` of x1, y1, x2, y2 (model-input
  pixels), score, class; no NMS.
- ``"rtdetr"``: Ultralytics' RT-DETR, one ``Tensor[B, Q, 6]`` of cx, cy, w, h (normalised to
  the input), score, class; no NMS.
- ``"detr"``: DETR-style boxes and class scores, no NMS: one ``Tensor[B, Q, 4 + nc]`` (cx, cy,
  w, h normalised, then class probabilities), or two outputs, boxes ``[B, Q, 4]`` (normalised
  cx, cy, w, h) and class logits ``[B, Q, nc]`` (RF-DETR's ``dets`` and ``labels``; sigmoid applied).
- ``"yolov8_seg"`` / ``"end2end_seg"``: segmentation, the detection output with ``nm`` mask
  coefficients per box after the classes (``[B, 4 + nc + nm, N]``, or ``[B, K, 6 + nm]``),
  and the mask prototypes ``[B, nm, H/4, W/4]``.
- ``"yolov8_pose"`` / ``"end2end_pose"``: pose, keypoints after the classes
  (``[B, 4 + nc + nk * d, N]``, or ``[B, K, 6 + nk * d]``), ``d`` = 3 (x, y, visibility) or 2.

The new families are decoded by :mod:`operators.family_decoding`.

Decoders accept tensors on any device in fp16 or fp32 and compute in fp32. Their only
host synchronization is the ``nonzero`` of the confidence filter.

Usage::

    layout = detect_layout([s.shape for s in engine.outputs], [s.name for s in engine.outputs])
    tensors = select_outputs(engine.infer(inputs), layout)
    cands = decode_yolov8(tensors[0], conf_threshold=0.25)
    cands.boxes          # float32[K, 4] xyxy, model-input pixels
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from operators.boxes import cxcywh_to_xyxy
from streams.errors import ShapeError

__all__ = [
    "LAYOUTS",
    "Candidates",
    "LayoutHints",
    "OutputLayout",
    "decode_efficient_nms",
    "decode_yolov5",
    "decode_yolov8",
    "detect_layout",
    "select_outputs",
    "yolov5_best_class",
    "yolov8_best_class",
]

logger = logging.getLogger(__name__)

OutputLayout = Literal[
    "yolov8", "yolov5", "efficient_nms", "end2end", "rtdetr", "detr",
    "yolov8_seg", "end2end_seg", "yolov8_pose", "end2end_pose",
]

#: Every layout, in the order the docs list them.
LAYOUTS: tuple[str, ...] = (
    "yolov8", "yolov5", "efficient_nms", "end2end", "rtdetr", "detr",
    "yolov8_seg", "end2end_seg", "yolov8_pose", "end2end_pose",
)

#: End-to-end tables hold at most this many rows; a longer ``[B, N, 6]`` output is YOLOv5's.
MAX_END2END_ROWS = 1000

_ACCEPTED_LAYOUTS = (
    "accepted layouts: 'yolov8' (one output [B, 4+nc, N] with 4+nc < N, e.g. [1, 84, 8400]); "
    "'yolov5' (one output [B, N, 5+nc] with N > 5+nc, e.g. [1, 25200, 85]); "
    "'efficient_nms' (4 outputs num_dets [B, 1], boxes [B, K, 4], scores [B, K], "
    "classes [B, K]); 'end2end' (one output [B, K, 6], e.g. [1, 300, 6]); 'rtdetr' ([B, Q, 6], "
    "normalised cx, cy, w, h); 'detr' ([B, Q, 4+nc], or boxes [B, Q, 4] and logits [B, Q, nc]); "
    "'yolov8_seg' / 'end2end_seg' (detections with mask coefficients, and prototypes [B, nm, h, w]); "
    "'yolov8_pose' / 'end2end_pose' (detections with keypoints). Set model.layout (or model.task) "
    "explicitly if the model uses one of these"
)


@dataclass(frozen=True)
class LayoutHints:
    """What the model file (or the config's ``model.task``) says, to tell layouts apart.

    Attributes:
        task: ``detect``, ``segment`` or ``pose`` (``None``: unknown).
        end2end: the head is end-to-end (an ``[B, K, 6+]`` table, no NMS); ``None``: unknown.
        head: the exporter's head class (``RTDETRDecoder`` marks RT-DETR).
        num_classes: the number of classes (from the class names), or ``None``.
    """

    task: str | None = None
    end2end: bool | None = None
    head: str | None = None
    num_classes: int | None = None


class Candidates(NamedTuple):
    """Detection candidates of a whole batch, after the confidence filter.

    Attributes:
        batch_index: ``int64[K]`` batch row of each candidate.
        boxes: ``float32[K, 4]`` xyxy in model-input pixels.
        scores: ``float32[K]`` confidence.
        class_id: ``int64[K]`` class index.
    """

    batch_index: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    class_id: torch.Tensor

    def select(self, index: torch.Tensor) -> Candidates:
        """The candidates at ``index`` (an index or boolean tensor), in that order."""
        return Candidates(
            self.batch_index[index], self.boxes[index], self.scores[index], self.class_id[index]
        )


def decode_yolov8(
    pred: torch.Tensor, conf_threshold: float, multi_label: bool = False
) -> Candidates:
    """Decode an Ultralytics YOLOv8/YOLO11 output ``Tensor[B, 4 + nc, N]``.

    With ``multi_label=False`` each anchor yields at most one candidate, its best class
    (ties: the lowest class id), kept when that score is ``> conf_threshold``. With
    ``multi_label=True`` every (anchor, class) whose score is ``> conf_threshold`` is a
    candidate. Candidates are ordered by (batch row, anchor), or by (batch row, class,
    anchor) with ``multi_label``.

    Usage::

        cands = decode_yolov8(out["output0"], conf_threshold=0.25)
    """
    if multi_label:
        _check_yolov8(pred, "decode_yolov8")
        cls = pred[:, 4:, :].to(torch.float32)
        b, c, n = (cls > conf_threshold).nonzero(as_tuple=True)
        scores = cls[b, c, n]
    else:
        best, best_cls, ok = yolov8_best_class(pred, conf_threshold, "decode_yolov8")
        b, n = ok.nonzero(as_tuple=True)
        scores = best[b, n]
        c = best_cls[b, n]
    boxes = cxcywh_to_xyxy(pred[b, :4, n].to(torch.float32))  # advanced indices around a slice: [K, 4]
    return Candidates(b, boxes, scores, c.to(torch.int64))


def _check_yolov8(pred: torch.Tensor, caller: str) -> None:
    if pred.ndim != 3 or pred.shape[1] < 5:
        raise ShapeError(
            f"{caller}: expected shape (B, 4 + nc, N) with nc >= 1, got {tuple(pred.shape)}"
        )


def yolov8_best_class(
    pred: torch.Tensor, conf_threshold: float, caller: str = "yolov8_best_class"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each anchor's best class of a YOLOv8 output ``Tensor[B, 4 + nc, N]``.

    Shared by the exact decoder and :mod:`operators.frame_nms`, so that both select the
    same candidates.

    Returns:
        ``(score float32[B, N], class [B, N] (ties: the lowest id), candidate bool[B, N])``;
        an anchor is a candidate when its score is ``> conf_threshold`` (compared in fp32).

    Usage::

        score, cls, ok = yolov8_best_class(pred, 0.25)
    """
    _check_yolov8(pred, caller)
    best, best_cls = pred[:, 4:, :].max(dim=1)  # in the model's dtype (exact in fp16 too)
    best = best.to(torch.float32)  # the threshold compares in fp32 whatever the model's dtype
    return best, best_cls, best > conf_threshold


def yolov5_best_class(
    pred: torch.Tensor, conf_threshold: float, caller: str = "yolov5_best_class"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each anchor's best class of a YOLOv5 output ``Tensor[B, N, 5 + nc]``.

    Shared by the exact decoder and :mod:`operators.frame_nms`, so that both select the
    same candidates.

    Returns:
        ``(score float32[B, N], class [B, N] (ties: the lowest id), candidate bool[B, N])``:
        the score is ``objectness * class_probability`` in fp32; a candidate needs
        ``objectness > conf_threshold`` and ``score > conf_threshold``.

    Usage::

        score, cls, ok = yolov5_best_class(pred, 0.25)
    """
    if pred.ndim != 3 or pred.shape[2] < 6:
        raise ShapeError(
            f"{caller}: expected shape (B, N, 5 + nc) with nc >= 1, got {tuple(pred.shape)}"
        )
    p = pred.to(torch.float32)
    obj = p[..., 4]  # [B, N]
    best, best_cls = (p[..., 5:] * obj[..., None]).max(dim=2)  # [B, N]
    return best, best_cls, (obj > conf_threshold) & (best > conf_threshold)


def decode_yolov5(pred: torch.Tensor, conf_threshold: float) -> Candidates:
    """Decode a YOLOv5 output ``Tensor[B, N, 5 + nc]``.

    The score is ``objectness * class_probability`` of the best class (ties: the lowest
    class id); a candidate needs ``objectness > conf_threshold`` and
    ``score > conf_threshold``. Candidates are ordered by (batch row, anchor).

    Usage::

        cands = decode_yolov5(out["output0"], conf_threshold=0.25)
    """
    best, best_cls, ok = yolov5_best_class(pred, conf_threshold, "decode_yolov5")
    b, n = ok.nonzero(as_tuple=True)
    boxes = cxcywh_to_xyxy(pred[b, n, :4].to(torch.float32))
    return Candidates(b, boxes, best[b, n], best_cls[b, n].to(torch.int64))


def decode_efficient_nms(
    num_dets: torch.Tensor,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    conf_threshold: float,
) -> Candidates:
    """Read TensorRT ``EfficientNMS_TRT`` outputs (already suppressed).

    Keeps the first ``num_dets[b]`` detections of each row whose score is
    ``> conf_threshold``, ordered by (batch row, detection slot).

    Args:
        num_dets: ``Tensor[B, 1]`` (or ``Tensor[B]``) number of valid slots per row.
        boxes: ``Tensor[B, K, 4]`` xyxy in model-input pixels.
        scores: ``Tensor[B, K]``.
        classes: ``Tensor[B, K]`` class ids (integer or float).

    Usage::

        cands = decode_efficient_nms(*select_outputs(out, "efficient_nms"), conf_threshold=0.25)
    """
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise ShapeError(
            f"decode_efficient_nms(boxes): expected shape (B, K, 4), got {tuple(boxes.shape)}"
        )
    bsz, k = boxes.shape[0], boxes.shape[1]
    if tuple(num_dets.shape) not in ((bsz, 1), (bsz,)):
        raise ShapeError(
            f"decode_efficient_nms(num_dets): expected shape ({bsz}, 1), "
            f"got {tuple(num_dets.shape)}"
        )
    for name, t in (("scores", scores), ("classes", classes)):
        if tuple(t.shape) != (bsz, k):
            raise ShapeError(
                f"decode_efficient_nms({name}): expected shape ({bsz}, {k}), got {tuple(t.shape)}"
            )
    scores32 = scores.to(torch.float32)
    slot = torch.arange(k, device=boxes.device)
    count = num_dets.reshape(bsz, 1).to(device=boxes.device, dtype=torch.int64)
    b, j = ((slot[None, :] < count) & (scores32 > conf_threshold)).nonzero(as_tuple=True)
    cls = classes[b, j]
    if cls.is_floating_point():
        cls = cls.round()
    return Candidates(b, boxes[b, j].to(torch.float32), scores32[b, j], cls.to(torch.int64))


def _describe(shapes: Sequence[tuple[int | None, ...]], names: Sequence[str]) -> str:
    return ", ".join(f"{n!r} {list(s)}" for n, s in zip(names, shapes, strict=True)) or "none"


_EFFICIENT_NMS_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("num_dets", ("num",)),
    ("boxes", ("box",)),
    ("scores", ("score",)),
    ("classes", ("class", "label")),
)


def _match_roles(names: Sequence[str]) -> list[int] | None:
    """Positions of (num_dets, boxes, scores, classes) in ``names``, or None if ambiguous."""
    found: list[int] = []
    for _, keywords in _EFFICIENT_NMS_ROLES:
        hits = [i for i, n in enumerate(names) if any(kw in n.lower() for kw in keywords)]
        if len(hits) != 1:
            return None
        found.append(hits[0])
    return found if len(set(found)) == 4 else None


def _efficient_nms_shapes(shapes: Sequence[tuple[int | None, ...]]) -> bool:
    """Whether shapes in declaration order look like (num_dets, boxes, scores, classes)."""
    num, boxes, scores, classes = shapes
    return (
        len(num) in (1, 2)
        and len(boxes) == 3
        and boxes[2] in (4, None)
        and len(scores) == 2
        and len(classes) == 2
    )


def _single_3d(shapes: Sequence[tuple[int | None, ...]]) -> int | None:
    idx = [i for i, s in enumerate(shapes) if len(s) == 3]
    return idx[0] if len(idx) == 1 else None


def detect_layout(
    output_shapes: Sequence[tuple[int | None, ...]],
    output_names: Sequence[str],
    hints: LayoutHints | None = None,
) -> OutputLayout:
    """Infer the output layout of a detector from its declared outputs and ``hints``.

    - 4 outputs named like ``num_dets/det_boxes/det_scores/det_classes`` or
      ``num_detections/detection_boxes/...`` (or shaped ``[B,1], [B,K,4], [B,K], [B,K]``)
      -> ``"efficient_nms"``;
    - a 4-D output (mask prototypes ``[B, nm, h, w]``) beside one 3-D output -> segmentation:
      ``"end2end_seg"`` when the hints say end-to-end or the 3-D output is ``[B, K, 6 + nm]``,
      else ``"yolov8_seg"`` (``[B, 4 + nc + nm, N]``);
    - two 3-D outputs ``[B, Q, 4]`` and ``[B, Q, nc]`` -> ``"detr"`` (boxes and logits);
    - one 3-D output: head ``RTDETRDecoder`` -> ``"rtdetr"`` (``[B, Q, 6]``) or ``"detr"``
      (``[B, Q, 4 + nc]``); task ``pose`` -> ``"end2end_pose"`` (end-to-end) or
      ``"yolov8_pose"``; end-to-end (hinted, or unknown and shaped ``[B, K, 6]`` with
      ``K <= 1000``) -> ``"end2end"``; else ``[B, C, N]`` with ``C < N`` -> ``"yolov8"``,
      with ``C > N`` -> ``"yolov5"``.

    ``None`` marks a dynamic dimension. Other outputs (auxiliary ones) are ignored where
    the rule names one output.

    Usage::

        detect_layout([(None, 84, 8400)], ["output0"])                         # "yolov8"
        detect_layout([(1, 300, 6)], ["output0"], LayoutHints(end2end=True))   # "end2end"

    Raises:
        ShapeError: no layout fits; the message lists the outputs and the accepted layouts.
    """
    h = hints or LayoutHints()
    shapes = [tuple(s) for s in output_shapes]
    names = list(output_names)
    if len(shapes) != len(names):
        raise ShapeError(
            f"detect_layout: expected one name per output shape, got {len(names)} names "
            f"for {len(shapes)} shapes"
        )
    if len(shapes) == 4 and (_match_roles(names) is not None or _efficient_nms_shapes(shapes)):
        return "efficient_nms"
    found = _family(shapes, h)
    if found is not None:
        return found
    raise ShapeError(
        f"cannot infer the detector output layout from outputs {_describe(shapes, names)}; "
        f"{_ACCEPTED_LAYOUTS}"
    )


def _family(shapes: list[tuple[int | None, ...]], h: LayoutHints) -> OutputLayout | None:
    """The layout :func:`detect_layout` describes, or ``None`` when none fits."""
    protos = [s for s in shapes if len(s) == 4]
    threes = [s for s in shapes if len(s) == 3]
    if len(protos) == 1 and len(threes) == 1 and h.task in (None, "segment"):
        _, a, b = threes[0]
        nm = protos[0][1]
        if h.end2end or (h.end2end is None and nm is not None and b == 6 + nm):
            return "end2end_seg" if b is not None and nm is not None and b >= 6 + nm else None
        return "yolov8_seg" if a is not None and b is not None and nm is not None and 4 + nm < a < b else None
    if h.task == "segment":
        return None  # a segmentation model without prototypes
    if len(shapes) == 2 and len(threes) == 2:
        (_, q1, c1), (_, q2, c2) = threes
        if q1 == q2 and (c1 == 4) != (c2 == 4) and (c1 or 0) >= 1 and (c2 or 0) >= 1:
            return "detr"
        return None
    if len(threes) != 1:
        return None
    _, c, n = threes[0]
    if c is None or n is None:
        return None
    if h.head is not None and h.head.startswith("RTDETR"):
        if n == 6:
            return "rtdetr"
        return "detr" if n > 4 else None
    if h.task == "pose":
        if h.end2end:
            return "end2end_pose" if n > 6 else None
        return "yolov8_pose" if 5 < c < n else None
    if h.end2end or (h.end2end is None and n == 6 and c <= MAX_END2END_ROWS):
        return "end2end" if n >= 6 else None
    if c != n:
        if c < n and c >= 5:
            return "yolov8"
        if n < c and n >= 6:
            return "yolov5"
    return None


def select_outputs(outputs: Mapping[str, torch.Tensor], layout: OutputLayout) -> list[torch.Tensor]:
    """The output tensors that ``layout``'s decoder takes, in its argument order.

    For ``"yolov8"``/``"yolov5"``/``"end2end"``/``"rtdetr"``/the pose layouts/one-output
    ``"detr"``: ``[prediction]`` (the only output, or the only 3-D one). For the segmentation
    layouts: ``[prediction, prototypes]`` (the 3-D and the 4-D output). For two-output
    ``"detr"``: ``[boxes, logits]`` (the one whose last dimension is 4 first).
    For ``"efficient_nms"``: ``[num_dets, boxes, scores, classes]``, matched by name
    (``num``, ``box``, ``score``, ``class``/``label``), falling back to declaration order
    when the names do not identify each tensor exactly once.

    Usage::

        num, boxes, scores, classes = select_outputs(engine.infer(inputs), "efficient_nms")
    """
    names = list(outputs)
    tensors = [outputs[n] for n in names]
    shapes = [tuple(t.shape) for t in tensors]
    if layout == "efficient_nms":
        if len(tensors) != 4:
            raise ShapeError(
                f"select_outputs: layout 'efficient_nms' expects 4 outputs "
                f"(num_dets, boxes, scores, classes), got {len(tensors)}: "
                f"{_describe(shapes, names)}"
            )
        roles = _match_roles(names)
        if roles is None:
            logger.debug("select_outputs: output names %s are ambiguous; using their order", names)
            roles = [0, 1, 2, 3]
        return [tensors[i] for i in roles]
    if layout in ("yolov8_seg", "end2end_seg"):
        i, j = _single_3d(shapes), _single_nd(shapes, 4)
        if i is None or j is None:
            raise ShapeError(
                f"select_outputs: layout {layout!r} expects one 3-D output and one 4-D output (the mask "
                f"prototypes), got {_describe(shapes, names)}"
            )
        return [tensors[i], tensors[j]]
    if layout == "detr" and len(tensors) == 2 and all(len(s) == 3 for s in shapes):
        first = 0 if shapes[0][2] == 4 else 1
        return [tensors[first], tensors[1 - first]]
    if layout in LAYOUTS:
        i = 0 if len(tensors) == 1 else _single_3d(shapes)
        if i is None:
            raise ShapeError(
                f"select_outputs: layout {layout!r} expects one 3-D output, got "
                f"{_describe(shapes, names)}"
            )
        return [tensors[i]]
    raise ValueError(f"select_outputs: layout must be one of {list(LAYOUTS)}, got {layout!r}")


def _single_nd(shapes: Sequence[tuple[int | None, ...]], ndim: int) -> int | None:
    idx = [i for i, s in enumerate(shapes) if len(s) == ndim]
    return idx[0] if len(idx) == 1 else None
