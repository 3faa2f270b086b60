"""MQTT sink: one JSON message per frame (:func:`streams.sinks.records.frame_json`, the JSONL line),
and one per event (:func:`streams.sinks.records.event_json`) on a topic per event type.

``paho-mqtt`` (2.x, ``pip install 'fovea[live]'``) is imported only when the sink opens,
so :mod:`streams.sinks` imports without it.

Config (``sinks:`` entry; the delivery keys of :class:`~streams.sinks.delivery.DeliveryConfig`
apply too: ``path`` (the spool), ``spool_max_mb``, ``flush_timeout_s``, ``send_timeout_s``,
``retry_min_s``, ``retry_max_s``, ``password_env`` / ``password_file``)::

    - type: mqtt
      host: 127.0.0.1
      port: 1883
      topic: "fovea/{source}/detections"   # {source}; with {label}: one message per label
      events_topic: "fovea/{source}/events/{event}"   # {source}, {event}: line_cross, zone_enter, ...;
                                                       # null: events are not published
      summary_topic: "fovea/{source}/summary"   # a source's summary at the end of a job (summaries.py);
                                                # null: not published
      qos: 1                                # 1 | 2: at least once; 0: at most once (no acknowledgement)
      protocol: 5                           # 5 | "3.1.1"
      client_id: ""                         # "" = random
      username: null                        # the password: password_env or password_file
      keepalive: 60
      retain: false
      only_with_detections: false

Delivery follows :mod:`streams.sinks.delivery`: messages go through the sink's spool and
leave it once the broker acknowledged them (qos 1 PUBACK, qos 2 PUBCOMP; with qos 0, once
written to the socket: a broker that dies then loses them), in order, reconnecting with
capped exponential delays. With MQTT 5 every message carries the idempotency key as the user
property ``fovea-key``; MQTT 3.1.1 has no place for it outside the payload, which is the JSONL
line unchanged (a consumer tells duplicates by source, frame_index and topic).

With ``{label}`` in the topic a frame becomes one message per detected label (its detections
only; the key's index is the label's place in the frame), and frames without detections go
to label ``none``. A frame's events follow its message, one message each on ``events_topic``
(``fovea/cam1/events/line_cross``), also for frames that ``only_with_detections`` leaves out.
At the end of a job each source's summary record goes to ``summary_topic``.

Usage::

    parsed = SINKS.parse({"type": "mqtt", "host": "127.0.0.1", "qos": 1}, key="sinks[0]")
    with SINKS.create(parsed) as sink:
        sink.write(results)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np

from streams.errors import ConfigError, SinkError
from streams.frames import FrameResult
from streams.sinks import SINKS, Sink
from streams.sinks.delivery import DeliveryConfig, OutRecord, ReliableSink, TransportError, read_secret, with_writer
from streams.sinks.records import event_json, frame_json
from streams.sinks.summaries import SourceSummary

log = logging.getLogger(__name__)

_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})


@dataclass(frozen=True)
class MqttConfig(DeliveryConfig):
    """``type: mqtt``: see the module docstring."""

    path: str = "fovea-out/mqtt-spool"
    host: str = "127.0.0.1"
    port: int = 1883
    topic: str = "fovea/{source}/detections"
    events_topic: str | None = "fovea/{source}/events/{event}"
    summary_topic: str | None = "fovea/{source}/summary"
    qos: Literal[0, 1, 2] = 1
    protocol: Literal[5, "3.1.1"] = 5
    client_id: str = ""
    username: str | None = None
    keepalive: int = 60
    retain: bool = False
    only_with_detections: bool = False

    def __repr__(self) -> str:
        return (f"MqttConfig(host={self.host!r}, port={self.port}, topic={self.topic!r}, "
                f"qos={self.qos}, client_id={self.client_id!r}, path={self.path!r})")

    def validate(self, key: str) -> None:
        self.validate_delivery(key)
        if isinstance(self.qos, bool):
            raise ConfigError(f"{key}.qos", "expected 0, 1 or 2")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"{key}.port", f"expected 1..65535, got {self.port}")
        if not self.host:
            raise ConfigError(f"{key}.host", "must not be empty")
        try:
            sample = self.topic.format(source="s", label="l")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"{key}.topic", f"only {{source}} and {{label}} may be used ({e})") from e
        if not sample or "+" in sample or "#" in sample:
            raise ConfigError(f"{key}.topic", "must be non-empty, without + or # wildcards")
        if self.events_topic is not None:
            try:
                sample = self.events_topic.format(source="s", event="e")
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"{key}.events_topic", f"only {{source}} and {{event}} may be used ({e})") from e
            if not sample or "+" in sample or "#" in sample:
                raise ConfigError(f"{key}.events_topic", "must be non-empty, without + or # wildcards "
                                                         "(null: no event messages)")
        if self.summary_topic is not None:
            try:
                sample = self.summary_topic.format(source="s")
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"{key}.summary_topic", f"only {{source}} may be used ({e})") from e
            if not sample or "+" in sample or "#" in sample:
                raise ConfigError(f"{key}.summary_topic", "must be non-empty, without + or # wildcards "
                                                          "(null: no summary messages)")
        if self.keepalive < 1:
            raise ConfigError(f"{key}.keepalive", f"expected >= 1, got {self.keepalive}")


def mqtt_records(results: Sequence[FrameResult], topic: str, only_with_detections: bool = False,
                 events_topic: str | None = None) -> list[OutRecord]:
    """The records of ``results``: per frame one (or one per label, ``subject``: the label,
    with ``{label}`` in ``topic``), then its events (``subject``: the event's kind)."""
    per_label = "{label}" in topic
    out: list[OutRecord] = []
    for r in results:
        f = r.frame
        dets = r.detections
        if len(dets) or not only_with_detections:
            if not per_label:
                out.append(OutRecord("detections", f.source_id, f.frame_index, 0, frame_json(r).encode()))
            elif not len(dets):
                out.append(OutRecord("detections", f.source_id, f.frame_index, 0, frame_json(r).encode(), "none"))
            else:
                labels = dets.labels
                for i, label in enumerate(dict.fromkeys(labels)):
                    sub = FrameResult(f, dets[np.asarray([lab == label for lab in labels], dtype=bool)])
                    out.append(OutRecord("detections", f.source_id, f.frame_index, i, frame_json(sub).encode(),
                                         label))
        if events_topic is not None:
            out += [OutRecord("events", f.source_id, f.frame_index, i, event_json(e).encode(), e.kind)
                    for i, e in enumerate(r.events)]
    return out


def record_topic(r: OutRecord, topic: str, events_topic: str | None, summary_topic: str | None = None) -> str:
    """The topic of record ``r`` (``/``, ``+``, ``#`` in a source id, label or event become ``_``)."""
    source = r.source.translate(_TOPIC_UNSAFE)
    if r.kind == "summary":
        assert summary_topic is not None
        return summary_topic.format(source=source)
    if r.kind == "events":
        assert events_topic is not None
        return events_topic.format(source=source, event=r.subject.translate(_TOPIC_UNSAFE))
    return topic.format(source=source, label=r.subject.translate(_TOPIC_UNSAFE))


def topic_messages(result: FrameResult, topic: str, only_with_detections: bool = False,
                   events_topic: str | None = None) -> list[tuple[str, bytes]]:
    """The ``(topic, payload)`` messages of one frame, its events' last (module docstring)."""
    return [(record_topic(r, topic, events_topic), r.payload)
            for r in mqtt_records([result], topic, only_with_detections, events_topic)]


class _MqttTransport:
    """One paho client and connection (paho's own reconnecting is off: the sink reconnects)."""

    def __init__(self, config: MqttConfig, where: str) -> None:
        self.config = config
        self.where = where
        self._client: Any = None
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._refused: str | None = None
        self._properties: Any = None

    def __enter__(self) -> _MqttTransport:
        try:
            from paho.mqtt import client as mqtt
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
        except ImportError as e:
            raise SinkError("the mqtt sink needs paho-mqtt 2.x: pip install 'fovea[live]'") from e
        c = self.config
        v5 = c.protocol == 5
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=c.client_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, reconnect_on_failure=False)
        client.max_inflight_messages_set(max(20, min(1000, c.batch_records)))
        client.max_queued_messages_set(0)
        if c.username is not None:
            client.username_pw_set(c.username, read_secret(c))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        if v5:
            self._properties = (Properties, PacketTypes.PUBLISH)
        self._client = client
        timeout = max(1.0, c.send_timeout_s)
        try:
            client.connect_timeout = timeout
            client.connect(c.host, c.port, keepalive=c.keepalive)
        except (OSError, ValueError) as e:
            self._client = None
            raise TransportError(f"cannot connect: {e}") from None
        client.loop_start()
        if not self._connected.wait(timeout) or self._refused is not None:
            self._stop()
            raise TransportError(self._refused or f"no CONNACK within {timeout:.0f} s")
        return self

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = f"connection refused: {reason}"
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._lost.set()

    def send(self, records: Sequence[OutRecord], timeout: float) -> int:
        c = self.config
        client = self._client
        infos = []
        for r in records:
            if self._lost.is_set():
                break
            props = None
            if self._properties is not None:
                props = self._properties[0](self._properties[1])
                props.UserProperty = ("fovea-key", r.key)
            info = client.publish(record_topic(r, c.topic, c.events_topic, c.summary_topic), r.payload, qos=c.qos,
                                  retain=c.retain, properties=props)
            if info.rc != 0:
                break
            infos.append(info)
        deadline = time.monotonic() + timeout
        acked = 0
        for info in infos:
            while not _published(info):
                if self._lost.is_set() or time.monotonic() >= deadline:
                    break
                time.sleep(0.002)
            else:
                acked += 1
                continue
            break
        if acked == 0 and records:
            raise TransportError("connection lost" if self._lost.is_set()
                                 else f"no acknowledgement within {timeout:.1f} s")
        return acked

    def _stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            except Exception as e:  # closing must not raise
                log.debug("%s: disconnect: %s", self.where, e)
            client.loop_stop()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()


def _published(info: Any) -> bool:
    try:
        return bool(info.is_published())
    except (RuntimeError, ValueError):
        return False  # failed (not queued, connection lost): not acknowledged


def mqtt_sink(config: MqttConfig) -> ReliableSink:
    """The sink for ``config``: messages through the spool to the broker."""
    where = f"mqtt://{config.host}:{config.port}"

    def encode(results: Sequence[FrameResult]) -> list[OutRecord]:
        return mqtt_records(results, config.topic, config.only_with_detections, config.events_topic)

    return ReliableSink(config, "mqtt", where, encode, lambda: _MqttTransport(config, where),
                        None if config.summary_topic is None else SourceSummary.to_json)


@SINKS.register("mqtt", MqttConfig)
def _mqtt(config: MqttConfig) -> Sink:
    return with_writer("mqtt", config, lambda: mqtt_sink(config))
