"""The ``secondary:`` section of a job config: models run on crops of the primary detections.

Usage::

    secondary:
      - name: pattern                  # the attribute's key in every record
        model: builtin:pattern         # the bundled classifier, or a .onnx / TorchScript / .pt2 file
        classes: [circle, square]      # primary classes whose detections are classified (default: all)
        min_size: 12                   # shorter box side in source pixels; smaller boxes are skipped (counted)
        reinfer_interval: 10           # with a tracker: classify a track again every 10 frames
        labels: [solid, striped, dotted]   # or a file, one label a line (default: the model's own)
      - name: plates
        kind: detector                 # a detector on each crop (default: classifier)
        model: models/plates.onnx      # an Ultralytics-style export: YOLOv8/11, end-to-end or DETR head
        classes: [car]
        conf: 0.25                     # detector only: score threshold, NMS IoU, boxes per crop
        iou: 0.45
        max_det: 20

Each model gets the crop of every chosen detection, cut from the **source-resolution**
frame (not the letterboxed model input), on the device (:mod:`operators.crops`):

- ``kind: classifier``: the crop is resized to the model's input; its best label is
  attached to the detection as ``attributes: {name: [label, score]}``.
- ``kind: detector``: the crop is letterboxed into the model's input (aspect kept, grey
  114 padding, as Ultralytics trains); its outputs are decoded as the primary model's are
  (the same families and NMS, :mod:`operators.postprocess`) and each box is mapped back to
  **source-frame pixels**, clipped to the parent box:
  ``attributes: {name: [{"label": str, "score": float, "box": [x1, y1, x2, y2]}, ...]}``,
  best score first, at most ``max_det``; ``[]`` when the model found nothing in the crop
  (a detection without the key was not looked at: not chosen, too small).

The attributes reach every sink and the Python API (``Detections.attributes``).

``reinfer_interval`` (as DeepStream's ``secondary-reinfer-interval``): ``0`` runs the model
on every chosen detection of every frame; ``N > 0`` needs the ``tracker:`` section and runs
it on a track when it first appears and then every ``N`` frames of its source, every
detection of the track in between carrying the track's last result. A detector's boxes are
kept relative to the parent box they were found in (normalised to its width and height) and
moved with the track: in between, they follow the parent's current box.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from streams.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
#: A detector's defaults for ``conf``, ``iou`` and ``max_det`` (left out of the entry).
DETECTOR_DEFAULTS = {"conf": 0.25, "iou": 0.45, "max_det": 20}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SecondaryConfig:
    """One ``secondary:`` entry (module docstring).

    Attributes:
        name: the attribute's key in records (letters, digits, ``_``; unique in the job).
        kind: ``classifier`` (one label a crop) or ``detector`` (boxes in each crop).
        model: ``builtin:<name>`` (a classifier shipped with Fovea) or a model file: ONNX
            (``.onnx``), TorchScript (``.ts``/``.torchscript``/``.pt`` saved with
            ``torch.jit.save``) or an exported program (``.pt2``, ``torch.export``). NCHW
            float input; a classifier has one output ``[N, classes]`` of logits or
            probabilities, a detector the outputs of one of the primary model's detect
            layouts (:mod:`operators.output_decoding`: YOLOv8/11, YOLOv5, end-to-end, DETR).
        labels: class labels of the secondary model: a list, or a file with one label a
            line. Default: the model's own (the bundled model's card, ONNX metadata
            ``names``); a model without them needs this key.
        classes: names of the primary model's classes to classify (default: all). A name
            the primary model does not have is refused at load.
        min_size: a detection whose shorter side is below this many source pixels is not
            classified (counted in the report as ``too_small``).
        input_size: ``[height, width]`` of the model's input (default: the model's own).
        mean, std: per-channel normalisation of crops in 0..1 (``(x - mean) / std``);
            default: none (the bundled model normalises inside).
        channels: ``rgb`` or ``bgr`` order of the model's input.
        reinfer_interval: frames between two classifications of one track (module docstring).
        max_batch: most crops per model call (larger sets are split).
        device: where the model runs: ``auto`` (the primary engine's device) or ``cpu``.
        conf: detector only: a box needs a score above this (default 0.25).
        iou: detector only: NMS IoU threshold, for the families that need NMS (default 0.45).
        max_det: detector only: most boxes kept per crop, the best scores (default 20).
    """

    name: str
    model: str
    labels: list[str] | str | None = None
    classes: list[str] | None = None
    min_size: float = 8.0
    input_size: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    channels: Literal["rgb", "bgr"] = "rgb"
    reinfer_interval: int = 0
    max_batch: int = 1024
    device: Literal["auto", "cpu"] = "auto"
    kind: Literal["classifier", "detector"] = "classifier"
    conf: float | None = None
    iou: float | None = None
    max_det: int | None = None

    @property
    def conf_threshold(self) -> float:
        """A detector's score threshold (``conf``, or its default)."""
        return float(DETECTOR_DEFAULTS["conf"] if self.conf is None else self.conf)

    @property
    def iou_threshold(self) -> float:
        """A detector's NMS IoU threshold (``iou``, or its default)."""
        return float(DETECTOR_DEFAULTS["iou"] if self.iou is None else self.iou)

    @property
    def max_detections(self) -> int:
        """A detector's most boxes per crop (``max_det``, or its default)."""
        return int(DETECTOR_DEFAULTS["max_det"] if self.max_det is None else self.max_det)

    def validate(self, key: str) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"{key}.name", f"expected letters, digits and '_' (not starting with a digit), "
                                             f"got {self.name!r}")
        if not self.model.strip():
            raise ConfigError(f"{key}.model", "empty model")
        if self.model.startswith(BUILTIN_PREFIX) and not self.model[len(BUILTIN_PREFIX):]:
            raise ConfigError(f"{key}.model", "expected builtin:<name>, e.g. builtin:pattern")
        if self.min_size < 0:
            raise ConfigError(f"{key}.min_size", f"expected >= 0, got {self.min_size}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            raise ConfigError(f"{key}.input_size", f"expected [height, width] of positive integers, got "
                                                   f"{self.input_size}")
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v is not None and len(v) != 3:
                raise ConfigError(f"{key}.{name}", f"expected 3 values (one per channel), got {len(v)}")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"{key}.std", f"expected positive values, got {self.std}")
        if self.reinfer_interval < 0:
            raise ConfigError(f"{key}.reinfer_interval", f"expected >= 0 frames, got {self.reinfer_interval}")
        if self.max_batch < 1:
            raise ConfigError(f"{key}.max_batch", f"expected >= 1, got {self.max_batch}")
        if isinstance(self.labels, list) and not self.labels:
            raise ConfigError(f"{key}.labels", "expected at least one label")
        if self.classes is not None and not self.classes:
            raise ConfigError(f"{key}.classes", "expected at least one class name (or leave the key out: all)")
        self._validate_kind(key)

    def _validate_kind(self, key: str) -> None:
        """The detector options: in range, and given only to a detector."""
        if self.kind not in ("classifier", "detector"):
            raise ConfigError(f"{key}.kind", f"expected 'classifier' or 'detector', got {self.kind!r}")
        options = {"conf": self.conf, "iou": self.iou, "max_det": self.max_det}
        if self.kind != "detector":
            given = [k for k, v in options.items() if v is not None]
            if given:
                raise ConfigError(f"{key}.{given[0]}", f"applies to detectors only; this entry is a {self.kind} "
                                                       "(set kind: detector, or remove the key)")
            return
        for name in ("conf", "iou"):
            v = options[name]
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(f"{key}.{name}", f"expected a number in [0, 1], got {v}")
        if self.max_det is not None and self.max_det < 1:
            raise ConfigError(f"{key}.max_det", f"expected >= 1 boxes per crop, got {self.max_det}")
        if self.model.startswith(BUILTIN_PREFIX):
            raise ConfigError(f"{key}.model", "the bundled models are classifiers; a detector needs a model file "
                                              "(.onnx, TorchScript or .pt2)")


def validate_secondaries(entries: list[SecondaryConfig], has_tracker: bool, key: str = "secondary") -> None:
    """Checks across entries and sections: unique names, a tracker where an interval needs one."""
    seen: set[str] = set()
    for i, s in enumerate(entries):
        if s.name in seen:
            raise ConfigError(f"{key}[{i}].name", f"'{s.name}' is used by an earlier entry; names must be unique")
        seen.add(s.name)
        if s.reinfer_interval > 0 and not has_tracker:
            raise ConfigError(f"{key}[{i}].reinfer_interval",
                              "classifying a track every N frames needs the tracker: section (or set 0: "
                              "classify every detection)")
