"""The annotated-video sink on small H.264 clips generated with PyAV (CPU only, ~2 s)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import av
import numpy as np
import pytest

from streams.detections import Detections
from streams.errors import ConfigError, SinkError
from streams.frames import FrameMeta, FrameResult
from streams.sinks import SINKS
from streams.sinks.video import VideoSink, color_for_class, draw_detections

W, H, N, FPS = 320, 240, 64, 24
Box = tuple[int, int, int, int]


def _make_clip(path: Path, horizontal: bool) -> list[Box]:
    """A white 60x50 rectangle moving 3 px/frame on black; returns its box per frame."""
    boxes: list[Box] = []
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(N):
            x1, y1 = (40 + 3 * i, 120) if horizontal else (200, 30 + 2 * i)
            box = (x1, y1, x1 + 60, y1 + 50)
            image = np.zeros((H, W, 3), np.uint8)
            image[box[1]:box[3], box[0]:box[2]] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
            boxes.append(box)
        for packet in stream.encode(None):
            out.mux(packet)
    return boxes


def _decode(path: Path) -> tuple[list[np.ndarray], list[int], float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [(f.to_ndarray(format="rgb24"), f.pts) for f in c.decode(s)]
        rate = float(s.average_rate or 0)
    pts = [p for _, p in frames]
    assert None not in pts
    return [f for f, _ in frames], [int(p or 0) for p in pts], rate


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[Box], list[int]]]:
    """Two clips: 'a' (moving right) and 'b' (moving down), with boxes and source pts."""
    folder = tmp_path_factory.mktemp("clips")
    out = {}
    for name, horizontal in (("a", True), ("b", False)):
        path = folder / f"{name}.mp4"
        boxes = _make_clip(path, horizontal)
        out[name] = (path, boxes, _decode(path)[1])
    return out


def _results(clip: tuple[Path, list[Box], list[int]], source_id: str, class_id: int,
             indices: range | list[int] = range(N)) -> list[FrameResult]:
    path, boxes, pts = clip
    with av.open(str(path)) as c:
        tb = c.streams.video[0].time_base
    assert tb is not None
    results = []
    for i in indices:
        meta = FrameMeta(source_id, str(path), i, pts[i], (tb.numerator, tb.denominator), W, H)
        x1, y1, x2, y2 = boxes[i]
        dets = Detections(np.array([[x1, y1, x2 - 1, y2 - 1]], np.float32),
                          np.array([0.87], np.float32), np.array([class_id]),
                          tuple(f"class{k}" for k in range(10)))
        results.append(FrameResult(meta, dets))
    return results


def _edge_points(box: Box) -> list[tuple[int, int]]:
    """(y, x) points on the drawn outline: 1 px inside each side, away from the label."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    return [(y2 - 2, cx), (cy, x1 + 1), (cy, x2 - 2), (y1 + 1, x2 - 10)]


