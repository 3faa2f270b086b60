"""The full-size NV12 ops of the live GPU cascade path: torch vs their NumPy references.

:func:`operators.color.nv12_resize` makes the letterbox-size frames NVDEC would have made
(the detector's input), :func:`operators.color.nv12_to_rgb` the RGB frame a crop is cut from.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from operators.color import nv12_resize, nv12_resize_reference, nv12_to_rgb, nv12_to_rgb_reference
from streams.errors import ShapeError
from tests.media import render


def _nv12(rgb: np.ndarray) -> np.ndarray:
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="nv12").to_ndarray()


def _random_nv12(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)


@pytest.mark.parametrize("standard", [601, 709])
def test_nv12_to_rgb_is_the_reference(standard: int) -> None:
    frames = [_random_nv12(1, 48, 64), _nv12(render(5, 64, 48))]
    for f in frames:
        got = nv12_to_rgb(torch.from_numpy(f), standard).numpy()
        ref = nv12_to_rgb_reference(f, standard)
        assert got.shape == (48, 64, 3) and got.dtype == np.uint8
        # the same float32 operations in the same order: equal (one level where a .5 rounds apart)
        diff = np.abs(got.astype(int) - ref.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    batch = torch.from_numpy(np.stack(frames))  # [2, 72, 64]: a batch converts row by row
    out = nv12_to_rgb(batch, standard)
    assert out.shape == (2, 48, 64, 3)
    assert torch.equal(out[1], nv12_to_rgb(torch.from_numpy(frames[1]), standard))


def test_nv12_to_rgb_of_a_real_frame_is_close_to_the_original() -> None:
    rgb = render(9, 96, 64)
    got = nv12_to_rgb(torch.from_numpy(_nv12(rgb))).numpy().astype(int)
    assert np.abs(got - rgb.astype(int)).mean() < 2.5  # through 4:2:0 and back


@pytest.mark.parametrize("src,dst", [((96, 128), (48, 64)),    # exactly 1/2 (1280x720 -> 640x360)
                                     ((108, 192), (36, 64)),   # 1/3 (1920x1080 -> 640x360)
                                     ((90, 160), (54, 96)),    # 0.6
                                     ((40, 60), (64, 96))])    # up
def test_nv12_resize_is_the_reference(src: tuple[int, int], dst: tuple[int, int]) -> None:
    f = _random_nv12(3, *src)
    (got,) = nv12_resize([torch.from_numpy(f)], [dst])
    ref = nv12_resize_reference(f, dst)
    assert tuple(got.shape) == (dst[0] * 3 // 2, dst[1]) == ref.shape and got.dtype == torch.uint8
    # float32 (torch) vs float64 (reference): one level apart where a value is a .5 tie, never more
    diff = np.abs(got.numpy().astype(int) - ref.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.1, (diff.max(), diff.mean())


def test_nv12_resize_keeps_the_chroma_with_its_pixels() -> None:
    """A red square on grey, resized as NV12 and converted, is the square resized as RGB."""
    rgb = np.full((96, 128, 3), 114, np.uint8)
    rgb[16:64, 32:96] = (220, 30, 40)
    (small,) = nv12_resize([torch.from_numpy(_nv12(rgb))], [(48, 64)])
    out = nv12_to_rgb(small).numpy().astype(int)
    inside, outside = out[12:28, 20:44], out[36:, :]
    assert np.abs(inside - (220, 30, 40)).max() <= 8, inside.mean(axis=(0, 1))
    assert np.abs(outside - 114).max() <= 4


def test_nv12_resize_of_a_batch_mixes_sizes_and_keeps_its_order() -> None:
    a, b, c = _random_nv12(1, 96, 128), _random_nv12(2, 48, 64), _random_nv12(4, 96, 128)
    frames = [torch.from_numpy(x) for x in (a, b, c)]
    out = nv12_resize(frames, [(48, 64), (48, 64), (24, 32)], chunk=1)
    assert out[1] is frames[1]  # already at its size: not copied
    assert torch.equal(out[0], nv12_resize([frames[0]], [(48, 64)])[0])
    assert tuple(out[2].shape) == (36, 32)
    assert torch.equal(out[2], nv12_resize([frames[2]], [(24, 32)])[0])
    # two frames of one shape to one size go through one stacked call: same as one at a time
    both = nv12_resize([frames[0], frames[2]], [(48, 64), (48, 64)])
    assert torch.equal(both[0], out[0]) and torch.equal(both[1], nv12_resize([frames[2]], [(48, 64)])[0])


def test_shape_errors_name_the_frame() -> None:
    f = torch.zeros((72, 64), dtype=torch.uint8)
    with pytest.raises(ShapeError, match=r"nv12_resize\(frames\[1\]\)"):
        nv12_resize([f, f[:-1]], [(24, 32), (24, 32)])
    with pytest.raises(ShapeError, match=r"nv12_resize\(sizes\[0\]\).*\(23, 32\)"):
        nv12_resize([f], [(23, 32)])
    with pytest.raises(ShapeError, match="2 frames but 1 sizes"):
        nv12_resize([f, f], [(24, 32)])
    with pytest.raises(ShapeError, match="nv12_to_rgb"):
        nv12_to_rgb(f[:, :63])
