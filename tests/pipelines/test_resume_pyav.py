"""Resuming a file PyAV decodes (H.264/HEVC on the CPU): from the keyframe at or before the
first frame the outputs lack, not from frame 0 (:mod:`pipelines.pyav_frames`).

The clips have short GOPs and B-frames; one has an open GOP (leading pictures after the
keyframe in decode order), some start at a pts other than 0, the MPEG-TS ones have no index
(FFmpeg seeks them by timestamp and lands late), and one is an MPEG-TS recording cut before
its first keyframe (the decoder's first frame is not the first one demuxed). Frames from ``N``
on must come out with the indices, pts and pixels of a decode from the start; the work skipped
is counted in decoded frames, not timed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from pipelines import file_source
from pipelines.pyav_frames import PyAVFrames
from pipelines.resume import outputs_hold
from pipelines.runner import FileJob
from pipelines.segments import resume_keyframe
from pipelines.video_decoding import FileDecoder
from streams.config import load_config
from streams.sources.probe import VideoInfo, probe_video
from tests.media import render
from tests.pipelines.test_resume import csv_per_file, job_yaml, per_file

QUIET = ["--log-level", "WARNING"]
FRAMES = 150
CLOSED_GOP = {"g": "12", "bf": "3"}
OPEN_GOP = {"x264-params": "open-gop=1:keyint=12:min-keyint=12:bframes=3:b-adapt=0:scenecut=0"}


def write(path: Path, codec: str = "libx264", frames: int = FRAMES, first_pts: int = 0,
          options: dict[str, str] | None = None) -> Path:
    """A 96x64 clip at 25 fps whose frames have pts ``first_pts``, ``first_pts + 1``, ... (1/25 s)."""
    with av.open(str(path), "w") as c:
        s: Any = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        s.codec_context.time_base = Fraction(1, 25)
        s.options = options or {}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(render(i, 96, 64), format="rgb24")
            frame.pts, frame.time_base = first_pts + i, Fraction(1, 25)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def cut_before_first_keyframe(src: Path, dst: Path) -> Path:
    """``src`` (MPEG-TS) without its first bytes, cut at a TS packet so that it starts with
    frames the decoder cannot decode (as a recording started mid-stream does)."""
    data = src.read_bytes()
    for packets in range(40, 400, 20):
        dst.write_bytes(data[188 * packets:])
        info = probe_video(dst)
        if decode_all(dst)[0][1] != info.pts[0]:
            return dst
    raise AssertionError(f"no cut of {src} starts before a keyframe")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pyav-clips")
    write(d / "bframes.mp4", options=CLOSED_GOP)
    write(d / "opengop.mkv", options=OPEN_GOP)
    write(d / "offset.mp4", first_pts=1000, options=CLOSED_GOP)
    write(d / "offset.ts", first_pts=1000, options=CLOSED_GOP)
    cut_before_first_keyframe(write(d / "whole.ts", options=OPEN_GOP), d / "cut.ts")
    (d / "whole.ts").unlink()
    write(d / "hevc.mp4", "libx265", frames=96,
          options={"preset": "ultrafast", "x265-params": "keyint=12:min-keyint=12:bframes=3:log-level=error"})
    return d


def decode_all(path: Path) -> list[tuple[int, int | None, np.ndarray]]:
    """(index, pts, rgb pixels) of every frame of a plain PyAV decode from the start."""
    with av.open(str(path)) as c:
        return [(i, f.pts, f.to_ndarray(format="rgb24")) for i, f in enumerate(c.decode(c.streams.video[0]))]


def decode_from(path: Path, info: VideoInfo, n: int) -> tuple[list[tuple[int, int | None, np.ndarray]], PyAVFrames,
                                                               int]:
    """What :class:`PyAVFrames` gives from frame ``n`` on, itself, and how often it reported progress."""
    calls = 0

    def progress() -> None:
        nonlocal calls
        calls += 1

    with PyAVFrames(path, info, n, progress) as frames:
        got = [(i, f.pts, f.to_ndarray(format="rgb24")) for i, f in frames]
    return got, frames, calls


def assert_same(got: list[tuple[int, int | None, np.ndarray]], want: list[tuple[int, int | None, np.ndarray]]) -> None:
    assert [(i, p) for i, p, _ in got] == [(i, p) for i, p, _ in want]
    for (i, _, a), (_, _, b) in zip(got, want, strict=True):
        assert np.array_equal(a, b), f"frame {i}: pixels differ from a decode from the start"


def max_gap(info: VideoInfo) -> int:
    keys = [*info.keyframes, info.num_frames]
    return max(b - a for a, b in itertools.pairwise(keys))


def offset_of(path: Path, info: VideoInfo) -> int:
    """Where the decoder's first frame is among the pts the probe demuxed."""
    return info.pts.index(decode_all(path)[0][1])


