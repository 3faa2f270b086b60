"""Accuracy of a job's detections against ground truth: COCO mAP plus precision/recall.

mAP comes from ``pycocotools`` (COCO's own ``COCOeval``, 101-point interpolation; not
re-implemented here). Precision and recall are at IoU 0.5 and one confidence threshold,
by greedy matching per frame and class (highest confidence first, each prediction takes
the unmatched ground-truth box of its class with the highest IoU >= 0.5).

Ground truth, one dict per clip (the format ``streams/synthetic/truth.py`` writes to
``<clip>.gt.json``)::

    {"width": 320, "height": 240, "fps": 24, "num_frames": 64, "class_names": ["box"],
     "frames": [{"frame_index": 0, "boxes": [[x1, y1, x2, y2]], "class_ids": [0]}, ...]}

Frames ``0 .. num_frames-1`` are evaluated; a frame missing from ``frames`` has no objects.

Predictions, per source id: Fovea's JSONL records (:func:`streams.sinks.records.frame_record`),
``(frame_index, Detections)`` pairs or :class:`~streams.frames.FrameResult` objects.
Sources are matched to ground truth by source id (the clip's file stem), frames by
``frame_index``; every ground-truth frame needs exactly one prediction record (a frame
without detections still has a record), otherwise :class:`FrameMismatchError` says how
many frames were dropped or duplicated, and in which source. Predicted classes are
matched to ground-truth classes by id (``match_by="class_id"``) or by name
(``match_by="label"``); predictions of classes the ground truth does not have are
ignored (counted in ``EvalReport.ignored_predictions``), as COCO does.

Usage::

    preds = load_predictions_jsonl("out/detections.jsonl")        # {"clip1": [record, ...]}
    gt = load_ground_truth_dir("clips/")                           # {"clip1": {...}}
    report = evaluate(preds, gt, conf_threshold=0.25)
    report.map50, report.map50_95, report.precision, report.recall
    print(report.to_markdown())
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streams.detections import Detections
from streams.errors import SourceError
from streams.frames import FrameResult

log = logging.getLogger(__name__)

GT_SUFFIX = ".gt.json"


class FrameMismatchError(SourceError, ValueError):
    """Predictions and ground truth of a source do not cover the same frames."""


@dataclass(frozen=True)
class _Box:
    xyxy: npt.NDArray[np.float64]  # (N, 4)
    cls: npt.NDArray[np.int64]  # (N,) ground-truth class index
    conf: npt.NDArray[np.float64]  # (N,), 1 for ground truth


@dataclass(frozen=True)
class EvalReport:
    """Result of :func:`evaluate`.

    ``map50``/``map50_95``/``per_class_ap50`` come from COCOeval (``nan`` where there is
    no ground-truth box to evaluate); ``precision``/``recall`` count the predictions with
    ``confidence >= conf_threshold`` matched at ``iou_threshold`` (0.0 when the
    denominator is 0).
    """

    map50: float
    map50_95: float
    precision: float
    recall: float
    per_class_ap50: dict[str, float]
    true_positives: int
    false_positives: int
    false_negatives: int
    num_sources: int
    num_frames: int
    num_gt_boxes: int
    num_predictions: int
    ignored_predictions: int
    conf_threshold: float
    iou_threshold: float = 0.5
    frames_per_source: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``nan`` becomes ``None``)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return {k: clean(v) for k, v in asdict(self).items()}

    def to_markdown(self) -> str:
        """A small Markdown summary: headline metrics and one row per class."""

        def fmt(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{v:.3f}"

        lines = [
            "| metric | value |",
            "|---|---|",
            f"| mAP@0.5 | {fmt(self.map50)} |",
            f"| mAP@0.5:0.95 | {fmt(self.map50_95)} |",
            f"| precision (IoU {self.iou_threshold:g}, conf >= {self.conf_threshold:g}) "
            f"| {fmt(self.precision)} |",
            f"| recall (IoU {self.iou_threshold:g}, conf >= {self.conf_threshold:g}) "
            f"| {fmt(self.recall)} |",
            f"| TP / FP / FN | {self.true_positives} / {self.false_positives} / "
            f"{self.false_negatives} |",
            f"| sources / frames | {self.num_sources} / {self.num_frames} |",
            f"| ground-truth boxes / predictions | {self.num_gt_boxes} / "
            f"{self.num_predictions} |",
        ]
        if self.ignored_predictions:
            lines.append(f"| ignored predictions (class not in ground truth) | "
                         f"{self.ignored_predictions} |")
        lines += ["", "| class | AP@0.5 |", "|---|---|"]
        lines += [f"| {name} | {fmt(ap)} |" for name, ap in self.per_class_ap50.items()]
        return "\n".join(lines) + "\n"


# -- loading --------------------------------------------------------------------------------
def load_predictions_jsonl(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Read the frame records of a JSONL file written by the ``jsonl`` sink:
    ``{source_id: [record, ...]}``.

    Records keep their file order. Event records (``{"event": "line_cross", ...}``: what
    the analytics stages write beside the frames) are skipped: they are not frames
    (:func:`pipelines.track_eval.load_events_jsonl` reads them). Raises ``ValueError``
    naming the line of a bad record.
    """
    path = Path(path).expanduser()
    out: dict[str, list[dict[str, Any]]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON record ({e.msg})") from e
            if not isinstance(record, dict) or "source" not in record \
                    or "frame_index" not in record:
                raise ValueError(f"{path}:{lineno}: expected a frame record with 'source' and "
                                 f"'frame_index'")
            if "event" in record:
                continue
            out.setdefault(str(record["source"]), []).append(record)
    return out


def load_ground_truth(path: str | Path) -> dict[str, Any]:
    """Read one ``<clip>.gt.json`` file."""
    with open(Path(path).expanduser(), encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def load_ground_truth_dir(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Every ``<clip>.gt.json`` in ``folder``, keyed by the source id a job over ``folder``
    gives its clip: the clip's file name (``<clip>.mp4``, the one video file of that stem
    beside it; ``<clip>`` when there is none or several)."""
    from streams.sources.files import VIDEO_EXTENSIONS

    folder = Path(folder).expanduser()
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(folder.glob("*" + GT_SUFFIX)):
        stem = p.name[: -len(GT_SUFFIX)]
        clips = [c.name for c in folder.iterdir() if c.stem == stem and c.suffix.lower() in VIDEO_EXTENSIONS]
        out[clips[0] if len(clips) == 1 else stem] = load_ground_truth(p)
    return out


# -- normalising ----------------------------------------------------------------------------
def _gt_frames(source: str, gt: Mapping[str, Any]) -> tuple[int, dict[int, _Box]]:
    """``num_frames`` and the boxes of each frame that has some."""
    try:
        frames = gt["frames"]
        num_frames = int(gt.get("num_frames", len(frames)))
        by_index: dict[int, _Box] = {}
        for f in frames:
            index = int(f["frame_index"])
            boxes = np.asarray(f.get("boxes", []), np.float64).reshape(-1, 4)
            cls = np.asarray(f.get("class_ids", [0] * len(boxes)), np.int64).reshape(-1)
            if len(cls) != len(boxes):
                raise ValueError(f"frame {index}: {len(boxes)} boxes but {len(cls)} class_ids")
            if not 0 <= index < num_frames:
                raise ValueError(f"frame_index {index} outside 0..{num_frames - 1}")
            if index in by_index:
                raise ValueError(f"frame_index {index} listed twice")
            by_index[index] = _Box(boxes, cls, np.ones(len(boxes)))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"ground truth of '{source}' is malformed: {e}") from e
    return num_frames, by_index


def class_indices(
    ids: Iterable[int], labels: Iterable[str], match_by: str, gt_names: Sequence[str]
) -> npt.NDArray[np.int64]:
    """Predicted classes as ground-truth class indices (-1: not a ground-truth class)."""
    if match_by == "label":
        lookup = {n: i for i, n in enumerate(gt_names)}
        return np.array([lookup.get(lb, -1) for lb in labels], np.int64)
    n = len(gt_names)
    return np.array([c if 0 <= c < n else -1 for c in ids], np.int64)


def _prediction(item: Any, match_by: str, gt_names: Sequence[str]) -> tuple[int, _Box]:
    """``(frame_index, boxes)`` of one prediction item in any accepted form."""
    if isinstance(item, FrameResult):
        item = (item.frame.frame_index, item.detections)
    if isinstance(item, Mapping):
        dets = item.get("detections") or []
        xyxy = np.array([d["box"] for d in dets], np.float64).reshape(-1, 4)
        conf = np.array([d["confidence"] for d in dets], np.float64)
        ids = [int(d.get("class_id", -1)) for d in dets]
        labels = [str(d.get("label", d.get("class_id"))) for d in dets]
        return int(item["frame_index"]), _Box(xyxy, class_indices(ids, labels, match_by, gt_names),
                                               conf)
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Detections):
        index, d = item
        cls = class_indices(d.class_id.tolist(), d.labels, match_by, gt_names)
        return int(index), _Box(d.xyxy.astype(np.float64), cls,
                                d.confidence.astype(np.float64))
    raise TypeError(f"unsupported prediction item {type(item).__name__}: expected a frame "
                    f"record dict, a (frame_index, Detections) pair or a FrameResult")


def _summarise(indices: Sequence[object], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f", ... ({len(indices) - limit} more)" if len(indices) > limit else "")


def check_frames(source: str, num_frames: int, indices: Sequence[int]) -> None:
    """Raise :class:`FrameMismatchError` unless ``indices`` (the frames of a source's
    prediction records) are ``0 .. num_frames-1``, each once."""
    counts: dict[int, int] = {}
    for i in indices:
        counts[i] = counts.get(i, 0) + 1
    missing = sorted(set(range(num_frames)) - counts.keys())
    extra = sorted(i for i in counts if not 0 <= i < num_frames)
    dups = sorted(i for i, c in counts.items() if c > 1)
    if not (missing or extra or dups):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} ground-truth frame(s) have no prediction record "
                        f"(dropped frames?): {_summarise(missing)}")
    if dups:
        problems.append(f"{len(dups)} frame(s) have more than one prediction record "
                        f"(duplicated frames?): {_summarise(dups)}")
    if extra:
        problems.append(f"{len(extra)} prediction record(s) are for frames the ground truth "
                        f"does not have: {_summarise(extra)}")
    raise FrameMismatchError(
        source, f"{len(indices)} prediction records for {num_frames} ground-truth frames; "
        + "; ".join(problems))


# -- matching -------------------------------------------------------------------------------
def _iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """IoU matrix ``(len(a), len(b))`` of xyxy boxes (COCO convention: no +1)."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _greedy_match(gt: _Box, pred: _Box, iou_threshold: float) -> tuple[int, int, int]:
    """TP, FP, FN of one frame (all predictions given are above the threshold)."""
    tp = fp = 0
    matched_total = 0
    for c in np.union1d(gt.cls, pred.cls).tolist():
        g = gt.xyxy[gt.cls == c]
        p_mask = pred.cls == c
        p = pred.xyxy[p_mask][np.argsort(-pred.conf[p_mask], kind="stable")]
        if not len(p):
            continue
        if not len(g):
            fp += len(p)
            continue
        iou = _iou(p, g)
        used = np.zeros(len(g), bool)
        for row in iou:
            row = np.where(used, -1.0, row)
            j = int(np.argmax(row))
            if row[j] >= iou_threshold:
                used[j] = True
                tp += 1
            else:
                fp += 1
        matched_total += int(used.sum())
    return tp, fp, len(gt.xyxy) - matched_total


def _coco_eval(
    images: list[dict[str, Any]],
    gt_anns: list[dict[str, Any]],
    dt_anns: list[dict[str, Any]],
    class_names: Sequence[str],
    iou_type: str,
    max_dets: int,
) -> tuple[float, float, list[float]]:
    """(mAP50-95, mAP50, per-class AP50) from COCOeval; nan where nothing to evaluate."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError("evaluation needs pycocotools: pip install pycocotools") from e

    nan = float("nan")
    if not gt_anns:
        return nan, nan, [nan] * len(class_names)
    if not dt_anns:
        return 0.0, 0.0, [0.0 if any(a["category_id"] == k + 1 for a in gt_anns) else nan
                          for k in range(len(class_names))]
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        coco_gt = COCO()
        coco_gt.dataset = {
            "info": {},  # pycocotools 2.0.10's loadRes copies it and fails without it
            "images": images,
            "annotations": gt_anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt_anns)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = [1, 10, max(100, max_dets)]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for line in chatter.getvalue().splitlines():
        if line.strip():
            log.debug("pycocotools: %s", line)
    stats = [nan if s < 0 else float(s) for s in ev.stats[:2]]
    precision = ev.eval["precision"]  # [T, R, K, A, M]; T[0] is IoU 0.5, A[0] all, M[-1] max
    per_class = []
    for k in range(len(class_names)):
        p = precision[0, :, k, 0, -1]
        p = p[p > -1]
        per_class.append(float(np.mean(p)) if p.size else nan)
    return stats[0], stats[1], per_class


# -- evaluation -----------------------------------------------------------------------------
def evaluate(
    predictions: Mapping[str, Sequence[Any]],
    ground_truth: Mapping[str, Mapping[str, Any]],
    iou_type: Literal["bbox"] = "bbox",
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.5,
    match_by: Literal["class_id", "label"] = "class_id",
) -> EvalReport:
    """Evaluate ``predictions`` against ``ground_truth`` (both keyed by source id).

    Args:
        predictions: per source, one item per frame: a JSONL frame record dict, a
            ``(frame_index, Detections)`` pair or a ``FrameResult``.
        ground_truth: per source, a ground-truth dict (see the module docstring). Every
            source must share its ``class_names`` (the first one's are used).
        iou_type: only ``"bbox"``.
        conf_threshold: predictions counted in precision/recall (mAP uses all of them).
        iou_threshold: IoU for precision/recall (mAP uses COCO's 0.5:0.95 and 0.5).
        match_by: compare classes by id or by name (``label`` vs. ``class_names``).

    Raises:
        FrameMismatchError: a ground-truth source has no predictions, or its frames and
            prediction records differ (dropped or duplicated frames).
        ValueError: malformed ground truth or mismatched ``class_names``.
    """
    if iou_type != "bbox":
        raise ValueError(f"iou_type: only 'bbox' is supported, got {iou_type!r}")
    if not ground_truth:
        raise ValueError("ground truth is empty")
    first_names = [str(n) for n in next(iter(ground_truth.values())).get("class_names", [])]
    parsed = {source: _gt_frames(source, gt) for source, gt in ground_truth.items()}
    names = list(first_names)
    if not names:  # no names: classes are the ids found in the ground truth
        seen = {c for _, frames in parsed.values() for b in frames.values() for c in b.cls.tolist()}
        names = [str(c) for c in range(max(seen, default=0) + 1)]
    extra_sources = sorted(set(predictions) - set(ground_truth))
    if extra_sources:
        log.warning("evaluation: %d prediction source(s) have no ground truth and are ignored: %s",
                    len(extra_sources), _summarise(extra_sources))

    images: list[dict[str, Any]] = []
    gt_anns: list[dict[str, Any]] = []
    dt_anns: list[dict[str, Any]] = []
    tp = fp = fn = ignored = num_preds = max_dets = 0
    frames_per_source: dict[str, int] = {}
    empty = _Box(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))

    for source, gt in ground_truth.items():
        gt_names = [str(n) for n in gt.get("class_names", [])]
        if gt_names != first_names:
            raise ValueError(f"ground truth of '{source}' has class_names {gt_names}, "
                             f"others have {first_names}")
        num_frames, gt_by_frame = parsed[source]
        bad = sorted({c for b in gt_by_frame.values() for c in b.cls.tolist()
                      if not 0 <= c < len(names)})
        if bad:
            raise ValueError(f"ground truth of '{source}' has class_ids {bad} outside "
                             f"class_names {names}")
        if source not in predictions:
            raise FrameMismatchError(
                source, f"no predictions for this ground-truth source (prediction sources: "
                f"{_summarise(sorted(predictions)) or 'none'})")
        preds = [_prediction(item, match_by, names) for item in predictions[source]]
        check_frames(source, num_frames, [i for i, _ in preds])
        frames_per_source[source] = num_frames
        width, height = int(gt.get("width", 0)), int(gt.get("height", 0))
        for index, pred in sorted(preds, key=lambda ip: ip[0]):
            image_id = len(images) + 1
            images.append({"id": image_id, "width": width, "height": height,
                           "file_name": f"{source}#{index}"})
            g = gt_by_frame.get(index, empty)
            known = pred.cls >= 0
            ignored += int((~known).sum())
            pred = _Box(pred.xyxy[known], pred.cls[known], pred.conf[known])
            num_preds += len(pred.xyxy)
            max_dets = max(max_dets, len(pred.xyxy))
            for box, c in zip(g.xyxy.tolist(), g.cls.tolist(), strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id,
                                "category_id": c + 1, "bbox": [box[0], box[1], w, h],
                                "area": w * h, "iscrowd": 0})
            for box, c, s in zip(pred.xyxy.tolist(), pred.cls.tolist(), pred.conf.tolist(),
                                 strict=True):
                dt_anns.append({"image_id": image_id, "category_id": c + 1, "score": s,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
            keep = pred.conf >= conf_threshold
            t, f, n = _greedy_match(g, _Box(pred.xyxy[keep], pred.cls[keep], pred.conf[keep]),
                                    iou_threshold)
            tp, fp, fn = tp + t, fp + f, fn + n

    if ignored:
        log.warning("evaluation: %d prediction(s) of classes not in the ground truth %s were "
                    "ignored (match_by=%s)", ignored, names, match_by)
    map50_95, map50, per_class = _coco_eval(images, gt_anns, dt_anns, names, iou_type, max_dets)
    report = EvalReport(
        map50=map50,
        map50_95=map50_95,
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        per_class_ap50=dict(zip(names, per_class, strict=True)),
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        num_sources=len(frames_per_source),
        num_frames=len(images),
        num_gt_boxes=len(gt_anns),
        num_predictions=num_preds,
        ignored_predictions=ignored,
        conf_threshold=conf_threshold,
        iou_threshold=iou_threshold,
        frames_per_source=frames_per_source,
    )
    log.info("evaluation: %d sources, %d frames: mAP50 %.4f, mAP50-95 %.4f, P %.4f, R %.4f",
             report.num_sources, report.num_frames, map50, map50_95, report.precision,
             report.recall)
    return report
