"""NVDEC sessions through the driver API (GPU only): every frame, in display order, right content."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from operators.color import nv12_to_rgb_reference
from tests.media import pyav_frames, square_position, write_clip

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC)")]


@pytest.mark.parametrize("codec,encoder", [("h264", "libx264"), ("hevc", "libx265")])
def test_session_decodes_every_frame_in_order(tmp_path: Path, codec: str, encoder: str) -> None:
    from benchmarks.live_sim import annexb_packets
    from pipelines.nvdec import NvdecSession

    clip = write_clip(tmp_path / f"c.{codec}.mp4", encoder, frames=60, width=320, height=240,
                      options={"g": "12", "bf": "2"} if codec == "h264" else {"x265-params": "keyint=12:bframes=2"})
    got_codec, packets = annexb_packets(clip)
    assert got_codec == codec
    out = []
    with NvdecSession(codec, target=(160, 120), device_id=0) as dec:
        for data, pts in packets:
            out += dec.decode(data, pts)
        out += dec.flush()
    assert [f.pts for f in out] == [p for _, p in pyav_frames(clip)]
    assert all(tuple(f.nv12.shape) == (180, 160) and f.nv12.is_cuda for f in out)
    assert (out[0].width, out[0].height) == (320, 240)
    hits = 0
    for i, f in enumerate(out):
        rgb = nv12_to_rgb_reference(f.nv12.cpu().numpy())
        x1, y1, x2, y2 = (v // 2 for v in square_position(i, 320, 240))
        inside = rgb[y1 + 2:y2 - 2, x1 + 2:x2 - 2].mean()
        hits += inside > 200 and rgb[:, :, 1].mean() < 80
    assert hits >= 0.95 * len(out), f"square found in {hits} of {len(out)} frames"
