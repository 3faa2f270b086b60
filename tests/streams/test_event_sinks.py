"""Events and track ids in the record sinks: JSONL (event lines after their frame), CSV
(a track_id column, events in a file of their own)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.detections import Detections
from streams.errors import SinkError
from streams.events import Event
from streams.frames import FrameMeta, FrameResult
from streams.sinks import SINKS
from streams.sinks.records import (
    CSV_COLUMNS,
    EVENT_CSV_COLUMNS,
    CsvSink,
    JsonlSink,
    events_path,
    frame_json,
    frame_record,
)

NAMES = ("person", "car")


def _result(index: int, tracks: list[int] | None, events: tuple[Event, ...] = (), source: str = "cam1/a.mp4",
            attributes: tuple[dict[str, Any], ...] | None = None) -> FrameResult:
    meta = FrameMeta(source, f"/v/{source}", index, index * 100, (1, 1000), 640, 480)
    boxes = np.array([[1, 2, 30.5, 40], [100, 100, 150.25, 180]], np.float32)
    dets = Detections(boxes, np.array([0.9, 0.45], np.float32), np.array([0, 1]), NAMES,
                      None if tracks is None else np.array(tracks), attributes)
    return FrameResult(meta, dets, events)


def _cross(index: int, track: int, direction: str = "in") -> Event:
    return Event("line_cross", "cam1/a.mp4", index, index * 100, (1, 1000), track, "car",
                 {"line": "gate", "direction": direction})


def _exit(index: int, track: int) -> Event:
    return Event("zone_exit", "cam1/a.mp4", index, index * 100, (1, 1000), track, "person",
                 {"zone": "lot", "dwell_s": 2.5, "reason": "lost", "last_seen_frame": index - 3})


def test_frame_json_equals_frame_record_with_tracks_and_attributes() -> None:
    for r in (_result(0, None), _result(1, [7, -1]),
              _result(2, [3, 4], attributes=({"colour": "red"}, {})),
              _result(3, None, attributes=({}, {"plate": "AB 123"}))):
        assert json.loads(frame_json(r)) == frame_record(r)
    tracked = json.loads(frame_json(_result(1, [7, -1])))["detections"]
    assert [d["track_id"] for d in tracked] == [7, -1]
    assert "track_id" not in json.loads(frame_json(_result(0, None)))["detections"][0]


def test_jsonl_writes_each_event_after_its_frame(tmp_path: Path) -> None:
    out = tmp_path / "d.jsonl"
    results = [_result(0, [1, 2]), _result(1, [1, 2], (_cross(1, 2), _exit(1, 1))), _result(2, [1, 2]),
               _result(3, [1, 2], (_cross(3, 2, "out"),))]
    with JsonlSink(out) as sink:
        sink.write(results[:2])
        sink.write(results[2:])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x.get("event", x["frame_index"]) for x in lines] == [0, 1, "line_cross", "zone_exit", 2, 3, "line_cross"]
    assert lines[2] == {"event": "line_cross", "source": "cam1/a.mp4", "frame_index": 1, "pts": 100,
                        "pts_seconds": 0.1, "track_id": 2, "class": "car", "line": "gate", "direction": "in"}
    assert lines[3]["dwell_s"] == 2.5 and lines[3]["reason"] == "lost" and lines[3]["last_seen_frame"] == -2
    assert lines[6]["direction"] == "out"
    assert [d["track_id"] for d in lines[0]["detections"]] == [1, 2]


def test_csv_has_a_track_id_column_and_an_events_file(tmp_path: Path) -> None:
    out = tmp_path / "detections.csv"
    with CsvSink(out) as sink:
        sink.write([_result(0, [5, -1]), _result(1, None, (_cross(1, 5), _exit(1, 6)))])
        sink.write([_result(2, [5, 9], (_cross(2, 9, "out"),))])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(CSV_COLUMNS) and CSV_COLUMNS[-2:] == ("track_id", "attributes")
    assert [r["attributes"] for r in rows] == [""] * 6  # no stage added attributes
    assert [r["track_id"] for r in rows] == ["5", "-1", "", "", "5", "9"]  # empty: no tracker ran
    assert events_path(out) == tmp_path / "detections.events.csv"
    with open(tmp_path / "detections.events.csv", newline="") as f:
        events = list(csv.DictReader(f))
    assert list(events[0]) == list(EVENT_CSV_COLUMNS)
    assert [(e["event"], e["frame_index"], e["track_id"], e["direction"], e["zone"]) for e in events] == [
        ("line_cross", "1", "5", "in", ""), ("zone_exit", "1", "6", "", "lot"), ("line_cross", "2", "9", "out", "")]
    assert events[0]["pts_seconds"] == "0.100000" and events[0]["line"] == "gate"
    assert events[1]["dwell_s"] == "2.5" and json.loads(events[1]["data"]) == {"last_seen_frame": -2}
    assert events[0]["data"] == ""


def test_csv_without_events_writes_no_events_file_and_removes_an_old_one(tmp_path: Path) -> None:
    out = tmp_path / "detections.csv"
    with CsvSink(out) as sink:
        sink.write([_result(0, [1, 2], (_cross(0, 1),))])
    assert (tmp_path / "detections.events.csv").exists()
    with CsvSink(out) as sink:  # a new job over the same path, no events
        sink.write([_result(0, [1, 2])])
    assert not (tmp_path / "detections.events.csv").exists()
    assert len(out.read_text().splitlines()) == 3


def test_csv_append_keeps_one_events_header(tmp_path: Path) -> None:
    out = tmp_path / "d.csv"
    for k in range(2):
        with SINKS.create(SINKS.parse({"type": "csv", "path": str(out), "append": True, "writer": "inline"},
                                      "sinks[0]")) as sink:
            sink.write([_result(k, [1, 2], (_cross(k, 1),))])
    rows = (tmp_path / "d.events.csv").read_text().splitlines()
    assert rows[0].startswith("event,") and len(rows) == 3 and not rows[2].startswith("event,")
    assert len(out.read_text().splitlines()) == 1 + 2 * 2


def test_csv_writes_a_cascades_attributes_as_json(tmp_path: Path) -> None:
    import dataclasses
    import json

    r = _result(0, [5, -1])
    r = dataclasses.replace(r, detections=dataclasses.replace(
        r.detections, attributes=({"pattern": ["striped", 0.97]}, {})))
    with CsvSink(tmp_path / "d.csv") as sink:
        sink.write([r])
    with open(tmp_path / "d.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [json.loads(x["attributes"]) if x["attributes"] else None for x in rows] == [
        {"pattern": ["striped", 0.97]}, None]


def test_csv_append_to_an_older_header_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "old.csv"
    out.write_text(",".join(CSV_COLUMNS[:-1]) + "\r\nx,y\r\n")
    with pytest.raises(SinkError, match=r"cannot append to .*old\.csv: its columns"):  # noqa: SIM117
        with CsvSink(out, append=True):
            pass
    assert out.read_bytes().endswith(b"x,y\r\n")  # untouched
