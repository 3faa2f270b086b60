"""The PostgreSQL sink against Debian's PostgreSQL (a cluster in a temporary folder, started
by the fixture; as root under ``runuser -u postgres``): schema, COPY batches, an outage
mid-job (the server SIGKILLed and restarted: it recovers from its WAL)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streams.errors import ConfigError
from streams.sinks import SINKS
from streams.sinks.health import HealthReporting
from streams.sinks.summaries import SourceSummary
from tests.optional import require_module
from tests.servers.brokers import PostgresProcess
from tests.streams.sinks_network.helpers import OutageSwitch, make_sink, result, run_outage_job
from tests.streams.sinks_network.helpers import connected_and_delivering as _connected

psycopg = require_module("psycopg", "the postgres extra: pip install 'fovea[postgres]'")


def _raw(server: PostgresProcess, tmp_path: Path, **options: object) -> dict[str, Any]:
    return {"type": "postgres", "dsn": server.dsn(), "path": str(tmp_path / "spool"), "retry_min_s": 0.2,
            "retry_max_s": 1, **options}


def _rows(server: PostgresProcess, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(server.dsn()) as conn:
        return conn.execute(sql).fetchall()


def test_config_is_validated() -> None:
    assert SINKS.parse({"type": "postgres"}, "sinks[0]").config.table_prefix == "fovea_"
    for bad, key in (({"dsn": "postgresql://u:secret@h/db"}, "sinks[0].dsn"),
                     ({"dsn": "host=h password=secret"}, "sinks[0].dsn"), ({"dsn": ""}, "sinks[0].dsn"),
                     ({"table_prefix": "x-y"}, "sinks[0].table_prefix"), ({"path": ""}, "sinks[0].path")):
        with pytest.raises(ConfigError) as e:
            SINKS.parse({"type": "postgres", **bad}, "sinks[0]")
        assert e.value.key == key, bad
        assert "secret" not in str(e.value)


def test_rows_schema_and_indexes(postgres_server: PostgresProcess, tmp_path: Path) -> None:
    results = [result(f"cam{i % 2}", i, n=i % 4, events=1 if i == 5 else 0) for i in range(20)]
    with make_sink(_raw(postgres_server, tmp_path, table_prefix="t_")) as sink:
        sink.write(results)
    assert sink.health().delivered == 21
    frames = _rows(postgres_server, "SELECT source, frame_index, pts, pts_seconds, time_base, width, detections "
                                    "FROM t_frames ORDER BY source, frame_index")
    assert len(frames) == 20 and frames[0] == ("cam0", 0, 0, 0.0, "1/12800", 640, 0)
    dets = _rows(postgres_server, "SELECT frame_index, det_index, x1, y1, x2, y2, confidence, class_id, label, "
                                  "track_id, attributes FROM t_detections WHERE source = 'cam1' AND frame_index = 3")
    assert dets == [(3, 0, 10.0, 20.0, 30.5, 40.25, 0.875, 0, "person", 0, None),
                    (3, 1, 11.0, 20.0, 31.5, 40.25, 0.875, 1, "car", 1, None),
                    (3, 2, 12.0, 20.0, 32.5, 40.25, 0.875, 0, "person", 2, None)]
    [event] = _rows(postgres_server, "SELECT source, frame_index, event_index, event, track_id, class, data "
                                     "FROM t_events")
    assert event == ("cam1", 5, 0, "line_cross", 0, "car", {"line": "gate", "direction": "out"})
    indexes = {r[0] for r in _rows(postgres_server, "SELECT indexdef FROM pg_indexes WHERE tablename LIKE 't_%'")}
    for table in ("t_frames", "t_detections", "t_events"):
        assert f"CREATE INDEX {table}_source_frame ON public.{table} USING btree (source, frame_index)" in indexes
    counts = _rows(postgres_server, "SELECT f.source, count(*) AS frames, sum(f.detections) AS detections "
                                    "FROM t_frames f GROUP BY f.source ORDER BY f.source")  # the README's query
    assert counts == [("cam0", 10, 10), ("cam1", 10, 20)]


def test_a_summary_row_per_source(postgres_server: PostgresProcess, tmp_path: Path) -> None:
    """Through the sink's own process (``writer: process``, the default): a row per source in
    ``fovea_summaries``, with the sink's counts and the stages' reports as jsonb."""
    sink = SINKS.create(SINKS.parse(_raw(postgres_server, tmp_path), "sinks[0]"))
    stages = {"TrackerStage": {"tracks_total": 2, "tracks": [{"track_id": 0, "class": "car\tx"}]}}
    with sink:
        sink.write([result("cam0", i, n=2) for i in range(3)] + [result("cam1", 0, n=1)])
        sink.write_summary([SourceSummary("cam0", stages)])
    assert isinstance(sink, HealthReporting) and (h := sink.health()) is not None
    assert (h.delivered, h.spooled) == (6, 0)
    assert _rows(postgres_server, "SELECT source, frames, detections, stages FROM fovea_summaries ORDER BY source") \
        == [("cam0", 3, 6, stages), ("cam1", 1, 1, {})]
    [index] = _rows(postgres_server, "SELECT indexdef FROM pg_indexes WHERE tablename = 'fovea_summaries'")
    assert index == ("CREATE INDEX fovea_summaries_source ON public.fovea_summaries USING btree (source)",)


def test_text_needing_escapes_arrives_unchanged(postgres_server: PostgresProcess, tmp_path: Path) -> None:
    odd = "we\\ird\tcam\n\\N|é"  # COPY's text format escapes backslash, tab, newline
    r = result(odd, 7, n=1, events=1)
    r = type(r)(r.frame, type(r.detections)(r.detections.xyxy, r.detections.confidence, r.detections.class_id,
                                            ("per\tson\\",), None, ({"note": "a\tb\\c"},)), r.events)
    with make_sink(_raw(postgres_server, tmp_path)) as sink:
        sink.write([r])
    assert _rows(postgres_server, "SELECT source, uri FROM fovea_frames") == [(odd, f"/v/{odd}")]
    assert _rows(postgres_server, "SELECT source, label, track_id, attributes FROM fovea_detections") == [
        (odd, "per\tson\\", None, {"note": "a\tb\\c"})]
    assert _rows(postgres_server, "SELECT source, data FROM fovea_events") == [
        (odd, {"line": "gate", "direction": "out"})]


@pytest.mark.slow
def test_outage_mid_job_loses_nothing(postgres_server: PostgresProcess, outage_clip: Path, bright_model: Path,
                                      tmp_path: Path) -> None:
    sink = make_sink(_raw(postgres_server, tmp_path, send_timeout_s=3))
    switch = OutageSwitch(kill=lambda: postgres_server.kill() is None, restart=postgres_server.start,
                          before_kill=lambda: _connected(sink))  # the kill hits a live connection
    summary, truth = run_outage_job(outage_clip, bright_model, tmp_path, sink, switch)
    assert summary.ok and switch.killed_at == 4 and switch.restarted_at == 10
    h = sink.health()
    assert h.disconnects >= 1 and h.spooled == 0 and h.dropped == 0, h
    frames = _rows(postgres_server, "SELECT source, frame_index, detections FROM fovea_frames")
    dets = _rows(postgres_server, "SELECT source, frame_index, det_index, x1, y1, x2, y2, confidence, label "
                                  "FROM fovea_detections")
    counts = Counter(f"{s}|{i}|detections|0" for s, i, _ in frames)
    assert set(counts) == set(truth), "frames lost or invented"
    duplicates = sum(n - 1 for n in counts.values())
    by_frame: dict[str, set[tuple[Any, ...]]] = {}
    for s, i, j, *row in dets:
        by_frame.setdefault(f"{s}|{i}|detections|0", set()).add((j, *row))
    for key, line in truth.items():  # every detection of every frame, as the JSONL has it
        want = {(j, *(round(v, 2) for v in d["box"]), round(d["confidence"], 4), d["label"])
                for j, d in enumerate(json.loads(line)["detections"])}
        got = {(j, *(round(v, 2) for v in (x1, y1, x2, y2)), round(c, 4), lab)
               for j, x1, y1, x2, y2, c, lab in by_frame.get(key, set())}
        assert got == want, key
    print(f"postgres outage: {len(truth)} records, {duplicates} duplicate(s) delivered, {h.resent} re-sent")
    assert duplicates <= h.resent