def test_the_clips_are_what_the_tests_need(clips: Path) -> None:
    """B-frames (pts out of decode order), short GOPs, an open GOP's leading pictures, start
    pts other than 0, and a cut recording whose first demuxed frames never decode."""
    for name in ("bframes.mp4", "opengop.mkv", "offset.mp4", "offset.ts", "cut.ts", "hevc.mp4"):
        info = probe_video(clips / name)
        assert len(info.keyframes) >= 6 and max_gap(info) <= 13, name
        with av.open(str(clips / name)) as c:
            pts = [int(p.pts) for p in c.demux(c.streams.video[0]) if p.size and p.pts is not None]
        assert pts != sorted(pts), f"{name}: no B-frames"
    for name in ("offset.mp4", "offset.ts", "cut.ts"):
        assert probe_video(clips / name).start_pts > 0, name
    with av.open(str(clips / "opengop.mkv")) as c:
        packets = [(int(p.pts), p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size and p.pts is not None]
    leading = [i for i, (p, key) in enumerate(packets) if key and i > 0 and packets[i + 1][0] < p]
    assert leading, "opengop.mkv: no leading pictures after a keyframe"
    assert offset_of(clips / "cut.ts", probe_video(clips / "cut.ts")) > 0


@pytest.mark.parametrize("name", ["bframes.mp4", "opengop.mkv", "offset.mp4", "offset.ts", "cut.ts", "hevc.mp4"])
def test_decoding_from_frame_n_gives_the_frames_of_a_decode_from_the_start(clips: Path, name: str) -> None:
    path = clips / name
    info = probe_video(path)
    full = decode_all(path)
    total = len(full)
    offset = offset_of(path, info)
    keys = [k - offset for k in info.keyframes if k > offset]  # keyframes, as the decoder counts frames
    wanted = sorted({1, keys[0] - 1, keys[0], keys[0] + 1, keys[2] + 5, keys[-1] - 1, keys[-1] + 2, total - 1, total})
    for n in wanted:
        got, frames, calls = decode_from(path, info, n)
        assert frames.fallback is None, f"{name} from {n}: {frames.fallback}"
        assert_same(got, full[n:])
        start = max(0, resume_keyframe(info, n + offset) - offset)
        assert frames.started_at == start, f"{name} from {n}"
        # what was decoded: the head frame, at most two late landings (MPEG-TS), from the keyframe on
        assert frames.decoded <= 1 + 2 * max_gap(info) + (total - start), f"{name} from {n}: {frames.decoded}"
        if start > 2 * max_gap(info):
            assert frames.decoded < total, f"{name} from {n}: nothing was skipped"
        assert calls == frames.decoded


def test_frames_before_the_keyframe_sought_are_dropped(clips: Path) -> None:
    """A demuxer landing before the keyframe sought (here: the probe names a keyframe two
    frames after a real one, and the seek lands on the real one): the frames before it are
    decoded and dropped, the rest keep their indices."""
    path = clips / "bframes.mp4"
    info = probe_video(path)
    full = decode_all(path)
    real = info.keyframes[3]
    assert real + 2 not in info.keyframes
    info = dataclasses.replace(info, keyframes=tuple(sorted((*info.keyframes, real + 2))))
    got, frames, _ = decode_from(path, info, real + 4)
    assert frames.fallback is None
    assert_same(got, full[real + 4:])
    assert frames.started_at == real + 2
    assert frames.decoded == 1 + len(full) - real  # the head frame, then from the real keyframe on


@pytest.mark.parametrize("how", ["pts", "keyframes"])
def test_when_seeking_cannot_be_trusted_the_file_is_decoded_from_its_start_with_one_warning(
        clips: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    path = clips / "bframes.mp4"
    info = probe_video(path)
    full = decode_all(path)
    n = info.keyframes[-2] + 3
    if how == "pts":  # the probe's pts of a frame between the keyframe and n: the decoder gives another
        pts = list(info.pts)
        pts[info.keyframes[-2] + 1] += 1
        info = dataclasses.replace(info, pts=tuple(pts))
        why = f"frame {info.keyframes[-2] + 1} decodes with pts {full[info.keyframes[-2] + 1][1]} after seeking"
    else:
        info = dataclasses.replace(info, keyframes=())
        why = "the probe found no keyframe in it"
    with caplog.at_level(logging.INFO, logger="pipelines.pyav_frames"):
        got, frames, _ = decode_from(path, info, n)
    assert_same(got, full[n:])
    assert frames.started_at == 0 and frames.fallback is not None and frames.fallback.startswith(why)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"{path}: cannot continue it at frame {n} from a keyframe: {frames.fallback}; decoding it "
                        f"from its first frame instead (the {n} frames before are decoded again and dropped)"]


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> list[FileDecoder]:
    """The PyAV decoders the job makes, kept for their figures."""
    made: list[FileDecoder] = []

    class Recording(FileDecoder):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(file_source, "FileDecoder", Recording)
    return made


@pytest.mark.parametrize("name", ["bframes.mp4", "offset.ts"])
def test_a_resumed_job_decodes_an_h264_file_from_the_keyframe_before_what_its_outputs_hold(
        clips: Path, name: str, bright_model: Path, tmp_path: Path, recording: list[FileDecoder],
        caplog: pytest.LogCaptureFixture) -> None:
    """Stopped part-way, then resumed: the outputs are byte for byte an uninterrupted run's,
    and the resumed decode reads the frames from the keyframe before the resume point on only."""
    from pipelines.cli import main

    src = tmp_path / "src"
    src.mkdir()
    (src / name).symlink_to(clips / name)
    (tmp_path / "ref").mkdir()
    (tmp_path / "run").mkdir()
    assert main([*QUIET, "run", str(job_yaml(tmp_path / "ref", src, bright_model)), "--no-progress"]) == 0
    want = tmp_path / "ref" / "out"
    [full] = recording
    assert full.start == 0 and full.frames_read == full.frames_decoded == FRAMES
    recording.clear()

    cfg = job_yaml(tmp_path / "run", src, bright_model)
    batches: Any = FileJob(load_config(cfg), show_progress=False, manifest=True).batches()  # a generator
    for _ in range(12):  # of the file's 19 batches of 8 frames
        next(batches)
    batches.close()
    out = tmp_path / "run" / "out"
    held = outputs_hold([out / "detections.jsonl", out / "detections.csv"])[name]
    info = probe_video(clips / name)
    assert info.keyframes[2] < held < FRAMES, held
    recording.clear()

    with caplog.at_level(logging.INFO, logger="pipelines.pyav_frames"):
        assert main([*QUIET, "run", str(cfg), "--no-progress", "--resume"]) == 0
    assert per_file(out / "detections.jsonl") == per_file(want / "detections.jsonl")
    assert csv_per_file(out / "detections.csv") == csv_per_file(want / "detections.csv")
    [resumed] = recording
    key = resume_keyframe(info, held)
    assert resumed.start == held and resumed.frames_decoded == FRAMES - held
    # the head frame, at most two late landings (MPEG-TS), then the keyframe's GOP and the rest
    assert resumed.frames_read <= 1 + 2 * max_gap(info) + FRAMES - key
    assert resumed.frames_read < FRAMES, f"{resumed.frames_read} frames decoded: nothing was skipped"
    assert f"continuing at frame {held}, decoded from the keyframe at frame {key}" in caplog.text
    assert "cannot continue it" not in caplog.text
