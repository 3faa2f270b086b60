"""MQTT sink: one JSON message per frame (:func:`streams.sinks.records.frame_json`, the JSONL line),
and one per event (:func:`streams.sinks.records.event_json`) on a topic per event type.

``paho-mqtt`` (2.x, ``pip install 'fovea[live]'``) is imported only when the sink opens,
so :mod:`streams.sinks` imports without it.

Config (``sinks:`` entry)::

    - type: mqtt
      host: 127.0.0.1
      port: 1883
      topic: "fovea/{source}/detections"   # {source}; with {label}: one message per label
      events_topic: "fovea/{source}/events/{event}"   # {source}, {event}: line_cross, zone_enter, ...;
                                                       # null: events are not published
      qos: 0                                # 0 | 1 | 2
      client_id: ""                         # "" = broker-assigned / random
      username: null
      password: null
      keepalive: 60
      retain: false
      max_offline: 10000        # messages buffered while disconnected; oldest dropped
      only_with_detections: false
      flush_timeout_s: 5        # on close: how long to wait for buffered/in-flight messages
      connect_timeout_s: 5      # on open: how long to wait for the first connection
      reconnect_min_s: 1
      reconnect_max_s: 30

Behaviour: the client connects asynchronously and paho's network thread
(``loop_start``) reconnects automatically with capped exponential delays. While the
broker is unreachable, messages wait in a bounded buffer (``max_offline``); when it is
full the OLDEST message is dropped and counted (:attr:`MqttSink.dropped`). On reconnect
the buffer is sent in order. Leaving the ``with`` block waits up to ``flush_timeout_s``
for the buffer and in-flight messages, then disconnects; what is still unsent is counted
as dropped. With ``{label}`` in the topic a frame becomes one message per detected label
(its detections only), and frames without detections go to label ``none``. A frame's
events (:class:`~streams.events.Event`, from the analytics stage) follow its message, one
message each on ``events_topic`` (``fovea/cam1/events/line_cross``), also for frames that
``only_with_detections`` leaves out.

Usage::

    parsed = SINKS.parse({"type": "mqtt", "host": "127.0.0.1", "qos": 1}, key="sinks[0]")
    with SINKS.create(parsed) as sink:
        sink.write(results)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np

from streams.detections import Detections
from streams.errors import ConfigError, SinkError
from streams.frames import FrameResult
from streams.sinks import SINKS
from streams.sinks.records import event_json, frame_json

log = logging.getLogger(__name__)

_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})


@dataclass(frozen=True)
class MqttConfig:
    """``type: mqtt``: see the module docstring."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic: str = "fovea/{source}/detections"
    events_topic: str | None = "fovea/{source}/events/{event}"
    qos: Literal[0, 1, 2] = 0
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    keepalive: int = 60
    retain: bool = False
    max_offline: int = 10_000
    only_with_detections: bool = False
    flush_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0

    def __repr__(self) -> str:  # never show the password
        return (f"MqttConfig(host={self.host!r}, port={self.port}, topic={self.topic!r}, "
                f"qos={self.qos}, client_id={self.client_id!r}, "
                f"username={'***' if self.username else None})")

    def validate(self, key: str) -> None:
        if isinstance(self.qos, bool):
            raise ConfigError(f"{key}.qos", "expected 0, 1 or 2")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"{key}.port", f"expected 1..65535, got {self.port}")
        if not self.host:
            raise ConfigError(f"{key}.host", "must not be empty")
        try:
            sample = self.topic.format(source="s", label="l")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"{key}.topic", f"only {{source}} and {{label}} may be used ({e})"
            ) from e
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
        if self.keepalive < 1:
            raise ConfigError(f"{key}.keepalive", f"expected >= 1, got {self.keepalive}")
        if self.max_offline < 0:
            raise ConfigError(f"{key}.max_offline", f"expected >= 0, got {self.max_offline}")
        for name in ("flush_timeout_s", "connect_timeout_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name}", "expected >= 0")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError(
                f"{key}.reconnect_min_s", "expected 0 < reconnect_min_s <= reconnect_max_s"
            )


def topic_messages(
    result: FrameResult, topic: str, only_with_detections: bool = False, events_topic: str | None = None
) -> list[tuple[str, bytes]]:
    """The ``(topic, payload)`` messages of one frame, its events' last (module docstring)."""
    messages = _frame_messages(result, topic, only_with_detections)
    if result.events and events_topic is not None:
        source = result.frame.source_id.translate(_TOPIC_UNSAFE)
        messages += [(events_topic.format(source=source, event=e.kind.translate(_TOPIC_UNSAFE)),
                      event_json(e).encode()) for e in result.events]
    return messages


def _frame_messages(result: FrameResult, topic: str, only_with_detections: bool) -> list[tuple[str, bytes]]:
    dets = result.detections
    source = result.frame.source_id.translate(_TOPIC_UNSAFE)
    if not len(dets) and only_with_detections:
        return []
    if "{label}" not in topic:
        payload = frame_json(result).encode()
        return [(topic.format(source=source, label=""), payload)]
    if not len(dets):
        payload = frame_json(result).encode()
        return [(topic.format(source=source, label="none"), payload)]
    labels = dets.labels
    out = []
    for label in dict.fromkeys(labels):
        mask = [lab == label for lab in labels]
        sub = FrameResult(result.frame, _select(dets, mask))  # its events go once, on their own topics
        payload = frame_json(sub).encode()
        out.append((topic.format(source=source, label=label.translate(_TOPIC_UNSAFE)), payload))
    return out


