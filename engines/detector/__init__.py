"""The detector bundled with Fovea (``model.path: default``).

- :mod:`engines.detector.model`: :class:`FoveaDet` and :func:`load_default_detector`.
- :mod:`engines.detector.train`: reproducible training on synthetic scenes
  (``python -m engines.detector.train --seed 0``), letterbox, decode + NMS, mAP@0.5.
- :mod:`engines.detector.export`: :func:`export_onnx`.
"""

from engines.detector.model import DetectorInfo, FoveaDet, build_model, load_default_detector

__all__ = ["DetectorInfo", "FoveaDet", "build_model", "load_default_detector"]
