"""Tracking evaluation: MOTA/IDF1/HOTA from ``trackers.eval`` on hand-made records with known
answers, line/zone counts and dwell times against the tracking ground truth (whose rules must
agree with the analytics stage's), ``fovea eval --tracking`` and the demo's counts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.analytics import AnalyticsStage
from pipelines.cli import main
from pipelines.count_eval import (
    analytics_section,
    compare_counts,
    counts_from_events,
    counts_from_report,
    load_events_jsonl,
)
from pipelines.evaluation import FrameMismatchError
from pipelines.stages import SourceEnd
from pipelines.track_eval import tracking_metrics
from streams.analytics_config import AnalyticsConfig
from streams.detections import Detections
from streams.frames import FrameMeta, FrameResult
from streams.schema import from_dict
from streams.synthetic import (
    CLASS_NAMES,
    CountingLine,
    CountingZone,
    SceneSpec,
    render_scene,
    tracking_scene,
    tracking_truth,
    write_clip,
)
from streams.synthetic.counting import TrajectoryRecorder
from tests.optional import skip_reason

# the metrics (and the tracker stage) need roboflow's trackers: the tracking extra, which CI installs
# (there a missing one fails the tests instead of skipping them: tests/optional.py)
_NO_TRACKERS = skip_reason("trackers", "the tracking extra: roboflow's trackers")
needs_trackers = pytest.mark.skipif(_NO_TRACKERS is not None, reason=str(_NO_TRACKERS))

NAMES = ["a", "b"]
QUIET = ["--log-level", "WARNING"]


def _box_a(i: int) -> list[float]:
    return [10.0 + 2 * i, 10.0, 40.0 + 2 * i, 40.0]


def _box_b(i: int) -> list[float]:
    return [120.0 - 2 * i, 60.0, 150.0 - 2 * i, 90.0]


def _gt(frames: Sequence[Sequence[tuple[int, list[float], int]]]) -> dict[str, Any]:
    """Ground truth with identities: per frame ``(object id, box, class id)``."""
    return {"width": 200, "height": 120, "fps": 10, "num_frames": len(frames), "class_names": NAMES,
            "frames": [{"frame_index": i, "boxes": [o[1] for o in f], "class_ids": [o[2] for o in f],
                        "track_ids": [o[0] for o in f]} for i, f in enumerate(frames)]}


def _records(frames: Sequence[Sequence[tuple[int, list[float], int]]], source: str = "s") -> list[dict[str, Any]]:
    """JSONL frame records: per frame ``(track id, box, class id)``."""
    return [{"source": source, "frame_index": i,
             "detections": [{"box": o[1], "confidence": 0.9, "class_id": o[2], "label": NAMES[o[2]],
                             "track_id": o[0]} for o in f]} for i, f in enumerate(frames)]


TRUTH = [[(0, _box_a(i), 0), (1, _box_b(i), 1)] for i in range(10)]  # 2 objects x 10 frames


@needs_trackers
def test_perfect_records_score_one_in_every_form() -> None:
    tracked = [[(70, _box_a(i), 0), (3, _box_b(i), 1)] for i in range(10)]  # any track ids
    records = _records(tracked)
    pairs = [(r["frame_index"], Detections(np.array([d["box"] for d in r["detections"]], np.float32),
                                           np.full(2, 0.9, np.float32), np.array([0, 1]), tuple(NAMES),
                                           np.array([d["track_id"] for d in r["detections"]])))
             for r in records]
    results = [FrameResult(FrameMeta("s", "s", i, i, (1, 10), 200, 120), d) for i, d in pairs]
    for preds in (records, pairs, results):
        r = tracking_metrics({"s": preds}, {"s": _gt(TRUTH)})
        assert (r.mota, r.idf1, r.hota) == (1.0, 1.0, pytest.approx(1.0))
        assert (r.id_switches, r.false_positives, r.false_negatives, r.true_positives) == (0, 0, 0, 20)
        assert (r.num_gt_objects, r.num_tracks, r.num_frames) == (2, 2, 10)
    assert "trackers" in r.library and "| MOTA (IoU 0.5) | 1.000 |" in r.to_markdown()


@needs_trackers
def test_one_id_switch() -> None:
    """B's track changes id at frame 5: 1 switch in 20 boxes (MOTA 19/20); IDF1 pairs B with
    one of its two ids for 5 frames: IDTP 15, IDFP 5, IDFN 5 -> 30 / 40."""
    switched = [[(7, _box_a(i), 0), (8 if i < 5 else 9, _box_b(i), 1)] for i in range(10)]
    r = tracking_metrics({"s": _records(switched)}, {"s": _gt(TRUTH)})
    assert r.id_switches == 1
    assert r.mota == pytest.approx(19 / 20)
    assert r.idf1 == pytest.approx(0.75) and r.idf1 < 1
    assert r.hota < 1 and r.num_tracks == 3


@needs_trackers
def test_a_missed_object() -> None:
    """B never tracked: 10 misses of 20 (MOTA 0.5); IDF1 2*10 / (2*10 + 10) = 2/3."""
    only_a = [[(7, _box_a(i), 0)] for i in range(10)]
    r = tracking_metrics({"s": _records(only_a)}, {"s": _gt(TRUTH)})
    assert (r.false_negatives, r.false_positives, r.id_switches) == (10, 0, 0)
    assert r.mota == pytest.approx(0.5)
    assert r.idf1 == pytest.approx(2 / 3)
    assert r.mostly_lost == 1 and r.mostly_tracked == 1


@needs_trackers
def test_untracked_wrong_class_and_shifted_boxes_do_not_match() -> None:
    frames = [[(7, _box_a(i), 0), (-1, _box_b(i), 1)] for i in range(10)]  # B detected, in no track
    r = tracking_metrics({"s": _records(frames)}, {"s": _gt(TRUTH)})
    assert r.false_negatives == 10 and r.false_positives == 0
    wrong = [[(7, _box_a(i), 1), (8, _box_b(i), 1)] for i in range(10)]  # A as class b
    r = tracking_metrics({"s": _records(wrong)}, {"s": _gt(TRUTH)})
    assert (r.true_positives, r.false_positives, r.false_negatives) == (10, 10, 10)
    # IoU of a 30 px box shifted by 12 px: 18*30 / (2*900 - 18*30) = 0.43 < 0.5
    shifted = [[(7, [b + 12 * (k % 2 == 0) for k, b in enumerate(_box_a(i))], 0), (8, _box_b(i), 1)]
               for i in range(10)]
    r = tracking_metrics({"s": _records(shifted)}, {"s": _gt(TRUTH)})
    assert (r.true_positives, r.false_negatives) == (10, 10)


@needs_trackers
def test_refusals() -> None:
    gt = {"s": _gt(TRUTH)}
    plain = _records(TRUTH)
    for r in plain:
        for d in r["detections"]:
            del d["track_id"]
    with pytest.raises(ValueError, match="no track ids"):
        tracking_metrics({"s": plain}, gt)
    no_ids = _gt(TRUTH)
    for f in no_ids["frames"]:
        del f["track_ids"]
    with pytest.raises(ValueError, match="identities"):
        tracking_metrics({"s": _records(TRUTH)}, {"s": no_ids})
    with pytest.raises(FrameMismatchError, match="dropped"):
        tracking_metrics({"s": _records(TRUTH)[:-2]}, gt)
    with pytest.raises(FrameMismatchError, match="no predictions"):
        tracking_metrics({"other": _records(TRUTH)}, gt)


# -- counts: the truth's rules are the analytics stage's ---------------------------------------------------


def _exact_run(spec: SceneSpec, source: str = "clip.mp4") -> tuple[dict[str, Any], AnalyticsStage, list[Any]]:
    """The truth of ``spec``, and the analytics stage run on the objects' exact anchors (a
    perfect detector and tracker): every object, every frame it is in, as a small box whose
    bottom centre is its anchor, its track id its object id + 100."""
    recorder = TrajectoryRecorder(spec.width, spec.height)
    for _ in render_scene(spec, recorder):
        pass
    trajectories = recorder.trajectories()
    gt = {"fps": spec.fps, "tracking": tracking_truth(trajectories, spec.lines, spec.zones, spec.fps)}
    section = analytics_section({source: gt})
    assert section is not None
    stage = AnalyticsStage(from_dict(AnalyticsConfig, section, "analytics"))
    per_frame: dict[int, list[tuple[int, int, float, float]]] = {}
    for t in trajectories:
        for f, x, y in t.points:
            per_frame.setdefault(f, []).append((t.track_id + 100, t.class_id, x, y))
    results = []
    tb = (1, int(spec.fps) * 10)
    for f in range(spec.num_frames):
        objs = per_frame.get(f, [])
        xyxy = np.array([[x - 3, y - 6, x + 3, y] for _, _, x, y in objs], np.float64).reshape(-1, 4)
        dets = Detections(xyxy.astype(np.float32), np.full(len(objs), 0.9, np.float32),
                          np.array([c for _, c, _, _ in objs], np.int64), CLASS_NAMES,
                          np.array([t for t, _, _, _ in objs], np.int64))
        results.append(FrameResult(FrameMeta(source, source, f, f * 10, tb, spec.width, spec.height), dets))
    out = stage.process(source, results) + stage.on_event(SourceEnd(source, "done"))
    return gt, stage, [e for r in out for e in r.events]


@pytest.mark.parametrize("spec", [
    tracking_scene(3, width=480, height=270, num_frames=90),
    SceneSpec(width=320, height=240, num_frames=90, seed=21, num_objects=(4, 7), speed=(0.01, 0.03),
              lines=(CountingLine("h", (0, 120), (320, 120)), CountingLine("diag", (40, 30), (280, 220))),
              zones=(CountingZone("tri", ((60, 60), (260, 90), (120, 220))),)),
], ids=["tracking_scene", "random_scene"])
def test_truth_equals_the_analytics_stage_on_exact_tracks(spec: SceneSpec) -> None:
    gt, stage, events = _exact_run(spec)
    truth = gt["tracking"]
    total = sum(n for line in truth["line_counts"].values() for d in line.values() for n in d.values())
    assert total >= 3 and truth["zone_visits"], truth  # the scene does cross and visit
    for got in (counts_from_report(stage.report()), counts_from_events(events)):
        report = compare_counts(got, {"clip.mp4": gt})
        assert report.exact, report.to_markdown()
        assert all(d.mae_s == pytest.approx(0.0, abs=1e-6) and d.unpaired_got == d.unpaired_truth == 0
                   for d in report.dwells), report.to_markdown()


def test_compare_counts_shows_each_difference() -> None:
    truth = {"fps": 10.0, "line_counts": {"gate": {"in": {"a": 2}, "out": {"b": 1}}},
             "zone_counts": {"lot": {"enters": {"a": 2}, "exits": {"a": 2}}},
             "zone_visits": [{"zone": "lot", "track_id": 1, "class": "a", "enter_frame": 10, "exit_frame": 30,
                              "dwell_s": 2.0, "reason": "left"},
                             {"zone": "lot", "track_id": 2, "class": "a", "enter_frame": 50, "exit_frame": 60,
                              "dwell_s": 1.0, "reason": "left"}]}
    got = {"s": {"line_counts": {"gate": {"in": {"a": 2}, "out": {"a": 1}}},
                 "zone_counts": {"lot": {"enters": {"a": 1}, "exits": {"a": 1}}},
                 "zone_visits": [{"zone": "lot", "track_id": 9, "class": "a", "enter_frame": 12, "exit_frame": 37,
                                  "dwell_s": 2.5}]}}
    report = compare_counts(got, {"s": {"tracking": truth}})
    assert not report.exact
    rows = {(r.kind, r.name, r.key, r.class_name): (r.got, r.truth) for r in report.counts}
    assert rows == {("line", "gate", "in", "a"): (2, 2), ("line", "gate", "out", "a"): (1, 0),
                    ("line", "gate", "out", "b"): (0, 1), ("zone", "lot", "enters", "a"): (1, 2),
                    ("zone", "lot", "exits", "a"): (1, 2)}
    [dwell] = report.dwells
    assert (dwell.paired, dwell.unpaired_truth, dwell.unpaired_got) == (1, 1, 0)
    assert dwell.mae_s == pytest.approx(0.5)
    assert "DIFF" in report.to_markdown() and "0.500" in report.to_markdown()
    # a visit too far off in time is not paired with the truth
    late = {"s": {**got["s"], "zone_visits": [{**got["s"]["zone_visits"][0], "enter_frame": 80}]}}
    [dwell] = compare_counts(late, {"s": {"tracking": truth}}).dwells
    assert (dwell.paired, dwell.mae_s, dwell.unpaired_got) == (0, None, 1)


# -- the command line and the demo -------------------------------------------------------------------------


@needs_trackers
def test_eval_tracking_refuses_clips_without_identities_and_a_missing_extra(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    write_clip(tmp_path / "clips" / "plain.mp4", SceneSpec(width=96, height=64, num_frames=4, seed=1))
    argv = [*QUIET, "eval", "--clips", str(tmp_path / "clips"), "--tracking", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "no identities" in capsys.readouterr().err
    import pipelines.cli

    monkeypatch.setattr(pipelines.cli, "_importable", lambda module: module != "trackers")
    assert main(argv) == 2
    assert "'tracking' extra" in capsys.readouterr().err


@needs_trackers
@pytest.mark.slow
def test_eval_tracking_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main([*QUIET, "eval", "--clips", str(tmp_path / "clips"), "--generate", "1", "--tracking", "--frames",
                 "90", "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    doc = json.loads((out / "eval.json").read_text())
    tracking, counts = doc["tracking"], doc["counts"]
    assert tracking["mota"] > 0.7 and tracking["idf1"] > 0.7 and tracking["hota"] > 0.6, tracking
    assert tracking["num_gt_objects"] == 6 and tracking["num_frames"] == 90
    keys = {(c["kind"], c["key"]) for c in counts["counts"]}
    assert keys == {("line", "in"), ("line", "out"), ("zone", "enters"), ("zone", "exits")}
    assert sum(c["truth"] for c in counts["counts"] if c["kind"] == "line") == 4
    assert [d["zone"] for d in counts["dwells"]] == ["zone"]
    text = capsys.readouterr().out
    assert "| MOTA (IoU 0.5) |" in text and "| line line | in |" in text


@needs_trackers
@pytest.mark.slow
def test_demo_prints_the_line_counts_next_to_the_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main([*QUIET, "demo", "--out", str(out), "--frames", "90", "--size", "480x270", "--device", "cpu",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    truth = json.loads((out / "sample.gt.json").read_text())["tracking"]["line_counts"]["line"]
    events = load_events_jsonl(out / "detections.jsonl")
    assert "line 'line' (y = 135 px, left to right), counted vs ground truth:" in text
    assert "tracking vs ground truth: MOTA " in text and "accuracy vs ground truth: mAP@0.5 " in text
    for direction, way in (("in", "down"), ("out", "up")):
        counted = sum(1 for e in events if e["event"] == "line_cross" and e["direction"] == direction)
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{direction} ({way}):"))
        assert f"{counted} counted, {sum(truth[direction].values())} true" in line
    assert sum(truth["in"].values()) == 2  # this clip's objects cross the line
