"""Probing many files at once (worker processes)."""

from __future__ import annotations

from pathlib import Path

from streams.errors import SourceError
from streams.probe import probe_many, probe_video
from tests.media import write_clip


def test_probe_many_in_worker_processes_matches_probe_video(tmp_path: Path) -> None:
    """Many files: probed in spawned worker processes, errors carried back per file."""
    clip = write_clip(tmp_path / "a.mp4", frames=30)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"nope" * 100)
    paths = [clip] * 4 + [junk, tmp_path / "missing.mp4"]
    got = probe_many(paths, processes=2, parallel_bytes=0)
    assert got[:4] == [probe_video(clip)] * 4
    assert isinstance(got[4], SourceError) and "junk.mp4" in str(got[4])
    assert isinstance(got[5], SourceError) and "no such file" in str(got[5])
