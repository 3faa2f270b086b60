"""The connection of one live source: open with timeouts, the watchdog, the state machine
and the reconnect loop with a capped, jittered backoff.

:class:`Connection` runs the loop of a source's reader thread::

    connecting --first keyframe--> live --no packet for stall_s--> stalled --+
        |                           |                                        |
        +--open failed--+           +--drop / EOF / error / fault--+         |
                        v                                          v         v
                 reconnecting <--backoff (capped, jittered)--------+<--------+
                        |--first keyframe--> live
                        ^--quarantine.pause_s-- quarantined <--`faults` content faults in window_s
    any --stop()--> stopped;  401/403/404, no video, unsupported codec --> failed

A *content fault* is a session that connected but whose content cannot be used: packets
arrive and no frame comes out for ``watchdog.undecodable_s`` (no keyframe; garbage; a codec
other than the announced one), the resolution changes mid-stream, the GPU decoder rejects
a packet. It ends the session like a dropped connection; ``quarantine.faults`` of them within
``quarantine.window_s`` quarantine the camera: no reconnect for ``quarantine.pause_s``, so a
hostile camera cannot keep its reader reconnecting in a tight loop.

It opens the container, hands it to a session reader (the caller's: demux and decode until
the session ends), closes it, and decides what the end means: stopped, fatal (``failed``:
retrying cannot help) or a reason to reconnect after :meth:`Backoff.next` seconds.

The watchdog is PyAV's read timeout (``av.open(..., timeout=(open_timeout_s, stall_s))``):
its interrupt callback aborts a read that has waited ``stall_s`` seconds for a packet, so a
silent camera (server paused, cable pulled, NAT dropped) cannot block its thread forever;
:func:`session_failure` turns that abort into a ``stalled`` failure. FFmpeg's socket
``timeout`` option (microseconds) bounds the RTSP handshake as well.

:class:`StateMachine` holds the state, its history and the condition that
:meth:`~StateMachine.wait_for` blocks on; every transition is logged.

Usage::

    states = StateMachine("gate", display_uri)
    conn = Connection(spec, config, states, stats, stop_event)
    failed = conn.run(read_session)     # read_session(container) -> Failure | None
    states.set(StreamState.FAILED if failed else StreamState.STOPPED)
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import av.error

from streams.errors import SourceError
from streams.live.config import LiveConfig
from streams.live.stats import SourceStats
from streams.live.types import StreamSpec, StreamState

log = logging.getLogger(__name__)

_DEFAULT_RTSP_OPTIONS = {
    "allowed_media_types": "video",
    # open fast: SPS/PPS come from the SDP; what probing would learn, the first keyframe tells
    "analyzeduration": "0",
    "probesize": "32",
}


class Backoff:
    """Capped exponential delays with jitter: ``min(max_s, initial_s * multiplier**n)``
    times a uniform factor in ``[1 - jitter, 1 + jitter]``; never above ``max_s`` (at the
    cap the jitter goes downwards only, so cameras that failed together stay spread out).

    Usage::

        b = Backoff(0.5, 30.0)
        b.next()   # ~0.5, then ~1, ~2, ... capped at 30
        b.reset()  # after a successful connection
    """

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The next delay in seconds."""
        base = min(self.max_s, self.initial_s * self.multiplier ** min(self.attempt, 64))
        self.attempt += 1
        delay = base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))
        if delay > self.max_s:  # at the cap, jitter downwards: streams stay spread out
            delay = self.max_s * (1.0 - self._rng.uniform(0.0, self.jitter))
        return max(0.0, delay)

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True)
class Failure:
    """Why a session (or an open) ended: a redacted message; ``fatal``: retrying cannot
    help; ``stall``: the watchdog fired; ``fault``: the content could not be used (see the
    module docstring: these count towards quarantine)."""

    message: str
    fatal: bool = False
    stall: bool = False
    fault: bool = False


class FatalStreamError(Exception):
    """The stream can never be read as configured (no video, unsupported codec)."""


