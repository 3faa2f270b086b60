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


# -- tracking scenes: identities, lines, zones (new fields; the old output is unchanged) ---------------

# Computed with the code BEFORE identities/lines/zones/script were added to SceneSpec: the first
# 12 frames of the default scene (pixels and boxes) and the .gt.json of SceneSpec(num_frames=12).
# The bundled detector was trained on these frames; they must never change.
DEFAULT_FRAMES_SHA256 = "bf2de00bc248c2d139ff531805bf1519c4735b6ea4c86cebf098d900ddf20086"
DEFAULT_GT_SHA256 = "b4bee4be3faa7dadd1db8c5929dd0ac3328b8c31750a48eefc06be8b65695971"


def test_default_scene_renders_and_writes_what_it_did_before(tmp_path) -> None:
    import hashlib
    import itertools

    h = hashlib.sha256()
    for rgb, boxes in itertools.islice(render_scene(SceneSpec()), 12):
        h.update(rgb.tobytes())
        h.update(repr([(b.x1, b.y1, b.x2, b.y2, b.class_id, b.track_id, b.visible) for b in boxes]).encode())
    assert h.hexdigest() == DEFAULT_FRAMES_SHA256
    path = write_clip(tmp_path / "clip.mp4", SceneSpec(num_frames=12))
    assert hashlib.sha256(gt_path_for(path).read_bytes()).hexdigest() == DEFAULT_GT_SHA256


def test_identities_lines_and_zones_change_the_truth_not_the_pixels(tmp_path) -> None:
    from streams.synthetic import CountingLine, CountingZone

    base = dict(width=192, height=128, num_frames=30, seed=5, num_objects=(3, 5), speed=(0.02, 0.04))
    line = CountingLine("mid", (0, 64), (192, 64))
    zone = CountingZone("left", ((0, 0), (96, 0), (96, 128), (0, 128)))
    plain, tracked = SceneSpec(**base), SceneSpec(**base, identities=True, lines=(line,), zones=(zone,))
    for (ia, ba), (ib, bb) in zip(render_scene(plain), render_scene(tracked), strict=True):
        assert np.array_equal(ia, ib) and ba == bb
    a = json.loads(gt_path_for(write_clip(tmp_path / "a.mp4", plain)).read_text())
    b = json.loads(gt_path_for(write_clip(tmp_path / "b.mp4", tracked)).read_text())
    assert "tracking" not in a and all("track_ids" not in f for f in a["frames"])
    assert set(a["spec"]) < set(b["spec"]) and {"identities", "lines", "zones"} == set(b["spec"]) - set(a["spec"])
    assert [(f["boxes"], f["class_ids"]) for f in a["frames"]] == [(f["boxes"], f["class_ids"]) for f in b["frames"]]
    rendered = [boxes for _, boxes in render_scene(tracked)]
    assert [f["track_ids"] for f in b["frames"]] == [[x.track_id for x in boxes] for boxes in rendered]
    gt = load_ground_truth(tmp_path / "b.mp4")  # old readers: the same arrays; new: the ids and the counts
    assert gt.track_ids is not None and load_ground_truth(tmp_path / "a.mp4").track_ids is None
    cls_of: dict[int, int] = {}
    for ids, cls in zip(gt.track_ids, gt.class_ids, strict=True):
        assert len(set(ids.tolist())) == len(ids)  # one box per object and frame
        for t, c in zip(ids.tolist(), cls.tolist(), strict=True):
            assert cls_of.setdefault(t, c) == c  # an id keeps its class: it is one object
    assert len(cls_of) >= 3
    assert gt.tracking is not None and set(gt.tracking["line_counts"]) == {"mid"}
    assert set(gt.tracking["zone_counts"]) == {"left"}


def _traj(track: int, points, cls: int = 0):
    from streams.synthetic import Trajectory

    return Trajectory(track, cls, tuple((f, float(x), float(y)) for f, x, y in points))


def test_line_truth_of_hand_made_paths() -> None:
    """A line from (0, 100) to (200, 100): ``in`` is downwards (its right-hand side on the frame)."""
    from streams.synthetic import CountingLine, line_crossings

    line = CountingLine("gate", (0, 100), (200, 100))
    paths = [
        _traj(1, [(0, 50, 80), (1, 50, 95), (2, 50, 105), (3, 50, 120)]),  # down once: in
        _traj(2, [(0, 60, 80), (1, 60, 120), (2, 60, 130), (3, 60, 80)]),  # down, then back up: in, out
        _traj(3, [(0, 70, 80), (1, 70, 99), (2, 70, 102), (3, 70, 98), (4, 70, 80)]),  # wobbles in the band
        _traj(4, [(0, 250, 80), (1, 250, 120)]),  # passes beside the segment's end
        _traj(5, [(0, 80, 120), (1, 80, 130)]),  # first seen below: nothing crossed yet
        _traj(6, [(0, 90, 80), (5, 90, 120)]),  # a gap of 5 frames is one step
    ]
    got = [(c.track_id, c.direction, c.frame_index) for c in line_crossings(paths, [line])]
    assert sorted(got) == [(1, "in", 2), (2, "in", 1), (2, "out", 3), (6, "in", 5)]
    # reversing the line swaps the directions
    back = CountingLine("gate", (200, 100), (0, 100))
    assert sorted((c.track_id, c.direction) for c in line_crossings(paths, [back])) == [
        (1, "out"), (2, "in"), (2, "out"), (6, "out")]


