"""Masks and keypoints of segmentation and pose models in :class:`Detections` and its records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from streams.detections import Detections, InstanceMask
from streams.errors import ShapeError
from streams.frames import FrameMeta, FrameResult
from streams.sinks.records import frame_json, frame_record


def _dets() -> Detections:
    bitmap = np.zeros((3, 4), bool)
    bitmap[1:, 1:3] = True
    masks = (InstanceMask(2, 1, bitmap, (6, 8)), InstanceMask(0, 0, np.ones((1, 1), bool), (6, 8)))
    kp = np.array([[[1.234, 2.0, 0.51234]], [[3.0, 4.0, 0.9]]], np.float32)
    return Detections(np.array([[2, 1, 6, 4], [0, 0, 1, 1]], np.float32), np.array([0.9, 0.4], np.float32),
                      np.array([0, 1], np.int64), ("a", "b"), masks=masks, keypoints=kp)


@pytest.mark.parametrize("seed", range(3))
def test_rle_is_what_pycocotools_writes_for_the_full_frame(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(100):
        fh, fw = (int(v) for v in rng.integers(1, 30, 2))
        h, w = int(rng.integers(0, fh + 1)), int(rng.integers(0, fw + 1))
        y, x = int(rng.integers(0, fh - h + 1)), int(rng.integers(0, fw - w + 1))
        m = InstanceMask(x, y, rng.random((h, w)) < 0.5, (fh, fw))
        expected = mask_utils.encode(np.asfortranarray(m.full().astype(np.uint8)))
        rle = m.to_rle()
        assert rle == {"size": [fh, fw], "counts": expected["counts"].decode("ascii")}
        assert (mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}) == m.full()).all()


def test_masks_and_keypoints_follow_selection_and_reach_the_records() -> None:
    d = _dets()
    picked = d[d.confidence > 0.5]
    assert picked.masks is not None and len(picked.masks) == 1 and picked.masks[0].x == 2
    assert picked.keypoints is not None and picked.keypoints.shape == (1, 1, 3)
    records = d.to_records()
    assert records[0]["keypoints"] == [[1.23, 2.0, 0.5123]]
    decoded = mask_utils.decode({"size": records[0]["mask"]["size"], "counts": records[0]["mask"]["counts"].encode()})
    assert decoded.sum() == 4 and decoded[2:4, 3:5].all()
    meta = FrameMeta(source_id="s", uri="/v/s.mp4", frame_index=3, pts=3, time_base=(1, 25), width=8, height=6)
    result = FrameResult(meta, d)
    assert json.loads(frame_json(result)) == frame_record(result)
    assert json.loads(frame_json(result))["detections"][1]["mask"]["size"] == [6, 8]


def test_masks_and_keypoints_are_checked() -> None:
    with pytest.raises(ShapeError, match="does not fit"):
        InstanceMask(5, 0, np.ones((2, 4), bool), (6, 8))
    d = _dets()
    with pytest.raises(ShapeError, match="masks"):
        Detections(d.xyxy, d.confidence, d.class_id, masks=d.masks[:1] if d.masks else None)
    with pytest.raises(ShapeError, match="keypoints"):
        Detections(d.xyxy, d.confidence, d.class_id, keypoints=np.zeros((2, 3, 4), np.float32))
