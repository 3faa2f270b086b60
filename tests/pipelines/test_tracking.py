"""Tracking as a per-source stage: the ``tracker:`` config, the stage driven with synthetic
frames (a box moving right at constant speed, gaps, ends, a live time jump), the missing
extra, and a real job whose file is cut into segments tracked the same as whole."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pipelines.runner as runner
from pipelines.cli import MissingExtraError, main
from pipelines.graph import PerSourceStages, source_stages
from pipelines.stages import Gap, SourceEnd
from pipelines.tracking import TrackerStage
from streams.config import load_config, parse_config
from streams.detections import Detections
from streams.errors import ConfigError
from streams.frames import FrameMeta, FrameResult
from streams.tracker_config import TRACKER_DEFAULTS, TrackerConfig, TrackerType
from tests.media import write_clip

FPS = 25
TIME_BASE = (1, 12800)
TICKS = 12800 // FPS  # pts per frame
SPEED = 10  # pixels per frame


def _frame(i: int, x: float | None, *, pts: int | None = None, arrival: float | None = None,
           extra: Sequence[tuple[list[float], float, int]] = (), source: str = "cam") -> FrameResult:
    """Frame ``i`` of ``source``: a 40x40 box of class 0 at ``x`` (none when ``x`` is None), plus
    ``extra`` (box, confidence, class) detections."""
    boxes = [] if x is None else [([x, 50.0, x + 40, 90.0], 0.9, 0)]
    boxes += list(extra)
    meta = FrameMeta(source, source, i, i * TICKS if pts is None else pts, TIME_BASE, 1280, 720, arrival)
    dets = Detections(np.array([b for b, _, _ in boxes], np.float32).reshape(-1, 4),
                      np.array([c for _, c, _ in boxes], np.float32), np.array([k for _, _, k in boxes], np.int64),
                      ("car", "person"))
    return FrameResult(meta, dets)


def _moving(i: int, **kw: Any) -> FrameResult:
    return _frame(i, 10.0 + SPEED * i, **kw)


def _feed(stage: TrackerStage, items: list[FrameResult | Gap | SourceEnd], one_by_one: bool = True
          ) -> list[FrameResult]:
    out: list[FrameResult] = []
    frames: list[FrameResult] = []
    for item in [*items, None]:
        if isinstance(item, FrameResult):
            frames.append(item)
            if not one_by_one:
                continue
        if frames:
            out += stage.process(frames[0].frame.source_id, frames)
            frames = []
        if item is not None and not isinstance(item, FrameResult):
            out += stage.on_event(item)
    return out


def _ids(out: list[FrameResult], row: int = 0) -> dict[int, int]:
    """frame index → track id of detection ``row``."""
    tids = {}
    for r in out:
        assert r.detections.track_id is not None
        tids[r.frame.frame_index] = int(r.detections.track_id[row])
    return tids


def _tracks(stage: TrackerStage, source: str = "cam") -> list[dict[str, Any]]:
    tracks: list[dict[str, Any]] = stage.report()["sources"][source]["tracks"]
    return tracks


# config --------------------------------------------------------------------------------


def _parse(tracker: Any) -> TrackerConfig:
    cfg = parse_config({"sources": ["a.mp4"], "tracker": tracker})
    assert cfg.tracker is not None
    return cfg.tracker


def test_tracker_section_parses_with_the_types_defaults() -> None:
    cfg = _parse({"type": "ocsort", "track_buffer_s": 2.5, "match_threshold": 0.2})
    assert cfg.type == "ocsort" and cfg.track_buffer_s == 2.5
    assert cfg.params() == {**TRACKER_DEFAULTS["ocsort"], "match_threshold": 0.2, "low_threshold": 0.1}
    assert _parse({}).params()["min_consecutive_frames"] == 2  # bytetrack's
    assert parse_config({"sources": ["a.mp4"]}).tracker is None


@pytest.mark.parametrize("tracker_type, cls_name", [("bytetrack", "ByteTrackTracker"), ("ocsort", "OCSORTTracker")])
def test_the_defaults_are_those_of_the_installed_trackers_package(tracker_type: str, cls_name: str) -> None:
    import trackers

    sig = inspect.signature(getattr(trackers, cls_name).__init__).parameters
    names = {"track_threshold": "track_activation_threshold", "high_threshold": "high_conf_det_threshold",
             "match_threshold": "minimum_iou_threshold", "min_consecutive_frames": "minimum_consecutive_frames"}
    for key, value in TRACKER_DEFAULTS[tracker_type].items():
        assert sig[names.get(key, key)].default == value, key


@pytest.mark.parametrize("tracker, key", [
    ({"type": "sort"}, "tracker.type"),
    ({"track_buffer_s": 0}, "tracker.track_buffer_s"),
    ({"track_buffer_s": -1.0}, "tracker.track_buffer_s"),
    ({"track_buffer_s": float("inf")}, "tracker.track_buffer_s"),
    ({"high_threshold": 0}, "tracker.high_threshold"),
    ({"track_threshold": -0.2}, "tracker.track_threshold"),
    ({"match_threshold": 1.5}, "tracker.match_threshold"),
    ({"low_threshold": 0.0}, "tracker.low_threshold"),
    ({"low_threshold": 0.7, "high_threshold": 0.5}, "tracker.low_threshold"),
    ({"min_consecutive_frames": 0}, "tracker.min_consecutive_frames"),
    ({"type": "ocsort", "delta_t": 0}, "tracker.delta_t"),
    ({"type": "ocsort", "direction_consistency_weight": -1.0}, "tracker.direction_consistency_weight"),
    ({"type": "ocsort", "track_threshold": 0.5}, "tracker.track_threshold"),
    ({"delta_t": 2}, "tracker.delta_t"),
    ({"report_tracks": -1}, "tracker.report_tracks"),
    ({"buffer": 1}, "tracker.buffer"),
])
def test_a_bad_tracker_section_names_its_key(tracker: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        _parse(tracker)
    assert e.value.key == key


# the stage -----------------------------------------------------------------------------


@pytest.mark.parametrize("tracker_type", ["bytetrack", "ocsort"])
def test_a_box_moving_at_constant_speed_keeps_one_track_and_every_detection_is_kept(tracker_type: TrackerType) -> None:
    clutter = [([1000.0, 600.0, 1040.0, 640.0], 0.05, 1), ([900.0, 500.0, 940.0, 540.0], 0.3, 1)]
    with TrackerStage(TrackerConfig(type=tracker_type)) as stage:
        out = _feed(stage, [_moving(i, extra=clutter) for i in range(30)])
    assert [r.frame.frame_index for r in out] == list(range(30))
    assert all(len(r.detections) == 3 for r in out)  # below low_threshold and unconfirmed ones stay
    ids = _ids(out)
    confirmed = [ids[i] for i in range(5, 30)]
    assert set(confirmed) == {0} and ids[0] == -1  # a new track waits min_consecutive_frames for its id
    assert all(r.detections.track_id is not None and r.detections.track_id[1] == -1 for r in out)  # 0.05: not shown
    (track,) = _tracks(stage)
    assert track["track_id"] == 0 and track["class"] == "car" and track["last_frame"] == 29
    assert track["last_pts_s"] == pytest.approx(29 / FPS) and track["end"] is None
    assert track["frames"] == 30 - track["first_frame"]
    assert stage.report()["sources"]["cam"]["frame_rate"] == FPS


def test_track_ids_reach_the_records() -> None:
    with TrackerStage(TrackerConfig()) as stage:
        out = _feed(stage, [_moving(i) for i in range(4)], one_by_one=False)
    assert [rec["track_id"] for rec in out[-1].detections.to_records()] == [0]


def test_a_lone_first_frame_is_held_until_the_frame_rate_is_known() -> None:
    with TrackerStage(TrackerConfig()) as stage:
        assert stage.process("cam", [_moving(0)]) == []
        out = stage.process("cam", [_moving(1)])
        assert [r.frame.frame_index for r in out] == [0, 1]
        assert stage.process("solo", [_moving(0, source="solo")]) == []
        held = stage.on_event(SourceEnd("solo", "done"))  # the end releases it
    assert [r.frame.source_id for r in held] == ["solo"]
    assert held[0].detections.track_id is not None


def test_the_frame_rate_comes_from_pts_across_a_gap() -> None:
    with TrackerStage(TrackerConfig()) as stage:
        _feed(stage, [_moving(0), Gap("cam", range(1, 4)), _moving(4), _moving(5)])
    assert stage.report()["sources"]["cam"]["frame_rate"] == FPS


@pytest.mark.parametrize("tracker_type", ["bytetrack", "ocsort"])
def test_a_short_gap_is_bridged_by_the_motion_model(tracker_type: TrackerType) -> None:
    """10 frames never come (0.4 s < the 1 s buffer): the box moved 110 px meanwhile, far past
    its 40 px width, so only a tracker told that 10 frames' time passed finds it again."""
    items: list[FrameResult | Gap | SourceEnd] = [_moving(i) for i in range(20)]
    items += [Gap("cam", range(20, 30)), *[_moving(i) for i in range(30, 40)]]
    with TrackerStage(TrackerConfig(type=tracker_type)) as stage:
        ids = _ids(_feed(stage, items))
    assert {ids[i] for i in range(5, 40) if i in ids} == {0}
    (track,) = _tracks(stage)
    assert track["frames"] == 30 - track["first_frame"] and track["end"] is None


