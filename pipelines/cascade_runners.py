"""The per-kind work of one secondary model in a cascade (:mod:`pipelines.cascade`).

:class:`~pipelines.cascade.CascadeStage` does what every secondary model shares: choosing
detections, keeping crops until their frame's turn, the ``reinfer_interval`` schedule, the
counts. What differs by ``kind`` sits behind one :class:`KindRunner` interface:

- :class:`ClassifierRunner`: crops stretched to the input (:func:`operators.crops.crop_resize`),
  one ``(label, score)`` a crop, the attribute ``[label, score]``.
- :class:`DetectorRunner`: crops letterboxed into the input
  (:func:`operators.crops.crop_letterbox`, aspect kept) from whole-pixel regions around the
  boxes; the detector's boxes come back in crop pixels (:mod:`engines.secondary_detector`),
  are moved by the region's origin into source-frame pixels and clipped to the parent box.
  A result is kept **relative to the parent box** (each child's corners as fractions of the
  parent's width and height from its top-left), so the attribute for any parent box, the one
  it was found in or the track's box frames later (``reinfer_interval``), is
  ``parent_x1 + fx * parent_width`` (and likewise for y):
  ``[{"label", "score", "box": [x1, y1, x2, y2]}, ...]``, best score first, ``[]`` for none.

Results are host values (the model's wait for the device happens inside :meth:`KindRunner.infer`).

Usage::

    runner = open_runner(cfg, "cuda:0", "secondary[0]")
    crops, regions = runner.crop(frames, frame_index, boxes)     # inference thread
    results = runner.infer(crops, regions, boxes)                 # job thread
    runner.attribute(results[0], boxes[0])                        # the record's value
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from engines.secondary import SecondaryInfo, SecondaryModel, open_secondary_model
from engines.secondary_detector import SecondaryDetector, open_secondary_detector
from operators.boxes import letterbox_geometry
from operators.crops import crop_letterbox, crop_resize, letterbox_regions
from operators.transfer import upload
from streams.cascade_config import SecondaryConfig

#: A detector's result: per child, (label, score, box relative to the parent: fx1, fy1, fx2, fy2).
Children = tuple[tuple[str, float, tuple[float, float, float, float]], ...]


class KindRunner(Protocol):
    """One secondary model's per-kind work (module docstring)."""

    @property
    def info(self) -> SecondaryInfo: ...

    @property
    def device(self) -> str: ...

    def crop(self, frames: torch.Tensor, frame_index: torch.Tensor, boxes: np.ndarray
             ) -> tuple[torch.Tensor, np.ndarray | None]:
        """The model's crops of ``boxes`` (``float32[K, 4]`` source pixels, host) from
        ``frames[frame_index]``, on the frames' device, and what :meth:`infer` needs of each
        besides its pixels (host; ``None``: nothing)."""
        ...

    def infer(self, crops: torch.Tensor, extra: np.ndarray | None, parents: np.ndarray) -> list[Any]:
        """One host result per crop; ``extra`` as :meth:`crop` gave it, ``parents`` the boxes cropped."""
        ...

    def attribute(self, result: Any, parent: np.ndarray) -> Any:
        """``result``'s attribute value (JSON-ready) for a detection whose box is ``parent``."""
        ...

    def counts(self, inferred: int) -> dict[str, int]:
        """The kind's own report counts, given the crops run through the model."""
        ...


class ClassifierRunner:
    """A classifier: crops resized to its input, ``[label, score]`` attributes."""

    def __init__(self, model: SecondaryModel) -> None:
        self.model = model

    @property
    def info(self) -> SecondaryInfo:
        return self.model.info

    @property
    def device(self) -> str:
        return self.model.device

    def crop(self, frames: torch.Tensor, frame_index: torch.Tensor, boxes: np.ndarray
             ) -> tuple[torch.Tensor, np.ndarray | None]:
        return crop_resize(frames, frame_index, upload(torch.from_numpy(boxes), frames.device),
                           self.model.info.input_size), None

    def infer(self, crops: torch.Tensor, extra: np.ndarray | None, parents: np.ndarray) -> list[Any]:
        label, score = self.model.classify(crops)
        label, score = label.cpu(), score.cpu()  # the host waits here, once per call
        return [(li, round(float(sc), 4)) for li, sc in zip(label.tolist(), score.tolist(), strict=True)]

    def attribute(self, result: Any, parent: np.ndarray) -> Any:
        li, sc = result
        return [self.model.info.labels[li], sc]

    def counts(self, inferred: int) -> dict[str, int]:
        return {"classified": inferred}


