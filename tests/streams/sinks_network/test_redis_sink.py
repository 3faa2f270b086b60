"""The Redis Streams sink against Debian's redis-server (append-only file, so what it
acknowledged survives a SIGKILL): entries, trimming, an outage mid-job, credentials."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streams.errors import ConfigError, SinkError
from streams.sinks import SINKS
from tests.optional import require_module
from tests.servers.brokers import RedisProcess
from tests.servers.helpers import free_port
from tests.streams.sinks_network.helpers import OutageSwitch, exactly_once, make_sink, result, run_outage_job
from tests.streams.sinks_network.helpers import connected_and_delivering as _connected

redis = require_module("redis", "the redis extra: pip install 'fovea[redis]'")


def _raw(server: RedisProcess, tmp_path: Path, **options: object) -> dict[str, object]:
    return {"type": "redis", "url": f"redis://127.0.0.1:{server.port}/0", "path": str(tmp_path / "spool"),
            **options}


def _entries(client: object, stream: str) -> list[tuple[str, bytes]]:
    return [(f[b"key"].decode(), f[b"data"]) for _, f in client.xrange(stream)]  # type: ignore[attr-defined]


def test_config_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SINKS.parse({"type": "redis", "maxlen": None}, "sinks[0]").config
    assert cfg.maxlen is None and cfg.path == "fovea-out/redis-spool"
    monkeypatch.delenv("FOVEA_TEST_UNSET", raising=False)
    for bad, key in (({"url": "http://x"}, "sinks[0].url"), ({"url": "redis://u:pw@h/0"}, "sinks[0].url"),
                     ({"maxlen": 0}, "sinks[0].maxlen"), ({"detections_stream": "a:{cam}"},
                                                          "sinks[0].detections_stream"),
                     ({"spool_max_mb": 0}, "sinks[0].spool_max_mb"), ({"retry_min_s": 5, "retry_max_s": 1},
                                                                      "sinks[0].retry_min_s"),
                     ({"password_env": "FOVEA_TEST_UNSET"}, "sinks[0].password_env"),
                     ({"password_file": "/nonexistent/pw"}, "sinks[0].password_file"),
                     ({"batch_records": 0}, "sinks[0].batch_records"), ({"hostname": "x"}, "sinks[0].hostname")):
        with pytest.raises(ConfigError) as e:
            SINKS.parse({"type": "redis", **bad}, "sinks[0]")
        assert e.value.key == key, bad


def test_entries_carry_key_source_and_the_jsonl_record(redis_server: RedisProcess, tmp_path: Path) -> None:
    results = [result(f"cam{i % 2}", i, events=1 if i % 5 == 0 else 0) for i in range(40)]
    with make_sink(_raw(redis_server, tmp_path, detections_stream="fovea:{source}:detections")) as sink:
        sink.write(results[:20])
        sink.write(results[20:])
    h = sink.health()
    assert (h.delivered, h.spooled, h.dropped) == (48, 0, 0)
    assert not (tmp_path / "spool").exists()  # an empty spool leaves nothing behind
    client = redis.Redis(port=redis_server.port)
    cam0 = _entries(client, "fovea:cam0:detections")
    assert [k for k, _ in cam0] == [f"cam0|{i}|detections|0" for i in range(0, 40, 2)]  # in order
    events = client.xrange("fovea:events")
    assert len(events) == 8 and events[0][1][b"key"] == b"cam0|0|events|0" and events[0][1][b"source"] == b"cam0"


def test_maxlen_trims_approximately(redis_server: RedisProcess, tmp_path: Path) -> None:
    with make_sink(_raw(redis_server, tmp_path, maxlen=100)) as sink:
        for i in range(0, 1000, 50):
            sink.write([result("cam", j) for j in range(i, i + 50)])
    length = redis.Redis(port=redis_server.port).xlen("fovea:detections")
    assert 100 <= length < 1000  # MAXLEN ~: whole nodes go, so a little more than 100 stays


@pytest.mark.slow
def test_outage_mid_job_loses_nothing(redis_server: RedisProcess, outage_clip: Path, bright_model: Path,
                                      tmp_path: Path) -> None:
    sink = make_sink(_raw(redis_server, tmp_path, retry_min_s=0.1, retry_max_s=0.5))
    switch = OutageSwitch(kill=lambda: redis_server.kill() is None, restart=redis_server.start,
                          before_kill=lambda: _connected(sink))  # the kill hits a live connection
    summary, truth = run_outage_job(outage_clip, bright_model, tmp_path, sink, switch)
    assert summary.ok and switch.killed_at == 4 and switch.restarted_at == 10
    h = sink.health()
    assert h.disconnects >= 1 and h.spooled == 0 and h.dropped == 0, h
    got = _entries(redis.Redis(port=redis_server.port), "fovea:detections")
    duplicates = exactly_once(truth, got)
    print(f"redis outage: {len(truth)} records, {duplicates} duplicate(s) delivered, {h.resent} re-sent")
    assert duplicates <= h.resent


def test_password_comes_from_the_environment_and_is_never_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from tests.optional import skip_unless_present
    from tests.servers.brokers import redis_unavailable

    skip_unless_present(redis_unavailable())
    secret = "s3cret-Pa55-word"
    server = RedisProcess(password=secret)
    server.start()
    try:
        caplog.set_level(logging.DEBUG)
        monkeypatch.setenv("FOVEA_REDIS_PW", secret)
        with make_sink(_raw(server, tmp_path, password_env="FOVEA_REDIS_PW")) as sink:
            sink.write([result("cam", i) for i in range(5)])
        assert sink.health().delivered == 5
        monkeypatch.setenv("FOVEA_REDIS_PW", "wrong-" + secret)
        with pytest.raises(SinkError) as e, make_sink(_raw(server, tmp_path, password_env="FOVEA_REDIS_PW",
                                                           flush_timeout_s=0.5)) as bad:
            bad.write([result("cam", 9)])
        assert "5 record" not in str(e.value) and "1 record(s) not delivered" in str(e.value)
        assert bad.health().last_error is not None
        assert secret not in caplog.text and secret not in str(e.value) and secret not in repr(bad.config)
        assert "redis" in caplog.text  # the log is there: it just holds no password
    finally:
        server.close()


def test_spooled_records_of_an_earlier_job_go_first(redis_server: RedisProcess, tmp_path: Path) -> None:
    down = {"type": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "path": str(tmp_path / "spool"),
            "flush_timeout_s": 0.2}
    with pytest.raises(SinkError, match="3 record"), make_sink(down) as sink:
        sink.write([result("cam", i) for i in range(3)])
    assert (tmp_path / "spool").is_dir()
    with make_sink(_raw(redis_server, tmp_path)) as sink:
        sink.write([result("cam", 3)])
    keys = [k for k, _ in _entries(redis.Redis(port=redis_server.port), "fovea:detections")]
    assert keys == [f"cam|{i}|detections|0" for i in range(4)]
    assert not (tmp_path / "spool").exists()


def test_the_default_writer_delivers_from_a_process_of_its_own(redis_server: RedisProcess, tmp_path: Path) -> None:
    from streams.sinks.process import ProcessSink

    sink = SINKS.create(SINKS.parse(_raw(redis_server, tmp_path), "sinks[0]"))
    assert isinstance(sink, ProcessSink)  # writer: process, like the JSONL sink
    with sink:
        sink.write([result("cam", i, events=1) for i in range(30)])
    got = _entries(redis.Redis(port=redis_server.port), "fovea:detections")
    assert [k for k, _ in got] == [f"cam|{i}|detections|0" for i in range(30)]
    assert len(redis.Redis(port=redis_server.port).xrange("fovea:events")) == 30
