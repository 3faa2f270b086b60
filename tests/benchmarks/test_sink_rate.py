"""benchmarks/sink_rate.py runs as docs/sinks.md shows (small sizes): both modes print their
table and exit 0; a sink that cannot deliver fails the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.sink_rate import main
from tests.media import write_clip
from tests.optional import require_module, skip_unless_present
from tests.servers.brokers import redis_unavailable
from tests.servers.helpers import free_port

require_module("redis", "the redis extra: pip install 'fovea[redis]'")


def test_rate_measures_each_sink(capsys: pytest.CaptureFixture[str]) -> None:
    skip_unless_present(redis_unavailable())
    assert main(["rate", "--start-brokers", "--sinks", "jsonl,sqlite,redis", "--frames", "300"]) == 0
    out = capsys.readouterr().out
    for sink in ("jsonl", "sqlite", "redis"):
        assert f"| {sink} | " in out and "failed" not in out


def test_rate_reports_a_sink_that_cannot_deliver(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rate", "--sinks", "redis", "--redis", f"redis://127.0.0.1:{free_port()}/0", "--frames", "50",
                 "--flush-timeout-s", "0.5"])
    assert code == 1 and "| redis | failed:" in capsys.readouterr().out


@pytest.mark.slow
def test_e2e_compares_a_sink_with_jsonl(tmp_path: Path, bright_model: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    skip_unless_present(redis_unavailable())
    clip = write_clip(tmp_path / "c.mp4", frames=24, width=160, height=96)
    assert main(["e2e", "--source", str(clip), "--device", "cpu", "--model", str(bright_model), "--sinks", "redis",
                 "--reps", "1", "--batch", "8", "--start-brokers"]) == 0
    out = capsys.readouterr().out
    assert "| jsonl | " in out and "| redis | " in out and " 1.000 |" in out
