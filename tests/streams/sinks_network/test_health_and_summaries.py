"""What the network sinks tell the job: their health (through the sink's own process with
``writer: process``, into the end-of-job summary and ``/metrics``), and the per-source summary
records a job sends them at its end (Redis Streams and MQTT here; Kafka, PostgreSQL and
SQLite in their own tests). Servers: Debian's ``redis-server`` and mosquitto on loopback."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from pipelines.progress import JobSummary
from pipelines.runner import FileJob
from streams.config import parse_config
from streams.errors import SinkError
from streams.sinks import SINKS
from streams.sinks.health import DeliveryHealth, HealthReporting, sink_health
from streams.sinks.mqtt import record_topic
from streams.sinks.process import ProcessSink
from streams.sinks.spool import OutRecord
from streams.sinks.summaries import SourceCounts, SourceSummary, SummaryAware, source_summaries
from tests.optional import require_module
from tests.servers.brokers import RedisProcess
from tests.servers.helpers import MosquittoProcess, free_port
from tests.streams.sinks_network.conftest import OUTAGE_FRAMES
from tests.streams.sinks_network.helpers import make_sink, result, wait_until


def _health(**changes: Any) -> DeliveryHealth:
    values: dict[str, Any] = {"sink": "redis", "where": "redis://h:1/0", "spool": "/s", "connected": True,
                              "delivered": 0, "spooled": 0, "spool_bytes": 0, "dropped": 0, "resent": 0,
                              "disconnects": 0, "last_error": None}
    return DeliveryHealth(**{**values, **changes})


def _process_sink(raw: dict[str, Any]) -> ProcessSink:
    sink = SINKS.create(SINKS.parse(raw, "sinks[0]"))  # writer: process, the default
    assert isinstance(sink, ProcessSink)
    return sink


def test_the_job_summary_prints_each_sinks_health_and_fails_when_records_wait() -> None:
    summary = JobSummary(files_total=1, files_done=1)
    summary.sinks = [_health(delivered=161, resent=3, disconnects=1),
                     _health(sink="kafka", where="kafka://k:9092", connected=False, spooled=160, spool_bytes=9000,
                             last_error="no broker answered")]
    text = summary.to_text()
    assert ("sink redis redis://h:1/0: connected, 161 delivered, 0 in the spool /s, 0 dropped, 3 re-sent "
            "(at most as many duplicates), 1 disconnect(s)") in text
    assert ("sink kafka kafka://k:9092: NOT connected, 0 delivered, 160 in the spool /s, 0 dropped"
            in text) and text.endswith("; last error: no broker answered")
    assert not summary.ok
    summary.sinks = summary.sinks[:1]
    assert summary.ok
    summary.sinks = [_health(dropped=2)]
    assert not summary.ok


def test_sink_metrics_are_read_at_scrape_time() -> None:
    require_module("prometheus_client", "the live extra")
    from prometheus_client import CollectorRegistry, generate_latest

    from streams.live.metrics import SinkMetrics

    now = [_health(connected=False, delivered=7, spooled=5, spool_bytes=640, dropped=1, resent=2, disconnects=3)]
    registry = CollectorRegistry()
    SinkMetrics(registry, lambda: now)
    text = generate_latest(registry).decode()
    labels = '{sink="redis",spool="/s",where="redis://h:1/0"}'
    for series, value in (("connected", 0.0), ("spooled", 5.0), ("spool_bytes", 640.0), ("delivered_total", 7.0),
                          ("dropped_total", 1.0), ("resent_total", 2.0), ("disconnects_total", 3.0)):
        assert f"fovea_sink_{series}{labels} {value}" in text, series
    now[:] = []  # the sinks closed: their series go
    assert "fovea_sink_connected{" not in generate_latest(registry).decode()


def test_summaries_split_the_stage_reports_by_source_and_add_the_sinks_counts() -> None:
    reports = {"TrackerStage": {"type": "bytetrack", "sources": {"a": {"tracks_total": 2}, "b": {"tracks_total": 0}}},
               "AnalyticsStage": {"sources": {"b": {"lines": {"gate": {"in": {"car": 1}}}}},
                                  "sources_without_frames": []},
               "CascadeStage": {"models": {"colour": {"classified": 3}}}}  # job-wide only: in no source's record
    summaries = source_summaries(reports)
    assert summaries == [SourceSummary("a", {"TrackerStage": {"tracks_total": 2}}),
                         SourceSummary("b", {"TrackerStage": {"tracks_total": 0},
                                             "AnalyticsStage": {"lines": {"gate": {"in": {"car": 1}}}}})]
    counts = SourceCounts()
    counts.add([result("b", 0, n=3), result("c", 0, n=2), result("b", 1, n=0)])
    done = counts.complete(summaries)
    assert [(s.source, s.frames, s.detections) for s in done] == [("a", 0, 0), ("b", 2, 3), ("c", 1, 2)]
    assert json.loads(done[1].to_json()) == {"source": "b", "frames": 2, "detections": 3,
                                             "stages": summaries[1].stages}
    assert OutRecord("summary", "b|x", -1, 0, b"").key == "b|x|-1|summary|0"


def test_which_sinks_report_health_and_take_summaries(tmp_path: Path) -> None:
    network = make_sink({"type": "redis", "url": "redis://127.0.0.1:1/0", "path": str(tmp_path / "s")})
    process = _process_sink({"type": "jsonl", "path": str(tmp_path / "a.jsonl")})
    sqlite = SINKS.create(SINKS.parse({"type": "sqlite", "path": str(tmp_path / "d.sqlite"), "writer": "inline"},
                                      "sinks[0]"))
    assert isinstance(network, HealthReporting) and isinstance(network, SummaryAware)
    assert isinstance(process, HealthReporting) and isinstance(sqlite, SummaryAware)
    assert not isinstance(sqlite, HealthReporting)
    with process:  # a file sink in its process: no health, summaries ignored (its output unchanged)
        process.write([result("cam", 0)])
        process.write_summary([SourceSummary("cam", {})])
    assert process.health() is None and sink_health([process, sqlite]) == []
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 1


def test_the_sinks_process_passes_its_health_to_the_job(redis_server: RedisProcess, tmp_path: Path) -> None:
    """``writer: process``: what the sink delivered and what waits in its spool reach the job's
    process while the job runs (the broker up, then killed), and once more after it closed."""
    sink = _process_sink({"type": "redis", "url": f"redis://127.0.0.1:{redis_server.port}/0",
                          "path": str(tmp_path / "spool"), "retry_min_s": 0.2, "retry_max_s": 0.5,
                          "flush_timeout_s": 0.5})
    with pytest.raises(SinkError, match="11 record"), sink:
        sink.write([result("cam", i) for i in range(30)])
        assert wait_until(lambda: (h := sink.health()) is not None and h.delivered == 30 and h.spooled == 0, 15), \
            sink.health()
        h = sink.health()
        assert h is not None and (h.sink, h.where, h.spool, h.connected) == (
            "redis", f"redis://127.0.0.1:{redis_server.port}/0", str(tmp_path / "spool"), True)
        redis_server.kill()
        sink.write([result("cam", i) for i in range(30, 40)])
        assert wait_until(lambda: (h := sink.health()) is not None and not h.connected and h.spooled == 10, 15), \
            sink.health()
        sink.write_summary([])  # one more record: cam's summary
    h = sink.health()  # the last, sent after the sink closed
    assert h is not None and (h.connected, h.delivered, h.spooled) == (False, 30, 11) and h.last_error, h


def test_a_broker_down_shows_in_the_job_summary(outage_clip: Path, bright_model: Path, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    cfg = parse_config({"sources": [str(outage_clip)], "model": {"path": str(bright_model), "input_size": [96, 160]},
                        "engine": {"device": "cpu", "batch_size": 4}, "decode": {"backend": "cpu"},
                        "sinks": [{"type": "redis", "url": f"redis://127.0.0.1:{port}/0",
                                   "path": str(tmp_path / "spool"), "flush_timeout_s": 0.5}]})
    job = FileJob(cfg, show_progress=False)
    with pytest.raises(SinkError, match=f"{OUTAGE_FRAMES + 1} record"):
        for _ in job.batches():
            pass
    text = job.summary.to_text()
    assert (f"sink redis redis://127.0.0.1:{port}/0: NOT connected, 0 delivered, {OUTAGE_FRAMES + 1} in the spool "
            f"{tmp_path / 'spool'}") in text, text
    assert "Connection refused" in text and not job.summary.ok


def test_redis_summaries_stream(redis_server: RedisProcess, tmp_path: Path) -> None:
    redis = require_module("redis", "the redis extra: pip install 'fovea[redis]'")
    sink = _process_sink({"type": "redis", "url": f"redis://127.0.0.1:{redis_server.port}/0",
                          "path": str(tmp_path / "spool"), "summaries_stream": "s:{source}"})
    with sink:
        sink.write([result("cam0", i, n=2) for i in range(3)] + [result("cam1", 0, n=1)])
        sink.write_summary([SourceSummary("cam0", {"TrackerStage": {"tracks_total": 2}})])
    h = sink.health()
    assert h is not None and (h.delivered, h.spooled) == (6, 0)
    client = redis.Redis(port=redis_server.port)
    [(_, cam0)] = client.xrange("s:cam0")
    [(_, cam1)] = client.xrange("s:cam1")
    assert cam0[b"key"] == b"cam0|-1|summary|0" and cam1[b"key"] == b"cam1|-1|summary|0"
    assert json.loads(cam0[b"data"]) == {"source": "cam0", "frames": 3, "detections": 6,
                                         "stages": {"TrackerStage": {"tracks_total": 2}}}
    assert json.loads(cam1[b"data"]) == {"source": "cam1", "frames": 1, "detections": 1, "stages": {}}


def test_mqtt_summary_topic(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    mqtt = require_module("paho.mqtt.client", "the live extra: paho-mqtt")
    assert record_topic(OutRecord("summary", "a/b", -1, 0, b""), "t", None, "fovea/{source}/summary") == \
        "fovea/a_b/summary"
    got: list[tuple[str, bytes, Any]] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("fovea/+/summary", qos=1)
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.properties.UserProperty))
    client.connect("127.0.0.1", mqtt_broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        with _process_sink({"type": "mqtt", "port": mqtt_broker.port, "path": str(tmp_path / "spool")}) as sink:
            sink.write([result("cam", 0)])
            sink.write_summary([])
        assert wait_until(lambda: len(got) == 1, 10)
        [(topic, payload, props)] = got
        assert topic == "fovea/cam/summary" and props == [("fovea-key", "cam|-1|summary|0")]
        assert json.loads(payload) == {"source": "cam", "frames": 1, "detections": 3, "stages": {}}
    finally:
        client.loop_stop()
        client.disconnect()
