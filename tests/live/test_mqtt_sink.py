"""The MQTT sink against a real mosquitto broker and a real paho subscriber."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from streams.detections import Detections
from streams.errors import ConfigError
from streams.events import Event
from streams.frames import FrameMeta, FrameResult
from streams.sinks import SINKS
from streams.sinks.mqtt import MqttSink, topic_messages
from streams.sinks.records import frame_record
from tests.live.helpers import wait_until
from tests.optional import require_module
from tests.servers.helpers import MosquittoProcess

mqtt = require_module("paho.mqtt.client", "the live extra: paho-mqtt")  # CI: fails when missing


def _result(source: str, index: int, labels: tuple[int, ...] = (0,)) -> FrameResult:
    meta = FrameMeta(source, f"rtsp://***@cam/{source}", index, index * 6000, (1, 90000),
                     320, 240, arrival_time=time.time())
    n = len(labels)
    dets = Detections(np.tile(np.array([[1, 2, 30, 40]], np.float32), (n, 1)),
                      np.full(n, 0.9, np.float32), np.array(labels, np.int64), ("person", "car"))
    return FrameResult(meta, dets)


class Subscriber:
    """A durable (clean_session=False, qos 1) subscriber that survives broker restarts."""

    def __init__(self, port: int, topic: str = "fovea/#") -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fovea-test-sub",
                                  clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(5), "subscriber did not subscribe"

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))  # type: ignore[attr-defined]

    def received(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mosquitto: MosquittoProcess) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto.port)
    yield sub
    sub.close()


def _sink(port: int, **options: object) -> MqttSink:
    sink = SINKS.create(SINKS.parse({"type": "mqtt", "port": port, **options}, "sinks[0]"))
    assert isinstance(sink, MqttSink)
    return sink


def test_mqtt_config_is_registered_and_validated() -> None:
    assert "mqtt" in SINKS.names()
    cfg = SINKS.parse({"type": "mqtt", "qos": 1, "password": "pw-secret"}, "sinks[0]").config
    assert cfg.qos == 1 and "pw-secret" not in repr(cfg)
    for bad, key in (({"qos": 3}, "sinks[0].qos"), ({"topic": "a/{cam}"}, "sinks[0].topic"),
                     ({"topic": "a/#"}, "sinks[0].topic"), ({"port": 0}, "sinks[0].port"),
                     ({"max_offline": -1}, "sinks[0].max_offline")):
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
    mosquitto: MosquittoProcess, subscriber: Subscriber
) -> None:
    results = [_result(f"cam{i % 2}", i) for i in range(40)]
    results.append(_result("cam0", 99, labels=()))  # no detections: skipped below
    with _sink(mosquitto.port, qos=1, only_with_detections=True, client_id="fovea-sink") as sink:
        for i in range(0, 41, 8):
            sink.write(results[i:i + 8])
    # __exit__ waited for every message: all published, none dropped
    assert sink.published == 40 and sink.dropped == 0
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


@pytest.mark.slow
def test_mqtt_offline_buffer_drops_oldest_and_reconnects(
    mosquitto: MosquittoProcess, subscriber: Subscriber
) -> None:
    with _sink(mosquitto.port, qos=1, max_offline=5, reconnect_min_s=1, reconnect_max_s=1,
               keepalive=5) as sink:
        sink.write([_result("cam", i) for i in range(3)])
        assert wait_until(lambda: len(subscriber.received()) == 3, 5)
        mosquitto.stop()  # broker down (it saves the subscriber's durable session)
        assert wait_until(lambda: not sink.connected, 10)
        sink.write([_result("cam", i) for i in range(100, 112)])  # 12 while offline
        assert sink.dropped == 7 and sink.buffered == 5
        mosquitto.start()  # same port
        assert wait_until(lambda: sink.connected, 10), sink.stats()
        assert wait_until(lambda: sink.buffered == 0, 5)
        assert sink.connects == 2 and sink.disconnects == 1
        assert wait_until(lambda: len(subscriber.received()) >= 8, 10)
        sink.write([_result("cam", 200)])
    assert wait_until(lambda: len(subscriber.received()) >= 9, 5)
    indices = [int(p["frame_index"]) for _, p in subscriber.received()]
    # qos 1 is at-least-once: the broker may redeliver a message across its restart
    assert list(dict.fromkeys(indices)) == [0, 1, 2, 107, 108, 109, 110, 111, 200]
    assert sink.dropped == 7


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
def test_mqtt_events_arrive_on_their_topics(mosquitto: MosquittoProcess, subscriber: Subscriber) -> None:
    results = [_result("cam0", i) for i in range(6)]
    results[2] = _with_events(results[2])
    with _sink(mosquitto.port, qos=1) as sink:
        sink.write(results)
    assert sink.published == 8 and sink.dropped == 0
    assert wait_until(lambda: len(subscriber.received()) >= 8, 5)
    got = subscriber.received()
    assert [t for t, _ in got] == ["fovea/cam0/detections"] * 3 + [
        "fovea/cam0/events/line_cross", "fovea/cam0/events/zone_exit"] + ["fovea/cam0/detections"] * 3
    assert got[3][1] == results[2].events[0].to_record()