class ReconnectError(Exception):
    """A session must end (and reconnect at a keyframe with a fresh decoder); ``fault``:
    because of its content (counts towards quarantine)."""

    def __init__(self, message: str, fault: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.fault = fault


def classify_error(exc: BaseException, redact: Callable[[str], str]) -> Failure:
    """A clear, redacted message for an open/read error, and whether retrying can help."""
    if isinstance(exc, av.error.HTTPUnauthorizedError):
        return Failure("authentication failed (401 Unauthorized): wrong or missing "
                       "username/password", fatal=True)
    if isinstance(exc, av.error.HTTPForbiddenError):
        return Failure("access denied (403 Forbidden)", fatal=True)
    if isinstance(exc, av.error.HTTPNotFoundError):
        return Failure("stream not found (404 Not Found): check the URI's path", fatal=True)
    if isinstance(exc, (av.error.ProtocolNotFoundError, av.error.DemuxerNotFoundError)):
        return Failure(f"unsupported URI scheme or format: {redact(str(exc))}", fatal=True)
    if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)):
        return Failure("timed out waiting for the server", stall=True)
    if isinstance(exc, ConnectionRefusedError):
        return Failure("connection refused (server down or wrong port)")
    if isinstance(exc, SourceError):
        return Failure(redact(exc.reason), fatal=True)
    return Failure(redact(f"{type(exc).__name__}: {exc}"))


def session_failure(exc: BaseException, *, stall_s: float, got_packets: bool,
                    redact: Callable[[str], str]) -> Failure:
    """What an exception that ended a session's reading means (the watchdog's abort, a
    decoder that must restart, a lost connection)."""
    if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)):
        what = "packet" if got_packets else "packet since connecting"
        return Failure(f"stalled: no {what} for {stall_s:g} s (watchdog)", stall=True)
    if isinstance(exc, ReconnectError):
        return Failure(exc.message, fault=exc.fault)
    return Failure(f"connection lost: {classify_error(exc, redact).message}")