def test_a_gap_longer_than_the_buffer_ends_the_tracks_with_reason_gap() -> None:
    items: list[FrameResult | Gap | SourceEnd] = [_moving(i) for i in range(10)]
    items += [Gap("cam", range(10, 40)), *[_moving(i) for i in range(40, 50)]]  # 1.2 s
    with TrackerStage(TrackerConfig(track_buffer_s=1.0)) as stage:
        ids = _ids(_feed(stage, items))
    assert ids[9] == 0 and ids[49] == 1
    first, second = _tracks(stage)
    assert (first["track_id"], first["end"], first["last_frame"]) == (0, "gap", 9)
    assert (second["track_id"], second["end"], second["first_frame"]) == (1, None, 41)


def test_a_live_reconnect_whose_pts_continue_but_arrival_jumps_ends_the_tracks() -> None:
    """A live camera's pts continue one frame step across a reconnect; its frames' arrival
    times show the 5 s it was away."""
    items: list[FrameResult | Gap | SourceEnd] = [_moving(i, arrival=100 + i / FPS) for i in range(10)]
    items += [_moving(i, arrival=105 + i / FPS) for i in range(10, 20)]
    with TrackerStage(TrackerConfig()) as stage:
        ids = _ids(_feed(stage, items))
    assert ids[9] == 0 and ids[19] == 1
    assert [(t["track_id"], t["end"]) for t in _tracks(stage)] == [(0, "gap"), (1, None)]


