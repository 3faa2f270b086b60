"""The annotated-video sink drawing segmentation masks and pose keypoints, pixel by pixel."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest

from streams.detections import Detections, InstanceMask
from streams.errors import ConfigError
from streams.sinks import SINKS
from streams.sinks.video import (
    COCO_KEYPOINT_COLOURS,
    COCO_LIMB_COLOURS,
    COCO_SKELETON,
    VideoSink,
    VideoSinkConfig,
    _SourceWriter,
    color_for_class,
    draw_detections,
)

GREY = 100


def _blend(pixel: np.ndarray, colour: tuple[int, int, int], alpha: float) -> np.ndarray:
    """What a mask pixel becomes: ``pixel`` moved towards ``colour`` by ``alpha``."""
    return np.floor(pixel.astype(np.float64) * (1 - alpha) + np.array(colour) * alpha + 0.5).astype(np.uint8)


def _disc(h: int, w: int) -> np.ndarray:
    """A box-sized bitmap: the disc inscribed in it, so the box's corners are outside the mask."""
    yy, xx = np.mgrid[:h, :w]
    return ((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2 <= 1


def _masked(box: tuple[int, int, int, int], frame_hw: tuple[int, int], class_id: int = 3) -> Detections:
    x1, y1, x2, y2 = box
    mask = InstanceMask(x1, y1, _disc(y2 - y1, x2 - x1), frame_hw)
    return Detections(np.array([box], np.float32), np.array([0.9], np.float32), np.array([class_id]),
                      masks=(mask,))


def _outline(image: np.ndarray, dets: Detections, **kw: object) -> np.ndarray:
    """Where the box (and nothing else) is drawn: ``bool[H, W]``."""
    return (draw_detections(image, dets, draw_masks=False, **kw) != image).any(axis=-1)  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0.4, 1.0])
def test_mask_pixels_move_towards_the_class_colour(alpha: float) -> None:
    image = np.full((120, 160, 3), GREY, np.uint8)
    image[:, 80:] = (10, 200, 30)  # two backgrounds: the blend is per pixel
    dets = _masked((30, 20, 110, 100), (120, 160))
    out = draw_detections(image, dets, line_width=2, draw_labels=False, mask_alpha=alpha)
    assert image.max() == 200 and (image[:, :80] == GREY).all()  # the input is untouched
    colour = color_for_class(3)
    box = _outline(image, dets, line_width=2, draw_labels=False)
    assert box.sum() > 0 and (out[box] == colour).all()  # the box drawn over the mask
    inside = dets.masks[0].full() & ~box  # type: ignore[index]
    assert inside.sum() > 4000
    assert (out[inside] == _blend(image[inside], colour, alpha)).all()
    assert tuple(out[60, 40]) == tuple(_blend(np.array([GREY] * 3), colour, alpha))
    untouched = ~dets.masks[0].full() & ~box  # type: ignore[index]
    assert (out[untouched] == image[untouched]).all()  # the box's corners outside the disc too
    assert untouched[22:26, 32:36].all()  # (a corner of the box, inside it but not in the mask)


def test_masks_off_leaves_the_box_only() -> None:
    image = np.full((120, 160, 3), GREY, np.uint8)
    dets = _masked((30, 20, 110, 100), (120, 160))
    out = draw_detections(image, dets, line_width=2, draw_labels=False, draw_masks=False)
    assert tuple(out[60, 70]) == (GREY,) * 3
    assert tuple(out[20, 70]) == color_for_class(3)


@pytest.mark.parametrize(("frame_hw", "image_hw"), [((60, 80), (120, 160)), ((60, 80), (100, 150)),
                                                    ((240, 320), (120, 160))])
