"""MP4 timestamps from the index: the same VideoInfo as a full demux, or a fallback to it."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

import streams.probe as probe_module
from streams.mp4index import index_timestamps
from streams.probe import VideoInfo, probe_video
from tests.media import render, write_clip


def _demuxed(path: Path, monkeypatch: pytest.MonkeyPatch) -> VideoInfo:
    with monkeypatch.context() as m:
        m.setattr(probe_module, "index_timestamps", lambda *a, **k: None)
        return probe_video(path)


def _indexed(path: Path) -> tuple[list[int], list[int]] | None:
    with av.open(str(path)) as c:
        return index_timestamps(path, c, c.streams.video[0])


@pytest.mark.parametrize(("name", "codec", "options"), [
    ("bframes.mp4", "libx264", {"g": "10", "bf": "3"}),
    ("long_gop.mp4", "libx264", {"g": "60", "bf": "2"}),
    ("no_bframes.mp4", "libx264", {"g": "12", "bf": "0"}),
    ("open_gop.mov", "libx264", {"g": "15", "bf": "2", "x264-params": "open-gop=1"}),
    ("hevc.mp4", "libx265", {"g": "20", "x265-params": "log-level=error:bframes=3"}),
])
def test_index_gives_the_demuxed_pts_and_keyframes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                   codec: str, options: dict[str, str]) -> None:
    path = write_clip(tmp_path / name, codec, frames=300, options=options)
    assert _indexed(path) is not None  # the fast path is taken...
    assert probe_video(path) == _demuxed(path, monkeypatch)  # ...and agrees with demuxing every packet


def test_short_check_still_catches_nothing_wrong_over_the_whole_file(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked against 8 demuxed packets only, the index still matches the full demux."""
    path = write_clip(tmp_path / "a.mp4", frames=200, options={"g": "25", "bf": "3"})
    with av.open(str(path)) as c:
        got = index_timestamps(path, c, c.streams.video[0], check_packets=8)
    assert got is not None
    info = _demuxed(path, monkeypatch)
    assert sorted(got[0]) == list(info.pts)
    assert sorted(info.pts.index(p) for p in got[1]) == list(info.keyframes)


def test_truncated_mp4_is_demuxed_so_its_readable_frames_count(tmp_path: Path) -> None:
    """moov first (faststart), media data cut: the index claims frames the file no longer has."""
    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        s.options = {"g": "10"}
        for i in range(60):
            for p in s.encode(av.VideoFrame.from_ndarray(render(i, 160, 120), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    assert _indexed(path) is not None
    assert _indexed(cut) is None
    assert 0 < probe_video(cut).num_frames < 60


def test_other_containers_and_fragmented_mp4_are_demuxed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mkv = write_clip(tmp_path / "a.mkv", frames=30)
    assert _indexed(mkv) is None
    frag = tmp_path / "frag.mp4"
    with av.open(str(frag), "w", options={"movflags": "frag_keyframe+empty_moov"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        s.options = {"g": "10"}
        for i in range(40):
            for p in s.encode(av.VideoFrame.from_ndarray(render(i, 160, 120), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert _indexed(frag) is None
    assert probe_video(frag) == _demuxed(frag, monkeypatch)
    assert probe_video(frag).num_frames == 40


def test_an_index_that_disagrees_with_the_demux_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Composition offsets off by one tick: the check against real packets rejects them."""
    import streams.mp4index as mp4index

    path = write_clip(tmp_path / "a.mp4", frames=60, options={"g": "10", "bf": "2"})
    real = mp4index._sample_table

    def shifted(p: Path, track: int):  # type: ignore[no-untyped-def]
        got = real(p, track)
        assert got is not None and got[0].size
        return got[0] + 1, got[1]

    monkeypatch.setattr(mp4index, "_sample_table", shifted)
    assert _indexed(path) is None
    monkeypatch.undo()
    assert probe_video(path) == _demuxed(path, monkeypatch)
