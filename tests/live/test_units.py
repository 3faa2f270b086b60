"""Fast tests of the live building blocks without servers: config, redaction, backoff,
pts continuity, rate meter, batcher policies and round-robin, metrics exposition."""

from __future__ import annotations

import itertools
import random
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from streams.errors import ConfigError
from streams.frames import FrameMeta
from streams.live.batcher import Batcher
from streams.live.config import LiveConfig, parse_live_config, resolve_output_mode
from streams.live.metrics import LiveMetrics
from streams.live.redact import Credentials, redact_uri
from streams.live.rtsp import Backoff, PtsClock, RateMeter
from streams.live.types import StreamSpec, StreamState, StreamStats
from streams.schema import from_dict


# ----------------------------------------------------------------------------- config
def test_live_config_defaults_and_values() -> None:
    cfg = parse_live_config(None)
    assert cfg == LiveConfig()
    assert cfg.batch.policy == "drop_oldest" and cfg.http.host == "127.0.0.1"
    cfg = parse_live_config({
        "decode": "cpu", "http": {"port": 0}, "batch": {"max_wait_ms": 10, "queue_size": 3,
                                                       "policy": "block"},
        "watchdog": {"stall_s": 2}, "backoff": {"initial_s": 0.1, "max_s": 1},
        "log_interval_s": 0, "ffmpeg_options": {"buffer_size": "1048576"},
    })
    assert cfg.batch.max_wait_s == pytest.approx(0.01)
    assert cfg.batch.policy == "block" and cfg.watchdog.stall_s == 2.0
    assert resolve_output_mode("cpu") == "frames" and resolve_output_mode("gpu") == "packets"
    assert resolve_output_mode("gop") == "gop"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"batch": {"policy": "drop_newest"}}, "live.batch.policy"),
        ({"batch": {"queue_size": 0}}, "live.batch.queue_size"),
        ({"backoff": {"initial_s": 5, "max_s": 1}}, "live.backoff.max_s"),
        ({"watchdog": {"stall_s": 0}}, "live.watchdog.stall_s"),
        ({"http": {"port": 70000}}, "live.http.port"),
        ({"decode": "nvdec"}, "live.decode"),
        ({"bogus": 1}, "live.bogus"),
    ],
)
def test_live_config_errors_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_live_config(raw)
    assert e.value.key == key


def test_stream_spec_validation_and_repr_hide_credentials() -> None:
    spec = from_dict(StreamSpec, {"id": "gate-1", "uri": "rtsp://u:hunter2@h/x",
                                  "password": "hunter3"}, "body")
    assert "hunter2" not in repr(spec) and "hunter3" not in repr(spec)
    with pytest.raises(ConfigError, match=r"body\.id"):
        from_dict(StreamSpec, {"id": "bad id/", "uri": "rtsp://h/x"}, "body")
    with pytest.raises(ConfigError, match=r"body\.uri"):
        from_dict(StreamSpec, {"id": "a", "uri": "not a uri"}, "body")


# -------------------------------------------------------------------------- redaction
def test_credentials_merge_encode_and_redact() -> None:
    c = Credentials.resolve("rtsp://alice:old@cam.local:554/live?channel=1", password="p@ss:w/rd")
    assert c.open_uri == "rtsp://alice:p%40ss%3Aw%2Frd@cam.local:554/live?channel=1"
    assert c.display_uri == "rtsp://***@cam.local:554/live?channel=1"
    msg = f"Server returned 401: '{c.open_uri}' (password p@ss:w/rd)"
    red = c.redact(msg)
    assert "p@ss" not in red and "p%40ss" not in red and "alice" not in red
    assert "cam.local:554/live" in red
    assert redact_uri("rtsp://h/s?user=a&password=x1") == "rtsp://h/s?user=a&password=***"
    assert Credentials.resolve("rtsp://h/s").display_uri == "rtsp://h/s"


# --------------------------------------------------------------- backoff, pts, rate
def test_backoff_is_capped_exponential_with_jitter() -> None:
    b = Backoff(0.5, 4.0, 2.0, 0.2, random.Random(1))
    delays = [b.next() for _ in range(8)]
    for i, d in enumerate(delays):
        base = min(4.0, 0.5 * 2**i)
        assert base * 0.8 - 1e-9 <= d <= min(4.0, base * 1.2) + 1e-9
    assert max(delays) <= 4.0 and len(set(delays)) == len(delays)  # jittered
    b.reset()
    assert b.next() <= 0.6


