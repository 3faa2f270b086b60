"""Keyframe-aligned segments: planning (pure) and reading them back with DALI's CPU reader."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from operators.boxes import LetterboxGeometry, letterbox_geometry
from pipelines.file_source import DecodePlan, FileDecodeSource, FileEvent
from pipelines.preprocess import PreprocessSpec
from pipelines.segments import Segment, _rebalance, cut_points, plan_segments
from pipelines.video_decoding import SegmentBatch, SegmentDecoder, SegmentDone
from streams.config import PreprocessConfig
from streams.sources.files import VideoFile
from streams.sources.probe import BackgroundProbe, VideoInfo, probe_video
from tests.media import pyav_frames, write_clip

GEOM = letterbox_geometry(320, 240, 64, 64)


def _info(n: int, gop: int, name: str = "a") -> VideoInfo:
    return VideoInfo(Path(f"/v/{name}.mp4"), "h264", 320, 240, (1, 25), 25.0, tuple(range(n)), 0,
                     keyframes=tuple(range(0, n, gop)))


def test_cuts_only_at_keyframes_and_never_leaves_a_short_tail() -> None:
    assert cut_points(_info(1000, 100), 300) == [0, 300, 600]  # 900 would leave 100 < 150
    assert cut_points(_info(1000, 250), 300) == [0, 500]
    assert cut_points(_info(100, 10), 300) == [0]
    assert cut_points(replace(_info(1000, 1000), keyframes=(0,)), 10) == [0]


def test_plan_covers_every_frame_once_and_balances_sessions() -> None:
    lengths = [3000, 400, 1200, 9000, 150, 2400]
    files = [(VideoFile(Path(f"/v/{i}.mp4"), f"f{i}"), _info(n, 30, str(i)), GEOM) for i, n in enumerate(lengths)]
    plans = plan_segments(files, sessions=5, min_chunk=64)
    assert len(plans) == 5
    covered: dict[str, list[tuple[int, int]]] = {}
    for segs in plans:
        for s in segs:
            assert s.start in (0, *s.info.keyframes)
            covered.setdefault(s.file.source_id, []).append((s.start, s.end))
    for (f, _, _), n in zip(files, lengths, strict=True):
        spans = sorted(covered[f.source_id])
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    loads = [sum(s.frames for s in segs) for segs in plans]
    biggest = max(s.frames for segs in plans for s in segs)
    assert max(loads) - min(loads) <= biggest, loads
    assert max(loads) < 1.25 * sum(lengths) / 5, loads


def _looped_workload(loops: int) -> list[tuple[VideoFile, VideoInfo, LetterboxGeometry]]:
    """The benchmark's 28 files: six clips (frames, GOP) looped ``loops`` times, cycled."""
    clips = [(600, 240), (300, 30), (450, 240), (150, 30), (540, 240), (240, 30)]
    files = []
    for i in range(28):
        n, gop = clips[i % 6]
        info = replace(_info(n * loops, gop, str(i)), keyframes=tuple(
            loop * n + g for loop in range(loops) for g in range(0, n, gop)))  # each loop restarts its GOPs
        files.append((VideoFile(Path(f"/v/{i}.mp4"), f"f{i:02d}"), info, GEOM))
    return sorted(files, key=lambda f: -f[1].num_frames)


@pytest.mark.parametrize(("loops", "spread"), [(7, 90), (34, 90)])
def test_rebalancing_evens_the_sessions_out_at_keyframes(loops: int, spread: int) -> None:
    """LPT alone left 5,220-5,400 and 25,440-26,280 frames a session on these workloads
    (the loads the H200 runs logged); cutting pieces off at keyframes evens them out."""
    files = _looped_workload(loops)
    plans = plan_segments(files, sessions=14, min_chunk=512)
    loads = [sum(s.frames for s in p) for p in plans]
    assert sum(loads) == sum(f[1].num_frames for f in files)
    assert max(loads) - min(loads) <= spread, loads
    spans: dict[str, list[tuple[int, int]]] = {}
    for p in plans:
        for s in p:
            assert s.start in (0, *s.info.keyframes) and s.frames >= 64  # keyframe cuts, no sliver
            spans.setdefault(s.file.source_id, []).append((s.start, s.end))
    for f, info, _ in files:
        cover = sorted(spans[f.source_id])
        assert cover[0][0] == 0 and cover[-1][1] == info.num_frames
        assert all(a[1] == b[0] for a, b in itertools.pairwise(cover))
    assert max(len(p) for p in plans) <= 6  # a few more segments, not a work pool


