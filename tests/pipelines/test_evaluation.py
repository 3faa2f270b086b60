"""COCO evaluation of per-frame predictions against clip ground truth (pycocotools)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.evaluation import (
    FrameMismatchError,
    evaluate,
    load_ground_truth_dir,
    load_predictions_jsonl,
)
from streams.detections import Detections
from streams.errors import SourceError
from streams.frames import FrameMeta, FrameResult
from streams.sinks.records import JsonlSink

NAMES = ["car", "person"]


def _gt(num_frames: int = 20, seed: int = 0) -> dict[str, Any]:
    """Ground truth like streams/synthetic/truth.py writes: 0-3 boxes per frame, two classes."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(num_frames):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(20, 80, (n, 2))
        boxes = np.round(np.concatenate([xy, xy + wh], axis=1), 1).tolist()
        frames.append({"frame_index": i, "boxes": boxes,
                       "class_ids": rng.integers(0, 2, n).tolist()})
    return {"width": 320, "height": 240, "fps": 24, "num_frames": num_frames,
            "class_names": NAMES, "frames": frames}


def _detections(frame: dict[str, Any], shift: float = 0.0, swap_class: bool = False,
                conf: float = 0.9) -> Detections:
    boxes = np.array(frame["boxes"], np.float32).reshape(-1, 4)
    boxes[:, [0, 2]] += shift * (boxes[:, 2:3] - boxes[:, 0:1])  # shift by a box fraction
    cls = np.array(frame["class_ids"], np.int64)
    if swap_class:
        cls = 1 - cls
    return Detections(boxes, np.full(len(boxes), conf, np.float32), cls, tuple(NAMES))


def _records(gt: dict[str, Any], source: str, **kw: Any) -> list[dict[str, Any]]:
    """JSONL-style records (as the jsonl sink writes them) for every ground-truth frame."""
    return [{"source": source, "frame_index": f["frame_index"],
             "detections": _detections(f, **kw).to_records()} for f in gt["frames"]]


def test_perfect_predictions() -> None:
    gt = {"a": _gt(seed=1), "b": _gt(seed=2)}
    preds: dict[str, Sequence[Any]] = {"a": _records(gt["a"], "a"),
             "b": [(f["frame_index"], _detections(f)) for f in gt["b"]["frames"]]}
    report = evaluate(preds, gt)
    assert report.map50 == 1.0
    assert report.map50_95 == 1.0
    assert report.precision == 1.0 and report.recall == 1.0
    assert report.per_class_ap50 == {"car": 1.0, "person": 1.0}
    assert report.num_sources == 2 and report.num_frames == 40
    assert report.frames_per_source == {"a": 20, "b": 20}
    n_gt = sum(len(f["boxes"]) for g in gt.values() for f in g["frames"])
    assert report.num_gt_boxes == report.num_predictions == report.true_positives == n_gt
    assert report.false_positives == report.false_negatives == 0


def test_half_box_shift_drops_map50() -> None:
    gt = {"a": _gt()}
    report = evaluate({"a": _records(gt["a"], "a", shift=0.5)}, gt)  # IoU 1/3
    assert report.map50 < 0.5
    assert report.precision == 0.0 and report.recall == 0.0
    slight = evaluate({"a": _records(gt["a"], "a", shift=0.1)}, gt)  # IoU 0.82
    assert slight.map50 == 1.0 and slight.map50_95 < 1.0 and slight.recall == 1.0


def test_wrong_class_scores_zero() -> None:
    gt = {"a": _gt()}
    report = evaluate({"a": _records(gt["a"], "a", swap_class=True)}, gt)
    assert report.map50 == 0.0 and report.map50_95 == 0.0
    assert report.per_class_ap50 == {"car": 0.0, "person": 0.0}
    assert report.true_positives == 0 and report.false_positives == report.num_gt_boxes


def test_missing_frame_record_is_a_clear_error() -> None:
    gt = {"clip7": _gt()}
    records = _records(gt["clip7"], "clip7")
    del records[5]
    with pytest.raises(FrameMismatchError, match=r"clip7: 19 prediction records for 20 .*"
                                                 r"1 ground-truth frame\(s\) have no prediction"
                                                 r" record \(dropped frames\?\): 5") as info:
        evaluate({"clip7": records}, gt)
    assert isinstance(info.value, SourceError) and isinstance(info.value, ValueError)


def test_duplicated_frames_and_missing_sources_are_errors() -> None:
    gt = {"a": _gt()}
    records = _records(gt["a"], "a")
    with pytest.raises(FrameMismatchError, match=r"a: 21 prediction records .*duplicated.*: 3"):
        evaluate({"a": [*records, records[3]]}, gt)
    with pytest.raises(FrameMismatchError, match=r"a: no predictions .*sources: b"):
        evaluate({"b": records}, gt)


