"""The live HTTP API's access control, on a bare StreamControl (no cameras): bearer-token
auth, the loopback rule, body limits, schema validation naming the key, the URI allow-list
of POST /streams, and no credential in any answer or log line, a crash included."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.errors import ConfigError, SourceError
from streams.live.access import UriPolicy, ip_literal, is_loopback
from streams.live.config import parse_live_config
from streams.live.http import LiveHttpServer
from streams.live.types import StreamSpec, StreamState, StreamStats

TOKEN = "t0ken-for-tests-0123456789abcdef"
PASSWORD = "Pa55:w/rd@cam!"  # percent-encoded in the URIs below


class Control:
    """A StreamControl that records what it was asked; ``crash`` makes add_stream raise
    an exception quoting the URI it was given (password included)."""

    def __init__(self, crash: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.added: list[StreamSpec] = []
        self.crash = crash

    def add_stream(self, spec: StreamSpec) -> StreamStats:
        if self.crash:
            raise RuntimeError(f"bug while opening {spec.uri} with {spec.password}")
        if spec.id == "taken":
            raise SourceError(spec.id, "a stream with this id already exists")
        self.added.append(spec)
        return StreamStats(spec.id, spec.credentials().display_uri, spec.transport, "frames",
                           StreamState.CONNECTING, 0.0)

    def remove_stream(self, stream_id: str) -> bool:
        return stream_id == "a"

    def stats(self, stream_id: str) -> StreamStats | None:
        return None

    def streams(self) -> list[StreamStats]:
        return []

    def health(self) -> tuple[int, dict[str, Any]]:
        return 503, {"status": "down"}


def request(server: LiveHttpServer, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """One request; JSON bodies are sent with ``Content-Type: application/json``."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    hdrs = dict(headers or {})
    data = body
    if body is not None and not isinstance(body, bytes):
        data = json.dumps(body).encode()
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read().decode()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, dict(resp.getheaders()), json.loads(raw) if "json" in ctype else raw
    finally:
        conn.close()


@pytest.fixture
def open_server() -> Any:
    control = Control()
    server = LiveHttpServer(control, port=0).start()
    yield server, control
    server.stop()


@pytest.fixture
def token_server() -> Any:
    control = Control()
    server = LiveHttpServer(control, port=0, token=TOKEN).start()
    yield server, control
    server.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ------------------------------------------------------------------------ bearer token
@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/metrics", None), ("GET", "/health", None), ("GET", "/streams", None),
    ("GET", "/streams/a", None), ("DELETE", "/streams/a", None),
    ("POST", "/streams", {"id": "n", "uri": "rtsp://h/n"}),
])
def test_every_endpoint_needs_the_token(token_server: Any, method: str, path: str, body: Any) -> None:
    server, control = token_server
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN[:-1]}"}):
        code, hdrs, answer = request(server, method, path, body, headers)
        assert code == 401, (headers, code, answer)
        assert hdrs.get("WWW-Authenticate", "").startswith("Bearer")
        assert "token" in answer["error"]
    assert control.added == []
    code, _, _ = request(server, method, path, body, AUTH)
    assert code in (200, 201, 404, 503)  # /streams/a: 404 from the control; /health: 503 (no stream)
    assert code != 401