def test_a_mask_of_another_frame_size_is_scaled_by_nearest_neighbour(
    frame_hw: tuple[int, int], image_hw: tuple[int, int]
) -> None:
    """A mask made at ``frame_hw`` drawn on an ``image_hw`` frame: exactly the pixels whose
    centre falls on a mask pixel of the frame are blended."""
    fh, fw = frame_hw
    h, w = image_hw
    box = (fw // 5, fh // 6, fw * 4 // 5, fh * 5 // 6)
    dets = _masked(box, frame_hw, class_id=7)
    sx, sy = w / fw, h / fh
    scaled = Detections(dets.xyxy * np.array([sx, sy] * 2, np.float32), dets.confidence, dets.class_id,
                        masks=dets.masks)
    image = np.full((h, w, 3), GREY, np.uint8)
    out = draw_detections(image, scaled, line_width=1, draw_labels=False)
    rows = np.floor((np.arange(h) + 0.5) / sy).astype(int)
    cols = np.floor((np.arange(w) + 0.5) / sx).astype(int)
    expected = dets.masks[0].full()[np.ix_(rows, cols)]  # type: ignore[index]  # the full-frame reference
    box_px = _outline(image, scaled, line_width=1, draw_labels=False)
    assert expected.sum() > 500 and box_px.sum() > 0
    blended = (out != GREY).any(axis=-1) & ~box_px
    assert (blended == (expected & ~box_px)).all()
    assert (out[blended] == _blend(np.array([GREY] * 3), color_for_class(7), 0.4)).all()


def _pose(scores: dict[int, float], points: dict[int, tuple[float, float]]) -> Detections:
    """One person: 17 COCO keypoints, at ``points`` (others at (5, 5), a corner) with
    ``scores`` (others 0.1: hidden)."""
    kp = np.zeros((1, 17, 3), np.float32)
    kp[0, :, :2] = 5.0
    kp[0, :, 2] = 0.1
    for k, (x, y) in points.items():
        kp[0, k, :2] = (x, y)
    for k, s in scores.items():
        kp[0, k, 2] = s
    return Detections(np.array([[20, 20, 190, 190]], np.float32), np.array([0.9], np.float32), np.array([0]),
                      keypoints=kp)


SHOULDER, HIP, KNEE, ANKLE = 5, 11, 13, 15


def test_visible_keypoints_are_dots_and_limbs_join_them() -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    points = {SHOULDER: (60.0, 60.0), HIP: (60.0, 140.0), KNEE: (120.0, 170.0), ANKLE: (150.0, 100.0)}
    dets = _pose({SHOULDER: 0.9, HIP: 0.5, KNEE: 0.49, ANKLE: 0.8}, points)  # 0.5: at the threshold, shown
    out = draw_detections(image, dets, line_width=2, draw_labels=False)
    assert tuple(out[60, 60]) == COCO_KEYPOINT_COLOURS[SHOULDER]
    assert tuple(out[140, 60]) == COCO_KEYPOINT_COLOURS[HIP]
    assert COCO_KEYPOINT_COLOURS[SHOULDER] != COCO_KEYPOINT_COLOURS[HIP]
    body = COCO_LIMB_COLOURS[COCO_SKELETON.index((SHOULDER, HIP))]
    assert tuple(out[100, 60]) == body != COCO_KEYPOINT_COLOURS[SHOULDER]  # the limb, midway
    assert tuple(out[170, 120]) == (0, 0, 0)  # the knee's score is below 0.5: no dot
    assert tuple(out[155, 90]) == (0, 0, 0)  # nor its limbs: hip-knee midway
    assert tuple(out[135, 135]) == (0, 0, 0)  # knee-ankle midway
    assert tuple(out[100, 150]) == COCO_KEYPOINT_COLOURS[ANKLE]  # a visible point without a visible neighbour
    assert tuple(out[5, 5]) == (0, 0, 0)  # the hidden rest
    lower = draw_detections(image, dets, line_width=2, draw_labels=False, keypoint_threshold=0.3)
    assert tuple(lower[170, 120]) == COCO_KEYPOINT_COLOURS[KNEE]
    assert tuple(lower[155, 90]) == COCO_LIMB_COLOURS[COCO_SKELETON.index((KNEE, HIP))]
    off = draw_detections(image, dets, line_width=2, draw_labels=False, draw_keypoints=False)
    assert off[40:180, 40:180].max() == 0


def test_keypoints_without_scores_are_all_drawn_in_the_class_colour_without_limbs() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    kp = np.array([[[30, 30], [70, 30], [50, 70]]], np.float32)  # K = 3, [N, K, 2]: no visibility
    dets = Detections(np.array([[10, 10, 90, 90]], np.float32), np.array([0.9], np.float32), np.array([4]),
                      keypoints=kp)
    out = draw_detections(image, dets, line_width=2, draw_labels=False)
    for x, y in kp[0].tolist():
        assert tuple(out[int(y), int(x)]) == color_for_class(4)
    assert tuple(out[30, 50]) == (0, 0, 0)  # no skeleton for K != 17


def _tiny_clip(path: Path, w: int, h: int) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((h, w, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _annotated_at_double_size(tmp_path: Path, dets: Detections) -> np.ndarray:
    """``dets`` of a 160x120 decode drawn by the sink on the 320x240 grey frame it decodes."""
    clip = _tiny_clip(tmp_path / "a.mp4", 320, 240)
    writer = _SourceWriter("a", str(clip), tmp_path / "o.mp4", VideoSinkConfig(str(tmp_path), line_width=2), {})
    try:
        rgb = np.full((240, 320, 3), GREY, np.uint8)
        return writer._annotate(rgb, dets, 0, (160, 120)).to_ndarray(format="rgb24")
    finally:
        writer.close()


def test_the_sink_scales_masks_and_keypoints_to_the_decoded_frame(tmp_path: Path) -> None:
    """Results at 160x120 (another decode size), drawn on the 320x240 frame the sink decodes."""
    kp = np.zeros((1, 17, 3), np.float32)
    kp[0, SHOULDER] = (40, 30, 0.9)
    kp[0, HIP] = (40, 70, 0.9)
    dets = _masked((90, 20, 150, 100), (120, 160), class_id=2)
    dets = Detections(dets.xyxy, dets.confidence, dets.class_id, masks=dets.masks, keypoints=kp)
    out = _annotated_at_double_size(tmp_path, dets)
    tinted = tuple(_blend(np.array([GREY] * 3), color_for_class(2), 0.4))
    assert tuple(out[120, 240]) == tinted  # the disc's centre (120, 60) doubled
    assert tuple(out[48, 190]) == (GREY,) * 3  # the box's corner at 2x: inside the box, outside the disc
    assert tuple(out[40, 180]) == color_for_class(2)  # the top edge at y 40 (2 x 20)
    assert tuple(out[140, 180 + 4]) == tinted and tuple(out[140, 180 - 4]) == (GREY,) * 3  # the left edge moved
    assert tuple(out[60, 80]) == COCO_KEYPOINT_COLOURS[SHOULDER]  # (40, 30) doubled
    assert tuple(out[100, 80]) == COCO_LIMB_COLOURS[COCO_SKELETON.index((SHOULDER, HIP))]
    assert tuple(out[30, 40]) == (GREY,) * 3  # not at the unscaled point


def test_mask_and_keypoint_keys_are_validated() -> None:
    def parse(**kw: object) -> VideoSinkConfig:
        cfg = SINKS.parse({"type": "video", "path": "o", **kw}, key="sinks[0]").config
        assert isinstance(cfg, VideoSinkConfig)
        return cfg

    for bad in (0, -0.1, 1.5, math.nan):
        with pytest.raises(ConfigError, match=r"sinks\[0\]\.mask_alpha"):
            parse(mask_alpha=bad)
    for bad in (-0.01, 1.01):
        with pytest.raises(ConfigError, match=r"sinks\[0\]\.keypoint_threshold"):
            parse(keypoint_threshold=bad)
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.masks"):
        parse(masks="yes")
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.keypoints"):
        parse(keypoints=1)
    cfg = parse(mask_alpha=1, keypoints=False, keypoint_threshold=0)
    assert (cfg.mask_alpha, cfg.masks, cfg.keypoints, cfg.keypoint_threshold) == (1.0, True, False, 0.0)
    assert parse().mask_alpha == 0.4 and parse().keypoint_threshold == 0.5
    with pytest.raises(ConfigError, match=r"video\.mask_alpha"):
        VideoSink("o", mask_alpha=0.0)  # built directly: refused the same way, before any work


def _with_plates(box: tuple[int, int, int, int], plates: list[dict[str, object]]) -> Detections:
    return Detections(np.array([box], np.float32), np.array([0.9], np.float32), np.array([2]),
                      attributes=({"plates": plates, "colour": ["red", 0.93]},))


def test_a_secondary_detectors_boxes_are_drawn_thinner_in_their_parents_colour() -> None:
    image = np.full((120, 160, 3), GREY, np.uint8)
    dets = _with_plates((20, 20, 140, 100), [{"label": "plate", "score": 0.9, "box": [60, 70, 100, 90]}])
    out = draw_detections(image, dets, line_width=4, draw_labels=False)
    colour = color_for_class(2)
    assert tuple(out[70, 80]) == colour and tuple(out[71, 80]) == colour  # the child's top edge, 2 px wide
    assert tuple(out[72, 80]) == (GREY,) * 3 and tuple(out[80, 80]) == (GREY,) * 3  # thinner than the parent's 4
    assert tuple(out[80, 60]) == colour and tuple(out[80, 99]) == colour  # its left and right edges
    none = draw_detections(image, _with_plates((20, 20, 140, 100), []), line_width=4, draw_labels=False)
    assert tuple(none[70, 80]) == (GREY,) * 3  # looked, found nothing: no child box


def test_label_text_counts_a_detectors_children_and_names_a_classifiers_label() -> None:
    from streams.sinks.video import _attribute_text

    plates = [{"label": "plate", "score": 0.9, "box": [0, 0, 1, 1]}] * 2 + [
        {"label": "sticker", "score": 0.5, "box": [0, 0, 1, 1]}]
    assert _attribute_text(plates) == " 2 plate 1 sticker"
    assert _attribute_text([]) == ""
    assert _attribute_text(["red", 0.93]) == " red"


def test_the_sink_scales_a_detectors_children_to_the_decoded_frame(tmp_path: Path) -> None:
    dets = _with_plates((10, 10, 150, 110), [{"label": "plate", "score": 0.9, "box": [30, 40, 70, 60]}])
    out = _annotated_at_double_size(tmp_path, dets)
    assert tuple(out[80, 100]) == color_for_class(2)  # the child's top edge (y 40, x 30..70) doubled
    assert tuple(out[40, 50]) == (GREY,) * 3  # nothing at the unscaled edge
    assert dets.attributes is not None and dets.attributes[0]["plates"][0]["box"] == [30, 40, 70, 60]  # not mutated
