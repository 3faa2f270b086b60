"""Tests of operators.output_decoding: the three decoders, layout detection and output selection."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from operators.output_decoding import (
    Candidates,
    LayoutHints,
    decode_efficient_nms,
    decode_yolov5,
    decode_yolov8,
    detect_layout,
    select_outputs,
)
from operators.reference import (
    CandidatesNp,
    decode_efficient_nms_np,
    decode_yolov5_np,
    decode_yolov8_np,
)
from streams.errors import ShapeError


def assert_same_candidates(got: Candidates, expected: CandidatesNp) -> None:
    assert got.batch_index.dtype == torch.int64 and got.class_id.dtype == torch.int64
    assert got.boxes.dtype == torch.float32 and got.scores.dtype == torch.float32
    assert got.boxes.shape == (len(expected.scores), 4)
    np.testing.assert_array_equal(got.batch_index.numpy(), expected.batch_index)
    np.testing.assert_array_equal(got.class_id.numpy(), expected.class_id)
    np.testing.assert_array_equal(got.scores.numpy(), expected.scores)
    np.testing.assert_allclose(got.boxes.numpy(), expected.boxes, atol=1e-4)


def assert_empty(c: Candidates) -> None:
    assert c.boxes.shape == (0, 4) and c.boxes.dtype == torch.float32
    assert c.scores.shape == c.batch_index.shape == c.class_id.shape == (0,)
    assert c.batch_index.dtype == c.class_id.dtype == torch.int64


# --- YOLOv8 -------------------------------------------------------------------------------


def random_yolov8(rng: np.random.Generator, b: int, nc: int, n: int) -> np.ndarray:
    pred = np.empty((b, 4 + nc, n), np.float32)
    pred[:, 0:2] = rng.uniform(0, 640, (b, 2, n))
    pred[:, 2:4] = rng.uniform(2, 200, (b, 2, n))
    pred[:, 4:] = rng.uniform(0, 1, (b, nc, n)) ** 3
    return pred


def test_decode_yolov8_hand_case() -> None:
    pred = torch.zeros(1, 4 + 3, 5)
    pred[0, :4, 2] = torch.tensor([100.0, 50.0, 40.0, 20.0])
    pred[0, 4:, 2] = torch.tensor([0.1, 0.8, 0.3])  # class 1 wins
    pred[0, 4:, 4] = torch.tensor([0.2, 0.1, 0.25])  # best 0.25: not > 0.25
    c = decode_yolov8(pred, 0.25)
    assert c.batch_index.tolist() == [0] and c.class_id.tolist() == [1]
    assert c.scores.tolist() == pytest.approx([0.8])
    assert c.boxes.tolist() == [[80.0, 40.0, 120.0, 60.0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("multi_label", [False, True])
def test_decode_yolov8_matches_reference(seed: int, multi_label: bool) -> None:
    rng = np.random.default_rng(seed)
    pred = random_yolov8(rng, 3, 6, 400)
    got = decode_yolov8(torch.from_numpy(pred), 0.3, multi_label=multi_label)
    expected = decode_yolov8_np(pred, 0.3, multi_label=multi_label)
    assert len(expected.scores) > 50
    assert_same_candidates(got, expected)


def test_decode_yolov8_multi_label_yields_several_classes_per_anchor() -> None:
    pred = torch.zeros(1, 4 + 3, 2)
    pred[0, :4, 1] = torch.tensor([10.0, 10.0, 4.0, 4.0])
    pred[0, 4:, 1] = torch.tensor([0.9, 0.0, 0.6])
    single = decode_yolov8(pred, 0.5)
    multi = decode_yolov8(pred, 0.5, multi_label=True)
    assert single.class_id.tolist() == [0]
    assert multi.class_id.tolist() == [0, 2]
    assert multi.scores.tolist() == pytest.approx([0.9, 0.6])


def test_decode_yolov8_fp16_ties_pick_the_first_class() -> None:
    rng = np.random.default_rng(3)
    pred = random_yolov8(rng, 2, 4, 300).astype(np.float16)
    pred[:, 5, :50] = pred[:, 4, :50]  # exact ties between classes 0 and 1
    got = decode_yolov8(torch.from_numpy(pred), 0.2)
    assert got.scores.dtype == torch.float32
    assert_same_candidates(got, decode_yolov8_np(pred, 0.2))


@pytest.mark.parametrize("multi_label", [False, True])
def test_decode_yolov8_fp16_compares_in_fp32_on_a_transposed_view(multi_label: bool) -> None:
    """Scores stay fp16 until kept, yet the threshold compares in fp32, and the model may
    return ``[B, 4 + nc, N]`` as a transposed view of ``[B, N, 4 + nc]`` (the bench's YOLOv8n)."""
    rng = np.random.default_rng(4)
    pred = random_yolov8(rng, 2, 5, 300).astype(np.float16)
    near = np.float16(0.3)  # 0.30004883 > 0.3 in fp32, == 0.3 once 0.3 is cast to fp16
    pred[:, 5:, :80] = np.float16(0.01)  # class 0 is the best class of these anchors
    pred[:, 4, :40] = near
    pred[:, 4, 40:80] = np.nextafter(near, np.float16(0))  # 0.2998 < 0.3
    anchor_major = torch.from_numpy(np.ascontiguousarray(pred.transpose(0, 2, 1)))
    view = anchor_major.transpose(1, 2)
    assert not view.is_contiguous()
    got = decode_yolov8(view, 0.3, multi_label=multi_label)
    assert_same_candidates(got, decode_yolov8_np(pred, 0.3, multi_label=multi_label))
    assert int((got.scores == float(near)).sum()) == 2 * 40


def test_decode_yolov8_nothing_above_threshold() -> None:
    pred = torch.full((2, 4 + 3, 10), 0.1)
    assert_empty(decode_yolov8(pred, 0.25))
    assert_empty(decode_yolov8(pred, 0.25, multi_label=True))


@pytest.mark.parametrize("shape", [(84, 8400), (1, 4, 100), (1, 84, 100, 1)])
def test_decode_yolov8_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ShapeError, match=r"expected shape \(B, 4 \+ nc, N\).*got " + re.escape(str(shape))
    ):
        decode_yolov8(torch.zeros(shape), 0.25)