def test_a_live_source_with_steady_arrivals_keeps_its_track() -> None:
    items: list[FrameResult | Gap | SourceEnd] = [_moving(i, arrival=100 + i / FPS) for i in range(20)]
    with TrackerStage(TrackerConfig()) as stage:
        ids = _ids(_feed(stage, items))
    assert {ids[i] for i in range(2, 20)} == {0}


def test_a_track_not_seen_for_the_buffer_ends_lost() -> None:
    items: list[FrameResult | Gap | SourceEnd] = [_moving(i) for i in range(10)]
    items += [_frame(i, None) for i in range(10, 50)]  # the box is gone: 1.6 s of empty frames
    with TrackerStage(TrackerConfig(track_buffer_s=1.0)) as stage:
        _feed(stage, items)
        (track,) = _tracks(stage)
    assert (track["end"], track["last_frame"]) == ("lost", 9)


def test_source_end_ends_tracks_frees_the_tracker_and_ids_are_not_reused() -> None:
    with TrackerStage(TrackerConfig()) as stage:
        first = _ids(_feed(stage, [*[_moving(i) for i in range(10)], SourceEnd("cam", "removed")]))
        assert stage.sources == []
        again = _ids(_feed(stage, [_moving(i) for i in range(10)]))  # the same id comes back
        assert stage.sources == ["cam"]
    assert set(first.values()) == {-1, 0} and set(again.values()) == {-1, 1}
    assert [(t["track_id"], t["end"]) for t in _tracks(stage)] == [(0, "removed"), (1, None)]


