"""A live job stopped as asked sends one summary record per camera to the sinks that take
them (issue 26: summaries reach the network sinks and databases from live jobs too), with
the tracker's part about each camera; the SQLite sink stands for them (the network sinks
share its ``write_summary`` path: ``tests/streams/sinks_network``)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pipelines.live import run_live
from streams.config import parse_config
from tests.media import write_clip
from tests.optional import require_module

pytestmark = pytest.mark.slow

require_module("trackers", "the tracking extra: trackers")  # CI: fails when missing


def test_a_stopped_live_job_writes_one_summary_per_camera(bright_model: Path, tmp_path: Path) -> None:
    clips = [write_clip(tmp_path / f"cam{i}.mp4", frames=60, width=160, height=96, fps=15) for i in range(2)]
    db = tmp_path / "out.db"
    cfg = parse_config({
        "sources": [{"uri": f"file://{c}", "id": c.stem} for c in clips],
        "model": {"path": str(bright_model), "input_size": [128, 128]},
        "engine": {"device": "cpu", "batch_size": 8},
        "tracker": {"type": "bytetrack"},
        "live": {"decode": "cpu", "http": {"enabled": False}, "batch": {"max_wait_ms": 50}},
        "sinks": [{"type": "sqlite", "path": str(db)}],
    })
    summary = run_live(cfg, duration_s=4.0)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT source, frames, detections, stages FROM fovea_summaries ORDER BY source").fetchall()
        frames = dict(con.execute("SELECT source, count(*) FROM fovea_frames GROUP BY source").fetchall())
    assert [r[0] for r in rows] == ["cam0", "cam1"]
    for source, n_frames, _, stages in rows:
        assert n_frames == frames[source] > 0  # what the sink was given for the camera
        tracker = json.loads(stages)["TrackerStage"]
        assert "tracks_total" in tracker, tracker
    assert summary.streams["cam0"].frames > 0


def test_a_live_job_that_fails_writes_no_summary(bright_model: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.live as live

    clip = write_clip(tmp_path / "cam0.mp4", frames=60, width=160, height=96, fps=15)
    db = tmp_path / "out.db"
    cfg = parse_config({
        "sources": [{"uri": f"file://{clip}", "id": "cam0"}],
        "model": {"path": str(bright_model), "input_size": [128, 128]},
        "engine": {"device": "cpu", "batch_size": 8},
        "tracker": {"type": "bytetrack"},
        "live": {"decode": "cpu", "http": {"enabled": False}, "batch": {"max_wait_ms": 50}},
        "sinks": [{"type": "sqlite", "path": str(db)}],
    })

    def broken(self: live.LiveRunner, item: object, after: object, mgr: object) -> None:
        raise RuntimeError("a bug in the job")

    monkeypatch.setattr(live.LiveRunner, "_emit", broken)
    with pytest.raises(RuntimeError, match="a bug in the job"):
        run_live(cfg, duration_s=4.0)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM fovea_summaries").fetchone() == (0,)
