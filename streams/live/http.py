"""A small HTTP server for live jobs: metrics, health, and adding/removing streams.

Stdlib ``http.server`` in daemon threads, bound to 127.0.0.1 by default.

Endpoints::

    GET    /metrics          Prometheus text format (the manager's registry)
    GET    /health           JSON; 200 when at least one stream is live, 503 when none is
    GET    /streams          JSON {"streams": [StreamStats...]}
    GET    /streams/<id>     JSON StreamStats, 404 if unknown
    POST   /streams          JSON {"uri": ..., "id": ..., "transport"?, "username"?,
                             "password"?} -> 201 + stats; 400 bad body (with "key"); 403 a
                             URI outside live.http.allow; 409 id in use
    DELETE /streams/<id>     200 {"removed": id}; 404 if unknown

Access control (``live.http``, :mod:`streams.live.access`), checked in this order:

* with a token (``token_env`` / ``token_file``; required when ``host`` is not loopback, the
  server refuses to start otherwise), every request needs ``Authorization: Bearer <token>``
  (401 otherwise); without one, requests must name a loopback host in their ``Host``
  header (403 otherwise: a web page cannot reach the API by DNS rebinding);
* a ``POST`` body needs a ``Content-Length`` (411) of at most ``max_body_bytes`` (413: not
  read), ``Content-Type: application/json`` (415: so a browser cannot send one without a
  CORS preflight, which this server never grants), and must be a JSON object matching
  :class:`~streams.live.types.StreamSpec` (400 with ``"key"``: the offending key);
* the URI must pass the allow-list (403 with the reason): RTSP by default, no ``file://``.

A credential never appears in an answer or a log line: error texts go through
:func:`~streams.live.redact.redact_text` with the body's secrets, and an unexpected error
is answered 500 and logged with its traceback redacted the same way. Slow clients are cut
off after :attr:`_Handler.timeout` seconds.

The server knows the manager only through :class:`StreamControl`, the operations the API
needs; :class:`~streams.live.manager.StreamManager` is one (this module never imports it).

Usage::

    server = LiveHttpServer.from_config(manager, live.http).start()   # or:
    server = LiveHttpServer(manager, host="127.0.0.1", port=0, token=None).start()
    server.url            # "http://127.0.0.1:40123"
    server.stop()
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streams.errors import ConfigError, SourceError
from streams.live.access import UriPolicy, is_loopback, read_token
from streams.live.config import HttpConfig
from streams.live.redact import redact_text
from streams.live.types import StreamSpec, StreamStats
from streams.schema import from_dict

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024
_SECRET_KEYS = ("password", "username")  # a bad value of these is never echoed
_NO_KEY = object()


class StreamControl(Protocol):
    """What the HTTP API needs of the live streams' owner (a
    :class:`~streams.live.manager.StreamManager`)."""

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry ``GET /metrics`` serves."""
        ...

    def add_stream(self, spec: StreamSpec) -> StreamStats:
        """Start a stream; :class:`ConfigError` for a bad spec, :class:`SourceError` when
        the id is taken."""
        ...

    def remove_stream(self, stream_id: str) -> bool:
        """Stop and forget a stream; ``False`` if unknown."""
        ...

    def stats(self, stream_id: str) -> StreamStats | None: ...

    def streams(self) -> list[StreamStats]: ...

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(http_status, payload)`` of ``GET /health``."""
        ...


class _Refused(Exception):
    """A request answered with an error status (raised inside a handler)."""

    def __init__(self, code: int, message: str, key: Any = _NO_KEY) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.key = key


class _WarnEvery:
    """Logs a refusal as a warning at most once per ``interval_s`` per kind (others at
    debug level), so a client hammering the API cannot flood the log."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def __call__(self, code: int, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            loud = now - self._last.get(code, -self.interval_s) >= self.interval_s
            if loud:
                self._last[code] = now
        log.log(logging.WARNING if loud else logging.DEBUG, fmt, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    manager: StreamControl
    token: bytes | None
    policy: UriPolicy
    max_body: int
    warn: _WarnEvery

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An error outside the handlers' own handling: logged redacted (the default prints
        the traceback, unredacted, to stderr)."""
        log.error("live HTTP: error serving %s:\n%s", client_address[0], redact_text(traceback.format_exc()))


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "fovea-live"
    protocol_version = "HTTP/1.1"
    timeout = 10.0  # seconds a client may take to send its request (a slow one is cut off)

    _body_read = False

    @property
    def srv(self) -> _Server:
        return cast(_Server, self.server)

    @property
    def manager(self) -> StreamControl:
        return self.srv.manager

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s - %s", self.address_string(), redact_text(format % args))

    # ------------------------------------------------------------------- answers
    def _send(self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        declared = self.headers.get("Content-Length") not in (None, "0") or "Transfer-Encoding" in self.headers
        if declared and not self._body_read:  # an unread body would be taken for the next request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode()
        self._send(code, body, "application/json", headers)

    def _error(self, code: int, message: str, key: Any = _NO_KEY) -> None:
        payload: dict[str, Any] = {"error": message}
        if key is not _NO_KEY:
            payload["key"] = key
        headers = {"WWW-Authenticate": 'Bearer realm="fovea-live"'} if code == 401 else None
        self._json(code, payload, headers)

    def _path(self) -> list[str]:
        path = urlsplit(self.path).path
        return [unquote(p) for p in path.strip("/").split("/") if p]

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, handler: Any) -> None:
        """Access checks, then ``handler()``; every refusal and error is answered here."""
        secrets: list[str] = []
        self._body_read = False  # one handler serves every request of a keep-alive connection
        try:
            self._check_access()
            handler(secrets)
        except _Refused as e:
            if e.code in (401, 403, 408, 411, 413, 415):
                self.srv.warn(e.code, "live HTTP: refused %s %s from %s (%d): %s", self.command,
                              redact_text(urlsplit(self.path).path), self.client_address[0], e.code, e.message)
            self._error(e.code, e.message, e.key)
        except Exception:
            log.error("live HTTP: %s %s failed:\n%s", self.command, redact_text(urlsplit(self.path).path),
                      redact_text(traceback.format_exc(), secrets))
            self._error(500, "internal error (logged by the server)")

    def _check_access(self) -> None:
        token = self.srv.token
        if token is not None:
            scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
                raise _Refused(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
            return
        host = self.headers.get("Host")
        if host is not None and not is_loopback(_host_of(host)):
            raise _Refused(403, "the Host header must name a loopback host (this server has no token)")

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_HEAD(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def do_DELETE(self) -> None:
        self._dispatch(self._delete)

    # ------------------------------------------------------------------ handlers
    def _get(self, secrets: list[str]) -> None:
        parts = self._path()
        m = self.manager
        if parts == ["metrics"]:
            self._send(200, generate_latest(m.registry), CONTENT_TYPE_LATEST)
        elif parts == ["health"]:
            code, payload = m.health()
            self._json(code, payload)
        elif parts == ["streams"]:
            self._json(200, {"streams": [s.to_dict() for s in m.streams()]})
        elif len(parts) == 2 and parts[0] == "streams":
            stats = m.stats(parts[1])
            if stats is None:
                raise _Refused(404, f"no stream {parts[1]!r}")
            self._json(200, stats.to_dict())
        else:
            raise _Refused(404, "not found; try /metrics, /health, /streams")

    def _post(self, secrets: list[str]) -> None:
        if self._path() != ["streams"]:
            raise _Refused(404 if self._path()[:1] != ["streams"] else 405, "POST /streams only")
        raw = self._read_json()
        if isinstance(raw, dict):
            secrets.extend(str(raw.get(k)) for k in _SECRET_KEYS if raw.get(k) is not None)
            uri = raw.get("uri")
            if isinstance(uri, str):
                secrets.extend(_userinfo_secrets(uri))
        spec = self._spec(raw, secrets)
        reason = self.srv.policy.refusal(spec)
        if reason is not None:
            raise _Refused(403, f"uri: {reason}", "uri")
        try:
            stats = self.manager.add_stream(spec)
        except SourceError as e:
            raise _Refused(409, redact_text(str(e), secrets)) from None
        except ConfigError as e:
            raise _Refused(400, redact_text(str(e), secrets), _answer_key(e.key)) from None
        self._json(201, stats.to_dict())

    def _delete(self, secrets: list[str]) -> None:
        parts = self._path()
        if len(parts) != 2 or parts[0] != "streams":
            raise _Refused(404, "DELETE /streams/<id> only")
        if not self.manager.remove_stream(parts[1]):
            raise _Refused(404, f"no stream {parts[1]!r}")
        self._json(200, {"removed": parts[1]})

    # --------------------------------------------------------------------- body
    def _read_json(self) -> Any:
        """The request's JSON body, within the size limit (see the module docstring)."""
        limit = self.srv.max_body
        if "Transfer-Encoding" in self.headers:
            raise _Refused(411, "send the body with a Content-Length, not chunked")
        text = self.headers.get("Content-Length")
        if text is None:
            raise _Refused(411, "a Content-Length header is required")
        try:
            length = int(text)
        except ValueError:
            raise _Refused(400, f"bad Content-Length {text[:20]!r}") from None
        if length > limit:
            raise _Refused(413, f"the body is {length} bytes; at most {limit} are accepted "
                                f"(live.http.max_body_bytes)")
        if length <= 0:
            raise _Refused(400, "expected a JSON object body")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _Refused(415, f"expected Content-Type: application/json, got {ctype[:40] or 'none'!r}")
        try:
            data = self.rfile.read(length)
        except OSError:  # TimeoutError included: a client sending slower than Handler.timeout
            raise _Refused(408, f"the body did not arrive within {self.timeout:g} s") from None  # and close
        self._body_read = True
        if len(data) != length:
            raise _Refused(400, f"the body ended after {len(data)} of {length} bytes")
        try:
            return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        except _DuplicateKey as e:
            raise _Refused(400, f"{e.key}: given twice", e.key) from None
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise _Refused(400, "the body is not valid JSON") from None

    def _spec(self, raw: Any, secrets: list[str]) -> StreamSpec:
        """``raw`` validated as a :class:`StreamSpec` (400 naming the key otherwise)."""
        if not isinstance(raw, dict):
            raise _Refused(400, f"expected a JSON object, got {type(raw).__name__}", None)
        try:
            return from_dict(StreamSpec, raw, "body")
        except ConfigError as e:
            key = _answer_key(e.key)
            key = None if key is None else redact_text(key, secrets)  # an unknown key may be anything
            # a credential is never echoed back, not even a malformed one
            reason = "invalid value" if key in _SECRET_KEYS else redact_text(e.reason, secrets)
            raise _Refused(400, f"{key}: {reason}" if key else reason, key) from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _answer_key(key: str) -> str | None:
    """A ``ConfigError`` key of the body as the answer names it (``body.uri`` -> ``uri``)."""
    if key == "body" or not key:
        return None
    return key.removeprefix("body.")


