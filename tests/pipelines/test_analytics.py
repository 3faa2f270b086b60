"""The analytics stage: line crossings (hysteresis, direction), zones (enter, exit, dwell,
lost tracks, source end), per-source geometry, and every bad input refused with its key."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.analytics import AnalyticsStage, analytics_stage
from pipelines.graph import PerSourceStages, open_sinks, source_stages
from pipelines.runner import run_job
from pipelines.stages import Gap, SourceEnd
from streams.analytics_config import AnalyticsConfig
from streams.config import JobConfig, load_config, parse_config
from streams.detections import Detections
from streams.errors import ConfigError
from streams.events import Event
from streams.frames import FrameMeta, FrameResult
from streams.schema import from_dict
from streams.sinks import SINKS
from streams.sinks.video import VideoSink
from streams.tracker_config import TrackerConfig
from tests.media import write_clip
from tests.optional import require_module

W, H = 200, 100
NAMES = ("person", "car")
TB = (1, 1000)  # pts in ms: frame i at i * 100 ms (10 fps)


def _cfg(analytics: dict[str, Any], tracker: bool = True) -> JobConfig:
    raw: dict[str, Any] = {"sources": ["clips/"], "analytics": analytics}
    if tracker:
        raw["tracker"] = {"type": "bytetrack"}
    return parse_config(raw)


def _stage(sources: dict[str, Any], **options: Any) -> AnalyticsStage:
    return analytics_stage(_cfg({"sources": sources, **options}))


def _frame(i: int, tracks: dict[int, tuple[float, float]], source: str = "a.mp4", cls: int | list[int] = 0,
           size: tuple[int, int] = (W, H), pts: bool = True) -> FrameResult:
    """Frame ``i`` with one 10x10 box per track whose bottom centre is at the given point
    (``cls``: the class of all, or of each)."""
    xy = np.array([[x - 5, y - 10, x + 5, y] for x, y in tracks.values()], np.float32).reshape(-1, 4)
    n = len(tracks)
    classes = np.broadcast_to(np.asarray(cls, np.int64), (n,))
    dets = Detections(xy, np.full(n, 0.9, np.float32), classes, NAMES, track_id=np.array(list(tracks), np.int64))
    return FrameResult(FrameMeta(source, source, i, i * 100 if pts else None, TB, *size), dets)


def _path(stage: AnalyticsStage, points: Sequence[tuple[float, float]], track: int = 1, source: str = "a.mp4",
          end: bool = True, cls: int = 0) -> list[FrameResult]:
    """One track along ``points`` (a frame each), then the source's end: everything out."""
    out = stage.process(source, [_frame(i, {track: p}, source, cls) for i, p in enumerate(points)])
    if end:
        out += stage.on_event(SourceEnd(source, "done"))
    return out


def _events(results: Sequence[FrameResult], kind: str | None = None) -> list[Event]:
    return [e for r in results for e in r.events if kind is None or e.kind == kind]


def _crossings(results: Sequence[FrameResult]) -> list[tuple[int, str]]:
    return [(e.frame_index, e.data["direction"]) for e in _events(results, "line_cross")]


# a horizontal line drawn left to right at y = 50: "in" is moving down the image
ACROSS = {"a.mp4": {"lines": [{"name": "gate", "points": [[20, 50], [180, 50]]}]}}


def test_a_track_moving_across_counts_once_in_its_direction() -> None:
    stage = _stage(ACROSS)
    down = _path(stage, [(100, 10 + 8 * i) for i in range(11)])  # y 10 .. 90: down
    assert [r.frame.frame_index for r in down] == list(range(11))  # every frame, in order
    assert _crossings(down) == [(6, "in")]  # frame 5 (y 50) is on the line, frame 6 (y 58) clear of it
    ev = _events(down, "line_cross")[0]
    assert (ev.track_id, ev.class_name, ev.data["line"], ev.pts) == (1, "person", "gate", 600)
    stage2 = _stage(ACROSS)
    up = _path(stage2, [(100, 90 - 8 * i) for i in range(11)], cls=1)
    assert [d for _, d in _crossings(up)] == ["out"]
    report = stage2.report()["sources"]["a.mp4"]["lines"]["gate"]
    assert report == {"in": {}, "out": {"car": 1}}


