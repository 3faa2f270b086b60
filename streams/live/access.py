"""Who may use the live HTTP API, and which URIs ``POST /streams`` may open.

* :func:`read_token`: the bearer token of ``live.http`` (from the environment variable named
  by ``token_env`` or the file named by ``token_file``); :class:`~streams.errors.ConfigError`
  naming the key when it is missing, unreadable or too weak. The token is never put in a
  message.
* :func:`is_loopback`: whether a bind address is reachable from this machine only (a token
  is required for any other).
* :class:`UriPolicy`: the allow-list of ``live.http.allow`` (URI schemes, host patterns,
  folders for ``file://``). :meth:`UriPolicy.refusal` judges the URI exactly as FFmpeg will
  open it: the protocol is the leading ``[A-Za-z0-9+.-]`` run before ``:``, the host is what
  follows the last ``@`` of the authority, and a ``file:`` URI opens everything after
  ``file:`` as a local path, symlinks followed, so ``file://etc/passwd`` is ``/etc/passwd``.

Host patterns: ``*`` (any host), an address or network (``10.0.0.0/8``, ``192.168.1.20``,
``fd00::/8``), matched by hosts written as an IP address (legacy IPv4 forms such as
``2130706433`` or ``127.1`` included), or a host-name glob (``cam-*.site.example``, case
insensitive), matched by host names only. Host names are not resolved: a glob trusts the
DNS that resolves the names it lets through.

Usage::

    policy = UriPolicy.from_config(live.http.allow)
    policy.refusal(StreamSpec("x", "file:///etc/passwd"))   # "file:// URIs are not allowed ..."
    policy.refusal(StreamSpec("x", "rtsp://10.0.0.5/main"))  # None: allowed
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import os
import re
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from streams.errors import ConfigError

if TYPE_CHECKING:
    from streams.live.config import AllowConfig, HttpConfig
    from streams.live.types import StreamSpec

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: safe in a header
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")  # what FFmpeg takes as a protocol name
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_HOST_GLOB = re.compile(r"[a-z0-9_.*?\[\]!-]+")
_LEGACY_V4 = re.compile(r"[0-9a-fA-FxX.]+")  # 127.1, 0x7f.0.0.1, 2130706433 (inet_aton forms)
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # whitespace and control characters
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_loopback(host: str) -> bool:
    """``True`` for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): a server bound
    there is reachable from this machine only."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    ip = ip_literal(host)
    return ip is not None and ip.is_loopback


