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
exact line and zone counts, :mod:`streams.synthetic.counting`).
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

    @property
    def num_frames(self) -> int:
        return len(self.boxes)

    def detections(self, frame_index: int) -> Detections:
        """A frame's boxes as :class:`Detections` with confidence 1."""
        b = self.boxes[frame_index]
        return Detections(b, np.ones(len(b), np.float32), self.class_ids[frame_index], self.class_names)


def gt_path_for(clip: str | Path) -> Path:
    """Where a clip's ground truth is written: ``a/b.mp4`` -> ``a/b.gt.json``."""
    clip = Path(clip)
    return clip.with_name(clip.stem + ".gt.json")


def frame_record(frame_index: int, boxes: Sequence[GTBox], identities: bool = False) -> dict[str, Any]:
    """One frame's entry of the ``.gt.json`` file (boxes rounded to 0.01 px; with
    ``identities``, each box's object id too)."""
    xyxy, cls = boxes_to_arrays(boxes)
    record: dict[str, Any] = {
        "frame_index": frame_index,
        "boxes": np.round(xyxy.astype(np.float64), 2).tolist(),
        "class_ids": cls.tolist(),
    }
    if identities:
        record["track_ids"] = [b.track_id for b in boxes]
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
    )