def test_the_count_waits_until_the_track_is_clear_of_the_line() -> None:
    stage = _stage(ACROSS, min_distance=6)
    ys = [30, 45, 52, 55, 57, 70]  # crosses at frame 2, clear (>= 6 px) only at frame 4
    assert _crossings(_path(stage, [(100, y) for y in ys])) == [(4, "in")]


def test_a_wobbling_track_counts_once() -> None:
    stage = _stage(ACROSS)
    ys = [30, 49, 51, 49, 52, 48, 51, 47, 53, 60, 52, 49, 53, 62, 70]
    results = _path(stage, [(100, y) for y in ys])
    assert _crossings(results) == [(9, "in")]
    assert stage.report()["sources"]["a.mp4"]["lines"]["gate"] == {"in": {"person": 1}, "out": {}}


def test_a_track_that_goes_back_without_clearing_counts_nothing() -> None:
    stage = _stage(ACROSS)
    ys = [30, 45, 53, 47, 40, 35]  # over the line by 3 px (< 4) and back
    assert _crossings(_path(stage, [(100, y) for y in ys])) == []


def test_a_back_and_forth_track_counts_each_direction_after_clearing() -> None:
    stage = _stage(ACROSS)
    ys = [30, 70, 52, 48, 70, 47, 44, 30, 56, 70]
    # 70: in; 52/48 in the band, back to 70: nothing; 47 band, 44 clear above: out; 56: in
    assert _crossings(_path(stage, [(100, y) for y in ys])) == [(1, "in"), (6, "out"), (8, "in")]
    assert stage.report()["sources"]["a.mp4"]["lines"]["gate"] == {"in": {"person": 2}, "out": {"person": 1}}


def test_going_around_the_end_of_the_line_counts_nothing() -> None:
    stage = _stage(ACROSS)
    path = [(190, 30), (190, 70), (100, 70), (100, 30)]  # beyond B (x 180), then back through it
    assert _crossings(_path(stage, path)) == [(3, "out")]


def test_direction_follows_the_line_orientation() -> None:
    # drawn top to bottom at x = 100: its right-hand side is the screen's left
    line = {"a.mp4": {"lines": [{"name": "v", "points": [[100, 0], [100, 100]]}]}}
    rightwards = _path(_stage(line), [(60 + 10 * i, 50) for i in range(9)])
    leftwards = _path(_stage(line), [(140 - 10 * i, 50) for i in range(9)])
    assert [d for _, d in _crossings(rightwards)] == ["out"]
    assert [d for _, d in _crossings(leftwards)] == ["in"]


def test_untracked_detections_and_other_classes_do_not_count() -> None:
    line = {"a.mp4": {"lines": [{"name": "gate", "points": [[20, 50], [180, 50]], "classes": ["car"]}]}}
    stage = _stage(line)
    # -1 (untracked) and track 2 are cars, track 1 a person: only track 2 counts
    frames = [_frame(i, {-1: (50, 10 + 10 * i), 1: (100, 10 + 10 * i), 2: (150, 10 + 10 * i)}, cls=[1, 0, 1])
              for i in range(9)]
    out = stage.process("a.mp4", frames) + stage.on_event(SourceEnd("a.mp4", "done"))
    assert [(e.track_id, e.class_name) for e in _events(out, "line_cross")] == [(2, "car")]
    report = stage.report()["sources"]["a.mp4"]
    assert report["untracked_detections"] == 9 and report["frames"] == 9


ZONE = {"a.mp4": {"zones": [{"name": "lot", "points": [[50, 20], [150, 20], [150, 80], [50, 80]]}]}}


def test_zone_enter_exit_and_dwell_from_pts() -> None:
    stage = _stage(ZONE)
    xs = [20, 40, 60, 80, 100, 120, 140, 160, 180]  # inside (x in 50..150) at frames 2..6
    results = _path(stage, [(x, 50) for x in xs])
    enters, exits = _events(results, "zone_enter"), _events(results, "zone_exit")
    assert [(e.frame_index, e.data["zone"]) for e in enters] == [(2, "lot")]
    assert [(e.frame_index, e.data["reason"], e.data["dwell_s"]) for e in exits] == [(7, "left", 0.5)]
    zone = stage.report()["sources"]["a.mp4"]["zones"]["lot"]
    assert zone["enters"] == {"person": 1} and zone["exits"] == {"person": 1} and zone["occupancy"] == {}
    assert zone["dwell_s"] == {"person": {"count": 1, "mean": 0.5, "min": 0.5, "max": 0.5}}
    assert zone["dwells"] == [{"track_id": 1, "class": "person", "enter_frame": 2, "exit_frame": 7,
                               "dwell_s": 0.5, "reason": "left"}]


