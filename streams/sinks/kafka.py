"""Kafka sink: records to Kafka topics with ``confluent-kafka`` (librdkafka).

Config (``sinks:`` entry; the delivery keys of :class:`~streams.sinks.delivery.DeliveryConfig`
apply too: ``path`` (the spool), ``spool_max_mb``, ``flush_timeout_s``, ...)::

    - type: kafka
      bootstrap_servers: "127.0.0.1:9092"
      detections_topic: fovea.detections   # one message per frame (frame_record JSON)
      events_topic: fovea.events           # one message per event (Event.to_record JSON)
      summaries_topic: fovea.summaries     # one message per source at the end of a job (summaries.py)
      compression: lz4                     # none | gzip | snappy | lz4 | zstd
      linger_ms: 20                        # how long librdkafka gathers a batch
      batch_bytes: 1000000                 # its largest batch
      create_topics: true                  # create missing topics when the sink opens
      partitions: 1                        # ... with this many partitions
      replication_factor: -1               # ... and this (-1: the broker's default)
      security_protocol: plaintext         # plaintext | ssl | sasl_plaintext | sasl_ssl
      sasl_mechanism: null                 # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
      username: null                       # the password: password_env or password_file
      options: {}                          # more librdkafka properties (ssl.ca.location, ...)

Each message: key = the source id (one source stays ordered in one partition), value = the
record's JSON (the JSONL sink's lines; a summary: :class:`~streams.sinks.summaries.SourceSummary`'s),
header ``fovea-key`` = the idempotency key (:attr:`~streams.sinks.spool.OutRecord.key`). The producer is idempotent
(``enable.idempotence``, ``acks=all``) and every delivery report is checked: a record
leaves the spool only once its report says it was written. librdkafka's own retries run
for ``send_timeout_s`` (``message.timeout.ms``); after that the batch is retried from the
spool on a new connection. Nothing here depends on a particular broker: it speaks plain
Kafka.

Usage::

    parsed = SINKS.parse({"type": "kafka", "bootstrap_servers": "127.0.0.1:9092"}, "sinks[0]")
    with SINKS.create(parsed) as sink:
        sink.write(results)
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from streams.errors import ConfigError, SinkError
from streams.sinks import SINKS, Sink
from streams.sinks.delivery import (
    DeliveryConfig,
    OutRecord,
    ReliableSink,
    TransportError,
    json_records,
    read_secret,
    with_writer,
)
from streams.sinks.summaries import SourceSummary

log = logging.getLogger(__name__)

_OWNED = ("bootstrap.servers", "enable.idempotence", "acks", "compression.type", "linger.ms", "batch.size",
          "message.timeout.ms", "delivery.timeout.ms", "security.protocol", "sasl.mechanism", "sasl.mechanisms",
          "sasl.username", "sasl.password", "client.id")


@dataclass(frozen=True)
class KafkaConfig(DeliveryConfig):
    """``type: kafka``: see the module docstring."""

    path: str = "fovea-out/kafka-spool"
    bootstrap_servers: str = "127.0.0.1:9092"
    detections_topic: str = "fovea.detections"
    events_topic: str = "fovea.events"
    summaries_topic: str = "fovea.summaries"
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    linger_ms: int = 20
    batch_bytes: int = 1_000_000
    create_topics: bool = True
    partitions: int = 1
    replication_factor: int = -1
    client_id: str = "fovea"
    security_protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = "plaintext"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        self.validate_delivery(key)
        if not self.bootstrap_servers.strip():
            raise ConfigError(f"{key}.bootstrap_servers", "must not be empty (host:port[,host:port...])")
        for name in ("detections_topic", "events_topic", "summaries_topic"):
            topic = getattr(self, name)
            if not topic or len(topic) > 249 or not all(c.isalnum() or c in "._-" for c in topic):
                raise ConfigError(f"{key}.{name}", f"{topic!r} is not a Kafka topic name (letters, digits, "
                                                   "'.', '_', '-'; at most 249)")
        if self.linger_ms < 0:
            raise ConfigError(f"{key}.linger_ms", f"expected >= 0, got {self.linger_ms}")
        if self.batch_bytes < 1:
            raise ConfigError(f"{key}.batch_bytes", f"expected >= 1, got {self.batch_bytes}")
        if self.partitions < 1:
            raise ConfigError(f"{key}.partitions", f"expected >= 1, got {self.partitions}")
        if self.replication_factor == 0 or self.replication_factor < -1:
            raise ConfigError(f"{key}.replication_factor", f"expected >= 1 or -1, got {self.replication_factor}")
        if self.send_timeout_s < 1:
            raise ConfigError(f"{key}.send_timeout_s", "expected >= 1 for kafka (librdkafka's message timeout)")
        sasl = self.security_protocol.startswith("sasl")
        if sasl and (self.sasl_mechanism is None or self.username is None):
            raise ConfigError(f"{key}.sasl_mechanism", f"security_protocol {self.security_protocol} needs "
                                                       "sasl_mechanism and username (and password_env or "
                                                       "password_file)")
        for option in self.options:
            if option in _OWNED or "password" in option:
                raise ConfigError(f"{key}.options.{option}", "set by the sink's own keys (passwords: "
                                                             "password_env or password_file)")

    def __repr__(self) -> str:  # options may hold paths, never shown; no password is ever a field
        return (f"KafkaConfig(bootstrap_servers={self.bootstrap_servers!r}, detections_topic="
                f"{self.detections_topic!r}, events_topic={self.events_topic!r}, summaries_topic="
                f"{self.summaries_topic!r}, path={self.path!r})")


def producer_config(config: KafkaConfig, password: str | None) -> dict[str, Any]:
    """The librdkafka properties of the sink's producer."""
    conf: dict[str, Any] = {
        **config.options,
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": config.client_id,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": config.compression,
        "linger.ms": config.linger_ms,
        "batch.size": config.batch_bytes,
        "message.timeout.ms": int(config.send_timeout_s * 1000),
        "security.protocol": config.security_protocol,
    }
    if config.sasl_mechanism is not None:
        conf["sasl.mechanism"] = config.sasl_mechanism
    if config.username is not None:
        conf["sasl.username"] = config.username
    if password is not None:
        conf["sasl.password"] = password
    return conf