# --- YOLOv5 -------------------------------------------------------------------------------


def test_decode_yolov5_hand_case() -> None:
    pred = torch.zeros(1, 4, 5 + 2)
    pred[0, 0] = torch.tensor([100.0, 50.0, 40.0, 20.0, 0.9, 0.5, 0.6])  # 0.54, class 1
    pred[0, 1] = torch.tensor([10.0, 10.0, 4.0, 4.0, 0.3, 0.9, 0.0])  # 0.27 > 0.25, obj 0.3
    pred[0, 2] = torch.tensor([10.0, 10.0, 4.0, 4.0, 0.2, 1.0, 1.0])  # objectness too low
    pred[0, 3] = torch.tensor([10.0, 10.0, 4.0, 4.0, 0.5, 0.4, 0.1])  # 0.2: score too low
    c = decode_yolov5(pred, 0.25)
    assert c.class_id.tolist() == [1, 0]
    assert c.scores.tolist() == pytest.approx([0.54, 0.27])
    assert c.boxes[0].tolist() == [80.0, 40.0, 120.0, 60.0]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_decode_yolov5_matches_reference(seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    pred = np.empty((3, 500, 5 + 4), np.float32)
    pred[..., :2] = rng.uniform(0, 640, (3, 500, 2))
    pred[..., 2:4] = rng.uniform(2, 200, (3, 500, 2))
    pred[..., 4:] = rng.uniform(0, 1, (3, 500, 5))
    pred = pred.astype(dtype)
    got = decode_yolov5(torch.from_numpy(pred), 0.3)
    expected = decode_yolov5_np(pred, 0.3)
    assert len(expected.scores) > 50
    assert_same_candidates(got, expected)


def test_decode_yolov5_nothing_above_threshold() -> None:
    pred = torch.rand(2, 30, 5 + 3)
    pred[..., 4] = 0.2
    assert_empty(decode_yolov5(pred, 0.25))


def test_decode_yolov5_rejects_bad_shapes() -> None:
    with pytest.raises(ShapeError, match=r"expected shape \(B, N, 5 \+ nc\).*got \(1, 100, 5\)"):
        decode_yolov5(torch.zeros(1, 100, 5), 0.25)


# --- EfficientNMS -------------------------------------------------------------------------


def test_decode_efficient_nms_respects_num_dets_and_threshold() -> None:
    boxes = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    scores = torch.tensor([[0.9, 0.2, 0.8, 0.99], [0.7, 0.6, 0.5, 0.4]])
    classes = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=torch.int32)
    num = torch.tensor([[3], [0]], dtype=torch.int32)
    c = decode_efficient_nms(num, boxes, scores, classes, 0.25)
    # Row 0: slot 1 is below the threshold, slot 3 is beyond num_dets; row 1 has none.
    assert c.batch_index.tolist() == [0, 0]
    assert c.class_id.tolist() == [1, 3]
    assert c.scores.tolist() == pytest.approx([0.9, 0.8])
    assert c.boxes.tolist() == [boxes[0, 0].tolist(), boxes[0, 2].tolist()]


