"""The file job end to end on the CPU: real clips, real DALI CPU graph, real sinks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.runner import run_job
from streams.config import load_config
from tests.media import SQUARE, pyav_frames, square_position

GOOD = {"landscape.mp4": "landscape.mp4", "vp9.webm": "vp9.webm", "nested/portrait.mp4": "nested/portrait.mp4"}
BAD = {"corrupt.mp4", "empty.mp4", "notes.mkv"}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def cpu_run(clip_dir: Path, bright_model: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    code = main(["--log-level", "WARNING", "run", "--source", str(clip_dir), "--model",
                 str(bright_model), "--out", str(out), "--device", "cpu", "--no-progress"])
    return code, out


def test_one_record_per_decodable_frame_with_pyav_pts(cpu_run, clip_dir: Path) -> None:
    code, out = cpu_run
    assert code == 1, "failed files must make the exit code non-zero"
    records = _records(out / "detections.jsonl")
    by_source: dict[str, list[dict]] = {}
    for r in records:
        by_source.setdefault(r["source"], []).append(r)
    assert set(by_source) == set(GOOD)
    for sid, rel in GOOD.items():
        expected = pyav_frames(clip_dir / rel)
        got = sorted((r["frame_index"], r["pts"]) for r in by_source[sid])
        assert got == expected, f"{sid}: frame indices/pts differ from PyAV's"
        assert [r["frame_index"] for r in by_source[sid]] == list(range(len(expected)))  # in order


def test_detections_land_on_the_square(cpu_run) -> None:
    _, out = cpu_run
    records = _records(out / "detections.jsonl")
    checked = 0
    for r in records:
        x1, y1, x2, y2 = square_position(r["frame_index"], r["width"], r["height"])
        if r["source"] == "vp9.webm":
            continue  # lossy at this size; covered by the H.264 clips
        assert r["detections"], f"{r['source']} frame {r['frame_index']}: no detection"
        best = max(r["detections"], key=lambda d: d["confidence"])
        bx1, by1, bx2, by2 = best["box"]
        cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
        assert x1 - 4 <= cx <= x2 + 4 and y1 - 4 <= cy <= y2 + 4, (r["source"], r["frame_index"])
        assert 0 <= bx1 <= bx2 <= r["width"] and 0 <= by1 <= by2 <= r["height"]
        assert best["label"] == "0"
        checked += 1
    assert checked > 50
    assert SQUARE == 32


def test_csv_rows_match_jsonl(cpu_run) -> None:
    _, out = cpu_run
    records = _records(out / "detections.jsonl")
    with open(out / "detections.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(r["detections"]) for r in records)
    assert {"source", "frame_index", "pts", "x1", "confidence", "label"} <= set(rows[0])


def test_bad_files_reported_and_skipped(clip_dir: Path, bright_model: Path, tmp_path: Path, caplog) -> None:
    cfg = load_config(None, {"sources": [str(clip_dir), str(clip_dir / "missing.mp4")],
                             "model": str(bright_model), "out": str(tmp_path), "device": "cpu"})
    summary = run_job(cfg, show_progress=False)
    failed = {Path(f.name).name: f.reason for f in summary.failures}
    assert set(failed) == BAD | {"missing.mp4"}
    assert "empty" in failed["empty.mp4"]
    assert "no such file" in failed["missing.mp4"]
    assert "not a video" in failed["notes.mkv"] or "corrupt" in failed["notes.mkv"]
    assert summary.files_done == 3
    assert summary.frames == 40 + 30 + 21
    assert summary.sessions and sum(n for _, _, n in summary.sessions) == summary.frames  # every session reported
    assert all(0 <= first <= end for first, end, _ in summary.sessions)
    text = summary.to_text()
    assert "FAILED" in text and "corrupt.mp4" in text


def test_truncated_file_keeps_decodable_frames_and_is_reported_incomplete(tmp_path: Path, bright_model: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """An MKV cut at 2/3: its header still announces 60 frames, 36 decode. The 36 records are
    written (they are real), the file is INCOMPLETE in the summary with both counts, and the
    job exits 1."""
    from tests.media import write_clip

    good = write_clip(tmp_path / "whole.mkv", "libx264", frames=60, width=320, height=240,
                      options={"g": "10"})
    data = good.read_bytes()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "cut.mkv").write_bytes(data[: len(data) * 2 // 3])
    decodable = pyav_frames(tmp_path / "src" / "cut.mkv")
    assert 0 < len(decodable) < 60
    cfg = load_config(None, {"sources": [str(tmp_path / "src")], "model": str(bright_model),
                             "out": str(tmp_path / "o"), "device": "cpu"})
    summary = run_job(cfg, show_progress=False)
    records = _records(tmp_path / "o" / "detections.jsonl")
    assert sorted(r["frame_index"] for r in records) == [i for i, _ in decodable]
    assert not summary.ok and summary.files_done == 0
    [failure] = summary.failures
    assert failure.kind == "incomplete" and failure.frames == len(decodable) and failure.expected == 60
    assert f"decoded {len(decodable)} of the 60 frames" in summary.to_text()
    assert "INCOMPLETE" in summary.to_text() and "0 done, 1 incomplete, 0 failed" in summary.to_text()
    code = main(["run", "--source", str(tmp_path / "src"), "--model", str(bright_model), "--out",
                 str(tmp_path / "o2"), "--device", "cpu", "--no-progress"])
    assert code == 1
    assert "INCOMPLETE" in capsys.readouterr().out


def test_truncated_mp4_whose_index_promises_more_frames_fails_with_its_frames_kept(
        tmp_path: Path, bright_model: Path) -> None:
    """A "fast start" MP4 (index first) cut at 2/5: the index lists 120 frames, the data holds
    fewer and its last packet is cut. Decoded frames are written; the file is not done."""
    import av

    from tests.media import render

    clip = tmp_path / "fs.mp4"
    with av.open(str(clip), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        s.options = {"g": "10"}
        for k in range(120):
            for p in s.encode(av.VideoFrame.from_ndarray(render(k, 320, 240), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    (tmp_path / "src").mkdir()
    data = clip.read_bytes()
    (tmp_path / "src" / "cut.mp4").write_bytes(data[: len(data) * 2 // 5])
    cfg = load_config(None, {"sources": [str(tmp_path / "src")], "model": str(bright_model),
                             "out": str(tmp_path / "o"), "device": "cpu"})
    summary = run_job(cfg, show_progress=False)
    records = _records(tmp_path / "o" / "detections.jsonl")
    [failure] = summary.failures
    assert not summary.ok and summary.files_done == 0
    assert failure.expected == 120 and 0 < failure.frames < 120
    assert len(records) == failure.frames == summary.frames


def test_no_input_opens_no_sink_and_says_so(tmp_path: Path, bright_model: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    code = main(["run", "--source", str(tmp_path / "missing.mp4"), "--model", str(bright_model),
                 "--out", str(out), "--device", "cpu", "--no-progress"])
    assert code == 1
    assert not out.exists(), "outputs were created for a job that processed nothing"
    text = capsys.readouterr().out
    assert "no input" in text and "no output was written" in text


def test_last_progress_line_agrees_with_the_summary(clip_dir: Path, bright_model: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import logging

    cfg = load_config(None, {"sources": [str(clip_dir / "landscape.mp4"), str(clip_dir / "vp9.webm")],
                             "model": str(bright_model), "out": str(tmp_path), "device": "cpu"})
    with caplog.at_level(logging.INFO, logger="fovea.progress"):
        summary = run_job(cfg, show_progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "fovea.progress"]
    assert lines and "(final)" in lines[-1]
    assert f"2/2 files  {summary.frames} frames" in lines[-1]


def test_bad_config_rejected_before_work(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text("sources: [x.mp4]\npostprocess:\n  iou_treshold: 0.5\n")
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "postprocess.iou_treshold" in err and "unknown key" in err
    cfg.write_text("sources: [x.mp4]\nsinks:\n  - type: jsonl\n")
    assert main(["run", str(cfg)]) == 2
    assert "sinks[0].path" in capsys.readouterr().err


def test_help_explains_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for opt in ("--source", "--model", "--out", "--device", "--no-progress"):
        assert opt in text


def test_engine_failure_stops_the_job_with_a_clear_error(clip_dir: Path, tmp_path: Path) -> None:
    import torch

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 1:
                raise RuntimeError("kaboom")
            return torch.zeros(x.shape[0], 6, 100)

    path = tmp_path / "broken.pt"
    torch.jit.script(Broken()).save(str(path))
    code = main(["run", "--source", str(clip_dir / "landscape.mp4"), "--model", str(path),
                 "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"])
    assert code == 4  # engine error, not "file failed"


def test_ctrl_c_leaves_valid_outputs(tmp_path: Path, bright_model: Path) -> None:
    """SIGINT mid-job: exit code 130, and every line written so far is a whole record."""
    import signal
    import subprocess
    import sys
    import time

    from tests.media import write_clip

    clip = write_clip(tmp_path / "long.mp4", "libx264", frames=600, width=640, height=480)
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--source", str(clip), "--model", str(bright_model),
         "--out", str(out), "--device", "cpu", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jsonl = out / "detections.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (jsonl.exists() and jsonl.stat().st_size > 0):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-1500:]
    assert "interrupted" in err
    records = _records(jsonl)  # every line parses
    assert 0 < len(records) < 600
    assert [r["frame_index"] for r in records] == list(range(len(records)))
    with open(out / "detections.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "source" and all(len(r) == len(rows[0]) for r in rows)
