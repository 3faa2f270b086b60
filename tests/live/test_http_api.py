"""The live HTTP server: /health, /metrics, /streams, adding and removing streams mid-run."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from streams.live.config import parse_live_config
from streams.live.manager import StreamManager
from streams.live.types import StreamSpec, StreamState
from tests.live.helpers import Consumer, RtspFactory, max_gap, wait_state, wait_until


def _call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read().decode()
            ctype = resp.headers.get("Content-Type", "")
            return resp.status, json.loads(raw) if "json" in ctype else raw
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


@pytest.mark.slow
def test_http_add_remove_health_metrics(rtsp_servers: RtspFactory) -> None:
    server = rtsp_servers(["a:pattern=red", "b:pattern=green"])
    cfg = parse_live_config({
        "http": {"port": 0}, "log_interval_s": 0,
        "watchdog": {"stall_s": 2, "open_timeout_s": 2},
        "backoff": {"initial_s": 0.2, "max_s": 1},
    })
    mgr = StreamManager(cfg, mode="frames").start()
    assert mgr.http is not None
    base = mgr.http.url
    assert base.startswith("http://127.0.0.1:")
    consumer = Consumer(mgr)
    consumer.start()
    try:
        code, health = _call("GET", f"{base}/health")
        assert code == 503 and health["status"] == "down" and health["total"] == 0

        mgr.add_stream(StreamSpec("a", server.url("a")))
        assert wait_state(mgr, ["a"], StreamState.LIVE, 15)
        code, health = _call("GET", f"{base}/health")
        assert code == 200 and health["status"] == "ok", health
        assert health["streams"]["a"]["state"] == "live", health

        # add b mid-run
        code, added = _call("POST", f"{base}/streams", {"uri": server.url("b"), "id": "b"})
        assert code == 201 and added["id"] == "b"
        assert wait_until(lambda: _call("GET", f"{base}/streams/b")[1]["state"] == "live", 15)
        assert _call("POST", f"{base}/streams", {"uri": server.url("b"), "id": "b"})[0] == 409
        assert _call("POST", f"{base}/streams", {"id": "x"})[0] == 400  # no uri
        assert _call("POST", f"{base}/streams", {"id": "x", "uri": "rtsp://h/x",
                                                 "port": 1})[0] == 400  # unknown key
        assert _call("POST", f"{base}/streams", b"{not json")[0] == 400
        code, err = _call("POST", f"{base}/streams",
                          {"id": "y", "uri": "rtsp://h/x", "password": 12345})
        assert code == 400 and "12345" not in json.dumps(err)

        time.sleep(1.0)
        t_remove = time.time()
        code, body = _call("DELETE", f"{base}/streams/a")
        assert code == 200 and body == {"removed": "a"}
        assert _call("DELETE", f"{base}/streams/a")[0] == 404
        assert _call("GET", f"{base}/streams/a")[0] == 404
        _, listing = _call("GET", f"{base}/streams")
        assert [s["id"] for s in listing["streams"]] == ["b"]

        # a broken stream next to a live one: degraded, still 200
        assert _call("POST", f"{base}/streams",
                     {"uri": server.url("missing"), "id": "gone"})[0] == 201
        assert wait_until(lambda: _call("GET", f"{base}/streams/gone")[1]["state"] == "failed",
                          10)
        time.sleep(1.0)
        code, health = _call("GET", f"{base}/health")
        assert code == 200 and health["status"] == "degraded" and health["live"] == 1, health
        assert "404" in health["streams"]["gone"]["last_error"]

        code, metrics = _call("GET", f"{base}/metrics")
        assert code == 200
        assert 'fovea_live_frames_in_total{stream="b"}' in metrics
        assert 'fovea_live_stream_state{state="failed",stream="gone"} 1.0' in metrics
        assert 'fovea_live_latency_seconds_bucket{le="0.1",stream="b"}' in metrics
        assert 'fovea_live_frames_out_total{stream="b"}' in metrics
        assert 'stream="a"' not in metrics  # removed streams leave no series

        assert _call("GET", f"{base}/nowhere")[0] == 404
        assert _call("DELETE", f"{base}/streams/b")[0] == 200
        assert _call("DELETE", f"{base}/streams/gone")[0] == 200
        code, health = _call("GET", f"{base}/health")
        assert code == 503 and health["status"] == "down"
    finally:
        assert mgr.stop(5)
        consumer.stop()
    a_after = [s.frame_index for s in consumer.frames("a") if s.received > t_remove + 0.5]
    assert a_after == [], a_after  # nothing from a removed stream
    b_times = [s.received for s in consumer.frames("b")]
    assert len(b_times) > 30, len(b_times)
    gap = max_gap([t for t in b_times if t < t_remove + 2])
    assert gap < 1.5, gap  # b undisturbed by adding/removing other streams
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/health", timeout=1)  # the server is gone