def test_pts_clock_is_strictly_increasing_across_sessions() -> None:
    clock = PtsClock()
    clock.set_step(6000)
    out = [clock.next(p) for p in (None, 6000, 12000, 18000)]
    out += [clock.next(p) for p in (0, 6000, 3000, None, 30000)]  # reconnect, jump back, gap
    assert out[:4] == [0, 6000, 12000, 18000]
    assert all(b > a for a, b in itertools.pairwise(out))
    assert out[4] == 24000  # continues one frame step after the previous session


def test_rate_meter() -> None:
    meter = RateMeter(window_s=5.0)
    for i in range(50):
        meter.tick(100.0 + i / 10)
    assert meter.rate(104.9) == pytest.approx(10.0, rel=0.05)
    assert meter.rate(200.0) == 0.0


# ---------------------------------------------------------------------------- batcher
def test_batcher_round_robin_fills_batches_fairly() -> None:
    b: Batcher[str] = Batcher(queue_size=100)
    qs = {s: b.add_stream(s) for s in ("a", "b", "c")}
    for i in range(6):
        qs["a"].put(f"a{i}")
    for i in range(2):
        qs["b"].put(f"b{i}")
    batch = b.next_batch(4, 0.0)
    assert sorted(x[0] for x in batch) == ["a", "a", "b", "b"]  # one per stream per round
    batch = b.next_batch(10, 0.0)
    assert batch == ["a2", "a3", "a4", "a5"]  # only a has items left; order kept
    assert b.next_batch(3, 0.0) == []


def _in_thread(call: Any, hang_s: float = 30.0) -> Any:
    """``call()`` in a thread; its result, or a failure when it has not returned after
    ``hang_s`` (a guard against hanging only, far above any expected duration)."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(call()), daemon=True)
    t.start()
    t.join(hang_s)
    assert out, f"still waiting after {hang_s} s"
    return out[0]


def test_batcher_deadline_and_slow_stream_does_not_stall() -> None:
    b: Batcher[int] = Batcher(queue_size=10)
    fast = b.add_stream("fast")
    b.add_stream("dead")  # never produces
    fast.put(1)
    t0 = time.monotonic()
    # the dead stream holds nothing back: the batch comes at the deadline with what there is
    assert _in_thread(lambda: b.next_batch(8, 0.15)) == [1]
    # and not before it (a lower bound: later under load, never earlier)
    assert time.monotonic() - t0 >= 0.15

    def later() -> None:
        time.sleep(0.05)
        for i in range(8):
            fast.put(i)

    threading.Thread(target=later).start()
    # a full batch returns before the deadline: with an hour's deadline, only a full
    # batch (not the deadline, not close()) can end the call within the hang guard
    assert _in_thread(lambda: b.next_batch(8, 3600.0)) == list(range(8))
    assert not b.closed and len(b) == 0


def test_batcher_drop_oldest_counts_per_stream() -> None:
    b: Batcher[int] = Batcher(queue_size=3, policy="drop_oldest")
    q = b.add_stream("cam")
    other = b.add_stream("other")
    for i in range(10):
        assert q.put(i)
    other.put(100)
    st = b.stats()
    assert st["cam"].dropped == 7 and st["cam"].depth == 3 and st["other"].dropped == 0
    assert sorted(b.next_batch(10, 0.0)) == [7, 8, 9, 100]  # the newest survive


def test_batcher_block_policy_waits_and_remove_wakes_producer() -> None:
    b: Batcher[int] = Batcher(queue_size=2, policy="block")
    q = b.add_stream("rec")
    q.put(0)
    q.put(1)
    assert q.put(2, timeout=0.05) is False  # full: waited, no room
    results: list[bool] = []
    t = threading.Thread(target=lambda: results.append(q.put(3)))
    t.start()
    time.sleep(0.05)
    assert b.next_batch(1, 0.0) == [0]  # makes room -> producer proceeds
    t.join(2)
    assert results == [True] and b.stats()["rec"].dropped == 0
    t = threading.Thread(target=lambda: results.append(q.put(4)))
    t.start()
    time.sleep(0.05)
    assert b.remove_stream("rec")
    t.join(2)
    assert results == [True, False] and not t.is_alive()
    assert q.put(5) is False


def test_batcher_close_wakes_consumer() -> None:
    b: Batcher[int] = Batcher()
    b.add_stream("x")
    threading.Timer(0.05, b.close).start()
    # an hour's deadline: only close() can end the call within the hang guard
    assert _in_thread(lambda: b.next_batch(4, 3600.0)) == []
    assert b.closed


# ---------------------------------------------------------------------------- metrics
def test_metrics_exposition_and_latency() -> None:
    registry = CollectorRegistry()
    m = LiveMetrics(registry)
    now = time.time()
    stats = StreamStats(id="cam0", uri="rtsp://***@h/x", transport="tcp", mode="frames",
                        state=StreamState.LIVE, state_since=now, frames=42, reconnects=2,
                        fps=14.5, dropped=3, last_packet_age_s=0.01)
    m.bind(lambda: [stats])
    meta = FrameMeta("cam0", "rtsp://***@h/x", 0, 0, (1, 90000), 320, 240, arrival_time=now - 0.2)
    lat = m.record_emitted(meta, now=now)
    assert lat == pytest.approx(0.2)
    text = generate_latest(registry).decode()
    assert 'fovea_live_frames_in_total{stream="cam0"} 42.0' in text
    assert 'fovea_live_reconnects_total{stream="cam0"} 2.0' in text
    assert 'fovea_live_dropped_total{stream="cam0"} 3.0' in text
    assert 'fovea_live_stream_state{state="live",stream="cam0"} 1.0' in text
    assert 'fovea_live_frames_out_total{stream="cam0"} 1.0' in text
    assert 'fovea_live_latency_seconds_bucket{le="0.25",stream="cam0"} 1.0' in text
    assert 'fovea_live_fps{stream="cam0"} 14.5' in text
    m.forget("cam0")
    m.bind(lambda: [])
    assert "cam0" not in generate_latest(registry).decode()


class _PyAVPacketDecoder:
    """A real (CPU, PyAV) :class:`~streams.live.types.PacketDecoder`: the GPU one (NVDEC) cannot
    run here; this exercises the source's ``packets`` mode with the same contract."""

    def __init__(self, codec: str) -> None:
        import av

        self.ctx = av.CodecContext.create(codec, "r")
        self.closed = False

    def decode(self, data: bytes, pts: int | None) -> list[Any]:
        import av

        pkt = av.Packet(data)
        pkt.pts = pts
        return [SimpleNamespace(pts=f.pts, width=f.width, height=f.height) for f in self.ctx.decode(pkt)]

    def close(self) -> None:
        self.closed = True


