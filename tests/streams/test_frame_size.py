"""The probe on damaged and unusual files: frame size changes mid-stream
(:mod:`streams.sources.frame_size`), metadata that is not UTF-8, an unknown codec, PyAV
failing unexpectedly, a file changing while it is probed."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from streams.errors import SourceError
from streams.sources import probe as probe_module
from streams.sources.frame_size import nal_units, vp9_frame_spans, vp9_keyframe_size
from streams.sources.probe import _from_json, _to_json, probe_video
from tests.media import render, write_clip
from tests.pipelines.fuzz_corpus import resized_stream


def _keyframes(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.video[0]) if p.size and p.is_keyframe]


def test_a_vp9_keyframe_header_gives_its_size(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "a.webm", "libvpx-vp9", frames=20, width=144, height=80, options={"g": "8"})
    keys = _keyframes(clip)
    assert len(keys) >= 2
    for k in keys:
        assert vp9_frame_spans(len(k), k[-34:]) == [(0, len(k))]
        assert vp9_keyframe_size(k[:64]) == (144, 80)
    with av.open(str(clip)) as c:
        inter = next(bytes(p) for p in c.demux(c.streams.video[0]) if p.size and not p.is_keyframe)
    assert all(vp9_keyframe_size(inter[a:a + n]) is None for a, n in vp9_frame_spans(len(inter), inter[-34:]))
    assert vp9_keyframe_size(b"\x00\x01") is None and vp9_keyframe_size(b"\x82") is None  # no header


def test_a_vp9_superframe_is_split_by_its_index() -> None:
    a, b = b"\x82\x49\x83\x42" + b"A" * 6, b"\x86" + b"B" * 300
    marker = 0xC0 | (1 << 3) | 1  # 2 frames, 2-byte sizes
    index = bytes([marker]) + len(a).to_bytes(2, "little") + len(b).to_bytes(2, "little") + bytes([marker])
    packet = a + b + index
    assert vp9_frame_spans(len(packet), packet[-34:]) == [(0, len(a)), (len(a), len(b))]
    assert vp9_frame_spans(len(a), a) == [(0, len(a))]


def test_nal_units_of_annex_b_and_length_prefixed_data() -> None:
    sps, pps, idr = b"\x67\x42\x00\x1e", b"\x68\xce\x38\x80", b"\x65\x88\x84"
    annex_b = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x01" + pps + b"\x00\x00\x00\x01" + idr
    assert list(nal_units(annex_b, None)) == [sps, pps]  # the last one may be cut: not returned
    prefixed = b"".join(len(n).to_bytes(4, "big") + n for n in (sps, pps, idr))
    assert list(nal_units(prefixed, 4)) == [sps, pps, idr]
    assert list(nal_units(prefixed[:-1], 4)) == [sps, pps]


@pytest.mark.parametrize("suffix,encoder", [(".webm", "libvpx-vp9"), (".ts", "libx264"), (".ts", "libx265")])
def test_the_probe_finds_a_frame_size_change(tmp_path: Path, suffix: str, encoder: str) -> None:
    path = tmp_path / f"r{suffix}"
    path.write_bytes(resized_stream(tmp_path, "parts", encoder, suffix, [(96, 64), (64, 48), (96, 64)], [12, 10, 8]))
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (96, 64, 30)
    assert info.resized == (12, 64, 48)  # the first change


@pytest.mark.parametrize("name,encoder,options", [
    ("a.ts", "libx264", {"g": "4"}),
    ("b.mp4", "libx264", {"g": "4", "x264-params": "repeat-headers=1"}),
    ("c.ts", "libx265", {"x265-params": "log-level=error:keyint=4:repeat-headers=1"}),
    ("d.webm", "libvpx-vp9", {"g": "4"}),
])
def test_the_probe_finds_no_size_change_in_a_good_clip(tmp_path: Path, name: str, encoder: str,
                                                       options: dict[str, str]) -> None:
    info = probe_video(write_clip(tmp_path / name, encoder, frames=24, width=96, height=64, options=options))
    assert len(info.keyframes) >= 5 and info.resized is None


def test_metadata_that_is_not_utf8_does_not_stop_the_probe(tmp_path: Path) -> None:
    clip = tmp_path / "latin1.mkv"
    with av.open(str(clip), "w") as c:
        c.metadata["title"] = "cafeX"
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for i in range(6):
            for p in s.encode(av.VideoFrame.from_ndarray(render(i, 96, 64), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = clip.read_bytes()
    assert data.count(b"cafeX") == 1
    clip.write_bytes(data.replace(b"cafeX", b"caf\xe9X"))  # a Latin-1 title
    assert probe_video(clip).num_frames == 6


def test_a_stream_of_an_unknown_codec_is_a_source_error(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "a.mp4", "libx264", frames=6, width=96, height=64)
    clip.write_bytes(clip.read_bytes().replace(b"avc1", b"zzzz"))
    with pytest.raises(SourceError, match="unknown codec"):
        probe_video(clip)


def test_an_unexpected_pyav_failure_fails_the_file_not_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    clip = write_clip(tmp_path / "a.mp4", "libx264", frames=6, width=96, height=64)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(av, "open", broken)
    with pytest.raises(SourceError, match=r"cannot be probed \(RuntimeError: boom\)"):
        probe_video(clip)
    assert "unexpected probe failure" in caplog.text  # with the traceback, for a bug report


def test_a_file_changing_while_probed_is_named_still_being_written(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    part = tmp_path / "rec.mkv"
    part.write_bytes(b"\x00" * 100)  # nothing readable yet
    real = av.open

    def opened_while_written(name: str, *args: object, **kwargs: object) -> object:
        with open(name, "ab") as f:
            f.write(b"\x00" * 100)  # the recorder wrote on meanwhile
        return real(name, *args, **kwargs)

    monkeypatch.setattr(av, "open", opened_while_written)
    with pytest.raises(SourceError, match="the file changed while it was probed: still being written"):
        probe_video(part)


def test_the_probe_keeps_size_mtime_and_size_change_through_its_workers(tmp_path: Path) -> None:
    path = tmp_path / "r.webm"
    path.write_bytes(resized_stream(tmp_path, "parts", "libvpx-vp9", ".webm", [(96, 64), (64, 48)], [8, 8]))
    info = probe_video(path)
    st = path.stat()
    assert (info.size, info.mtime_ns, info.resized) == (st.st_size, st.st_mtime_ns, (8, 64, 48))
    assert _from_json(json.loads(json.dumps(_to_json(info)))) == info
    assert probe_module.main([str(path)]) == 0