def test_a_track_on_the_zone_border_enters_and_exits_once() -> None:
    stage = _stage(ZONE)
    xs = [40, 49, 51, 48, 52, 47, 53, 44, 30]  # the border is x = 50; clear outside (4 px) at 44
    results = _path(stage, [(x, 50) for x in xs])
    assert [(e.kind, e.frame_index) for e in _events(results)] == [("zone_enter", 2), ("zone_exit", 7)]


def test_a_lost_track_exits_with_a_finite_dwell(caplog: pytest.LogCaptureFixture) -> None:
    stage = _stage(ZONE, track_timeout_s=1.0)
    frames = [_frame(i, {1: (100, 50)}) for i in range(3)]  # in the zone, frames 0-2, then gone
    frames += [_frame(i, {}) for i in range(3, 20)]
    results = stage.process("a.mp4", frames)
    [ex] = _events(results, "zone_exit")
    # last seen at 0.2 s: gone for more than 1 s at frame 13 (1.3 s)
    assert (ex.frame_index, ex.data["reason"], ex.data["dwell_s"], ex.data["last_seen_frame"]) == (13, "lost", 0.2, 2)
    assert stage.report()["sources"]["a.mp4"]["zones"]["lot"]["occupancy"] == {}


def test_the_source_end_closes_zones_on_the_last_frame() -> None:
    stage = _stage(ZONE)
    frames = [_frame(i, {1: (100, 50), 2: (120, 60)}) for i in range(5)]
    out = stage.process("a.mp4", frames)
    assert [r.frame.frame_index for r in out] == [0, 1, 2, 3]  # the last frame waits for the end
    zone = stage.report()["sources"]["a.mp4"]["zones"]["lot"]
    assert zone["occupancy"] == {"person": 2}
    assert stage.on_event(Gap("a.mp4", range(5, 7))) == []
    [last] = stage.on_event(SourceEnd("a.mp4", "stopped"))
    assert last.frame.frame_index == 4
    exits = [(e.track_id, e.data["reason"], e.data["dwell_s"]) for e in last.events]
    assert exits == [(1, "source_end", 0.4), (2, "source_end", 0.4)]
    assert stage.report()["sources"]["a.mp4"]["zones"]["lot"]["occupancy"] == {}


def test_dwell_is_null_without_pts() -> None:
    stage = _stage(ZONE)
    frames = [_frame(i, {1: (100 if i < 3 else 180, 50)}, pts=False) for i in range(5)]
    results = stage.process("a.mp4", frames) + stage.on_event(SourceEnd("a.mp4", "done"))
    [ex] = _events(results, "zone_exit")
    assert ex.data["dwell_s"] is None and ex.data["reason"] == "left"


def test_listeners_get_every_event() -> None:
    got: list[Event] = []

    class Listener:
        def record_events(self, events: Sequence[Event]) -> None:
            got.extend(events)

    stage = _stage({**ZONE, "*": ACROSS["a.mp4"]})
    stage.add_listener(Listener())
    results = _path(stage, [(100, 10 + 10 * i) for i in range(9)])
    assert [e.kind for e in got] == [e.kind for e in _events(results)] == ["zone_enter", "line_cross", "zone_exit"]


def test_normalized_coordinates_scale_to_each_source() -> None:
    line = {"*": {"lines": [{"name": "mid", "points": [[0, 0.5], [1, 0.5]], "normalized": True}]}}
    stage = _stage(line)
    small = stage.process("a.mp4", [_frame(i, {1: (50, 10 + 10 * i)}) for i in range(9)])
    big = stage.process("b.mp4", [_frame(i, {1: (50, 150 + 20 * i)}, "b.mp4", size=(400, 400)) for i in range(9)])
    small += stage.on_event(SourceEnd("a.mp4", "done"))
    big += stage.on_event(SourceEnd("b.mp4", "done"))
    assert _crossings(small) == [(5, "in")]  # y 50 of 100
    assert _crossings(big) == [(3, "in")]    # y 200 of 400: 210 at frame 3 is clear
    assert stage.report()["sources_without_frames"] == []


