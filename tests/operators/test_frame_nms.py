"""Tests of operators.frame_nms and of postprocess's fused path.

The fused path must give exactly what the exact path and the NumPy reference give. On the
CPU its NMS is the torch loop; the GPU tests (``-m gpu``) check the Triton kernel against
it and against the reference, and that the device half of the fused path never makes the
host wait for the GPU.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from operators.frame_nms import (
    _rank_keys,
    frame_nms,
    frame_nms_torch,
    top_candidates_yolov5,
    top_candidates_yolov8,
    triton_available,
    triton_problem,
)
from operators.output_decoding import OutputLayout, decode_yolov5, decode_yolov8
from operators.postprocess import fused_device_table, postprocess
from operators.reference import nms_np
from streams.config import PostprocessConfig
from streams.errors import ConfigError, ShapeError
from streams.schema import from_dict
from tests.operators.test_nms import clustered_boxes
from tests.operators.test_postprocess import (
    NAMES,
    PARAMS,
    assert_same,
    caps,
    make_geometries,
    make_yolov5,
    make_yolov8,
    run_both,
)


def reference_keep(
    boxes: np.ndarray, classes: np.ndarray, count: np.ndarray, thr: float, agnostic: bool
) -> np.ndarray:
    """``bool[B, K]`` from the textbook NMS, frame by frame (rank = score order)."""
    b, k = classes.shape
    keep = np.zeros((b, k), bool)
    for row in range(b):
        n = min(int(count[row]), k)
        scores = np.arange(n, 0, -1, dtype=np.float32)  # rank order, no ties
        groups = np.zeros(n, np.int64) if agnostic else classes[row, :n]
        keep[row, nms_np(boxes[row, :n], scores, groups, thr)] = True
    return keep


def ranked_frames(
    seed: int, batch: int, k: int, n_classes: int, grid: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``[B, K, 4]``, classes ``[B, K]`` and counts ``[B]`` (some rows partly empty).

    With ``grid``, coordinates are whole pixels, which makes many IoUs land exactly on
    simple fractions such as the threshold itself.
    """
    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch, k, 4), np.float32)
    classes = rng.integers(0, n_classes, (batch, k)).astype(np.int64)
    for row in range(batch):
        bx, _, _ = clustered_boxes(rng, k, max(2, k // 20), 1)
        boxes[row] = np.round(bx / 8) * 8 if grid else bx
    count = rng.integers(0, k + 1, batch)
    count[0], count[-1] = k, k + 50  # a full row, and a row that overflowed
    return boxes, classes, count


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize(("seed", "k", "thr", "grid"), [(0, 200, 0.45, False), (1, 64, 0.5, True),
                                                         (2, 300, 0.7, False), (3, 128, 0.25, True)])
def test_torch_loop_matches_reference(seed: int, k: int, thr: float, grid: bool, agnostic: bool) -> None:
    boxes, classes, count = ranked_frames(seed, 6, k, 3, grid)
    got = frame_nms_torch(torch.from_numpy(boxes), torch.from_numpy(classes), torch.from_numpy(count),
                          thr, agnostic)
    expected = reference_keep(boxes, classes, count, thr, agnostic)
    np.testing.assert_array_equal(got.numpy(), expected)
    assert 0 < expected.sum() < np.minimum(count, k).sum()  # suppression happened


def test_iou_exactly_at_threshold_is_kept() -> None:
    boxes = torch.tensor([[[0.0, 0, 2, 1], [1.0, 0, 2, 1], [0.0, 0, 2, 1]]])  # IoU 0.5, then 1
    keep = frame_nms(boxes, torch.zeros((1, 3), dtype=torch.int64), torch.tensor([3]), 0.5)
    assert keep.tolist() == [[True, True, False]]


def test_rank_keys_order_by_score_then_anchor() -> None:
    scores = torch.tensor([[0.5, -1.0, 0.5, 2.0, -0.0, 0.0, -3.5, 0.25, float("inf"), 0.5]])
    valid = torch.ones_like(scores, dtype=torch.bool)
    valid[0, 7] = False
    order = _rank_keys(scores, valid).argsort(dim=1, descending=True, stable=True)[0].tolist()
    ranked = sorted(range(10), key=lambda i: (-scores[0, i].item(), i))
    ranked.remove(7)
    assert order == [*ranked, 7]


@pytest.mark.parametrize("layout", ["yolov8", "yolov5"])
def test_top_candidates_are_the_best_of_each_frame(layout: OutputLayout) -> None:
    """The first K candidates of the exact decoder, ordered by (score desc, anchor asc)."""
    rng = np.random.default_rng(5)
    maker = make_yolov8 if layout == "yolov8" else make_yolov5
    pred = torch.from_numpy(maker(rng, 4, 300, (640, 640), (2,), ()))
    pred[1] = pred[1].round(decimals=1)  # many tied scores
    top = top_candidates_yolov8 if layout == "yolov8" else top_candidates_yolov5
    decode = decode_yolov8 if layout == "yolov8" else decode_yolov5
    cands = top(pred, 0.25, capacity=40)
    exact = decode(pred, 0.25)
    assert tuple(cands.boxes.shape) == (4, 40, 4) and tuple(cands.scores.shape) == (4, 40)
    assert cands.num_candidates[2] == 0
    for row in range(4):
        mine = exact.select(exact.batch_index == row)  # anchor order
        mine = mine.select(torch.sort(mine.scores, descending=True, stable=True).indices[:40])
        n = len(mine.scores)
        assert int(cands.num_candidates[row]) == int((exact.batch_index == row).sum())
        assert torch.equal(cands.scores[row, :n], mine.scores)
        assert torch.equal(cands.boxes[row, :n], mine.boxes)
        assert torch.equal(cands.class_id[row, :n], mine.class_id)
    assert int(cands.num_candidates.max()) > 40  # the cut was exercised


def test_fused_path_matches_reference_across_params() -> None:
    """Every PARAMS case, both YOLO layouts, fp32 and fp16, a capacity that fits the frames
    and one that makes some frames overflow (those go through the exact path)."""
    layouts: tuple[OutputLayout, ...] = ("yolov8", "yolov5")
    for layout in layouts:
        for name, params in PARAMS.items():
            for seed, dtype in ((0, np.float32), (3, np.float16)):
                rng = np.random.default_rng(seed)
                dst = (640, 640) if seed % 2 == 0 else (640, 384)
                maker = make_yolov8 if layout == "yolov8" else make_yolov5
                arrays = [maker(rng, 5, 500, dst, (2,), (1, 4))]
                geoms = make_geometries(rng, 5, dst, (1, 4))
                for cap in (480, 30):
                    p = dataclasses.replace(params, fused="on", frame_capacity=cap)
                    got, expected = run_both(layout, arrays, geoms, p, dtype, caps(name))
                    assert_same(got, expected)
                    assert got[1] is None and got[4] is None, name


def test_overflowing_frames_use_the_exact_path_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(7)
    arrays = [make_yolov8(rng, 3, 500, (640, 640), (), ())]
    geoms = make_geometries(rng, 3, (640, 640), ())
    pred = torch.from_numpy(arrays[0])
    counts = (pred[:, 4:].max(dim=1).values > 0.25).sum(dim=1)
    cap = int(counts.min()) + 1  # at least one frame fits, at least one does not
    assert int(counts.max()) > cap
    p = PostprocessConfig(fused="on", frame_capacity=cap)
    import operators.postprocess as pp_mod

    pp_mod._warned.discard("frame-capacity")
    with caplog.at_level(logging.WARNING, logger="operators.postprocess"):
        got = postprocess([pred], "yolov8", geoms, p, NAMES)
        postprocess([pred], "yolov8", geoms, p, NAMES)
    warnings = [r for r in caplog.records if "frame_capacity" in r.getMessage()]
    assert len(warnings) == 1  # once per process, not per batch
    assert_same(got, postprocess([pred], "yolov8", geoms, dataclasses.replace(p, fused="off"), NAMES))


def test_fused_table_shapes() -> None:
    rng = np.random.default_rng(3)
    pred = torch.from_numpy(make_yolov8(rng, 4, 500, (640, 640), (), ()))
    geoms = [g for g in make_geometries(rng, 4, (640, 640), ()) if g is not None]
    p = PostprocessConfig(fused="on", frame_capacity=256, max_detections=10)
    table, k, d = fused_device_table(pred, "yolov8", [0, 2, 3], geoms[:3], p)
    assert (k, d) == (256, 10)
    assert tuple(table.shape) == (3, 10 * 6 + 2)
    assert torch.all(table[:, -2] <= 10)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"postprocess\.fused"):
        from_dict(PostprocessConfig, {"fused": "yes"}, "postprocess")
    with pytest.raises(ConfigError, match=r"postprocess\.frame_capacity"):
        from_dict(PostprocessConfig, {"frame_capacity": 0}, "postprocess")
    with pytest.raises(ValueError, match="max_candidates"):
        postprocess([torch.zeros(1, 5, 3)], "yolov8", [None], max_candidates=0)
    with pytest.raises(ShapeError, match=r"expected shape \(B, K, 4\)"):
        frame_nms(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64), torch.zeros(1), 0.5)
    with pytest.raises(ShapeError, match=r"frame_nms\(count\): expected shape \(2,\)"):
        frame_nms(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="needs CUDA"):
        frame_nms(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2), 0.5,
                  impl="triton")
    with pytest.raises(ShapeError, match="top_candidates_yolov8"):
        top_candidates_yolov8(torch.zeros(2, 4, 10), 0.25, 8)


