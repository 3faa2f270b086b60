"""resize_bilinear_opencv gives cv2.resize(INTER_LINEAR)'s pixels exactly, on the CPU and the GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.resize import resize_bilinear_opencv
from streams.errors import ShapeError
from tests.optional import require_module

cv2 = require_module("cv2", 'the tracking extra: pip install -e ".[tracking]" (opencv-python-headless)')


def _cv2(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    out = [cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames]
    return np.stack([o.reshape(h, w, frames.shape[3]) for o in out])  # cv2 drops a single channel


def _frames(rng: np.random.Generator, n: int, h: int, w: int, c: int = 3) -> np.ndarray:
    """Noise over a smooth gradient: every grey level and every rounding case shows up."""
    ramp = (np.add.outer(np.arange(h) * 7, np.arange(w) * 3) % 256)[None, :, :, None]
    noise = rng.integers(-40, 41, (n, h, w, c))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def _random_cases(count: int, seed: int) -> list[tuple[int, int, int, int, int]]:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        src_h, src_w = (int(v) for v in rng.integers(1, 180, 2))
        h, w = (int(v) for v in rng.integers(1, 360, 2))
        cases.append((src_h, src_w, h, w, int(rng.choice([1, 3, 4]))))
    return cases


def test_bit_exact_over_random_sizes() -> None:
    """Down- and up-scaling, non-integer ratios, odd sizes, 1/3/4 channels, batches of two."""
    rng = np.random.default_rng(7)
    cases = _random_cases(160, seed=11)
    assert any(h < sh and w < sw for sh, sw, h, w, _ in cases) and any(h > sh and w > sw for sh, sw, h, w, _ in cases)
    for src_h, src_w, h, w, c in cases:
        x = _frames(rng, 2, src_h, src_w, c)
        got = resize_bilinear_opencv(torch.from_numpy(x), (h, w))
        assert got.dtype == torch.uint8 and tuple(got.shape) == (2, h, w, c)
        np.testing.assert_array_equal(got.numpy(), _cv2(x, (h, w)), err_msg=f"{src_h}x{src_w} -> {h}x{w}, {c} ch")


@pytest.mark.parametrize("src,dst", [
    ((1080, 1920), (360, 640)),    # a 1080p frame letterboxed at 640
    ((432, 768), (180, 320)),      # the parity tests' frames at imgsz 320
    ((480, 640), (240, 320)),      # exactly 2x: OpenCV takes its area path
    ((64, 96), (32, 48)),
    ((99, 75), (33, 25)),          # exactly 3x
    ((180, 320), (1080, 1920)),    # 6x up
    ((240, 320), (480, 640)),      # exactly 2x up
    ((37, 53), (37, 101)),         # one axis only
    ((37, 53), (12, 53)),
    ((1, 1), (5, 7)),              # a single pixel
    ((5, 7), (1, 1)),
    ((1, 9), (3, 4)),              # a single row / column
    ((9, 1), (4, 3)),
    ((333, 517), (211, 97)),
])
def test_bit_exact_edge_cases(src: tuple[int, int], dst: tuple[int, int]) -> None:
    x = _frames(np.random.default_rng(3), 2, *src)
    np.testing.assert_array_equal(resize_bilinear_opencv(torch.from_numpy(x), dst).numpy(), _cv2(x, dst))


def test_same_size_is_a_copy_and_views_are_read_as_such() -> None:
    x = torch.from_numpy(_frames(np.random.default_rng(4), 1, 40, 60))
    same = resize_bilinear_opencv(x, (40, 60))
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()
    view = x[:, 5:35, 10:50]  # not contiguous
    np.testing.assert_array_equal(resize_bilinear_opencv(view, (17, 23)).numpy(), _cv2(view.numpy(), (17, 23)))


def test_a_float_bilinear_is_not_bit_exact() -> None:
    """The comparison is sharp enough to fail: torch's float bilinear (DALI's filter is also
    one) rounds differently from OpenCV's fixed point in a good share of the pixels, and a
    single grey level anywhere breaks the equality."""
    x = _frames(np.random.default_rng(5), 1, 432, 768)
    ref = _cv2(x, (180, 320))
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    flt = torch.nn.functional.interpolate(t, size=(180, 320), mode="bilinear", align_corners=False, antialias=False)
    flt_u8 = flt.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    differ = (flt_u8 != ref).mean()
    assert differ > 0.01, f"only {differ:.2%} of the pixels differ"
    assert np.abs(flt_u8.astype(int) - ref).max() <= 1  # the same interpolation, rounded otherwise
    ours = resize_bilinear_opencv(torch.from_numpy(x), (180, 320)).numpy()
    np.testing.assert_array_equal(ours, ref)
    ours[0, 90, 160, 1] ^= 1
    assert not np.array_equal(ours, ref)


def test_a_batch_resized_in_chunks_is_still_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large batches are resized a few frames at a time (bounded int32 intermediates)."""
    import operators.resize as resize

    monkeypatch.setattr(resize, "_CHUNK_BYTES", 2 * 4 * 66 * 3 * 80)  # two frames of 80 source rows
    x = _frames(np.random.default_rng(8), 5, 97, 131)
    np.testing.assert_array_equal(resize_bilinear_opencv(torch.from_numpy(x), (45, 66)).numpy(), _cv2(x, (45, 66)))


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.uint8), np.zeros((1, 4, 4, 3), np.float32),
                                 np.zeros((1, 0, 4, 3), np.uint8)])
def test_rejects_what_is_not_a_uint8_frame_batch(bad: np.ndarray) -> None:
    with pytest.raises(ShapeError, match="uint8"):
        resize_bilinear_opencv(torch.from_numpy(bad), (2, 2))


@pytest.mark.parametrize("size", [(0, 4), (4, -1), (2.0, 3)])
def test_rejects_a_bad_size(size: tuple[int, int]) -> None:
    with pytest.raises(ShapeError, match="size"):
        resize_bilinear_opencv(torch.zeros((1, 4, 4, 3), dtype=torch.uint8), size)


@pytest.mark.gpu
def test_cuda_gives_the_cpu_pixels_on_a_side_stream() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rng = np.random.default_rng(6)
    stream = torch.cuda.Stream()
    for src_h, src_w, h, w, c in [*_random_cases(40, seed=12), (1080, 1920, 360, 640, 3), (480, 640, 240, 320, 3)]:
        x = _frames(rng, 3, src_h, src_w, c)
        with torch.cuda.stream(stream):
            got = resize_bilinear_opencv(torch.from_numpy(x).cuda(), (h, w))
        stream.synchronize()
        assert got.is_cuda
        np.testing.assert_array_equal(got.cpu().numpy(), _cv2(x, (h, w)), err_msg=f"{src_h}x{src_w} -> {h}x{w}")
