"""The file job's end toward its sinks (:mod:`pipelines.job_sinks`): the per-source summaries
before the sinks close, only when the job ran to its end; their health once they closed,
also when closing one failed."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest

from pipelines.job_sinks import open_job_sinks
from pipelines.progress import JobSummary
from streams.config import parse_config
from streams.errors import SinkError
from streams.frames import FrameResult
from streams.sinks.health import DeliveryHealth
from streams.sinks.summaries import SourceSummary
from tests.streams.sinks_network.helpers import result


class _Recorder:
    """A sink that reports health and takes summaries, and records the order of the calls."""

    def __init__(self, fail_on_close: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_on_close = fail_on_close
        self.closed = False

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.calls.append("exit")
        self.closed = True
        if self.fail_on_close:
            raise SinkError("3 record(s) not delivered")

    def write(self, results: Sequence[FrameResult]) -> None:
        self.calls.append("write")

    def write_summary(self, summaries: Sequence[SourceSummary]) -> None:
        self.calls.append(f"summary {[s.source for s in summaries]}")

    def health(self) -> DeliveryHealth:
        self.calls.append("health")
        return DeliveryHealth("kafka", "kafka://k:1", "/s", not self.fail_on_close, 0 if self.fail_on_close else 1,
                              3 if self.closed and self.fail_on_close else 0, 0, 0, 0, 0, None)


def test_summaries_before_the_sinks_close_and_health_after(tmp_path: Path) -> None:
    cfg = parse_config({"sources": ["a.mp4"], "sinks": [{"type": "jsonl", "path": str(tmp_path / "a.jsonl")}]})
    summary = JobSummary(stages={"TrackerStage": {"type": "bytetrack", "sources": {"cam": {"tracks_total": 1}}}})
    sink = _Recorder()
    with contextlib.ExitStack() as stack:
        sinks = open_job_sinks(cfg, stack, [sink], summary)
        assert sinks[1] is sink and len(sinks) == 2
        sink.write([result("cam", 0)])
    assert sink.calls == ["write", "summary ['cam']", "exit", "health"]
    assert [h.delivered for h in summary.sinks] == [1]  # the jsonl sink (in its process) reports none


def test_no_summaries_when_the_job_fails_and_the_health_of_a_sink_whose_close_failed(tmp_path: Path) -> None:
    cfg = parse_config({"sources": ["a.mp4"], "sinks": [{"type": "sqlite", "path": str(tmp_path / "d.sqlite")}]})
    summary = JobSummary(stages={"S": {"sources": {"cam": {"n": 1}}}})
    sink = _Recorder()
    with pytest.raises(KeyboardInterrupt), contextlib.ExitStack() as stack:
        open_job_sinks(cfg, stack, [sink], summary)[0].write([result("cam", 0)])
        raise KeyboardInterrupt
    assert sink.calls == ["exit", "health"]  # no summaries
    assert [(h.connected, h.spooled) for h in summary.sinks] == [(True, 0)]
    db = sqlite3.connect(tmp_path / "d.sqlite")
    assert db.execute("SELECT count(*) FROM fovea_summaries").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM fovea_frames").fetchone() == (1,)

    summary.sinks = []
    sink = _Recorder(fail_on_close=True)
    with pytest.raises(SinkError, match="3 record"), contextlib.ExitStack() as stack:  # ran to its end
        open_job_sinks(cfg, stack, [sink], summary)[0].write([result("cam", 0)])
    assert sink.calls == ["summary ['cam']", "exit", "health"]
    assert [(h.connected, h.spooled) for h in summary.sinks] == [(False, 3)]  # read after its close failed
    db = sqlite3.connect(tmp_path / "d.sqlite")  # a new file (append: false) with the job's summary
    assert db.execute("SELECT source, frames, detections, stages FROM fovea_summaries").fetchall() == [
        ("cam", 1, 3, '{"S":{"n":1}}')]
