"""Postprocess of the families beyond plain detection, against the NumPy reference.

End-to-end (YOLOv10/YOLO26), RT-DETR, DETR (one output or boxes + logits), segmentation
(YOLOv8 and end-to-end, masks from prototypes) and pose (YOLOv8 and end-to-end): each on
random outputs with padding rows and frames of different shapes, compared with
:func:`operators.family_reference.postprocess_family_np`; plus hand cases whose answer is
known.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.boxes import LetterboxGeometry, letterbox_geometry
from operators.family_reference import postprocess_family_np
from operators.postprocess import postprocess
from streams.config import PostprocessConfig
from streams.detections import Detections
from streams.errors import ShapeError

GEOMS: list[LetterboxGeometry | None] = [
    letterbox_geometry(768, 432, 320, 320),
    None,  # a padding row
    letterbox_geometry(300, 500, 320, 320),
]
NAMES = ("a", "b", "c")


def _yolov8_rows(rng: np.random.Generator, nc: int, extra: np.ndarray, n: int, size: float = 120) -> np.ndarray:
    b = extra.shape[0]
    pred = np.empty((b, 4 + nc + extra.shape[1], n), np.float32)
    pred[:, 0:2] = rng.uniform(0, 320, (b, 2, n))
    pred[:, 2:4] = rng.uniform(4, size, (b, 2, n))
    pred[:, 4:4 + nc] = rng.uniform(0, 1, (b, nc, n)) ** 3
    pred[:, 4 + nc:] = extra
    return pred


def _end2end_rows(rng: np.random.Generator, k: int, extra: int, nc: int = 3) -> np.ndarray:
    rows = np.zeros((3, k, 6 + extra), np.float32)
    xy = rng.uniform(-20, 300, (3, k, 2))
    rows[..., 0:2] = xy
    rows[..., 2:4] = xy + rng.uniform(2, 100, (3, k, 2))
    rows[..., 4] = np.sort(rng.uniform(0, 1, (3, k)), axis=1)[:, ::-1]
    rows[..., 5] = rng.integers(0, nc, (3, k))
    rows[..., 6:] = rng.uniform(-30, 350, (3, k, extra))
    return rows


def _compare(got: list[Detections | None], expected: list[Detections | None]) -> int:
    """Asserts equal detections (boxes to 1e-3 px); returns how many there were."""
    total = 0
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        if e is None:
            assert g is None
            continue
        assert g is not None
        assert len(g) == len(e)
        total += len(e)
        np.testing.assert_array_equal(g.class_id, e.class_id)
        np.testing.assert_allclose(g.confidence, e.confidence, rtol=1e-6)
        np.testing.assert_allclose(g.xyxy, e.xyxy, atol=1e-3)
        assert g.class_names == e.class_names
        if e.keypoints is None:
            assert g.keypoints is None
        else:
            assert g.keypoints is not None and g.keypoints.shape == e.keypoints.shape
            np.testing.assert_allclose(g.keypoints, e.keypoints, atol=1e-3)
        if e.masks is None:
            assert g.masks is None
            continue
        assert g.masks is not None and len(g.masks) == len(e.masks)
        differ = pixels = 0
        for a, b in zip(g.masks, e.masks, strict=True):
            assert (a.x, a.y, a.bitmap.shape, a.frame_hw) == (b.x, b.y, b.bitmap.shape, b.frame_hw)
            differ += int((a.bitmap != b.bitmap).sum())
            pixels += a.bitmap.size
        assert pixels > 0
        assert differ <= pixels * 1e-4  # a logit within float rounding of 0 may flip
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_yolov8_seg_matches_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nm = 8
    pred = _yolov8_rows(rng, 3, rng.normal(0, 1, (3, nm, 400)).astype(np.float32), 400, size=40)
    protos = rng.normal(0, 1, (3, nm, 80, 80)).astype(np.float32)
    p = PostprocessConfig(conf_threshold=0.3, max_detections=25)
    got = postprocess([torch.from_numpy(pred), torch.from_numpy(protos)], "yolov8_seg", GEOMS, p, NAMES)
    assert _compare(got, postprocess_family_np([pred, protos], "yolov8_seg", GEOMS, p, NAMES)) == 50


def test_end2end_seg_matches_the_reference() -> None:
    rng = np.random.default_rng(3)
    rows = _end2end_rows(rng, 40, 8)
    rows[..., 2:4] = rows[..., 0:2] + rng.uniform(2, 30, (3, 40, 2))
    rows[..., 6:] = rng.normal(0, 1, (3, 40, 8))
    protos = rng.normal(0, 1, (3, 8, 80, 80)).astype(np.float32)
    p = PostprocessConfig(conf_threshold=0.5)
    got = postprocess([torch.from_numpy(rows), torch.from_numpy(protos)], "end2end_seg", GEOMS, p, NAMES)
    assert _compare(got, postprocess_family_np([rows, protos], "end2end_seg", GEOMS, p, NAMES)) > 30


@pytest.mark.parametrize("dims", [3, 2])
def test_yolov8_pose_matches_the_reference(dims: int) -> None:
    rng = np.random.default_rng(dims)
    kp = rng.uniform(-20, 340, (3, 17 * dims, 300)).astype(np.float32)
    if dims == 3:
        kp[:, 2::3] = rng.uniform(0, 1, (3, 17, 300))
    pred = _yolov8_rows(rng, 1, kp, 300)
    p = PostprocessConfig(conf_threshold=0.3)
    got = postprocess([torch.from_numpy(pred)], "yolov8_pose", GEOMS, p, ("person",))
    n = _compare(got, postprocess_family_np([pred], "yolov8_pose", GEOMS, p, ("person",)))
    assert n > 20
    first = got[0]
    assert first is not None and first.keypoints is not None and first.keypoints.shape[1:] == (17, dims)
    assert first.keypoints[..., 0].max() <= 768 and first.keypoints[..., 1].min() >= 0  # clipped to the frame


def test_end2end_pose_matches_the_reference() -> None:
    rng = np.random.default_rng(5)
    rows = _end2end_rows(rng, 300, 51, nc=1)
    p = PostprocessConfig(conf_threshold=0.25, max_detections=100)
    got = postprocess([torch.from_numpy(rows)], "end2end_pose", GEOMS, p, ("person",))
    assert _compare(got, postprocess_family_np([rows], "end2end_pose", GEOMS, p, ("person",))) == 200


@pytest.mark.parametrize("layout", ["end2end", "rtdetr"])
def test_nms_free_tables_match_the_reference(layout: str) -> None:
    rng = np.random.default_rng(7)
    rows = _end2end_rows(rng, 300, 0)
    if layout == "rtdetr":
        rows[..., 0:4] = rng.uniform(0.05, 0.95, (3, 300, 4))
    p = PostprocessConfig(conf_threshold=0.4)
    got = postprocess([torch.from_numpy(rows)], layout, GEOMS, p, NAMES)
    assert _compare(got, postprocess_family_np([rows], layout, GEOMS, p, NAMES)) > 300


@pytest.mark.parametrize("outputs", [1, 2])
def test_detr_matches_the_reference(outputs: int) -> None:
    rng = np.random.default_rng(outputs)
    boxes = rng.uniform(0.05, 0.9, (3, 100, 4)).astype(np.float32)
    logits = rng.normal(-2, 2, (3, 100, 5)).astype(np.float32)
    if outputs == 1:
        arrays = [np.concatenate([boxes, 1 / (1 + np.exp(-logits))], axis=2).astype(np.float32)]
    else:
        arrays = [boxes, logits]
    p = PostprocessConfig(conf_threshold=0.5)
    got = postprocess([torch.from_numpy(a) for a in arrays], "detr", GEOMS, p, NAMES)
    assert _compare(got, postprocess_family_np(arrays, "detr", GEOMS, p, NAMES)) > 50


def test_end2end_hand_case_maps_boxes_and_ranks_by_score_without_nms() -> None:
    """Two overlapping boxes of one class both stay (the model already suppressed), by score."""
    g = letterbox_geometry(640, 320, 320, 320)  # scale 0.5, pad_y 80
    rows = torch.zeros(1, 4, 6)
    rows[0, 0] = torch.tensor([10.0, 90.0, 50.0, 130.0, 0.6, 2.0])
    rows[0, 1] = torch.tensor([12.0, 92.0, 52.0, 132.0, 0.9, 2.0])
    rows[0, 2] = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.1, 0.0])  # below the threshold
    (d,) = postprocess([rows], "end2end", [g], PostprocessConfig(conf_threshold=0.25), NAMES)
    assert d is not None
    assert d.confidence.tolist() == pytest.approx([0.9, 0.6])
    assert d.labels == ["c", "c"]
    np.testing.assert_allclose(d.xyxy, [[24, 24, 104, 104], [20, 20, 100, 100]])


def test_rtdetr_hand_case_scales_normalised_boxes_to_the_input() -> None:
    g = letterbox_geometry(320, 320, 320, 320, "stretch")
    rows = torch.tensor([[[0.5, 0.5, 0.25, 0.5, 0.8, 1.0]]])
    (d,) = postprocess([rows], "rtdetr", [g], PostprocessConfig(), NAMES)
    assert d is not None and d.labels == ["b"]
    np.testing.assert_allclose(d.xyxy, [[120, 80, 200, 240]])


def test_seg_hand_case_a_mask_follows_the_sign_of_its_logits() -> None:
    """One prototype, positive on the left half of the input: a box across the middle gets a
    mask of its left half, in source pixels (a 2x downscaled frame)."""
    g = letterbox_geometry(640, 640, 320, 320)
    protos = torch.full((1, 1, 80, 80), -1.0)
    protos[..., :40] = 1.0
    pred = torch.zeros(1, 4 + 1 + 1, 10)
    pred[0, :4, 3] = torch.tensor([160.0, 160.0, 100.0, 60.0])  # input px: x 110..210, y 130..190
    pred[0, 4, 3] = 0.9
    pred[0, 5, 3] = 2.0  # coefficient
    (d,) = postprocess([pred, protos], "yolov8_seg", [g], PostprocessConfig(), ("obj",))
    assert d is not None and d.masks is not None and len(d.masks) == 1
    m = d.masks[0]
    # the box's source pixels, and one more right and below (Ultralytics' crop is half an input
    # pixel to the right and below the box: input pixels of index x1 <= x < x2)
    assert (m.x, m.y, m.bitmap.shape, m.frame_hw) == (220, 260, (121, 201), (640, 640))
    cols = m.bitmap.any(axis=0)
    assert not cols[0] and cols[1:98].all() and not cols[102:].any()  # the box's left half, in the crop
    rows = m.bitmap.any(axis=1)
    assert not rows[0] and rows[1:].all()


def test_family_postprocess_refuses_a_wrong_number_of_outputs() -> None:
    with pytest.raises(ShapeError, match="yolov8_seg"):
        postprocess([torch.zeros(1, 40, 100)], "yolov8_seg", [GEOMS[0]], PostprocessConfig())
    with pytest.raises(ValueError, match="layout must be one of"):
        postprocess([torch.zeros(1, 40, 100)], "nope", [GEOMS[0]], PostprocessConfig())  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", ["yolov8_pose", "end2end_pose"])
def test_pose_without_detections_gives_empty_keypoints(layout: str) -> None:
    pred = torch.zeros(1, 56, 100) if layout == "yolov8_pose" else torch.zeros(1, 300, 57)
    (d,) = postprocess([pred], layout, [GEOMS[0]], PostprocessConfig(), ("person",))
    assert d is not None and len(d) == 0 and d.keypoints is not None and d.keypoints.shape == (0, 17, 3)


def test_padding_only_batch_gives_no_detections() -> None:
    assert postprocess([torch.zeros(2, 300, 6)], "end2end", [None, None], PostprocessConfig()) == [None, None]
