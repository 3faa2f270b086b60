"""``fovea run`` with a model it cannot use: exit code 4 and one line naming the file (#22).

Each bad model of :mod:`tests.engines.bad_models` goes through the real command line in a
fresh interpreter, as a user runs it: the process must exit 4 (engine error) with exactly
one ``fovea: engine error:`` line on stderr, the last, naming the file, and no traceback.

The corrupt ``.pt`` runs several times: ``fovea run`` starts probing the videos and
importing DALI in background threads before it loads the model, and a load that fails at
once used to end the process while those threads were still inside native code, which
sometimes aborted it (``terminate called without an active exception``, exit 134) instead
of exiting 4. The job now waits for both before it exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.engines.bad_models import BAD_MODELS, truncated_pt
from tests.media import write_clip

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "fovea: engine error:"
CORRUPT_PT_RUNS = 5

pytestmark = pytest.mark.slow


def _fovea_run(clip: Path, model: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--source", str(clip), "--model", str(model),
           "--device", "cpu", "--no-progress", "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONFAULTHANDLER": "1"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, subprocess.CompletedProcess[str]]]:
    """Every bad model through ``fovea run`` (two at a time: each run is seconds of imports)."""
    base = tmp_path_factory.mktemp("model_errors")
    clip = write_clip(base / "clip.mp4", frames=4, width=64, height=48)
    jobs: dict[str, tuple[Path, str]] = {}
    for i, (kind, make) in enumerate(BAD_MODELS.items()):
        folder = base / f"m{i}"
        folder.mkdir()
        jobs[kind] = make(folder)
    corrupt = base / "corrupt"
    corrupt.mkdir()
    for k in range(CORRUPT_PT_RUNS):
        jobs[f"corrupt .pt, run {k + 1}"] = truncated_pt(corrupt) if k == 0 else jobs["corrupt .pt, run 1"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = {kind: pool.submit(_fovea_run, clip, path, base / f"out{i}")
                for i, (kind, (path, _)) in enumerate(jobs.items())}
        return {kind: (*jobs[kind], future.result()) for kind, future in done.items()}


def _check(kind: str, runs: dict[str, tuple[Path, str, subprocess.CompletedProcess[str]]]) -> None:
    path, what, proc = runs[kind]
    err = proc.stderr
    assert proc.returncode == 4, f"{kind}: exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith(PREFIX)]
    assert len(errors) == 1, err[-3000:]
    assert lines[-1] == errors[0], f"the error is not the last line (a message on several lines?):\n{err[-3000:]}"
    assert str(path) in errors[0] and what in errors[0], errors[0]
    assert proc.stdout == ""  # no summary: nothing ran


@pytest.mark.parametrize("kind", list(BAD_MODELS))
def test_fovea_run_with_a_bad_model_exits_4_with_one_line(kind: str, runs) -> None:  # type: ignore[no-untyped-def]
    _check(kind, runs)


@pytest.mark.parametrize("run", range(1, CORRUPT_PT_RUNS + 1))
def test_a_corrupt_pt_exits_4_every_time(run: int, runs) -> None:  # type: ignore[no-untyped-def]
    _check(f"corrupt .pt, run {run}", runs)
