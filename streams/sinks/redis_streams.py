"""Redis Streams sink: records appended to streams with ``XADD`` (the ``redis`` client).

Config (``sinks:`` entry; the delivery keys of :class:`~streams.sinks.delivery.DeliveryConfig`
apply too: ``path`` (the spool), ``spool_max_mb``, ``flush_timeout_s``, ...)::

    - type: redis
      url: "redis://127.0.0.1:6379/0"     # redis:// or rediss:// (TLS); no password in it
      username: null                      # ACL user; the password: password_env or password_file
      detections_stream: "fovea:detections"   # {source} may be used: a stream per source
      events_stream: "fovea:events"
      summaries_stream: "fovea:summaries"   # one entry per source at the end of a job (summaries.py)
      maxlen: 1000000                     # XADD MAXLEN ~ maxlen (approximate trimming); null: none

Each entry has the fields ``key`` (the idempotency key,
:attr:`~streams.sinks.spool.OutRecord.key`), ``source`` and ``data`` (the record's JSON, the
JSONL sink's line; a summary: :class:`~streams.sinks.summaries.SourceSummary`'s). A batch
goes in one pipeline (one round trip); an entry leaves the spool once Redis answered its
``XADD`` with an id. Trimming with ``MAXLEN ~`` keeps a stream
bounded for consumers that read it as it grows; null keeps everything.

Usage::

    parsed = SINKS.parse({"type": "redis", "url": "redis://127.0.0.1:6379/0"}, "sinks[0]")
    with SINKS.create(parsed) as sink:
        sink.write(results)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

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


@dataclass(frozen=True)
class RedisConfig(DeliveryConfig):
    """``type: redis``: see the module docstring."""

    path: str = "fovea-out/redis-spool"
    url: str = "redis://127.0.0.1:6379/0"
    username: str | None = None
    detections_stream: str = "fovea:detections"
    events_stream: str = "fovea:events"
    summaries_stream: str = "fovea:summaries"
    maxlen: int | None = 1_000_000

    def validate(self, key: str) -> None:
        self.validate_delivery(key)
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError as e:
            raise ConfigError(f"{key}.url", f"not a valid URL: {e}") from None
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ConfigError(f"{key}.url", "expected redis://host[:port][/db] or rediss://...")
        if parts.password:
            raise ConfigError(f"{key}.url", "must not hold a password: use password_env or password_file")
        for name in ("detections_stream", "events_stream", "summaries_stream"):
            try:
                sample = getattr(self, name).format(source="s")
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"{key}.{name}", f"only {{source}} may be used ({e})") from None
            if not sample:
                raise ConfigError(f"{key}.{name}", "must not be empty")
        if self.maxlen is not None and self.maxlen < 1:
            raise ConfigError(f"{key}.maxlen", f"expected >= 1 or null, got {self.maxlen}")


class _RedisTransport:
    """One client connection; a batch is one pipeline of XADDs."""

    def __init__(self, config: RedisConfig, where: str) -> None:
        self.config = config
        self.where = where
        self._client: Any = None
        self._streams = {"detections": config.detections_stream, "events": config.events_stream,
                         "summary": config.summaries_stream}
        self._per_source = {kind: "{source}" in stream for kind, stream in self._streams.items()}

    def __enter__(self) -> _RedisTransport:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as e:
            raise SinkError("the redis sink needs the redis client: pip install 'fovea[redis]'") from e
        timeout = max(1.0, self.config.send_timeout_s)
        self._client = redis.Redis.from_url(
            self.config.url, username=self.config.username, password=read_secret(self.config),
            socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        try:
            self._client.ping()
        except redis.RedisError as e:  # its messages never hold the password
            self._close()
            raise TransportError(f"{type(e).__name__}: {e}") from None
        return self

    def _stream(self, r: OutRecord) -> str:
        template = self._streams[r.kind]
        return template.format(source=r.source) if self._per_source[r.kind] else template

    def send(self, records: Sequence[OutRecord], timeout: float) -> int:
        import redis

        pipe = self._client.pipeline(transaction=False)
        maxlen = self.config.maxlen
        for r in records:
            pipe.xadd(self._stream(r), {"key": r.key, "source": r.source, "data": r.payload},
                      maxlen=maxlen, approximate=True)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as e:
            raise TransportError(f"{type(e).__name__}: {e}") from None
        acked = 0
        for reply in replies:
            if isinstance(reply, Exception):
                if acked == 0:
                    raise TransportError(f"XADD refused: {reply}")
                break
            acked += 1
        return acked

    def _close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception as e:  # closing must not raise
                log.debug("%s: close: %s", self.where, e)
            self._client = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close()


def redis_sink(config: RedisConfig) -> ReliableSink:
    """The sink for ``config``: JSON records through the spool to Redis Streams."""
    parts = urlsplit(config.url)
    where = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
    return ReliableSink(config, "redis", where, json_records, lambda: _RedisTransport(config, where),
                        SourceSummary.to_json)


@SINKS.register("redis", RedisConfig)
def _redis(config: RedisConfig) -> Sink:
    return with_writer("redis", config, lambda: redis_sink(config))