def test_decode_efficient_nms_matches_reference_fp16_float_classes() -> None:
    rng = np.random.default_rng(4)
    b, k = 4, 100
    num = rng.integers(0, k + 1, (b, 1)).astype(np.int32)
    boxes = rng.uniform(0, 640, (b, k, 4)).astype(np.float16)
    scores = rng.uniform(0, 1, (b, k)).astype(np.float16)
    classes = rng.integers(0, 80, (b, k)).astype(np.float32)
    got = decode_efficient_nms(
        torch.from_numpy(num[:, 0]),  # [B] is accepted too
        torch.from_numpy(boxes),
        torch.from_numpy(scores),
        torch.from_numpy(classes),
        0.4,
    )
    expected = decode_efficient_nms_np(num, boxes, scores, classes, 0.4)
    assert len(expected.scores) > 20
    assert_same_candidates(got, expected)


def test_decode_efficient_nms_nothing_valid() -> None:
    c = decode_efficient_nms(
        torch.zeros(2, 1, dtype=torch.int32),
        torch.rand(2, 10, 4),
        torch.ones(2, 10),
        torch.zeros(2, 10, dtype=torch.int32),
        0.25,
    )
    assert_empty(c)


def test_decode_efficient_nms_rejects_bad_shapes() -> None:
    with pytest.raises(ShapeError, match=r"num_dets\): expected shape \(2, 1\), got \(3, 1\)"):
        decode_efficient_nms(
            torch.zeros(3, 1), torch.zeros(2, 5, 4), torch.zeros(2, 5), torch.zeros(2, 5), 0.1
        )
    with pytest.raises(ShapeError, match=r"scores\): expected shape \(2, 5\), got \(2, 6\)"):
        decode_efficient_nms(
            torch.zeros(2, 1), torch.zeros(2, 5, 4), torch.zeros(2, 6), torch.zeros(2, 5), 0.1
        )
    with pytest.raises(ShapeError, match=r"boxes\): expected shape \(B, K, 4\)"):
        decode_efficient_nms(
            torch.zeros(2, 1), torch.zeros(2, 5, 5), torch.zeros(2, 5), torch.zeros(2, 5), 0.1
        )


# --- Layout detection ---------------------------------------------------------------------

EFFICIENT_SHAPES = [(None, 1), (None, 100, 4), (None, 100), (None, 100)]


@pytest.mark.parametrize(
    ("shapes", "names", "expected"),
    [
        ([(1, 84, 8400)], ["output0"], "yolov8"),
        ([(None, 84, 8400)], ["output0"], "yolov8"),
        ([(16, 5, 2100)], ["out"], "yolov8"),  # one class
        ([(1, 25200, 85)], ["output"], "yolov5"),
        ([(None, 25200, 6)], ["output"], "yolov5"),
        ([(1, 116, 8400), (1, 32, 160, 160)], ["output0", "output1"], "yolov8_seg"),  # seg protos
        ([(1, 300, 38), (1, 32, 80, 80)], ["output0", "output1"], "end2end_seg"),
        ([(1, 300, 6)], ["output0"], "end2end"),  # YOLOv10 / YOLO26 nms=False
        ([(1, 300, 4), (1, 300, 91)], ["dets", "labels"], "detr"),  # RF-DETR
        ([(1, 300, 91), (1, 300, 4)], ["labels", "dets"], "detr"),
        (EFFICIENT_SHAPES, ["num_dets", "det_boxes", "det_scores", "det_classes"], "efficient_nms"),
        (
            EFFICIENT_SHAPES,
            ["num_detections", "detection_boxes", "detection_scores", "detection_classes"],
            "efficient_nms",
        ),
        (EFFICIENT_SHAPES, ["a", "b", "c", "d"], "efficient_nms"),  # by shape
        (
            [(1, 1), (1, 100), (1, 100, 4), (1, 100)],
            ["num", "scores", "boxes", "labels"],
            "efficient_nms",
        ),  # by name, any order
    ],
)
def test_detect_layout(
    shapes: list[tuple[int | None, ...]], names: list[str], expected: str
) -> None:
    assert detect_layout(shapes, names) == expected


@pytest.mark.parametrize(
    ("shapes", "names"),
    [
        ([(1, 84, 84)], ["square"]),
        ([(1, 3, 640, 640)], ["image"]),
        ([(None, None, None)], ["dynamic"]),
        ([(1, 84, 8400), (1, 84, 8400)], ["a", "b"]),
        ([(1, 4, 8400)], ["no_classes"]),
        ([(1, 8400, 5)], ["no_classes_v5"]),
        ([], []),
    ],
)
def test_detect_layout_errors_explain_the_accepted_layouts(
    shapes: list[tuple[int | None, ...]], names: list[str]
) -> None:
    with pytest.raises(ShapeError) as info:
        detect_layout(shapes, names)
    message = str(info.value)
    for n, s in zip(names, shapes, strict=True):
        assert f"{n!r} {list(s)}" in message  # the actual outputs
    for layout in ("'yolov8'", "'yolov5'", "'efficient_nms'"):
        assert layout in message  # the accepted ones
    assert "[B, 4+nc, N]" in message and "model.layout" in message


