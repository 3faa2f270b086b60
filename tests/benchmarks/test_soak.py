"""The soak runner (benchmarks/soak.py): its record checks and memory slope, and a short soak
of ``fovea live`` on the CPU (2.5 min: churn over HTTP, a killed and restarted camera
server, a camera frozen mid-GOP) that must pass every check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.soak import StreamCheck, check_records, render, slope_per_10min
from tests.models import save_bright_model
from tests.optional import skip_unless_present
from tests.servers.helpers import rtsp_unavailable

ROOT = Path(__file__).resolve().parents[2]


def test_slope_is_mib_per_ten_minutes() -> None:
    assert slope_per_10min([(t, 100.0 + t / 60) for t in range(0, 300, 5)]) == pytest.approx(10.0)
    assert slope_per_10min([(t, 50.0) for t in range(10)]) == pytest.approx(0.0)
    assert slope_per_10min([(0.0, 1.0), (1.0, 2.0)]) is None  # too few points


def test_record_checks_find_disorder_duplicates_and_uncounted_gaps(tmp_path: Path) -> None:
    rows = [("a", 0), ("a", 1), ("a", 2), ("b", 5), ("b", 7), ("b", 6), ("c", 0), ("c", 0), ("d", 0), ("d", 4)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"source": s, "frame_index": i}) + "\n" for s, i in rows))
    checks = check_records(path, {"d": 3})
    assert checks["a"] == StreamCheck(frames=3) and checks["a"].ok
    assert not checks["b"].ordered and not checks["b"].ok
    assert checks["c"].duplicates == 1 and not checks["c"].ok
    assert checks["d"].gaps == 3 and checks["d"].dropped == 3 and checks["d"].ok  # gaps counted as drops
    assert not StreamCheck(frames=5, gaps=2, dropped=1).ok


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="known open defect (issue 31): in the full CI run the short soak failed one "
                   "of its checks (session 15; the 1 h CPU soak's RSS slope is +3.14 MiB/10 min, over its target); "
                   "it passes on a quiet machine; the cause is being investigated, see benchmarks/RESULTS.md")
def test_short_cpu_soak_passes(tmp_path: Path) -> None:
    """2.5 minutes: the CI version of the 1 h CPU soak (benchmarks/RESULTS.md has the long runs).

    The job runs with ``MALLOC_ARENA_MAX=2``: with glibc's default (up to 8 arenas per core)
    its RSS grows for minutes while reader threads come and go and each new arena is touched,
    which 100 s of samples cannot tell from a leak; with two it is flat, so a bound of
    10 MiB per 10 min catches a leak of a few hundred bytes per frame."""
    skip_unless_present(rtsp_unavailable())
    model = save_bright_model(tmp_path / "bright.pt")
    out = tmp_path / "soak"
    cmd = [sys.executable, "-m", "benchmarks.soak", "--duration", "150", "--cameras", "4", "--size", "160x120",
           "--fps", "10", "--gop", "10", "--model", str(model), "--input-size", "128", "--batch", "8",
           "--churn-every", "15", "--churn-life", "10", "--kill-every", "45", "--down-s", "4",
           "--stall-every", "60", "--stall-s", "6", "--sample-s", "2", "--warmup-s", "45",
           "--max-slope", "10", "--malloc-arenas", "2", "--check", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420)
    report = json.loads((out / "soak.json").read_text())
    assert proc.returncode == 0, (report["ok"], proc.stdout[-2000:], proc.stderr[-2000:])
    assert report["passed"] and report["exit_code"] == 0
    assert report["churned"] >= 6 and report["churn_errors"] == []
    kills = [r for r in report["recoveries"] if r["kind"] == "kill"]
    stalls = [r for r in report["recoveries"] if r["kind"] == "stall"]
    assert len(kills) >= 2 and len(stalls) >= 1 and all(r["ok"] for r in report["recoveries"])
    streams = report["streams"]
    assert {"cam00", "flaky00", "stall00"} <= set(streams)
    assert sum(1 for s in streams if s.startswith("churn")) >= 6
    assert all(s["ok"] for s in streams.values())
    assert report["rss_slope_mib_per_10min"] is not None and len(report["samples"]) >= 60
    assert "PASS" in render(report) and "PASS" in proc.stdout
