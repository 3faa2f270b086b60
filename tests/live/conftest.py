"""Fixtures of the live tests: real RTSP servers and a real MQTT broker on loopback.

``rtsp_servers`` is a factory: ``rtsp_servers(["cam0:pattern=red"], auth=[...])`` starts a
GStreamer RTSP server subprocess on a free port (waits for its READY line) and returns a
:class:`~tests.servers.helpers.RtspServerProcess` that the test may kill, restart (same
port), pause or resume; all are stopped at teardown. ``hostile_rtsp`` starts misbehaving
cameras (:mod:`tests.servers.hostile_rtsp`: garbage RTP, a resolution or codec change
mid-stream, a codec other than announced). ``mosquitto`` is a running broker
(:class:`~tests.servers.helpers.MosquittoProcess`). Tests skip, with the reason and the
apt command, when a server cannot run on this machine; in CI, which installs both, they fail
instead (:mod:`tests.optional`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from tests.live.helpers import RtspFactory
from tests.optional import skip_unless_present
from tests.servers.helpers import (
    HostileRtspProcess,
    MosquittoProcess,
    RtspServerProcess,
    hostile_unavailable,
    mosquitto_unavailable,
    rtsp_unavailable,
)


@pytest.fixture
def rtsp_servers() -> Iterator[RtspFactory]:
    skip_unless_present(rtsp_unavailable())
    started: list[RtspServerProcess] = []

    def make(mounts: Sequence[str], auth: Sequence[str] = ()) -> RtspServerProcess:
        server = RtspServerProcess(mounts, auth)
        try:
            server.start()
        except RuntimeError as e:
            skip_unless_present(f"the GStreamer RTSP server cannot start: {e}")
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def hostile_rtsp() -> Iterator[Callable[[Sequence[str]], HostileRtspProcess]]:
    """A factory of hostile RTSP cameras (:class:`~tests.servers.helpers.HostileRtspProcess`),
    stopped at teardown."""
    skip_unless_present(hostile_unavailable())
    started: list[HostileRtspProcess] = []

    def make(mounts: Sequence[str]) -> HostileRtspProcess:
        server = HostileRtspProcess(mounts)
        server.start(timeout=60.0)  # encodes its clips first
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def mosquitto() -> Iterator[MosquittoProcess]:
    skip_unless_present(mosquitto_unavailable())
    broker = MosquittoProcess()
    try:
        broker.start()
    except RuntimeError as e:
        broker.close()
        skip_unless_present(f"mosquitto cannot start: {e}")
    yield broker
    broker.close()
