"""Ground truth of synthetic scenes: the labelling rule, per-frame boxes, and the ``.gt.json`` file.

Labelling rule (what :class:`GTBox` lists for a frame):

* A box is the exact bounding box of the object's shape *inside the frame* (the outline
  clipped to the frame rectangle, then boxed), in pixel ``xyxy`` (pixel ``i`` covers
  ``[i, i + 1)``). Occlusion does not shrink it: an object partly hidden by others keeps
  its full (in-frame) extent.
* An object is labelled only if its *visible fraction* — the area of its own pixels that
  are inside the frame and not covered by objects in front of it, divided by its full
  area — is at least :data:`MIN_VISIBLE`, and the clipped box is at least
  :data:`MIN_BOX_SIZE` pixels on both sides. Anything else is drawn but not labelled
  (too little of it shows to expect a detection).

A clip's ground truth is written beside it as ``<stem>.gt.json`` (compact JSON, boxes
rounded to 0.01 px); :func:`load_ground_truth` reads it back as arrays per frame::

    {"width": 640, "height": 360, "fps": 30.0, "num_frames": 60, "class_names": [...],
     "codec": "h264", "seed": 0, "spec": {...},
     "frames": [{"frame_index": 0, "boxes": [[x1, y1, x2, y2], ...], "class_ids": [2, ...]}, ...]}

Tracking scenes add to it, only when their spec asks (so every other file stays
byte-for-byte what it was, and readers that do not know the new keys read it as before):
``"track_ids"`` in every frame (``SceneSpec.identities``: each box's object id, the same
for the object in every frame), and ``"tracking"`` (``SceneSpec.lines``/``zones``: the
exact line and zone counts, :mod:`streams.synthetic.counting`). Scenes with attributes
(``SceneSpec.attributes``, :mod:`streams.synthetic.attributes`) add ``"attributes"`` at the
top (each attribute's values) and in every frame (each box's value, in box order)::

    {..., "attributes": {"pattern": ["solid", "striped", "dotted"]},
     "frames": [{"frame_index": 0, "boxes": [...], "class_ids": [2, 0],
                 "attributes": {"pattern": ["dotted", "solid"]}}, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.detections import Detections
from streams.synthetic.attributes import ATTRIBUTES, PATTERNS
from streams.synthetic.spec import CLASS_NAMES, SceneSpec, spec_record

MIN_VISIBLE = 0.4
MIN_BOX_SIZE = 8.0


@dataclass(frozen=True)
class GTBox:
    """One labelled object in one frame (pixel ``xyxy`` clipped to the frame)."""

    x1: float
    y1: float
    x2: float
    y2: float
    class_id: int
    track_id: int
    visible: float  # visible fraction in [MIN_VISIBLE, 1]
    pattern: int | None = None  # index into PATTERNS; None: the scene has no attributes

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_id]


def boxes_to_arrays(boxes: Sequence[GTBox]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``(xyxy float32[N, 4], class_id int64[N])`` of a frame's boxes."""
    xyxy = np.array([b.xyxy for b in boxes], np.float32).reshape(-1, 4)
    return xyxy, np.array([b.class_id for b in boxes], np.int64)


@dataclass(frozen=True)
class GroundTruth:
    """The ground truth of a written clip: one entry per frame, in presentation order."""

    width: int
    height: int
    fps: float
    class_names: tuple[str, ...]
    boxes: list[npt.NDArray[np.float32]] = field(repr=False)  # float32[N, 4] per frame
    class_ids: list[npt.NDArray[np.int64]] = field(repr=False)  # int64[N] per frame
    track_ids: list[npt.NDArray[np.int64]] | None = field(default=None, repr=False)  # int64[N] per frame
    tracking: dict[str, Any] | None = field(default=None, repr=False)  # lines, zones and their counts
    # attribute name -> int64[N] per frame (ids index attribute_values[name]); None: no attributes
    attributes: dict[str, list[npt.NDArray[np.int64]]] | None = field(default=None, repr=False)
    attribute_values: dict[str, tuple[str, ...]] | None = None  # attribute name -> its values

    @property
    def num_frames(self) -> int:
        return len(self.boxes)

    def detections(self, frame_index: int) -> Detections:
        """A frame's boxes as :class:`Detections` with confidence 1."""
        b = self.boxes[frame_index]
        return Detections(b, np.ones(len(b), np.float32), self.class_ids[frame_index], self.class_names)

    def box_attributes(self, frame_index: int) -> list[dict[str, str]]:
        """Each box's attributes in a frame, in box order (``[{"pattern": "striped"}, ...]``;
        empty dicts when the clip has no attributes)."""
        n = len(self.boxes[frame_index])
        if self.attributes is None or self.attribute_values is None:
            return [{} for _ in range(n)]
        out: list[dict[str, str]] = [{} for _ in range(n)]
        for name, per_frame in self.attributes.items():
            values = self.attribute_values[name]
            for k, v in enumerate(per_frame[frame_index].tolist()):
                out[k][name] = values[v]
        return out


