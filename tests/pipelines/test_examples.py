"""Every example runs as written from a fresh clone: each file of examples/ (after ``fovea
demo``, which renders the clip they read), and the README's ``fovea`` command lines.

The workspace is a copy of examples/ in a temporary folder, the current directory of
every command, as the repository's root is for a user. Settings are kept small (a short
small clip, ``--device cpu``); only what the CPU cannot do is overridden.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from pipelines.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
DEMO_SMALL = ["--frames", "24", "--size", "384x216", "--device", "cpu", "--no-progress"]
QUIET = ["--log-level", "WARNING"]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _workspace(root: Path) -> Path:
    """A fresh-clone-like folder with examples/ and the demo's clip (``fovea demo``, small)."""
    shutil.copytree(EXAMPLES, root / "examples")
    old = Path.cwd()
    os.chdir(root)
    try:
        assert main([*QUIET, "demo", *DEMO_SMALL]) == 0
    finally:
        os.chdir(old)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _workspace(tmp_path_factory.mktemp("clone"))


def test_the_demo_writes_only_into_the_folder_it_is_given(workspace: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # the default, ./fovea-demo (in .gitignore)
    assert sorted(p.name for p in workspace.iterdir()) == ["examples", "fovea-demo"]
    assert sorted(p.name for p in (workspace / "fovea-demo").iterdir()) == [
        "annotated.mp4", "detections.jsonl", "sample.gt.json", "sample.mp4"]
    assert {r["source"] for r in _records(workspace / "fovea-demo" / "detections.jsonl")} == {"sample.mp4"}
    # --out DIR
    monkeypatch.chdir(tmp_path)
    assert main([*QUIET, "demo", "--out", "runs/first", "--frames", "8", "--size", "384x216", "--device", "cpu",
                 "--no-progress"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    assert len(_records(tmp_path / "runs" / "first" / "detections.jsonl")) == 8


def _run_job_yaml(ws: Path) -> None:
    assert main([*QUIET, "run", "examples/job.yaml", "--device", "cpu", "--no-progress"]) == 0
    out = ws / "fovea-out"  # ../fovea-out/ from examples/: the config's folder, not the current one
    records = _records(out / "detections.jsonl")
    assert len(records) == 24 and {r["source"] for r in records} == {"sample.mp4"}
    rows = (out / "detections.csv").read_text().splitlines()
    assert len(rows) - 1 == sum(len(r["detections"]) for r in records) > 24
    videos = sorted((out / "annotated").glob("*.mp4"))
    assert len(videos) == 1 and _frames(videos[0]) == 24


def _run_demo_yaml(ws: Path) -> None:
    assert main([*QUIET, "run", "examples/demo.yaml", "--device", "cpu", "--no-progress"]) == 0
    out = ws / "fovea-demo-run"
    records = _records(out / "detections.jsonl")
    assert len(records) == 24 and sum(len(r["detections"]) for r in records) > 24
    assert _frames(out / "annotated.mp4") == 24


def _run_live_yaml(ws: Path) -> None:
    """``fovea live`` in a process of its own (it installs signal handlers), for 6 seconds."""
    cfg = ws / "examples" / "live.yaml"
    text = cfg.read_text()
    assert text.count("port: 9108") == 1
    cfg.write_text(text.replace("port: 9108", "port: 0"))  # any free port: tests may run side by side
    seconds = 6.0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *QUIET, "live", "examples/live.yaml",
                           "--device", "cpu", "--duration", str(seconds)],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "live: 2 streams" in proc.stdout
    with av.open(str(ws / "fovea-demo" / "sample.mp4")) as c:
        fps = float(c.streams.video[0].average_rate)
    records = _records(ws / "fovea-live" / "detections.jsonl")
    for cam in ("cam1", "cam2"):
        idx = [r["frame_index"] for r in records if r["source"] == cam]
        assert len(idx) >= fps, f"{cam}: {len(idx)} frames, less than a second of video"
        assert idx == sorted(set(idx))
        assert max(idx) > 24, f"{cam}: the 24-frame clip was not looped"
        assert max(idx) < (seconds + 2) * fps, f"{cam}: frame {max(idx)} in {seconds} s: not paced in real time"
    assert {r["uri"] for r in records} == {f"file://{ws.resolve() / 'fovea-demo' / 'sample.mp4'}"}


def _run_api_py(ws: Path) -> None:
    """The Python API example, as a user runs it (``python examples/api.py``), on the CPU."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "examples/api.py"], cwd=ws, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith("24 frames, detections per label: {") and first != "24 frames, detections per label: {}"
    assert "1 done, 0 incomplete, 0 failed" in proc.stdout


def _run_tracking_yaml(ws: Path) -> None:
    assert main([*QUIET, "run", "examples/tracking.yaml", "--device", "cpu", "--no-progress"]) == 0
    out = ws / "fovea-tracking"
    lines = _records(out / "detections.jsonl")
    frames = [r for r in lines if "event" not in r]
    events = [r for r in lines if "event" in r]
    assert len(frames) == 24 and {r["source"] for r in frames} == {"sample.mp4"}
    tracked = [d["track_id"] for r in frames for d in r["detections"] if d["track_id"] >= 0]
    assert len(set(tracked)) >= 2, "the tracker gave fewer than two tracks over the demo clip"
    assert {e["event"] for e in events} <= {"line_cross", "zone_enter", "zone_exit"}
    assert events, "no line or zone event on the demo clip"
    rows = (out / "detections.events.csv").read_text().splitlines()
    assert len(rows) - 1 == len(events)
    assert _frames(out / "annotated.mp4") == 24


def _run_cascade_yaml(ws: Path) -> None:
    assert main([*QUIET, "run", "examples/cascade.yaml", "--device", "cpu", "--no-progress"]) == 0
    out = ws / "fovea-cascade"
    frames = [r for r in _records(out / "detections.jsonl") if "event" not in r]
    dets = [d for r in frames for d in r["detections"]]
    assert len(frames) == 24 and len(dets) > 24
    assert all(d["attributes"]["pattern"][0] in ("solid", "striped", "dotted") for d in dets)
    rows = (out / "detections.csv").read_text().splitlines()
    assert len(rows) - 1 == len(dets) and "attributes" in rows[0]
    assert _frames(out / "annotated.mp4") == 24


RUNS: dict[str, Callable[[Path], None]] = {
    "api.py": _run_api_py,
    "cascade.yaml": _run_cascade_yaml,
    "demo.yaml": _run_demo_yaml,
    "job.yaml": _run_job_yaml,
    "live.yaml": _run_live_yaml,
    "tracking.yaml": _run_tracking_yaml,
}


def test_this_test_runs_every_example_file() -> None:
    found = sorted(p.name for p in EXAMPLES.iterdir() if p.is_file())
    assert len(found) == 6, found
    assert found == sorted(RUNS)


def test_the_readme_python_api_block_runs_as_written(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    text = README.read_text()
    start = text.index("\n## Python API\n")
    [block] = re.findall(r"```python\n(.*?)```", text[start:text.find("\n## ", start + 1)], re.S)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    exec(compile(block, "README.md (Python API)", "exec"), {})
    out = capsys.readouterr().out
    assert "sample.mp4 0 0.0" in out and "files: 1 done" in out
    assert (workspace / "fovea-out" / "detections.jsonl").exists()


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs_as_written(name: str, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    RUNS[name](workspace)


def _readme_commands(section: str | None = None) -> list[str]:
    """``fovea ...`` commands of the README's bash blocks (of one ``## section``, or all)."""
    text = README.read_text()
    if section is not None:
        start = text.index(f"\n## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start:end if end != -1 else len(text)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                if part.strip().startswith("fovea "):
                    commands.append(part.strip())
    return commands


def test_every_readme_fovea_command_parses(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _readme_commands()
    assert {shlex.split(c, comments=True)[1] for c in commands} >= {"demo", "run", "live"}
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command, comments=True)[1:]
        if "--help" in argv:
            with pytest.raises(SystemExit) as e:
                parser.parse_args(argv)
            assert e.value.code == 0, command
            continue
        args = parser.parse_args(argv)
        assert callable(args.func), command
    capsys.readouterr()


def test_the_readme_running_a_job_block_runs_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Each line as written, on the CPU, the demo's clip small; ``--help`` lines print help."""
    commands = _readme_commands("Running a job")
    assert len(commands) == 5 and commands[0].startswith("fovea demo")
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command, comments=True)[1:]
        if "--help" in argv:
            with pytest.raises(SystemExit) as e:
                main(argv)
            assert e.value.code == 0
            continue
        if argv[0] == "demo":
            argv += DEMO_SMALL
        else:
            argv += ["--no-progress"] + ([] if "--device" in argv else ["--device", "cpu"])
        assert main([*QUIET, *argv]) == 0, command
    assert len(_records(tmp_path / "fovea-out" / "detections.jsonl")) == 24
    assert "exit codes" in capsys.readouterr().out


def test_the_readme_yaml_blocks_are_valid_configs() -> None:
    """Every ```yaml block of the README is a valid config section (with a source added)."""
    import yaml

    from streams.config import parse_config

    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 1
    for block in blocks:
        raw = yaml.safe_load(block)
        assert isinstance(raw, dict)
        parse_config({"sources": ["a.mp4"], **raw})


@pytest.mark.slow
def test_the_readme_resume_and_ray_block_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The two lines of "Resuming a job, ...", on the CPU after the demo: ``--resume`` with no
    manifest runs the job, again finds nothing to do; ``--ray`` (a local Ray cluster of CPU
    workers here) gives the same records."""
    commands = _readme_commands("Resuming a job, and jobs bigger than one GPU")
    assert len(commands) == 2 and "--resume" in commands[0] and "--ray" in commands[1]
    monkeypatch.chdir(tmp_path)
    assert main([*QUIET, "demo", *DEMO_SMALL]) == 0
    first = [*shlex.split(commands[0], comments=True)[1:], "--no-progress", "--device", "cpu"]
    assert main([*QUIET, *first]) == 0
    records = _records(tmp_path / "fovea-out" / "detections.jsonl")
    assert len(records) == 24
    capsys.readouterr()
    assert main([*QUIET, *first]) == 0
    assert "nothing to do" in capsys.readouterr().out.lower()
    shutil.rmtree(tmp_path / "fovea-out")
    ray_argv = [*shlex.split(commands[1], comments=True)[1:], "--no-progress", "--device", "cpu"]
    assert main([*QUIET, *ray_argv]) == 0
    assert _records(tmp_path / "fovea-out" / "detections.jsonl") == records
