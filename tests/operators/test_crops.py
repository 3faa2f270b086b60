"""operators.crops: the vectorized crop-resize against its NumPy reference and torch's resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from operators.crops import crop_resize, crop_resize_reference


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
