"""streams.synthetic: exact ground truth, the labelling rule, determinism, clips on disk."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from streams.synthetic import (
    CLASS_COLORS,
    CLASS_NAMES,
    MIN_BOX_SIZE,
    MIN_VISIBLE,
    SceneSpec,
    gt_path_for,
    load_ground_truth,
    make_clips,
    render_scene,
    write_clip,
)


def _plain(seed: int, **kw) -> SceneSpec:
    args = dict(width=320, height=240, num_frames=8, seed=seed, num_objects=(1, 1), noise=0.0, blur=0.0,
                background="plain", speed=(0.02, 0.05))
    args.update(kw)
    return SceneSpec(**args)


def _mask_box(img: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Box of the pixels at least half-way from the plain background (114) to the object."""
    diff = np.abs(img.astype(np.int32) - 114).max(-1)
    if not (diff > 3).any():
        return None
    mask = diff >= max(3.0, 0.5 * np.percentile(diff[diff > 3], 50))
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64), mask


def test_gt_box_matches_rendered_pixels() -> None:
    checked = {c: 0 for c in range(len(CLASS_NAMES))}
    for seed in range(24):
        for img, boxes in render_scene(_plain(seed)):
            if not boxes:
                continue
            (b,) = boxes
            found = _mask_box(img)
            assert found is not None
            mbox, mask = found
            # circle/square/cross within 1 px; triangle and star tips are thinner than a pixel
            tol = 2.0 if CLASS_NAMES[b.class_id] in ("triangle", "star") else 1.0
            assert np.abs(mbox - np.array(b.xyxy)).max() <= tol, (seed, b, mbox)
            # the object's colour is what fills the mask
            mean = img[mask].mean(0)
            want = np.array(CLASS_COLORS[b.class_id], np.float64)
            assert np.abs(mean - want).max() < 60, (b.class_name, mean, want)
            checked[b.class_id] += 1
    assert all(n > 0 for n in checked.values()), checked


def test_boxes_clipped_and_partial_objects_dropped() -> None:
    dropped_while_visible = 0
    clipped = 0
    for seed in range(12):
        spec = _plain(seed, num_frames=60, speed=(0.03, 0.06))
        last_track_boxes: dict[int, bool] = {}
        for img, boxes in render_scene(spec):
            for b in boxes:
                assert 0 <= b.x1 < b.x2 <= spec.width and 0 <= b.y1 < b.y2 <= spec.height
                assert min(b.x2 - b.x1, b.y2 - b.y1) >= MIN_BOX_SIZE
                assert b.visible >= MIN_VISIBLE
                if b.x1 == 0 or b.y1 == 0 or b.x2 == spec.width or b.y2 == spec.height:
                    clipped += 1
            labelled = {b.track_id for b in boxes}
            # an object that left the labels while still partly on screen: dropped by the rule
            if not boxes and last_track_boxes and _mask_box(img) is not None:
                dropped_while_visible += 1
            last_track_boxes = dict.fromkeys(labelled, True)
    assert clipped > 0
    assert dropped_while_visible > 0


def test_empty_first_frames_and_determinism() -> None:
    spec = SceneSpec(width=192, height=128, num_frames=14, seed=7, empty_first_frames=6, num_objects=(2, 4))
    a = list(render_scene(spec))
    b = list(render_scene(spec))
    assert all(not boxes for _, boxes in a[:6])
    assert all(len(boxes) > 0 for _, boxes in a[6:8])
    for (ia, ba), (ib, bb) in zip(a, b, strict=True):
        assert np.array_equal(ia, ib) and ba == bb
    c = list(render_scene(SceneSpec(width=192, height=128, num_frames=14, seed=8, empty_first_frames=6)))
    assert not np.array_equal(a[10][0], c[10][0])
    assert a[0][0].shape == (128, 192, 3) and a[0][0].dtype == np.uint8


def test_classes_subset() -> None:
    spec = SceneSpec(width=160, height=160, num_frames=20, seed=1, classes=("star",), num_objects=(3, 5))
    ids = {b.class_id for _, boxes in render_scene(spec) for b in boxes}
    assert ids == {CLASS_NAMES.index("star")}
    with pytest.raises(ValueError):
        SceneSpec(classes=("dog",))
    with pytest.raises(ValueError):
        SceneSpec(width=321)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_write_clip_frames_match_gt(tmp_path, codec) -> None:
    spec = SceneSpec(width=160, height=96, num_frames=17, seed=3, codec=codec, gop=5, empty_first_frames=3)
    path = write_clip(tmp_path / "clip", spec)
    assert path.suffix == (".mp4" if codec == "h264" else ".webm")
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == spec.num_frames
    assert (frames[0].width, frames[0].height) == (160, 96)
    if codec == "h264":
        assert sum(f.key_frame for f in frames) >= 3  # gop 5
    gt = load_ground_truth(path)
    assert gt.num_frames == spec.num_frames == len(json.loads(gt_path_for(path).read_text())["frames"])
    assert gt.class_names == CLASS_NAMES
    assert all(len(gt.boxes[i]) == 0 for i in range(3))
    rendered = [boxes for _, boxes in render_scene(spec)]
    for i, boxes in enumerate(rendered):
        np.testing.assert_allclose(gt.boxes[i], np.array([b.xyxy for b in boxes]).reshape(-1, 4), atol=0.01)
        assert gt.class_ids[i].tolist() == [b.class_id for b in boxes]
    assert len(gt.detections(5)) == len(gt.boxes[5])
    assert load_ground_truth(gt_path_for(path)).num_frames == spec.num_frames


def test_write_clip_hevc(tmp_path) -> None:
    if "libx265" not in av.codecs_available:
        pytest.skip("no libx265 in this PyAV build")
    path = write_clip(tmp_path / "h.mp4", SceneSpec(width=128, height=96, num_frames=9, seed=2, codec="hevc"))
    with av.open(str(path)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 9


def test_make_clips(tmp_path) -> None:
    paths = make_clips(tmp_path, 3, base_seed=10_000, sizes=((96, 64), (64, 96)), num_frames=6,
                       empty_first_frames=(0, 2))
    assert [p.name for p in paths] == ["clip_000.mp4", "clip_001.mp4", "clip_002.mp4"]
    gts = [load_ground_truth(p) for p in paths]
    assert [(g.width, g.height) for g in gts] == [(96, 64), (64, 96), (96, 64)]
    assert all(len(b) == 0 for b in gts[1].boxes[:2])


def test_public_names_and_light_import() -> None:
    """Every exported name resolves, and rendering needs neither PyAV nor torch at import."""
    import subprocess
    import sys

    import streams.synthetic

    assert all(hasattr(streams.synthetic, name) for name in streams.synthetic.__all__)
    code = "import sys, streams.synthetic; print(sorted({'av', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
