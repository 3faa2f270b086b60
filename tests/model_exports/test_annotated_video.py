"""A segmentation job and a pose job on real Ultralytics exports, writing the annotated video.

Each export (built from its YAML, random weights: :mod:`tests.model_exports.ultralytics_exports`)
runs a CPU job over a short synthetic clip with two ``video`` sinks, the masks (or keypoints)
drawn and not, both lossless (``crf: 0``) and without labels. Then, per frame, against the
job's own detections:

- segmentation: the two videos are the same away from the masks (2 px: 4:2:0 chroma blurs
  their edges), and inside a mask (away from its edge, other masks and the box outlines
  drawn over them) a pixel is the other video's pixel moved towards the class colour by
  ``mask_alpha``, to the rounding of the RGB/YUV conversions;
- pose: at each visible keypoint of the detection drawn last (nothing drawn over its dots)
  the video has the keypoint's colour.

Needs ``ultralytics`` (and the torchvision matching torch): the ``test-models`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from pipelines.runner import FileJob
from streams.config import parse_config
from streams.frames import FrameResult
from streams.sinks.video import COCO_KEYPOINT_COLOURS, color_for_class
from tests.optional import require_module, skip_for_ci_gap

skip_for_ci_gap("torchvision")  # ultralytics imports it
require_module("ultralytics", 'the test-models extra: pip install -e ".[test-models]"')

from tests.model_exports.ultralytics_exports import build, export, frames  # noqa: E402

# two exports (2-4 s each on 2 CPU cores) and a 4-frame CPU job each
pytestmark = pytest.mark.slow

ALPHA = 0.4


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """The synthetic scene the exports are calibrated on, as a lossless H.264 clip."""
    rgb = frames(4)
    path = tmp_path_factory.mktemp("scene") / "scene.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = rgb[0].shape[1], rgb[0].shape[0], "yuv420p"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for i, image in enumerate(rgb):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path, rgb


def _run(model: Path, clip: Path, out: Path, key: str) -> tuple[list[FrameResult], list[np.ndarray], list[np.ndarray]]:
    """The job's results and the frames of its two videos: ``key`` (masks / keypoints) on, off."""
    video: dict[str, Any] = {"type": "video", "crf": 0, "draw_labels": False}
    raw = {"sources": [str(clip)], "model": {"path": str(model)}, "engine": {"device": "cpu"},
           "decode": {"backend": "cpu"},
           "sinks": [{**video, "path": str(out / "on.mp4")}, {**video, "path": str(out / "off.mp4"), key: False}]}
    job = FileJob(parse_config(raw), show_progress=False)
    results = sorted((r for b in job.batches() for r in b), key=lambda r: r.frame.frame_index)
    assert job.summary.ok, job.summary.to_text()

    def decode(path: Path) -> list[np.ndarray]:
        with av.open(str(path)) as c:
            return [f.to_ndarray(format="rgb24").astype(np.int16) for f in c.decode(c.streams.video[0])]

    on, off = decode(out / "on.mp4"), decode(out / "off.mp4")
    assert len(results) == len(on) == len(off) == 4
    return results, on, off


def _near(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` grown by ``px`` pixels (a square neighbourhood)."""
    h, w = mask.shape
    padded = np.pad(mask, px)
    out = np.zeros_like(mask)
    for dy in range(2 * px + 1):
        for dx in range(2 * px + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def _outlines(xyxy: np.ndarray, h: int, w: int, px: int) -> np.ndarray:
    """The boxes' outlines (clipped to the frame), grown by ``px``."""
    edges = np.zeros((h, w), bool)
    for box in np.round(xyxy).astype(np.int64).tolist():
        x1, x2 = sorted(min(max(v, 0), w - 1) for v in box[0::2])
        y1, y2 = sorted(min(max(v, 0), h - 1) for v in box[1::2])
        edges[y1:y2 + 1, [x1, x2]] = True
        edges[[y1, y2], x1:x2 + 1] = True
    return _near(edges, px)


def test_a_segmentation_job_draws_its_masks(clip: tuple[Path, list[np.ndarray]], tmp_path: Path) -> None:
    path, rgb = clip
    model = export(build("yolov8n-seg.yaml", rgb), tmp_path / "seg.onnx", dynamic=True)
    results, on, off = _run(model, path, tmp_path, "masks")
    single = away = 0
    for r, drawn, plain in zip(results, on, off, strict=True):
        masks = r.detections.masks
        assert masks is not None and len(masks) >= 3
        h, w = drawn.shape[:2]
        cover = np.zeros((h, w), np.int64)
        for m in masks:
            cover += m.full()
        outside = ~_near(cover > 0, 2)
        assert (drawn[outside] == plain[outside]).all()  # away from every mask: the same video
        away += int(outside.sum())
        boxes = _outlines(r.detections.xyxy, h, w, px=3)
        errors, moved = [], []
        for m, cid in zip(masks, r.detections.class_id.tolist(), strict=True):
            only = m.full() & (cover == 1)
            only &= ~_near(~only, 2) & ~boxes
            expected = plain[only] * (1 - ALPHA) + np.array(color_for_class(cid)) * ALPHA
            errors.append(np.abs(drawn[only] - expected).max(axis=-1))
            moved.append(np.abs(drawn[only] - plain[only]).max(axis=-1))
            single += int(only.sum())
        assert np.percentile(np.concatenate(errors), 99) <= 4  # (the frame index's corner: the 1 %)
        assert np.median(np.concatenate(moved)) >= 15
    assert single > 5000 and away > 5000


def test_a_pose_job_draws_its_keypoints(clip: tuple[Path, list[np.ndarray]], tmp_path: Path) -> None:
    path, rgb = clip
    model = export(build("yolov8n-pose.yaml", rgb, class_bias=-1.0), tmp_path / "pose.onnx")
    results, on, off = _run(model, path, tmp_path, "keypoints")
    checked = 0
    for r, drawn, plain in zip(results, on, off, strict=True):
        kp = r.detections.keypoints
        assert kp is not None and kp.shape[1:] == (17, 3) and len(kp) >= 1
        h, w = drawn.shape[:2]
        last = kp[-1]  # the detection drawn last: no other dot or limb over its dots
        shown = [k for k in range(17) if last[k, 2] >= 0.5]
        for k in shown:
            x, y = last[k, :2].tolist()
            later = [j for j in shown if j > k]  # its own dots drawn after this one
            if not (8 <= x < w - 8 and 30 <= y < h - 8) or any(
                    np.hypot(*(last[j, :2] - last[k, :2])) < 10 for j in later):
                continue
            pixel = drawn[int(y), int(x)]
            assert np.abs(pixel - np.array(COCO_KEYPOINT_COLOURS[k])).max() <= 12, (k, x, y, pixel)
            checked += 1
        assert not np.array_equal(drawn, plain)
    assert checked >= 4