def test_a_camera_restarted_in_a_later_epoch_numbers_its_tracks_in_that_epoch() -> None:
    """A live camera restarted on another Ray worker numbers its frames from e * 2**40; its
    tracks start at e * 2**32, so they never repeat the ids of its earlier epochs (which ran
    on another worker), across a tracker restart after a gap too."""
    from streams.frames import FRAME_INDEX_EPOCH, TRACK_ID_EPOCH

    base = 3 * FRAME_INDEX_EPOCH

    def frame(i: int, arrival: float) -> FrameResult:
        r = _moving(i, arrival=arrival)
        return replace(r, frame=replace(r.frame, frame_index=base + i))

    items: list[FrameResult | Gap | SourceEnd] = [frame(i, 100 + i / FPS) for i in range(10)]
    items += [frame(i, 105 + i / FPS) for i in range(10, 20)]  # 5 s away: a new tracker object
    with TrackerStage(TrackerConfig()) as stage:
        ids = _ids(_feed(stage, items))
    assert ids[base + 9] == 3 * TRACK_ID_EPOCH and ids[base + 19] == 3 * TRACK_ID_EPOCH + 1
    assert [t["track_id"] for t in _tracks(stage)] == [3 * TRACK_ID_EPOCH, 3 * TRACK_ID_EPOCH + 1]


def test_the_report_lists_the_most_recent_ended_tracks_and_counts_the_rest() -> None:
    items: list[FrameResult | Gap | SourceEnd] = []
    for k in range(5):  # five tracks in turn, each ended by a long gap
        base = k * 100
        items += [_moving(base + i) for i in range(5)] + [Gap("cam", range(base + 5, base + 100))]
    with TrackerStage(TrackerConfig(report_tracks=2)) as stage:
        _feed(stage, items)
    src = stage.report()["sources"]["cam"]
    assert (src["tracks_total"], src["tracks_left_out"]) == (5, 2)
    assert [t["track_id"] for t in src["tracks"]] == [2, 3, 4]  # two ended, the live one


def test_per_source_stages_keep_the_sources_apart() -> None:
    with TrackerStage(TrackerConfig()) as stage:
        after = PerSourceStages([stage], [])
        out: list[FrameResult] = []
        for i in range(10):
            out += after.add([_moving(i, source="a"), _frame(i, 500.0 - SPEED * i, source="b")])
        out += after.end("a", "done") + after.end("b", "done")
    by_source = {s: set(_ids([r for r in out if r.frame.source_id == s]).values()) for s in ("a", "b")}
    assert by_source == {"a": {-1, 0}, "b": {-1, 0}}  # ids are per source
    assert sorted(stage.report()["sources"]) == ["a", "b"]


# wiring and the extra ------------------------------------------------------------------


def test_source_stages_builds_the_tracker_from_the_config() -> None:
    cfg = parse_config({"sources": ["a.mp4"], "tracker": {"type": "ocsort"}})
    (stage,) = source_stages(cfg)
    assert isinstance(stage, TrackerStage) and stage.cfg.type == "ocsort"
    assert source_stages(replace(cfg, tracker=None)) == []


def test_without_the_tracking_extra_the_config_fails_before_work_and_fovea_run_exits_2(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "trackers", None)  # import trackers raises ImportError
    cfg = parse_config({"sources": ["a.mp4"], "tracker": {}})
    with pytest.raises(MissingExtraError, match=r"tracking.*pip install --no-deps trackers=="):
        source_stages(cfg)
    job = tmp_path / "job.yaml"
    job.write_text("sources: [clip.mp4]\ntracker: {type: bytetrack}\n")
    assert main(["run", str(job), "--no-progress", "--device", "cpu"]) == 2
    assert "'tracking' extra" in capsys.readouterr().err