class StateMachine:
    """A source's state, when it was entered, the last transitions (thread-safe).

    :meth:`set` logs each transition (``stalled`` as a warning, ``failed`` as an error)
    and wakes :meth:`wait_for`.
    """

    def __init__(self, stream_id: str, display_uri: str, history: int = 256) -> None:
        self._label = (stream_id, display_uri)
        self._cond = threading.Condition()
        self._state = StreamState.CONNECTING
        self._since = time.time()
        self._history: deque[tuple[float, StreamState]] = deque(maxlen=history)
        self._history.append((self._since, self._state))

    @property
    def state(self) -> StreamState:
        return self._state

    def current(self) -> tuple[StreamState, float]:
        """The state and when it was entered (``time.time()``), read together."""
        with self._cond:
            return self._state, self._since

    def history(self) -> list[tuple[float, StreamState]]:
        """The last transitions as ``(time.time(), state)``, oldest first."""
        with self._cond:
            return list(self._history)

    def wait_for(self, states: tuple[StreamState, ...], timeout: float | None) -> bool:
        """Block until the state is one of ``states``; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._state in states, timeout)

    def wake(self) -> None:
        """Wake waiters to check again (the source is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def set(self, state: StreamState) -> None:
        with self._cond:
            if state == self._state:
                return
            old = self._state
            self._state = state
            self._since = time.time()
            self._history.append((self._since, state))
            self._cond.notify_all()
        level = logging.INFO
        if state == StreamState.STALLED:
            level = logging.WARNING
        elif state in (StreamState.FAILED, StreamState.QUARANTINED):
            level = logging.ERROR
        log.log(level, "stream %s (%s): %s -> %s", *self._label, old, state)


class Connection:
    """Opens, hands each session to a reader, closes, backs off and reconnects; see the
    module docstring.

    Args:
        spec: the stream (URI, transport, credentials).
        config: the ``live:`` config (watchdog timeouts, backoff, FFmpeg options).
        states: the source's state machine.
        stats: the source's counters (reconnects, stalls, last error).
        stop: set to end the loop; waits and blocking reads give up at once or within
            the watchdog's timeouts.
        rng: random source of the backoff jitter (tests pass a seeded one).
    """

    def __init__(self, spec: StreamSpec, config: LiveConfig, states: StateMachine, stats: SourceStats,
                 stop: threading.Event, rng: random.Random | None = None) -> None:
        self.spec = spec
        self.config = config
        self.creds = spec.credentials()
        self.states = states
        self.stats = stats
        self.stop = stop
        b = config.backoff
        self.backoff = Backoff(b.initial_s, b.max_s, b.multiplier, b.jitter, rng)
        self._faults: deque[float] = deque()  # monotonic times of recent content faults

    @property
    def is_file(self) -> bool:
        return self.creds.open_uri.lower().startswith("file:")

    def record_error(self, message: str, level: int = logging.WARNING) -> None:
        """Keep ``message`` (redacted) as the source's last error and log it."""
        message = self.creds.redact(message)
        self.stats.error(message, time.time())
        log.log(level, "stream %s (%s): %s", self.spec.id, self.creds.display_uri, message)

    def connected(self) -> None:
        """The session reached its first keyframe: the stream is live, the backoff restarts."""
        self.backoff.reset()
        self.states.set(StreamState.LIVE)

    def read_failure(self, exc: BaseException, got_packets: bool) -> Failure | None:
        """:func:`session_failure` for this source; ``None`` when the source is stopping."""
        if self.stop.is_set():
            return None
        return session_failure(exc, stall_s=self.config.watchdog.stall_s, got_packets=got_packets,
                               redact=self.creds.redact)

    def run(self, read_session: Callable[[Any], Failure | None]) -> bool:
        """Connect, read, reconnect until stopped. ``True`` when a fatal error ended it.

        ``read_session(container)`` reads one session and returns why it ended (``None``:
        stopped); it raises :class:`FatalStreamError` when the stream can never be read.
        """
        first = True
        while not self.stop.is_set():
            if not first:
                self.stats.reconnect()
            first = False
            failure: Failure | None
            try:
                container = self.open()
            except Exception as e:
                failure = classify_error(e, self.creds.redact)
                if failure.fatal:
                    self.record_error(failure.message, logging.ERROR)
                    return True
                self.record_error(f"cannot connect: {failure.message}")
            else:
                try:
                    failure = read_session(container)
                except FatalStreamError as e:
                    self.record_error(str(e), logging.ERROR)
                    return True
                finally:
                    self.close(container)
                if failure is None or self.stop.is_set():
                    break
                if failure.stall:
                    self.stats.stall()
                    self.states.set(StreamState.STALLED)
                self.record_error(failure.message)
                if failure.fault and self._quarantine_due(failure):
                    if self.stop.wait(self.config.quarantine.pause_s):
                        break
                    self.backoff.reset()
                    self.states.set(StreamState.RECONNECTING)
                    continue
            if self.stop.is_set():
                break
            self.states.set(StreamState.RECONNECTING)
            delay = self.backoff.next()
            log.debug("stream %s: reconnecting in %.2f s", self.spec.id, delay)
            if self.stop.wait(delay):
                break
        return False

    def _quarantine_due(self, failure: Failure) -> bool:
        """Count a content fault; ``True`` (and the state ``quarantined``, the reason
        recorded) when it makes ``quarantine.faults`` within ``quarantine.window_s``."""
        q = self.config.quarantine
        self.stats.fault()
        now = time.monotonic()
        self._faults.append(now)
        while self._faults and now - self._faults[0] > q.window_s:
            self._faults.popleft()
        if q.faults == 0 or len(self._faults) < q.faults:
            return False
        self._faults.clear()
        self.stats.quarantine()
        self.states.set(StreamState.QUARANTINED)
        self.record_error(f"quarantined for {q.pause_s:g} s after {q.faults} faults in {q.window_s:g} s; "
                          f"last: {failure.message}", logging.ERROR)
        return True

    def open(self) -> Any:
        """Open the stream with the watchdog's timeouts (RTSP: fast-open options)."""
        wd = self.config.watchdog
        options: dict[str, str] = {}
        if self.creds.open_uri.lower().startswith("rtsp"):
            options.update(_DEFAULT_RTSP_OPTIONS)
            options["rtsp_transport"] = self.spec.transport
            options["timeout"] = str(int(wd.open_timeout_s * 1_000_000))
        options.update(self.config.ffmpeg_options)
        return av.open(
            self.creds.open_uri,
            mode="r",
            options=options,
            timeout=(wd.open_timeout_s, wd.stall_s),
        )

    def close(self, container: Any) -> None:
        try:
            container.close()
        except Exception as e:  # closing a dead connection may fail; nothing to do
            log.debug("stream %s: close: %s", self.spec.id, self.creds.redact(str(e)))