@pytest.mark.parametrize(
    ("shapes", "hints", "expected"),
    [
        ([(1, 300, 6)], LayoutHints(head="RTDETRDecoder"), "rtdetr"),
        ([(1, 300, 84)], LayoutHints(head="RTDETRDecoder"), "detr"),  # older RT-DETR exports
        ([(1, 300, 84)], LayoutHints(), "yolov5"),  # without the head, a [B, N, 5+nc] table
        ([(1, 56, 8400)], LayoutHints(task="pose"), "yolov8_pose"),
        ([(1, 56, 8400)], LayoutHints(), "yolov8"),  # without the task, 52 classes
        ([(1, 300, 57)], LayoutHints(task="pose", end2end=True), "end2end_pose"),
        ([(1, 300, 6)], LayoutHints(end2end=True), "end2end"),
        ([(1, 2000, 6)], LayoutHints(end2end=True), "end2end"),  # the file says so
        ([(1, 2000, 6)], LayoutHints(), "yolov5"),  # too many rows for an end-to-end table
        ([(1, 300, 6)], LayoutHints(end2end=False), "yolov5"),
        ([(1, 300, 38), (1, 32, 80, 80)], LayoutHints(task="segment", end2end=True), "end2end_seg"),
        ([(1, 116, 8400), (1, 32, 160, 160)], LayoutHints(task="detect"), "yolov8"),  # boxes only
    ],
)
def test_detect_layout_with_hints(shapes: list[tuple[int, ...]], hints: LayoutHints, expected: str) -> None:
    assert detect_layout(shapes, [f"o{i}" for i in range(len(shapes))], hints) == expected


@pytest.mark.parametrize(
    ("shapes", "hints"),
    [
        ([(1, 116, 8400)], LayoutHints(task="segment")),  # no prototypes
        ([(1, 300, 6)], LayoutHints(task="pose", end2end=True)),  # no keypoints
        ([(1, 300, 20), (1, 32, 80, 80)], LayoutHints(end2end=True)),  # fewer values than prototypes
    ],
)
def test_detect_layout_refuses_outputs_that_contradict_the_hints(
    shapes: list[tuple[int, ...]], hints: LayoutHints
) -> None:
    with pytest.raises(ShapeError, match="cannot infer"):
        detect_layout(shapes, [f"o{i}" for i in range(len(shapes))], hints)


def test_select_outputs_of_the_families() -> None:
    pred, protos = torch.zeros(1, 116, 100), torch.zeros(1, 32, 8, 8)
    assert [t is e for t, e in zip(select_outputs({"p": protos, "o": pred}, "yolov8_seg"), [pred, protos],
                                   strict=True)] == [True, True]
    boxes, logits = torch.zeros(1, 30, 4), torch.zeros(1, 30, 91)
    got = select_outputs({"labels": logits, "dets": boxes}, "detr")
    assert got[0] is boxes and got[1] is logits
    with pytest.raises(ShapeError, match="4-D output"):
        select_outputs({"o": pred}, "end2end_seg")


def test_detect_layout_rejects_mismatched_names() -> None:
    with pytest.raises(ShapeError, match="one name per output"):
        detect_layout([(1, 84, 8400)], [])


def test_select_outputs_efficient_nms_by_name() -> None:
    num, boxes = torch.zeros(2, 1), torch.zeros(2, 10, 4)
    scores, classes = torch.zeros(2, 10), torch.ones(2, 10)
    outputs = {"det_scores": scores, "det_classes": classes, "num_dets": num, "det_boxes": boxes}
    got = select_outputs(outputs, "efficient_nms")
    assert [t is e for t, e in zip(got, [num, boxes, scores, classes], strict=True)] == [True] * 4


def test_select_outputs_efficient_nms_falls_back_to_declaration_order() -> None:
    tensors = [torch.zeros(2, 1), torch.zeros(2, 10, 4), torch.zeros(2, 10), torch.ones(2, 10)]
    outputs = dict(zip(["o1", "o2", "o3", "o4"], tensors, strict=True))
    got = select_outputs(outputs, "efficient_nms")
    assert all(t is e for t, e in zip(got, tensors, strict=True))
    with pytest.raises(ShapeError, match="expects 4 outputs"):
        select_outputs({"o1": tensors[0]}, "efficient_nms")


def test_select_outputs_single_prediction() -> None:
    pred, protos = torch.zeros(1, 116, 8400), torch.zeros(1, 32, 160, 160)
    assert select_outputs({"output0": pred}, "yolov8")[0] is pred
    assert select_outputs({"protos": protos, "output0": pred}, "yolov8")[0] is pred
    with pytest.raises(ShapeError, match="expects one 3-D output"):
        select_outputs({"a": pred, "b": pred}, "yolov5")