def test_sources_are_matched_by_id_and_star_applies_to_all() -> None:
    cfg = {"*": ACROSS["a.mp4"], "cam1/a.mp4": ZONE["a.mp4"]}
    stage = _stage(cfg)
    path = [(100, 10 + 10 * i) for i in range(9)]
    cam = _path(stage, path, source="cam1/a.mp4")
    other = _path(stage, path, source="other.mp4")
    assert {e.kind for e in _events(cam)} == {"line_cross", "zone_enter", "zone_exit"}
    assert {e.kind for e in _events(other)} == {"line_cross"}
    only = _stage({"cam2": ZONE["a.mp4"]})
    passed = only.process("a.mp4", [_frame(0, {1: (100, 50)})])  # no geometry: passes through, not held
    assert len(passed) == 1 and passed[0].events == ()
    assert only.report() == {"sources": {}, "sources_without_frames": ["cam2"]}


def test_source_stages_puts_analytics_after_the_tracker() -> None:
    stages = source_stages(_cfg({"sources": ACROSS}))
    assert [type(s).__name__ for s in stages] == ["TrackerStage", "AnalyticsStage"]


def test_through_per_source_stages_events_reach_the_sinks() -> None:
    class Sink:
        def __init__(self) -> None:
            self.results: list[FrameResult] = []

        def write(self, results: Sequence[FrameResult]) -> None:
            self.results.extend(results)

    sink = Sink()
    after = PerSourceStages([_stage(ACROSS)], [sink])  # type: ignore[list-item]
    frames = [_frame(i, {1: (100, 10 + 10 * i)}) for i in range(9)]
    for f in reversed(frames):  # any order in: the stage sees frame order
        after.add([f])
    after.end("a.mp4", "done")
    assert [r.frame.frame_index for r in sink.results] == list(range(9))
    assert _crossings(sink.results) == [(5, "in")]
    assert after.reports()["AnalyticsStage"]["sources"]["a.mp4"]["lines"]["gate"]["in"] == {"person": 1}


# -- bad input ------------------------------------------------------------------------------
def _zone(points: Any, **extra: Any) -> dict[str, Any]:
    return {"cam1": {"zones": [{"name": "z", "points": points, **extra}]}}


def _line(points: Any, **extra: Any) -> dict[str, Any]:
    return {"cam1": {"lines": [{"name": "l", "points": points, **extra}]}}


