"""The job manifest: fingerprint and diff of configs, file identity, atomic save and load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from streams.config import parse_config
from streams.errors import ConfigError
from streams.manifest import (
    FileRecord,
    Manifest,
    config_diff,
    file_identity,
    fingerprint,
    manifest_path,
    not_resumable,
)


def _cfg(**sections: object):
    raw = {"sources": [{"uri": "rtsp://cam/1", "password": "hunter2"}, "clips/"],
           "sinks": [{"type": "jsonl", "path": "/out/det.jsonl"}, {"type": "csv", "path": "/out/det.csv"}]}
    raw.update(sections)
    return parse_config(raw)


def test_speed_only_settings_are_not_part_of_the_fingerprint() -> None:
    base = fingerprint(_cfg(), "cpu")
    faster = fingerprint(_cfg(decode={"sessions": 9, "threads": 4}, engine={"inference_threads": 4},
                              sinks=[{"type": "jsonl", "path": "/out/det.jsonl", "writer": "inline",
                                      "commit_interval_s": 5}, {"type": "csv", "path": "/out/det.csv"}]), "cpu")
    assert config_diff(base, faster) == []


def test_the_diff_names_each_changed_key_with_both_values() -> None:
    old = fingerprint(_cfg(), "cpu")
    new = fingerprint(_cfg(postprocess={"conf_threshold": 0.5}), "cuda:0")
    assert config_diff(old, new) == ["engine.device (resolved): 'cpu' then, 'cuda:0' now",
                                     "postprocess.conf_threshold: 0.25 then, 0.5 now"]
    assert config_diff(json.loads(json.dumps(old)), old) == []  # as loaded from the manifest: tuples are lists


def test_passwords_are_not_written_in_clear() -> None:
    flat = fingerprint(_cfg(), "cpu")
    text = json.dumps(flat)
    assert "hunter2" not in text
    assert flat["sources[0].password"].startswith("sha256:")


def test_save_and_load_round_trip_atomically(tmp_path: Path) -> None:
    clip = tmp_path / "a.mp4"
    clip.write_bytes(os.urandom(3 << 20))
    ident = file_identity(clip)
    assert ident.size == 3 << 20 and len(ident.head_sha256) == 64
    m = Manifest({"k": [1, 2]}, {"a.mp4": FileRecord(ident, "done", 40, 40, 40, 40)})
    path = tmp_path / "det.manifest.json"
    m.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "det.manifest.json"]
    assert Manifest.load(path) == m
    assert Manifest.load(tmp_path / "none.json") is None
    with open(clip, "r+b") as fh:  # same size, other content in the first MiB
        fh.write(b"x")
    os.utime(clip, ns=(ident.mtime_ns, ident.mtime_ns))
    assert ident.differs(file_identity(clip)) is not None and "head_sha256" in str(ident.differs(file_identity(clip)))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the job's manifest"):
        Manifest.load(path)


def test_where_the_manifest_goes_and_which_jobs_can_resume() -> None:
    assert manifest_path(_cfg()) == Path("/out/det.manifest.json")
    assert not_resumable(_cfg()) is None
    video = _cfg(sinks=[{"type": "jsonl", "path": "/o/d.jsonl"}, {"type": "video", "path": "/o/v"}])
    problem = not_resumable(video)
    assert problem is not None and problem.key == "sinks[1]" and "video" in str(problem)
    none = _cfg(sinks=[{"type": "video", "path": "/o/v"}])
    assert manifest_path(none) is None
    problem = not_resumable(none)
    assert problem is not None and problem.key == "sinks"
