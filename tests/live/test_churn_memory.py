"""What a live job keeps of a stream once it is removed (issue 31: memory flat under churn),
and the cap on glibc's malloc arenas that keeps the job's RSS from creeping while reader
threads come and go (pipelines/live_memory.py; the soak, benchmarks/soak.py, measures it)."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.optional import require_module

require_module("prometheus_client", "the live extra")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from pipelines.live import LiveSummary, StreamSummary  # noqa: E402
from pipelines.live_memory import ENV  # noqa: E402
from streams.errors import ConfigError  # noqa: E402
from streams.events import Event  # noqa: E402
from streams.frames import FrameMeta  # noqa: E402
from streams.live.config import parse_live_config  # noqa: E402
from streams.live.manager import StreamManager  # noqa: E402
from streams.live.metrics import AnalyticsMetrics  # noqa: E402
from streams.live.stats import Reservoir  # noqa: E402
from streams.live.types import LiveFrame, StreamSpec  # noqa: E402
from tests.live.helpers import PushSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _meta(sid: str, i: int) -> FrameMeta:
    return FrameMeta(source_id=sid, uri=f"rtsp://h/{sid}", frame_index=i, pts=i, time_base=(1, 90000),
                     width=8, height=8, arrival_time=1.0)


def _manager(made: dict[str, PushSource], lingering: frozenset[str] = frozenset()) -> StreamManager:
    def factory(spec: StreamSpec, emit: Any) -> PushSource:
        made[spec.id] = PushSource(spec, emit, lingers=spec.id in lingering)
        return made[spec.id]

    cfg = parse_live_config({"http": {"enabled": False}, "log_interval_s": 0, "batch": {"queue_size": 4}})
    return StreamManager(cfg, mode="frames", source_factory=factory)


def _churn(mgr: StreamManager, made: dict[str, PushSource], first: int, n: int) -> None:
    """``n`` streams added, fed, emitted, dropped and removed, one after another."""
    for k in range(first, first + n):
        sid = f"churn{k:05d}"
        mgr.add_stream(StreamSpec(sid, f"rtsp://h/{sid}"))
        for i in range(6):  # queue_size 4: two dropped
            made[sid].emit(LiveFrame(_meta(sid, i), np.zeros((8, 8, 3), np.uint8), 0))
        mgr.record_emitted([it.metas[0] for it in mgr.next_batch(2, 0.0)])
        assert mgr.take_dropped() == {sid: [0, 1]}
        assert mgr.remove_stream(sid)
        del made[sid]


def test_a_removed_stream_leaves_next_to_nothing_in_the_manager() -> None:
    """Every per-stream structure (queue, drops, Prometheus series, source) goes with the
    stream; only its id stays (ids are not reused within a job): a few hundred bytes each."""
    made: dict[str, PushSource] = {}
    with _manager(made) as mgr:
        _churn(mgr, made, 0, 50)  # warm: first-time allocations, dict and set sizes
        tracemalloc.start()
        try:
            gc.collect()
            before = tracemalloc.take_snapshot()
            _churn(mgr, made, 50, 400)
            gc.collect()  # (cycles that would go at the next collection anyway)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        # the id, in the set of ids not to reuse: about 150 bytes; a stream's Prometheus series alone are 10 kB
        assert grown / 400 < 400, f"{grown / 400:.0f} bytes kept per removed stream"
        assert mgr.streams() == [] and mgr.batcher.stream_ids() == []
        text = generate_latest(mgr.registry).decode()
        assert "churn" not in text


def test_a_reader_thread_left_blocked_is_let_go_once_it_ends() -> None:
    made: dict[str, PushSource] = {}
    with _manager(made, lingering=frozenset({"a", "b"})) as mgr:
        mgr.add_stream(StreamSpec("a", "rtsp://h/a"))
        assert mgr.remove_stream("a", timeout=0.0)
        assert [s.id for s in mgr._retired] == ["a"]  # still blocked: stopped with the manager
        made["a"].alive = False  # its read timed out
        mgr.add_stream(StreamSpec("b", "rtsp://h/b"))
        assert mgr.remove_stream("b", timeout=0.0)
        assert [s.id for s in mgr._retired] == ["b"]  # without the monitor thread (log_interval_s: 0)


def test_analytics_series_of_a_removed_stream_go() -> None:
    registry = CollectorRegistry()
    m = AnalyticsMetrics(registry)
    for sid in ("gone", "kept"):
        m.record_events([
            Event("line_cross", sid, 1, 1, (1, 90000), 3, "car", {"line": "gate", "direction": "in"}),
            Event("zone_enter", sid, 2, 2, (1, 90000), 3, "car", {"zone": "lot"}),
        ])
    m.forget("gone")
    m.forget("never-seen")
    text = generate_latest(registry).decode()
    assert 'stream="gone"' not in text
    assert text.count('stream="kept"') == 5  # a crossing and a zone event (_total, _created), the occupancy


def test_a_removed_streams_summary_keeps_its_quantiles_in_little_memory() -> None:
    summary = LiveSummary()
    s = summary.streams["cam"] = StreamSummary()
    rng = np.random.default_rng(0)
    values = rng.exponential(0.05, 5000)
    for v in values:
        s.latencies.append(float(v))
    p95 = s.latency_quantile(0.95)
    assert p95 is not None and len(s.latencies) == 2048
    summary.removed("cam")
    assert summary.states["cam"] == "removed"
    assert len(s.latencies) == 64 and s.latencies._values.nbytes == 64 * 8
    assert s.latency_quantile(0.95) == pytest.approx(p95, rel=0.05)
    assert s.latency_quantile(0.0) == pytest.approx(float(np.min(s.latencies._values)))
    s.latencies.append(1.0)  # a frame still in flight when it was removed
    assert len(s.latencies) == 64


def test_a_short_reservoir_shrinks_to_what_it_holds_and_still_grows() -> None:
    r = Reservoir()
    r.shrink(8)
    assert len(r) == 0 and r.quantile(0.5) is None
    for v in (3.0, 1.0, 2.0):
        r.append(v)
    assert r.quantile(0.5) == 2.0
    r.shrink(8)
    assert len(r) == 3 and r.quantile(1.0) == 3.0
    for v in range(20):
        r.append(float(v))
    assert len(r) == 8
    with pytest.raises(ValueError):
        r.shrink(0)


def test_malloc_arenas_is_validated() -> None:
    assert parse_live_config(None).malloc_arenas == 2
    assert parse_live_config({"malloc_arenas": 0}).malloc_arenas == 0
    with pytest.raises(ConfigError) as e:
        parse_live_config({"malloc_arenas": -1})
    assert e.value.key == "live.malloc_arenas"


_ARENAS = textwrap.dedent("""
    import os, sys, threading
    from benchmarks.memwatch import Glibc
    from pipelines.live_memory import ENV, malloc_arenas

    n = int(sys.argv[1])
    held, barrier = [], threading.Barrier(24)

    def work():
        barrier.wait()  # all at once: each new thread takes an arena of its own while there is room
        held.append([bytearray(200_000) for _ in range(4)])

    with malloc_arenas(n):
        inside = os.environ.get(ENV)
        threads = [threading.Thread(target=work) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(Glibc().arenas(), inside, os.environ.get(ENV))
""")


def _arenas(n: int, env: dict[str, str] | None = None) -> list[str]:
    """In a fresh process: the arenas 24 threads made under ``malloc_arenas(n)``, and
    ``MALLOC_ARENA_MAX`` inside the block and after it."""
    env = {**{k: v for k, v in os.environ.items() if k not in (ENV, "GLIBC_TUNABLES")}, **(env or {})}
    out = subprocess.run([sys.executable, "-c", _ARENAS, str(n)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.split()[-3:]


@pytest.mark.skipif(not GLIBC, reason="malloc arenas are glibc's")
def test_the_cap_bounds_the_arenas_that_threads_create() -> None:
    arenas, inside, after = _arenas(0)
    assert int(arenas) > 4 and inside == after == "None"  # glibc's default: an arena per new thread, 8 per core
    arenas, inside, after = _arenas(2)
    assert int(arenas) <= 2
    assert inside == "2" and after == "None"  # the job's child processes get it; restored after
    arenas, inside, after = _arenas(2, {ENV: "3"})
    assert int(arenas) == 3 and inside == after == "3"  # the operator's environment wins