def _host_of(header: str) -> str:
    """The host of a ``Host`` header (``[::1]:9108`` -> ``[::1]``, ``localhost:80`` -> ``localhost``)."""
    header = header.strip()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _userinfo_secrets(uri: str) -> list[str]:
    """The password in a URI's userinfo, raw and decoded (to scrub from error texts)."""
    head = uri.split("://", 1)[-1]
    for sep in "/?#":
        head = head.split(sep, 1)[0]
    info = head.rpartition("@")[0]
    password = info.partition(":")[2]
    return [p for p in {password, unquote(password)} if p]


class LiveHttpServer:
    """Serves a :class:`StreamControl` (the stream manager) over HTTP (see module doc).

    Args:
        manager: what the API controls.
        host, port: where to listen (port 0: any free port).
        token: the bearer token every request must carry (``None``: none; then ``host``
            must be a loopback address).
        policy: the URIs ``POST /streams`` may open (default: RTSP to any host, no files).
        max_body: the largest request body accepted, in bytes.
    """

    def __init__(self, manager: StreamControl, host: str = "127.0.0.1", port: int = 9108, *,
                 token: str | None = None, policy: UriPolicy | None = None, max_body: int = MAX_BODY) -> None:
        self.manager = manager
        self.host = host
        self.requested_port = port
        self._token = token.encode() if token is not None else None
        self.policy = policy or UriPolicy()
        self.max_body = max_body
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, manager: StreamControl, http: HttpConfig, key: str = "live.http") -> LiveHttpServer:
        """A server as ``live.http`` describes it (the token read now: :class:`ConfigError` if it cannot be)."""
        return cls(manager, http.host, http.port, token=read_token(http, key),
                   policy=UriPolicy.from_config(http.allow), max_body=http.max_body_bytes)

    @property
    def authenticated(self) -> bool:
        """Whether requests need the bearer token."""
        return self._token is not None

    def start(self) -> LiveHttpServer:
        """Bind and serve in a daemon thread. Raises :class:`ConfigError` if the port is
        taken, or if ``host`` is not a loopback address and there is no token."""
        if self._token is None and not is_loopback(self.host):
            raise ConfigError("live.http.host", f"{self.host} is not a loopback address: refusing to serve the API "
                                                "there without a bearer token (live.http.token_env or token_file)")
        try:
            server = (_Server6 if ":" in self.host else _Server)((self.host, self.requested_port), _Handler)
        except OSError as e:
            raise ConfigError(
                "live.http.port", f"cannot listen on {self.host}:{self.requested_port}: {e}"
            ) from e
        server.manager = self.manager
        server.token = self._token
        server.policy = self.policy
        server.max_body = self.max_body
        server.warn = _WarnEvery()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name="live-http", daemon=True,
        )
        self._thread.start()
        log.info("live HTTP server on %s (/metrics /health /streams), %s; POST /streams may open: %s",
                 self.url, "bearer token required" if self._token else "no token (loopback only)",
                 self.policy.describe())
        return self

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None
