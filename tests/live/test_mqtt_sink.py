"""The MQTT sink against a real mosquitto broker and a real paho subscriber (MQTT 5, so the
idempotency key arrives as the user property ``fovea-key``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from streams.detections import Detections
from streams.errors import ConfigError
from streams.events import Event
from streams.frames import FrameMeta, FrameResult
from streams.sinks import SINKS
from streams.sinks.delivery import ReliableSink
from streams.sinks.mqtt import topic_messages
from streams.sinks.records import frame_record
from tests.live.helpers import wait_until
from tests.media import write_clip
from tests.optional import require_module
from tests.servers.helpers import MosquittoProcess
from tests.streams.sinks_network.helpers import OutageSwitch, exactly_once, run_outage_job

T = TypeVar("T")

mqtt = require_module("paho.mqtt.client", "the live extra: paho-mqtt")  # CI: fails when missing


def _result(source: str, index: int, labels: tuple[int, ...] = (0,)) -> FrameResult:
    meta = FrameMeta(source, f"rtsp://***@cam/{source}", index, index * 6000, (1, 90000),
                     320, 240, arrival_time=time.time())
    n = len(labels)
    dets = Detections(np.tile(np.array([[1, 2, 30, 40]], np.float32), (n, 1)),
                      np.full(n, 0.9, np.float32), np.array(labels, np.int64), ("person", "car"))
    return FrameResult(meta, dets)


class Subscriber:
    """A durable MQTT 5 subscriber (clean_start False, a session that outlives a disconnect, qos 1)."""

    def __init__(self, port: int, topic: str = "fovea/#") -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list[tuple[str, dict[str, Any], str | None]] = []
        self.raw: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fovea-test-sub",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, keepalive=10, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.subscribed.wait(5), "subscriber did not subscribe"

    def _on_message(self, client: object, userdata: object, msg: Any) -> None:
        key = dict(getattr(msg.properties, "UserProperty", []) or []).get("fovea-key")
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload), key))
            self.raw.append((key, msg.payload))

    def received(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [(t, p) for t, p, _ in self.messages]

    def keyed(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.raw)

    def count(self) -> int:
        with self._lock:
            return len(self.raw)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def outage_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("outage") / "cam1.mp4", frames=160, width=160, height=96)


@pytest.fixture
def subscriber(mosquitto: MosquittoProcess) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto.port)
    yield sub
    sub.close()


def _sink(port: int, tmp_path: Path, **options: object) -> ReliableSink:
    sink = SINKS.create(SINKS.parse({"type": "mqtt", "port": port, "path": str(tmp_path / "spool"),
                                     "writer": "inline", **options}, "sinks[0]"))
    assert isinstance(sink, ReliableSink)
    return sink


def test_mqtt_config_is_registered_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "mqtt" in SINKS.names()
    monkeypatch.setenv("FOVEA_MQTT_PW", "pw-secret")
    cfg = SINKS.parse({"type": "mqtt", "qos": 2, "username": "u", "password_env": "FOVEA_MQTT_PW"}, "sinks[0]").config
    assert cfg.qos == 2 and cfg.protocol == 5 and "pw-secret" not in repr(cfg)
    assert SINKS.parse({"type": "mqtt"}, "sinks[0]").config.qos == 1  # at least once by default
    for bad, key in (({"qos": 3}, "sinks[0].qos"), ({"topic": "a/{cam}"}, "sinks[0].topic"),
                     ({"topic": "a/#"}, "sinks[0].topic"), ({"port": 0}, "sinks[0].port"),
                     ({"protocol": 4}, "sinks[0].protocol"), ({"password": "x"}, "sinks[0].password"),
                     ({"max_offline": 5}, "sinks[0].max_offline"), ({"spool_max_mb": -1}, "sinks[0].spool_max_mb")):
        with pytest.raises(ConfigError) as e:
            SINKS.parse({"type": "mqtt", **bad}, "sinks[0]")
        assert e.value.key == key


def test_topic_messages_per_frame_and_per_label() -> None:
    r = _result("cam/1", 3, labels=(0, 1, 0))
    [(topic, payload)] = topic_messages(r, "fovea/{source}/detections")
    assert topic == "fovea/cam_1/detections"  # '/' in a source id cannot add topic levels
    assert json.loads(payload) == frame_record(r)
    per_label = dict(topic_messages(r, "fovea/{source}/{label}"))
    assert sorted(per_label) == ["fovea/cam_1/car", "fovea/cam_1/person"]
    assert len(json.loads(per_label["fovea/cam_1/person"])["detections"]) == 2
    empty = _result("c", 0, labels=())
    assert topic_messages(empty, "x/{source}", only_with_detections=True) == []
    assert topic_messages(empty, "x/{source}/{label}")[0][0] == "x/c/none"


@pytest.mark.slow
def test_mqtt_messages_arrive_and_exit_flushes(
    mosquitto: MosquittoProcess, subscriber: Subscriber, tmp_path: Path
) -> None:
    results = [_result(f"cam{i % 2}", i) for i in range(40)]
    results.append(_result("cam0", 99, labels=()))  # no detections: skipped below
    with _sink(mosquitto.port, tmp_path, only_with_detections=True, client_id="fovea-sink") as sink:
        for i in range(0, 41, 8):
            sink.write(results[i:i + 8])
    # __exit__ waited for every message: all acknowledged, none dropped, the spool is gone
    h = sink.health()
    assert (h.delivered, h.spooled, h.dropped) == (40, 0, 0) and not (tmp_path / "spool").exists()
    assert wait_until(lambda: len(subscriber.received()) >= 40, 5)
    got = subscriber.received()
    assert len(got) == 40
    assert {t for t, _ in got} == {"fovea/cam0/detections", "fovea/cam1/detections"}
    by_source: dict[str, list[int]] = {}
    for topic, payload in got:
        assert topic == f"fovea/{payload['source']}/detections"
        by_source.setdefault(str(payload["source"]), []).append(int(payload["frame_index"]))
    assert by_source["cam0"] == list(range(0, 40, 2))  # in order per source
    assert got[0][1] == frame_record(results[0])
    assert subscriber.keyed()[0][0] == "cam0|0|detections|0"  # the idempotency key rides along


@pytest.mark.slow
def test_mqtt_outage_mid_job_loses_nothing(mosquitto: MosquittoProcess, outage_clip: Path, bright_model: Path,
                                           tmp_path: Path) -> None:
    """mosquitto SIGKILLed mid-job and restarted: it keeps the subscriber's session (saved by a
    clean restart before the job) but not the messages it had queued, so the kill waits until
    the subscriber has every message the broker acknowledged.

    The broker is paused (SIGSTOP) for that check and killed while still paused (the server
    helper used to resume it first, and in that moment it acknowledged and forwarded messages
    after the check: under load the test then lost two acknowledged records). The check waits
    until both clients have read everything the broker wrote before it stopped (their
    sockets' receive queues are empty) and their counts have stopped moving: the job runs in
    this process, and on a loaded machine its threads can keep the clients' network threads
    from reading for a while."""
    sub = Subscriber(mosquitto.port)
    sub.close()
    mosquitto.stop()  # saves the durable session
    mosquitto.start()
    sub = Subscriber(mosquitto.port)
    sink = _sink(mosquitto.port, tmp_path, retry_min_s=0.2, retry_max_s=1, send_timeout_s=2)

    def quiet() -> None:
        assert wait_until(lambda: sink.health().spooled == 0 and sub.count() >= sink.health().delivered, 60)

    def kill() -> bool:
        mosquitto.pause()
        drained = wait_until(lambda: unread_bytes(mosquitto.port) == 0, 20)
        acknowledged = settled(lambda: (sink.health().delivered, sub.count()), still_s=0.5, timeout_s=20)
        if drained and acknowledged is not None and unread_bytes(mosquitto.port) == 0 \
                and acknowledged[1] >= acknowledged[0]:
            mosquitto.kill()
            return True
        mosquitto.resume()
        return False

    switch = OutageSwitch(kill=kill, restart=mosquitto.start, before_kill=quiet)
    try:
        summary, truth = run_outage_job(outage_clip, bright_model, tmp_path, sink, switch)
        assert summary.ok and switch.killed_at is not None and switch.restarted_at is not None
        h = sink.health()
        assert h.disconnects >= 1 and h.spooled == 0 and h.dropped == 0, h
        assert wait_until(lambda: {k for k, _ in sub.keyed()} >= set(truth), 60)
        duplicates = exactly_once(truth, sub.keyed())
        print(f"mqtt outage: {len(truth)} records, {duplicates} duplicate(s) delivered, {h.resent} re-sent")
        assert duplicates <= h.resent
    finally:
        sub.close()


def unread_bytes(port: int) -> int:
    """Bytes waiting, unread, in the receive queues of this machine's TCP connections to
    ``127.0.0.1:port`` (``/proc/net/tcp``: what a server wrote that its clients have not read)."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port:
            total += int(fields[4].split(":")[1], 16)  # tx_queue:rx_queue
    return total


def settled(read: Callable[[], T], still_s: float, timeout_s: float) -> T | None:
    """``read()`` once it has kept one value for ``still_s`` seconds; None if it never does
    within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= still_s:
            return value
    return None


def _with_events(r: FrameResult) -> FrameResult:
    m = r.frame
    events = (Event("line_cross", m.source_id, m.frame_index, m.pts, m.time_base, 7, "car",
                    {"line": "gate", "direction": "in"}),
              Event("zone_exit", m.source_id, m.frame_index, m.pts, m.time_base, 8, "person",
                    {"zone": "lot", "dwell_s": 1.5, "reason": "left"}))
    return FrameResult(m, r.detections, events)


def test_events_topic_is_validated() -> None:
    assert SINKS.parse({"type": "mqtt", "events_topic": None}, "sinks[0]").config.events_topic is None
    for bad in ("a/{cam}/{event}", "a/{label}", "x/#/{event}", ""):
        with pytest.raises(ConfigError) as e:
            SINKS.parse({"type": "mqtt", "events_topic": bad}, "sinks[0]")
        assert e.value.key == "sinks[0].events_topic", bad


def test_topic_messages_publish_each_event_on_its_type_topic() -> None:
    r = _with_events(_result("cam/1", 3, labels=(0, 1)))
    messages = topic_messages(r, "fovea/{source}/detections", events_topic="fovea/{source}/events/{event}")
    assert [t for t, _ in messages] == ["fovea/cam_1/detections", "fovea/cam_1/events/line_cross",
                                        "fovea/cam_1/events/zone_exit"]
    assert json.loads(messages[1][1]) == r.events[0].to_record()
    assert json.loads(messages[2][1])["dwell_s"] == 1.5
    per_label = topic_messages(r, "fovea/{source}/{label}", events_topic="e/{event}")  # events once, not per label
    assert [t for t, _ in per_label] == ["fovea/cam_1/person", "fovea/cam_1/car", "e/line_cross", "e/zone_exit"]
    empty = _with_events(_result("c", 0, labels=()))
    assert [t for t, _ in topic_messages(empty, "x/{source}", True, "x/{source}/{event}")] == [
        "x/c/line_cross", "x/c/zone_exit"]  # no detections: no frame message, the events still go
    assert [t for t, _ in topic_messages(r, "x/{source}", events_topic=None)] == ["x/cam_1"]


@pytest.mark.slow
def test_mqtt_events_arrive_on_their_topics(mosquitto: MosquittoProcess, subscriber: Subscriber,
                                            tmp_path: Path) -> None:
    results = [_result("cam0", i) for i in range(6)]
    results[2] = _with_events(results[2])
    with _sink(mosquitto.port, tmp_path, qos=1) as sink:
        sink.write(results)
    assert sink.health().delivered == 8 and sink.health().dropped == 0
    assert wait_until(lambda: len(subscriber.received()) >= 8, 5)
    got = subscriber.received()
    assert [t for t, _ in got] == ["fovea/cam0/detections"] * 3 + [
        "fovea/cam0/events/line_cross", "fovea/cam0/events/zone_exit"] + ["fovea/cam0/detections"] * 3
    assert got[3][1] == results[2].events[0].to_record()
