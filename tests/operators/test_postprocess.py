"""Tests of operators.postprocess against the NumPy reference and hand-made cases."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from operators.boxes import LetterboxGeometry, letterbox_geometry
from operators.output_decoding import OutputLayout
from operators.postprocess import MAX_CANDIDATES, postprocess
from operators.reference import postprocess_np
from streams.config import PostprocessConfig
from streams.detections import Detections
from streams.errors import ShapeError

NAMES = ("person", "car", "bike", "dog", "cat")
NC = len(NAMES)

SOURCES = [(1920, 1080, "letterbox"), (640, 480, "letterbox"), (1080, 1920, "letterbox"),
           (1280, 720, "stretch"), (3840, 2160, "letterbox")]  # fmt: skip


def assert_same(got: list[Detections | None], expected: list[Detections | None]) -> None:
    assert len(got) == len(expected)
    for row, (g, e) in enumerate(zip(got, expected, strict=True)):
        if e is None:
            assert g is None, f"row {row} is padding"
            continue
        assert g is not None, f"row {row}"
        assert len(g) == len(e), f"row {row}: {len(g)} detections, expected {len(e)}"
        np.testing.assert_array_equal(g.class_id, e.class_id, err_msg=f"row {row}")
        np.testing.assert_array_equal(g.confidence, e.confidence, err_msg=f"row {row}")
        np.testing.assert_allclose(g.xyxy, e.xyxy, atol=1e-3, err_msg=f"row {row}")
        assert g.xyxy.dtype == np.float32 and g.confidence.dtype == np.float32
        assert g.class_id.dtype == np.int64
        assert g.class_names == e.class_names
        assert np.all(np.diff(g.confidence) <= 0), f"row {row} not sorted by confidence"


def make_geometries(
    rng: np.random.Generator, batch: int, dst: tuple[int, int], padding: Sequence[int]
) -> list[LetterboxGeometry | None]:
    geoms: list[LetterboxGeometry | None] = []
    for row in range(batch):
        if row in padding:
            geoms.append(None)
            continue
        w, h, mode = SOURCES[int(rng.integers(len(SOURCES)))]
        geoms.append(letterbox_geometry(w, h, dst[0], dst[1], mode=mode))  # type: ignore[arg-type]
    return geoms


def make_scene(
    rng: np.random.Generator, n: int, dst: tuple[int, int], empty: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anchors of one image: cxcywh ``[n, 4]``, best class ``[n]``, class scores ``[n, NC]``.

    60% of the anchors sit on a few objects (jittered copies: heavy overlap), the rest are
    background with low, partly above-threshold scores. Some objects straddle the border.
    An ``empty`` scene has nothing above 0.2.
    """
    n_obj = int(rng.integers(1, 8))
    centre = rng.uniform(-40, 1, (n_obj, 2)) + rng.uniform(0, 1, (n_obj, 2)) * np.array(dst)
    size = rng.uniform(15, 300, (n_obj, 2))
    obj_cls = rng.integers(0, NC, n_obj)
    which = rng.integers(0, n_obj, n)
    on_object = rng.uniform(size=n) < 0.6
    cxcy = np.where(
        on_object[:, None],
        centre[which] + rng.normal(0, 0.08, (n, 2)) * size[which],
        rng.uniform(0, 1, (n, 2)) * np.array(dst),
    )
    wh = np.where(
        on_object[:, None], size[which] * rng.uniform(0.8, 1.2, (n, 2)), rng.uniform(5, 150, (n, 2))
    )
    scores = rng.uniform(0, 1, (n, NC)) ** 4 * 0.4
    cls = np.where(on_object, obj_cls[which], rng.integers(0, NC, n))
    scores[np.arange(n), cls] = np.where(
        on_object, rng.uniform(0.3, 0.98, n), rng.uniform(0.0, 0.45, n)
    )
    # Some object anchors also score high for a second class: class-aware NMS keeps both.
    second = on_object & (rng.uniform(size=n) < 0.3)
    scores[second, (cls[second] + 1) % NC] = rng.uniform(0.3, 0.9, int(second.sum()))
    if empty:
        scores = scores * 0.2
    return np.concatenate([cxcy, wh], axis=1), cls, scores


