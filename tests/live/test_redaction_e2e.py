"""A camera password never leaves Fovea: the whole ``fovea live`` job, at DEBUG log level,
with password-bearing URIs through every path that handles one (in the job's process and
in an ingest process): cameras that work, a wrong password (401), a wrong path (404), a
reader that crashes with the URI in its exception (traceback logged), a secret query
parameter, streams added over the token-protected HTTP API (accepted, failing, refused by
the allow-list, removed). Everything the job writes or answers is searched for the secrets:
stdout (the summary), stderr (every log line and traceback), the JSONL records, and every
HTTP answer (/health, /streams, /metrics, the refusals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.live.helpers import RtspFactory, wait_until
from tests.servers.helpers import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "S3cr:t/pw@42!"
WRONG = "WrongPass-987"
QUERY_SECRET = "QuerySecret555"
TOKEN = "api-token-for-the-redaction-test-0123"
SECRETS = (PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD), WRONG, QUERY_SECRET, "S3cr", TOKEN)

# Installed in every process of the job (the ingest and writer processes too): a reader that
# meets the "crashme" mount raises an exception quoting the URI it opened, password included.
SITECUSTOMIZE = '''
import os
if os.environ.get("FOVEA_TEST_CRASH"):
    import streams.live.rtsp as _rtsp
    _open_track = _rtsp.open_track

    def _crashing_open_track(container):
        if os.environ["FOVEA_TEST_CRASH"] in container.name:
            raise RuntimeError("simulated bug while reading " + container.name)
        return _open_track(container)

    _rtsp.open_track = _crashing_open_track
'''


def _call(method: str, url: str, body: Any = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def _states(base: str) -> dict[str, str]:
    code, text = _call("GET", f"{base}/streams")
    return {s["id"]: s["state"] for s in json.loads(text)["streams"]} if code == 200 else {}


@pytest.mark.parametrize("ingest", [0, 1], ids=["in-process", "ingest-process"])
def test_no_password_in_any_output(rtsp_servers: RtspFactory, bright_model: Path, tmp_path: Path,
                                   ingest: int) -> None:
    mounts = [f"{m}:pattern=white,width=160,height=120,fps=5,gop=5" for m in ("open", "secure", "crashme")]
    server = rtsp_servers(mounts, auth=[f"secure:alice:{PASSWORD}", f"crashme:alice:{PASSWORD}"])
    enc = quote(PASSWORD, safe="")
    host = f"127.0.0.1:{server.port}"
    sources = {
        "cam_uri": {"uri": f"rtsp://alice:{enc}@{host}/secure"},
        "cam_fields": {"uri": f"rtsp://{host}/secure", "username": "alice", "password": PASSWORD},
        "cam_wrong": {"uri": f"rtsp://alice:{quote(WRONG)}@{host}/secure"},
        "cam_404": {"uri": f"rtsp://alice:{enc}@{host}/nope"},
        "cam_crash": {"uri": f"rtsp://{host}/crashme", "username": "alice", "password": PASSWORD},
        "cam_query": {"uri": f"rtsp://{host}/open?token={QUERY_SECRET}"},
    }
    port = free_port()
    cfg = tmp_path / "live.yaml"
    out = tmp_path / "out.jsonl"
    cfg.write_text(json.dumps({
        "sources": [{"id": sid, **entry} for sid, entry in sources.items()],
        "model": {"path": str(bright_model), "input_size": [128, 160]},
        "engine": {"device": "cpu", "batch_size": 8},
        "live": {"decode": "cpu", "log_interval_s": 1, "ingest": {"processes": ingest},
                 "watchdog": {"stall_s": 3, "open_timeout_s": 3}, "backoff": {"initial_s": 0.2, "max_s": 1},
                 "http": {"port": port, "token_env": "FOVEA_TEST_API_TOKEN"}},
        "sinks": [{"type": "jsonl", "path": str(out)}],
    }))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "FOVEA_TEST_CRASH": "crashme", "FOVEA_TEST_API_TOKEN": TOKEN,
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # the job's output goes to files: a pipe nobody reads while the job runs fills up with its
    # DEBUG log (64 KiB) and blocks the job's logging threads, which on a slow machine kept the
    # job from starting within the wait below
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "--log-level", "DEBUG", "live", str(cfg)],
                                cwd=tmp_path, env=env, stdout=out_file, stderr=err_file, text=True)
    base = f"http://127.0.0.1:{port}"
    answers: list[str] = []
    try:
        assert wait_until(lambda: _states(base).get("cam_uri") == "live", 90), "the job did not start"
        code, text = _call("POST", f"{base}/streams", {"id": "api_ok", "uri": f"rtsp://alice:{enc}@{host}/secure"})
        answers.append(text)
        assert code == 201, text
        code, text = _call("POST", f"{base}/streams", {"id": "api_wrong", "uri": f"rtsp://{host}/secure",
                                                      "username": "alice", "password": WRONG})
        answers.append(text)
        assert code == 201, text
        code, text = _call("POST", f"{base}/streams", {"id": "api_refused", "uri": f"http://alice:{enc}@{host}/x"})
        answers.append(text)
        assert code == 403 and "scheme 'http'" in text, text
        code, text = _call("POST", f"{base}/streams", {"id": "api bad", "uri": f"rtsp://alice:{enc}@{host}/x",
                                                      "password": PASSWORD})
        answers.append(text)
        assert code == 400, text
        want = {"cam_uri": "live", "cam_fields": "live", "api_ok": "live", "cam_wrong": "failed",
                "cam_404": "failed", "cam_crash": "failed", "api_wrong": "failed"}
        assert wait_until(lambda: all(_states(base).get(k) == v for k, v in want.items()), 30), _states(base)
        time.sleep(2.0)  # records of every working camera, summaries logged
        for path in ("/health", "/streams", "/metrics", "/streams/cam_crash", "/streams/api_wrong"):
            code, text = _call("GET", base + path)
            assert code in (200, 503), (path, code)
            answers.append(text)
        code, text = _call("DELETE", f"{base}/streams/api_ok")
        answers.append(text)
        assert code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    records = out.read_text()
    by_source: dict[str, int] = {}
    for line in records.splitlines():
        rec = json.loads(line)
        by_source[rec["source"]] = by_source.get(rec["source"], 0) + 1
    # every path was taken
    assert {"cam_uri", "cam_fields", "api_ok"} <= set(by_source), by_source
    assert "reader crashed: RuntimeError: simulated bug while reading rtsp://***@" in stderr
    assert "reader traceback" in stderr and "Traceback (most recent call last)" in stderr
    assert "401" in stderr and "404" in stderr and "refused POST /streams" in stderr
    assert "rtsp://***@" in records and "live: " in stdout
    health = json.loads(answers[4])
    assert "username/password" in health["streams"]["api_wrong"]["last_error"]
    for name, text in (("stdout", stdout), ("stderr", stderr), ("records", records),
                       *((f"answer {i}", a) for i, a in enumerate(answers))):
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} in {name}: ...{text[max(0, text.find(secret) - 200):][:400]}"