def test_conf_threshold_partial_recall_and_labels(capsys: pytest.CaptureFixture[str]) -> None:
    gt = {"a": _gt()}
    records = _records(gt["a"], "a")
    low = [0 if i % 2 else 1 for i in range(len(records))]  # every other frame: low score
    for rec, is_low in zip(records, low, strict=True):
        for det in rec["detections"]:
            det["confidence"] = 0.1 if is_low else 0.9
    report = evaluate({"a": records}, gt, conf_threshold=0.25)
    assert report.map50 == 1.0  # mAP ranks all predictions: still perfect
    assert report.precision == 1.0
    low_boxes = sum(len(r["detections"]) for r, is_low in zip(records, low, strict=True) if is_low)
    assert report.false_negatives == low_boxes
    assert 0.0 < report.recall < 1.0
    # classes by name: a model with other class ids but the same names
    for rec in records:
        for det in rec["detections"]:
            det["class_id"] += 10
    assert evaluate({"a": records}, gt, match_by="label").map50 == 1.0
    ignored = evaluate({"a": records}, gt)  # by id: 10/11 are not ground-truth classes
    assert ignored.ignored_predictions == ignored.num_gt_boxes and ignored.map50 == 0.0
    assert capsys.readouterr().out == ""  # pycocotools' chatter is not printed


def test_report_formats() -> None:
    gt = {"a": _gt()}
    report = evaluate({"a": _records(gt["a"], "a")}, gt)
    md = report.to_markdown()
    assert "| mAP@0.5 | 1.000 |" in md and "| person | 1.000 |" in md
    d = report.to_dict()
    assert d["map50"] == 1.0 and d["per_class_ap50"]["car"] == 1.0
    json.dumps(d)
    no_objects = {"a": {**_gt(), "frames": []}}  # no ground-truth box at all: nan, not 0
    empty = evaluate({"a": _records(_gt(), "a")}, no_objects)
    assert empty.to_dict()["map50"] is None and "n/a" in empty.to_markdown()


def test_jsonl_round_trip(tmp_path: Path) -> None:
    gt = {"clip_a": _gt(seed=3), "clip_b": _gt(num_frames=12, seed=4)}
    for name, g in gt.items():
        (tmp_path / f"{name}.gt.json").write_text(json.dumps(g))
    results = []
    for i in range(20):  # interleaved, as a job over both clips writes them
        for name, g in gt.items():
            if i < g["num_frames"]:
                frame = g["frames"][i]
                meta = FrameMeta(name, str(tmp_path / f"{name}.mp4"), i, i * 512, (1, 12288),
                                 g["width"], g["height"])
                results.append(FrameResult(meta, _detections(frame)))
    path = tmp_path / "out" / "dets.jsonl"
    sink = JsonlSink(path)
    with sink:
        sink.write(results[:7])
        sink.write(results[7:])
    preds = load_predictions_jsonl(path)
    assert {k: len(v) for k, v in preds.items()} == {"clip_a": 20, "clip_b": 12}
    loaded_gt = load_ground_truth_dir(tmp_path)
    assert sorted(loaded_gt) == ["clip_a", "clip_b"]
    report = evaluate(preds, loaded_gt)
    assert report.map50 == 1.0 and report.map50_95 == 1.0
    assert report.num_frames == 32

    (tmp_path / "bad.jsonl").write_text('{"source": "a", "frame_index": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_predictions_jsonl(tmp_path / "bad.jsonl")


def test_event_records_in_the_jsonl_are_not_frames(tmp_path: Path) -> None:
    """A job with analytics writes its events beside the frames: they are not prediction
    records (else every crossing would look like a duplicated frame)."""
    from streams.events import Event

    g = _gt(num_frames=6)
    results = []
    for i, frame in enumerate(g["frames"]):
        events = (Event("line_cross", "clip", i, i * 512, (1, 12288), 3, "car",
                        {"line": "gate", "direction": "in"}),) if i in (2, 4) else ()
        results.append(FrameResult(FrameMeta("clip", "clip.mp4", i, i * 512, (1, 12288), 320, 240),
                                   _detections(frame), events))
    path = tmp_path / "dets.jsonl"
    with JsonlSink(path) as sink:
        sink.write(results)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sum("event" in r for r in lines) == 2 and len(lines) == 8
    preds = load_predictions_jsonl(path)
    assert [r["frame_index"] for r in preds["clip"]] == list(range(6))
    assert evaluate(preds, {"clip": g}).map50 == 1.0
