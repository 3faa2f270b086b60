"""streams.synthetic attributes: the pattern painted on objects, in the truth, and nothing else changed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streams.synthetic import (
    ATTRIBUTES,
    CLASS_COLORS,
    PATTERNS,
    SceneSpec,
    gt_path_for,
    load_ground_truth,
    render_scene,
    tracking_scene,
    write_clip,
)
from streams.synthetic.shapes import extent


def _geometry(boxes) -> list[tuple]:
    return [(b.x1, b.y1, b.x2, b.y2, b.class_id, b.track_id, b.visible) for b in boxes]


class _PatternedExtents:
    """Stands in for the renderer's trajectory recorder: each frame's patterned objects' extents
    (labelled or not)."""

    def __init__(self) -> None:
        self.frames: list[list[tuple[float, float, float, float]]] = []

    def add(self, t: int, objects) -> None:
        self.frames.append([extent(o) for o in objects if o.pattern != 0])


def test_attributes_change_only_the_paint_of_patterned_objects() -> None:
    base = dict(width=256, height=160, num_frames=25, seed=4, num_objects=(3, 6), speed=(0.01, 0.03))
    extents = _PatternedExtents()
    plain = list(render_scene(SceneSpec(**base)))
    attr = list(render_scene(SceneSpec(**base, attributes=True), extents))  # type: ignore[arg-type]
    patterned = 0
    for (ia, ba), (ib, bb), ext in zip(plain, attr, extents.frames, strict=True):
        assert _geometry(ba) == _geometry(bb)  # same objects, same boxes: only the paint differs
        assert all(b.pattern is None for b in ba) and all(b.pattern in (0, 1, 2) for b in bb)
        changed = np.abs(ia.astype(int) - ib.astype(int)).max(-1) > 0
        inside = np.zeros(changed.shape, bool)
        for x1, y1, x2, y2 in ext:  # grown by the soft edge (1 + 2 * blur px)
            ys = slice(max(int(y1) - 3, 0), max(int(np.ceil(y2)) + 3, 0))
            inside[ys, max(int(x1) - 3, 0) : max(int(np.ceil(x2)) + 3, 0)] = True
        assert not (changed & ~inside).any()  # nothing outside a patterned object changed
        patterned += int(changed.any())
    assert patterned > 10


def test_each_object_keeps_its_pattern_and_all_patterns_occur() -> None:
    spec = SceneSpec(width=320, height=192, num_frames=40, seed=9, num_objects=(4, 8), attributes=True)
    of_track: dict[int, int] = {}
    for _, boxes in render_scene(spec):
        for b in boxes:
            assert of_track.setdefault(b.track_id, b.pattern) == b.pattern
    assert len(of_track) >= 6
    assert set(of_track.values()) == {0, 1, 2}
    # the draws are the scene's own: the same spec gives the same patterns
    again = {b.track_id: b.pattern for _, boxes in render_scene(spec) for b in boxes}
    assert again == of_track


@pytest.mark.parametrize("pattern", PATTERNS)
def test_patterns_are_darker_shades_of_the_class_colour(pattern: str) -> None:
    """One object on a plain, noiseless background: a solid one is its colour, a striped one
    ~45 % darker shade, a dotted one ~25 %."""
    want = {"solid": (0.0, 0.02), "striped": (0.3, 0.6), "dotted": (0.12, 0.4)}[pattern]
    found = 0
    for seed in range(120):
        spec = SceneSpec(width=256, height=256, num_frames=1, seed=seed, num_objects=(1, 1), noise=0.0, blur=0.0,
                         background="plain", object_size=(0.35, 0.4), attributes=True)
        [(img, boxes)] = list(render_scene(spec))
        if len(boxes) != 1 or boxes[0].pattern != PATTERNS.index(pattern) or boxes[0].visible < 1:
            continue
        b = boxes[0]
        colour = np.array(CLASS_COLORS[b.class_id], np.float64)
        region = img[int(b.y1) + 2 : int(b.y2) - 2, int(b.x1) + 2 : int(b.x2) - 2].astype(np.float64)
        # object pixels: nearer the (shaded) class hue than the background grey
        chroma = region.max(-1) - region.min(-1)
        obj = chroma > 0.3 * (colour.max() - colour.min())
        brightness = region[obj].sum(-1) / colour.sum()
        dark = float((brightness < 0.72).mean())
        assert want[0] <= dark <= want[1], (pattern, seed, dark)
        found += 1
        if found == 3:
            break
    assert found == 3


def test_the_ground_truth_lists_each_box_attributes(tmp_path) -> None:
    spec = SceneSpec(width=192, height=128, num_frames=12, seed=3, num_objects=(3, 5), attributes=True,
                     empty_first_frames=2)
    path = write_clip(tmp_path / "a.mp4", spec)
    doc = json.loads(gt_path_for(path).read_text())
    assert doc["attributes"] == {"pattern": list(PATTERNS)} and doc["spec"]["attributes"] is True
    assert doc["frames"][0]["attributes"] == {"pattern": []}
    rendered = [boxes for _, boxes in render_scene(spec)]
    assert [f["attributes"]["pattern"] for f in doc["frames"]] == [[PATTERNS[b.pattern] for b in boxes]
                                                                  for boxes in rendered]
    gt = load_ground_truth(path)
    assert gt.attribute_values == ATTRIBUTES and gt.attributes is not None
    assert [a.tolist() for a in gt.attributes["pattern"]] == [[b.pattern for b in boxes] for boxes in rendered]
    assert gt.box_attributes(5) == [{"pattern": PATTERNS[b.pattern]} for b in rendered[5]] != []
    plain = load_ground_truth(write_clip(tmp_path / "p.mp4", SceneSpec(width=192, height=128, num_frames=4, seed=3)))
    assert plain.attributes is None and plain.attribute_values is None
    assert plain.box_attributes(3) == [{} for _ in plain.boxes[3]]
    assert "attributes" not in json.loads(gt_path_for(tmp_path / "p.mp4").read_text())["spec"]


def test_a_bad_attribute_list_is_refused_with_the_file_and_frame(tmp_path) -> None:
    path = write_clip(tmp_path / "a.mp4", SceneSpec(width=160, height=96, num_frames=6, seed=2, num_objects=(2, 3),
                                                    attributes=True))
    gt_file = gt_path_for(path)
    doc = json.loads(gt_file.read_text())
    frame = next(f for f in doc["frames"] if f["boxes"])
    frame["attributes"]["pattern"][0] = "plaid"
    gt_file.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"frame {frame['frame_index']}: 'pattern' values must be in"):
        load_ground_truth(path)
    frame["attributes"]["pattern"] = frame["attributes"]["pattern"][1:]
    gt_file.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="expected one 'pattern' per box"):
        load_ground_truth(path)


def test_tracking_scenes_carry_attributes(tmp_path) -> None:
    spec = tracking_scene(5, num_frames=60, attributes=True)
    assert tracking_scene(5, num_frames=60).script == spec.script
    gt = load_ground_truth(write_clip(tmp_path / "t.mp4", spec))
    assert gt.track_ids is not None and gt.attributes is not None
    of_track: dict[int, int] = {}
    for ids, pats in zip(gt.track_ids, gt.attributes["pattern"], strict=True):
        for t, p in zip(ids.tolist(), pats.tolist(), strict=True):
            assert of_track.setdefault(t, p) == p
    assert len(of_track) >= 4