def read_token(http: HttpConfig, key: str = "live.http") -> str | None:
    """The bearer token ``live.http`` names (``None``: no auth). Raises :class:`ConfigError`
    on ``{key}.token_env`` / ``{key}.token_file`` when it cannot be read or is weak."""
    if http.token_env is not None:
        where = f"{key}.token_env"
        token = os.environ.get(http.token_env, "").strip()
        if not token:
            raise ConfigError(where, f"the environment variable {http.token_env} is not set or empty")
    elif http.token_file is not None:
        where = f"{key}.token_file"
        path = Path(http.token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise ConfigError(where, f"cannot read the token file {path}: {reason}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: the token file %s can be read by other users (mode %o); chmod 600 it",
                        where, path, stat.S_IMODE(mode))
    else:
        return None
    if len(token) < MIN_TOKEN_CHARS or not _TOKEN.fullmatch(token):
        raise ConfigError(where, f"the token must be at least {MIN_TOKEN_CHARS} printable ASCII characters "
                                 "without spaces (e.g. the output of: openssl rand -hex 24)")
    return token


def ip_literal(host: str) -> IpAddress | None:
    """The address a host written as an IP literal stands for (``[::1]``, ``127.0.0.1``, and
    the legacy IPv4 forms a resolver accepts: ``127.1``, ``2130706433``); ``None`` for a host
    name. IPv4-mapped IPv6 addresses give their IPv4 address."""
    h = host.strip()
    bracketed = h.startswith("[") and h.endswith("]")
    if bracketed:
        h = h[1:-1]
    ip: IpAddress
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        if bracketed or not _LEGACY_V4.fullmatch(h):
            return None
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(h))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def host_pattern_error(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid ``live.http.allow.hosts`` entry (``None``: valid)."""
    if pattern == "*":
        return None
    try:
        ipaddress.ip_network(pattern, strict=False)
        return None
    except ValueError:
        pass
    if not _HOST_GLOB.fullmatch(pattern.lower()):
        return (f"expected '*', an address or network (10.0.0.0/8) or a host-name glob (cam-*.example), "
                f"got {pattern!r}")
    return None


@dataclass(frozen=True)
class _Authority:
    userinfo: str
    host: str
    port: str


def _authority(rest: str) -> _Authority:
    """FFmpeg's split (``av_url_split``) of what follows ``scheme://``."""
    end = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if i >= 0:
            end = min(end, i)
    auth = rest[:end]
    userinfo, _, hostport = auth.rpartition("@")
    if hostport.startswith("[") and "]" in hostport:
        close = hostport.index("]")
        return _Authority(userinfo, hostport[: close + 1], hostport[close + 1:].lstrip(":"))
    host, _, port = hostport.partition(":")
    return _Authority(userinfo, host, port)


class UriPolicy:
    """The URIs ``POST /streams`` may open (``live.http.allow``); see the module docstring.

    Args:
        schemes: allowed URI schemes besides ``file`` (lowercase).
        hosts: host patterns (``*``, addresses/networks, host-name globs).
        file_dirs: absolute folders whose files ``file://`` URIs may open (none: no ``file://``).
    """

    def __init__(self, schemes: Sequence[str] = ("rtsp", "rtsps"), hosts: Sequence[str] = ("*",),
                 file_dirs: Sequence[str] = ()) -> None:
        self.schemes = frozenset(s.lower() for s in schemes if s.lower() != "file")
        self.any_host = "*" in hosts
        self.networks: list[IpNetwork] = []
        self.globs: list[str] = []
        for p in hosts:
            if p == "*":
                continue
            try:
                self.networks.append(ipaddress.ip_network(p, strict=False))
            except ValueError:
                self.globs.append(p.lower().rstrip("."))
        self.file_dirs = tuple(Path(os.path.realpath(d)) for d in file_dirs)

    @classmethod
    def from_config(cls, allow: AllowConfig) -> UriPolicy:
        return cls(allow.schemes, allow.hosts, allow.file_dirs)

    def describe(self) -> str:
        """The policy in one line (for the start-up log)."""
        hosts = "any host" if self.any_host else ", ".join([str(n) for n in self.networks] + self.globs) or "none"
        files = ", ".join(str(d) for d in self.file_dirs) or "none"
        return f"schemes {', '.join(sorted(self.schemes)) or 'none'}; hosts {hosts}; file:// folders {files}"

    def refusal(self, spec: StreamSpec) -> str | None:
        """Why the stream may not be opened (``None``: allowed). The reason names the scheme,
        host or path at fault, never a credential."""
        if _UNSAFE.search(spec.uri):
            return "the URI contains whitespace or control characters"
        try:
            uri = spec.credentials().open_uri  # exactly what FFmpeg is handed
        except ValueError as e:
            return f"not a valid URI ({e})"
        m = _SCHEME.match(uri)
        if m is None or uri[m.end():m.end() + 1] != ":":
            return "the URI has no scheme FFmpeg would recognise (expected e.g. rtsp://host/path)"
        scheme = m.group().lower()
        if scheme == "file":
            if spec.username is not None or spec.password is not None:
                return "file:// URIs take no username or password"
            return self._file_refusal(uri[m.end() + 1:])
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes)) or "none"
            return f"scheme {scheme!r} is not allowed (allowed: {allowed}; live.http.allow.schemes)"
        if not uri[m.end():].startswith("://"):
            return f"expected {scheme}://host/..., got no host"
        return self._host_refusal(_authority(uri[m.end() + 3:]).host)

    def _host_refusal(self, host: str) -> str | None:
        if not host:
            return "the URI has no host"
        ip = ip_literal(host)
        if ip is None and not _HOSTNAME.fullmatch(host):
            return f"host {host!r} is not a plain host name or IP address"
        if self.any_host:
            return None
        if ip is not None:
            if any(ip.version == n.version and ip in n for n in self.networks):
                return None
        else:
            name = host.lower().rstrip(".")
            if any(fnmatch.fnmatchcase(name, g) for g in self.globs):
                return None
        return f"host {host!r} is not allowed (live.http.allow.hosts)"

    def _file_refusal(self, path: str) -> str | None:
        if not self.file_dirs:
            return "file:// URIs are not allowed (list the folders they may read in live.http.allow.file_dirs)"
        if not path.startswith("/"):
            return "a file:// URI needs an absolute path (file:///folder/clip.mp4)"
        # as the kernel reads it ("//etc" is "/etc"), symlinks followed: a link out of a folder is refused
        real = Path(os.path.realpath("/" + path.lstrip("/")))
        if any(real == d or d in real.parents for d in self.file_dirs):
            return None
        return f"{real} is outside the folders file:// URIs may read (live.http.allow.file_dirs)"