def test_rebalancing_does_not_give_a_session_another_geometry() -> None:
    other = letterbox_geometry(640, 480, 64, 64)
    a = _info(3000, 30, "a")
    b = replace(_info(300, 30, "b"), width=640, height=480)
    plans = [[Segment(VideoFile(a.path, "a"), a, GEOM, 0, 3000)],
             [Segment(VideoFile(b.path, "b"), b, other, 0, 300)]]
    _rebalance(plans, min_piece=64, switch_cost=32)  # a second pipeline would cost more than it evens out
    assert [[(s.start, s.end) for s in p] for p in plans] == [[(0, 3000)], [(0, 300)]]
    plans[1][0] = Segment(VideoFile(b.path, "b"), b, GEOM, 0, 300)
    _rebalance(plans, min_piece=64, switch_cost=32)
    loads = [sum(s.frames for s in p) for p in plans]
    assert sum(loads) == 3300 and max(loads) - min(loads) <= 30 + 32, loads


def test_plan_with_more_sessions_than_segments() -> None:
    files = [(VideoFile(Path("/v/a.mp4"), "a"), _info(100, 100), GEOM)]
    assert [len(p) for p in plan_segments(files, sessions=4)] == [1]
    with pytest.raises(ValueError, match="sessions"):
        plan_segments(files, sessions=0)


@pytest.fixture(scope="module")
def vp9_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seg") / "long clip.webm"  # a space: the file list must cope
    return write_clip(path, "libvpx-vp9", frames=95, width=96, height=64, options={"g": "10"})


def test_segment_decoder_reads_each_frame_once_with_its_pts(vp9_clip: Path) -> None:
    info = probe_video(vp9_clip)
    assert info.keyframes[:3] == (0, 10, 20)
    f = VideoFile(vp9_clip, "clip")
    geom = letterbox_geometry(info.width, info.height, 64, 64)
    plans = plan_segments([(f, info, geom)], sessions=1, chunk=20)
    segs = plans[0]
    assert [(s.start, s.end) for s in segs] == [(0, 20), (20, 40), (40, 60), (60, 80), (80, 95)]
    spec = PreprocessSpec(options=PreprocessConfig())
    seen: list[tuple[int, int | None]] = []
    done: list[tuple[int, int]] = []
    with SegmentDecoder(segs, spec, batch=8, kind="dali-cpu") as dec:
        assert dec.total_sequences == 3 + 3 + 3 + 3 + 2
        for ev in dec:
            if isinstance(ev, SegmentDone):
                done.append((ev.index, ev.frames))
                continue
            assert isinstance(ev, SegmentBatch)
            x = np.asarray(ev.batch.images.as_tensor())
            assert x.shape == (1, 8, 3, 64, 64)
            seen += [(r.frame_index, r.pts) for r in ev.batch.rows if r is not None]
            assert all(r is None or segs[ev.index].start <= r.frame_index < segs[ev.index].end
                       for r in ev.batch.rows)
    assert seen == pyav_frames(vp9_clip)
    assert done == [(0, 20), (1, 20), (2, 20), (3, 20), (4, 15)]
    assert dec._scheduled == dec.total_sequences  # no iteration past the end (it would wrap around)


def test_file_source_splits_a_file_over_sessions(vp9_clip: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"not a video at all")
    spec = PreprocessSpec(options=PreprocessConfig())
    plan = DecodePlan(spec, (64, 64), batch=8, decode_device="cpu", device_id=None, sessions=3,
                      min_segment=20)
    frames: list[int] = []
    events: dict[str, list[FileEvent]] = {}
    with FileDecodeSource([VideoFile(vp9_clip, "clip"), VideoFile(bad, "bad")], plan) as src:
        while (item := src.read()) is not None:
            if isinstance(item, FileEvent):
                events.setdefault(item.file.source_id, []).append(item)
            else:
                frames += [r.frame_index for r in item.rows if r is not None]
    assert sorted(frames) == list(range(95))
    kinds = [e.kind for e in events["clip"]]
    segments = [e for e in events["clip"] if e.kind == "segment"]
    assert kinds[0] == "started" and kinds[-1] == "done" and len(segments) == len(kinds) - 2 >= 2
    assert sorted((e.start, e.frames) for e in segments) == sorted((e.start, e.expected_frames) for e in segments)
    assert sum(e.frames for e in segments) == 95
    assert events["clip"][-1].frames == 95 == events["clip"][-1].expected_frames
    assert [e.kind for e in events["bad"]] == ["failed"]


def test_file_source_takes_a_probe_started_earlier(vp9_clip: Path) -> None:
    spec = PreprocessSpec(options=PreprocessConfig())
    plan = DecodePlan(spec, (64, 64), batch=8, decode_device="cpu", device_id=None, sessions=2, min_segment=20)
    files = [VideoFile(vp9_clip, "clip")]
    frames = 0
    with FileDecodeSource(files, plan, probe=BackgroundProbe([vp9_clip], processes=1)) as src:
        while (item := src.read()) is not None:
            if not isinstance(item, FileEvent):
                frames += item.num_valid
    assert frames == 95
    with pytest.raises(ValueError, match="other files"):
        FileDecodeSource(files, plan, probe=BackgroundProbe([], processes=1))