def gt_path_for(clip: str | Path) -> Path:
    """Where a clip's ground truth is written: ``a/b.mp4`` -> ``a/b.gt.json``."""
    clip = Path(clip)
    return clip.with_name(clip.stem + ".gt.json")


def frame_record(frame_index: int, boxes: Sequence[GTBox], identities: bool = False,
                 attributes: bool = False) -> dict[str, Any]:
    """One frame's entry of the ``.gt.json`` file (boxes rounded to 0.01 px; with
    ``identities``, each box's object id too; with ``attributes``, each box's attributes)."""
    xyxy, cls = boxes_to_arrays(boxes)
    record: dict[str, Any] = {
        "frame_index": frame_index,
        "boxes": np.round(xyxy.astype(np.float64), 2).tolist(),
        "class_ids": cls.tolist(),
    }
    if identities:
        record["track_ids"] = [b.track_id for b in boxes]
    if attributes:
        if any(b.pattern is None for b in boxes):
            raise ValueError(f"frame {frame_index}: attributes asked for, but a box has none (a spec without them?)")
        record["attributes"] = {"pattern": [PATTERNS[b.pattern] for b in boxes if b.pattern is not None]}
    return record


def write_ground_truth(clip: Path, spec: SceneSpec, frames: list[dict[str, Any]],
                       tracking: dict[str, Any] | None = None) -> Path:
    """Write ``frames`` (from :func:`frame_record`), the spec and the tracking truth (if
    any: :func:`streams.synthetic.counting.tracking_truth`) to the clip's ``.gt.json``."""
    doc = {
        "width": spec.width,
        "height": spec.height,
        "fps": spec.fps,
        "num_frames": spec.num_frames,
        "class_names": list(CLASS_NAMES),
        "codec": spec.codec,
        "seed": spec.seed,
        "spec": spec_record(spec),
        "frames": frames,
    }
    if tracking is not None:
        doc["tracking"] = tracking
    if spec.attributes:
        doc["attributes"] = {name: list(values) for name, values in ATTRIBUTES.items()}
    path = gt_path_for(clip)
    path.write_text(json.dumps(doc, separators=(",", ":")))
    return path


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Read a clip's ground truth, given the clip's path or the ``.gt.json`` itself."""
    path = Path(path)
    gt = path if path.name.endswith(".gt.json") else gt_path_for(path)
    doc = json.loads(gt.read_text())
    frames = sorted(doc["frames"], key=lambda f: f["frame_index"])
    if [f["frame_index"] for f in frames] != list(range(len(frames))):
        raise ValueError(f"{gt}: frame indices are not 0..{len(frames) - 1}")
    values: dict[str, tuple[str, ...]] | None = None
    attributes: dict[str, list[npt.NDArray[np.int64]]] | None = None
    if "attributes" in doc:
        values = {name: tuple(v) for name, v in doc["attributes"].items()}
        attributes = {name: [_attribute_ids(gt, f, name, vals) for f in frames] for name, vals in values.items()}
    return GroundTruth(
        width=int(doc["width"]),
        height=int(doc["height"]),
        fps=float(doc["fps"]),
        class_names=tuple(doc["class_names"]),
        boxes=[np.array(f["boxes"], np.float32).reshape(-1, 4) for f in frames],
        class_ids=[np.array(f["class_ids"], np.int64) for f in frames],
        track_ids=[np.array(f["track_ids"], np.int64) for f in frames]
        if frames and all("track_ids" in f for f in frames) else None,
        tracking=doc.get("tracking"),
        attributes=attributes,
        attribute_values=values,
    )


def _attribute_ids(gt: Path, frame: dict[str, Any], name: str, values: tuple[str, ...]) -> npt.NDArray[np.int64]:
    """A frame's ``name`` attribute as ids into ``values``, checked against its boxes."""
    got = frame.get("attributes", {}).get(name)
    if got is None or len(got) != len(frame["boxes"]):
        raise ValueError(f"{gt}: frame {frame['frame_index']}: expected one {name!r} per box ({len(frame['boxes'])}),"
                         f" got {got!r}")
    try:
        return np.array([values.index(v) for v in got], np.int64)
    except ValueError:
        raise ValueError(f"{gt}: frame {frame['frame_index']}: {name!r} values must be in {values},"
                         f" got {got}") from None