def test_zone_truth_of_hand_made_paths() -> None:
    from streams.synthetic import CountingZone, zone_visits

    zone = CountingZone("box", ((100, 100), (200, 100), (200, 200), (100, 200)))
    n, fps = 7, 25.0
    inside_n = _traj(1, [(f, 50, 150) for f in range(3)] + [(f, 150, 150) for f in range(3, 3 + n)]
                     + [(f, 250, 150) for f in range(3 + n, 15)])
    stays = _traj(2, [(0, 150, 150), (1, 160, 150)])  # starts inside; the track ends inside
    border = _traj(3, [(0, 150, 150), (1, 202, 150), (2, 150, 150), (3, 210, 150)])  # 2 px out is not out
    visits = {v.track_id: v for v in zone_visits([inside_n, stays], [zone], fps)}
    assert (visits[1].enter_frame, visits[1].exit_frame, visits[1].reason) == (3, 3 + n, "left")
    assert visits[1].dwell_s == pytest.approx(n / fps)
    assert (visits[2].enter_frame, visits[2].exit_frame, visits[2].reason) == (0, 1, "end")
    assert visits[2].dwell_s == pytest.approx(1 / fps)
    [v] = zone_visits([border], [zone], fps)
    assert (v.enter_frame, v.exit_frame) == (0, 3)


def test_scripted_objects_follow_their_paths() -> None:
    from streams.synthetic import ScriptedObject

    o = ScriptedObject("star", ((2, 0, 0), (6, 40, 20), (10, 40, 20)))
    assert o.position(1) is None and o.position(11) is None
    assert o.position(4) == (20.0, 10.0) and o.position(8) == (40.0, 20.0)
    with pytest.raises(ValueError):
        ScriptedObject("star", ((3, 0, 0), (3, 1, 1)))
    with pytest.raises(ValueError):
        ScriptedObject("dog", ((0, 0, 0),))
    spec = SceneSpec(width=128, height=96, num_frames=12, seed=1, noise=0.0, blur=0.0, background="plain",
                     script=(ScriptedObject("square", ((0, 20, 48), (11, 108, 48)), size=0.3),
                             ScriptedObject("circle", ((4, 64, 20), (8, 64, 20)), size=0.3)))
    frames = [boxes for _, boxes in render_scene(spec)]
    assert [[b.track_id for b in boxes] for boxes in frames][:5] == [[0], [0], [0], [0], [0, 1]]
    assert [b.track_id for b in frames[9]] == [0]
    centres = [(b.x1 + b.x2) / 2 for boxes in frames for b in boxes if b.track_id == 0]
    assert centres == sorted(centres) and centres[0] == pytest.approx(20, abs=1) and centres[-1] == pytest.approx(
        108, abs=1)


def test_tracking_scene_stages_crossings_occlusions_lines_and_a_zone(tmp_path) -> None:
    from streams.synthetic import load_ground_truth, tracking_scene

    spec = tracking_scene(11)
    assert spec == tracking_scene(11) and spec != tracking_scene(12)
    frames = [boxes for _, boxes in render_scene(spec)]
    # the pair (objects 2 and 3, one class) passes each other: the one behind is hidden a while
    pair_frames = [{b.track_id: b for b in boxes if b.track_id in (2, 3)} for boxes in frames]
    both = [i for i, p in enumerate(pair_frames) if len(p) == 2]
    assert both and any(len(p) == 1 for p in pair_frames[both[0]: both[-1]])
    assert spec.script[2].cls == spec.script[3].cls
    path = write_clip(tmp_path / "t.mp4", spec)
    gt = load_ground_truth(path)
    assert gt.track_ids is not None and gt.tracking is not None
    counts = gt.tracking["line_counts"]["line"]
    assert sum(counts["in"].values()) == 2 and sum(counts["out"].values()) == 2  # objects 0, 4 down; 1, 4 up
    crossed = {(c["track_id"], c["direction"]) for c in gt.tracking["line_crossings"]}
    assert crossed == {(0, "in"), (4, "in"), (1, "out"), (4, "out")}
    [visit] = gt.tracking["zone_visits"]
    assert visit["track_id"] == 5 and visit["reason"] == "left" and 1.5 < visit["dwell_s"] < 4.0
    assert gt.tracking["zone_counts"]["zone"] == {"enters": {visit["class"]: 1}, "exits": {visit["class"]: 1}}
