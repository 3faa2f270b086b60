"""Decoding of raw detector outputs into score-filtered candidate boxes.

Three output layouts are understood:

- ``"yolov8"``: Ultralytics YOLOv8 / YOLO11 export, one ``Tensor[B, 4 + nc, N]``: rows
  0-3 are cx, cy, w, h in model-input pixels, rows 4.. the (already sigmoid) class scores.
- ``"yolov5"``: YOLOv5 export, one ``Tensor[B, N, 5 + nc]``: cx, cy, w, h, objectness,
  class probabilities; the score of a class is ``objectness * probability``.
- ``"efficient_nms"``: TensorRT ``EfficientNMS_TRT`` outputs, already suppressed:
  ``num_dets [B, 1]``, ``boxes [B, K, 4]`` xyxy, ``scores [B, K]``, ``classes [B, K]``.

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
from typing import Literal, NamedTuple

import torch

from operators.boxes import cxcywh_to_xyxy
from streams.errors import ShapeError

__all__ = [
    "Candidates",
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

OutputLayout = Literal["yolov8", "yolov5", "efficient_nms"]

_ACCEPTED_LAYOUTS = (
    "accepted layouts: 'yolov8' (one output [B, 4+nc, N] with 4+nc < N, e.g. [1, 84, 8400]); "
    "'yolov5' (one output [B, N, 5+nc] with N > 5+nc, e.g. [1, 25200, 85]); "
    "'efficient_nms' (4 outputs num_dets [B, 1], boxes [B, K, 4], scores [B, K], "
    "classes [B, K]). Set model.layout explicitly if the model uses one of these"
)


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
    output_shapes: Sequence[tuple[int | None, ...]], output_names: Sequence[str]
) -> OutputLayout:
    """Infer the output layout of a detector from its declared outputs.

    - 4 outputs named like ``num_dets/det_boxes/det_scores/det_classes`` or
      ``num_detections/detection_boxes/...`` (or shaped ``[B,1], [B,K,4], [B,K], [B,K]``)
      -> ``"efficient_nms"``;
    - exactly one 3-D output ``[B, C, N]`` with ``C < N`` -> ``"yolov8"``, with ``C > N``
      -> ``"yolov5"`` (other, non-3-D outputs such as segmentation prototypes are ignored).

    ``None`` marks a dynamic dimension.

    Usage::

        detect_layout([(None, 84, 8400)], ["output0"])       # "yolov8"

    Raises:
        ShapeError: no layout fits; the message lists the outputs and the accepted layouts.
    """
    shapes = [tuple(s) for s in output_shapes]
    names = list(output_names)
    if len(shapes) != len(names):
        raise ShapeError(
            f"detect_layout: expected one name per output shape, got {len(names)} names "
            f"for {len(shapes)} shapes"
        )
    if len(shapes) == 4 and (_match_roles(names) is not None or _efficient_nms_shapes(shapes)):
        return "efficient_nms"
    i = _single_3d(shapes)
    if i is not None:
        _, c, n = shapes[i]
        if c is not None and n is not None and c != n:
            if c < n and c >= 5:
                return "yolov8"
            if n < c and n >= 6:
                return "yolov5"
    raise ShapeError(
        f"cannot infer the detector output layout from outputs {_describe(shapes, names)}; "
        f"{_ACCEPTED_LAYOUTS}"
    )


def select_outputs(outputs: Mapping[str, torch.Tensor], layout: OutputLayout) -> list[torch.Tensor]:
    """The output tensors that ``layout``'s decoder takes, in its argument order.

    For ``"yolov8"``/``"yolov5"``: ``[prediction]`` (the only output, or the only 3-D one).
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
    if layout in ("yolov8", "yolov5"):
        i = 0 if len(tensors) == 1 else _single_3d(shapes)
        if i is None:
            raise ShapeError(
                f"select_outputs: layout {layout!r} expects one 3-D output, got "
                f"{_describe(shapes, names)}"
            )
        return [tensors[i]]
    raise ValueError(
        f"select_outputs: layout must be 'yolov8', 'yolov5' or 'efficient_nms', got {layout!r}"
    )
