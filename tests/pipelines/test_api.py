"""The Python API: a pipeline built from keyword arguments or a config, iterating a job's results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipelines import Pipeline
from streams.errors import ConfigError
from streams.frames import FrameResult
from tests.media import pyav_frames


def test_iterating_a_file_job_gives_every_frame_once_and_writes_no_file(
        clip_dir: Path, bright_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pipeline = Pipeline(model=str(bright_model), device="cpu", conf_threshold=0.3, batch_size=8)
    seen = [(r.frame.source_id, r.frame.frame_index) for r in pipeline.run([clip_dir / "landscape.mp4"])]
    n = len(pyav_frames(clip_dir / "landscape.mp4"))
    assert sorted(i for _, i in seen) == list(range(n))
    assert len({sid for sid, _ in seen}) == 1
    assert pipeline.summary is not None and pipeline.summary.ok and pipeline.summary.frames == n
    assert list(tmp_path.iterdir()) == []  # no sinks configured: nothing written


def test_results_carry_detections_and_a_callback_sees_the_same(clip_dir: Path, bright_model: Path) -> None:
    batches: list[Sequence[FrameResult]] = []
    pipeline = Pipeline(model=str(bright_model), device="cpu", batch_size=8, on_results=batches.append)
    results = list(pipeline.run([clip_dir / "landscape.mp4"]))
    assert sum(len(r.detections) for r in results) > 0
    assert [r for b in batches for r in b] == results


def test_a_config_file_keeps_its_sinks_and_options_override_it(
        clip_dir: Path, bright_model: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"sources: [{clip_dir / 'landscape.mp4'}]\nmodel: {{path: {bright_model}}}\n"
                   f"engine: {{device: cpu, batch_size: 4}}\nsinks: [{{type: jsonl, path: out.jsonl}}]\n")
    pipeline = Pipeline(cfg, batch_size=8)
    assert pipeline.config.engine.batch_size == 8
    summary = pipeline.run_to_end()
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == summary.frames == len(pyav_frames(clip_dir / "landscape.mp4"))
    assert json.loads(lines[0])["frame_index"] == 0


def test_bad_options_are_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match="conf_treshold"):
        Pipeline(conf_treshold=0.3)
    with pytest.raises(ConfigError, match=r"postprocess.conf_threshold"):
        Pipeline(conf_threshold=3.0)
    with pytest.raises(ConfigError, match=r"preprocess.canvas"):
        Pipeline(canvas="round")


def test_preprocess_options_by_keyword() -> None:
    cfg = Pipeline(canvas="square", resize_filter="opencv").config
    assert (cfg.preprocess.canvas, cfg.preprocess.resize_filter) == ("square", "opencv")
    assert Pipeline().config.preprocess.canvas == "auto"
    with pytest.raises(ConfigError, match="sources"):
        list(Pipeline().run([]))


def test_files_need_no_live_extra(clip_dir: Path, bright_model: Path) -> None:
    """Without prometheus_client (the 'live' extra), the API still runs file jobs; a live source
    gets one clear error naming the extra."""
    import subprocess
    import sys
    import textwrap

    root = Path(__file__).resolve().parents[2]
    script = textwrap.dedent(f"""
        import sys
        sys.modules["prometheus_client"] = None  # as if the extra were not installed
        sys.path.insert(0, {str(root)!r})
        from pipelines import Pipeline
        from streams.errors import MissingDependencyError
        p = Pipeline(model={str(bright_model)!r}, device="cpu", batch_size=8)
        print(sum(1 for _ in p.run([{str(clip_dir / "landscape.mp4")!r}])))
        try:
            list(p.run(["rtsp://127.0.0.1:1/x"], duration_s=1))
        except MissingDependencyError as e:
            print("live:", e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == str(len(pyav_frames(clip_dir / "landscape.mp4")))
    assert lines[1].startswith("live:") and '".[live]"' in lines[1]
