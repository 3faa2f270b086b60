"""The bounded queue between the decode sessions and inference: a free slot goes to the
session furthest behind.

When inference is the slower side (the decode sessions then spend most of the job waiting
for room in the queue; benchmarks/RESULTS.md shows when that happens), which session gets
the next free slot decides which session advances. :class:`queue.Queue` leaves that to
chance: a waiter woken for a slot can lose it to a thread that just arrived, and a waiter
that times out and retries joins the back of the line. Sessions with equal shares of the work then finish seconds
apart, and the last ones run alone, too few to keep the engine fed.

:class:`BehindFirstQueue` hands each free slot to the waiting producer with the most
frames left to decode (ties: the one waiting longest). Items leave in the order they came
(first in, first out): only admission is ordered.

Usage::

    q = BehindFirstQueue(maxsize=28)
    q.put(batch, timeout=0.1, left=frames_left)   # producer: blocks while full or outranked
    item = q.get(timeout=0.1)                     # consumer; queue.Empty on timeout
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import queue
import threading
import time
from collections.abc import Sequence
from typing import Protocol

__all__ = ["BehindFirstQueue", "join_draining"]


class BehindFirstQueue:
    """A bounded FIFO whose free slots go to the producer with the most ``left``.

    ``put`` and ``get`` raise :class:`queue.Full` / :class:`queue.Empty` as
    :class:`queue.Queue`'s do, on a timeout or when ``block`` is false.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"BehindFirstQueue: maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: collections.deque[object] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        # waiting producers, a heap: (-left, arrival, their condition); the top is served next
        self._waiting: list[tuple[float, int, threading.Condition]] = []
        self._arrival = itertools.count()

    def qsize(self) -> int:
        with self._lock:
            return len(self._items)

    def producers_waiting(self) -> int:
        """How many ``put`` calls are waiting for a slot now."""
        with self._lock:
            return len(self._waiting)

    def put(self, item: object, block: bool = True, timeout: float | None = None, *, left: float = 0.0) -> None:
        """Append ``item`` once there is room and no waiting producer has more ``left``."""
        with self._lock:
            if len(self._items) < self.maxsize and not (self._waiting and self._waiting[0][0] <= -left):
                self._append(item)
                return
            if not block:
                raise queue.Full
            me = (-left, next(self._arrival), threading.Condition(self._lock))
            heapq.heappush(self._waiting, me)
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                while not (len(self._items) < self.maxsize and self._waiting[0] is me):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise queue.Full
                    me[2].wait(remaining)
            finally:
                self._waiting.remove(me)
                heapq.heapify(self._waiting)
                self._wake_next()  # had this one timed out at the top, the next may go
            self._append(item)

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        """The oldest item; waits for one (up to ``timeout``) unless ``block`` is false."""
        with self._not_empty:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if not block or (remaining is not None and remaining <= 0):
                    raise queue.Empty
                self._not_empty.wait(remaining)
            item = self._items.popleft()
            self._wake_next()
            return item

    def get_nowait(self) -> object:
        return self.get(block=False)

    def _append(self, item: object) -> None:  # with the lock held
        self._items.append(item)
        self._not_empty.notify()
        self._wake_next()

    def _wake_next(self) -> None:  # with the lock held: the top waiter, if it may go now
        if self._waiting and len(self._items) < self.maxsize:
            self._waiting[0][2].notify()


class _Drainable(Protocol):
    def get_nowait(self) -> object: ...


def join_draining(threads: Sequence[threading.Thread], q: _Drainable) -> None:
    """Wait for ``threads`` (told to stop already) to end, emptying ``q`` meanwhile so none of
    them stays blocked on a full queue (their items are dropped: the consumer has stopped)."""
    while any(t.is_alive() for t in threads):
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        for t in threads:
            t.join(timeout=0.05)
