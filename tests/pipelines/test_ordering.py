"""Per-source order: the reorder buffer, and a stateful per-source stage through a real job
whose file is cut into segments decoded by parallel sessions."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import numpy as np
import pytest

import pipelines.runner as runner
from pipelines.graph import PerSourceStages
from pipelines.ordering import ReorderBuffer
from pipelines.stages import Gap, SourceEnd, SourceEvent
from streams.config import load_config
from streams.detections import Detections
from streams.frames import FrameMeta, FrameResult
from tests.media import pyav_frames


def _result(source: str, index: int) -> FrameResult:
    meta = FrameMeta(source, source, index, index, (1, 30), 64, 48)
    return FrameResult(meta, Detections.empty())


def _indices(runs: list[tuple[str, list[FrameResult | range]]], source: str) -> list[int | str]:
    """Frame indices released for ``source``, with ``"skip a-b"`` where a declared gap stands."""
    return [f"skip {r.start}-{r.stop - 1}" if isinstance(r, range) else r.frame.frame_index
            for sid, run in runs if sid == source for r in run]


def test_reorder_buffer_releases_each_source_in_frame_order() -> None:
    buf = ReorderBuffer()
    order = list(range(50))
    random.Random(3).shuffle(order)
    released: list[tuple[str, list[FrameResult | range]]] = []
    for i in order:
        buf.add([_result("a", i), _result("b", 49 - i)])
        released += buf.release()
    assert _indices(released, "a") == list(range(50))
    assert _indices(released, "b") == list(range(50))
    assert buf.held == 0 and buf.peak > 2


def test_reorder_buffer_waits_for_a_gap_until_it_is_declared() -> None:
    buf = ReorderBuffer()
    buf.add([_result("a", i) for i in (0, 1, 5, 6, 3)])
    assert _indices(buf.release(), "a") == [0, 1]
    buf.skip("a", (2,))
    assert _indices(buf.release(), "a") == ["skip 2-2", 3]  # 4 is still missing
    buf.skip("a", range(4, 5))
    assert _indices(buf.release(), "a") == ["skip 4-4", 5, 6]
    assert buf.pending("a") == 0


def test_reorder_buffer_end_flushes_in_order_and_forgets_the_source() -> None:
    buf = ReorderBuffer()
    buf.add([_result("a", i) for i in (9, 4, 7)])
    assert buf.release() == []
    buf.end("a")
    assert _indices(buf.release(), "a") == [4, 7, 9]
    assert buf.held == 0 and buf.pending("a") == 0
    buf.add([_result("a", 0)])  # a source seen again starts afresh
    assert _indices(buf.release(), "a") == [0]


def test_reorder_buffer_refuses_a_frame_twice_or_a_skipped_frame() -> None:
    buf = ReorderBuffer()
    buf.add([_result("a", 0)])
    buf.release()
    with pytest.raises(ValueError, match="frame 0 arrived after"):
        buf.add([_result("a", 0)])
    buf.skip("a", range(1, 3))
    buf.release()
    with pytest.raises(ValueError, match="frame 2 arrived after"):
        buf.add([_result("a", 2)])


class StrictOrder:
    """A per-source stage that fails on any frame out of order or missing without a Gap."""

    def __init__(self) -> None:
        self.next: dict[str, int] = {}
        self.seen: dict[str, list[int]] = {}
        self.gaps: dict[str, list[int]] = {}
        self.ended: dict[str, str] = {}

    def __enter__(self) -> StrictOrder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def process(self, source_id: str, results: Sequence[FrameResult]) -> list[FrameResult]:
        assert source_id not in self.ended, f"{source_id}: frames after its end"
        for r in results:
            assert r.frame.source_id == source_id
            want = self.next.get(source_id, 0)
            assert r.frame.frame_index == want, f"{source_id}: frame {r.frame.frame_index}, expected {want}"
            self.next[source_id] = want + 1
            self.seen.setdefault(source_id, []).append(r.frame.frame_index)
        return list(results)

    def on_event(self, event: SourceEvent) -> list[FrameResult]:
        sid = event.source_id
        if isinstance(event, Gap):
            indices = list(event.frame_indices)
            assert indices[0] == self.next.get(sid, 0), f"{sid}: gap {indices[:3]} not at the next frame"
            self.next[sid] = indices[-1] + 1
            self.gaps.setdefault(sid, []).extend(indices)
        else:
            assert isinstance(event, SourceEnd)
            self.ended[sid] = event.reason
        return []

    def report(self) -> dict[str, object]:
        return {"sources": len(self.seen)}


def test_per_source_stages_see_order_gaps_and_end_then_sinks_get_them() -> None:
    stage = StrictOrder()
    written: list[int] = []

    class ListSink:
        def __enter__(self) -> ListSink:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def write(self, results: Sequence[FrameResult]) -> None:
            written.extend(r.frame.frame_index for r in results)

    after = PerSourceStages([stage], [ListSink()])
    assert [r.frame.frame_index for r in after.add([_result("a", 3), _result("a", 0)])] == [0]
    assert [r.frame.frame_index for r in after.gap("a", (1, 2))] == [3]
    after.add([_result("a", 4)])
    assert after.end("a", "done") == []
    assert stage.seen["a"] == [0, 3, 4] and stage.gaps["a"] == [1, 2] and stage.ended == {"a": "done"}
    assert written == [0, 3, 4]


@pytest.mark.parametrize("sessions", [3])
def test_a_job_cut_into_segments_reaches_a_source_stage_in_order(
        clip_dir: Path, bright_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sessions: int) -> None:
    """vp9.webm (DALI's CPU reader) is cut into 20-frame segments over 3 decode sessions, so its
    batches reach the job out of order; landscape.mp4 (PyAV) comes whole, alongside."""
    plan_for = runner.decode_plan

    def tiny_segments(*args: object, **kwargs: object) -> runner.DecodePlan:
        return replace(plan_for(*args, **kwargs), min_segment=20, batch=8)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "decode_plan", tiny_segments)
    cfg = load_config(None, {"sources": [str(clip_dir / "vp9.webm"), str(clip_dir / "landscape.mp4")],
                             "model": str(bright_model), "device": "cpu", "out": str(tmp_path)})
    cfg = replace(cfg, decode=replace(cfg.decode, sessions=sessions))
    stage = StrictOrder()
    job = runner.FileJob(cfg, show_progress=False, stages=[stage])
    out: list[FrameResult] = []
    for batch in job.batches():
        out += batch
    summary = job.summary
    assert summary.ok, summary.to_text()
    for sid, name in (("vp9.webm", "vp9.webm"), ("landscape.mp4", "landscape.mp4")):
        n = len(pyav_frames(clip_dir / name))
        matching = [k for k in stage.seen if k.endswith(sid) or k == sid]
        assert len(matching) == 1, stage.seen.keys()
        key = matching[0]
        assert stage.seen[key] == list(range(n))
        assert stage.ended[key] == "done"
        assert not stage.gaps.get(key)
    # the iterator gives what the sinks got: every frame once
    assert sorted((r.frame.source_id, r.frame.frame_index) for r in out) == sorted(
        (k, i) for k, v in stage.seen.items() for i in v)
    assert summary.reorder_peak > 0, "the segments arrived in order: the test proves nothing"
    assert np.all(np.diff([r.frame.frame_index for r in out if r.frame.source_id.endswith("vp9.webm")]) == 1)


def test_frames_of_a_source_that_ended_reach_the_sinks_without_the_stages() -> None:
    """A camera removed while its batches were in flight: the stage heard its end; the late
    frames still reach the sinks (they are real results), but not the stage."""
    stage = StrictOrder()
    after = PerSourceStages([stage], [])
    after.add([_result("cam", 0)])
    after.end("cam", "removed")
    late = after.add([_result("cam", 1), _result("other", 0)])
    assert sorted((r.frame.source_id, r.frame.frame_index) for r in late) == [("cam", 1), ("other", 0)]
    assert stage.seen == {"cam": [0], "other": [0]} and stage.ended == {"cam": "removed"}


def test_a_source_that_starts_past_zero_is_released_from_its_first_index() -> None:
    """A live camera restarted on another Ray worker numbers from its epoch (2**40 ...): the
    buffer asks where each source starts when it first hears of it, instead of waiting for 0."""
    asked: list[str] = []

    def first(sid: str) -> int:
        asked.append(sid)
        return 2**40 if sid == "moved" else 0

    buf = ReorderBuffer(first_index=first)
    buf.add([_result("moved", 2**40 + 1), _result("cam", 1)])
    assert buf.release() == []  # each waits for its first frame
    buf.add([_result("moved", 2**40), _result("cam", 0)])
    released = buf.release()
    assert _indices(released, "moved") == [2**40, 2**40 + 1] and _indices(released, "cam") == [0, 1]
    buf.skip("moved", (2**40 + 2,))
    buf.add([_result("moved", 2**40 + 3)])
    assert _indices(buf.release(), "moved") == [f"skip {2**40 + 2}-{2**40 + 2}", 2**40 + 3]
    assert sorted(asked) == ["cam", "moved"]  # once per source
    with pytest.raises(ValueError, match="arrived after"):
        buf.add([_result("moved", 5)])  # below its first index: not this source's numbering
