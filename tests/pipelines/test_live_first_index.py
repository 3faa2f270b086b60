"""A camera added to a live job with a first frame index (how ``pipelines.ray_live`` restarts
a camera whose Ray worker died: in the next epoch, from 2**40) passes the per-source stages:
the job's reorder buffer starts the camera at that index instead of waiting for frame 0."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.live import LiveRunner, LiveSummary
from streams.config import parse_config
from streams.live.types import StreamSpec
from tests.live.helpers import wait_until
from tests.media import write_clip
from tests.optional import require_module

pytestmark = pytest.mark.slow


def _indices(path: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            r = json.loads(line)
            out.setdefault(r["source"], []).append(r["frame_index"])
    return out


def test_a_camera_numbered_from_its_epoch_reaches_the_tracker_and_the_sinks(bright_model: Path,
                                                                             tmp_path: Path) -> None:
    require_module("trackers", "the tracking extra: trackers")
    clip = write_clip(tmp_path / "c.mp4", frames=30, width=160, height=96, fps=15)
    out = tmp_path / "d.jsonl"
    cfg = parse_config({
        "sources": [f"file://{clip}"],
        "model": {"path": str(bright_model), "input_size": [128, 128]},
        "engine": {"device": "cpu", "batch_size": 8},
        "tracker": {"type": "bytetrack"},
        "live": {"decode": "cpu", "log_interval_s": 0, "http": {"enabled": False}, "batch": {"max_wait_ms": 50}},
        "sinks": [{"type": "jsonl", "path": str(out)}],
    })
    runner = LiveRunner(replace(cfg, sources=[]), cameras_later=True)  # cameras come as pipelines.ray_live adds them
    summary: list[LiveSummary] = []
    job = threading.Thread(target=lambda: summary.append(runner.run()), daemon=True)
    job.start()
    try:
        assert wait_until(lambda: runner.manager is not None, 120)
        assert runner.manager is not None
        runner.manager.add_stream(StreamSpec("moved", f"file://{clip}"), first_frame_index=2**40)
        runner.manager.add_stream(StreamSpec("first", f"file://{clip}"))
        assert wait_until(lambda: all(len(v) >= 20 for v in _indices(out).values()) and len(_indices(out)) == 2,
                          60), _indices(out)
    finally:
        runner.stop_event.set()
        job.join(60)
    assert summary, "the live job did not stop"
    got = _indices(out)
    assert got["moved"][0] == 2**40 and got["first"][0] == 0
    for sid, indices in got.items():
        assert indices == sorted(set(indices)), sid  # in order, each once
    tracks = summary[0].stages["TrackerStage"]["sources"]
    assert set(tracks) == {"moved", "first"}, tracks
