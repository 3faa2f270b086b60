"""Live RTSP tests against real GStreamer RTSP servers on loopback (see conftest.py)."""

from __future__ import annotations

import io
import itertools
import json
import logging
import time

import av
import pytest
from prometheus_client import generate_latest

from streams.live.config import parse_live_config
from streams.live.manager import StreamManager
from streams.live.types import StreamSpec, StreamState
from tests.live.helpers import Consumer, RtspFactory, max_gap, rss_mb, wait_state, wait_until

FPS = 15

# mount -> (server mount spec, expected (height, width), expected dominant RGB channel)
MOUNTS = {
    "red": ("red:pattern=red,width=320,height=240", (240, 320), 0),
    "green": ("green:pattern=green,width=352,height=240", (240, 352), 1),
    "blue": ("blue:pattern=blue,width=320,height=256", (256, 320), 2),
    "white": ("white:pattern=white,width=384,height=240", (240, 384), None),
}


def _config(**over: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "http": {"enabled": False},
        "log_interval_s": 0,
        "watchdog": {"stall_s": 2.0, "open_timeout_s": 2.0},
        "backoff": {"initial_s": 0.2, "max_s": 1.0},
        "batch": {"max_wait_ms": 30, "queue_size": 16},
    }
    raw.update(over)
    return raw


def _strictly_increasing(values: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))


def _transitions(mgr: StreamManager, sid: str) -> list[StreamState]:
    """The state history of a stream, without the final ``stopped`` of the teardown."""
    source = mgr.source(sid)
    assert source is not None
    states = [state for _, state in source.history()]
    return states[:-1] if states[-1:] == [StreamState.STOPPED] else states


