"""operators.crops: the vectorized crop-resize and crop-letterbox against their NumPy references,
torch's resize and (letterbox) Ultralytics' own steps with OpenCV."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from operators.boxes import letterbox_geometry
from operators.crops import (
    PAD_VALUE,
    crop_letterbox,
    crop_letterbox_reference,
    crop_resize,
    crop_resize_reference,
    letterbox_regions,
)
from tests.optional import require_module


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_resize_matches_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (3, 37, 53, 3), dtype=np.uint8)
    x1 = rng.uniform(-10, 50, 12)
    y1 = rng.uniform(-10, 30, 12)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0.5, 40, 12), y1 + rng.uniform(0.5, 30, 12)], 1).astype(np.float32)
    which = rng.integers(0, 3, 12)
    got = crop_resize(torch.from_numpy(frames), torch.from_numpy(which), torch.from_numpy(boxes), (7, 9)).numpy()
    want = crop_resize_reference(frames, which, boxes, (7, 9))
    assert got.shape == (12, 3, 7, 9) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_whole_frame_box_is_torchs_bilinear_resize() -> None:
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (2, 40, 60, 3), dtype=np.uint8)
    got = crop_resize(torch.from_numpy(frames), torch.tensor([1]), torch.tensor([[0.0, 0.0, 60.0, 40.0]]), (10, 15))
    ref = F.interpolate(torch.from_numpy(frames[1]).permute(2, 0, 1)[None].float() / 255, size=(10, 15),
                        mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_the_crop_comes_from_the_right_frame_and_place() -> None:
    frames = np.zeros((2, 20, 20, 3), np.uint8)
    frames[1, 5:10, 12:18] = (255, 0, 0)  # a red block in frame 1 only
    got = crop_resize(torch.from_numpy(frames), torch.tensor([1, 0]), torch.tensor([[12.0, 5, 18, 10]] * 2), (4, 4))
    assert torch.all(got[0, 0] == 1.0) and torch.all(got[0, 1:] == 0)
    assert torch.all(got[1] == 0)


def test_no_boxes_give_an_empty_batch_and_bad_shapes_are_refused() -> None:
    frames = torch.zeros((1, 8, 8, 3), dtype=torch.uint8)
    assert crop_resize(frames, torch.zeros(0, dtype=torch.int64), torch.zeros((0, 4)), (5, 6)).shape == (0, 3, 5, 6)
    with pytest.raises(ValueError, match=r"frames: expected shape \(N, H, W, 3\), got \(8, 8, 3\)"):
        crop_resize(frames[0], torch.zeros(1, dtype=torch.int64), torch.zeros((1, 4)), (2, 2))
    with pytest.raises(ValueError, match=r"boxes: expected shape \(K, 4\), got \(1, 3\)"):
        crop_resize(frames, torch.zeros(1, dtype=torch.int64), torch.zeros((1, 3)), (2, 2))
    with pytest.raises(ValueError, match=r"frame_index: expected shape \(2,\), got \(1,\)"):
        crop_resize(frames, torch.zeros(1, dtype=torch.int64), torch.zeros((2, 4)), (2, 2))


def _random_regions(rng: np.random.Generator, k: int, width: int, height: int) -> np.ndarray:
    x1 = rng.uniform(-10, width - 1, k)
    y1 = rng.uniform(-10, height - 1, k)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0.2, 50, k), y1 + rng.uniform(0.2, 40, k)], 1)
    return letterbox_regions(boxes, width, height)


@pytest.mark.parametrize(("seed", "size"), [(0, (16, 20)), (1, (24, 24)), (2, (9, 31))])
def test_crop_letterbox_matches_the_reference(seed: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (3, 37, 53, 3), dtype=np.uint8)
    regions = _random_regions(rng, 14, 53, 37)
    which = rng.integers(0, 3, 14)
    got = crop_letterbox(torch.from_numpy(frames), torch.from_numpy(which), torch.from_numpy(regions), size)
    crops, pad, scale = crop_letterbox_reference(frames, which, regions, size)
    assert got.crops.shape == (14, 3, *size) and got.crops.dtype == torch.float32
    np.testing.assert_allclose(got.crops.numpy(), crops, atol=1e-5)
    np.testing.assert_array_equal(got.pad.numpy(), pad)
    np.testing.assert_allclose(got.scale.numpy(), scale, rtol=1e-6)
    # the geometry is letterbox_geometry's, the one the postprocess maps boxes back with
    for k, (x1, y1, x2, y2) in enumerate(regions.tolist()):
        g = letterbox_geometry(x2 - x1, y2 - y1, size[1], size[0])
        assert (g.pad_x, g.pad_y) == tuple(got.pad[k].tolist())
        assert got.scale[k].tolist() == pytest.approx([g.scale_x, g.scale_y])
    assert bool((got.crops == PAD_VALUE).any())  # some crops are padded


def test_crop_letterbox_is_ultralytics_letterbox_of_the_cut_region() -> None:
    """Ultralytics' LetterBox: cv2.resize (INTER_LINEAR) of the region to round(side * r), then
    copyMakeBorder with grey 114; the same image to within OpenCV's 8-bit rounding."""
    cv2 = require_module("cv2", "the tracking extra")
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, (1, 90, 120, 3), dtype=np.uint8)
    regions = np.array([[10, 5, 70, 35], [0, 0, 120, 90], [100, 40, 117, 89], [50, 50, 58, 53]], np.int64)
    size = (64, 48)  # (h, w)
    got = crop_letterbox(torch.from_numpy(frames), torch.zeros(4, dtype=torch.int64), torch.from_numpy(regions), size)
    for k, (x1, y1, x2, y2) in enumerate(regions.tolist()):
        img = frames[0, y1:y2, x1:x2]
        h, w = img.shape[:2]
        r = min(size[0] / h, size[1] / w)
        new_w, new_h = round(w * r), round(h * r)
        if (new_w, new_h) != (w, h):
            img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        dw, dh = (size[1] - new_w) / 2, (size[0] - new_h) / 2
        top, bottom = round(dh - 0.1), round(dh + 0.1)
        left, right = round(dw - 0.1), round(dw + 0.1)
        want = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
        diff = np.abs(got.crops[k].permute(1, 2, 0).numpy() * 255 - want.astype(np.float32))
        assert diff.max() <= 1.0, (k, diff.max())
        assert got.pad[k].tolist() == [left, top]


