"""A small HTTP server for live jobs: metrics, health, and adding/removing streams.

Stdlib ``http.server`` in a daemon thread, bound to 127.0.0.1 by default: ``POST
/streams`` makes the process open any URI, so expose it beyond localhost only behind an
authenticating proxy.

Endpoints::

    GET    /metrics          Prometheus text format (the manager's registry)
    GET    /health           JSON; 200 when at least one stream is live, 503 when none is
    GET    /streams          JSON {"streams": [StreamStats...]}
    GET    /streams/<id>     JSON StreamStats, 404 if unknown
    POST   /streams          JSON {"uri": ..., "id": ..., "transport"?, "username"?,
                             "password"?} -> 201 + stats; 400 bad body; 409 id in use
    DELETE /streams/<id>     200 {"removed": id}; 404 if unknown

The server knows the manager only through :class:`StreamControl`, the operations the API
needs; :class:`~streams.live.manager.StreamManager` is one (this module never imports it).

Usage::

    server = LiveHttpServer(manager, host="127.0.0.1", port=0).start()
    server.url            # "http://127.0.0.1:40123"
    server.stop()
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streams.errors import ConfigError, SourceError
from streams.live.types import StreamSpec, StreamStats
from streams.schema import from_dict

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    manager: StreamControl


class _Handler(BaseHTTPRequestHandler):
    server_version = "fovea-live"
    protocol_version = "HTTP/1.1"

    @property
    def manager(self) -> StreamControl:
        return cast(_Server, self.server).manager

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s - %s", self.address_string(), format % args)

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, payload: Any) -> None:
        body = (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode()
        self._send(code, body, "application/json")

    def _error(self, code: int, message: str) -> None:
        self._json(code, {"error": message})

    def _path(self) -> list[str]:
        path = urlsplit(self.path).path
        return [unquote(p) for p in path.strip("/").split("/") if p]

    def do_GET(self) -> None:
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
                self._error(404, f"no stream {parts[1]!r}")
            else:
                self._json(200, stats.to_dict())
        else:
            self._error(404, "not found; try /metrics, /health, /streams")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        if self._path() != ["streams"]:
            self._error(404 if self._path()[:1] != ["streams"] else 405, "POST /streams only")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._error(400, f"expected a JSON body of 1..{MAX_BODY} bytes")
            return
        try:
            raw = json.loads(self.rfile.read(length))
            spec = from_dict(StreamSpec, raw, "body")
        except (ValueError, UnicodeDecodeError):
            self._error(400, "the body is not valid JSON")
            return
        except ConfigError as e:
            # never echo a credential back, even a malformed one
            reason = "invalid value" if "password" in e.key or "username" in e.key else e.reason
            self._error(400, f"{e.key}: {reason}")
            return
        try:
            stats = self.manager.add_stream(spec)
        except SourceError as e:
            self._error(409, str(e))
            return
        except ConfigError as e:
            self._error(400, str(e))
            return
        self._json(201, stats.to_dict())

    def do_DELETE(self) -> None:
        parts = self._path()
        if len(parts) != 2 or parts[0] != "streams":
            self._error(404, "DELETE /streams/<id> only")
            return
        if self.manager.remove_stream(parts[1]):
            self._json(200, {"removed": parts[1]})
        else:
            self._error(404, f"no stream {parts[1]!r}")


class LiveHttpServer:
    """Serves a :class:`StreamControl` (the stream manager) over HTTP (see module doc)."""

    def __init__(self, manager: StreamControl, host: str = "127.0.0.1", port: int = 9108) -> None:
        self.manager = manager
        self.host = host
        self.requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LiveHttpServer:
        """Bind and serve in a daemon thread. Raises :class:`ConfigError` if the port is taken."""
        try:
            server = _Server((self.host, self.requested_port), _Handler)
        except OSError as e:
            raise ConfigError(
                "live.http.port", f"cannot listen on {self.host}:{self.requested_port}: {e}"
            ) from e
        server.manager = self.manager
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name="live-http", daemon=True,
        )
        self._thread.start()
        log.info("live HTTP server on %s (/metrics /health /streams)", self.url)
        return self

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None
