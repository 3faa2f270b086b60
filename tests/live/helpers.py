"""Test helpers: consumer threads that drain a StreamManager like a runner would (one
keeping pixels' summaries, one metadata only), and small polling utilities."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.frames import FrameMeta
from streams.live.manager import StreamManager
from streams.live.types import GopBuffer, LiveFrame, LiveItem, StreamSpec, StreamState, StreamStats
from tests.servers.helpers import RtspServerProcess

RtspFactory = Callable[..., RtspServerProcess]  # the rtsp_servers fixture


@dataclass(frozen=True)
class Seen:
    """What the consumer recorded of one frame (no pixels kept: memory stays flat)."""

    received: float
    frame_index: int
    pts: int | None
    arrival: float | None
    session: int
    shape: tuple[int, ...]
    center: tuple[int, ...]
    uri: str


class _Drain(threading.Thread):
    """Calls ``next_batch`` in a loop like a runner, hands each batch to :meth:`_keep`, then
    reports its frames emitted; ends when stopped or when the manager stopped and is empty."""

    def __init__(self, name: str, mgr: StreamManager, max_batch: int, max_wait_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.mgr = mgr
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._stop_evt = threading.Event()
        self._lock = threading.Lock()

    def _keep(self, batch: list[LiveItem], now: float) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self._stop_evt.is_set():
            batch = self.mgr.next_batch(self.max_batch, self.max_wait_s)
            now = time.time()
            with self._lock:
                self._keep(batch, now)
            for item in batch:
                self.mgr.record_emitted(item.metas)
            if self.mgr.stopped and not batch:
                break

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(5)


class Consumer(_Drain):
    """Records every frame's metadata and a pixel summary (:class:`Seen`), and GOP buffers."""

    def __init__(self, mgr: StreamManager, max_batch: int = 8, max_wait_s: float = 0.05) -> None:
        super().__init__("test-consumer", mgr, max_batch, max_wait_s)
        self.seen: dict[str, list[Seen]] = defaultdict(list)
        self.gops: dict[str, list[GopBuffer]] = defaultdict(list)
        self.batches = 0
        self.max_batch_seen = 0

    def _keep(self, batch: list[LiveItem], now: float) -> None:
        self.batches += 1 if batch else 0
        self.max_batch_seen = max(self.max_batch_seen, len(batch))
        for item in batch:
            if isinstance(item, LiveFrame):
                img = item.image
                h, w = img.shape[:2]
                m = item.meta
                self.seen[m.source_id].append(Seen(
                    now, m.frame_index, m.pts, m.arrival_time, item.session,
                    tuple(img.shape), tuple(int(v) for v in img[h // 2, w // 2]), m.uri,
                ))
            else:
                self.gops[item.source_id].append(item)
                for m in item.metas:
                    self.seen[m.source_id].append(Seen(
                        now, m.frame_index, m.pts, m.arrival_time, item.session,
                        (m.height, m.width), (), m.uri,
                    ))

    def frames(self, source: str) -> list[Seen]:
        with self._lock:
            return list(self.seen.get(source, ()))

    def count(self, source: str) -> int:
        with self._lock:
            return len(self.seen.get(source, ()))


class MetaConsumer(_Drain):
    """Keeps only each frame's metadata and session (works for every item kind: RGB frames,
    NVDEC surfaces, GOP buffers)."""

    def __init__(self, mgr: StreamManager, max_batch: int = 16, max_wait_s: float = 0.05) -> None:
        super().__init__("test-meta-consumer", mgr, max_batch, max_wait_s)
        self._metas: dict[str, list[tuple[FrameMeta, int]]] = defaultdict(list)

    def _keep(self, batch: list[LiveItem], now: float) -> None:
        for item in batch:
            for m in item.metas:
                self._metas[m.source_id].append((m, item.session))

    def metas(self, source: str) -> list[tuple[FrameMeta, int]]:
        """``(meta, session)`` of every frame of ``source`` so far, in arrival order."""
        with self._lock:
            return list(self._metas.get(source, ()))


class PushSource:
    """A live source without a thread, for a :class:`StreamManager`'s ``source_factory``: the
    test pushes frames through ``emit`` and the drops the source itself reports through
    ``own_drops``. ``alive`` until stopped, unless ``lingers`` (a reader blocked in a read,
    ended later)."""

    def __init__(self, spec: StreamSpec, emit: Any, lingers: bool = False) -> None:
        self.id = spec.id
        self.display_uri = spec.uri
        self.emit = emit
        self.lingers = lingers
        self.own_drops: list[int] = []
        self.alive = False

    def start(self) -> PushSource:
        self.alive = True
        return self

    def stop(self) -> None:
        self.alive = self.lingers

    def join(self, timeout: float | None = None) -> bool:
        return not self.alive

    @property
    def state(self) -> StreamState:
        return StreamState.LIVE

    def stats(self) -> StreamStats:
        return StreamStats(self.id, self.display_uri, "tcp", "frames", StreamState.LIVE, 0.0)

    def history(self) -> list[tuple[float, StreamState]]:
        return []

    def wait_for_state(self, *states: StreamState, timeout: float | None = None) -> bool:
        return True

    def take_dropped(self) -> list[int]:
        out, self.own_drops = self.own_drops, []
        return out


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def wait_state(mgr: StreamManager, ids: list[str], state: StreamState, timeout: float) -> bool:
    def ok() -> bool:
        stats = {s.id: s.state for s in mgr.streams()}
        return all(stats.get(i) == state for i in ids)

    return wait_until(ok, timeout)


def max_gap(times: list[float]) -> float:
    """Largest interval between consecutive times (0 for fewer than 2)."""
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
