"""The crop classifier bundled with Fovea: the synthetic objects' ``pattern`` (a cascade's secondary model).

- :mod:`engines.classifier.model`: :class:`FoveaCls` and :func:`load_default_classifier`.
- :mod:`engines.classifier.data`: training crops, made like a cascade's
  (:func:`operators.crops.crop_resize` of H.264-decoded frames at jittered boxes).
- :mod:`engines.classifier.train`: reproducible training
  (``python -m engines.classifier.train --seed 0``).
- :mod:`engines.classifier.evaluate`: accuracy on held-out clips, :func:`attribute_accuracy`.
- :mod:`engines.classifier.export`: :func:`export_onnx`.
"""

from engines.classifier.model import ClassifierInfo, FoveaCls, build_model, load_default_classifier

__all__ = ["ClassifierInfo", "FoveaCls", "build_model", "load_default_classifier"]
