"""Fast tests of the units an RtspSource is made of (GOP assembly, frame numbering, the
reconnect loop), of the dropped-frame reports (``StreamManager.take_dropped``), the
renamed ``live.inference_threads`` key and the HTTP server's decoupling from the manager."""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.errors import ConfigError, SourceError
from streams.frames import FrameMeta
from streams.live.batcher import Batcher
from streams.live.config import LiveConfig, parse_live_config
from streams.live.connection import Connection, Failure, FatalStreamError, StateMachine
from streams.live.demux import FrameStamper, Track
from streams.live.drops import DropLog
from streams.live.gop import GopAssembler
from streams.live.http import LiveHttpServer
from streams.live.manager import StreamManager
from streams.live.stats import SourceStats
from streams.live.types import GopBuffer, LiveFrame, LiveItem, StreamSpec, StreamState, StreamStats
from tests.live.helpers import PushSource


def _meta(sid: str, i: int) -> FrameMeta:
    return FrameMeta(sid, "x", i, i * 3000, (1, 90000), 8, 8)


# ----------------------------------------------------------------------- GOP assembly
def test_gop_assembler_skips_to_the_first_keyframe_and_completes_at_the_next() -> None:
    asm = GopAssembler(max_frames=100)
    assert asm.add(b"p", False, 0, 0.0) == (False, [])  # before any keyframe: skipped
    kept, done = asm.add(b"K1", True, 3000, 1.0)
    assert kept and done == []
    # B-frames: decode order 6000 (P) then 4500 (B): the GOP lists presentation order
    asm.add(b"P", False, 6000, 1.1)
    asm.add(b"B", False, 4500, 1.2)
    kept, done = asm.add(b"K2", True, 9000, 2.0)
    assert kept and len(done) == 1
    assert done[0].data == b"K1PB"
    assert [p for p, _ in done[0].frames] == [3000, 4500, 6000]
    assert [a for _, a in done[0].frames] == [1.0, 1.2, 1.1]  # each frame keeps its packet's arrival
    assert asm.pending == 1
    tail = asm.flush()
    assert tail is not None and tail.data == b"K2" and asm.flush() is None


def test_gop_assembler_cuts_long_gops_and_waits_for_the_next_keyframe() -> None:
    asm = GopAssembler(max_frames=3, label="cam")
    asm.add(b"K", True, None, 0.0)
    asm.add(b"a", False, None, 0.1)
    kept, done = asm.add(b"b", False, None, 0.2)
    assert kept and [g.data for g in done] == [b"Kab"]
    assert [p for p, _ in done[0].frames] == [None, None, None]  # no pts: decode order kept
    assert asm.add(b"c", False, None, 0.3) == (False, [])  # cut: skipping to the next keyframe
    kept, done = asm.add(b"K", True, None, 0.4)
    assert kept and done == [] and asm.pending == 1
    with pytest.raises(ValueError, match="max_frames"):
        GopAssembler(0)


# ------------------------------------------------------------------ frame numbering
def test_frame_stamper_numbers_consecutively_across_sessions() -> None:
    from fractions import Fraction

    stamper = FrameStamper("cam", "rtsp://h/x")
    stamper.start_session(Track(None, None, "h264", Fraction(1, 90000), 3000))
    first = [stamper.stamp(p, 8, 8, 1.0) for p in (None, 3000, 6000)]
    stamper.start_session(Track(None, None, "h264", Fraction(1, 90000), 3000))  # a reconnect
    second = [stamper.stamp(p, 8, 8, 2.0) for p in (0, 3000)]
    metas = first + second
    assert [m.frame_index for m in metas] == [0, 1, 2, 3, 4]
    pts = [m.pts for m in metas]
    assert pts[:3] == [0, 3000, 6000] and pts[3] == 9000  # the new session continues a step later
    assert all(b > a for a, b in itertools.pairwise(pts))  # type: ignore[operator]
    with pytest.raises(ValueError, match="frame size"):
        stamper.stamp(9000, 0, 8, 3.0)
    assert stamper.stamp(None, 8, 8, 3.0).frame_index == 5  # a failed stamp used no index


# ---------------------------------------------------------------- reconnect loop
class _Container:
    closed = 0

    def close(self) -> None:
        _Container.closed += 1