# a real job ----------------------------------------------------------------------------


def _tracked_job(clip: Path, model: Path, out: Path, tiny: bool, monkeypatch: pytest.MonkeyPatch
                 ) -> tuple[list[tuple[int, int, tuple[float, ...]]], runner.FileJob]:
    plan_for = runner.decode_plan

    def plan(*args: Any, **kwargs: Any) -> runner.DecodePlan:
        p = plan_for(*args, **kwargs)
        return replace(p, min_segment=20, batch=8) if tiny else replace(p, min_segment=100_000, batch=8)

    monkeypatch.setattr(runner, "decode_plan", plan)
    cfg = load_config(None, {"sources": [str(clip)], "model": str(model), "device": "cpu", "out": str(out)})
    cfg = replace(cfg, decode=replace(cfg.decode, sessions=3),
                  tracker=TrackerConfig(track_threshold=0.5, high_threshold=0.5))
    job = runner.FileJob(cfg, show_progress=False)
    rows: list[tuple[int, int, tuple[float, ...]]] = []
    for batch in job.batches():
        for r in batch:
            tids = r.detections.track_id
            assert tids is not None
            rows += [(r.frame.frame_index, int(t), tuple(b)) for t, b in zip(tids.tolist(), r.detections.xyxy.tolist(),
                                                                          strict=True)]
    assert job.summary.ok, job.summary.to_text()
    return sorted(rows), job


