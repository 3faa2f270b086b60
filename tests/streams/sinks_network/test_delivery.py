"""The delivery contract shared by the network sinks: the on-disk spool (order, size limit,
recovery, one user at a time), never blocking the job beyond ``flush_timeout_s`` when the
broker is unreachable or silent, a job whose records were not all delivered failing with
the count and the spool's place; and the SQLite sink (a file next to the other outputs)."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main
from streams.config import apply_overrides, load_config
from streams.errors import SinkError
from streams.sinks import SINKS
from streams.sinks.spool import OutRecord, Spool
from tests.servers.helpers import free_port
from tests.streams.sinks_network.conftest import OUTAGE_FRAMES
from tests.streams.sinks_network.helpers import make_sink, result

DOCS = Path(__file__).resolve().parents[3] / "docs" / "sinks.md"


def _records(start: int, n: int, size: int = 100) -> list[OutRecord]:
    return [OutRecord("detections", "cam|1", i, 0, bytes([i % 256]) * size) for i in range(start, start + n)]


def _drain(spool: Spool) -> list[int]:
    out = []
    while spool.depth:
        first, batch = spool.peek(7)
        out += [r.frame_index for r in batch]
        spool.commit(first, len(batch))
    return out


def test_spool_keeps_order_across_reopen_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20, cache_bytes=500).open()  # a small cache: reads from disk
    spool.append(_records(0, 50))
    first, batch = spool.peek(10)
    assert first == 0 and [r.frame_index for r in batch] == list(range(10))
    spool.commit(first, 10)
    spool.close()
    segment = sorted((tmp_path / "s").glob("*.seg"))[-1]
    with open(segment, "ab") as fh:
        fh.write(b"\x40\x00\x00\x00torn")  # the job died mid-append
    spool = Spool(tmp_path / "s", max_bytes=1 << 20).open()
    assert (spool.head, spool.depth) == (10, 40)
    _, [r] = spool.peek(1)
    assert r == _records(10, 1)[0] and r.key == "cam|1|10|detections|0"
    spool.append(_records(50, 5))
    assert _drain(spool) == list(range(10, 55))
    spool.close()
    assert not (tmp_path / "s").exists()  # delivered everything: nothing left behind


def test_spool_limit_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=20_000).open()
    dropped = spool.append(_records(0, 100))  # ~12.6 kB
    assert dropped == 0 and spool.depth == 100
    dropped = spool.append(_records(100, 200))  # ~38 kB in all: the oldest segments go
    assert dropped > 0 and dropped == spool.dropped
    assert spool.size_bytes <= 20_000 and spool.depth == 300 - dropped
    kept = _drain(spool)
    assert kept == list(range(300 - len(kept), 300))  # the newest stay, in order
    spool.close()


def test_a_record_delivered_while_the_limit_dropped_it_is_not_counted_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=5_000).open()
    spool.append(_records(0, 10))
    first, batch = spool.peek(10)  # in flight ...
    spool.append(_records(10, 60))  # ... while the limit drops them
    lost = spool.dropped
    assert lost >= 10
    assert spool.commit(first, len(batch)) == 10  # ... and then the broker acknowledges them
    assert spool.dropped == lost - 10
    spool.close()


def test_two_sinks_cannot_share_a_spool(tmp_path: Path) -> None:
    raw = {"type": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "path": str(tmp_path / "spool"),
           "flush_timeout_s": 0}
    first = make_sink(raw)
    with pytest.raises(SinkError, match="in use"), first, make_sink(raw):
        pass


@pytest.fixture
def silent_broker() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a hung broker)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


@pytest.mark.parametrize("sink_type", ["kafka", "redis", "postgres", "mqtt"])
def test_a_silent_broker_never_blocks_beyond_the_bound(sink_type: str, silent_broker: int, tmp_path: Path) -> None:
    """write() returns at once; leaving the block waits flush_timeout_s (+1 s grace for a client
    call in progress), not the clients' 5 s timeouts; the records stay in the spool."""
    where = {"kafka": {"bootstrap_servers": f"127.0.0.1:{silent_broker}"},
             "redis": {"url": f"redis://127.0.0.1:{silent_broker}/0"},
             "postgres": {"dsn": f"postgresql://u@127.0.0.1:{silent_broker}/db"},
             "mqtt": {"port": silent_broker}}[sink_type]
    sink = make_sink({"type": sink_type, **where, "path": str(tmp_path / "spool"), "flush_timeout_s": 0.5,
                      "send_timeout_s": 5})
    with pytest.raises(SinkError) as e, sink:
        start = time.monotonic()
        for i in range(0, 200, 20):
            sink.write([result("cam", j) for j in range(i, i + 20)])
        writing = time.monotonic() - start
        closing = time.monotonic()
    closing = time.monotonic() - closing
    assert writing < 2.0 and closing < 0.5 + 1.0 + 1.0, (writing, closing)  # the bound, with slack for this CPU
    assert "200 record(s) not delivered" in str(e.value) and str(tmp_path / "spool") in str(e.value)
    assert sink.health().spooled == 200 and not sink.health().connected


