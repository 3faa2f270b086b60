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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.errors import ShapeError


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
    """

    xyxy: npt.NDArray[np.float32]
    confidence: npt.NDArray[np.float32]
    class_id: npt.NDArray[np.int64]
    class_names: tuple[str, ...] = field(default=())
    track_id: npt.NDArray[np.int64] | None = None
    attributes: tuple[dict[str, Any], ...] | None = None

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
        attrs = None
        if self.attributes is not None:
            attrs = tuple(self.attributes[i] for i in np.arange(len(self))[index].tolist())
        return Detections(
            self.xyxy[index], self.confidence[index], self.class_id[index], self.class_names,
            None if self.track_id is None else self.track_id[index], attrs,
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
        return records