def test_connection_backs_off_counts_stalls_and_ends_on_a_fatal_error() -> None:
    stop = threading.Event()
    states = StateMachine("x", "rtsp://h/x")
    stats = SourceStats()
    cfg = parse_live_config({"backoff": {"initial_s": 0.001, "max_s": 0.002}})
    conn = Connection(StreamSpec("x", "rtsp://u:secret@h/x"), cfg, states, stats, stop, random.Random(0))
    opens: list[Any] = [ConnectionRefusedError(), _Container(), _Container(), _Container()]

    def fake_open() -> Any:
        got = opens.pop(0)
        if isinstance(got, BaseException):
            raise got
        return got

    sessions: list[Any] = [Failure("stalled", stall=True), Failure("stream ended"),
                           FatalStreamError("the stream has no video track")]

    def read_session(container: Any) -> Failure | None:
        conn.connected()
        got = sessions.pop(0)
        if isinstance(got, BaseException):
            raise got
        return got

    conn.open = fake_open  # type: ignore[method-assign]
    _Container.closed = 0
    assert conn.run(read_session) is True  # fatal
    assert opens == [] and sessions == [] and _Container.closed == 3  # every opened container closed
    snap = stats.snapshot(id="x", uri="u", transport="tcp", mode="frames", state=states.state,
                          state_since=0.0)
    assert snap.reconnects == 3 and snap.stalls == 1
    assert snap.last_error == "the stream has no video track"
    seen = [s for _, s in states.history()]
    assert seen == [StreamState.CONNECTING, StreamState.RECONNECTING, StreamState.LIVE, StreamState.STALLED,
                    StreamState.RECONNECTING, StreamState.LIVE, StreamState.RECONNECTING, StreamState.LIVE]
    assert conn.backoff.attempt == 0  # reset by the last connection


def test_connection_stops_during_the_backoff_wait() -> None:
    stop = threading.Event()
    states = StateMachine("x", "rtsp://h/x")
    cfg = parse_live_config({"backoff": {"initial_s": 30, "max_s": 60}})
    conn = Connection(StreamSpec("x", "rtsp://h/x"), cfg, states, SourceStats(), stop)

    def refused() -> Any:
        raise ConnectionRefusedError()

    conn.open = refused  # type: ignore[method-assign]
    threading.Timer(0.05, stop.set).start()
    assert conn.run(lambda c: None) is False  # stopped, not failed
    assert states.state == StreamState.RECONNECTING


# ------------------------------------------------------------------- dropped frames
def test_drop_log_takes_and_clears_per_stream() -> None:
    log = DropLog()
    log.add("a", [5, 3])
    log.add_item("b", GopBuffer("b", b"", "h264", "h264", (_meta("b", 10), _meta("b", 11))))
    log.add_item("a", LiveFrame(_meta("a", 4), None))  # type: ignore[arg-type]
    log.add("c", [])
    assert log.take() == {"a": [3, 4, 5], "b": [10, 11]}
    assert log.take() == {}
    log.add("a", [1])
    log.forget("a")
    assert log.take() == {}


def test_batcher_hands_dropped_items_to_on_drop() -> None:
    dropped: list[tuple[str, int]] = []
    b: Batcher[int] = Batcher(queue_size=2, on_drop=lambda sid, item: dropped.append((sid, item)))
    q = b.add_stream("cam")
    for i in range(5):
        q.put(i)
    assert dropped == [("cam", 0), ("cam", 1), ("cam", 2)]
    assert b.next_batch(5, 0.0) == [3, 4]


def _manager(queue_size: int) -> tuple[StreamManager, dict[str, PushSource]]:
    made: dict[str, PushSource] = {}

    def factory(spec: StreamSpec, emit: Any) -> PushSource:
        made[spec.id] = PushSource(spec, emit)
        return made[spec.id]

    cfg = parse_live_config({"http": {"enabled": False}, "log_interval_s": 0,
                             "batch": {"queue_size": queue_size, "policy": "drop_oldest"}})
    return StreamManager(cfg, mode="frames", source_factory=factory), made


