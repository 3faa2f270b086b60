"""NV12 -> RGB letterboxed model input: torch op vs NumPy reference vs FFmpeg (PyAV)."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from operators.boxes import letterbox_geometry
from operators.color import nv12_letterbox, nv12_to_rgb_reference, standard_of
from streams.errors import ShapeError
from tests.media import render


def _nv12(rgb: np.ndarray) -> np.ndarray:
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="nv12").to_ndarray()


def test_reference_matches_ffmpeg_bt601() -> None:
    rgb = render(7, 64, 48)
    rgb[10:20, 5:40] = (200, 30, 90)
    nv12 = _nv12(rgb)
    assert nv12.shape == (72, 64)
    ours = nv12_to_rgb_reference(nv12, 601).astype(int)
    ffmpeg = av.VideoFrame.from_ndarray(nv12, format="nv12").to_ndarray(format="rgb24").astype(int)
    # FFmpeg interpolates chroma (we repeat it) and rounds its fast path differently
    assert np.abs(ours - ffmpeg).mean() < 3.0
    # through 4:2:0 and back: at least as close to the original as FFmpeg's own conversion
    assert np.abs(ours - rgb.astype(int)).mean() <= np.abs(ffmpeg - rgb.astype(int)).mean()
    assert np.abs(ours - rgb.astype(int)).mean() < 2.0


def test_letterbox_places_normalises_and_pads() -> None:
    g1 = letterbox_geometry(64, 36, 64, 64)  # 64x36 at y=14
    g2 = letterbox_geometry(30, 40, 64, 64)  # portrait: 48x64 at x=8
    a, b = render(3, g1.resized_w, g1.resized_h), render(9, g2.resized_w, g2.resized_h)
    na, nb = _nv12(a), _nv12(b)
    out = nv12_letterbox([torch.from_numpy(na), torch.from_numpy(nb)], [g1, g2], (64, 64),
                         mean=(0, 0, 0), std=(255, 255, 255), pad_value=114, dtype=torch.float32,
                         channels_last=False, standards=[601, 709])
    assert out.shape == (2, 3, 64, 64)
    got_a = out[0, :, g1.pad_y:g1.pad_y + g1.resized_h, g1.pad_x:g1.pad_x + g1.resized_w]
    ref_a = torch.from_numpy(nv12_to_rgb_reference(na, 601)).permute(2, 0, 1).float() / 255
    assert torch.allclose(got_a, ref_a, atol=1 / 255 + 1e-6)
    got_b = out[1, :, g2.pad_y:g2.pad_y + g2.resized_h, g2.pad_x:g2.pad_x + g2.resized_w]
    ref_b = torch.from_numpy(nv12_to_rgb_reference(nb, 709)).permute(2, 0, 1).float() / 255
    assert torch.allclose(got_b, ref_b, atol=1 / 255 + 1e-6)
    assert torch.all(out[0, :, : g1.pad_y] == 114 / 255)
    assert torch.all(out[1, :, :, : g2.pad_x] == 114 / 255)


def test_channels_last_fp16_and_shape_errors() -> None:
    g = letterbox_geometry(32, 32, 32, 32)
    f = torch.from_numpy(_nv12(render(1, 32, 32)))
    x = nv12_letterbox([f], [g], (32, 32), (0, 0, 0), (1, 1, 1))
    assert x.dtype == torch.float16 and x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ShapeError, match=r"frames\[0\]"):
        nv12_letterbox([f[:-2]], [g], (32, 32), (0, 0, 0), (1, 1, 1))
    assert standard_of(1) == 709 and standard_of(2) == 601 and standard_of(6) == 601
