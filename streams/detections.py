"""``Detections``: the boxes found in one frame, as parallel NumPy arrays.

Modelled on supervision's ``Detections``: a plain dataclass, validated on construction,
with no DALI, CUDA or TensorRT imports.

Usage::

    d = Detections(
        xyxy=np.array([[10, 20, 110, 220]], np.float32),   # source-frame pixels
        confidence=np.array([0.9], np.float32),
        class_id=np.array([0], np.int64),
        class_names=("person",),
    )
    len(d)            # 1
    d.labels          # ["person"]
    d[d.confidence > 0.5]

A segmentation model's detections carry ``masks`` (one :class:`InstanceMask` each: a bitmap
over the detection's box, in frame pixels), a pose model's ``keypoints``
(``float32[N, K, 3]``: x, y in frame pixels and the keypoint's visibility score, or
``[N, K, 2]`` where the model gives none). Records write a mask as COCO run-length encoding
(``{"size": [h, w], "counts": "..."}``, what ``pycocotools.mask.decode`` reads) and keypoints
as ``[[x, y, v], ...]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.errors import ShapeError


@dataclass(frozen=True, eq=False)
class InstanceMask:
    """One detection's mask: ``bitmap`` (``bool[h, w]``) placed at ``(x, y)`` in a frame of
    ``frame_hw`` ``(height, width)`` pixels; pixels outside the bitmap are not in the mask."""

    x: int
    y: int
    bitmap: npt.NDArray[np.bool_]
    frame_hw: tuple[int, int]

    def __post_init__(self) -> None:
        bitmap = np.asarray(self.bitmap, dtype=bool)
        if bitmap.ndim != 2:
            raise ShapeError(f"InstanceMask.bitmap: expected 2 dimensions, got shape {bitmap.shape}")
        fh, fw = self.frame_hw
        h, w = bitmap.shape
        if self.x < 0 or self.y < 0 or self.x + w > fw or self.y + h > fh:
            raise ShapeError(f"InstanceMask: a {w}x{h} bitmap at ({self.x}, {self.y}) does not fit a {fw}x{fh} frame")
        object.__setattr__(self, "bitmap", bitmap)
        object.__setattr__(self, "frame_hw", (int(fh), int(fw)))

    @property
    def area(self) -> int:
        """Pixels in the mask."""
        return int(self.bitmap.sum())

    def full(self) -> npt.NDArray[np.bool_]:
        """The mask over the whole frame: ``bool[frame_h, frame_w]``."""
        out = np.zeros(self.frame_hw, dtype=bool)
        h, w = self.bitmap.shape
        out[self.y:self.y + h, self.x:self.x + w] = self.bitmap
        return out

    def to_rle(self) -> dict[str, Any]:
        """COCO compressed run-length encoding over the frame: ``{"size": [h, w], "counts": str}``
        (column-major runs, starting with background), as ``pycocotools.mask.encode`` writes it."""
        from pycocotools import mask as mask_utils  # a core dependency, imported where used

        fh, fw = self.frame_hw
        h, w = self.bitmap.shape
        cols = np.zeros((w, fh), dtype=np.uint8)  # the bitmap's columns, whole frame height
        cols[:, self.y:self.y + h] = self.bitmap.T
        flat = np.concatenate([np.zeros(self.x * fh, np.uint8), cols.reshape(-1),
                               np.zeros((fw - self.x - w) * fh, np.uint8)])
        change = np.flatnonzero(np.diff(flat)) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        counts = np.diff(bounds).tolist()
        if flat.size and flat[0]:
            counts = [0, *counts]  # COCO runs start with background
        rle = mask_utils.frPyObjects({"size": [fh, fw], "counts": counts}, fh, fw)
        return {"size": [fh, fw], "counts": rle["counts"].decode("ascii")}


@dataclass(frozen=True)
class Detections:
    """Detections of one frame.

    Attributes:
        xyxy: ``float32[N, 4]`` boxes as (x1, y1, x2, y2) in source-frame pixels.
        confidence: ``float32[N]`` scores in [0, 1].
        class_id: ``int64[N]`` class indices.
        class_names: names indexed by class id (may be empty when the model has none).
        track_id: ``int64[N]`` track of each detection, unique within its source for the job,
            ``-1`` for a detection no track took; ``None`` when no tracker ran.
        attributes: per detection, a dict of attributes added by later stages (secondary
            models: ``{"color": ("red", 0.93)}``); ``None`` when no stage added any.
        masks: a segmentation model's mask of each detection; ``None`` for other models.
        keypoints: a pose model's ``float32[N, K, 3]`` (x, y in frame pixels, visibility
            score) or ``[N, K, 2]``; ``None`` for other models.
    """

    xyxy: npt.NDArray[np.float32]
    confidence: npt.NDArray[np.float32]
    class_id: npt.NDArray[np.int64]
    class_names: tuple[str, ...] = field(default=())
    track_id: npt.NDArray[np.int64] | None = None
    attributes: tuple[dict[str, Any], ...] | None = None
    masks: tuple[InstanceMask, ...] | None = None
    keypoints: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        conf = np.asarray(self.confidence, dtype=np.float32)
        cls = np.asarray(self.class_id, dtype=np.int64)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ShapeError(f"Detections.xyxy: expected shape (N, 4), got {xyxy.shape}")
        n = xyxy.shape[0]
        if conf.shape != (n,):
            raise ShapeError(f"Detections.confidence: expected shape ({n},), got {conf.shape}")
        if cls.shape != (n,):
            raise ShapeError(f"Detections.class_id: expected shape ({n},), got {cls.shape}")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "confidence", conf)
        object.__setattr__(self, "class_id", cls)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.track_id is not None:
            tid = np.asarray(self.track_id, dtype=np.int64)
            if tid.shape != (n,):
                raise ShapeError(f"Detections.track_id: expected shape ({n},), got {tid.shape}")
            object.__setattr__(self, "track_id", tid)
        if self.attributes is not None:
            attrs = tuple(self.attributes)
            if len(attrs) != n:
                raise ShapeError(f"Detections.attributes: expected {n} entries, got {len(attrs)}")
            object.__setattr__(self, "attributes", attrs)
        if self.masks is not None:
            masks = tuple(self.masks)
            if len(masks) != n:
                raise ShapeError(f"Detections.masks: expected {n} masks, got {len(masks)}")
            object.__setattr__(self, "masks", masks)
        if self.keypoints is not None:
            kp = np.asarray(self.keypoints, dtype=np.float32)
            if kp.ndim != 3 or kp.shape[0] != n or kp.shape[2] not in (2, 3):
                raise ShapeError(f"Detections.keypoints: expected shape ({n}, K, 2 or 3), got {kp.shape}")
            object.__setattr__(self, "keypoints", kp)

    @classmethod
    def empty(cls, class_names: Sequence[str] = ()) -> Detections:
        """No detections."""
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0,), np.int64),
            tuple(class_names),
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index: Any) -> Detections:
        """Select detections with a boolean mask, an index array or a slice."""
        if isinstance(index, int):
            index = [index]
        attrs = masks = None
        picked = np.arange(len(self))[index].tolist() if self.attributes is not None or self.masks is not None \
            else []
        if self.attributes is not None:
            attrs = tuple(self.attributes[i] for i in picked)
        if self.masks is not None:
            masks = tuple(self.masks[i] for i in picked)
        return Detections(
            self.xyxy[index], self.confidence[index], self.class_id[index], self.class_names,
            None if self.track_id is None else self.track_id[index], attrs, masks,
            None if self.keypoints is None else self.keypoints[index],
        )

    def with_tracks(self, track_id: npt.NDArray[np.int64]) -> Detections:
        """These detections with their track ids (``int64[N]``, ``-1`` for untracked)."""
        return replace(self, track_id=track_id)

    @property
    def labels(self) -> list[str]:
        """Class name of each detection (``str(class_id)`` where no name is known)."""
        names = self.class_names
        return [names[c] if 0 <= c < len(names) else str(c) for c in self.class_id.tolist()]

    def to_records(self, decimals: int = 2) -> list[dict[str, Any]]:
        """One JSON-ready dict per detection: box, confidence, class id and label.

        Boxes are rounded to ``decimals`` and confidences to 4 with Python's correctly
        rounded ``round`` (what ``"%.2f"`` prints), so these records equal the JSONL lines
        of :func:`streams.sinks.records.frame_json` parsed back.
        """
        boxes = [[round(v, decimals) for v in box] for box in self.xyxy.astype(np.float64).tolist()]
        confs = [round(c, 4) for c in self.confidence.astype(np.float64).tolist()]
        records: list[dict[str, Any]] = [
            {"box": box, "confidence": conf, "class_id": cid, "label": label}
            for box, conf, cid, label in zip(
                boxes, confs, self.class_id.tolist(), self.labels, strict=True
            )
        ]
        if self.track_id is not None:
            for rec, tid in zip(records, self.track_id.tolist(), strict=True):
                rec["track_id"] = tid
        if self.attributes is not None:
            for rec, attrs in zip(records, self.attributes, strict=True):
                if attrs:
                    rec["attributes"] = attrs
        if self.masks is not None:
            for rec, mask in zip(records, self.masks, strict=True):
                rec["mask"] = mask.to_rle()
        if self.keypoints is not None:
            kps = self.keypoints.astype(np.float64).tolist()
            for rec, points in zip(records, kps, strict=True):
                rec["keypoints"] = [[round(p[0], decimals), round(p[1], decimals), *(round(v, 4) for v in p[2:])]
                                    for p in points]
        return records
