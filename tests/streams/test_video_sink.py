"""The annotated-video sink on small H.264 clips generated with PyAV (CPU only, ~2 s)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import av
import numpy as np
import pytest

from streams.analytics_config import AnalyticsConfig
from streams.detections import Detections
from streams.errors import ConfigError, SinkError
from streams.events import Event
from streams.frames import FrameMeta, FrameResult
from streams.schema import from_dict
from streams.sinks import SINKS
from streams.sinks.video import LINE_COLOUR, ZONE_COLOUR, VideoSink, _Overlay, color_for_class, draw_detections

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


ANALYTICS = {"sources": {"*": {"lines": [{"name": "gate", "points": [[160, 0], [160, 240]]}],
                               "zones": [{"name": "lot", "points": [[0.0625, 0.1], [0.3125, 0.1],
                                                                    [0.3125, 0.35], [0.0625, 0.35]],
                                          "normalized": True}]}}}  # x 20..100, y 24..84


def _tracked(results: list[FrameResult], crossing: int = 31) -> list[FrameResult]:
    """The results with track 7, and the gate's line_cross event at ``crossing``."""
    out = []
    for r in results:
        m = r.frame
        events = (Event("line_cross", m.source_id, m.frame_index, m.pts, m.time_base, 7, "class0",
                        {"line": "gate", "direction": "out"}),) if m.frame_index == crossing else ()
        out.append(FrameResult(m, r.detections.with_tracks(np.array([7])), events))
    return out


def test_draws_lines_zones_and_trails(clips, tmp_path: Path) -> None:
    results = _tracked(_results(clips["a"], "a", 0))
    with VideoSink(tmp_path / "with", crf=18) as sink:
        sink.use_analytics(from_dict(AnalyticsConfig, ANALYTICS, "analytics"))
        sink.write(results)
    with VideoSink(tmp_path / "without", crf=18, trail=0) as plain:  # no analytics, no trails
        plain.write(results)
    drawn, _, _ = _decode(tmp_path / "with" / "a.annotated.mp4")
    bare, _, _ = _decode(tmp_path / "without" / "a.annotated.mp4")
    assert len(drawn) == len(bare) == N
    for i in (0, 40, N - 1):
        assert _is_colour(drawn[i][220, 160], LINE_COLOUR), drawn[i][220, 160]  # the line, below the box
        bottom, left = drawn[i][82:87, 60], drawn[i][60, 18:23]  # the zone's edges y 84, x 20 (2 px wide)
        assert any(_is_colour(p, ZONE_COLOUR) for p in bottom) and any(_is_colour(p, ZONE_COLOUR) for p in left)
        assert bare[i][220, 160].max() < 40 and bare[i][82:87, 60].max() < 40  # no analytics: background
        _assert_drawn(drawn[i], clips["a"][1][i], color_for_class(0))  # the boxes still drawn over it
    # the trail: the anchors (bottom centre, y 169) of the last 20 frames, behind the box
    assert drawn[30][169, 115].min() > 150 and bare[30][169, 115].max() < 40
    assert drawn[30][169, 40].max() < 40  # older than 20 frames: gone
    writer_counts = sink._writers["a"].overlay.crossings
    assert writer_counts == {"gate": {"out": 1}}


def test_overlay_keeps_running_counts_from_events() -> None:
    overlay = _Overlay("cam", from_dict(AnalyticsConfig, ANALYTICS, "analytics"), trail=3)
    meta = FrameMeta("cam", "/v/cam.mp4", 0, 0, (1, 25), W, H)

    def ev(kind: str, track: int, **data: object) -> Event:
        return Event(kind, "cam", 0, 0, (1, 25), track, "car", data)

    dets = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32), np.array([0]),
                      track_id=np.array([4]))
    overlay.update(FrameResult(meta, dets, (ev("zone_enter", 1, zone="lot"), ev("zone_enter", 2, zone="lot"),
                                            ev("line_cross", 1, line="gate", direction="in"))))
    overlay.update(FrameResult(meta, Detections.empty(), (ev("zone_exit", 1, zone="lot", reason="left"),
                                                          ev("line_cross", 2, line="gate", direction="in"))))
    assert overlay.occupancy["lot"] == 1 and overlay.entered["lot"] == 2
    assert overlay.crossings == {"gate": {"in": 2}}
    assert overlay.geometry is not None and overlay.geometry.zones[0].polygon[1].tolist() == [100.0, 24.0]
    assert list(overlay.trails[4]) == [(5.0, 10.0)]  # bottom centre


def test_track_ids_are_drawn_in_the_label() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    box = np.array([[20, 50, 120, 90]], np.float32)
    plain = Detections(box, np.array([0.5], np.float32), np.array([1]), ("a", "b"))
    tracked = plain.with_tracks(np.array([12345]))
    untracked = plain.with_tracks(np.array([-1]))
    colour = color_for_class(1)

    def label_end(out: np.ndarray) -> int:  # the label's last column, on its row above the box
        row = out[45]
        return max(x for x in range(200) if tuple(row[x]) == colour)

    ends = [label_end(draw_detections(image, d, line_width=2)) for d in (plain, tracked, untracked)]
    assert ends[1] > ends[0] + 20  # "#12345 " widens the label
    assert ends[2] == ends[0]       # -1: no id shown


def test_trail_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.trail"):
        SINKS.parse({"type": "video", "path": "o", "trail": -1}, key="sinks[0]")
    assert SINKS.parse({"type": "video", "path": "o", "trail": 0}, key="sinks[0]").config.trail == 0