def test_an_unreachable_broker_fails_the_job_with_the_spool_and_its_count(
        outage_clip: Path, bright_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``fovea run`` with Redis down from the start: the job runs to its end, the records (the
    frames' and the source's summary) wait in the spool (in --out, like the file sinks'
    outputs), and the exit code is 1."""
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [str(outage_clip)], "model": {"path": str(bright_model), "input_size": [96, 160]},
        "sinks": [{"type": "jsonl", "path": "detections.jsonl"},
                  {"type": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "path": "redis-spool",
                   "flush_timeout_s": 0.5}]}))
    code = main(["run", str(config), "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    assert code == 1
    spool = tmp_path / "out" / "redis-spool"
    err = capsys.readouterr().err
    assert f"{OUTAGE_FRAMES + 1} record(s) not delivered" in err and str(spool) in err
    assert len((tmp_path / "out" / "detections.jsonl").read_text().splitlines()) == OUTAGE_FRAMES
    s = Spool(spool, max_bytes=1 << 30).open()
    assert s.depth == OUTAGE_FRAMES + 1
    _, records = s.peek(OUTAGE_FRAMES + 1)
    assert records[-1].key == "cam1.mp4|-1|summary|0"  # after the source's frames
    s.close()


def test_the_spool_limit_is_reported(tmp_path: Path) -> None:
    raw = {"type": "kafka", "bootstrap_servers": f"127.0.0.1:{free_port()}", "path": str(tmp_path / "spool"),
           "spool_max_mb": 0.02, "flush_timeout_s": 0}
    with pytest.raises(SinkError) as e, make_sink(raw) as sink:
        for i in range(0, 400, 40):
            sink.write([result("cam", j) for j in range(i, i + 40)])
    h = sink.health()
    assert h.dropped > 0 and h.spooled + h.dropped == 400 and h.spool_bytes <= 0.02 * (1 << 20)
    assert f"{h.dropped} record(s) were dropped at the spool's limit" in str(e.value)


def test_sqlite_file_next_to_the_outputs(outage_clip: Path, bright_model: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare ``{type: sqlite}`` (no path) goes into --out too; the job's end adds the summaries."""
    monkeypatch.chdir(tmp_path)  # where the default path (fovea-out/detections.sqlite) would be
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [str(outage_clip)], "model": {"path": str(bright_model), "input_size": [96, 160]},
        "sinks": [{"type": "jsonl", "path": "detections.jsonl"}, {"type": "sqlite"}]}))
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert not (tmp_path / "fovea-out").exists()
    db = sqlite3.connect(out / "detections.sqlite")  # moved into --out like the JSONL
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"fovea_frames", "fovea_detections", "fovea_events", "fovea_summaries"}
    for table in tables:
        [index] = db.execute(f"PRAGMA index_list({table})").fetchall()
        assert [r[2] for r in db.execute(f"PRAGMA index_info({index[1]})")] == (
            ["source"] if table == "fovea_summaries" else ["source", "frame_index"])
    lines = (out / "detections.jsonl").read_text().splitlines()
    per_source = db.execute("SELECT f.source, count(*) AS frames, sum(f.detections) AS detections "
                            "FROM fovea_frames f GROUP BY f.source ORDER BY f.source").fetchall()
    records = [json.loads(x) for x in lines]
    assert per_source == [("cam1.mp4", len(records), sum(len(r["detections"]) for r in records))]
    assert db.execute("SELECT count(*) FROM fovea_detections").fetchone() == (per_source[0][2],)
    summaries = db.execute("SELECT source, frames, detections, stages FROM fovea_summaries").fetchall()
    assert summaries == [(*per_source[0], "{}")]  # no per-source stage: counts only


def test_out_moves_the_sinks_without_a_path(tmp_path: Path) -> None:
    raw = apply_overrides({"sinks": [{"type": "sqlite"}, {"type": "kafka", "writer": "inline"},
                                     {"type": "redis", "path": "a/b/spool"}, {"type": "nope"}]},
                          {"out": str(tmp_path)})
    assert [s.get("path") for s in raw["sinks"]] == [str(tmp_path / "detections.sqlite"),
                                                     str(tmp_path / "kafka-spool"), str(tmp_path / "spool"), None]
    cfg = load_config(None, {"sources": ["a.mp4"], "out": str(tmp_path / "o")})  # the default sinks
    assert [s.config.path for s in cfg.sinks] == [str(tmp_path / "o" / "detections.jsonl"),
                                                  str(tmp_path / "o" / "detections.csv")]


def test_the_documented_sink_configs_parse() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    sinks = [s for b in blocks for s in (yaml.safe_load(b) or {}).get("sinks", [])]
    assert {s["type"] for s in sinks} >= {"kafka", "redis", "postgres", "mqtt", "sqlite"}
    for i, raw in enumerate(sinks):
        raw = {k: v for k, v in raw.items() if k not in ("password_env", "password_file")}
        SINKS.parse(raw, f"sinks[{i}]")
