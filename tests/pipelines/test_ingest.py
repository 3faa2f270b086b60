"""Ingest processes: stream readers spawned in worker processes, seen by the stream manager
as ordinary sources. Real spawned processes reading real clips paced at their frame rate
(CPU decode: frames pickled through the pipe); the GPU ring of NVDEC frames is exercised
by ``tests/pipelines/test_live_gpu.py`` on a GPU machine."""

from __future__ import annotations

import ctypes
import itertools
import json
import multiprocessing
import os
import queue
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from pipelines.ingest import IngestPool, IngestSettings, SharedSurface, _SlotRing, close_write_end, ring_frames_for
from pipelines.live import run_live
from streams.config import parse_config
from streams.errors import ConfigError
from streams.live.config import LiveConfig, ingest_processes, parse_live_config
from streams.live.manager import StreamManager
from streams.live.types import StreamSpec, StreamState, StreamStats
from tests.live.helpers import Consumer, max_gap, wait_state, wait_until
from tests.media import write_clip
from tests.pipelines.ingest_child import put_forever

pytestmark = pytest.mark.slow


def _live(**extra: object) -> LiveConfig:
    return parse_live_config({"decode": "cpu", "http": {"enabled": False}, "log_interval_s": 0,
                              "watchdog": {"stall_s": 2, "open_timeout_s": 3},
                              "backoff": {"initial_s": 0.2, "max_s": 1}, **extra})


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("ingest")
    return [write_clip(d / f"c{i}.mp4", "libx264", frames=50, width=160 + 32 * i, height=120, fps=20,
                       options={"g": "10", "bf": "0"}) for i in range(4)]


