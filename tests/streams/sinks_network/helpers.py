"""Shared pieces of the network sinks' tests: results, a job with a broker outage, the
exactly-once check after de-duplicating by the idempotency key."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from pipelines.progress import JobSummary
from pipelines.runner import run_job
from streams.config import parse_config
from streams.detections import Detections
from streams.events import Event
from streams.frames import FrameMeta, FrameResult
from streams.sinks import SINKS
from streams.sinks.delivery import ReliableSink

log = logging.getLogger(__name__)


def result(source: str, index: int, n: int = 3, events: int = 0) -> FrameResult:
    """A frame of ``source`` with ``n`` detections and ``events`` line crossings."""
    meta = FrameMeta(source, f"/v/{source}", index, index * 512, (1, 12800), 640, 480)
    boxes = np.array([[10 + j, 20, 30.5 + j, 40.25] for j in range(n)], np.float32).reshape(n, 4)
    dets = Detections(boxes, np.full(n, 0.875, np.float32), np.arange(n, dtype=np.int64) % 2, ("person", "car"),
                      np.arange(n, dtype=np.int64))
    evs = tuple(Event("line_cross", source, index, index * 512, (1, 12800), j, "car",
                      {"line": "gate", "direction": "in" if j % 2 else "out"}) for j in range(events))
    return FrameResult(meta, dets, evs)


def make_sink(raw: dict[str, Any]) -> ReliableSink:
    """The sink of ``raw``, in this process (``writer: inline``) so its health can be read."""
    sink = SINKS.create(SINKS.parse({"writer": "inline", **raw}, "sinks[0]"))
    assert isinstance(sink, ReliableSink)
    return sink


class OutageSwitch:
    """A sink entered after the network sink under test: at the ``kill_at``-th batch it calls
    ``kill`` (the network sink has just been given that batch, so it is in flight), at the
    ``restart_at``-th ``restart``. ``kill`` returns False to try again at the next batch."""

    def __init__(self, kill: Callable[[], bool], restart: Callable[[], None], kill_at: int = 4,
                 restart_at: int = 10, before_kill: Callable[[], None] | None = None) -> None:
        self.kill, self.restart, self.before_kill = kill, restart, before_kill
        self.kill_at, self.restart_at = kill_at, restart_at
        self.batches = 0
        self.killed_at: int | None = None
        self.restarted_at: int | None = None

    def __enter__(self) -> OutageSwitch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.killed_at is not None and self.restarted_at is None:
            self.restart()  # the job ended first: the broker comes back before the sink closes
            self.restarted_at = self.batches

    def write(self, results: Sequence[FrameResult]) -> None:
        self.batches += 1
        if self.killed_at is None:
            if self.before_kill is not None and self.batches == self.kill_at - 1:
                self.before_kill()
            if self.batches >= self.kill_at and self.kill():
                self.killed_at = self.batches
                log.info("broker killed at batch %d", self.batches)
        elif self.restarted_at is None and self.batches >= self.killed_at + self.restart_at - self.kill_at:
            self.restart()
            self.restarted_at = self.batches
            log.info("broker restarted at batch %d", self.batches)


def run_outage_job(clip: Path, model: Path, out: Path, sink: ReliableSink, switch: OutageSwitch
                   ) -> tuple[JobSummary, dict[str, bytes]]:
    """A CPU job over ``clip`` (batches of 4) writing JSONL (the ground truth) and to ``sink``,
    with ``switch`` after it. Returns the summary and the JSONL records by idempotency key."""
    cfg = parse_config({"sources": [str(clip)], "model": {"path": str(model), "input_size": [96, 160]},
                        "engine": {"device": "cpu", "batch_size": 4}, "decode": {"backend": "cpu"},
                        "sinks": [{"type": "jsonl", "path": str(out / "truth.jsonl")}]})
    summary = run_job(cfg, show_progress=False, sinks=[sink, switch])
    truth = {}
    for line in (out / "truth.jsonl").read_bytes().splitlines():
        rec = json.loads(line)
        truth[f"{rec['source']}|{rec['frame_index']}|detections|0"] = line
    return summary, truth


_SUMMARY = "|-1|summary|0"


def exactly_once(truth: dict[str, bytes], got: Iterable[tuple[str, bytes]]) -> int:
    """Assert ``got`` (key, payload) holds every record of ``truth`` with its payload, nothing
    else but the sources' summary records (which must count the frames and detections of
    ``truth``); returns the number of duplicates (deliveries beyond the first of a key)."""
    got = list(got)
    counts = Counter(k for k, _ in got)
    first: dict[str, bytes] = {}
    for k, payload in got:
        first.setdefault(k, payload)
    for k in [k for k in first if k.endswith(_SUMMARY)]:
        source = k[:-len(_SUMMARY)]
        frames = [json.loads(v) for key, v in truth.items() if key.rsplit("|", 3)[0] == source]
        assert json.loads(first.pop(k)) == {"source": source, "frames": len(frames), "stages": {},
                                            "detections": sum(len(f["detections"]) for f in frames)}, k
    missing = sorted(set(truth) - set(first))
    assert not missing, f"{len(missing)} record(s) lost, e.g. {missing[:3]}"
    extra = sorted(set(first) - set(truth))
    assert not extra, f"{len(extra)} record(s) not in the job's output, e.g. {extra[:3]}"
    for k, payload in first.items():
        assert json.loads(payload) == json.loads(truth[k]), k
    return sum(n - 1 for n in counts.values())


def connected_and_delivering(sink: ReliableSink) -> None:
    """Wait until ``sink`` has delivered a record (so it is connected when the broker dies)."""
    assert wait_until(lambda: sink.health().delivered > 0, 60), sink.health()


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
