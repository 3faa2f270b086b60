"""benchmarks/memwatch.py: the samples of a process's heaps, the tracemalloc diff, and the
soak's slopes of them (benchmarks/soak.py --memwatch)."""

from __future__ import annotations

import json
import platform
import time
import tracemalloc
from pathlib import Path

import pytest

from benchmarks.memwatch import Glibc, Watcher, diff_snapshots
from benchmarks.soak import heap_slopes

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallinfo2 and malloc_info are glibc's")
def test_glibc_figures_follow_an_allocation() -> None:
    g = Glibc()
    before = g.mallinfo()
    assert before is not None and before["arenas"] is not None and before["arenas"] >= 1
    held = [bytearray(64 * 1024) for _ in range(64)]  # 4 MiB in blocks below the mmap threshold
    after = g.mallinfo()
    assert after is not None and after["in_use"] - before["in_use"] >= 3.5
    del held
    g.trim()


def test_the_watcher_samples_until_the_end_and_marks_the_last(tmp_path: Path) -> None:
    log = tmp_path / "mem.jsonl"
    with Watcher(log, every_s=0.05):
        time.sleep(0.3)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) >= 3 and rows[-1].get("final") is True and not any(r.get("final") for r in rows[:-1])
    assert all(r["rss_mib"] > 0 and r["threads"] >= 1 for r in rows)
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)


def _grow(blocks: list[bytes]) -> None:
    blocks.extend(bytes(10_000) for _ in range(100))  # about 1 MB kept


def test_the_diff_names_the_line_that_grew(tmp_path: Path) -> None:
    tracemalloc.start(4)
    try:
        blocks: list[bytes] = []
        tracemalloc.take_snapshot().dump(str(tmp_path / "a.tm"))
        _grow(blocks)
        tracemalloc.take_snapshot().dump(str(tmp_path / "b.tm"))
    finally:
        tracemalloc.stop()
    lines = diff_snapshots(tmp_path / "a.tm", tmp_path / "b.tm", top=3)
    assert lines[0].startswith("total +0.9") or lines[0].startswith("total +1.0"), lines[0]
    assert "+100 blocks" in lines[1] and f"{__file__}:" in "\n".join(lines[2:8])


def test_the_soaks_heap_slopes_leave_out_the_warm_up_and_the_final_sample(tmp_path: Path) -> None:
    rows = [{"t": t, "rss_mib": 100 + t / 60, "threads": 20, "malloc": {"in_use": 50.0, "free": 5 + t / 600}}
            for t in range(0, 300, 5)]
    rows[0]["rss_mib"] = 10.0  # before the job was up: in the warm-up
    rows.append({"t": 301, "rss_mib": 20.0, "threads": 3, "malloc": {"in_use": 1.0, "free": 0.0}, "final": True})
    path = tmp_path / "mem.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    slopes = heap_slopes(path, warmup_s=30)
    assert slopes is not None
    assert slopes["rss"]["slope_per_10min"] == pytest.approx(10.0)
    assert slopes["malloc_free"]["slope_per_10min"] == pytest.approx(1.0)
    assert slopes["malloc_in_use"]["slope_per_10min"] == pytest.approx(0.0)
    assert slopes["threads"]["last"] == 20 and "python" not in slopes
    assert heap_slopes(tmp_path / "missing.jsonl", 30) is None
