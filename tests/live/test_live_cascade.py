"""A live job with a cascade on the CPU path: real RTSP cameras, each detection classified on a
crop of the camera's full-resolution frame; and the ``gop`` decode path, which decodes and
scales each GOP in one DALI graph and so returns no source pixels, refused with the reason
before any work (the NVDEC ``packets`` path decodes full-size frames for a cascade:
tests/pipelines/test_live_cascade_gpu.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.live import run_live
from streams.config import parse_config
from streams.errors import ConfigError

pytestmark = pytest.mark.slow


class _Brightness(torch.nn.Module):
    """'bright' when the mean of the crop's centre is above one half, else 'dark'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, :, 5:11, 5:11].mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], dim=1) * 10.0


def test_live_cameras_get_attributes_from_full_resolution_crops(
        rtsp_servers, bright_model: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = rtsp_servers([f"{c}:pattern=ball,width=320,height=240,fps=10,gop=10" for c in ("a", "b")])
    model = tmp_path / "bright.ts"
    torch.jit.save(torch.jit.script(_Brightness()), str(model))
    cfg = parse_config({
        "sources": [{"uri": server.url(c), "id": c} for c in ("a", "b")],
        "model": {"path": str(bright_model), "input_size": [256, 256]},
        "engine": {"device": "cpu", "batch_size": 8},
        "live": {"decode": "cpu", "http": {"enabled": False}, "batch": {"max_wait_ms": 50}},
        "secondary": [{"name": "tone", "model": str(model), "labels": ["dark", "bright"], "input_size": [16, 16]}],
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
    })
    summary = run_live(cfg, duration_s=8.0)
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()
               if x.startswith('{"source"')]
    dets = [d for r in records for d in r["detections"]]
    assert {r["source"] for r in records} == {"a", "b"}
    assert len(dets) > 20
    assert all(d["attributes"]["tone"][0] == "bright" for d in dets)  # the white ball
    report = summary.stages["CascadeStage"]["models"]["tone"]
    assert report["classified"] == len(dets) and report["device"] == "cpu"


def test_live_gpu_decode_with_a_cascade_is_refused_before_work(tmp_path: Path) -> None:
    from pipelines.live import LiveRunner

    cfg = parse_config({"sources": [{"uri": "rtsp://127.0.0.1:1/x", "id": "x"}],
                        "live": {"decode": "gop"}, "engine": {"device": "cpu"},
                        "secondary": [{"name": "c", "model": str(tmp_path / "m.onnx")}]})
    runner = LiveRunner(cfg)
    with pytest.raises(ConfigError, match=r"secondary: .*set live\.decode: cpu"):
        runner._mode("cuda:0", fell_back=False)