def test_packets_mode_decodes_in_display_order_with_arrival_times(tmp_path: Path) -> None:
    from streams.live.rtsp import RtspSource
    from streams.live.types import LiveFrame, StreamSpec, StreamState
    from tests.media import pyav_frames, write_clip

    clip = write_clip(tmp_path / "b.mp4", "libx264", frames=30, width=160, height=120,
                      options={"g": "10", "bf": "2"})
    got: list[LiveFrame] = []
    decoders: list[_PyAVPacketDecoder] = []

    def factory(codec: str) -> _PyAVPacketDecoder:
        decoders.append(_PyAVPacketDecoder(codec))
        return decoders[-1]

    cfg = parse_live_config({"pace_files": False, "loop_files": False})
    src = RtspSource(StreamSpec("b", f"file://{clip}"), lambda it: got.append(it) or True, mode="packets",
                     config=cfg, decoder_factory=factory).start()
    assert src.wait_for_state(StreamState.RECONNECTING, timeout=20)  # the file ended
    src.stop()
    src.join(timeout=5)
    got = [f for f in got if f.session == 0]
    want = [p for _, p in pyav_frames(clip)]
    # the decoder holds back its last reordered frames at end of stream (no flush on a live source)
    assert len(got) >= len(want) - 3
    assert [f.meta.frame_index for f in got] == list(range(len(got)))
    assert [f.image.pts for f in got] == want[: len(got)]
    assert all(f.meta.arrival_time is not None and (f.meta.width, f.meta.height) == (160, 120) for f in got)
    assert decoders and all(d.closed for d in decoders)
    with pytest.raises(ValueError, match="decoder_factory"):
        RtspSource(StreamSpec("c", f"file://{clip}"), lambda it: True, mode="packets")
