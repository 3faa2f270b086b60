"""Per-source summary records: what a job has to say about each source once it ran to its end.

At the end of a file job that ran to its end (and of a live job stopped as asked: a signal,
its duration; every camera it had, removed ones included), every sink that is
:class:`SummaryAware` gets one :class:`SourceSummary` per source (before it closes): the
part about that source of each
per-source stage's end-of-job report (the tracker's track summaries, the analytics' line and
zone counts, ...: ``JobSummary.stages``), with the frames and detections the sink itself was
given for the source (:class:`SourceCounts`; a resumed job counts what it processed). The
network sinks deliver it as record kind ``summary`` (idempotency key
``source|-1|summary|0``) on their summaries topic, stream or table; SQLite writes it to its
summaries table. Record (the JSON of Kafka, Redis and MQTT)::

    {"source": "cam1.mp4", "frames": 160, "detections": 480,
     "stages": {"TrackerStage": {"frame_rate": 25.0, "tracks_total": 12, ...},
                "AnalyticsStage": {"lines": {...}, "zones": {...}, ...}}}

A job that fails or is interrupted sends none (its counts would be partial).

Usage::

    write_summaries(sinks, summary.stages)      # what the file job does at its end
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from streams.frames import FrameResult

__all__ = ["SourceCounts", "SourceSummary", "SummaryAware", "source_summaries", "write_summaries"]


@dataclass(frozen=True)
class SourceSummary:
    """One source's end-of-job summary. ``stages``: per stage name, its report's part about
    the source (JSON-ready); ``frames`` and ``detections``: filled in by the sink
    (:meth:`SourceCounts.complete`)."""

    source: str
    stages: Mapping[str, Any] = field(default_factory=dict)
    frames: int = 0
    detections: int = 0

    def to_record(self) -> dict[str, Any]:
        return {"source": self.source, "frames": self.frames, "detections": self.detections,
                "stages": dict(self.stages)}

    def to_json(self) -> bytes:
        return json.dumps(self.to_record(), separators=(",", ":"), default=_plain).encode()

    def stages_json(self) -> str:
        return json.dumps(dict(self.stages), separators=(",", ":"), default=_plain)


def _plain(value: Any) -> Any:
    """JSON for what a report may hold beyond JSON's types: NumPy scalars and arrays, sets."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


@runtime_checkable
class SummaryAware(Protocol):
    """A sink that takes the job's per-source summaries (module docstring)."""

    def write_summary(self, summaries: Sequence[SourceSummary]) -> None:
        """Write one summary record per source (those in ``summaries`` and those the sink was
        given frames of); called once, at the end of a job that ran to its end, before the
        sink closes."""
        ...


def source_summaries(stage_reports: Mapping[str, Mapping[str, Any]]) -> list[SourceSummary]:
    """``stage_reports`` (stage name -> its report, as ``JobSummary.stages`` holds them) split by
    source: a report's ``sources`` mapping gives each source its entry; the job-wide rest of a
    report stays in the job summary. Sources in order of first mention."""
    per_source: dict[str, dict[str, Any]] = {}
    for name, report in stage_reports.items():
        sources = report.get("sources")
        if isinstance(sources, Mapping):
            for sid, part in sources.items():
                per_source.setdefault(str(sid), {})[name] = part
    return [SourceSummary(sid, stages) for sid, stages in per_source.items()]


def write_summaries(sinks: Iterable[object], stage_reports: Mapping[str, Mapping[str, Any]]) -> None:
    """Give each :class:`SummaryAware` of ``sinks`` the per-source summaries of ``stage_reports``."""
    summaries = source_summaries(stage_reports)
    for sink in sinks:
        if isinstance(sink, SummaryAware):
            sink.write_summary(summaries)


class SourceCounts:
    """The frames and detections a sink was given, per source (its summaries' counts)."""

    def __init__(self) -> None:
        self.frames: Counter[str] = Counter()
        self.detections: Counter[str] = Counter()

    def add(self, results: Sequence[FrameResult]) -> None:
        frames, dets = self.frames, self.detections
        for r in results:
            sid = r.frame.source_id
            frames[sid] += 1
            dets[sid] += len(r.detections)

    def complete(self, summaries: Sequence[SourceSummary]) -> list[SourceSummary]:
        """``summaries`` with this sink's counts, then a summary (counts only) for each other
        source the sink was given frames of."""
        given = {s.source for s in summaries}
        out = [replace(s, frames=self.frames[s.source], detections=self.detections[s.source]) for s in summaries]
        out += [SourceSummary(sid, {}, n, self.detections[sid]) for sid, n in self.frames.items() if sid not in given]
        return out
