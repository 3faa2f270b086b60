"""Kill ``fovea run`` with SIGKILL at random points, resume it, and compare with an uninterrupted
run: no record lost, none duplicated, every file's records byte for byte and in order.

Each seed kills the job twice (the second time while it resumes) before letting it finish.
The kills land during decoding and inference (a crash point when a batch arrives, or an
external ``kill -9`` once the output has grown to a random size), in the middle of a sink's
write (half a batch's lines written), in the middle of a commit line, and between writing
the manifest and renaming it into place (``FOVEA_CRASH_AT``, :mod:`streams.faults`). Where
the sinks write in processes of their own (``writer: process``, the default) those go on
after the kill and commit what they had received; the resumed job waits for them.

Outputs are compared per file (the interleaving of files in the outputs depends on which
decode session finishes first, resumed or not; see tests/pipelines/test_resume.py).

Slow (about a minute and a half on a 2-core CPU): every kill needs a process of its own,
and each process pays Python's and torch's start-up. ``test_kill_and_resume_on_the_gpu``
runs the same on NVDEC (H.264 files cut into keyframe segments over several sessions).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.media import write_clip
from tests.pipelines.test_resume import _clips, csv_per_file, job_yaml, per_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SEEDS = (11, 12, 13, 14)
POINTS = ("batch", "sink-write", "commit", "manifest", "timer")
#: per seed, where its two kills land (between them, every point; the N-th time comes from the seed)
PLANS = {11: ("sink-write", "manifest"), 12: ("timer", "commit"), 13: ("batch", "sink-write"),
         14: ("commit", "timer")}


def _fovea(cfg: Path, *args: str, crash: str | None = None, kill_at_bytes: int | None = None,
           timeout: float = 300) -> int:
    """Run ``fovea run cfg`` in a process; its return code (-9: killed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("FOVEA_CRASH_AT", None)
    if crash is not None:
        env["FOVEA_CRASH_AT"] = crash
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "--log-level", "WARNING", "run", str(cfg),
                             "--no-progress", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if kill_at_bytes is not None:
        out = cfg.parent / "out" / "detections.jsonl"
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and out.stat().st_size >= kill_at_bytes:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"fovea run exited {proc.returncode}:\n{stdout}\n{stderr[-3000:]}")
    return proc.returncode


def _kill_once(cfg: Path, rng: random.Random, point: str, size: int, *args: str) -> int:
    """One run of the job killed at ``point`` (N-th time it is reached, N random); its return code."""
    if point == "timer":
        return _fovea(cfg, *args, kill_at_bytes=rng.randint(size // 20, size // 2))
    n = {"batch": rng.randint(5, 120), "sink-write": rng.randint(3, 100), "commit": rng.randint(3, 100),
         "manifest": rng.randint(1, 3)}[point]
    return _fovea(cfg, *args, crash=f"{point}:{n}")


def _check_kills(tmp_path: Path, seed: int, clips: Path, model: Path, reference: Path, extra: str = "") -> None:
    rng = random.Random(seed)
    points = PLANS[seed]
    inline = any(p in ("sink-write", "commit") for p in points)  # the sinks in the job's process: it dies there
    cfg = job_yaml(tmp_path, clips, model, extra)
    if inline:
        cfg.write_text(cfg.read_text().replace("commit_interval_s: 0.0}", "commit_interval_s: 0.0, writer: inline}"))
    size = (reference / "detections.jsonl").stat().st_size
    codes = [_kill_once(cfg, rng, points[0], size), _kill_once(cfg, rng, points[1], size, "--resume")]
    assert -signal.SIGKILL in codes, f"seed {seed}: {points}: no run was killed ({codes})"
    print(f"seed {seed}: kills at {points}: return codes {codes}")
    assert _fovea(cfg, "--resume") == 0
    out = tmp_path / "out"
    got, want = per_file(out / "detections.jsonl"), per_file(reference / "detections.jsonl")
    assert sorted(got) == sorted(want)
    for sid in want:
        assert len(got[sid]) == len(want[sid]), f"seed {seed} {points}: {sid}: {len(got[sid])} lines, " \
                                                f"{len(want[sid])} uninterrupted"
        assert got[sid] == want[sid], f"seed {seed} {points}: {sid}: records differ"
    assert csv_per_file(out / "detections.csv") == csv_per_file(reference / "detections.csv")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _clips(tmp_path_factory.mktemp("kill") / "clips")


@pytest.fixture(scope="module")
def reference(clips: Path, bright_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ref")
    assert _fovea(job_yaml(folder, clips, bright_model)) == 0
    return folder / "out"


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_and_resume(seed: int, clips: Path, bright_model: Path, reference: Path, tmp_path: Path) -> None:
    _check_kills(tmp_path, seed, clips, bright_model, reference)


@pytest.mark.gpu
def test_kill_and_resume_on_the_gpu(bright_model: Path, tmp_path: Path) -> None:
    """The same on NVDEC: H.264 files cut into keyframe segments over 4 decode sessions."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for i, frames in enumerate((2400, 1500, 900, 300)):
        write_clip(clips / f"c{i}.mp4", "libx264", frames=frames, width=640, height=360, options={"g": "30"})
    extra = "engine: {device: cuda, batch_size: 16, compile: 'off'}\ndecode: {sessions: 4}\n"
    ref = tmp_path / "ref"
    ref.mkdir()
    cfg = job_yaml(ref, clips, bright_model)
    cfg.write_text(cfg.read_text().replace("engine: {device: cpu, batch_size: 8}\ndecode: {sessions: 2}\n", extra))
    assert _fovea(cfg) == 0
    for seed in SEEDS:
        run = tmp_path / f"run{seed}"
        run.mkdir()
        rng = random.Random(seed)
        points = PLANS[seed]
        cfg = job_yaml(run, clips, bright_model)
        text = cfg.read_text().replace("engine: {device: cpu, batch_size: 8}\ndecode: {sessions: 2}\n", extra)
        if any(p in ("sink-write", "commit") for p in points):
            text = text.replace("commit_interval_s: 0.0}", "commit_interval_s: 0.0, writer: inline}")
        cfg.write_text(text)
        size = (ref / "out" / "detections.jsonl").stat().st_size
        codes = [_kill_once(cfg, rng, points[0], size), _kill_once(cfg, rng, points[1], size, "--resume")]
        assert -signal.SIGKILL in codes, f"seed {seed}: {points}: no run was killed ({codes})"
        assert _fovea(cfg, "--resume") == 0
        got, want = per_file(run / "out" / "detections.jsonl"), per_file(ref / "out" / "detections.jsonl")
        assert got == want, f"seed {seed} {points}: records differ from the uninterrupted run's"
