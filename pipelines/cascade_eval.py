"""Accuracy of a cascade's attribute against the synthetic scene generator's truth.

Every true box of a frame is matched to the detection of the same class with the highest IoU
(at least ``iou_threshold``, each detection used once, greedily by IoU); a matched detection's
attribute (``attributes: {name: [label, score]}`` in its record) is compared with the box's
true value. Accuracy is over the matched boxes that carry the attribute: it scores the
secondary model through the whole pipeline (detector boxes, source-resolution crops,
reinference), not the detector, whose misses are counted apart.

Usage::

    preds = load_predictions_jsonl("out/detections.jsonl")        # pipelines.evaluation
    score = attribute_accuracy(preds, {"clip.mp4": load_ground_truth("clip.mp4")}, "pattern")
    score.accuracy, score.matched, score.missed
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.synthetic import GroundTruth


@dataclass(frozen=True)
class AttributeScore:
    """One attribute's accuracy through the pipeline (module docstring)."""

    attribute: str
    matched: int  # true boxes matched by a detection that carries the attribute
    correct: int
    missed: int  # true boxes no detection matched (the detector's misses)
    unclassified: int  # matched detections without the attribute (too small, or not chosen)
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)  # truth → predicted → count

    @property
    def accuracy(self) -> float:
        return self.correct / self.matched if self.matched else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "accuracy": round(self.accuracy, 4), "matched": self.matched,
                "correct": self.correct, "missed": self.missed, "unclassified": self.unclassified,
                "confusion": self.confusion}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def attribute_accuracy(predictions: Mapping[str, Sequence[Mapping[str, Any]]], truth: Mapping[str, GroundTruth],
                       attribute: str, iou_threshold: float = 0.5) -> AttributeScore:
    """Score ``attribute`` of the detections in ``predictions`` (``{source: [frame record]}``)
    against ``truth`` (``{source: GroundTruth}`` of scenes rendered with attributes).

    Raises ``ValueError`` when a source has no truth or its truth has no such attribute.
    """
    matched = correct = missed = unclassified = 0
    confusion: dict[str, Counter[str]] = {}
    for source, records in predictions.items():
        gt = truth.get(source)
        if gt is None:
            raise ValueError(f"no ground truth for source {source!r}")
        if gt.attribute_values is None or attribute not in gt.attribute_values:
            raise ValueError(f"the ground truth of {source!r} has no attribute {attribute!r}")
        for rec in records:
            f = int(rec["frame_index"])
            if f >= len(gt.boxes):
                raise ValueError(f"{source}: frame {f} is past the ground truth's {len(gt.boxes)} frames")
            true_boxes = np.asarray(gt.boxes[f], np.float64).reshape(-1, 4)
            true_cls = np.asarray(gt.class_ids[f], np.int64)
            values = [a[attribute] for a in gt.box_attributes(f)]
            dets = rec["detections"]
            if not len(true_boxes):
                continue
            if not dets:
                missed += len(true_boxes)
                continue
            boxes = np.array([d["box"] for d in dets], np.float64)
            cls = np.array([d["class_id"] for d in dets], np.int64)
            iou = _iou(true_boxes, boxes)
            iou[true_cls[:, None] != cls[None, :]] = 0.0
            used: set[int] = set()
            for t, j in sorted(((t, j) for t in range(len(true_boxes)) for j in range(len(dets))
                                if iou[t, j] >= iou_threshold), key=lambda tj: -iou[tj[0], tj[1]]):
                if t in used or (-1 - j) in used:
                    continue
                used.update((t, -1 - j))
                got = dets[j].get("attributes", {}).get(attribute)
                if got is None:
                    unclassified += 1
                    continue
                matched += 1
                correct += got[0] == values[t]
                confusion.setdefault(values[t], Counter())[got[0]] += 1
            missed += sum(1 for t in range(len(true_boxes)) if t not in used)
    return AttributeScore(attribute, matched, correct, missed, unclassified,
                          {k: dict(v) for k, v in sorted(confusion.items())})
