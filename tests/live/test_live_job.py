"""The whole live job on the CPU: real RTSP cameras in, detections to JSONL and a real
MQTT broker out, stopped with SIGTERM like a service."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.live.test_mqtt_sink import Subscriber
from tests.servers.helpers import MosquittoProcess

pytestmark = pytest.mark.slow

CAMS = ("cam0", "cam1", "cam2", "cam3")


def test_four_streams_for_twenty_seconds_then_sigterm(
    rtsp_servers, mosquitto: MosquittoProcess, bright_model: Path, tmp_path: Path
) -> None:
    server = rtsp_servers([f"{c}:pattern=ball,width=320,height=240,fps=10,gop=10" for c in CAMS])
    sub = Subscriber(mosquitto.port)
    cfg = tmp_path / "live.yaml"
    sources = "\n".join(f"  - {{uri: '{server.url(c)}', id: {c}}}" for c in CAMS)
    cfg.write_text(f"""
sources:
{sources}
model: {{path: {bright_model}, input_size: [256, 256]}}
engine: {{device: cpu, batch_size: 8}}
live: {{decode: cpu, http: {{enabled: false}}, log_interval_s: 5, batch: {{max_wait_ms: 50}}}}
sinks:
  - {{type: jsonl, path: {tmp_path / 'out.jsonl'}}}
  - {{type: mqtt, host: 127.0.0.1, port: {mosquitto.port}, topic: 'fovea/{{source}}', qos: 1}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "live", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(22)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    for cam in CAMS:
        mine = [r for r in records if r["source"] == cam]
        assert len(mine) >= 100, f"{cam}: only {len(mine)} frames in ~20 s at 10 fps"
        idx = [r["frame_index"] for r in mine]
        assert idx == sorted(idx) and len(set(idx)) == len(idx), f"{cam}: frame order"
        assert all(r["uri"].endswith(f"/{cam}") for r in mine)
        with_ball = sum(1 for r in mine if r["detections"])
        assert with_ball >= 0.8 * len(mine), f"{cam}: the ball was detected in {with_ball}/{len(mine)}"
    assert "live: 4 streams" in out
    # graceful stop: every record written was published too (flushed before exit)
    deadline = time.time() + 5
    while time.time() < deadline and len(sub.received()) < len(records):
        time.sleep(0.1)
    got = sub.received()
    sub.close()
    frames = [t for t, _ in got if not t.endswith("/summary")]
    assert len(frames) >= len(records)
    assert {t.split("/")[-1] for t in frames} == set(CAMS)
    # a live job stopped as asked sends each camera's summary on the summary topic, once
    assert sorted(t for t, _ in got if t.endswith("/summary")) == sorted(f"fovea/{c}/summary" for c in CAMS)
