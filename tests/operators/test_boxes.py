"""Tests of operators.boxes: letterbox geometry, box conversions, IoU, mapping back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.boxes import (
    LetterboxGeometry,
    box_iou,
    cxcywh_to_xyxy,
    geometry_tensors,
    letterbox_geometry,
    to_source_pixels,
)
from operators.reference import box_iou_np, letterbox_to_source_np
from streams.errors import ShapeError


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


# (src_w, src_h, dst_w, dst_h) -> (resized_w, resized_h, pad_x, pad_y), worked out by hand.
LETTERBOX_CASES = [
    ((1920, 1080, 640, 640), (640, 360, 0, 140)),  # 16:9 landscape
    ((640, 480, 640, 640), (640, 480, 0, 80)),  # 4:3, no resize
    ((1080, 1920, 640, 640), (360, 640, 140, 0)),  # portrait
    ((1920, 1080, 640, 384), (640, 360, 0, 12)),  # into a 640x384 (w x h) input
    ((1920, 1080, 384, 640), (384, 216, 0, 212)),  # into a 384x640 (w x h) input
    ((1080, 1920, 640, 384), (216, 384, 212, 0)),
    ((1000, 333, 640, 640), (640, 213, 0, 213)),  # 333 * 0.64 = 213.12 rounds down
    ((100, 101, 64, 64), (63, 64, 0, 0)),  # odd padding 1 -> left 0 (floor)
    ((61, 64, 64, 64), (61, 64, 1, 0)),  # odd padding 3 -> left 1 (floor, not round-half-even)
    ((64, 57, 64, 64), (64, 57, 0, 3)),  # odd padding 7 -> top 3
    ((320, 240, 640, 640), (640, 480, 0, 80)),  # upscaling
    ((5000, 2, 640, 640), (640, 1, 0, 319)),  # a sliver keeps at least 1 px
]


@pytest.mark.parametrize(("src_dst", "expected"), LETTERBOX_CASES)
def test_letterbox_geometry_known_values(
    src_dst: tuple[int, int, int, int], expected: tuple[int, int, int, int]
) -> None:
    g = letterbox_geometry(*src_dst)
    assert (g.resized_w, g.resized_h, g.pad_x, g.pad_y) == expected
    assert (g.src_w, g.src_h, g.dst_w, g.dst_h) == src_dst
    assert g.scale_x == pytest.approx(g.resized_w / g.src_w)
    assert g.scale_y == pytest.approx(g.resized_h / g.src_h)
    assert all(isinstance(v, int) for v in (g.resized_w, g.resized_h, g.pad_x, g.pad_y))
    # The resized image fits on the canvas.
    assert g.pad_x + g.resized_w <= g.dst_w and g.pad_y + g.resized_h <= g.dst_h


def test_stretch_geometry() -> None:
    g = letterbox_geometry(1920, 1080, 640, 384, mode="stretch")
    assert (g.resized_w, g.resized_h, g.pad_x, g.pad_y) == (640, 384, 0, 0)
    assert g.scale_x == pytest.approx(1 / 3)
    assert g.scale_y == pytest.approx(384 / 1080)


@pytest.mark.parametrize("sizes", [(0, 480, 640, 640), (640, -1, 640, 640), (640, 480, 640.0, 640)])
def test_letterbox_geometry_rejects_bad_sizes(sizes: tuple[int, int, int, int]) -> None:
    with pytest.raises(ShapeError, match="positive integer sizes"):
        letterbox_geometry(*sizes)


def test_letterbox_geometry_rejects_bad_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        letterbox_geometry(640, 480, 640, 640, mode="crop")  # type: ignore[arg-type]


def test_cxcywh_to_xyxy() -> None:
    out = cxcywh_to_xyxy(torch.tensor([[50.0, 40.0, 20.0, 10.0], [0.0, 0.0, 3.0, 5.0]]))
    expected = torch.tensor([[40.0, 35.0, 60.0, 45.0], [-1.5, -2.5, 1.5, 2.5]])
    assert_close(out, expected)
    with pytest.raises(ShapeError, match=r"\(\.\.\., 4\)"):
        cxcywh_to_xyxy(torch.zeros(3, 5))


def test_box_iou_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0]])
    b = torch.tensor(
        [
            [0.0, 0.0, 2.0, 2.0],  # identical to a[0]
            [1.0, 1.0, 3.0, 3.0],  # a[0]: inter 1, union 7
            [5.0, 5.0, 6.0, 6.0],  # disjoint
            [1.0, 0.0, 2.0, 1.0],  # a[1]: inter 1, union 2
            [3.0, 3.0, 3.0, 3.0],  # degenerate, far away
        ]
    )
    iou = box_iou(a, b)
    assert iou.shape == (2, 5)
    expected = torch.tensor([[1.0, 1 / 7, 0.0, 0.25, 0.0], [0.5, 0.0, 0.0, 0.5, 0.0]])
    assert_close(iou, expected)
    degenerate = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(degenerate, degenerate).item() == 0.0  # empty union -> 0, not NaN


def test_box_iou_matches_reference_bitwise() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (300, 2)).astype(np.float32)
    wh = rng.uniform(1, 40, (300, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    got = box_iou(torch.from_numpy(boxes[:120]), torch.from_numpy(boxes)).numpy()
    np.testing.assert_array_equal(got, box_iou_np(boxes[:120], boxes))
    assert (got > 0).sum() > 120  # overlaps exist besides the diagonal


def test_box_iou_rejects_bad_shapes() -> None:
    with pytest.raises(ShapeError, match=r"expected shape \(N, 4\), got \(3, 5\)"):
        box_iou(torch.zeros(3, 5), torch.zeros(2, 4))


GEOMETRIES = [
    letterbox_geometry(1920, 1080, 640, 640),
    letterbox_geometry(640, 480, 640, 640),
    letterbox_geometry(1080, 1920, 640, 640),
    letterbox_geometry(1920, 1080, 640, 384),
    letterbox_geometry(1920, 1080, 384, 640),
    letterbox_geometry(1080, 1920, 640, 384),
    letterbox_geometry(1920, 1080, 640, 640, mode="stretch"),
    letterbox_geometry(640, 480, 384, 640, mode="stretch"),
]


def _source_boxes(g: LetterboxGeometry) -> np.ndarray:
    """Boxes at known source pixels, inside the frame, including its corners."""
    w, h = g.src_w, g.src_h
    return np.array(
        [
            [0.0, 0.0, 10.0, 20.0],
            [w - 50.0, h - 30.0, w, h],
            [123.25, 77.5, 456.75, 300.125],
            [w / 2 - 17.5, h / 3, w / 2 + 40.0, h / 2 + 1.5],
        ]
    )


def _forward(boxes: np.ndarray, g: LetterboxGeometry) -> np.ndarray:
    """Source pixels -> model-input pixels, as preprocessing places the image."""
    out = boxes.copy()
    out[:, [0, 2]] = boxes[:, [0, 2]] * g.scale_x + g.pad_x
    out[:, [1, 3]] = boxes[:, [1, 3]] * g.scale_y + g.pad_y
    return out


@pytest.mark.parametrize("g", GEOMETRIES, ids=lambda g: f"{g.src_w}x{g.src_h}->{g.dst_w}x{g.dst_h}")
def test_to_source_pixels_round_trip(g: LetterboxGeometry) -> None:
    src = _source_boxes(g)
    model = torch.tensor(_forward(src, g), dtype=torch.float32)
    pad, scale, size = geometry_tensors([g] * len(src), "cpu")
    back = to_source_pixels(model, pad, scale, size)
    assert back.dtype == torch.float32
    np.testing.assert_allclose(back.numpy(), src, atol=0.01)
    np.testing.assert_allclose(letterbox_to_source_np(model.numpy(), g), src, atol=0.01)


def test_to_source_pixels_uses_each_rows_geometry() -> None:
    g1 = letterbox_geometry(1920, 1080, 640, 640)
    g2 = letterbox_geometry(1080, 1920, 640, 640)
    src = np.array([[100.0, 200.0, 300.0, 400.0], [50.0, 60.0, 70.0, 80.0]])
    model = np.concatenate([_forward(src[:1], g1), _forward(src[1:], g2)])
    pad, scale, size = geometry_tensors([g1, g2], None)
    back = to_source_pixels(torch.tensor(model, dtype=torch.float32), pad, scale, size)
    np.testing.assert_allclose(back.numpy(), src, atol=0.01)


def test_to_source_pixels_clips_to_the_frame() -> None:
    g = letterbox_geometry(1920, 1080, 640, 640)  # pad_y = 140, scale 1/3
    model = torch.tensor(
        [
            [-20.0, 100.0, 700.0, 600.0],  # beyond the canvas on the left, right and bottom
            [10.0, 0.0, 20.0, 130.0],  # entirely in the top padding
            [600.0, 400.0, 660.0, 520.0],  # right edge beyond the frame
        ]
    )
    pad, scale, size = geometry_tensors([g] * 3)
    back = to_source_pixels(model, pad, scale, size).numpy()
    expected = np.array(
        [
            [0.0, 0.0, 1920.0, 1080.0],
            [30.0, 0.0, 60.0, 0.0],
            [1800.0, 780.0, 1920.0, 1080.0],
        ]
    )
    np.testing.assert_allclose(back, expected, atol=0.01)
    np.testing.assert_allclose(letterbox_to_source_np(model.numpy(), g), expected, atol=0.01)


def test_geometry_tensors_values() -> None:
    gs = [letterbox_geometry(1920, 1080, 640, 640), letterbox_geometry(640, 480, 640, 384)]
    pad, scale, size = geometry_tensors(gs)
    assert pad.shape == scale.shape == size.shape == (2, 2)
    assert pad.dtype == scale.dtype == size.dtype == torch.float32
    assert_close(pad, torch.tensor([[0.0, 140.0], [64.0, 0.0]]))
    assert_close(scale, torch.tensor([[1 / 3, 1 / 3], [0.8, 0.8]]))
    assert_close(size, torch.tensor([[1920.0, 1080.0], [640.0, 480.0]]))
    empty = geometry_tensors([])
    assert all(t.shape == (0, 2) for t in empty)


def test_to_source_pixels_rejects_bad_shapes() -> None:
    g = letterbox_geometry(640, 480, 640, 640)
    pad, scale, size = geometry_tensors([g] * 3)
    with pytest.raises(ShapeError, match=r"pad\): expected shape \(2, 2\), got \(3, 2\)"):
        to_source_pixels(torch.zeros(2, 4), pad, scale[:2], size[:2])
    with pytest.raises(ShapeError, match=r"boxes\): expected shape \(N, 4\)"):
        to_source_pixels(torch.zeros(3, 5), pad, scale, size)
