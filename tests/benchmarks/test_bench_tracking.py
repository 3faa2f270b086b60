"""The bench's ``--tracking`` end to end (tracker + one line + one zone): frames are counted
apart from event records, so every frame is still accounted for."""

from __future__ import annotations

from pathlib import Path

from benchmarks.measure import _LineCounter, job_config, measure_e2e
from pipelines.graph import source_stages
from streams.config import EngineConfig, ModelConfig
from tests.media import pyav_frames, write_clip


def test_the_line_counter_counts_event_records_apart(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"")
    frame = b'{"source":"a","frame_index":0}\n'
    event = b'{"event":"line_cross","source":"a"}\n'
    with _LineCounter(path, interval=3600) as counter:
        with open(path, "ab") as f:
            f.write(frame + event + frame)
        counter._poll()
        with open(path, "ab") as f:  # a chunk that starts with an event record
            f.write(event + event + frame + b'{"source":"a","fr')  # and ends mid-line
        counter._poll()
    assert (counter.lines, counter.events) == (3, 3)


def test_tracking_e2e_accounts_for_every_frame(tmp_path: Path, bright_model: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", "libx264", frames=30, width=320, height=240)
    engine = EngineConfig(device="cpu", batch_size=8, precision="fp32")
    cfg = job_config([clip], [], ModelConfig(path=str(bright_model)), engine, tracking=True)
    assert [type(s).__name__ for s in source_stages(cfg)] == ["TrackerStage", "AnalyticsStage"]
    m = measure_e2e([clip], len(pyav_frames(clip)), ModelConfig(path=str(bright_model)), engine, "cpu", 1,
                    work_dir=tmp_path, tracking=True)
    assert m.extra["tracking"] is True
    assert m.extra["frames_ok"], m.extra
    assert m.frames == 30 and m.extra["jsonl_records"] == 30


def test_without_tracking_the_job_has_no_per_source_stage(tmp_path: Path) -> None:
    cfg = job_config([tmp_path / "x.mp4"], [], ModelConfig(), EngineConfig(device="cpu"))
    assert cfg.tracker is None and cfg.analytics is None and source_stages(cfg) == []