def test_token_is_never_logged(token_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server, _ = token_server
    assert request(server, "GET", "/streams", headers=AUTH)[0] == 200
    assert request(server, "GET", "/streams", headers={"Authorization": "Bearer guess-0123456789abcdef"})[0] == 401
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused GET /streams" in text and "(401)" in text
    assert TOKEN not in text and "guess-0123456789abcdef" not in text


def test_without_a_token_the_host_header_must_be_loopback(open_server: Any) -> None:
    server, control = open_server
    body = {"id": "n", "uri": "rtsp://h/n"}
    for host in ("evil.example", "evil.example:9108", "10.0.0.8:80", "127.0.0.1.evil.example"):
        code, _, answer = request(server, "POST", "/streams", body, {"Host": host})
        assert code == 403 and "Host" in answer["error"], (host, answer)
    assert control.added == []
    for host in (f"127.0.0.1:{server.port}", "localhost", "[::1]:80", "127.0.0.2"):
        assert request(server, "GET", "/streams", headers={"Host": host})[0] == 200, host


def test_a_non_loopback_host_needs_a_token() -> None:
    with pytest.raises(ConfigError) as e:
        parse_live_config({"http": {"host": "0.0.0.0"}})
    assert e.value.key == "live.http.host" and "token" in e.value.reason
    with pytest.raises(ConfigError) as e:
        LiveHttpServer(Control(), host="0.0.0.0", port=0).start()
    assert e.value.key == "live.http.host"
    assert parse_live_config({"http": {"host": "0.0.0.0", "enabled": False}}).http.host == "0.0.0.0"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.2")


def test_token_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("FOVEA_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigError) as e:
        parse_live_config({"http": {"token_env": "FOVEA_TEST_TOKEN"}})
    assert e.value.key == "live.http.token_env" and "FOVEA_TEST_TOKEN" in e.value.reason
    monkeypatch.setenv("FOVEA_TEST_TOKEN", "short")
    with pytest.raises(ConfigError) as e:
        parse_live_config({"http": {"token_env": "FOVEA_TEST_TOKEN"}})
    assert e.value.key == "live.http.token_env" and "short" not in str(e.value)
    monkeypatch.setenv("FOVEA_TEST_TOKEN", TOKEN)
    cfg = parse_live_config({"http": {"host": "0.0.0.0", "token_env": "FOVEA_TEST_TOKEN", "port": 0}})
    assert cfg.http.token_env == "FOVEA_TEST_TOKEN" and TOKEN not in repr(cfg)

    token_file = tmp_path / "token"
    with pytest.raises(ConfigError) as e:
        parse_live_config({"http": {"token_file": str(token_file)}})
    assert e.value.key == "live.http.token_file" and "cannot read" in e.value.reason
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    caplog.set_level(logging.WARNING)
    cfg = parse_live_config({"http": {"token_file": str(token_file), "port": 0}})
    assert any("chmod 600" in r.getMessage() for r in caplog.records)
    server = LiveHttpServer.from_config(Control(), cfg.http).start()
    try:
        assert server.authenticated
        assert request(server, "GET", "/streams")[0] == 401
        assert request(server, "GET", "/streams", headers=AUTH)[0] == 200
    finally:
        server.stop()
    for raw, key in (({"token_file": "token.txt"}, "live.http.token_file"),
                     ({"token_file": str(token_file), "token_env": "X"}, "live.http.token_file")):
        with pytest.raises(ConfigError) as e:
            parse_live_config({"http": raw})
        assert e.value.key == key


# ----------------------------------------------------------------------- body limits
def _raw_exchange(port: int, head: str, body: bytes = b"") -> tuple[str, float]:
    """Send raw request bytes; the status line and the seconds the answer took."""
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode(), time.monotonic() - t


def test_body_limits(open_server: Any) -> None:
    server, control = open_server
    host = f"127.0.0.1:{server.port}"
    # a 1 MB body announced but never sent: refused at once, without reading it
    status, _ = _raw_exchange(server.port, f"POST /streams HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                                            "application/json\r\nContent-Length: 1000000\r\n\r\n")
    assert status.split()[1] == "413", status
    code, _, answer = request(server, "POST", "/streams", b"{" + b" " * 70_000 + b"}")
    assert code == 413 and "max_body_bytes" in answer["error"]
    status, _ = _raw_exchange(server.port, f"POST /streams HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                                            "application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                              b"2\r\n{}\r\n0\r\n\r\n")
    assert status.split()[1] == "411", status
    status, _ = _raw_exchange(server.port, f"POST /streams HTTP/1.1\r\nHost: {host}\r\n"
                                            "Content-Type: application/json\r\n\r\n")
    assert status.split()[1] == "411", status
    code, _, answer = request(server, "POST", "/streams", {"id": "n", "uri": "rtsp://h/n"},
                              {"Content-Type": "text/plain"})
    assert code == 415 and "application/json" in answer["error"]
    assert control.added == []
    small = LiveHttpServer(Control(), port=0, max_body=2048).start()
    try:
        assert request(small, "POST", "/streams", {"id": "n", "uri": "rtsp://h/" + "x" * 3000})[0] == 413
        assert request(small, "POST", "/streams", {"id": "n", "uri": "rtsp://h/x"})[0] == 201
    finally:
        small.stop()


def test_a_slow_client_is_cut_off(open_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.live import http as live_http

    monkeypatch.setattr(live_http._Handler, "timeout", 0.5)
    server, control = open_server
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"id\"")
        answer = b""
        while chunk := s.recv(4096):  # until the server closes the connection
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"Connection: close" in answer, answer
    assert control.added == []


# ------------------------------------------------------------------ schema validation
@pytest.mark.parametrize(("body", "key", "words"), [
    ({"id": "x"}, "uri", "required"),
    ({"uri": "rtsp://h/x"}, "id", "required"),
    ({"id": "x", "uri": "rtsp://h/x", "port": 1}, "port", "unknown key"),
    ({"id": "x", "uri": 5}, "uri", "string"),
    ({"id": "x", "uri": "rtsp://h/x", "transport": "sctp"}, "transport", "tcp"),
    ({"id": "bad id/", "uri": "rtsp://h/x"}, "id", "characters"),
    ({"id": "x", "uri": "no scheme"}, "uri", "rtsp://"),
    ({"id": "x", "uri": "rtsp://h/" + "x" * 5000}, "uri", "4096"),
    ({"id": "x", "uri": "rtsp://u:pw@[::1/x"}, "uri", "IPv6"),
    ([1, 2], None, "object"),
    ("rtsp://h/x", None, "object"),
])
def test_schema_errors_name_the_key(open_server: Any, body: Any, key: str | None, words: str) -> None:
    server, control = open_server
    code, _, answer = request(server, "POST", "/streams", body)
    assert code == 400, answer
    assert answer["key"] == key and words in answer["error"], answer
    assert control.added == []


@pytest.mark.parametrize("raw", [
    b"{not json", b'{"id": "a", "uri": "rtsp://h/x", "id": "b"}', b'{"id": "a", "uri": NaN}',
    b"[" * 30_000 + b"]" * 30_000, b"[" * 50_000 + b"]" * 50_000, b"\xff\xfe{}", b'"\\ud800"',
])
def test_malformed_json_is_a_400_never_a_crash(open_server: Any, raw: bytes, capfd: pytest.CaptureFixture[str]) -> None:
    server, control = open_server
    small = len(raw) <= 64 * 1024
    code, _, answer = request(server, "POST", "/streams", raw)
    assert code == (400 if small else 413), answer
    if b'"id": "b"' in raw:
        assert answer["key"] == "id" and "twice" in answer["error"]
    assert request(server, "GET", "/streams")[0] == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err
    assert control.added == []


def test_credentials_are_never_echoed_in_400s(open_server: Any) -> None:
    server, _ = open_server
    uri = f"rtsp://alice:{PASSWORD.replace(':', '%3A').replace('/', '%2F').replace('@', '%40')}@h/x"
    for body in ({"id": "x", "uri": "rtsp://h/x", "password": 12345},
                 {"id": "x", "uri": "rtsp://h/x", "password": [PASSWORD]},
                 {"id": "x", "uri": "rtsp://h/x", "username": {"u": PASSWORD}},
                 {"id": "x", "uri": [uri]},
                 {"id": "x", "uri": uri, uri: 1},
                 {"id": "bad id/", "uri": uri, "password": PASSWORD}):
        code, _, answer = request(server, "POST", "/streams", body)
        text = json.dumps(answer)
        assert code == 400, answer
        for secret in (PASSWORD, "Pa55", "12345", "%40cam"):
            assert secret not in text, (body, answer)


# --------------------------------------------------------------------- the allow-list
@pytest.mark.parametrize(("uri", "words"), [
    ("file:///etc/passwd", "file:// URIs are not allowed"),
    ("http://169.254.169.254/latest/meta-data", "scheme 'http' is not allowed"),
    ("https://internal/x", "scheme 'https'"),
    ("udp://239.0.0.1:1234", "scheme 'udp'"),
    ("concat:rtsp://h/a|file:///etc/passwd", "scheme 'concat'"),
    ("subfile,,start,0,end,0,,:file:///etc/passwd", "no scheme"),
    ("rtsp://h/x\nfile:///etc/passwd", "control characters"),
    ("rtsp://ho%73t/x", "not a plain host name"),
    ("rtsp:///x", "no host"),
])
def test_default_allow_list_refuses(open_server: Any, uri: str, words: str) -> None:
    server, control = open_server
    code, _, answer = request(server, "POST", "/streams", {"id": "x", "uri": uri})
    assert code in (400, 403), answer
    if code == 403:
        assert answer["key"] == "uri" and words in answer["error"], answer
    else:  # StreamSpec itself refuses URIs without "://"
        assert answer["key"] == "uri", answer
    assert control.added == []


def test_allowed_uris_reach_the_manager(open_server: Any) -> None:
    server, control = open_server
    for i, uri in enumerate(("rtsp://10.0.0.5:554/main", "RTSP://cam.local/x", "rtsps://u:p@cam/x")):
        code, _, answer = request(server, "POST", "/streams", {"id": f"c{i}", "uri": uri})
        assert code == 201, answer
    assert [s.id for s in control.added] == ["c0", "c1", "c2"]
    code, _, answer = request(server, "POST", "/streams", {"id": "taken", "uri": "rtsp://h/x"})
    assert code == 409


def test_host_patterns_match_names_and_networks() -> None:
    p = UriPolicy(hosts=["10.0.0.0/8", "192.168.1.20", "cam-*.site.example", "fd00::/8"])

    def ok(uri: str) -> bool:
        return p.refusal(StreamSpec("x", uri)) is None

    assert ok("rtsp://10.1.2.3/x") and ok("rtsp://u:p@10.1.2.3:8554/x") and ok("rtsp://192.168.1.20/x")
    assert ok("rtsp://cam-3.site.example/x") and ok("rtsp://CAM-3.Site.Example./x") and ok("rtsp://[fd00::5]/x")
    assert ok("rtsp://[::ffff:10.0.0.1]/x")  # IPv4-mapped
    for bad in ("rtsp://127.0.0.1/x", "rtsp://192.168.1.21/x", "rtsp://cam.site.example/x",
                "rtsp://cam-3.site.example.evil/x", "rtsp://[::1]/x",
                "rtsp://2130706433/x", "rtsp://127.1/x", "rtsp://0x7f.0.0.1/x", "rtsp://0/x",
                "rtsp://10.0.0.1@127.0.0.1/x",  # the host is after the last @
                "rtsp://10.0.0.1\\@127.0.0.1/x"):
        assert not ok(bad), bad
    assert str(ip_literal("2130706433")) == "127.0.0.1" and ip_literal("cam.local") is None
    assert "not allowed" in (p.refusal(StreamSpec("x", "rtsp://127.1/x")) or "")
    assert UriPolicy(hosts=["127.0.0.0/8"]).refusal(StreamSpec("x", "rtsp://2130706433/x")) is None


def test_file_uris_only_inside_listed_folders(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    (clips / "a.mp4").write_bytes(b"")
    (tmp_path / "secret.mp4").write_bytes(b"")
    (clips / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    p = UriPolicy(file_dirs=[str(clips)])

    def reason(uri: str, **kw: Any) -> str | None:
        return p.refusal(StreamSpec("x", uri, **kw))

    assert reason(f"file://{clips}/a.mp4") is None
    assert reason(f"file://{clips}/sub/b.mp4") is None
    assert reason(f"file://{tmp_path}/secret.mp4") is not None
    assert "outside" in (reason(f"file://{clips}/../secret.mp4") or "")
    assert "outside" in (reason(f"file://{clips}/link.mp4") or "")  # a symlink out of the folder
    assert "outside" in (reason("file://etc/passwd") or "")  # FFmpeg opens //etc/passwd
    assert "absolute" in (reason("file://clips/a.mp4") or "") or "outside" in (reason("file://clips/a.mp4") or "")
    assert reason(f"file://{clips}/a.mp4", username="u") is not None
    assert reason("rtsp://h/x") is None  # the schemes are unchanged
    assert "file:// URIs are not allowed" in (UriPolicy().refusal(StreamSpec("x", f"file://{clips}/a.mp4")) or "")


def test_allow_config_is_validated(tmp_path: Path) -> None:
    cfg = parse_live_config({"http": {"allow": {"schemes": ["rtsp", "srt"], "hosts": ["10.0.0.0/8"],
                                                "file_dirs": [str(tmp_path)]}}})
    p = UriPolicy.from_config(cfg.http.allow)
    assert p.refusal(StreamSpec("x", "srt://10.0.0.2:9000")) is None
    assert p.refusal(StreamSpec("x", f"file://{tmp_path}/a.mp4")) is None
    assert p.refusal(StreamSpec("x", "rtsp://8.8.8.8/x")) is not None
    for raw, key in (({"schemes": ["file"]}, "live.http.allow.schemes[0]"),
                     ({"schemes": ["rt sp"]}, "live.http.allow.schemes[0]"),
                     ({"hosts": ["*", "cam/x"]}, "live.http.allow.hosts[1]"),
                     ({"file_dirs": ["clips"]}, "live.http.allow.file_dirs[0]"),
                     ({"bogus": 1}, "live.http.allow.bogus")):
        with pytest.raises(ConfigError) as e:
            parse_live_config({"http": {"allow": raw}})
        assert e.value.key == key
    with pytest.raises(ConfigError) as e:
        parse_live_config({"http": {"max_body_bytes": 10}})
    assert e.value.key == "live.http.max_body_bytes"


def test_refusals_over_http_with_a_configured_policy(tmp_path: Path) -> None:
    control = Control()
    cfg = parse_live_config({"http": {"port": 0, "allow": {"hosts": ["cam-*.example"],
                                                           "file_dirs": [str(tmp_path)]}}})
    server = LiveHttpServer.from_config(control, cfg.http).start()
    try:
        code, _, answer = request(server, "POST", "/streams", {"id": "a", "uri": "rtsp://127.0.0.1/x"})
        assert code == 403 and "host '127.0.0.1' is not allowed" in answer["error"]
        code, _, answer = request(server, "POST", "/streams", {"id": "b", "uri": "file:///etc/passwd"})
        assert code == 403 and "outside" in answer["error"]
        assert request(server, "POST", "/streams", {"id": "c", "uri": "rtsp://cam-1.example/x"})[0] == 201
        assert request(server, "POST", "/streams", {"id": "d", "uri": f"file://{tmp_path}/a.mp4"})[0] == 201
    finally:
        server.stop()
    assert [s.id for s in control.added] == ["c", "d"]


# ----------------------------------------------------------------- crash, redacted
def test_a_crash_is_a_500_with_the_traceback_redacted(caplog: pytest.LogCaptureFixture,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    server = LiveHttpServer(Control(crash=True), port=0).start()
    quoted = PASSWORD.replace(":", "%3A").replace("/", "%2F").replace("@", "%40")
    try:
        code, _, answer = request(server, "POST", "/streams",
                                  {"id": "x", "uri": f"rtsp://alice:{quoted}@cam/x", "password": "Other-Secret-77"})
        code2, _, _ = request(server, "POST", f"/streams?password={quoted}", {"id": "y", "uri": "rtsp://h/x"})
    finally:
        server.stop()
    assert code == 500 and code2 == 500
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" in logged and "RuntimeError" in logged  # the bug is still diagnosable
    out = capfd.readouterr()
    for text in (json.dumps(answer), logged, out.out, out.err):
        for secret in (PASSWORD, quoted, "Other-Secret-77", "Pa55"):
            assert secret not in text


def test_ipv6_loopback_server() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = LiveHttpServer(Control(), host="::1", port=0).start()
    except ConfigError as e:
        pytest.skip(f"cannot bind ::1 here: {e}")
    try:
        assert server.url.startswith("http://[::1]:")
        conn = http.client.HTTPConnection("::1", server.port, timeout=5)
        conn.request("GET", "/streams")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.stop()
