"""Cascades with a secondary *detector*: children boxes in source-frame pixels.

The detector is :class:`tests.secondary_models.BlobBoxes`, a deterministic model file that
boxes the saturated and the white pixels of its input, in the YOLOv8, end-to-end and DETR
layouts (TorchScript) and as an ONNX export with Ultralytics-style metadata. It runs through
the real loading path (:func:`engines.secondary_detector.open_secondary_detector`), the
letterboxed crops (:func:`operators.crops.crop_letterbox`) and the primary model's
postprocess, so a patch painted at a known place of the frame must come back at that place,
in source pixels, whatever the parent box's shape and position.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pipelines.runner as runner
from pipelines.cascade import CascadeStage
from streams.cascade_config import SecondaryConfig
from streams.config import parse_config
from streams.detections import Detections
from streams.frames import FrameMeta, FrameResult
from streams.sinks.database import frame_rows
from streams.sinks.process import decode_results, encode_results
from streams.sinks.records import frame_json, frame_record
from streams.synthetic import CLASS_NAMES
from tests.pipelines.test_cascade import COLOURS, _Colour
from tests.secondary_models import FAMILIES, LABELS, export_blob_onnx, save_blob_detector

W, H = 320, 240
BG = 40
WHITE = (255, 255, 255)
RED = (255, 0, 0)

# parent boxes (source pixels) and the patches painted inside them; the children each must give
PARENTS = {
    "wide": (20.0, 30.0, 120.0, 90.0),        # 100 x 60: padded above and below in the crop
    "tall": (150.0, 20.0, 190.0, 110.0),      # 40 x 90: padded left and right
    "edge": (0.0, 180.0, 70.0, 240.0),        # on the frame's left and bottom edges
    "frac": (200.5, 130.25, 290.5, 200.75),   # fractional; its patch goes past its right edge
    "empty": (240.0, 20.0, 300.0, 80.0),      # nothing in it
    "tiny": (5.0, 5.0, 9.0, 9.0),             # below min_size: not looked at
}
PATCHES = [  # (x1, y1, x2, y2) whole pixels, colour
    ((40, 45, 60, 70), WHITE), ((80, 50, 110, 85), RED),
    ((160, 40, 175, 100), RED),
    ((0, 200, 20, 240), WHITE),
    ((270, 150, 300, 170), WHITE),
]
Box = tuple[float, float, float, float]
EXPECTED: dict[str, list[tuple[str, float, Box]]] = {  # label, score, source box: sorted by score
    "wide": [("blob", 0.9, (80, 50, 110, 85)), ("white", 0.6, (40, 45, 60, 70))],
    "tall": [("blob", 0.9, (160, 40, 175, 100))],
    "edge": [("white", 0.6, (0, 200, 20, 240))],
    "frac": [("white", 0.6, (270, 150, 290.5, 170))],  # clipped to the parent box
    "empty": [],
}


def _frame() -> np.ndarray:
    img = np.full((H, W, 3), BG, np.uint8)
    for (x1, y1, x2, y2), colour in PATCHES:
        img[y1:y2, x1:x2] = colour
    return img


def _result(index: int = 0, boxes: list[tuple[float, ...]] | None = None,
            track_ids: list[int] | None = None) -> FrameResult:
    xyxy = np.array(boxes if boxes is not None else list(PARENTS.values()), np.float32)
    n = len(xyxy)
    d = Detections(xyxy, np.full(n, 0.9, np.float32), np.zeros(n, np.int64), CLASS_NAMES,
                   track_id=None if track_ids is None else np.array(track_ids, np.int64))
    return FrameResult(FrameMeta("cam", "cam", index, index, (1, 25), W, H), d)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("blob")
    out = {f: save_blob_detector(d / f"blob_{f}.ts", f) for f in FAMILIES}
    out["onnx"] = export_blob_onnx(d / "blob.onnx", size=128)
    return out


def _entry(model: Path, **kw: Any) -> dict[str, Any]:
    if model.suffix == ".onnx":  # labels and size from the file
        return {"name": "parts", "kind": "detector", "model": str(model), **kw}
    return {"name": "parts", "kind": "detector", "model": str(model), "labels": list(LABELS),
            "input_size": [128, 128], **kw}


def _stage(model: Path, **kw: Any) -> CascadeStage:
    stage = CascadeStage([SecondaryConfig(**_entry(model, **kw))])
    stage.load("cpu", CLASS_NAMES)
    return stage


@pytest.mark.parametrize("which", [*FAMILIES, "onnx"])
def test_children_come_back_at_their_source_pixels(models: dict[str, Path], which: str) -> None:
    stage = _stage(models[which])
    result = _result()
    stage.cut(_frame()[None], [0], [result])
    (done,) = stage.process("cam", [result])
    attrs = done.detections.attributes
    assert attrs is not None
    by_name = dict(zip(PARENTS, attrs, strict=True))
    assert by_name["tiny"] == {}  # too small: not looked at, no key
    for name, want in EXPECTED.items():
        got = by_name[name]["parts"]
        assert [(c["label"], c["score"]) for c in got] == [(lab, sc) for lab, sc, _ in want], name
        for child, (_, _, box) in zip(got, want, strict=True):
            np.testing.assert_allclose(child["box"], box, atol=1.0, err_msg=name)
            px1, py1, px2, py2 = PARENTS[name]
            x1, y1, x2, y2 = child["box"]
            assert px1 <= x1 <= x2 <= px2 and py1 <= y1 <= y2 <= py2, (name, child)
    assert by_name["frac"]["parts"][0]["box"][2] == 290.5  # exactly the parent's edge
    report = stage.report()["models"]["parts"]
    assert report["kind"] == "detector"
    assert (report["crops"], report["found"], report["too_small"]) == (5, 5, 1)


def test_a_tracks_children_follow_its_box_between_inferences(models: dict[str, Path]) -> None:
    """reinfer_interval: frame 1 is not run; its children are frame 0's, moved and scaled with the parent."""
    stage = _stage(models["yolov8"], reinfer_interval=5)
    before = (20.0, 30.0, 120.0, 90.0)
    after = (41.0, 52.5, 191.0, 142.5)  # moved and 1.5 times as large
    frames = np.stack([_frame(), np.zeros((H, W, 3), np.uint8)])  # frame 1's pixels are never looked at
    results = [_result(0, [before], [7]), _result(1, [after], [7])]
    stage.cut(frames, [0, 1], results)
    first, second = stage.process("cam", results)
    assert first.detections.attributes is not None and second.detections.attributes is not None
    found = first.detections.attributes[0]["parts"]
    moved = second.detections.attributes[0]["parts"]
    assert [c["label"] for c in found] == [c["label"] for c in moved] == ["blob", "white"]
    b, a = np.array(before), np.array(after)
    for f, m in zip(found, moved, strict=True):
        rel = (np.array(f["box"]) - b[[0, 1, 0, 1]]) / (b[[2, 3, 2, 3]] - b[[0, 1, 0, 1]])
        np.testing.assert_allclose(m["box"], a[[0, 1, 0, 1]] + rel * (a[[2, 3, 2, 3]] - a[[0, 1, 0, 1]]), atol=0.02)
        assert m["score"] == f["score"]
    report = stage.report()["models"]["parts"]
    assert (report["crops"], report["reused"], report["found"]) == (1, 1, 2)


