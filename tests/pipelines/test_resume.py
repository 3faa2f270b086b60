"""Resuming a file job (``fovea run --resume``): finished files skipped, the others continued
from what the outputs hold, every file's records as an uninterrupted run writes them.

Records of different files interleave in the outputs in whatever order the decode sessions
finish (that order is not deterministic, with or without a resume); a file's own records are
written in frame order. So outputs are compared per file: each file's lines, in order, byte
for byte.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.runner import FileJob
from pipelines.segments import ResumedFile, cut_points, plan_segments
from streams.config import load_config
from streams.errors import ConfigError
from streams.manifest import Manifest
from streams.sinks.commits import read_commits
from tests.media import write_clip
from tests.optional import skip_reason

QUIET = ["--log-level", "WARNING"]


def _clips(d: Path) -> Path:
    """VP9 (DALI's CPU reader: cut into keyframe segments), H.264 (PyAV on the CPU) and MJPEG."""
    d.mkdir()
    fast = {"g": "25", "deadline": "realtime", "cpu-used": "8"}
    write_clip(d / "long.webm", "libvpx-vp9", frames=1400, width=128, height=72, options=fast)
    write_clip(d / "h264.mp4", "libx264", frames=200, width=160, height=96, options={"g": "25"})
    write_clip(d / "mjpeg.mkv", "mjpeg", frames=120, width=128, height=72)
    write_clip(d / "short.webm", "libvpx-vp9", frames=150, width=96, height=64, options=fast)
    return d


def job_yaml(folder: Path, clips: Path, model: Path, extra: str = "", interval: float = 0.0) -> Path:
    """A job over ``clips`` writing JSONL + CSV into ``folder/out``, committing every batch."""
    cfg = folder / "job.yaml"
    cfg.write_text(f"""sources: [{clips}]
model: {{path: {model}, input_size: [64, 64]}}
engine: {{device: cpu, batch_size: 8}}
decode: {{sessions: 2}}
sinks:
  - {{type: jsonl, path: out/detections.jsonl, commit_interval_s: {interval}}}
  - {{type: csv, path: out/detections.csv, commit_interval_s: {interval}}}
{extra}""")
    return cfg


def per_file(path: Path) -> dict[str, list[bytes]]:
    """Each source's lines (records and events), in the order written."""
    out: dict[str, list[bytes]] = defaultdict(list)
    for line in path.read_bytes().split(b"\n")[:-1]:
        out[json.loads(line)["source"]].append(line)
    return dict(out)


def csv_per_file(path: Path) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    lines = path.read_bytes().split(b"\r\n")[:-1]
    assert lines[0].startswith(b"source,")
    for line in lines[1:]:
        out[line.split(b",", 1)[0].decode()].append(line)
    return dict(out)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _clips(tmp_path_factory.mktemp("resume") / "clips")


@pytest.fixture(scope="module")
def reference(clips: Path, bright_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run's outputs."""
    folder = tmp_path_factory.mktemp("ref")
    assert main([*QUIET, "run", str(job_yaml(folder, clips, bright_model)), "--no-progress"]) == 0
    return folder / "out"


def test_a_job_writes_its_manifest_and_each_file_in_frame_order(reference: Path) -> None:
    manifest = Manifest.load(reference / "detections.manifest.json")
    assert manifest is not None and manifest.finished and manifest.backend == "local"
    frames = {"long.webm": 1400, "h264.mp4": 200, "mjpeg.mkv": 120, "short.webm": 150}
    assert {sid: (r.status, r.frames, r.end, r.committed) for sid, r in manifest.files.items()} == {
        sid: ("done", n, n, n) for sid, n in frames.items()}
    assert all(r.identity is not None and r.identity.size > 0 for r in manifest.files.values())
    for sid, lines in per_file(reference / "detections.jsonl").items():
        idx = [json.loads(x)["frame_index"] for x in lines if b'"event"' not in x]
        assert idx == list(range(frames[sid])), sid
    for name in ("detections.jsonl", "detections.csv"):
        commit = read_commits(reference / name)
        assert commit is not None and commit.frames == frames
        assert commit.offsets[0] == (reference / name).stat().st_size


def test_resume_after_a_finished_job_does_nothing_and_says_so(reference: Path, clips: Path, bright_model: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in reference.iterdir()}
    code = main([*QUIET, "run", str(reference.parent / "job.yaml"), "--no-progress", "--resume"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("nothing to do: every file of the job in ") and "(4 files)" in out
    assert "frames:" not in out  # no summary of a run that did not happen
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in reference.iterdir()} == before


def test_a_stopped_job_resumes_to_the_same_records(reference: Path, clips: Path, bright_model: Path,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The job is stopped after a few batches (as Ctrl-C does: the outputs commit what they
    hold); the resumed run decodes the long file from a keyframe, not from its start."""
    cfg_path = job_yaml(tmp_path, clips, bright_model)
    job = FileJob(load_config(cfg_path), show_progress=False, manifest=True)
    batches = job.batches()
    for _ in range(40):
        next(batches)
    batches.close()
    manifest = Manifest.load(tmp_path / "out" / "detections.manifest.json")
    assert manifest is not None and not manifest.finished
    code = main([*QUIET, "run", str(cfg_path), "--no-progress", "--resume"])
    assert code == 0
    out = capsys.readouterr().out
    assert "resumed the job in" in out and "continuing" in out
    held = int(out.split("long.webm at frame ")[1].split()[0].rstrip(";,")) if "long.webm at frame" in out else 0
    assert per_file(tmp_path / "out" / "detections.jsonl") == per_file(reference / "detections.jsonl")
    assert csv_per_file(tmp_path / "out" / "detections.csv") == csv_per_file(reference / "detections.csv")
    assert "files: 4 done" in out
    frames = int(out.split("frames: ")[1].split()[0])
    assert frames < 1400 + 200 + 120 + 150, "nothing was skipped"
    if held >= 512:  # the long file was continued past its first segment: decoded from a keyframe
        assert frames <= 1400 + 200 + 120 + 150 - (held // 25 * 25)


def test_a_changed_config_is_refused_with_the_key(reference: Path, clips: Path, bright_model: Path,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = reference.parent / "job.yaml"
    changed = tmp_path / "job.yaml"
    changed.write_text(cfg.read_text().replace("sinks:", "postprocess: {conf_threshold: 0.5}\nsinks:")
                       .replace("out/", str(reference) + "/"))
    assert main([*QUIET, "run", str(changed), "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "config error: --resume: the config differs" in err
    assert "postprocess.conf_threshold: 0.25 then, 0.5 now" in err


def test_a_video_sink_cannot_resume(clips: Path, bright_model: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = job_yaml(tmp_path, clips, bright_model)
    cfg.write_text(cfg.read_text() + "  - {type: video, path: out/annotated}\n")
    (tmp_path / "out").mkdir()
    Manifest({}).save(tmp_path / "out" / "detections.manifest.json")
    assert main([*QUIET, "run", str(cfg), "--no-progress", "--resume"]) == 2
    assert "sinks[2]: a 'video' sink cannot resume" in capsys.readouterr().err


def test_resume_without_a_manifest_starts_from_the_beginning(clips: Path, bright_model: Path, tmp_path: Path,
                                                            reference: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    cfg = job_yaml(tmp_path, clips, bright_model)
    cfg.write_text(cfg.read_text().replace(f"sources: [{clips}]", f"sources: [{clips}/short.webm]"))
    assert main(["run", str(cfg), "--no-progress", "--resume"]) == 0
    assert "no manifest at" in caplog.text and "starts from the beginning" in caplog.text
    assert per_file(tmp_path / "out" / "detections.jsonl") == {
        "short.webm": per_file(reference / "detections.jsonl")["short.webm"]}


def test_a_file_changed_since_it_was_started_is_refused(clips: Path, bright_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    clip = write_clip(src / "a.webm", "libvpx-vp9", frames=60, width=96, height=64,
                      options={"deadline": "realtime", "cpu-used": "8"})
    cfg = job_yaml(tmp_path, src, bright_model)
    assert main([*QUIET, "run", str(cfg), "--no-progress"]) == 0
    m = Manifest.load(tmp_path / "out" / "detections.manifest.json")
    assert m is not None
    m.files["a.webm"].status = "started"  # as if killed before it ended
    m.save(tmp_path / "out" / "detections.manifest.json")
    write_clip(clip, "libvpx-vp9", frames=70, width=96, height=64, options={"deadline": "realtime", "cpu-used": "8"})
    with pytest.raises(ConfigError, match=r"a\.webm \(a\.webm\) changed since the job started it: its size"):
        list(FileJob(load_config(cfg), show_progress=False, resume=True).batches())


@pytest.mark.skipif(bool(skip_reason("trackers", "the tracking extra")), reason="needs the tracking extra")
def test_with_a_tracker_files_restart_from_their_first_frame_and_keep_their_track_ids(
        clips: Path, bright_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tracker = "tracker: {type: bytetrack}\n"
    ref = job_yaml(tmp_path / "ref", clips, bright_model, tracker) if (tmp_path / "ref").mkdir() is None else None
    assert ref is not None and main([*QUIET, "run", str(ref), "--no-progress"]) == 0
    (tmp_path / "run").mkdir()
    cfg = job_yaml(tmp_path / "run", clips, bright_model, tracker)
    job = FileJob(load_config(cfg), show_progress=False, manifest=True)
    batches = job.batches()
    for _ in range(60):
        next(batches)
    batches.close()
    assert main([*QUIET, "run", str(cfg), "--no-progress", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "the per-source stages rebuild their state" in out
    want = per_file(tmp_path / "ref" / "out" / "detections.jsonl")
    assert any(b'"track_id":1' in line for line in want["long.webm"])
    assert per_file(tmp_path / "run" / "out" / "detections.jsonl") == want


def test_a_resumed_file_is_cut_from_the_keyframe_before_what_the_outputs_hold(clips: Path) -> None:
    from operators.boxes import letterbox_geometry
    from streams.sources.probe import probe_video

    info = probe_video(clips / "long.webm")
    geom = letterbox_geometry(info.width, info.height, 64, 64)
    assert cut_points(info, 512, 0)[0] == 0
    [plan] = plan_segments([(ResumedFile(clips / "long.webm", "long.webm", 1010), info, geom)], 1)
    assert plan[0].start == 1000 and plan[-1].end == 1400  # the keyframe before 1010 (one every 25 frames)
    assert sum(s.frames for s in plan) == 400


def test_ray_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--source", str(tmp_path), "--ray-workers", "2"]) == 2
    assert "--ray-workers: a number >= 1, with --ray" in capsys.readouterr().err


def test_keyed_sinks_take_part_and_get_unfinished_files_again(clips: Path, bright_model: Path, tmp_path: Path,
                                                              reference: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A sink that delivers with idempotency keys (here ``sqlite``, with ``append: true``) takes
    part: unfinished files are decoded from their first frame, it gets their records again
    (same keys: ``SELECT DISTINCT`` drops the repeats), the file outputs stay exact."""
    import sqlite3

    cfg = job_yaml(tmp_path, clips, bright_model)
    cfg.write_text(cfg.read_text() + "  - {type: sqlite, path: out/detections.sqlite, append: true}\n")
    job = FileJob(load_config(cfg), show_progress=False, manifest=True)
    batches = job.batches()
    for _ in range(40):
        next(batches)
    batches.close()
    assert main([*QUIET, "run", str(cfg), "--no-progress", "--resume"]) == 0
    assert "keyed sinks get those records again, with the same keys" in capsys.readouterr().out
    assert per_file(tmp_path / "out" / "detections.jsonl") == per_file(reference / "detections.jsonl")
    with sqlite3.connect(tmp_path / "out" / "detections.sqlite") as db:
        rows = db.execute("SELECT DISTINCT source, frame_index FROM fovea_frames").fetchall()
    want = {(json.loads(x)["source"], json.loads(x)["frame_index"]) for lines in
            per_file(reference / "detections.jsonl").values() for x in lines if b'"event"' not in x}
    assert set(rows) == want and len(rows) == len(want)
    cfg.write_text(cfg.read_text().replace("append: true", "append: false"))
    assert main([*QUIET, "run", str(cfg), "--no-progress", "--resume"]) == 2
    assert "sinks[2].append: a resumed job adds to the sqlite database" in capsys.readouterr().err
