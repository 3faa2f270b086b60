"""The fixed-shape postprocess path (used on CUDA) against the exact path and the reference.

Run on the CPU here: the arithmetic is the same torch code on both devices; GPU runs of the
whole pipeline (``pytest -m gpu``) take this path by default.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import operators.postprocess as pp_module
from operators.boxes import geometry_tensors, letterbox_geometry
from operators.decode import OutputLayout
from operators.fixed_nms import fixed_yolo_nms, pack, unpack
from operators.postprocess import PostprocessParams, postprocess
from operators.reference import postprocess_np
from tests.operators.test_postprocess import (
    NAMES,
    PARAMS,
    assert_same,
    make_geometries,
    make_yolov5,
    make_yolov8,
)


def _scene(layout: OutputLayout, seed: int, batch: int = 6, n: int = 600) -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(seed)
    dst = (640, 640) if seed % 2 == 0 else (640, 384)
    maker = make_yolov8 if layout == "yolov8" else make_yolov5
    pred = maker(rng, batch, n, dst, (2,), (1, 4))
    return pred, make_geometries(rng, batch, dst, (1, 4))


@pytest.mark.parametrize("layout", ["yolov8", "yolov5"])
@pytest.mark.parametrize("params_name", list(PARAMS))
@pytest.mark.parametrize(("seed", "dtype"), [(0, np.float32), (1, np.float16), (2, np.float32), (3, np.float16)])
def test_fixed_path_equals_exact_path_and_reference(layout: OutputLayout, params_name: str, seed: int,
                                                    dtype: type) -> None:
    pred, geoms = _scene(layout, seed)
    pred = pred.astype(dtype)
    params = PARAMS[params_name]
    fixed = postprocess([torch.from_numpy(pred)], layout, geoms, params, NAMES, fixed_shapes=True)
    exact = postprocess([torch.from_numpy(pred)], layout, geoms, params, NAMES, fixed_shapes=False)
    assert_same(fixed, exact)
    assert_same(fixed, postprocess_np([pred], layout, geoms, params, NAMES))
    assert sum(len(d) for d in fixed if d is not None) > 0


def test_frames_over_the_candidate_cap_are_flagged_and_redone_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    pred, geoms = _scene("yolov8", 5)
    valid = [g for g in geoms if g is not None]
    rows = torch.tensor([i for i, g in enumerate(geoms) if g is not None])
    x = torch.from_numpy(pred)[rows]
    pad, scale, size = geometry_tensors(valid, "cpu")
    _, _, ok = fixed_yolo_nms(x, "yolov8", pad, scale, size, 0.25, 0.45, 300, candidates=8)
    assert not bool(ok.all())  # these scenes have more than 8 candidates per frame
    small = functools.partial(fixed_yolo_nms, candidates=8)
    monkeypatch.setattr(pp_module, "fixed_yolo_nms", small)
    got = postprocess([torch.from_numpy(pred)], "yolov8", geoms, PostprocessParams(), NAMES, fixed_shapes=True)
    assert_same(got, postprocess([torch.from_numpy(pred)], "yolov8", geoms, PostprocessParams(), NAMES,
                                 fixed_shapes=False))


def _chain(length: int) -> torch.Tensor:
    """One yolov8 frame: ``length`` boxes in a row, each overlapping the next by IoU ~0.6 (and the
    one after by less than 0.45), scores decreasing: greedy NMS keeps every other box."""
    n = length
    pred = torch.zeros((1, 4 + 2, n))
    pred[0, 0] = 100 + torch.arange(n, dtype=torch.float32) * 25  # cx
    pred[0, 1] = 100  # cy
    pred[0, 2] = 100  # w
    pred[0, 3] = 100  # h
    pred[0, 4] = 0.9 - torch.arange(n, dtype=torch.float32) * 0.01
    return pred


def test_a_long_suppression_chain_is_not_ok_with_too_few_iterations() -> None:
    pred = _chain(12)
    g = [letterbox_geometry(640, 640, 640, 640)]
    pad, scale, size = geometry_tensors(g, "cpu")
    table, count, ok = fixed_yolo_nms(pred, "yolov8", pad, scale, size, 0.25, 0.45, 300, iterations=2)
    assert not bool(ok[0])
    table, count, ok = fixed_yolo_nms(pred, "yolov8", pad, scale, size, 0.25, 0.45, 300, iterations=16)
    assert bool(ok[0])
    exact = postprocess([pred], "yolov8", g, PostprocessParams(), ("a", "b"), fixed_shapes=False)[0]
    assert exact is not None and int(count[0]) == len(exact) == 6
    np.testing.assert_array_equal(table[0, : int(count[0]), 4].numpy(), exact.confidence)
    # and postprocess itself gets the exact answer whatever the iterations
    got = postprocess([pred], "yolov8", g, PostprocessParams(), ("a", "b"), fixed_shapes=True)[0]
    assert got is not None
    np.testing.assert_array_equal(got.confidence, exact.confidence)


def test_pack_round_trip() -> None:
    table = torch.arange(2 * 3 * 6, dtype=torch.float32).reshape(2, 3, 6)
    count, ok = torch.tensor([3, 1]), torch.tensor([True, False])
    t, c, o = unpack(pack(table, count, ok), 3)
    assert torch.equal(t, table) and torch.equal(c, count) and torch.equal(o, ok)
