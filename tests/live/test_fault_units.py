"""Fast tests of the content-fault handling without servers: the progress watch (no
keyframe, nothing decodable), the frame-size check, quarantine in the reconnect loop, and
the new state and counters on /health and /metrics."""

from __future__ import annotations

import threading
from fractions import Fraction
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from streams.errors import ConfigError
from streams.live.config import parse_live_config
from streams.live.connection import Connection, Failure, ReconnectError, StateMachine, session_failure
from streams.live.demux import FrameStamper, Track
from streams.live.health import health_report
from streams.live.metrics import LiveMetrics
from streams.live.packet_decoding import FrameEmitter
from streams.live.rtsp import ProgressWatch
from streams.live.stats import SourceStats
from streams.live.types import LiveItem, StreamSpec, StreamState, StreamStats


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr("streams.live.rtsp.time.monotonic", c)
    return c


def test_no_keyframe_within_the_limit_is_a_fault(clock: Clock) -> None:
    stats = SourceStats()
    watch = ProgressWatch(stats, 2.0, "h264")
    for _ in range(5):
        stats.skipped()
        watch.check(got_key=False)
    clock.t += 2.5
    with pytest.raises(ReconnectError) as e:
        watch.check(got_key=False)
    assert e.value.fault and "no keyframe in 2 s (5 packets skipped)" in e.value.message
    assert "announced codec h264" in e.value.message


def test_packets_that_never_decode_are_a_fault_frames_reset_the_watch(clock: Clock) -> None:
    stats = SourceStats()
    watch = ProgressWatch(stats, 2.0, "hevc")
    clock.t += 1.5
    stats.frames_out(1, 0.0)
    watch.check(got_key=True)  # progress: the watch restarts
    clock.t += 1.5
    watch.check(got_key=True)  # 1.5 s without a frame: fine
    stats.decode_error()
    stats.decode_error()
    clock.t += 1.0
    with pytest.raises(ReconnectError) as e:
        watch.check(got_key=True)
    assert e.value.fault and "(2 rejected by the hevc decoder)" in e.value.message
    # GOP buffers are decoded later: only the keyframe is watched
    gop = ProgressWatch(SourceStats(), 2.0, "h264", frames=False)
    clock.t += 10
    gop.check(got_key=True)
    with pytest.raises(ReconnectError):
        gop.check(got_key=False)


def test_a_frame_of_another_size_ends_the_session_without_taking_an_index() -> None:
    stamper = FrameStamper("cam", "rtsp://h/x")
    stamper.start_session(Track(None, None, "h264", Fraction(1, 90000), 6000))
    out: list[LiveItem] = []
    emitter = FrameEmitter(stamper, SourceStats(), lambda item: out.append(item) is None, session=0)
    assert emitter.frame(0, 320, 240, 1.0, None)
    assert emitter.frame(6000, 320, 240, 1.1, None)
    with pytest.raises(ReconnectError) as e:
        emitter.frame(12000, 480, 272, 1.2, None)
    assert e.value.fault and e.value.message == "resolution changed mid-stream: 320x240 -> 480x272"
    assert [it.metas[0].frame_index for it in out] == [0, 1] and stamper.next_index == 2
    failure = session_failure(e.value, stall_s=5, got_packets=True, redact=str)
    assert failure.fault and not failure.stall and not failure.fatal


def _connection(raw: dict[str, Any]) -> tuple[Connection, StateMachine, SourceStats, threading.Event]:
    stop = threading.Event()
    states = StateMachine("x", "rtsp://h/x")
    stats = SourceStats()
    cfg = parse_live_config({"backoff": {"initial_s": 0.001, "max_s": 0.002}, **raw})
    conn = Connection(StreamSpec("x", "rtsp://h/x"), cfg, states, stats, stop)
    conn.open = lambda: object()  # type: ignore[method-assign]
    conn.close = lambda c: None  # type: ignore[method-assign]
    return conn, states, stats, stop