@pytest.mark.skipif(triton_available(), reason="checks the machine without triton")
def test_without_triton_auto_uses_the_exact_path_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    import operators.postprocess as pp_mod

    assert "not importable" in (triton_problem("cuda:0") or "")
    pp_mod._warned.discard("no-triton")
    with caplog.at_level(logging.WARNING, logger="operators.postprocess"):
        assert not pp_mod._use_fused(PostprocessConfig(), torch.device("cuda:0"))
        assert not pp_mod._use_fused(PostprocessConfig(), torch.device("cuda:0"))
    assert [r.getMessage() for r in caplog.records if "fused per-frame NMS is off" in r.getMessage()] == [
        "postprocess: the 'triton' package is not importable, so the fused per-frame NMS is off: the exact "
        "path waits for the GPU a few times per batch (a working triton package, the one that matches "
        "torch, removes those waits)"
    ]
    assert not pp_mod._use_fused(PostprocessConfig(), torch.device("cpu"))  # the CPU: exact, no warning
    assert pp_mod._use_fused(PostprocessConfig(fused="on"), torch.device("cpu"))


# --- GPU: the Triton kernel and the absence of host synchronizations -------------------------


@pytest.mark.gpu
def test_triton_kernel_builds_and_agrees_on_this_gpu() -> None:
    assert triton_problem("cuda:0") is None