def test_a_region_of_the_inputs_size_is_copied_as_it_is() -> None:
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
    got = crop_letterbox(torch.from_numpy(frames), torch.tensor([1]), torch.tensor([[5, 7, 25, 19]]), (12, 20))
    want = torch.from_numpy(frames[1, 7:19, 5:25]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(got.crops[0], want, atol=1e-6, rtol=0)
    assert got.pad.tolist() == [[0.0, 0.0]] and got.scale.tolist() == [[1.0, 1.0]]


def test_a_point_maps_back_through_pad_and_scale() -> None:
    """A one-pixel white dot lands where (p - region origin) * scale + pad says."""
    frames = np.zeros((1, 50, 80, 3), np.uint8)
    frames[0, 30, 44] = 255
    region = torch.tensor([[40, 20, 60, 50]])  # 20 x 30: scale 2 into 60 x 60, pad x 10
    got = crop_letterbox(torch.from_numpy(frames), torch.tensor([0]), region, (60, 60))
    assert got.pad.tolist() == [[10.0, 0.0]] and got.scale.tolist() == [[2.0, 2.0]]
    y, x = np.unravel_index(int(got.crops[0, 0].argmax()), (60, 60))
    # the dot's centre (44.5, 30.5) in frame pixels -> (4.5 * 2 + 10, 10.5 * 2) = (19, 21) crop pixels
    assert abs(x + 0.5 - 19) <= 0.5 and abs(y + 0.5 - 21) <= 0.5


def test_letterbox_regions_grow_to_whole_pixels_inside_the_frame() -> None:
    boxes = np.array([[10.2, 5.7, 20.1, 9.0], [-5, -3, 4.5, 2.2], [70.5, 40, 90, 70], [30.4, 8.2, 30.6, 8.3],
                      [80, 10, 85, 12]], np.float32)
    got = letterbox_regions(boxes, 80, 50)
    assert got.dtype == np.int64
    assert got.tolist() == [[10, 5, 21, 9], [0, 0, 5, 3], [70, 40, 80, 50], [30, 8, 31, 9], [79, 10, 80, 12]]


def test_crop_letterbox_refuses_bad_shapes_and_regions() -> None:
    frames = torch.zeros((1, 8, 8, 3), dtype=torch.uint8)
    empty = crop_letterbox(frames, torch.zeros(0, dtype=torch.int64), torch.zeros((0, 4), dtype=torch.int64), (5, 6))
    assert empty.crops.shape == (0, 3, 5, 6) and empty.pad.shape == empty.scale.shape == (0, 2)
    with pytest.raises(ValueError, match=r"regions: expected shape \(K, 4\), got \(1, 3\)"):
        crop_letterbox(frames, torch.zeros(1, dtype=torch.int64), torch.zeros((1, 3), dtype=torch.int64), (2, 2))
    with pytest.raises(ValueError, match="non-empty whole-pixel regions inside the 8x8 frame"):
        crop_letterbox(frames, torch.zeros(1, dtype=torch.int64), torch.tensor([[2, 2, 2, 5]]), (2, 2))
    with pytest.raises(ValueError, match="inside the 8x8 frame"):
        crop_letterbox(frames, torch.zeros(1, dtype=torch.int64), torch.tensor([[2, 2, 9, 5]]), (2, 2))


@pytest.mark.gpu
def test_crop_letterbox_on_cuda_gives_the_cpus_crops() -> None:
    rng = np.random.default_rng(11)
    frames = rng.integers(0, 256, (2, 120, 200, 3), dtype=np.uint8)
    regions = _random_regions(rng, 20, 200, 120)
    which = rng.integers(0, 2, 20)
    cpu = crop_letterbox(torch.from_numpy(frames), torch.from_numpy(which), regions, (48, 64))
    gpu = crop_letterbox(torch.from_numpy(frames).cuda(), torch.from_numpy(which).cuda(), regions, (48, 64))
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, atol=1e-5, rtol=0)
