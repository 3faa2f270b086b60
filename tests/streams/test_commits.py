"""Commit journals of the file sinks: a resumed output equals an uninterrupted one, byte for byte."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streams.detections import Detections
from streams.errors import SinkError
from streams.events import Event
from streams.frames import FrameMeta, FrameResult
from streams.sinks import SINKS
from streams.sinks import commits as commits_mod
from streams.sinks.commits import Commit, Journal, JournalTail, journal_path, read_commits
from streams.sinks.records import CsvSink, JsonlSink

NAMES = ("person", "car")


def _frames(source: str, start: int, stop: int) -> list[FrameResult]:
    """Frames ``start..stop-1`` of ``source``: detections on most, an event on every 7th."""
    out = []
    for i in range(start, stop):
        rng = np.random.default_rng(hash((source, i)) % 2**32)
        m = i % 4
        d = Detections(rng.uniform(0, 300, (m, 4)).astype(np.float32), rng.uniform(0, 1, m).astype(np.float32),
                       rng.integers(0, 2, m), NAMES)
        meta = FrameMeta(source, f"/v/{source}", i, i * 512, (1, 12800), 320, 240)
        events = (Event("line_cross", source, i, i * 512, (1, 12800), 3, "car", {"line": "gate", "direction": "in"}),
                  ) if i % 7 == 0 else ()
        out.append(FrameResult(meta, d, events))
    return out


def _batches() -> list[list[FrameResult]]:
    """Two sources interleaved, each in frame order (as a resumable job delivers them)."""
    a, b = _frames("a.mp4", 0, 40), _frames("b.mp4", 0, 30)
    return [a[0:10] + b[0:5], a[10:20], b[5:20] + a[20:25], a[25:40], b[20:30]]


def _uninterrupted(cls: type[JsonlSink] | type[CsvSink], path: Path) -> dict[Path, bytes]:
    with cls(path) as sink:
        for batch in _batches():
            sink.write(batch)
    return _contents(path)


def _contents(path: Path) -> dict[Path, bytes]:
    files = [path, path.with_name(f"{path.stem}.events{path.suffix}")]
    return {p.name: p.read_bytes() for p in files if p.exists()}  # type: ignore[misc]


@pytest.mark.parametrize("cls, name", [(JsonlSink, "out.jsonl"), (CsvSink, "out.csv")])
@pytest.mark.parametrize("committed", [0, 1, 3])
def test_a_resumed_output_equals_an_uninterrupted_one(tmp_path: Path, cls: type[JsonlSink] | type[CsvSink],
                                                      name: str, committed: int) -> None:
    """``committed`` batches are committed; the next one is written (not committed) and then
    half a line more, as a kill leaves it. The resumed sink gets every batch again (a job
    continues from a keyframe before what the output holds) and drops what it holds."""
    want = _uninterrupted(cls, tmp_path / "ref" / name)
    path = tmp_path / "run" / name
    sink = cls(path, commits="start", commit_interval_s=3600)
    sink.__enter__()
    batches = _batches()
    for batch in batches[:committed]:
        sink.write(batch)
    sink.commit()
    sink.write(batches[committed])  # written past the last commit
    assert sink._fh is not None
    sink._fh.write('{"source": "a.mp4", "frame_in')  # a torn line
    sink._fh.close()  # the process dies here: no commit (closing releases its lock, as dying does)
    sink._fh = None
    held = read_commits(path)
    assert held is not None
    assert sum(held.frames.values()) == sum(len(b) for b in batches[:committed])
    with cls(path, commits="resume", commit_interval_s=3600) as resumed:
        for batch in batches:
            resumed.write(batch)
    assert _contents(path) == want
    final = read_commits(path)
    assert final is not None and final.frames == {"a.mp4": 40, "b.mp4": 30}
    assert final.offsets[0] == path.stat().st_size


def test_commits_follow_the_interval_and_the_close(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonlSink(path, commits="start", commit_interval_s=0) as sink:
        for batch in _batches():
            sink.write(batch)
        lines = journal_path(path).read_text().splitlines()
        assert len(lines) == 1 + len(_batches())  # the start, then one commit per write
    commit = read_commits(path)
    assert commit is not None and commit.offsets == (path.stat().st_size,)
    with JsonlSink(tmp_path / "slow.jsonl", commits="start", commit_interval_s=3600) as sink:
        for batch in _batches():
            sink.write(batch)
        assert len(journal_path(tmp_path / "slow.jsonl").read_text().splitlines()) == 1
    assert len(journal_path(tmp_path / "slow.jsonl").read_text().splitlines()) == 2  # the close commits


def test_without_commits_no_journal_is_written(tmp_path: Path) -> None:
    with JsonlSink(tmp_path / "out.jsonl") as sink:
        sink.write(_batches()[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_a_torn_journal_line_is_ignored_and_the_tail_reads_only_new_lines(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    j = Journal(out)
    j.reset(Commit((0,)))
    j.append((100,), {"a": 5})
    tail = JournalTail(out)
    first = tail.read()
    assert first is not None and first.offsets == (100,) and first.frames == {"a": 5}
    j.append((250,), {"b": 7})
    with open(journal_path(out), "a") as fh:
        fh.write('{"offsets":[400],"fra')  # torn
    assert tail.read() == Commit((250,), {"a": 5, "b": 7})
    assert read_commits(out) == Commit((250,), {"a": 5, "b": 7})
    j.reset(Commit((250,), {"a": 5, "b": 7}))  # a new journal: the tail starts over
    assert tail.read() == Commit((250,), {"a": 5, "b": 7})
    assert read_commits(tmp_path / "none.jsonl") is None


def test_a_fresh_start_truncates_and_append_starts_the_journal_at_the_old_end(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("old line\n")
    with JsonlSink(path, append=True, commits="start") as sink:
        sink.write(_batches()[0])
    assert path.read_text().startswith("old line\n")
    journal = journal_path(path).read_text().splitlines()
    assert journal[0] == '{"offsets":[9],"frames":{}}'
    with JsonlSink(path, commits="start") as sink:
        sink.write(_batches()[1])
    lines = path.read_text().splitlines()
    assert [json.loads(x)["frame_index"] for x in lines if '"event"' not in x] == list(range(10, 20))


def test_resume_refuses_an_output_shorter_than_its_journal(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonlSink(path, commits="start") as sink:
        sink.write(_batches()[0])
    path.write_text("")
    with pytest.raises(SinkError, match="shorter than its journal"), JsonlSink(path, commits="resume"):
        pass


def test_a_second_writer_of_one_output_waits_then_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commits_mod, "LOCK_WAIT_S", 0.3)
    path = tmp_path / "out.jsonl"
    with JsonlSink(path, commits="start") as sink:
        sink.write(_batches()[0])
        with pytest.raises(SinkError, match="being written by another process"), JsonlSink(path, commits="resume"):
            pass
    # the first writer closes while the second waits: the second goes on
    monkeypatch.setattr(commits_mod, "LOCK_WAIT_S", 20.0)
    first = JsonlSink(path, commits="start").__enter__()
    threading.Timer(0.3, first.__exit__, (None, None, None)).start()
    t = time.monotonic()
    with JsonlSink(path, commits="resume") as second:
        assert time.monotonic() - t >= 0.2
        second.write(_batches()[1])


def test_the_process_writer_keeps_the_journal_too(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    parsed = SINKS.parse({"type": "csv", "path": str(path), "commits": "start", "commit_interval_s": 0}, "sinks[0]")
    with SINKS.create(parsed) as sink:
        for batch in _batches():
            sink.write(batch)
    commit = read_commits(path)
    events = tmp_path / "out.events.csv"
    assert commit is not None and commit.frames == {"a.mp4": 40, "b.mp4": 30}
    assert commit.offsets == (path.stat().st_size, events.stat().st_size)


def test_commit_interval_is_checked(tmp_path: Path) -> None:
    from streams.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sinks\[0\]\.commit_interval_s"):
        SINKS.parse({"type": "jsonl", "path": "x.jsonl", "commit_interval_s": -1}, "sinks[0]")