class DetectorRunner:
    """A detector: letterboxed crops, children boxes kept relative to their parent (module docstring)."""

    def __init__(self, model: SecondaryDetector) -> None:
        self.model = model
        self.found = 0  # children found by the model (not counting reused results)

    @property
    def info(self) -> SecondaryInfo:
        return self.model.info

    @property
    def device(self) -> str:
        return self.model.device

    def crop(self, frames: torch.Tensor, frame_index: torch.Tensor, boxes: np.ndarray
             ) -> tuple[torch.Tensor, np.ndarray | None]:
        regions = letterbox_regions(boxes, int(frames.shape[2]), int(frames.shape[1]))
        lb = crop_letterbox(frames, frame_index, regions, self.model.info.input_size)
        return lb.crops, regions

    def infer(self, crops: torch.Tensor, extra: np.ndarray | None, parents: np.ndarray) -> list[Any]:
        if extra is None:
            raise ValueError("DetectorRunner.infer needs the crops' regions")
        h, w = self.model.info.input_size
        geoms = [letterbox_geometry(int(x2 - x1), int(y2 - y1), w, h) for x1, y1, x2, y2 in extra.tolist()]
        dets = self.model.detect(crops, geoms)
        out: list[Children] = []
        for d, region, parent in zip(dets, extra, parents, strict=True):
            out.append(_relative(d.xyxy, d.confidence, d.labels, region, parent))
        self.found += sum(len(c) for c in out)
        return out

    def attribute(self, result: Any, parent: np.ndarray) -> Any:
        x1, y1, x2, y2 = (float(v) for v in parent)
        pw, ph = x2 - x1, y2 - y1
        return [{"label": label, "score": score,
                 "box": [round(x1 + fx1 * pw, 2), round(y1 + fy1 * ph, 2), round(x1 + fx2 * pw, 2),
                         round(y1 + fy2 * ph, 2)]}
                for label, score, (fx1, fy1, fx2, fy2) in result]

    def counts(self, inferred: int) -> dict[str, int]:
        return {"crops": inferred, "found": self.found}


def _relative(xyxy: np.ndarray, scores: np.ndarray, labels: Sequence[str], region: np.ndarray,
              parent: np.ndarray) -> Children:
    """One crop's boxes (crop pixels) in source pixels (+ the region's origin), clipped to the
    parent box, as fractions of the parent box; in the detector's order (best first)."""
    p = parent.astype(np.float64)
    src = xyxy.astype(np.float64) + np.array([region[0], region[1], region[0], region[1]], np.float64)
    src[:, 0::2] = src[:, 0::2].clip(p[0], p[2])
    src[:, 1::2] = src[:, 1::2].clip(p[1], p[3])
    size = np.maximum(np.array([p[2] - p[0], p[3] - p[1]] * 2), 1e-9)
    rel = (src - np.array([p[0], p[1], p[0], p[1]])) / size
    return tuple((str(label), round(float(sc), 4), (float(r[0]), float(r[1]), float(r[2]), float(r[3])))
                 for label, sc, r in zip(labels, scores.tolist(), rel, strict=True))


def open_runner(cfg: SecondaryConfig, device: str, key: str) -> KindRunner:
    """The runner of ``cfg``'s kind with its model loaded (ConfigError with ``key`` if it does not fit)."""
    if cfg.kind == "detector":
        return DetectorRunner(open_secondary_detector(cfg, device, key))
    return ClassifierRunner(open_secondary_model(cfg, device, key))
