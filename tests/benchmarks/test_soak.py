"""The soak runner (benchmarks/soak.py): its record checks and memory slope, and a short soak
of ``fovea live`` on the CPU (2.5 min: churn over HTTP, a killed and restarted camera
server, a camera frozen mid-GOP) that must pass every check."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.soak import (
    API_LINE,
    NOT_YET,
    Recovery,
    Soak,
    StreamCheck,
    check_records,
    render,
    slope_per_10min,
    track_streams,
)
from tests.models import save_bright_model
from tests.optional import require_module, skip_unless_present
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


def test_a_recovery_is_timed_by_the_jobs_own_transition_not_by_the_poll() -> None:
    soak = Soak()
    kill = Recovery("kill", "cam", down_at=100.0, back_at=110.0, bound_s=5.0)
    down = Recovery("kill", "other", down_at=100.0, back_at=NOT_YET, bound_s=5.0)  # its server not back yet
    soak.recoveries += [kill, down]
    states = {"cam": {"state": "reconnecting", "frames": 50, "state_since": 101.0, "dropped": 2},
              "other": {"state": "live", "frames": 9, "state_since": 90.0}}
    track_streams(soak, states, 111.0)
    assert kill.frames_back == 50 and kill.live_at is None and soak.dropped == {"cam": 2, "other": 0}
    states["cam"] = {"state": "live", "frames": 60, "state_since": 112.5}
    track_streams(soak, states, 130.0)  # polled late (a loaded machine): the job went live at 112.5
    assert kill.live_at == 112.5 and kill.seconds == pytest.approx(2.5) and kill.ok
    assert down.frames_back is None and down.live_at is None and not down.ok
    # a stall the job never noticed (live since before it, the backlog arrived): the poll that saw frames again
    stall = Recovery("stall", "st", down_at=200.0, back_at=206.0, bound_s=5.0)
    soak.recoveries.append(stall)
    track_streams(soak, {"st": {"state": "live", "frames": 10, "state_since": 50.0}}, 207.0)
    track_streams(soak, {"st": {"state": "live", "frames": 20, "state_since": 50.0}}, 212.0)
    assert stall.live_at == 212.0 and stall.seconds == pytest.approx(6.0) and not stall.ok


def test_the_soak_finds_the_jobs_api_port_in_its_log(caplog: pytest.LogCaptureFixture) -> None:
    """The job binds a free port itself (``port: 0``) and logs it; the soak reads it from there."""
    require_module("prometheus_client", "the live extra")
    from streams.live.http import LiveHttpServer

    caplog.set_level(logging.INFO, logger="streams.live.http")
    server = LiveHttpServer(object(), port=0).start()  # type: ignore[arg-type]  # (no request made)
    try:
        found = API_LINE.search(caplog.text)
        assert found is not None and int(found.group(1)) == server.port != 0
    finally:
        server.stop()


@pytest.mark.slow
def test_short_cpu_soak_passes(tmp_path: Path) -> None:
    """2.5 minutes: the CI version of the 1 h CPU soak (benchmarks/RESULTS.md has the long runs).

    Robust to a loaded machine: the soak's clock starts when the job's API answers (a job
    slow to start is not churned or sampled before it runs), it samples on a fixed schedule
    from a thread of its own, times each recovery by the job's own transition to ``live``, and
    the job picks its API port itself. Memory: the job's malloc arenas are capped (its
    default, ``live.malloc_arenas: 2``) and ``malloc_trim`` runs before each sample
    (``--trim-every``), so the RSS slope measures memory held, not the allocator settling
    its high-water marks (steps of 1-2 MiB, which 100 s of samples cannot tell from a leak;
    the 1 h soak measures the untrimmed RSS). The bound, 10 MiB per 10 min, is about 440
    bytes kept per frame at the test's 40 frames/s."""
    skip_unless_present(rtsp_unavailable())
    model = save_bright_model(tmp_path / "bright.pt")
    out = tmp_path / "soak"
    cmd = [sys.executable, "-m", "benchmarks.soak", "--duration", "150", "--cameras", "4", "--size", "160x120",
           "--fps", "10", "--gop", "10", "--model", str(model), "--input-size", "128", "--batch", "8",
           "--churn-every", "15", "--churn-life", "10", "--kill-every", "45", "--down-s", "4",
           "--stall-every", "60", "--stall-s", "6", "--sample-s", "2", "--warmup-s", "45",
           "--max-slope", "10", "--memwatch", "--trim-every", "2", "--check", "--out", str(out)]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: the soak stops the job and its camera servers (no leftovers)
            stdout, stderr = proc.communicate(timeout=60)
            pytest.fail(f"the soak ran past 600 s:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    assert (out / "soak.json").exists(), (proc.returncode, stdout[-2000:], stderr[-3000:])
    report = json.loads((out / "soak.json").read_text())
    assert proc.returncode == 0, (report["ok"], stdout[-3000:], stderr[-2000:])
    assert report["passed"] and report["exit_code"] == 0 and report["not_ready"] is None
    assert report["churned"] >= 6 and report["churn_errors"] == []
    kills = [r for r in report["recoveries"] if r["kind"] == "kill"]
    stalls = [r for r in report["recoveries"] if r["kind"] == "stall"]
    assert len(kills) >= 2 and len(stalls) >= 1 and all(r["ok"] for r in report["recoveries"])
    streams = report["streams"]
    assert {"cam00", "flaky00", "stall00"} <= set(streams)
    assert sum(1 for s in streams if s.startswith("churn")) >= 6
    assert all(s["ok"] for s in streams.values())
    assert report["rss_slope_mib_per_10min"] is not None and len(report["samples"]) >= 60  # of 74 scheduled
    assert report["heaps"]["malloc_arenas"]["last"] <= 2  # the cap is on by default
    assert "PASS" in render(report) and "PASS" in stdout
