"""The counters of one live source and its frame rate.

:class:`SourceStats` is written by the source's reader thread (packets, frames, sessions,
errors, the frame size) and read by any thread through :meth:`SourceStats.snapshot`, which
:meth:`RtspSource.stats() <streams.live.rtsp.RtspSource.stats>` turns into a
:class:`~streams.live.types.StreamStats`. :class:`RateMeter` is the sliding-window frame rate
behind ``StreamStats.fps``; :class:`Reservoir` keeps a fixed-size sample of a run's values
(the runner's latencies) for its quantiles.

Usage::

    stats = SourceStats()
    stats.packet(size=1400, arrival=time.time())
    stats.frames_out(1, time.time())
    stats.snapshot(id="gate", uri=..., transport="tcp", mode="frames",
                   state=StreamState.LIVE, state_since=t0).fps
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque

import numpy as np

from streams.live.types import StreamState, StreamStats


class RateMeter:
    """Events per second over a sliding window (thread-safe)."""

    def __init__(self, window_s: float = 5.0, maxlen: int = 4096) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._first: float | None = None

    def tick(self, t: float, n: int = 1) -> None:
        """Count ``n`` events at time ``t``."""
        with self._lock:
            for _ in range(n):
                self._times.append(t)
            if self._first is None:
                self._first = t

    def rate(self, now: float) -> float:
        """Events per second over the last ``window_s`` (0 with fewer than two events)."""
        with self._lock:
            if self._first is None:
                return 0.0
            start = max(now - self.window_s, self._first)
            while self._times and self._times[0] < now - self.window_s:
                self._times.popleft()
            n = len(self._times)
            span = now - start
        if n < 2 or span <= 0:
            return 0.0
        return n / span if span >= 1.0 else (n - 1) / span


class Reservoir:
    """A uniform random sample of at most ``capacity`` values out of all values added
    (reservoir sampling): quantiles over a whole run in bounded memory (``capacity`` floats,
    reached by doubling), so a job that runs for days stops growing (a list of every latency
    would grow with each frame)."""

    def __init__(self, capacity: int = 2048, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.count = 0  # values added
        self._values = np.zeros(min(capacity, 64), np.float64)
        self._seed = seed
        self._rng: random.Random | None = None  # made once full (short-lived streams never need one)

    def append(self, value: float) -> None:
        if self.count < self.capacity:
            if self.count == len(self._values):
                grow = max(1, min(self.count, self.capacity - self.count))  # doubling (from empty after shrink)
                self._values = np.concatenate([self._values, np.zeros(grow)])
            self._values[self.count] = value
        else:
            if self._rng is None:
                self._rng = random.Random(self._seed)
            j = self._rng.randrange(self.count + 1)
            if j < self.capacity:
                self._values[j] = value
        self.count += 1

    def shrink(self, capacity: int) -> None:
        """Hold at most ``capacity`` values from now on: the sample's quantiles at evenly spaced
        ranks, which keep its distribution (a removed stream's latencies in a fraction of the
        memory; later values still enter as in a full reservoir)."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        n = len(self)
        if n > capacity:
            self._values = np.quantile(self._values[:n], np.linspace(0.0, 1.0, capacity))
        else:
            self._values = self._values[:n].copy()
        self.capacity = min(self.capacity, capacity)

    def __len__(self) -> int:
        """Values held (at most ``capacity``)."""
        return min(self.count, self.capacity)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the sample (``None`` when empty)."""
        n = len(self)
        return float(np.quantile(self._values[:n], q)) if n else None


class SourceStats:
    """The counters of one source (thread-safe); see the module docstring.

    Attributes are plain integers and optional values, written only through the methods
    (each takes the lock) so a snapshot never sees half an update.
    """

    def __init__(self, rate_window_s: float = 5.0) -> None:
        self._lock = threading.Lock()
        self._rate = RateMeter(rate_window_s)
        self.packets = 0
        self.frames = 0
        self.bytes = 0
        self.reconnects = 0
        self.sessions = 0
        self.stalls = 0
        self.decode_errors = 0
        self.skipped_packets = 0
        self.faults = 0
        self.quarantines = 0
        self.last_packet_time: float | None = None
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.codec: str | None = None
        self.width: int | None = None
        self.height: int | None = None

    def packet(self, size: int, arrival: float) -> None:
        """A packet of ``size`` bytes was demuxed at ``arrival``."""
        with self._lock:
            self.packets += 1
            self.bytes += size
            self.last_packet_time = arrival

    def frames_out(self, n: int, now: float) -> None:
        """``n`` frames were produced (decoded, or packed into a GOP buffer) at ``now``."""
        with self._lock:
            self.frames += n
        self._rate.tick(now, n)

    def skipped(self) -> None:
        """A packet could not be used (before the first keyframe of a session or GOP)."""
        with self._lock:
            self.skipped_packets += 1

    def decode_error(self) -> int:
        """Count a packet the decoder rejected; returns the count (``1``: log it loudly)."""
        with self._lock:
            self.decode_errors += 1
            return self.decode_errors

    def reconnect(self) -> None:
        with self._lock:
            self.reconnects += 1

    def stall(self) -> None:
        with self._lock:
            self.stalls += 1

    def fault(self) -> None:
        """A session ended by a content fault (see :class:`~streams.live.connection.Failure`)."""
        with self._lock:
            self.faults += 1

    def quarantine(self) -> None:
        with self._lock:
            self.quarantines += 1

    def new_session(self, codec: str, width: int | None, height: int | None) -> int:
        """A session (connection) starts reading ``codec``; returns its number (0 first)."""
        with self._lock:
            self.sessions += 1
            self.codec = codec
            self.width = width or self.width
            self.height = height or self.height
            return self.sessions - 1

    def frame_size(self, width: int, height: int) -> None:
        """The source's frame size, as the last decoded frame (or a probe) showed it."""
        if self.width != width or self.height != height:
            with self._lock:
                self.width, self.height = width, height

    def error(self, message: str, when: float) -> None:
        """The last error (already redacted)."""
        with self._lock:
            self.last_error = message
            self.last_error_time = when

    def snapshot(
        self,
        *,
        id: str,
        uri: str,
        transport: str,
        mode: str,
        state: StreamState,
        state_since: float,
        now: float | None = None,
    ) -> StreamStats:
        """The counters as a :class:`StreamStats` with the given identity and state."""
        now = time.time() if now is None else now
        fps = self._rate.rate(now)
        with self._lock:
            age = None if self.last_packet_time is None else now - self.last_packet_time
            return StreamStats(
                id=id, uri=uri, transport=transport, mode=mode, state=state, state_since=state_since,
                packets=self.packets, frames=self.frames, bytes=self.bytes,
                reconnects=self.reconnects, sessions=self.sessions, stalls=self.stalls,
                decode_errors=self.decode_errors, skipped_packets=self.skipped_packets,
                faults=self.faults, quarantines=self.quarantines, fps=fps, last_packet_age_s=age,
                last_error=self.last_error,
                last_error_time=self.last_error_time, codec=self.codec, width=self.width,
                height=self.height,
            )
