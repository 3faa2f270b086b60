"""The sink process (``writer: process``): same output as inline, errors surface, nothing lost,
a network sink's health reaches the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from streams.detections import Detections
from streams.errors import SinkError
from streams.events import Event
from streams.frames import FrameMeta, FrameResult
from streams.sinks import SINKS
from streams.sinks.process import ProcessSink, decode_results, encode_results

NAMES = tuple(f"class {i}" for i in range(80))


def _batch(k: int, n: int = 16, seed: int = 0, tracked: bool = False) -> list[FrameResult]:
    """``tracked``: track ids (some -1; frame 7 of each batch has none), attributes on frame 2's
    detections, events on frames 1 (two), 3 (pts None) and 9."""
    rng = np.random.default_rng(seed + k)
    out = []
    for i in range(n):
        m = int(rng.integers(0, 30)) if i % 5 else 0  # every fifth frame has no detections
        d = Detections(rng.uniform(0, 1900, (m, 4)).astype(np.float32), rng.uniform(0, 1, m).astype(np.float32),
                       rng.integers(0, 90, m), NAMES)  # ids past the names: labelled by number
        pts = None if i == 3 else (k * n + i) * 512
        meta = FrameMeta(f"src{k % 2}", f"/v/é {k % 2}.mp4", k * n + i, pts, (1, 12800), 1920, 1080,
                         arrival_time=1.5 * i if k % 2 else None)
        events: tuple[Event, ...] = ()
        if tracked:
            if i != 7:
                d = d.with_tracks(rng.integers(-1, 50, m))
            if i == 2:
                d = Detections(d.xyxy, d.confidence, d.class_id, d.class_names, d.track_id,
                               tuple({"colour": ["red", 0.5 + j / 100]} if j % 2 else {} for j in range(m)))
            if i in (1, 3, 9):
                events = (Event("line_cross", meta.source_id, meta.frame_index, pts, meta.time_base, 3, "car",
                                {"line": "gate é", "direction": "in" if i % 2 else "out"}),)
            if i == 1:
                events += (Event("zone_exit", meta.source_id, meta.frame_index, pts, meta.time_base, 4, "person",
                                 {"zone": "lot", "dwell_s": 1.25, "reason": "lost", "last_seen_frame": 3}),)
        out.append(FrameResult(meta, d, events))
    return out


def _sink(kind: str, path: Path, writer: str) -> object:
    return SINKS.create(SINKS.parse({"type": kind, "path": str(path), "writer": writer}, "sinks[0]"))


@pytest.mark.parametrize("tracked", [False, True])
def test_encode_decode_round_trip(tracked: bool) -> None:
    results = _batch(1, tracked=tracked)
    back = decode_results(encode_results(results))
    assert [r.frame for r in back] == [r.frame for r in results]
    assert [r.events for r in back] == [r.events for r in results]
    for a, b in zip(back, results, strict=True):
        np.testing.assert_array_equal(a.detections.xyxy, b.detections.xyxy)
        np.testing.assert_array_equal(a.detections.confidence, b.detections.confidence)
        np.testing.assert_array_equal(a.detections.class_id, b.detections.class_id)
        assert a.detections.class_names == NAMES
        assert (a.detections.track_id is None) == (b.detections.track_id is None)
        if b.detections.track_id is not None:
            np.testing.assert_array_equal(a.detections.track_id, b.detections.track_id)
        assert a.detections.attributes == b.detections.attributes
    if tracked:  # what the checks above compared
        assert sum(len(r.events) for r in back) == 4 and back[1].events[1].data["last_seen_frame"] == 3
        assert back[7].detections.track_id is None and back[8].detections.track_id is not None
        assert back[2].detections.attributes is not None and back[3].detections.attributes is None
    assert decode_results(encode_results([])) == []


@pytest.mark.parametrize("tracked", [False, True])
@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_process_writer_output_equals_inline(tmp_path: Path, kind: str, tracked: bool) -> None:
    batches = [_batch(k, tracked=tracked) for k in range(12)]
    for writer in ("inline", "process"):
        with _sink(kind, tmp_path / f"{writer}.{kind}", writer) as sink:  # type: ignore[attr-defined]
            for b in batches:
                sink.write(b)
    inline = (tmp_path / f"inline.{kind}").read_bytes()
    assert (tmp_path / f"process.{kind}").read_bytes() == inline
    events = tmp_path / "inline.events.csv"
    if kind == "jsonl":
        lines = [json.loads(x) for x in inline.splitlines()]
        assert len(lines) == 12 * 16 + (12 * 4 if tracked else 0)
        assert [x["pts"] for x in lines if "event" not in x][3] is None
        assert any("track_id" in d for x in lines if "event" not in x for d in x["detections"]) is tracked
    elif tracked:
        assert (tmp_path / "process.events.csv").read_bytes() == events.read_bytes()
        assert len(events.read_text().splitlines()) == 1 + 12 * 4
    else:
        assert not events.exists() and not (tmp_path / "process.events.csv").exists()


def test_a_network_sinks_health_reaches_the_job(tmp_path: Path) -> None:
    """Redis unreachable (nothing listens on the port): the process's sink keeps the records in
    its spool, and the job sees that while it runs and after the sink closed."""
    from tests.optional import require_module
    from tests.servers.helpers import free_port

    require_module("redis", "the redis extra: pip install 'fovea[redis]'")
    sink = SINKS.create(SINKS.parse({"type": "redis", "url": f"redis://127.0.0.1:{free_port()}/0",
                                     "path": str(tmp_path / "spool"), "flush_timeout_s": 0}, "sinks[0]"))
    assert isinstance(sink, ProcessSink)
    with pytest.raises(SinkError, match="32 record"), sink:
        sink.write(_batch(0))
        sink.write(_batch(1))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and ((h := sink.health()) is None or h.last_error is None):
            time.sleep(0.05)
        h = sink.health()
        assert h is not None and h.last_error is not None and not h.connected, h
        assert (h.sink, h.spooled, h.delivered, h.spool) == ("redis", 32, 0, str(tmp_path / "spool"))
    h = sink.health()
    assert h is not None and (h.spooled, h.delivered) == (32, 0) and h.spool_bytes > 0


def test_default_writer_is_the_process() -> None:
    sink = SINKS.create(SINKS.parse({"type": "jsonl", "path": "x.jsonl"}, "sinks[0]"))
    assert isinstance(sink, ProcessSink)


def test_unwritable_path_fails_at_enter_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SinkError, match=r"cannot open .*file/out\.jsonl"), \
            _sink("jsonl", blocker / "out.jsonl", "process"):  # type: ignore[attr-defined]
        pass


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_write_error_in_the_process_reaches_the_job() -> None:
    with pytest.raises(SinkError, match="cannot write /dev/full"):  # noqa: SIM117
        with _sink("jsonl", Path("/dev/full"), "process") as sink:  # type: ignore[attr-defined]
            for k in range(50):
                sink.write(_batch(k))
                time.sleep(0.01)


def test_a_killed_sink_process_is_an_error_not_a_hang(tmp_path: Path) -> None:
    sink = _sink("jsonl", tmp_path / "out.jsonl", "process")
    assert isinstance(sink, ProcessSink)
    with pytest.raises(SinkError, match="exited"), sink:
        sink.write(_batch(0))
        assert sink._process is not None
        os.kill(sink._process.pid, signal.SIGKILL)
        sink._process.wait(10)
        t = time.monotonic()
        for k in range(1, 100):  # the pipe breaks at once: no write waits on a dead reader
            sink.write(_batch(k, n=64))
    assert time.monotonic() - t < 10


def test_records_sent_before_the_job_dies_are_written(tmp_path: Path) -> None:
    """The job's process exits abruptly (no close) after 5 batches: the sink process still
    writes all 80 records, whole lines. The script has no ``__main__`` guard on purpose."""
    out = tmp_path / "out.jsonl"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_process_sink import _batch, _sink
        sink = _sink("jsonl", __import__("pathlib").Path({str(out)!r}), "process").__enter__()
        for k in range(5):
            sink.write(_batch(k))
        os._exit(0)
    """))
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 80):
        time.sleep(0.05)
    lines = out.read_text().splitlines()
    assert len(lines) == 80
    assert [json.loads(x)["frame_index"] for x in lines] == list(range(80))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_to_the_group_does_not_lose_records(tmp_path: Path, sig: int) -> None:
    """A terminal's Ctrl-C (or a service manager's SIGTERM) reaches the sink process too: it
    keeps going, and the job's close still gets every record written."""
    out = tmp_path / "out.jsonl"
    sink = _sink("jsonl", out, "process")
    assert isinstance(sink, ProcessSink)
    with sink:
        sink.write(_batch(0))
        assert sink._process is not None
        os.kill(sink._process.pid, sig)
        time.sleep(0.3)
        for k in range(1, 5):
            sink.write(_batch(k))
    assert len(out.read_text().splitlines()) == 5 * 16