def test_repeated_faults_quarantine_the_camera_then_it_reconnects() -> None:
    conn, states, stats, stop = _connection({"quarantine": {"faults": 3, "window_s": 60, "pause_s": 0.2}})
    sessions = [Failure("no keyframe in 2 s", fault=True)] * 3 + [Failure("stream ended")] + \
               [Failure("no keyframe in 2 s", fault=True)] * 2
    pauses: list[float] = []
    real_wait = stop.wait

    def wait(timeout: float | None = None) -> bool:
        pauses.append(timeout or 0.0)
        return real_wait(timeout)

    stop.wait = wait  # type: ignore[method-assign]

    def read_session(container: Any) -> Failure | None:
        conn.connected()
        if not sessions:
            stop.set()
            return None
        return sessions.pop(0)

    assert conn.run(read_session) is False
    snap = stats.snapshot(id="x", uri="u", transport="tcp", mode="frames", state=states.state, state_since=0)
    assert snap.faults == 5 and snap.quarantines == 1  # the 4th fault started a new count
    assert 0.2 in pauses  # the quarantine pause instead of the backoff
    seen = [s for _, s in states.history()]
    i = seen.index(StreamState.QUARANTINED)
    assert seen[i + 1:i + 3] == [StreamState.RECONNECTING, StreamState.LIVE]  # back after the pause
    assert seen.count(StreamState.QUARANTINED) == 1


def test_faults_spread_out_or_disabled_never_quarantine(monkeypatch: pytest.MonkeyPatch) -> None:
    t = [0.0]
    monkeypatch.setattr("streams.live.connection.time.monotonic", lambda: t[0])
    for raw, step in (({"faults": 3, "window_s": 10, "pause_s": 1}, 6.0), ({"faults": 0}, 0.0)):
        conn, states, stats, stop = _connection({"quarantine": raw})
        sessions = [Failure("resolution changed mid-stream", fault=True)] * 6

        def read_session(container: Any, sessions: list[Failure] = sessions, step: float = step,
                         stop: threading.Event = stop) -> Failure | None:
            t[0] += step
            if not sessions:
                stop.set()
                return None
            return sessions.pop(0)

        assert conn.run(read_session) is False
        assert stats.faults == 6 and stats.quarantines == 0
        assert StreamState.QUARANTINED not in [s for _, s in states.history()]


def test_quarantine_on_health_metrics_and_config() -> None:
    q = StreamStats("bad", "rtsp://h/x", "tcp", "frames", StreamState.QUARANTINED, 0.0, faults=3, quarantines=1,
                    last_error="quarantined for 300 s after 3 faults in 120 s; last: no keyframe in 20 s")
    ok = StreamStats("ok", "rtsp://h/y", "tcp", "frames", StreamState.LIVE, 0.0)
    code, payload = health_report([ok, q], "frames")
    assert code == 200 and payload["status"] == "degraded"
    assert payload["streams"]["bad"]["state"] == "quarantined" and payload["streams"]["bad"]["faults"] == 3
    metrics = LiveMetrics(CollectorRegistry())
    metrics.bind(lambda: [ok, q])
    text = generate_latest(metrics.registry).decode()
    assert 'fovea_live_stream_state{state="quarantined",stream="bad"} 1.0' in text
    assert 'fovea_live_faults_total{stream="bad"} 3.0' in text
    assert 'fovea_live_quarantines_total{stream="bad"} 1.0' in text
    for raw, key in (({"quarantine": {"faults": -1}}, "live.quarantine.faults"),
                     ({"quarantine": {"pause_s": 0}}, "live.quarantine.pause_s"),
                     ({"watchdog": {"undecodable_s": 0.1}}, "live.watchdog.undecodable_s")):
        with pytest.raises(ConfigError) as e:
            parse_live_config(raw)
        assert e.value.key == key