@pytest.mark.gpu
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize(("seed", "k", "thr", "grid"), [(0, 512, 0.45, False), (1, 64, 0.5, True),
                                                         (2, 1000, 0.7, False), (3, 2048, 0.45, True)])
def test_triton_kernel_matches_torch_and_reference(
    seed: int, k: int, thr: float, grid: bool, agnostic: bool
) -> None:
    boxes, classes, count = ranked_frames(seed, 8, k, 4, grid)
    args = (torch.from_numpy(boxes), torch.from_numpy(classes), torch.from_numpy(count))
    b, c, n = (a.cuda() for a in args)
    got = frame_nms(b, c, n, thr, agnostic, impl="triton")
    assert got.dtype == torch.bool and got.is_cuda
    np.testing.assert_array_equal(got.cpu().numpy(), frame_nms_torch(b, c, n, thr, agnostic).cpu().numpy())
    np.testing.assert_array_equal(got.cpu().numpy(), reference_keep(boxes, classes, count, thr, agnostic))


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["yolov8", "yolov5"])
@pytest.mark.parametrize("params_name", list(PARAMS))
def test_fused_on_cuda_matches_reference(layout: OutputLayout, params_name: str) -> None:
    rng = np.random.default_rng(11)
    maker = make_yolov8 if layout == "yolov8" else make_yolov5
    arrays = [maker(rng, 6, 2000, (640, 640), (2,), (1,))]
    geoms = make_geometries(rng, 6, (640, 640), (1,))
    p = dataclasses.replace(PARAMS[params_name], fused="auto")
    pred = torch.from_numpy(arrays[0]).cuda().half()
    got = postprocess([pred], layout, geoms, p, NAMES, max_candidates=caps(params_name))
    from operators.reference import postprocess_np

    assert_same(got, postprocess_np([arrays[0].astype(np.float16)], layout, geoms, p, NAMES,
                                    max_candidates=caps(params_name)))


@pytest.mark.gpu
def test_fused_device_half_never_waits_for_the_gpu() -> None:
    """torch's sync debug mode raises on any operation that makes the host wait (a pageable
    copy, ``nonzero``, ``.item()``); the device half of the fused path must run through."""
    rng = np.random.default_rng(2)
    pred = torch.from_numpy(make_yolov8(rng, 8, 8400, (640, 640), (), ())).cuda().half()
    geoms = [g for g in make_geometries(rng, 8, (640, 640), ()) if g is not None]
    rows = [0, 1, 2, 4, 5, 6, 7]  # one padding row: the row index is uploaded too
    p = PostprocessConfig()
    fused_device_table(pred, "yolov8", rows, geoms[:7], p)  # compile the kernel first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        table, _, _ = fused_device_table(pred, "yolov8", rows, geoms[:7], p)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert table.is_cuda and table.shape[0] == 7
