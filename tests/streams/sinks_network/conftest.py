"""Fixtures of the network sinks' tests: real brokers on loopback, a clip for the outage jobs.

Each broker fixture starts a fresh server (function scope: a test may kill it); it skips
with the reason when the server cannot run here and fails instead under CI
(:mod:`tests.optional`). The servers are described in :mod:`tests.servers.brokers`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.media import write_clip
from tests.optional import skip_unless_present
from tests.servers.brokers import (
    PostgresProcess,
    RedisProcess,
    TansuProcess,
    postgres_unavailable,
    redis_unavailable,
    tansu_unavailable,
)
from tests.servers.helpers import MosquittoProcess, mosquitto_unavailable

OUTAGE_FRAMES = 160  # 40 batches of 4: the broker is killed at the 4th and back at the 10th


@pytest.fixture(scope="session")
def outage_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small H.264 clip for the outage jobs (quick to decode and infer on the CPU)."""
    return write_clip(tmp_path_factory.mktemp("outage") / "cam1.mp4", frames=OUTAGE_FRAMES, width=160, height=96)


def _start(server: TansuProcess | RedisProcess | PostgresProcess | MosquittoProcess) -> None:
    try:
        server.start()
    except RuntimeError as e:
        server.close()
        skip_unless_present(f"{server.name} cannot start: {e}")


@pytest.fixture
def kafka_broker() -> Iterator[TansuProcess]:
    skip_unless_present(tansu_unavailable())
    broker = TansuProcess()
    _start(broker)
    yield broker
    broker.close()


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    skip_unless_present(redis_unavailable())
    server = RedisProcess()
    _start(server)
    yield server
    server.close()


@pytest.fixture
def postgres_server() -> Iterator[PostgresProcess]:
    skip_unless_present(postgres_unavailable())
    server = PostgresProcess()
    _start(server)
    yield server
    server.close()


@pytest.fixture
def mqtt_broker() -> Iterator[MosquittoProcess]:
    skip_unless_present(mosquitto_unavailable())
    broker = MosquittoProcess()
    _start(broker)
    yield broker
    broker.close()
