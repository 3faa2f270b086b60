"""Live decoding on the GPU: clips paced in real time through the same ingest path, decoded
by an NVDEC session per stream (``decode: gpu``) or in batches of GOPs by DALI
(``decode: gop``), attributed per frame, detections in source pixels."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipelines.live import run_live
from streams.config import parse_config
from tests.media import write_clip

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("decode,mode,processes", [("gpu", "packets", 0), ("gpu", "packets", 2), ("gop", "gop", 0)])
def test_gpu_decode_of_paced_streams(tmp_path: Path, bright_model: Path, decode: str, mode: str,
                                     processes: int, caplog: pytest.LogCaptureFixture) -> None:
    """``processes: 2``: the streams are read by two ingest processes and their NVDEC frames
    reach the engine through GPU rings shared with the job's process (CUDA IPC). Every batch
    (partial ones included) replays a CUDA graph captured before the streams started."""
    clips = [write_clip(tmp_path / f"c{i}.mp4", "libx264", frames=60, width=w, height=h,
                        options={"g": "15", "bf": "0"})
             for i, (w, h) in enumerate([(320, 240), (640, 360), (360, 640)])]
    cfg = parse_config({
        "sources": [{"uri": f"file://{c}", "id": f"s{i}"} for i, c in enumerate(clips)],
        "model": {"path": str(bright_model), "input_size": [320, 320]},
        "engine": {"device": "cuda", "batch_size": 64},
        "live": {"decode": decode, "http": {"enabled": False}, "log_interval_s": 0,
                 "ingest": {"processes": processes}},
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
    })
    with caplog.at_level(logging.INFO, logger="engines.torch_engine"):
        summary = run_live(cfg, duration_s=11, warmup_s=4)  # warm-up: pipeline builds
    engine_log = [r.getMessage() for r in caplog.records if r.name == "engines.torch_engine"]
    assert any(m.startswith("captured 2 CUDA graph(s) for batches of 64") for m in engine_log), engine_log  # 2 workers
    assert not [m for m in engine_log if "eagerly" in m or "disabled" in m], engine_log
    assert summary.mode == mode
    assert summary.batch_errors == 0
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    for i in range(3):
        mine = [r for r in records if r["source"] == f"s{i}"]
        assert len(mine) >= 100, f"s{i}: {len(mine)} frames in 7 s at 25 fps"
        idx = sorted(r["frame_index"] for r in mine)
        assert idx == list(range(idx[0], idx[0] + len(idx))), "frames dropped or duplicated"
        # the white square: detected on (almost) every frame, at the right place
        hits = 0
        for r in mine:
            from tests.media import square_position

            x1, y1, x2, y2 = square_position(r["frame_index"] % 60, r["width"], r["height"])
            for d in r["detections"]:
                cx, cy = (d["box"][0] + d["box"][2]) / 2, (d["box"][1] + d["box"][3]) / 2
                if x1 - 6 <= cx <= x2 + 6 and y1 - 6 <= cy <= y2 + 6:
                    hits += 1
                    break
        assert hits >= 0.9 * len(mine), f"s{i}: square found in {hits}/{len(mine)} frames"
        p95 = summary.streams[f"s{i}"].latency_quantile(0.95)
        assert p95 is not None and p95 < 2.0
