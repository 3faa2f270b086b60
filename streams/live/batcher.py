"""Cross-stream batching, like DeepStream's ``nvstreammux``: bounded per-stream queues,
round-robin batches with a deadline.

Each stream gets its own bounded queue (a :class:`StreamQueue`, the producer's handle).
:meth:`Batcher.next_batch` takes items from every non-empty queue in turn (one per
stream per round, starting one stream further each call) until the batch is full or the
deadline passes, so a slow or dead stream only leaves its slots to the others.

Full-queue policies:

* ``drop_oldest`` (live): ``put`` never blocks; the queue's OLDEST item is dropped and
  counted for that stream, so latency stays bounded when the consumer falls behind. The
  dropped item goes to the ``on_drop`` callback, if any (the stream manager records which
  frames were dropped, :meth:`StreamManager.take_dropped
  <streams.live.manager.StreamManager.take_dropped>`).
* ``block`` (recorded streams, every frame processed): ``put`` waits for room; removing
  the stream or closing the batcher wakes it (``put`` then returns ``False``).

Usage::

    batcher: Batcher[LiveFrame] = Batcher(queue_size=8, policy="drop_oldest")
    q = batcher.add_stream("cam0")            # producer side (the reader thread)
    q.put(frame)                              # False once the stream is removed/closed
    batch = batcher.next_batch(max_batch=16, max_wait_s=0.04)   # consumer side
    batcher.stats()["cam0"].dropped
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from streams.errors import ConfigError
from streams.live.config import QueuePolicy

T = TypeVar("T")


@dataclass(frozen=True)
class QueueStats:
    """Counters of one stream's queue."""

    depth: int
    enqueued: int
    dequeued: int
    dropped: int


class StreamQueue(Generic[T]):
    """One stream's bounded queue; the producer's handle. Made by :meth:`Batcher.add_stream`."""

    def __init__(self, stream_id: str, batcher: Batcher[T]) -> None:
        self.stream_id = stream_id
        self._batcher = batcher
        self._items: deque[T] = deque()
        self._not_full = threading.Condition(batcher._lock)
        self.closed = False
        self.enqueued = 0
        self.dequeued = 0
        self.dropped = 0

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Queue ``item``; ``False`` if the queue is closed (or, ``block`` policy, if
        ``timeout`` seconds passed without room). ``drop_oldest`` never waits."""
        b = self._batcher
        with b._lock:
            if self.closed:
                return False
            if len(self._items) >= b.queue_size:
                if b.policy == "drop_oldest":
                    old = self._items.popleft()
                    self.dropped += 1
                    if b.on_drop is not None:
                        b.on_drop(self.stream_id, old)
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._items) >= b.queue_size and not self.closed:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return False
                        self._not_full.wait(remaining)
                    if self.closed:
                        return False
            self._items.append(item)
            self.enqueued += 1
            b._not_empty.notify()
            return True

    def stats(self) -> QueueStats:
        with self._batcher._lock:
            return QueueStats(len(self._items), self.enqueued, self.dequeued, self.dropped)

    def _close(self) -> None:  # under the batcher's lock
        self.closed = True
        self._items.clear()
        self._not_full.notify_all()


class Batcher(Generic[T]):
    """Bounded per-stream queues and round-robin batches. Thread-safe.

    Any number of producers (one per stream); one consumer calling :meth:`next_batch`
    (several work too, each gets distinct items). ``on_drop(stream_id, item)`` is called
    for every item the ``drop_oldest`` policy drops, under the batcher's lock: keep it short
    and never call the batcher from it.
    """

    def __init__(self, queue_size: int = 8, policy: QueuePolicy = "drop_oldest",
                 on_drop: Callable[[str, T], None] | None = None) -> None:
        if queue_size < 1:
            raise ConfigError("live.batch.queue_size", f"expected >= 1, got {queue_size}")
        if policy not in ("drop_oldest", "block"):
            raise ConfigError("live.batch.policy", f"expected drop_oldest or block, got {policy!r}")
        self.queue_size = queue_size
        self.policy: QueuePolicy = policy
        self.on_drop = on_drop
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._queues: dict[str, StreamQueue[T]] = {}
        self._rr = 0
        self._closed = False

    def add_stream(self, stream_id: str) -> StreamQueue[T]:
        """Create the queue of ``stream_id`` and return it (the producer's handle)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if stream_id in self._queues:
                raise ValueError(f"stream {stream_id!r} already has a queue")
            q: StreamQueue[T] = StreamQueue(stream_id, self)
            self._queues[stream_id] = q
            return q

    def remove_stream(self, stream_id: str) -> QueueStats | None:
        """Drop the stream's queue and pending items; wakes a producer blocked in ``put``.
        Returns the queue's final counters (no put counts after this), ``None`` if unknown."""
        with self._lock:
            q = self._queues.pop(stream_id, None)
            if q is None:
                return None
            final = QueueStats(len(q._items), q.enqueued, q.dequeued, q.dropped)
            q._close()
            return final

    def put(self, stream_id: str, item: T, timeout: float | None = None) -> bool:
        """``put`` on the queue of ``stream_id`` (``False`` when it has none)."""
        with self._lock:
            q = self._queues.get(stream_id)
        return False if q is None else q.put(item, timeout)

    def next_batch(self, max_batch: int, max_wait_s: float) -> list[T]:
        """Up to ``max_batch`` items, round-robin over streams.

        Returns as soon as the batch is full, else when ``max_wait_s`` has passed since the
        call (possibly with fewer items, or none). Returns what is left at once after
        :meth:`close` (an empty list when nothing is).
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        deadline = time.monotonic() + max(0.0, max_wait_s)
        batch: list[T] = []
        with self._lock:
            while True:
                self._take(batch, max_batch)
                if len(batch) >= max_batch or self._closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._not_empty.wait(remaining)
        return batch

    def _take(self, batch: list[T], max_batch: int) -> None:
        queues = list(self._queues.values())
        n = len(queues)
        if n == 0:
            return
        start = self._rr % n
        self._rr = start + 1
        progressed = True
        while progressed and len(batch) < max_batch:
            progressed = False
            for k in range(n):
                if len(batch) >= max_batch:
                    break
                q = queues[(start + k) % n]
                if q._items:
                    batch.append(q._items.popleft())
                    q.dequeued += 1
                    q._not_full.notify()
                    progressed = True

    def stats(self) -> dict[str, QueueStats]:
        """Per-stream queue counters."""
        with self._lock:
            return {
                sid: QueueStats(len(q._items), q.enqueued, q.dequeued, q.dropped)
                for sid, q in self._queues.items()
            }

    def stream_ids(self) -> list[str]:
        with self._lock:
            return list(self._queues)

    def __len__(self) -> int:
        """Items queued over all streams."""
        with self._lock:
            return sum(len(q._items) for q in self._queues.values())

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop accepting items, wake every waiter; queued items stay readable."""
        with self._lock:
            self._closed = True
            for q in self._queues.values():
                q.closed = True
                q._not_full.notify_all()
            self._not_empty.notify_all()