@pytest.mark.parametrize(("analytics", "key", "reason"), [
    ({"sources": _zone([[0, 0], [10, 0]])}, "analytics.sources.cam1.zones[0].points", "at least 3 points, got 2"),
    ({"sources": _line([[5, 5], [5, 5]])}, "analytics.sources.cam1.lines[0].points", "two distinct points"),
    ({"sources": _line([[5, 5]])}, "analytics.sources.cam1.lines[0].points", "expected 2 items"),
    ({"sources": _line([[0, 0], [1.2, 0.5]], normalized=True)}, "analytics.sources.cam1.lines[0].points[1]",
     "outside the frame"),
    ({"sources": _zone([[0, 0], [10, 0], [5, -1]])}, "analytics.sources.cam1.zones[0].points[2]", ">= 0"),
    ({"sources": _zone([[0, 0], [10, 0], [5, float("inf")]])}, "analytics.sources.cam1.zones[0].points[2]",
     "finite"),
    ({"sources": _line([[0, 0], [10, 0]]), "anchor": "feet"}, "analytics.anchor", "expected one of"),
    ({"sources": _line([[0, 0], [10, 0]], anchor="middle")}, "analytics.sources.cam1.lines[0].anchor",
     "expected one of"),
    ({"sources": _line([[0, 0], [10, 0]], min_distance=-1)}, "analytics.sources.cam1.lines[0].min_distance",
     ">= 0"),
    ({"sources": _line([[0, 0], [10, 0]], classes=[])}, "analytics.sources.cam1.lines[0].classes", "empty"),
    ({"sources": {"cam1": {}}}, "analytics.sources.cam1", "at least one zone or line"),
    ({"sources": {}}, "analytics.sources", "at least one"),
    ({"sources": {"cam1": {"lines": [{"name": "l", "points": [[0, 0], [1, 1]]}] * 2}}},
     "analytics.sources.cam1.lines[1].name", "used twice"),
    ({"sources": {"*": _line([[0, 0], [1, 1]])["cam1"], **_line([[0, 0], [2, 2]])}},
     "analytics.sources.cam1.lines[0].name", "also a line of \"*\""),
    ({"sources": _line([[0, 0], [10, 0]]), "track_timeout_s": 0}, "analytics.track_timeout_s", "> 0"),
    ({"sources": {"cam1": {"zone": []}}}, "analytics.sources.cam1.zone", "unknown key"),
])
def test_bad_config_is_refused_at_load(analytics: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(analytics)
    assert e.value.key == key and reason in e.value.reason, str(e.value)


@pytest.mark.parametrize(("points", "reason"), [
    ([[0, 0], [10, 10], [10, 0], [0, 10]], "self-intersecting"),
    ([[0, 0], [5, 5], [10, 10]], "zero area"),
    ([[0, 0], [10, 0], [10, 10], [0, 0]], "do not repeat its first point"),
])
def test_bad_polygons_are_refused_when_the_job_is_built(points: list[list[float]], reason: str) -> None:
    cfg = _cfg({"sources": {"cam1": {"lines": [{"name": "l", "points": [[0, 0], [1, 1]]}],
                                     "zones": [{"name": "ok", "points": [[0, 0], [9, 0], [0, 9]]},
                                               {"name": "bad", "points": points}]}}})
    with pytest.raises(ConfigError) as e:
        source_stages(cfg)
    assert e.value.key == "analytics.sources.cam1.zones[1].points" and reason in e.value.reason


def test_analytics_without_a_tracker_is_refused() -> None:
    cfg = _cfg({"sources": ACROSS}, tracker=False)
    with pytest.raises(ConfigError) as e:
        source_stages(cfg)
    assert e.value.key == "analytics" and "tracker:" in e.value.reason


def test_pixel_coordinates_outside_the_frame_are_refused_at_the_first_frame() -> None:
    stage = _stage({"*": {"lines": [{"name": "l", "points": [[10, 10], [190, 99]]}],
                          "zones": [{"name": "z", "points": [[0, 0], [250, 0], [0, 50]]}]}})
    with pytest.raises(ConfigError) as e:
        stage.process("a.mp4", [_frame(0, {1: (100, 50)})])
    assert e.value.key == "analytics.sources.*.zones[0].points[1]"
    assert "outside the 200x100 frame of source 'a.mp4'" in e.value.reason
    fits = _stage({"*": {"zones": [{"name": "z", "points": [[0, 0], [200, 0], [200, 100]]}]}})  # edges included
    assert len(fits.process("a.mp4", [_frame(0, {1: (100, 50)}), _frame(1, {1: (100, 50)})])) == 1


def test_the_resolved_geometry_is_logged_once_per_source(caplog: pytest.LogCaptureFixture) -> None:
    stage = _stage(ACROSS)
    with caplog.at_level("INFO", logger="pipelines.analytics"):
        _path(stage, [(100, 10 * i) for i in range(5)])
    lines = [r.getMessage() for r in caplog.records if "analytics: source" in r.getMessage()]
    assert lines == ["analytics: source 'a.mp4' (200x100): line 'gate' [20.0, 50.0] -> [180.0, 50.0]"]


def test_live_metrics_count_the_stage_events() -> None:
    prometheus = require_module("prometheus_client", "the live extra: prometheus-client")
    from streams.live.metrics import AnalyticsMetrics

    registry = prometheus.CollectorRegistry()
    stage = _stage({**ZONE, "*": ACROSS["a.mp4"]})
    stage.add_listener(AnalyticsMetrics(registry))
    frames = [_frame(i, {1: (100, 10 + 10 * i), 2: (120, 40)}, cls=[0, 1]) for i in range(9)]
    stage.process("a.mp4", frames)  # track 1 (person) crosses the gate and leaves the lot; car 2 stays in it

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"fovea_live_{name}", {"stream": "a.mp4", **labels})

    assert value("line_crossings_total", line="gate", direction="in", **{"class": "person"}) == 1.0
    assert value("line_crossings_total", line="gate", direction="out", **{"class": "person"}) is None
    assert value("zone_events_total", zone="lot", kind="enter", **{"class": "person"}) == 1.0
    assert value("zone_events_total", zone="lot", kind="exit", **{"class": "person"}) == 1.0
    assert value("zone_occupancy", zone="lot", **{"class": "person"}) == 0.0
    assert value("zone_occupancy", zone="lot", **{"class": "car"}) == 1.0
    assert stage.report()["sources"]["a.mp4"]["zones"]["lot"]["occupancy"] == {"car": 1}
    stage.on_event(SourceEnd("a.mp4", "removed"))
    assert value("zone_occupancy", zone="lot", **{"class": "car"}) == 0.0