@pytest.mark.slow
def test_four_streams_for_20s_cpu_decode(
    rtsp_servers: RtspFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """4 streams (3 TCP, 1 UDP) for > 20 s: source attribution by size and colour,
    monotonic indices/pts, low latency, no drops, the periodic summary line, flat memory."""
    caplog.set_level(logging.INFO, logger="streams.live")
    server = rtsp_servers([spec for spec, _, _ in MOUNTS.values()])
    cfg = parse_live_config(_config(log_interval_s=4))
    mgr = StreamManager(cfg, mode="frames").start()
    consumer = Consumer(mgr)
    consumer.start()
    try:
        for name in MOUNTS:
            mgr.add_stream(StreamSpec(name, server.url(name),
                                      transport="udp" if name == "blue" else "tcp"))
        assert wait_state(mgr, list(MOUNTS), StreamState.LIVE, 15), mgr.summary_line()
        t0 = time.monotonic()
        time.sleep(4.0)
        rss_start = rss_mb()
        while time.monotonic() - t0 < 21.0:
            time.sleep(0.5)
        rss_end = rss_mb()
        stats = {s.id: s for s in mgr.streams()}
        text = generate_latest(mgr.metrics.registry).decode()
    finally:
        mgr.stop(5)
        consumer.stop()

    for name, (_, shape, channel) in MOUNTS.items():
        seen = consumer.frames(name)
        assert len(seen) >= FPS * 20 * 0.85, (name, len(seen))
        assert all(s.shape == (*shape, 3) for s in seen), name
        for s in seen[5:]:  # decoded colour proves which camera the pixels came from
            if channel is None:
                assert min(s.center) > 200, (name, s.center)
            else:
                assert s.center[channel] > 180 and max(
                    v for i, v in enumerate(s.center) if i != channel) < 80, (name, s.center)
        assert all(s.uri == f"rtsp://127.0.0.1:{server.port}/{name}" for s in seen)
        assert _strictly_increasing([s.frame_index for s in seen])
        assert _strictly_increasing([s.pts for s in seen if s.pts is not None])
        arrivals = [s.arrival for s in seen if s.arrival is not None]
        assert len(arrivals) == len(seen)
        latencies = sorted(s.received - a for s, a in zip(seen, arrivals, strict=True))
        assert latencies[len(latencies) // 2] < 0.25, (name, latencies[len(latencies) // 2])
        st = stats[name]
        assert st.state == StreamState.LIVE and st.reconnects == 0 and st.dropped == 0
        assert 12.0 <= st.fps <= 18.0, (name, st.fps)
        assert f'fovea_live_frames_out_total{{stream="{name}"}}' in text
    assert stats["blue"].transport == "udp"
    assert 'fovea_live_latency_seconds_count{stream="red"}' in text
    assert any("live 4/4" in r.getMessage() for r in caplog.records), "no summary line"
    # memory: after warm-up, 16 s of 4 decoding streams must not grow the process
    assert rss_end - rss_start < 8.0, (rss_start, rss_end)  # measured: < 1 MiB


@pytest.mark.slow
def test_server_killed_and_restarted_streams_resume_others_never_pause(
    rtsp_servers: RtspFactory,
) -> None:
    stable = rtsp_servers(["s0:pattern=red", "s1:pattern=green"])
    flaky = rtsp_servers(["f0:pattern=blue", "f1:pattern=white"])
    mgr = StreamManager(parse_live_config(_config()), mode="frames").start()
    consumer = Consumer(mgr)
    consumer.start()
    try:
        for sid, srv in (("s0", stable), ("s1", stable), ("f0", flaky), ("f1", flaky)):
            mgr.add_stream(StreamSpec(sid, srv.url(sid)))
        assert wait_state(mgr, ["s0", "s1", "f0", "f1"], StreamState.LIVE, 15)
        time.sleep(2.0)
        t_kill = time.time()
        flaky.kill()
        assert wait_until(
            lambda: all(mgr.stats(s).state == StreamState.RECONNECTING  # type: ignore[union-attr]
                        for s in ("f0", "f1")), 8)
        time.sleep(2.0)  # a few refused reconnects
        flaky.start()  # same port
        t_restart = time.time()
        assert wait_state(mgr, ["f0", "f1"], StreamState.LIVE, 15), mgr.summary_line()
        resumed = time.time() - t_restart
        time.sleep(2.0)
        stats = {s.id: s for s in mgr.streams()}
    finally:
        mgr.stop(5)
        consumer.stop()

    assert resumed < 6.0  # backoff capped at 1 s
    for sid in ("f0", "f1"):
        states = _transitions(mgr, sid)
        assert states[:2] == [StreamState.CONNECTING, StreamState.LIVE], states
        assert StreamState.RECONNECTING in states
        assert states.index(StreamState.RECONNECTING) < len(states) - 1 - states[::-1].index(
            StreamState.LIVE), states  # live again after reconnecting
        assert stats[sid].reconnects >= 1 and stats[sid].sessions >= 2
        assert stats[sid].last_error is not None
        seen = consumer.frames(sid)
        after = [s for s in seen if s.received > t_restart]
        assert len(after) >= FPS and all(s.session >= 1 for s in after)
        assert _strictly_increasing([s.frame_index for s in seen])
        assert _strictly_increasing([s.pts for s in seen if s.pts is not None])
    for sid in ("s0", "s1"):
        seen = consumer.frames(sid)
        assert _transitions(mgr, sid) == [StreamState.CONNECTING, StreamState.LIVE]
        assert stats[sid].reconnects == 0
        during = [s.received for s in seen if s.received > t_kill - 1.0]
        assert max_gap(during) < 1.5, max_gap(during)  # never paused (reconnects take >= 2 s)
        assert len(during) >= FPS * 5


@pytest.mark.slow
def test_stalled_server_is_caught_by_watchdog_and_stop_is_bounded(
    rtsp_servers: RtspFactory,
) -> None:
    stable = rtsp_servers(["ok:pattern=red"])
    paused = rtsp_servers(["st:pattern=green"])
    raw = _config(watchdog={"stall_s": 1.5, "open_timeout_s": 1.5})
    mgr = StreamManager(parse_live_config(raw), mode="frames").start()
    consumer = Consumer(mgr)
    consumer.start()
    try:
        mgr.add_stream(StreamSpec("ok", stable.url("ok")))
        mgr.add_stream(StreamSpec("st", paused.url("st")))
        assert wait_state(mgr, ["ok", "st"], StreamState.LIVE, 15)
        time.sleep(1.0)
        t_pause = time.time()
        paused.pause()  # SIGSTOP: the TCP connection stays open, nothing arrives
        assert wait_until(lambda: mgr.stats("st").stalls >= 1, 8)  # type: ignore[union-attr]
        source = mgr.source("st")
        assert source is not None
        t_stall = next(t for t, s in source.history() if s == StreamState.STALLED)
        st = mgr.stats("st")
        assert st is not None and "watchdog" in (st.last_error or "")
        time.sleep(2.0)  # reconnect attempts time out against the paused server
        assert mgr.stats("st").state == StreamState.RECONNECTING  # type: ignore[union-attr]
        paused.resume()
        assert wait_state(mgr, ["st"], StreamState.LIVE, 10), mgr.summary_line()
        time.sleep(1.0)
        ok_times = [s.received for s in consumer.frames("ok") if s.received > t_pause - 1]
        paused.pause()  # stall again, then stop while the reader is blocked
        time.sleep(0.5)
        t0 = time.monotonic()
        finished = mgr.stop(timeout=4.0)
        stop_s = time.monotonic() - t0
    finally:
        paused.resume()
        mgr.stop(1)
        consumer.stop()
    assert 1.2 <= t_stall - t_pause <= 4.0, t_stall - t_pause
    assert max_gap(ok_times) < 1.0  # the healthy stream never paused
    assert finished and stop_s < 4.0, stop_s
    assert mgr.source("st") is not None
    assert mgr.source("st").state == StreamState.STOPPED  # type: ignore[union-attr]


@pytest.mark.slow
def test_wrong_path_and_credentials_fail_clearly_without_leaking(
    rtsp_servers: RtspFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good_pw, bad_pw = "S3cr:t/pw@42!", "WrongPass-987"
    server = rtsp_servers(["cam:pattern=red", "secure:pattern=blue"],
                          auth=[f"secure:alice:{good_pw}"])
    mgr = StreamManager(parse_live_config(_config()), mode="frames").start()
    consumer = Consumer(mgr)
    consumer.start()
    try:
        mgr.add_stream(StreamSpec("good", server.url("cam")))
        mgr.add_stream(StreamSpec("auth_ok", server.url("secure"), username="alice",
                                  password=good_pw))
        mgr.add_stream(StreamSpec("bad_path", server.url("nope")))
        mgr.add_stream(StreamSpec("bad_creds", server.url("secure", "alice", bad_pw)))
        mgr.add_stream(StreamSpec("no_creds", server.url("secure")))
        assert wait_state(mgr, ["good", "auth_ok"], StreamState.LIVE, 15)
        assert wait_state(mgr, ["bad_path", "bad_creds", "no_creds"], StreamState.FAILED, 10)
        before = consumer.count("good")
        time.sleep(1.5)
        after = consumer.count("good")
        stats = {s.id: s for s in mgr.streams()}
        _, health = mgr.health()
        metrics = generate_latest(mgr.metrics.registry).decode()
    finally:
        mgr.stop(5)
        consumer.stop()
    assert after - before >= FPS  # the good stream kept running
    assert consumer.count("auth_ok") > 0
    assert "404" in (stats["bad_path"].last_error or "")
    assert "not found" in (stats["bad_path"].last_error or "")
    for sid in ("bad_creds", "no_creds"):
        assert "401" in (stats[sid].last_error or "")
        assert "username/password" in (stats[sid].last_error or "")
    assert health["streams"]["bad_creds"]["state"] == "failed"
    exported = [json.dumps([s.to_dict() for s in stats.values()]), json.dumps(health), metrics,
                *(r.getMessage() for r in caplog.records),
                *(s.uri for s in consumer.frames("auth_ok"))]
    for text in exported:
        for secret in (good_pw, bad_pw, "S3cr%3At", "WrongPass"):
            assert secret not in text
    assert stats["bad_creds"].uri == f"rtsp://***@127.0.0.1:{server.port}/secure"
    assert any("401" in r.getMessage() and r.levelno >= logging.ERROR for r in caplog.records)


@pytest.mark.slow
def test_gop_buffers_are_self_contained_and_latency_is_a_gop(rtsp_servers: RtspFactory) -> None:
    gop = 10
    server = rtsp_servers([f"cam:pattern=ball,gop={gop}"])  # SPS/PPS only in the SDP
    mgr = StreamManager(parse_live_config(_config()), mode="gop").start()
    consumer = Consumer(mgr)
    consumer.start()
    try:
        mgr.add_stream(StreamSpec("cam", server.url("cam")))
        assert wait_until(lambda: len(consumer.gops["cam"]) >= 4, 15)
        buffers = list(consumer.gops["cam"])[:4]
        text = generate_latest(mgr.metrics.registry).decode()
    finally:
        mgr.stop(5)
        consumer.stop()
    indices: list[int] = []
    for buf in buffers:
        assert buf.fmt == "h264" and buf.codec == "h264" and len(buf) == gop
        assert b"\x00\x00\x00\x01\x67" in buf.data[:64]  # SPS in band, at the start
        with av.open(io.BytesIO(buf.data), format=buf.fmt) as c:  # a fresh decoder
            assert isinstance(c, av.container.InputContainer)
            frames = list(c.decode(video=0))
        assert len(frames) == len(buf.metas)
        assert frames[0].key_frame
        assert (frames[0].width, frames[0].height) == (buf.metas[0].width, buf.metas[0].height)
        assert _strictly_increasing([m.pts for m in buf.metas if m.pts is not None])
        indices += [m.frame_index for m in buf.metas]
        assert buf.first_arrival is not None
    assert indices == list(range(indices[0], indices[0] + len(indices)))
    # the first frame of a GOP waits for the next keyframe: latency >= one GOP interval
    first_lat = [s.received - s.arrival for s in consumer.frames("cam")[:gop] if s.arrival]
    assert max(first_lat) >= (gop - 1) / FPS * 0.8
    assert 'fovea_live_stream_info{mode="gop"' in text