def _select(dets: Detections, mask: list[bool]) -> Detections:
    return dets[np.asarray(mask, dtype=bool)]


class MqttSink:
    """Publishes frame records to an MQTT broker. See the module docstring."""

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self._client: Any = None
        self._no_conn = 4  # paho's MQTT_ERR_NO_CONN
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, bytes]] = deque()
        self._inflight: deque[Any] = deque()
        self._connected = threading.Event()
        self.published = 0  # acknowledged by paho (qos 0: written to the socket)
        self.dropped = 0  # lost to the offline bound, or unsent at close
        self.connects = 0
        self.disconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def buffered(self) -> int:
        """Messages waiting for a connection."""
        with self._lock:
            return len(self._pending)

    @property
    def where(self) -> str:
        return f"mqtt://{self.config.host}:{self.config.port}"

    def stats(self) -> dict[str, Any]:
        """Counters: published, dropped, buffered, connected, connects, disconnects."""
        return {
            "published": self.published, "dropped": self.dropped, "buffered": self.buffered,
            "connected": self.connected, "connects": self.connects,
            "disconnects": self.disconnects,
        }

    # ------------------------------------------------------------------ open
    def __enter__(self) -> MqttSink:
        try:
            from paho.mqtt import client as mqtt
        except ImportError as e:
            raise SinkError(
                "the mqtt sink needs paho-mqtt 2.x: pip install 'fovea[live]'"
            ) from e
        c = self.config
        self._no_conn = int(mqtt.MQTT_ERR_NO_CONN)
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=c.client_id,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=True,
        )
        if c.username is not None:
            client.username_pw_set(c.username, c.password)
        client.reconnect_delay_set(
            min_delay=max(1, round(c.reconnect_min_s)), max_delay=max(1, round(c.reconnect_max_s))
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        try:
            client.connect_async(c.host, c.port, keepalive=c.keepalive)
        except (OSError, ValueError) as e:
            raise SinkError(f"{self.where}: cannot connect: {e}") from e
        client.loop_start()
        if not self._connected.wait(c.connect_timeout_s):
            log.warning("%s: not connected after %.1f s; buffering up to %d messages and "
                        "retrying in the background", self.where, c.connect_timeout_s,
                        c.max_offline)
        return self

    # ------------------------------------------------------- paho callbacks
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.warning("%s: connection refused: %s", self.where, reason)
            return
        self.connects += 1
        log.info("%s: connected%s", self.where,
                 f" (reconnect {self.connects - 1})" if self.connects > 1 else "")
        with self._lock:
            self._connected.set()
            self._drain_locked()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            self.disconnects += 1
            log.warning("%s: disconnected (%s); buffering, reconnecting", self.where, reason)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        self.published += 1

    # -------------------------------------------------------------- publish
    def _send_locked(self, topic: str, payload: bytes) -> bool:
        """Hand one message to paho; ``False`` if it is not connected after all."""
        info = self._client.publish(topic, payload, qos=self.config.qos, retain=self.config.retain)
        if info.rc != 0 and not (info.rc == self._no_conn and self.config.qos > 0):
            return False  # (qos > 0 without a connection: paho keeps it and resends it)
        self._inflight.append(info)
        while self._inflight and self._done(self._inflight[0]):
            self._inflight.popleft()
        return True

    @staticmethod
    def _done(info: Any) -> bool:
        try:
            return bool(info.is_published())
        except (RuntimeError, ValueError):
            return True  # failed: paho re-queues qos>0 messages itself on reconnect

    def _drain_locked(self) -> None:
        while self._pending and self._connected.is_set():
            topic, payload = self._pending[0]
            if not self._send_locked(topic, payload):
                break
            self._pending.popleft()

    def _buffer_locked(self, topic: str, payload: bytes) -> None:
        if self.config.max_offline == 0:
            self.dropped += 1
            return
        if len(self._pending) >= self.config.max_offline:
            self._pending.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("%s: offline buffer full (%d): %d message(s) dropped so far",
                            self.where, self.config.max_offline, self.dropped)
        self._pending.append((topic, payload))

    def write(self, results: Sequence[FrameResult]) -> None:
        """Publish one message per frame (or per label) and per event; buffers while disconnected."""
        if self._client is None:
            raise SinkError(f"{self.where}: write() called outside 'with'")
        c = self.config
        with self._lock:
            for r in results:
                for topic, payload in topic_messages(r, c.topic, c.only_with_detections, c.events_topic):
                    if (self._connected.is_set() and not self._pending
                            and self._send_locked(topic, payload)):
                        continue
                    self._buffer_locked(topic, payload)
            if self._pending and self._connected.is_set():
                self._drain_locked()

    # ----------------------------------------------------------------- close
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client = self._client
        if client is None:
            return
        deadline = time.monotonic() + self.config.flush_timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                self._drain_locked()
                while self._inflight and self._done(self._inflight[0]):
                    self._inflight.popleft()
                if not self._pending and not self._inflight:
                    break
            time.sleep(0.02)
        with self._lock:
            lost = len(self._pending) + len(self._inflight)
            self._pending.clear()
            self._inflight.clear()
            self.dropped += lost
        if lost:
            log.warning("%s: %d message(s) not delivered within flush_timeout_s=%.1f",
                        self.where, lost, self.config.flush_timeout_s)
        try:
            client.disconnect()
        finally:
            client.loop_stop()
            self._client = None
            self._connected.clear()
        log.info("%s: closed (%d published, %d dropped)", self.where, self.published,
                 self.dropped)


@SINKS.register("mqtt", MqttConfig)
def _mqtt(config: MqttConfig) -> MqttSink:
    return MqttSink(config)