def test_take_dropped_reports_queue_source_and_skipped_drops_once() -> None:
    mgr, made = _manager(queue_size=3)
    with mgr:
        mgr.add_stream(StreamSpec("a", "rtsp://h/a"))
        mgr.add_stream(StreamSpec("b", "rtsp://h/b"))
        for i in range(8):
            assert made["a"].emit(LiveFrame(_meta("a", i), None))  # type: ignore[arg-type]
        gop = GopBuffer("b", b"", "h264", "h264", tuple(_meta("b", i) for i in range(4)))
        made["b"].emit(gop)
        for i in range(4, 7):
            made["b"].emit(LiveFrame(_meta("b", i), None))  # type: ignore[arg-type]
        made["b"].own_drops = [7, 8]  # e.g. dropped in an ingest process
        assert mgr.take_dropped() == {"a": [0, 1, 2, 3, 4], "b": [0, 1, 2, 3, 7, 8]}
        assert mgr.take_dropped() == {}  # cleared on read
        items = mgr.next_batch(10, 0.0)
        assert sorted((it.source_id, it.metas[0].frame_index) for it in items) == [
            ("a", 5), ("a", 6), ("a", 7), ("b", 4), ("b", 5), ("b", 6)]
        mgr.record_skipped([items[0].metas[0], _meta("gone", 1)])  # a batch that failed to decode
        assert mgr.take_dropped() == {items[0].source_id: [items[0].metas[0].frame_index]}
        assert mgr.stats("a").dropped == 5  # type: ignore[union-attr]  # the counters as before


def test_take_dropped_forgets_a_removed_stream_and_is_thread_safe() -> None:
    mgr, made = _manager(queue_size=1)
    with mgr:
        mgr.add_stream(StreamSpec("a", "rtsp://h/a"))
        mgr.add_stream(StreamSpec("b", "rtsp://h/b"))
        made["b"].emit(LiveFrame(_meta("b", 0), None))  # type: ignore[arg-type]
        made["b"].emit(LiveFrame(_meta("b", 1), None))  # type: ignore[arg-type]
        assert mgr.remove_stream("b")
        n = 2000
        got: list[int] = []

        def take() -> None:
            while len(got) < n - 1:
                got.extend(mgr.take_dropped().get("a", []))

        reader = threading.Thread(target=take)
        reader.start()
        for i in range(n):
            made["a"].emit(LiveFrame(_meta("a", i), None))  # type: ignore[arg-type]
        reader.join(10)
        assert sorted(got) == list(range(n - 1))  # each drop reported exactly once
        assert "b" not in mgr.take_dropped()


def test_a_removed_stream_is_told_once_and_its_id_is_not_reused() -> None:
    mgr, _ = _manager(queue_size=2)
    with mgr:
        mgr.add_stream(StreamSpec("a", "rtsp://h/a"))
        mgr.add_stream(StreamSpec("b", "rtsp://h/b"))
        assert mgr.take_removed() == []
        assert mgr.remove_stream("b")
        assert mgr.take_removed() == ["b"]
        assert mgr.take_removed() == []  # told once
        with pytest.raises(SourceError, match="removed earlier in this job"):
            mgr.add_stream(StreamSpec("b", "rtsp://h/b"))
        mgr.add_stream(StreamSpec("b2", "rtsp://h/b"))  # a new id is fine


def test_every_frame_index_is_delivered_or_reported_across_reconnects(tmp_path: Path) -> None:
    """A real source (a clip read twice: the end of the file is a reconnect) behind a queue
    of one: per stream, indices 0..n are each either handed out or reported dropped."""
    from tests.media import write_clip

    clip = write_clip(tmp_path / "c.mp4", frames=20, width=96, height=64, options={"g": "5", "bf": "0"})
    for mode in ("frames", "gop"):
        cfg = parse_live_config({"http": {"enabled": False}, "log_interval_s": 0, "decode": "cpu",
                                 "pace_files": False, "loop_files": False,
                                 "backoff": {"initial_s": 0.01, "max_s": 0.02},
                                 "batch": {"queue_size": 1, "policy": "drop_oldest"}})
        got: list[LiveItem] = []
        dropped: list[int] = []
        with StreamManager(cfg, mode=mode) as mgr:  # type: ignore[arg-type]
            mgr.add_stream(StreamSpec("a", f"file://{clip}"))
            deadline = time.monotonic() + 20
            sessions = 0
            while time.monotonic() < deadline and sessions < 4:
                now = mgr.stats("a").sessions  # type: ignore[union-attr]
                if now > sessions:  # one item per session read: the others are dropped
                    sessions = now
                    got += mgr.next_batch(1, 0.5)
                    dropped += mgr.take_dropped().get("a", [])
                time.sleep(0.002)
        dropped += mgr.take_dropped().get("a", [])
        delivered = [m.frame_index for it in got for m in it.metas]
        assert sessions >= 4 and len(got) >= 3, mode  # read again after each end of file
        assert max(it.session for it in got) >= 2, mode
        assert dropped, mode
        assert delivered == sorted(delivered), mode
        assert not set(delivered) & set(dropped) and len(set(dropped)) == len(dropped), mode  # once each
        upto = max(delivered) + 1  # later frames may still be queued, or dropped after the last take
        assert sorted(delivered + [i for i in dropped if i < upto]) == list(range(upto)), mode