def make_yolov8(
    rng: np.random.Generator,
    batch: int,
    n: int,
    dst: tuple[int, int],
    empty: Sequence[int],
    padding: Sequence[int],
) -> np.ndarray:
    pred = np.zeros((batch, 4 + NC, n), np.float32)
    for row in range(batch):
        boxes, _, scores = make_scene(rng, n, dst, row in empty)
        if row in padding:  # junk that must be ignored, with top scores
            scores = rng.uniform(0.9, 1.0, (n, NC))
        pred[row, :4] = boxes.T
        pred[row, 4:] = scores.T
    return pred


def make_yolov5(
    rng: np.random.Generator,
    batch: int,
    n: int,
    dst: tuple[int, int],
    empty: Sequence[int],
    padding: Sequence[int],
) -> np.ndarray:
    pred = np.zeros((batch, n, 5 + NC), np.float32)
    for row in range(batch):
        boxes, _, scores = make_scene(rng, n, dst, row in empty)
        obj = np.clip(scores.max(axis=1) * rng.uniform(1.0, 1.6, n), 0, 1)
        probs = scores / np.maximum(obj, 1e-6)[:, None]
        if row in padding:
            obj, probs = np.ones(n), np.ones((n, NC))
        pred[row, :, :4] = boxes
        pred[row, :, 4] = obj
        pred[row, :, 5:] = np.clip(probs, 0, 1)
    return pred


def make_efficient_nms(
    rng: np.random.Generator,
    batch: int,
    k: int,
    dst: tuple[int, int],
    empty: Sequence[int],
    padding: Sequence[int],
) -> list[np.ndarray]:
    num = rng.integers(0, k + 1, (batch, 1)).astype(np.int32)
    xy = rng.uniform(0, 1, (batch, k, 2)) * (np.array(dst) + 100) - 50  # some cross the edge
    wh = rng.uniform(5, 200, (batch, k, 2))
    boxes = np.concatenate([xy, xy + wh], axis=2).astype(np.float32)
    scores = -np.sort(-rng.uniform(0.0, 1.0, (batch, k)), axis=1)  # sorted, as TensorRT does
    scores[:, 5:8] = scores[:, 4:5]  # ties
    classes = rng.integers(0, NC, (batch, k)).astype(np.int32)
    for row in empty:
        num[row] = 0
    for row in padding:
        num[row], scores[row] = k, 1.0
    return [num, boxes, scores.astype(np.float32), classes]


PARAMS = {
    "default": PostprocessConfig(),
    "agnostic": PostprocessConfig(class_agnostic=True),
    "few": PostprocessConfig(conf_threshold=0.4, iou_threshold=0.6, max_detections=4),
    "capped": PostprocessConfig(conf_threshold=0.1, iou_threshold=0.3),
}
CAPS = {"capped": 300}  # max_candidates of the PARAMS cases that set it


def caps(params_name: str) -> int:
    """``max_candidates`` of a PARAMS case."""
    return CAPS.get(params_name, MAX_CANDIDATES)


def run_both(
    layout: OutputLayout,
    arrays: Sequence[np.ndarray],
    geoms: Sequence[LetterboxGeometry | None],
    params: PostprocessConfig,
    dtype: type = np.float32,
    max_candidates: int = MAX_CANDIDATES,
) -> tuple[list[Detections | None], list[Detections | None]]:
    def cast(a: np.ndarray) -> np.ndarray:
        return a.astype(dtype) if a.dtype == np.float32 else a

    cast_arrays = [cast(a) for a in arrays]
    got = postprocess([torch.from_numpy(a) for a in cast_arrays], layout, geoms, params, NAMES,
                      max_candidates=max_candidates)
    expected = postprocess_np(cast_arrays, layout, geoms, params, NAMES, max_candidates=max_candidates)
    return got, expected


