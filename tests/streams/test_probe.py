"""Probing many files at once (worker processes)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import streams.sources.probe as probe_module
from streams.errors import SourceError
from streams.sources.probe import BackgroundProbe, probe_many, probe_video
from tests.media import write_clip


def test_probe_many_in_worker_processes_matches_probe_video(tmp_path: Path) -> None:
    """Many files: probed in ``python -m streams.sources.probe`` workers, errors carried back per file."""
    clip = write_clip(tmp_path / "a.mp4", frames=30)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"nope" * 100)
    paths = [clip] * 4 + [junk, tmp_path / "missing.mp4"]
    got = probe_many(paths, processes=2, parallel_bytes=0)
    assert got[:4] == [probe_video(clip)] * 4
    assert isinstance(got[4], SourceError) and "junk.mp4" in str(got[4])
    assert isinstance(got[5], SourceError) and "no such file" in str(got[5])


def test_probe_many_falls_back_to_this_process_when_workers_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that cannot start is logged, and its files are probed here: nothing lost."""
    clip = write_clip(tmp_path / "a.mp4", frames=12)
    monkeypatch.setattr(probe_module.sys, "executable", str(tmp_path / "no-python"))
    with caplog.at_level(logging.WARNING, logger="streams.sources.probe"):
        got = probe_many([clip] * 4 + [tmp_path / "missing.mp4"], processes=2, parallel_bytes=0)
    assert got[:4] == [probe_video(clip)] * 4
    assert isinstance(got[4], SourceError) and "no such file" in str(got[4])
    assert "a probe worker failed" in caplog.text


def test_probe_module_entry_point_prints_one_json_line_per_path(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "a.mp4", frames=12)
    out = subprocess.run([sys.executable, "-m", "streams.sources.probe", str(clip), str(tmp_path / "nope.mp4")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 2
    assert json.loads(out[0])["pts"] == list(probe_video(clip).pts)
    assert json.loads(out[1]) == {"error": [str(tmp_path / "nope.mp4"), "no such file"]}


def test_background_probe_gives_probe_many_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Started early (``fovea run`` starts it before loading the model), collected later."""
    clip = write_clip(tmp_path / "a.mp4", frames=12)
    paths = [clip, tmp_path / "missing.mp4"]
    probe = BackgroundProbe(paths, processes=1)
    got = probe.result()
    assert got[0] == probe_video(clip)
    assert isinstance(got[1], SourceError) and "no such file" in str(got[1])
    assert probe.seconds > 0

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in probing")

    monkeypatch.setattr(probe_module, "probe_many", broken)
    with pytest.raises(RuntimeError, match="a bug in probing"):
        BackgroundProbe(paths).result()