def _is_colour(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    """Nearer to ``colour`` than to the clip's black and white (H.264 blurs thin lines)."""
    candidates = np.array([colour, (0, 0, 0), (255, 255, 255)], float)
    return int(np.argmin(np.linalg.norm(candidates - pixel.astype(float), axis=1))) == 0


def _assert_drawn(frame: np.ndarray, box: Box, colour: tuple[int, int, int]) -> None:
    for y, x in _edge_points(box):
        assert _is_colour(frame[y, x], colour), (y, x, frame[y, x], colour)
    x1, y1, x2, y2 = box
    assert frame[(y1 + y2) // 2, (x1 + x2) // 2].min() > 200  # inside: still white


def _assert_not_drawn(frame: np.ndarray, box: Box, colour: tuple[int, int, int]) -> None:
    assert not any(_is_colour(frame[y, x], colour) for y, x in _edge_points(box))


def test_annotates_every_frame_at_the_right_time(clips, tmp_path: Path) -> None:
    colour = color_for_class(0)
    with VideoSink(tmp_path / "out", crf=18) as sink:
        sink.write(_results(clips["a"], "a", 0))
    out = tmp_path / "out" / "a.annotated.mp4"
    assert sink.outputs == {"a": out}
    frames, pts, rate = _decode(out)
    assert len(frames) == N
    assert pts == clips["a"][2]  # source time base and timestamps kept
    assert rate == FPS
    boxes = clips["a"][1]
    for i in (0, 17, 40, N - 1):
        _assert_drawn(frames[i], boxes[i], colour)
        _assert_not_drawn(frames[i], boxes[(i + 32) % N], colour)  # another frame's box
    assert frames[30][230, 300].max() < 40  # far from any box: background


def test_interleaved_sources_through_the_registry(clips, tmp_path: Path) -> None:
    parsed = SINKS.parse({"type": "video", "path": str(tmp_path), "crf": 18}, key="sinks[0]")
    ra, rb = _results(clips["a"], "a", 0), _results(clips["b"], "b", 5)
    with SINKS.create(parsed) as sink:
        for k in range(0, N, 5):  # uneven batches mixing both sources
            sink.write(ra[k:k + 5] + rb[k:k + 3])
            if k + 3 < N:
                sink.write(rb[k + 3:k + 5])
    for name, class_id in (("a", 0), ("b", 5)):
        frames, _, _ = _decode(tmp_path / f"{name}.annotated.mp4")
        assert len(frames) == N
        boxes = clips[name][1]
        for i in (3, 33, N - 2):
            _assert_drawn(frames[i], boxes[i], color_for_class(class_id))
            _assert_not_drawn(frames[i], boxes[(i + 25) % N], color_for_class(class_id))


def test_exception_still_leaves_a_playable_file(clips, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), VideoSink(tmp_path) as sink:
        sink.write(_results(clips["a"], "a", 0)[:10])
        raise RuntimeError("boom")
    frames, pts, _ = _decode(tmp_path / "a.annotated.mp4")
    assert len(frames) == 10
    assert pts == clips["a"][2][:10]
    _assert_drawn(frames[9], clips["a"][1][9], color_for_class(0))


@pytest.mark.parametrize(("unmatched", "expected"), [("copy", 61), ("skip", 16)])
def test_frames_without_results(
    clips, tmp_path: Path, unmatched: Literal["copy", "skip"], expected: int
) -> None:
    every_4th = list(range(0, N, 4))  # 0 .. 60: the video ends at the last result
    with VideoSink(tmp_path, unmatched=unmatched) as sink:
        sink.write(_results(clips["a"], "a", 0, every_4th))
    frames, pts, _ = _decode(tmp_path / "a.annotated.mp4")
    assert len(frames) == expected
    src_pts, boxes = clips["a"][2], clips["a"][1]
    if unmatched == "copy":
        assert pts == src_pts[:61]
        _assert_drawn(frames[8], boxes[8], color_for_class(0))
        _assert_not_drawn(frames[9], boxes[9], color_for_class(0))
    else:
        assert pts == [src_pts[i] for i in every_4th]  # gaps keep the source timing
        _assert_drawn(frames[2], boxes[8], color_for_class(0))


def test_network_sources_are_ignored_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metas = [FrameMeta("cam", "rtsp://host/stream", i, None, (1, 90000), W, H) for i in range(3)]
    with caplog.at_level(logging.WARNING, "streams.sinks.video"), VideoSink(tmp_path) as sink:
        sink.write([FrameResult(m, Detections.empty()) for m in metas])
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "not a file" in caplog.records[0].message
    assert len(caplog.records) == 1
    assert sink.outputs == {}
    assert list(tmp_path.iterdir()) == []


def test_single_file_path_takes_one_source(clips, tmp_path: Path) -> None:
    out = tmp_path / "only.mp4"
    with pytest.raises(SinkError, match="second source 'b'"), VideoSink(out) as sink:
        sink.write(_results(clips["a"], "a", 0)[:5])
        sink.write(_results(clips["b"], "b", 0)[:5])
    assert len(_decode(out)[0]) == 5  # the first source is still finalised


def test_late_results_are_ignored(clips, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results = _results(clips["a"], "a", 0)[:6]
    with caplog.at_level(logging.WARNING, "streams.sinks.video"), VideoSink(tmp_path) as sink:
        sink.write(results[:4])
        sink.write([results[2], *results[4:]])  # a duplicate of frame 2
    assert len(_decode(tmp_path / "a.annotated.mp4")[0]) == 6
    assert any("out of order" in r.message for r in caplog.records)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.crf"):
        SINKS.parse({"type": "video", "path": "o", "crf": 99}, key="sinks[0]")
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.codec"):
        SINKS.parse({"type": "video", "path": "o", "codec": "nvenc_nonsense"}, key="sinks[0]")
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.unmatched"):
        SINKS.parse({"type": "video", "path": "o", "unmatched": "hold"}, key="sinks[0]")


def test_draw_detections_exact_pixels() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    dets = Detections(np.array([[50, 40, 150, 90], [-20, 60, 10, 120]], np.float32),
                      np.array([0.5, 0.9], np.float32), np.array([1, 2]), ("a", "b", "c"))
    out = draw_detections(image, dets, frame_index=3, line_width=2)
    assert out.shape == image.shape and image.max() == 0  # input untouched
    assert tuple(out[90, 100]) == color_for_class(1)  # bottom edge
    assert tuple(out[70, 50]) == color_for_class(1)  # left edge
    assert tuple(out[99, 5]) == color_for_class(2)  # clipped box: edge on the border
    assert tuple(out[65, 100]) == (0, 0, 0)  # inside the box
    assert out[:16, :24].max() > 150  # frame index text in the corner (anti-aliased)