@pytest.mark.parametrize("layout", ["yolov8", "yolov5"])
@pytest.mark.parametrize("params_name", list(PARAMS))
@pytest.mark.parametrize(
    ("seed", "dtype"), [(0, np.float32), (1, np.float32), (2, np.float16), (3, np.float16)]
)
def test_matches_reference(layout: OutputLayout, params_name: str, seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    dst = (640, 640) if seed % 2 == 0 else (640, 384)
    batch, padding, empty = 5, (1, 4), (2,)
    maker = make_yolov8 if layout == "yolov8" else make_yolov5
    arrays = [maker(rng, batch, 500, dst, empty, padding)]
    geoms = make_geometries(rng, batch, dst, padding)
    params = PARAMS[params_name]
    got, expected = run_both(layout, arrays, geoms, params, dtype, caps(params_name))
    assert_same(got, expected)
    assert got[1] is None and got[4] is None
    assert got[2] is not None and len(got[2]) == 0 and got[2].class_names == NAMES
    counts = [len(d) for d in got if d is not None]
    assert counts[0] > 0 and counts[2] > 0  # non-trivial rows
    assert max(counts) <= params.max_detections


@pytest.mark.parametrize("params_name", ["default", "few"])
@pytest.mark.parametrize(("seed", "dtype"), [(0, np.float32), (1, np.float16), (2, np.float32)])
def test_efficient_nms_matches_reference(params_name: str, seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    dst = (640, 640) if seed % 2 == 0 else (640, 384)
    batch, padding, empty = 6, (0, 3), (5,)
    arrays = make_efficient_nms(rng, batch, 100, dst, empty, padding)
    geoms = make_geometries(rng, batch, dst, padding)
    got, expected = run_both("efficient_nms", arrays, geoms, PARAMS[params_name], dtype, caps(params_name))
    assert_same(got, expected)
    assert got[0] is None and got[3] is None
    assert got[5] is not None and len(got[5]) == 0
    assert sum(len(d) for d in got if d is not None) > 0


def test_padding_rows_do_not_change_the_other_rows() -> None:
    rng = np.random.default_rng(11)
    dst = (640, 640)
    params = PostprocessConfig(conf_threshold=0.1)
    pred = make_yolov8(rng, 4, 400, dst, empty=(), padding=(1, 2))
    geoms = make_geometries(rng, 4, dst, padding=(1, 2))
    padded = postprocess([torch.from_numpy(pred)], "yolov8", geoms, params, max_candidates=200)
    alone = postprocess([torch.from_numpy(pred[[0, 3]])], "yolov8", [geoms[0], geoms[3]], params,
                        max_candidates=200)
    assert padded[1] is None and padded[2] is None
    assert_same([padded[0], padded[3]], alone)
    assert len(alone[0] or ()) > 0


def test_class_aware_vs_agnostic() -> None:
    pred = torch.zeros(1, 4 + 2, 3)
    pred[0, :4, 0] = torch.tensor([100.0, 100.0, 50.0, 50.0])
    pred[0, :4, 1] = torch.tensor([102.0, 101.0, 50.0, 50.0])  # same object, other class
    pred[0, :4, 2] = torch.tensor([104.0, 100.0, 50.0, 50.0])  # same object, same class
    pred[0, 4:, 0] = torch.tensor([0.9, 0.0])
    pred[0, 4:, 1] = torch.tensor([0.0, 0.8])
    pred[0, 4:, 2] = torch.tensor([0.7, 0.0])
    geoms = [letterbox_geometry(640, 640, 640, 640)]
    aware = postprocess([pred], "yolov8", geoms, PostprocessConfig())[0]
    agnostic = postprocess([pred], "yolov8", geoms, PostprocessConfig(class_agnostic=True))[0]
    assert aware is not None and agnostic is not None
    assert aware.class_id.tolist() == [0, 1]
    assert aware.confidence.tolist() == pytest.approx([0.9, 0.8])
    assert agnostic.class_id.tolist() == [0]


def test_max_detections_keeps_the_highest_scores() -> None:
    n = 20
    pred = torch.zeros(1, 4 + 1, n)
    pred[0, 0] = torch.arange(n) * 30.0 + 15.0  # disjoint boxes along x
    pred[0, 1] = 15.0
    pred[0, 2:4] = 20.0
    scores = torch.rand(n, generator=torch.Generator().manual_seed(0)) * 0.7 + 0.26
    pred[0, 4] = scores
    geoms = [letterbox_geometry(640, 640, 640, 640)]
    d = postprocess([pred], "yolov8", geoms, PostprocessConfig(max_detections=5))[0]
    assert d is not None
    np.testing.assert_array_equal(d.confidence, np.sort(scores.numpy())[::-1][:5])


SOURCE_GEOMETRIES = [
    (1920, 1080, 640, 640, "letterbox"),
    (640, 480, 640, 640, "letterbox"),
    (1080, 1920, 640, 640, "letterbox"),
    (1920, 1080, 640, 384, "letterbox"),
    (1080, 1920, 384, 640, "letterbox"),
    (1920, 1080, 640, 640, "stretch"),
    (1080, 1920, 640, 384, "stretch"),
]


@pytest.mark.parametrize("case", SOURCE_GEOMETRIES, ids=lambda c: "{}x{}->{}x{}-{}".format(*c))
@pytest.mark.parametrize("layout", ["yolov8", "efficient_nms"])
def test_round_trip_to_source_pixels(
    case: tuple[int, int, int, int, str], layout: OutputLayout
) -> None:
    src_w, src_h, dst_w, dst_h, mode = case
    g = letterbox_geometry(src_w, src_h, dst_w, dst_h, mode=mode)  # type: ignore[arg-type]
    src = np.array(
        [
            [100.0, 150.0, 400.0, 330.0],
            [0.0, 0.0, 33.5, 47.25],
            [src_w - 80.0, src_h - 120.0, src_w, src_h],
            [src_w * 0.25, src_h * 0.5, src_w * 0.75, src_h * 0.9],
        ]
    )
    model = src.copy()
    model[:, [0, 2]] = src[:, [0, 2]] * g.scale_x + g.pad_x
    model[:, [1, 3]] = src[:, [1, 3]] * g.scale_y + g.pad_y
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    if layout == "yolov8":
        pred = np.zeros((2, 4 + 1, 4), np.float32)
        pred[0, 0] = (model[:, 0] + model[:, 2]) / 2
        pred[0, 1] = (model[:, 1] + model[:, 3]) / 2
        pred[0, 2] = model[:, 2] - model[:, 0]
        pred[0, 3] = model[:, 3] - model[:, 1]
        pred[0, 4] = scores
        outputs = [torch.from_numpy(pred)]
        params = PostprocessConfig(iou_threshold=0.99)
    else:
        outputs = [
            torch.tensor([[4], [0]]),
            torch.tensor(np.stack([model, model]), dtype=torch.float32),
            torch.tensor(np.stack([scores, scores])),
            torch.zeros(2, 4, dtype=torch.int32),
        ]
        params = PostprocessConfig()
    dets = postprocess(outputs, layout, [g, None], params)
    assert dets[1] is None
    d = dets[0]
    assert d is not None
    np.testing.assert_allclose(d.xyxy, src, atol=0.01)
    np.testing.assert_array_equal(d.confidence, scores)


def test_boxes_outside_the_frame_are_clipped() -> None:
    g = letterbox_geometry(1920, 1080, 640, 640)  # pad_y 140, scale 1/3
    pred = torch.zeros(1, 4 + 1, 2)
    pred[0, :, 0] = torch.tensor([620.0, 320.0, 80.0, 600.0, 0.9])  # right, top, bottom out
    pred[0, :, 1] = torch.tensor([10.0, 160.0, 40.0, 20.0, 0.8])  # left out
    d = postprocess([pred], "yolov8", [g], PostprocessConfig())[0]
    assert d is not None
    expected = [[1740.0, 0.0, 1920.0, 1080.0], [0.0, 30.0, 90.0, 90.0]]
    np.testing.assert_allclose(d.xyxy, expected, atol=0.01)


def test_all_padding_and_no_detections() -> None:
    pred = torch.rand(3, 4 + NC, 50)
    assert postprocess([pred], "yolov8", [None, None, None]) == [None, None, None]
    quiet = torch.zeros(2, 4 + NC, 50)
    dets = postprocess(
        [quiet], "yolov8", [letterbox_geometry(640, 480, 640, 640), None], None, NAMES
    )
    assert dets[1] is None
    assert dets[0] is not None and len(dets[0]) == 0 and dets[0].class_names == NAMES


def test_bad_arguments() -> None:
    pred = torch.zeros(2, 4 + NC, 50)
    g = letterbox_geometry(640, 480, 640, 640)
    with pytest.raises(ShapeError, match=r"one geometry per batch row \(2\), got 1"):
        postprocess([pred], "yolov8", [g])
    with pytest.raises(ShapeError, match=r"expects 1 output tensor\(s\), got 2"):
        postprocess([pred, pred], "yolov8", [g, g])
    with pytest.raises(ShapeError, match=r"expects 4 output tensor\(s\), got 1"):
        postprocess([pred], "efficient_nms", [g, g])
    with pytest.raises(ShapeError, match=r"expected shape \(B, N, 5 \+ nc\)"):
        postprocess([torch.zeros(2, 50, 5)], "yolov5", [g, g])
    with pytest.raises(ValueError, match="layout must be"):
        postprocess([pred], "yolov9", [g, g])  # type: ignore[arg-type]
