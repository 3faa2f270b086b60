"""Tests of operators.nms.batched_nms against hand-made cases and the NumPy greedy NMS."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from operators.nms import batched_nms
from operators.reference import nms_np
from streams.errors import ShapeError


def _nms(
    boxes: Sequence[Sequence[float]], scores: list[float], groups: list[int], thr: float
) -> list[int]:
    keep = batched_nms(
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(groups, dtype=torch.int64),
        thr,
    )
    assert keep.dtype == torch.int64
    return keep.tolist()


def test_overlapping_same_group_keeps_the_best() -> None:
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11]]  # IoU 81 / 119 = 0.68
    assert _nms(boxes, [0.6, 0.9], [3, 3], 0.45) == [1]
    assert _nms(boxes, [0.9, 0.6], [3, 3], 0.45) == [0]


def test_overlapping_different_groups_are_both_kept() -> None:
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11]]
    assert _nms(boxes, [0.6, 0.9], [0, 1], 0.45) == [1, 0]  # decreasing score


def test_iou_exactly_at_threshold_is_kept() -> None:
    boxes = [[0, 0, 2, 1], [1, 0, 2, 1]]  # IoU exactly 0.5 (inter 1, union 2)
    assert _nms(boxes, [0.9, 0.8], [0, 0], 0.5) == [0, 1]
    assert _nms(boxes, [0.9, 0.8], [0, 0], 0.499) == [0]


def test_suppressed_box_does_not_suppress() -> None:
    # A overlaps B (0.54) and B overlaps C (0.54), A and C barely (0.25): greedy keeps A and
    # C, because B is gone before it could suppress C. A one-pass "suppressed by any
    # higher-scoring box" would wrongly drop C too.
    boxes = [[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]]
    assert _nms(boxes, [0.9, 0.8, 0.7], [0, 0, 0], 0.5) == [0, 2]


def test_long_suppression_chain() -> None:
    # Boxes sliding 1 px at a time: neighbours overlap above the threshold, every second
    # box is kept. The fixed-point iteration needs as many steps as the chain is long.
    n = 120
    boxes = [[2.0 * i, 0.0, 2.0 * i + 5.0, 5.0] for i in range(n)]  # IoU(i, i+1) = 3/7
    scores = [1.0 - i / 1000 for i in range(n)]
    kept = _nms(boxes, scores, [0] * n, 0.4)
    assert kept == list(range(0, n, 2))
    for block in (7, 32, 1000):
        got = batched_nms(
            torch.tensor(boxes),
            torch.tensor(scores),
            torch.zeros(n, dtype=torch.int64),
            0.4,
            block_size=block,
        )
        assert got.tolist() == kept


def test_empty_input() -> None:
    keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ShapeError, match=r"expected shape \(K, 4\), got \(3, 5\)"):
        batched_nms(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, dtype=torch.int64), 0.5)
    with pytest.raises(ShapeError, match=r"scores\): expected shape \(3,\), got \(2,\)"):
        batched_nms(torch.zeros(3, 4), torch.zeros(2), torch.zeros(3, dtype=torch.int64), 0.5)
    with pytest.raises(ShapeError, match=r"groups\): expected shape \(3,\), got \(3, 1\)"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, 1, dtype=torch.int64), 0.5)


def clustered_boxes(
    rng: np.random.Generator, n: int, n_clusters: int, n_groups: int, spread: float = 12.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` boxes jittered around ``n_clusters`` objects, distinct scores, random groups."""
    centres = rng.uniform(0, 640, (n_clusters, 2))
    sizes = rng.uniform(20, 200, (n_clusters, 2))
    which = rng.integers(0, n_clusters, n)
    c = centres[which] + rng.normal(0, spread, (n, 2))
    wh = sizes[which] * rng.uniform(0.7, 1.3, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    scores = (rng.permutation(n) + 1).astype(np.float32) / np.float32(n + 1)  # no ties
    groups = rng.integers(0, n_groups, n).astype(np.int64)
    return boxes, scores, groups


@pytest.mark.parametrize(
    ("seed", "n", "n_clusters", "n_groups", "thr"),
    [
        (0, 2500, 40, 1, 0.45),
        (1, 3000, 60, 8, 0.45),
        (2, 2500, 25, 3, 0.7),
        (3, 800, 10, 4, 0.3),
        (4, 2000, 300, 50, 0.5),
    ],
)
def test_matches_greedy_reference(
    seed: int, n: int, n_clusters: int, n_groups: int, thr: float
) -> None:
    rng = np.random.default_rng(seed)
    boxes, scores, groups = clustered_boxes(rng, n, n_clusters, n_groups)
    expected = nms_np(boxes, scores, groups, thr)
    assert n_clusters // 2 < len(expected) < n  # non-trivial: suppression happened
    got = batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), thr
    )
    np.testing.assert_array_equal(got.numpy(), expected)
    assert np.all(np.diff(scores[got.numpy()]) < 0)  # decreasing score


@pytest.mark.parametrize("block_size", [1, 64, 500])
def test_small_blocks_match_reference(block_size: int) -> None:
    rng = np.random.default_rng(10 + block_size)
    boxes, scores, groups = clustered_boxes(rng, 1200, 30, 5)
    expected = nms_np(boxes, scores, groups, 0.45)
    got = batched_nms(
        torch.from_numpy(boxes),
        torch.from_numpy(scores),
        torch.from_numpy(groups),
        0.45,
        block_size=block_size,
    )
    np.testing.assert_array_equal(got.numpy(), expected)


def test_tied_scores_match_reference() -> None:
    rng = np.random.default_rng(7)
    boxes, _, groups = clustered_boxes(rng, 1500, 20, 3)
    scores = np.round(rng.uniform(0.3, 0.9, 1500), 2).astype(np.float32)  # many ties
    expected = nms_np(boxes, scores, groups, 0.5)
    got = batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), 0.5
    )
    np.testing.assert_array_equal(got.numpy(), expected)


def test_max_candidates_keeps_the_best_scores() -> None:
    rng = np.random.default_rng(5)
    boxes, scores, groups = clustered_boxes(rng, 1000, 200, 4)
    expected = nms_np(boxes, scores, groups, 0.45, max_candidates=150)
    got = batched_nms(
        torch.from_numpy(boxes),
        torch.from_numpy(scores),
        torch.from_numpy(groups),
        0.45,
        max_candidates=150,
    )
    np.testing.assert_array_equal(got.numpy(), expected)
    assert scores[got.numpy()].min() >= np.sort(scores)[-150]
    full = batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), 0.45
    )
    assert len(full) > len(got)


def test_fp16_boxes_and_scores() -> None:
    rng = np.random.default_rng(9)
    boxes, scores, groups = clustered_boxes(rng, 600, 15, 2)
    b16, s16 = boxes.astype(np.float16), scores.astype(np.float16)
    expected = nms_np(b16.astype(np.float32), s16.astype(np.float32), groups, 0.45)
    got = batched_nms(torch.from_numpy(b16), torch.from_numpy(s16), torch.from_numpy(groups), 0.45)
    np.testing.assert_array_equal(got.numpy(), expected)