@pytest.mark.slow
def test_tracks_are_the_same_whether_a_file_is_decoded_whole_or_in_segments(
        tmp_path: Path, bright_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 120-frame clip of a moving square (VP9: DALI's reader cuts it at keyframes), once as
    one segment and once in 20-frame segments over 3 decode sessions that reach the job out
    of order: every detection has the same frame, track id and box."""
    clip = write_clip(tmp_path / "moving.webm", "libvpx-vp9", frames=120, width=320, height=240,
                      options={"g": "20", "keyint_min": "20"})
    whole, job1 = _tracked_job(clip, bright_model, tmp_path / "whole", False, monkeypatch)
    cut, job2 = _tracked_job(clip, bright_model, tmp_path / "cut", True, monkeypatch)
    assert [s[2] for s in job1.summary.sessions] == [120]  # frames per decode session
    assert [s[2] for s in job2.summary.sessions] == [40, 40, 40]
    assert job2.summary.reorder_peak > job1.summary.reorder_peak, "the segments came in order"
    assert cut == whole
    tracked = {t for _, t, _ in whole if t >= 0}
    assert len({i for i, t, _ in whole if t >= 0}) > 100 and len(tracked) >= 2
    (src,) = job2.summary.stages["TrackerStage"]["sources"].values()
    assert src["tracks_total"] == len(tracked)
    assert {t["end"] for t in src["tracks"]} <= {"lost", "done"} and src["tracks"][-1]["end"] == "done"


# the batched implementation ------------------------------------------------------------


def test_bytetrack_runs_batched_unless_the_reference_is_asked_for() -> None:
    assert _parse({}).resolved_implementation() == "batched"
    assert _parse({"implementation": "reference"}).resolved_implementation() == "reference"
    assert _parse({"type": "ocsort"}).resolved_implementation() == "reference"
    assert _parse({"implementation": "batched"}).resolved_implementation() == "batched"
    for bad, key in [({"type": "ocsort", "implementation": "batched"}, "tracker.implementation"),
                     ({"implementation": "fast"}, "tracker.implementation")]:
        with pytest.raises(ConfigError) as e:
            _parse(bad)
        assert e.value.key == key


def _scene_results(seed: int, sources: int, frames: int) -> list[list[FrameResult]]:
    """Seeded scenes (tests.operators.test_batched_tracking.make_scene) as FrameResults with
    pts, per source; one source goes silent for longer than the track buffer."""
    from tests.operators.test_batched_tracking import make_scene

    rng = np.random.default_rng(seed)
    out: list[list[FrameResult]] = []
    for s in range(sources):
        sid = f"cam{s}"
        results = []
        for i, f in enumerate(make_scene(rng, frames, FPS)):
            if f is None or (s == 0 and 100 <= i < 140):  # dropped frames; source 0: a 1.6 s silence
                continue
            t, xyxy, conf = f
            meta = FrameMeta(sid, sid, i, max(0, round(t * TIME_BASE[1])), TIME_BASE, 1280, 720)
            classes = rng.integers(0, 2, len(conf)).astype(np.int64)
            results.append(FrameResult(meta, Detections(xyxy, conf, classes, ("car", "person"))))
        out.append(results)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_the_batched_stage_gives_the_reference_stages_outputs(seed: int) -> None:
    scenes = _scene_results(seed, sources=4, frames=250)
    outputs: dict[str, list[tuple[str, int, list[int]]]] = {}
    reports: dict[str, dict[str, Any]] = {}
    for impl in ("reference", "batched"):
        with TrackerStage(TrackerConfig(implementation=impl)) as stage:  # type: ignore[arg-type]
            assert stage.implementation == impl
            after = PerSourceStages([stage], [])
            got: list[FrameResult] = []
            for i in range(250):
                got += after.add([r for rs in scenes for r in rs if r.frame.frame_index == i])
            for s in range(len(scenes)):
                got += after.end(f"cam{s}", "done")
        rows = []
        for r in got:
            assert r.detections.track_id is not None
            rows.append((r.frame.source_id, r.frame.frame_index, r.detections.track_id.tolist()))
        outputs[impl] = rows
        reports[impl] = {k: v for k, v in stage.report().items() if k != "implementation"}
    assert outputs["batched"] == outputs["reference"]
    assert reports["batched"] == reports["reference"]
    tracks = reports["reference"]["sources"]["cam0"]["tracks"]
    assert any(t["end"] == "gap" for t in tracks) and any(t["end"] == "lost" for t in tracks)
    assert sum(len(set(ids) - {-1}) for _, _, ids in outputs["reference"]) > 100  # many tracked detections


def test_the_batched_stage_steps_every_ready_source_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through PerSourceStages, runs of several sources without a gap reach the batched tracker in
    one process_many call: one vectorized step carries several sources' frames, and the tracks are
    still the reference's (frames whose index was dropped are declared as gaps here)."""
    from operators.batched_tracking import BatchedByteTrack

    scenes = _scene_results(3, sources=4, frames=200)
    step_sizes: list[int] = []
    real_step = BatchedByteTrack.step

    def counting_step(self: BatchedByteTrack, frames: Any) -> Any:
        step_sizes.append(len(frames))
        return real_step(self, frames)

    monkeypatch.setattr(BatchedByteTrack, "step", counting_step)
    outputs: dict[str, dict[tuple[str, int], list[int]]] = {}
    for impl in ("reference", "batched"):
        with TrackerStage(TrackerConfig(implementation=impl)) as stage:  # type: ignore[arg-type]
            after = PerSourceStages([stage], [])
            got: list[FrameResult] = []
            seen = {f"cam{s}": {r.frame.frame_index for r in rs} for s, rs in enumerate(scenes)}
            for i in range(200):
                for sid, indices in seen.items():
                    if i not in indices:
                        got += after.gap(sid, (i,))
                got += after.add([r for rs in scenes for r in rs if r.frame.frame_index == i])
            for s in range(len(scenes)):
                got += after.end(f"cam{s}", "done")
        rows = {}
        for r in got:
            assert r.detections.track_id is not None
            rows[(r.frame.source_id, r.frame.frame_index)] = r.detections.track_id.tolist()
        outputs[impl] = rows
    assert outputs["batched"] == outputs["reference"]
    assert len(outputs["batched"]) == sum(len(rs) for rs in scenes)
    assert max(step_sizes) == 4, "no step carried every source's frame"