# ------------------------------------------------------------------ config rename
def test_live_workers_is_read_as_inference_threads_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert LiveConfig().inference_threads == 2 and LiveConfig().workers == 2
    with caplog.at_level(logging.WARNING, logger="streams.live.config"):
        cfg = parse_live_config({"workers": 3})
    assert cfg.inference_threads == 3 and cfg.workers == 3
    assert any("live.inference_threads" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert parse_live_config({"inference_threads": 4}).inference_threads == 4
    with pytest.raises(ConfigError) as e:
        parse_live_config({"workers": 3, "inference_threads": 4})
    assert e.value.key == "live.workers" and "inference_threads" in e.value.reason
    with pytest.raises(ConfigError) as e:
        parse_live_config({"inference_threads": 0})
    assert e.value.key == "live.inference_threads"


# ------------------------------------------------------------------ HTTP decoupling
class _Control:
    """The least a StreamControl needs: no StreamManager behind the HTTP server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.added: list[StreamSpec] = []

    def add_stream(self, spec: StreamSpec) -> StreamStats:
        if spec.id == "taken":
            raise SourceError(spec.id, "a stream with this id already exists")
        self.added.append(spec)
        return StreamStats(spec.id, spec.uri, "tcp", "frames", StreamState.CONNECTING, 0.0)

    def remove_stream(self, stream_id: str) -> bool:
        return stream_id == "a"

    def stats(self, stream_id: str) -> StreamStats | None:
        return None

    def streams(self) -> list[StreamStats]:
        return [StreamStats("a", "rtsp://h/a", "tcp", "frames", StreamState.LIVE, 0.0)]

    def health(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "ok"}


def test_http_server_serves_any_stream_control() -> None:
    control = _Control()
    server = LiveHttpServer(control, port=0).start()
    try:
        with urllib.request.urlopen(server.url + "/streams", timeout=5) as r:
            assert [s["id"] for s in json.load(r)["streams"]] == ["a"]
        with urllib.request.urlopen(server.url + "/health", timeout=5) as r:
            assert json.load(r) == {"status": "ok"}
        body = json.dumps({"id": "n", "uri": "rtsp://h/n"}).encode()
        req = urllib.request.Request(server.url + "/streams", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 201 and [s.id for s in control.added] == ["n"]
        req = urllib.request.Request(server.url + "/streams/a", method="DELETE")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.load(r) == {"removed": "a"}
    finally:
        server.stop()


# ------------------------------------------------------------- ingest renumbering
def test_remote_frames_continue_after_an_ingest_process_restart() -> None:
    from pipelines.ingest import _Renumber

    r = _Renumber()
    first = [r.frame(_meta("a", i), 0) for i in range(3)]
    assert [(m.frame_index, m.pts, s) for m, s in first] == [(0, 0, 0), (1, 3000, 0), (2, 6000, 0)]
    assert r.index(3) == 3  # frame 3 dropped in the ingest process
    r.restart()  # the new process numbers from 0 again, pts and sessions restart too
    after = [r.frame(_meta("a", i), 0) for i in range(2)]
    assert [(m.frame_index, m.pts, s) for m, s in after] == [(4, 9000, 1), (5, 12000, 1)]
    assert r.index(2) == 6  # its drops are shifted the same way
    meta = replace(_meta("a", 0), pts=None)
    assert r.frame(meta, 1)[0].pts is None
