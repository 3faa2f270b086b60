"""Credentials handling for stream URIs: merge, encode, and redact everywhere.

A camera's password may come from the URI's userinfo (``rtsp://user:pw@host/path``), from
the config (``username``/``password``), or from a query parameter some cameras use
(``?password=...``). It must never reach a log line, an error message, a metric label or
an HTTP response: every such text goes through :meth:`Credentials.redact`.

Usage::

    creds = Credentials.resolve("rtsp://cam.local/live", username="admin", password="p@ss")
    creds.open_uri      # "rtsp://admin:p%40ss@cam.local/live"   (for FFmpeg only)
    creds.display_uri   # "rtsp://***@cam.local/live"
    creds.redact("Server returned 401: 'rtsp://admin:p%40ss@cam.local/live'")
    # "Server returned 401: 'rtsp://***@cam.local/live'"
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_KEYS = re.compile(r"pass|pwd|token|secret|key|auth|sig", re.IGNORECASE)
# scheme://userinfo@ -> scheme://***@  (catches URIs we did not build ourselves)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/@\s'\"]+)@")


# key=value pairs whose key looks secret, in free text (a query string in a log line)
_SECRET_PAIR = re.compile(r"(?P<k>[A-Za-z0-9_.-]*(?:pass|pwd|token|secret|key|auth|sig)[A-Za-z0-9_.-]*=)"
                          r"(?P<v>[^&\s'\"#]+)", re.IGNORECASE)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URI's userinfo, secret-looking ``key=value`` values and each of
    ``secrets`` replaced by ``***`` (for text no :class:`Credentials` was made for: an
    HTTP request line, an exception's traceback)."""
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    out = _SECRET_PAIR.sub(lambda m: f"{m['k']}{MASK}", out)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out


def redact_uri(uri: str) -> str:
    """``uri`` with its userinfo and secret-looking query values replaced by ``***``."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_KEYS.search(k) for k, _ in pairs):
            query = urlencode(
                [(k, MASK if _SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class Credentials:
    """A stream URI with its credentials resolved.

    Attributes:
        open_uri: the URI handed to FFmpeg, with percent-encoded userinfo. Secret.
        display_uri: the URI safe to log, show and export.
        secrets: every secret string (raw and encoded) to scrub from free text.
    """

    open_uri: str = field(repr=False)
    display_uri: str
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def resolve(
        cls, uri: str, username: str | None = None, password: str | None = None
    ) -> Credentials:
        """Merge the URI's userinfo with ``username``/``password`` (the config wins)."""
        parts = urlsplit(uri)
        uri_user = unquote(parts.username) if parts.username is not None else None
        uri_pass = unquote(parts.password) if parts.password is not None else None
        user = username if username is not None else uri_user
        pw = password if password is not None else uri_pass
        host = parts.netloc.rsplit("@", 1)[-1]
        if user is not None or pw is not None:
            info = quote(user or "", safe="")
            if pw is not None:
                info += ":" + quote(pw, safe="")
            netloc = f"{info}@{host}"
        else:
            netloc = host
        open_uri = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        secrets: set[str] = set()
        if pw:
            secrets.update({pw, quote(pw, safe=""), quote(pw)})
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if v and _SECRET_KEYS.search(k):
                secrets.update({v, quote(v, safe="")})
        # longest first, so a secret containing another is replaced whole
        ordered = tuple(sorted(secrets, key=len, reverse=True))
        return cls(open_uri=open_uri, display_uri=redact_uri(open_uri), secrets=ordered)

    def redact(self, text: str) -> str:
        """``text`` with URIs' userinfo, secret-looking ``key=value`` values and every known
        secret replaced by ``***`` (:func:`redact_text`)."""
        return redact_text(text, self.secrets)