class _KafkaTransport:
    """One producer (a new one after each failure: a fatal idempotence error ends a producer)."""

    def __init__(self, config: KafkaConfig, where: str) -> None:
        self.config = config
        self.where = where
        self._producer: Any = None
        self._fatal: str | None = None
        self._topics = {"detections": config.detections_topic, "events": config.events_topic,
                        "summary": config.summaries_topic}

    def __enter__(self) -> _KafkaTransport:
        try:
            from confluent_kafka import KafkaException, Producer
        except ImportError as e:
            raise SinkError("the kafka sink needs confluent-kafka: pip install 'fovea[kafka]'") from e
        conf = producer_config(self.config, read_secret(self.config))
        self._producer = Producer(conf, error_cb=self._on_error, logger=logging.getLogger(f"{__name__}.librdkafka"))
        try:  # librdkafka connects lazily: ask for the metadata to know the broker is there
            metadata = self._producer.list_topics(timeout=max(1.0, self.config.send_timeout_s))
        except KafkaException as e:
            self._purge()
            raise TransportError(f"no broker answered: {e.args[0] if e.args else e}") from None
        if self.config.create_topics:
            self._create_topics(conf, set(metadata.topics))
        return self

    def _create_topics(self, conf: dict[str, Any], existing: set[str]) -> None:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        missing = [t for t in dict.fromkeys(self._topics.values()) if t not in existing]
        if not missing:
            return
        admin_conf = {k: v for k, v in conf.items() if k not in _PRODUCER_ONLY}
        admin = AdminClient(admin_conf)
        futures = admin.create_topics([NewTopic(t, self.config.partitions, self.config.replication_factor)
                                       for t in missing], request_timeout=self.config.send_timeout_s)
        for topic, future in futures.items():
            try:
                future.result(timeout=max(1.0, self.config.send_timeout_s))
                log.info("%s: created topic %s (%d partition(s))", self.where, topic, self.config.partitions)
            except KafkaException as e:
                err = e.args[0] if e.args else None
                if getattr(err, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TransportError(f"cannot create topic {topic}: {err or e}") from None

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = str(err)
        log.debug("%s: librdkafka: %s", self.where, err)

    def send(self, records: Sequence[OutRecord], timeout: float) -> int:
        producer = self._producer
        status: list[Any] = [None] * len(records)  # None: no report yet; True: written; else the error
        done = functools.partial(_report, status)
        deadline = time.monotonic() + timeout + 1.0  # librdkafka reports every message by message.timeout.ms
        for i, r in enumerate(records):
            if not self._produce(r, functools.partial(done, i), deadline):
                break  # librdkafka's queue stayed full until the deadline: the rest waits in the spool
        while time.monotonic() < deadline and producer.flush(min(0.2, max(0.0, deadline - time.monotonic()))):
            if self._fatal is not None:
                break
        acked = 0
        for s in status:
            if s is not True:
                break
            acked += 1
        if acked == 0:
            errors = [s for s in status if s is not None and s is not True]
            if self._fatal is not None:
                raise TransportError(f"producer failed: {self._fatal}")
            raise TransportError(str(errors[0]) if errors else f"no delivery report within {timeout:.1f} s")
        return acked

    def _produce(self, r: OutRecord, on_delivery: Any, deadline: float) -> bool:
        """Hand ``r`` to librdkafka; False when it cannot take it (it stays in the spool)."""
        from confluent_kafka import KafkaException

        while True:
            try:
                self._producer.produce(self._topics[r.kind], value=r.payload, key=r.source.encode(),
                                       headers=[("fovea-key", r.key.encode())], on_delivery=on_delivery)
                return True
            except BufferError:  # librdkafka's queue is full: let it send
                self._producer.poll(0.05)
                if time.monotonic() >= deadline:
                    return False
            except KafkaException as e:  # refused before sending (too large, unknown partition, ...)
                on_delivery(e.args[0] if e.args else e, None)
                return False

    def _purge(self) -> None:
        if self._producer is not None:
            try:
                self._producer.purge()
                self._producer.flush(0)
            except Exception as e:  # closing must not raise: the spool keeps the records
                log.debug("%s: purge: %s", self.where, e)
            self._producer = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._purge()


# properties an AdminClient rejects or warns about
_PRODUCER_ONLY = frozenset({"enable.idempotence", "acks", "compression.type", "linger.ms", "batch.size",
                            "message.timeout.ms"})


def _report(status: list[Any], index: int, err: Any, msg: Any) -> None:
    status[index] = True if err is None else err


def kafka_sink(config: KafkaConfig) -> ReliableSink:
    """The sink for ``config``: JSON records through the spool to Kafka."""
    where = f"kafka://{config.bootstrap_servers}"
    return ReliableSink(config, "kafka", where, json_records, lambda: _KafkaTransport(config, where),
                        SourceSummary.to_json)


@SINKS.register("kafka", KafkaConfig)
def _kafka(config: KafkaConfig) -> Sink:
    return with_writer("kafka", config, lambda: kafka_sink(config))