def test_a_crop_of_a_cpu_model_batch_is_split_by_max_batch(models: dict[str, Path]) -> None:
    """max_batch 2: five crops in three model calls give the same children as one call."""
    one = _stage(models["end2end"])
    split = _stage(models["end2end"], max_batch=2)
    result = _result()
    for st in (one, split):
        st.cut(_frame()[None], [0], [result])
    a = one.process("cam", [result])[0].detections.attributes
    b = split.process("cam", [result])[0].detections.attributes
    assert a == b and a is not None and len([x for x in a if x]) == 5


# -- a whole CPU job: the bundled detector, a classifier and a detector at once, every sink -------------

@pytest.fixture(scope="module")
def job_run(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[list[FrameResult], runner.FileJob, Path]:
    from streams.synthetic import SceneSpec, write_clip

    out = tmp_path_factory.mktemp("job")
    clip = write_clip(out / "scene.mp4", SceneSpec(width=640, height=360, num_frames=30, seed=11,
                                                    background="plain", noise=2.0))
    colour = out / "colour.ts"
    torch.jit.save(torch.jit.script(_Colour()), str(colour))
    raw = {"sources": [str(clip)], "engine": {"device": "cpu"},
           "secondary": [{"name": "colour", "model": str(colour), "labels": list(COLOURS), "input_size": [24, 24]},
                         _entry(models["yolov8"], input_size=[64, 64], max_det=5)],
           "sinks": [{"type": "jsonl", "path": str(out / "d.jsonl")}, {"type": "csv", "path": str(out / "d.csv")},
                     {"type": "sqlite", "path": str(out / "d.sqlite")}]}
    job = runner.FileJob(parse_config(raw), show_progress=False)
    results = sorted((r for b in job.batches() for r in b), key=lambda r: r.frame.frame_index)
    assert job.summary.ok, job.summary.to_text()
    return results, job, out


def test_a_job_with_a_classifier_and_a_detector_gives_both_attributes(
        job_run: tuple[list[FrameResult], runner.FileJob, Path]) -> None:
    results, job, _ = job_run
    n_dets = children = with_blob = 0
    for r in results:
        d = r.detections
        assert d.attributes is not None or len(d) == 0
        for box, a in zip(d.xyxy.tolist(), d.attributes or (), strict=True):
            n_dets += 1
            assert set(a) == {"colour", "parts"}
            assert a["colour"][0] in COLOURS
            parts = a["parts"]
            assert isinstance(parts, list) and len(parts) <= 5
            assert [c["score"] for c in parts] == sorted((c["score"] for c in parts), reverse=True)
            for c in parts:
                x1, y1, x2, y2 = c["box"]
                assert box[0] - 0.01 <= x1 <= x2 <= box[2] + 0.01 and box[1] - 0.01 <= y1 <= y2 <= box[3] + 0.01
                children += 1
            # the shape's saturated pixels, boxed: most of its parent box
            blob = [c for c in parts if c["label"] == "blob"]
            if blob:
                bx = blob[0]["box"]
                with_blob += (bx[2] - bx[0]) * (bx[3] - bx[1]) >= 0.4 * (box[2] - box[0]) * (box[3] - box[1])
    assert n_dets > 40 and with_blob >= 0.9 * n_dets, (with_blob, n_dets)
    report = job.summary.stages["CascadeStage"]["models"]
    assert report["colour"]["classified"] == n_dets and report["colour"]["kind"] == "classifier"
    assert report["parts"]["crops"] == n_dets and report["parts"]["found"] == children


def test_every_sink_writes_the_detectors_attribute(job_run: tuple[list[FrameResult], runner.FileJob, Path]) -> None:
    """JSONL (and MQTT, Kafka, Redis: the same frame_json), CSV, SQL rows, the sink process's
    encoding: each carries the API's attributes, the children's boxes included."""
    results, _, out = job_run
    api = [a for r in results for a in (r.detections.attributes or ())]
    assert len(api) > 40 and any(a["parts"] for a in api)
    lines = [json.loads(s) for s in (out / "d.jsonl").read_text().splitlines() if s.startswith('{"source"')]
    assert [d["attributes"] for rec in lines for d in rec["detections"]] == api
    with open(out / "d.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [json.loads(row["attributes"]) for row in rows] == api
    with sqlite3.connect(out / "d.sqlite") as db:
        sql = db.execute("SELECT attributes FROM fovea_detections ORDER BY frame_index, det_index").fetchall()
    assert [json.loads(a) for (a,) in sql] == api
    for r in results:
        assert json.loads(frame_json(r)) == frame_record(r)
        assert [json.loads(row[-1]) for row in frame_rows(r)[1]] == list(r.detections.attributes or ())
    assert [d.detections.attributes for d in decode_results(encode_results(results))] == \
        [r.detections.attributes for r in results]
