"""Synthetic scenes with exact ground truth: coloured shapes over moving textured backgrounds.

Used to train and evaluate the bundled detector (:mod:`engines.detector`), by ``fovea demo``
and ``fovea eval``, and by tests and benchmarks that need videos whose true boxes are known.
Pure NumPy rendering plus PyAV encoding; no DALI, CUDA or TensorRT imports.

Classes (shape and colour both differ, so a small CNN tells them apart)::

    0 circle    red         3 star   yellow (5 points)
    1 square    green       4 cross  magenta (a plus sign)
    2 triangle  blue

Backgrounds are scrolling smooth-noise textures in desaturated colours with drifting
desaturated elliptical blobs; objects move, grow/shrink, rotate, enter and leave the frame
and overlap (random z-order). Per-frame Gaussian noise and soft (blurred) edges are added.
Which objects are labelled is defined in :mod:`streams.synthetic.truth`.

Modules:

- :mod:`~streams.synthetic.spec`: :class:`SceneSpec` and the class table.
- :mod:`~streams.synthetic.scene`: the scene model (objects, their motion, entering and leaving).
- :mod:`~streams.synthetic.shapes`: shape geometry (outlines, exact boxes, signed distances).
- :mod:`~streams.synthetic.background`: the moving background.
- :mod:`~streams.synthetic.render`: drawing and labelling frames (:func:`render_scene`).
- :mod:`~streams.synthetic.truth`: the labelling rule, :class:`GTBox`, the ``.gt.json`` file.
- :mod:`~streams.synthetic.attributes`: object attributes independent of the class (a
  ``pattern``: solid, striped, dotted), for secondary classifiers (``SceneSpec.attributes``).
- :mod:`~streams.synthetic.clips`: encoding clips with their ground truth.
- :mod:`~streams.synthetic.tracking_scene`: scripted scenes for tracking and counting
  (:func:`tracking_scene`), with identities and exact line/zone counts in their truth.
- :mod:`~streams.synthetic.counting`, :mod:`~streams.synthetic.regions`: that truth, by
  the analytics stage's rules.

Usage::

    spec = SceneSpec(width=640, height=360, num_frames=90, seed=3, empty_first_frames=10)
    for rgb, boxes in render_scene(spec):   # rgb: uint8[H, W, 3]; boxes: list[GTBox]
        ...
    clip = write_clip("out/clip.mp4", spec)     # + out/clip.gt.json
    gt = load_ground_truth(clip)
    gt.boxes[12], gt.class_ids[12]              # float32[N, 4], int64[N]

    clip = write_clip("out/track.mp4", tracking_scene(3))   # scripted: crossings, a line, a zone
    gt = load_ground_truth(clip)
    gt.track_ids[40], gt.tracking["line_counts"]            # int64[N]; {"line": {"in": {...}, ...}}

    clip = write_clip("out/attr.mp4", SceneSpec(seed=5, attributes=True))   # patterned objects
    gt = load_ground_truth(clip)
    gt.attributes["pattern"][12], gt.box_attributes(12)     # int64[N]; [{"pattern": "dotted"}, ...]
"""

from streams.synthetic.attributes import ATTRIBUTES, PATTERNS
from streams.synthetic.clips import make_clips, write_clip
from streams.synthetic.counting import Trajectory, line_crossings, tracking_truth, zone_visits
from streams.synthetic.render import render_scene
from streams.synthetic.spec import (
    CLASS_COLORS,
    CLASS_NAMES,
    Codec,
    CountingLine,
    CountingZone,
    SceneSpec,
    ScriptedObject,
)
from streams.synthetic.tracking_scene import make_tracking_clips, tracking_scene
from streams.synthetic.truth import (
    MIN_BOX_SIZE,
    MIN_VISIBLE,
    GroundTruth,
    GTBox,
    boxes_to_arrays,
    gt_path_for,
    load_ground_truth,
)

__all__ = [
    "ATTRIBUTES",
    "CLASS_COLORS",
    "CLASS_NAMES",
    "MIN_BOX_SIZE",
    "MIN_VISIBLE",
    "PATTERNS",
    "Codec",
    "CountingLine",
    "CountingZone",
    "GTBox",
    "GroundTruth",
    "SceneSpec",
    "ScriptedObject",
    "Trajectory",
    "boxes_to_arrays",
    "gt_path_for",
    "line_crossings",
    "load_ground_truth",
    "make_clips",
    "make_tracking_clips",
    "render_scene",
    "tracking_scene",
    "tracking_truth",
    "write_clip",
    "zone_visits",
]