def test_masks_and_keypoints_travel_to_the_sink_process() -> None:
    """A segmentation/pose model's masks and keypoints reach a sink in its own process (the
    default writer) unchanged; frames without them stay without."""
    import numpy as np

    from streams.detections import Detections, InstanceMask
    from streams.frames import FrameMeta, FrameResult
    from streams.sinks.process import decode_results, encode_results

    mask = InstanceMask(1, 2, np.eye(3, 4, dtype=bool), (10, 12))
    kps = np.arange(17 * 3, dtype=np.float32).reshape(1, 17, 3)
    d = Detections(np.array([[1, 2, 5, 5]], np.float32), np.array([0.9], np.float32), np.array([0]), ("a",),
                   masks=(mask,), keypoints=kps)
    sent = [FrameResult(FrameMeta("s", "s", 0, 0, (1, 25), 12, 10), d),
            FrameResult(FrameMeta("s", "s", 1, 1, (1, 25), 12, 10), Detections.empty(("a",)))]
    got = decode_results(encode_results(sent))
    assert got[0].detections.masks is not None and got[0].detections.masks[0].to_rle() == mask.to_rle()
    np.testing.assert_array_equal(got[0].detections.keypoints, kps)  # type: ignore[arg-type]
    assert got[1].detections.masks is None and got[1].detections.keypoints is None