def test_open_sinks_hands_the_analytics_to_the_video_sink(tmp_path: Path) -> None:
    cfg = parse_config({"sources": ["clips/"], "tracker": {"type": "bytetrack"}, "analytics": {"sources": ACROSS},
                        "sinks": [{"type": "video", "path": str(tmp_path / "v")},
                                  {"type": "jsonl", "path": str(tmp_path / "d.jsonl"), "writer": "inline"}]})
    with contextlib.ExitStack() as stack:
        video, jsonl = open_sinks(cfg, stack)
        assert isinstance(video, VideoSink) and video.analytics is cfg.analytics
        assert not hasattr(jsonl, "analytics")


@pytest.mark.slow
def test_a_real_job_counts_the_tracks_crossing_the_middle(tmp_path: Path, bright_model: Path) -> None:
    """The CPU job end to end: decode, detect, track, count, and every sink gets the events."""
    clip = write_clip(tmp_path / "moving.mp4", frames=40, width=320, height=240)  # the square moves right
    out = tmp_path / "out"
    cfg = load_config(None, {"sources": [str(clip)], "model": str(bright_model), "device": "cpu", "out": str(out)})
    analytics = {"sources": {"moving.mp4": {
        "lines": [{"name": "middle", "points": [[0.5, 0], [0.5, 1]], "normalized": True}],
        "zones": [{"name": "left", "points": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]], "normalized": True}]}}}
    cfg = replace(cfg, tracker=TrackerConfig(track_threshold=0.5, high_threshold=0.5),
                  analytics=from_dict(AnalyticsConfig, analytics, "analytics"),
                  sinks=[*cfg.sinks, SINKS.parse({"type": "video", "path": str(out / "video")}, "sinks[2]")])
    summary = run_job(cfg, show_progress=False)
    assert summary.ok, summary.to_text()
    # the test model finds the square as a grid of small boxes: many tracks, all moving right
    records = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    frame_of_line = []
    frame = -1
    for r in records:  # every event line follows its own frame's record
        frame = frame if "event" in r else r["frame_index"]
        frame_of_line.append(frame)
    events = [r for r, f in zip(records, frame_of_line, strict=True) if "event" in r and r["frame_index"] == f]
    assert len(events) == sum(1 for r in records if "event" in r)
    crosses = [e for e in events if e["event"] == "line_cross"]
    assert crosses and {e["direction"] for e in crosses} == {"out"}  # top-to-bottom line: rightwards is out
    assert len({e["track_id"] for e in crosses}) == len(crosses)  # each track once
    assert all(20 <= e["frame_index"] <= 35 for e in crosses)  # the square's middle crosses x 160 at frame ~27
    report = summary.stages["AnalyticsStage"]["sources"]["moving.mp4"]
    assert report["lines"]["middle"] == {"in": {}, "out": {"0": len(crosses)}}
    enters = {e["track_id"]: e["frame_index"] for e in events if e["event"] == "zone_enter"}
    exits = [e for e in events if e["event"] == "zone_exit"]
    zone = report["zones"]["left"]
    assert zone["enters"] == {"0": len(enters)} and zone["exits"] == {"0": len(exits)} and zone["occupancy"] == {}
    assert sorted(e["track_id"] for e in exits) == sorted(enters)  # every visit closed (the source's end)
    left = [e for e in exits if e["reason"] == "left"]
    assert left and {e["reason"] for e in exits} <= {"left", "source_end"}
    for e in left:  # 25 fps, dwell from pts
        assert e["dwell_s"] == pytest.approx((e["frame_index"] - enters[e["track_id"]]) / 25)
    rows = (out / "detections.events.csv").read_text().splitlines()
    assert rows[0].startswith("event,") and len(rows) == 1 + len(events)
    assert (out / "video" / "moving.mp4.annotated.mp4").stat().st_size > 0
