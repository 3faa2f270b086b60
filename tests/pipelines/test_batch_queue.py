"""The queue between the decode sessions and inference: FIFO out, furthest-behind-first in."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from pipelines.batch_queue import BehindFirstQueue


def _wait_for_producers(q: BehindFirstQueue, n: int, items: int | None = None) -> None:
    """Until ``n`` producers wait (and the queue holds ``items``)."""
    deadline = time.monotonic() + 5
    while q.producers_waiting() != n or (items is not None and q.qsize() != items):
        assert time.monotonic() < deadline, f"expected {n} waiting producers, have {q.producers_waiting()}"
        time.sleep(0.005)


def test_items_leave_first_in_first_out_and_the_bound_holds() -> None:
    q = BehindFirstQueue(maxsize=2)
    q.put("a", left=1)
    q.put("b", left=100)  # more left does not overtake an item already queued
    with pytest.raises(queue.Full):
        q.put("c", block=False)
    with pytest.raises(queue.Full):
        q.put("c", timeout=0.02, left=1_000)
    assert q.qsize() == 2
    assert [q.get(), q.get_nowait()] == ["a", "b"]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.02)


def test_a_free_slot_goes_to_the_producer_furthest_behind() -> None:
    """Three sessions wait on a full queue; slots go to 50, 30, 10 frames left, in that
    order, whatever order they started waiting in (ties: the one waiting longest)."""
    q = BehindFirstQueue(maxsize=1)
    q.put("first")
    threads = []
    for n, (name, left) in enumerate([("ten", 10), ("fifty", 50), ("thirty", 30), ("thirty-late", 30)]):
        t = threading.Thread(target=q.put, args=(name,), kwargs={"left": left, "timeout": 5})
        t.start()
        threads.append(t)
        _wait_for_producers(q, n + 1)
    got = []
    for k in range(5):
        got.append(q.get(timeout=5))
        if k < 4:  # the slot is taken by exactly one of the waiting producers
            _wait_for_producers(q, 3 - k, items=1)
    for t in threads:
        t.join(timeout=5)
    assert got == ["first", "fifty", "thirty", "thirty-late", "ten"]


def test_a_newcomer_waits_behind_a_producer_with_more_left_even_with_room() -> None:
    q = BehindFirstQueue(maxsize=1)
    q.put("x")
    t = threading.Thread(target=q.put, args=("behind",), kwargs={"left": 500, "timeout": 5})
    t.start()
    _wait_for_producers(q, 1)
    with q._lock:  # take the item and free the slot without waking anyone: the waiter still holds its claim
        q._items.popleft()
    with pytest.raises(queue.Full):
        q.put("ahead", block=False, left=10)
    q.put("further-behind", timeout=5, left=900)  # outranks the waiter: may take the free slot
    assert q.get(timeout=5) == "further-behind"
    t.join(timeout=5)
    assert q.get(timeout=5) == "behind"


def test_a_producer_timing_out_at_the_top_passes_the_slot_on() -> None:
    q = BehindFirstQueue(maxsize=1)
    q.put("x")
    done = threading.Event()

    def patient() -> None:
        q.put("patient", timeout=5, left=1)
        done.set()

    t = threading.Thread(target=patient)
    t.start()
    _wait_for_producers(q, 1)
    with pytest.raises(queue.Full):
        q.put("impatient", timeout=0.05, left=99)
    assert q.producers_waiting() == 1
    assert q.get(timeout=5) == "x"
    assert done.wait(5), "the remaining producer was not given the free slot"
    assert q.get(timeout=5) == "patient"
    t.join(timeout=5)


def test_every_item_arrives_once_under_contention() -> None:
    q = BehindFirstQueue(maxsize=3)
    per, producers = 200, 6
    got: list[object] = []

    def produce(p: int) -> None:
        for i in range(per):
            while True:
                try:
                    q.put((p, i), timeout=0.01, left=per - i)
                    break
                except queue.Full:
                    continue

    def consume() -> None:
        while len(got) < per * producers:
            try:
                got.append(q.get(timeout=0.01))
            except queue.Empty:
                continue

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    threads += [threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(got) == sorted((p, i) for p in range(producers) for i in range(per))  # type: ignore[type-var]
    for p in range(producers):  # each producer's own items stay in order
        assert [i for (pp, i) in got if pp == p] == list(range(per))  # type: ignore[misc]


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize must be >= 1, got 0"):
        BehindFirstQueue(0)