def test_slot_ring_takes_free_slots_and_surfaces_give_them_back() -> None:
    flags = multiprocessing.get_context("spawn").RawArray(ctypes.c_uint8, 4)
    ring = torch.zeros((4, 64 * 48 * 3 // 2), dtype=torch.uint8)
    full: list[int] = []
    slots = _SlotRing(ring, flags, lambda: full.append(1))
    got = [slots.take(48, 64) for _ in range(4)]
    assert [g[1] for g in got if g is not None] == [0, 1, 2, 3]
    assert all(g is not None and tuple(g[0].shape) == (72, 64) for g in got)
    assert slots.take(48, 64) is None and full == [1]  # no room: the caller drops the frame
    surface = SharedSurface(got[2][0], 7, 64, 48, 1, flags, 2)  # type: ignore[index]
    del surface  # the job let go of the frame: its slot is free again
    again = slots.take(48, 64)
    assert again is not None and again[1] == 2
    with pytest.raises(Exception, match="does not fit"):
        slots.take(480, 640)


def test_ingest_processes_setting() -> None:
    auto = _live()
    assert ingest_processes(auto, "packets", 100, 16) == 5  # one per 24 streams
    assert ingest_processes(auto, "packets", 32, 16) == 0  # few streams: in the job's process
    assert ingest_processes(auto, "packets", 400, 8) == 4  # at most half the cores
    assert ingest_processes(auto, "frames", 100, 16) == 0
    assert ingest_processes(_live(ingest={"processes": 2}), "frames", 1, 16) == 2
    assert ring_frames_for(auto, 25, 64, 2) == 2 * 8 * 25 + 2 * 2 * 64
    assert ring_frames_for(_live(ingest={"ring_frames": 100}), 25, 64, 2) == 100
    with pytest.raises(ConfigError, match=r"live\.ingest\.processes"):
        parse_live_config({"ingest": {"processes": 100}})


def test_a_child_killed_in_the_middle_of_a_message_is_seen_at_once() -> None:
    """The flake of the test below, made certain: a child killed while writing a message
    larger than the pipe's buffer. With this process's write end open, ``get()`` waited
    forever for the rest of the message (the receiver never noticed the death, and the
    process's streams stayed "live"); with it closed, ``get()`` fails at once."""
    mp = multiprocessing.get_context("spawn")
    events = mp.Queue(maxsize=8)
    child = mp.Process(target=put_forever, args=(events, 1 << 20), daemon=True)
    child.start()
    close_write_end(events)
    assert events.get(timeout=60)[0] == "frames"  # running; not read meanwhile: it blocks mid-write
    time.sleep(0.5)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    outcome: list[str] = []

    def drain() -> None:
        try:
            while True:
                events.get(timeout=5)
        except queue.Empty:
            outcome.append("empty")
        except (EOFError, OSError) as e:
            outcome.append(type(e).__name__)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    reader.join(10)
    assert outcome and outcome[0] in ("EOFError", "OSError"), f"get() after the kill: {outcome or 'still waiting'}"
    with pytest.raises(TypeError, match="multiprocessing queue"):
        close_write_end(queue.Queue())


def test_streams_in_two_processes_survive_a_killed_process_and_runtime_changes(clips: list[Path]) -> None:
    live = _live()
    settings = IngestSettings(live, "frames")
    with IngestPool(settings, processes=2) as pool, \
            StreamManager(live, mode="frames", source_factory=pool.source) as mgr:
        consumer = Consumer(mgr, max_batch=8)
        consumer.start()
        ids = [f"s{i}" for i in range(3)]
        for i, sid in enumerate(ids):
            mgr.add_stream(StreamSpec(sid, f"file://{clips[i]}"))
        bad = mgr.add_stream(StreamSpec("missing", "file:///nonexistent/clip.mp4"))
        assert bad.state == StreamState.CONNECTING
        assert set(pool.placement().values()) == {0, 1}  # spread over both processes
        assert wait_state(mgr, ids, StreamState.LIVE, 30), mgr.summary_line()
        assert wait_until(lambda: all(consumer.count(s) >= 30 for s in ids), 20), mgr.summary_line()
        # a wrong path: that stream retries with a clear error; the others run
        assert wait_until(lambda: "No such file" in (mgr.stats("missing").last_error or ""), 10)  # type: ignore[union-attr]
        assert mgr.stats("missing").state in (StreamState.RECONNECTING, StreamState.CONNECTING)  # type: ignore[union-attr]
        for sid in ids:  # attributed, in order, the right picture size
            seen = consumer.frames(sid)
            idx = [f.frame_index for f in seen]
            assert idx == sorted(idx) and len(set(idx)) == len(idx)
            assert all(f.shape == (120, 160 + 32 * int(sid[1:]), 3) for f in seen)
            assert all(f.uri.endswith(clips[int(sid[1:])].name) for f in seen)

        # kill the process of s0: its streams reconnect in a restarted process
        placement = pool.placement()
        victim = placement["s0"]
        others = [s for s in ids if placement[s] != victim]
        mine = [s for s in ids if placement[s] == victim]
        os.kill(pool.processes()[victim].pid, signal.SIGKILL)
        t_kill = time.time()
        assert wait_until(lambda: mgr.stats("s0").state != StreamState.LIVE, 10)  # type: ignore[union-attr]
        assert wait_until(lambda: all(f.received > t_kill + 0.5 for s in mine
                                      for f in consumer.frames(s)[-1:]), 40), mgr.summary_line()
        assert wait_state(mgr, mine, StreamState.LIVE, 10), mgr.summary_line()
        for s in others:  # never paused meanwhile
            times = [f.received for f in consumer.frames(s) if f.received > t_kill - 1]
            assert max_gap(times) < 1.0, f"{s} paused {max_gap(times):.2f} s"
        # the restarted process numbers from 0 again: the job's indices, sessions and pts continue
        seen = consumer.frames("s0")
        before = [f for f in seen if f.received < t_kill]
        after = [f for f in seen if f.received > t_kill + 0.5]
        assert before and after
        assert after[0].frame_index > before[-1].frame_index and after[0].session > before[-1].session
        for key in ("frame_index", "pts"):
            values = [getattr(f, key) for f in seen]
            assert all(b > a for a, b in itertools.pairwise(values)), key
        # every index up to the last one delivered was delivered or reported dropped
        dropped = set(mgr.take_dropped().get("s0", []))
        delivered = {f.frame_index for f in seen}
        assert not delivered & dropped
        assert set(range(max(delivered) + 1)) <= delivered | dropped

        # runtime changes: one stream removed, one added
        assert mgr.remove_stream(ids[1], timeout=5)
        n1 = consumer.count(ids[1])
        mgr.add_stream(StreamSpec("s3", f"file://{clips[3]}"))
        assert wait_until(lambda: consumer.count("s3") >= 20, 20), mgr.summary_line()
        time.sleep(0.5)
        assert consumer.count(ids[1]) <= n1 + 2  # nothing more from the removed stream
        assert "s1" not in pool.placement()
        code, health = mgr.health()
        assert code == 200 and health["streams"]["s3"]["state"] == "live"
        consumer.stop()
    assert all(not p.is_alive() for p in pool.processes())  # stopped with the job


def test_live_job_with_ingest_processes_writes_every_stream(clips: list[Path], bright_model: Path,
                                                            tmp_path: Path) -> None:
    cfg = parse_config({
        "sources": [{"uri": f"file://{c}", "id": f"cam{i}"} for i, c in enumerate(clips)],
        "model": {"path": str(bright_model), "input_size": [128, 128]},
        "engine": {"device": "cpu", "batch_size": 8},
        "live": {"decode": "cpu", "http": {"enabled": False}, "log_interval_s": 0,
                 "ingest": {"processes": 2}},
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
    })
    summary = run_live(cfg, duration_s=8, warmup_s=0)
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    for i in range(4):
        mine = [r for r in records if r["source"] == f"cam{i}"]
        assert len(mine) >= 40, f"cam{i}: {len(mine)} frames in ~8 s at 20 fps"
        assert mine[0]["width"] == 160 + 32 * i
    assert summary.states and all(s in ("stopped", "live") for s in summary.states.values())


def test_gop_decode_with_ingest_processes_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"live\.ingest\.processes"):
        parse_live_config({"decode": "gop", "ingest": {"processes": 2}})
    assert parse_live_config({"decode": "gop"}).ingest.processes == "auto"  # auto: none for gop


def test_slot_ring_waits_for_a_slot_under_the_block_policy() -> None:
    import threading

    flags = multiprocessing.get_context("spawn").RawArray(ctypes.c_uint8, 2)
    ring = torch.zeros((2, 8 * 8 * 3 // 2), dtype=torch.uint8)
    stop = threading.Event()
    slots = _SlotRing(ring, flags, lambda: None, wait=True, stop=stop)
    first = [slots.take(8, 8), slots.take(8, 8)]
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(slots.take(8, 8)))
    t.start()
    time.sleep(0.2)
    assert not got  # waiting: every frame is kept under "block"
    slots.release(first[1][1])  # type: ignore[index]
    t.join(2)
    assert got and got[0] is not None and got[0][1] == 1  # type: ignore[index]
    t = threading.Thread(target=lambda: got.append(slots.take(8, 8)))
    t.start()
    stop.set()  # the process stops: the waiting reader gives up
    t.join(2)
    assert got[-1] is None


@pytest.mark.parametrize("policy", ["drop_oldest", "block"])
def test_ingest_outbox_is_bounded_when_the_job_falls_behind(policy: str) -> None:
    """A job that stops taking messages (a queue of one that nobody reads) must not grow the
    ingest process's memory: drop_oldest drops (counted per stream), block makes the reader wait."""
    import queue as std_queue
    import threading

    import numpy as np

    from pipelines import ingest
    from streams.frames import FrameMeta
    from streams.live.types import LiveFrame

    events: std_queue.Queue[object] = std_queue.Queue(maxsize=1)
    worker = ingest._IngestWorker(0, IngestSettings(_live(batch={"policy": policy}), "frames"), events, None)
    class _Reading:  # a stream being read, as the sender's statistics see it (no thread needed)
        id, alive = "a", True

        def stats(self) -> StreamStats:
            return StreamStats("a", "x", "tcp", "frames", StreamState.LIVE, 0.0)

        def history(self) -> list[tuple[float, StreamState]]:
            return []

    worker.sources["a"] = _Reading()  # type: ignore[assignment]
    frame = np.zeros((4, 4, 3), np.uint8)
    # more than the outbox plus the two messages that can be in flight (one queued, one in hand)
    total = 4 * ingest._OUTBOX_MAX
    done = threading.Event()

    def produce() -> None:
        for i in range(total):
            if not worker._emit("a", LiveFrame(FrameMeta("a", "x", i, i, (1, 25), 4, 4), frame)):
                break
        done.set()

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    time.sleep(1.0)
    assert len(worker.outbox) <= ingest._OUTBOX_MAX
    if policy == "drop_oldest":
        assert done.is_set()
        assert worker.drops["a"] >= ingest._OUTBOX_MAX  # what did not fit was dropped and counted
    else:
        assert not done.is_set() and "a" not in worker.drops  # the reader waits, nothing is lost
    worker._stop.set()
    while not events.empty():
        events.get_nowait()
    t.join(3)
    worker._sender.join(3)
