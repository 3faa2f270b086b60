"""Ops on detection tensors and the in-place inference operator.

- :mod:`operators.boxes`: box formats, IoU, letterbox geometry and its inverse.
- :mod:`operators.nms`: batched, class-aware non-maximum suppression.
- :mod:`operators.output_decoding`: decoding of YOLOv8/YOLO11, YOLOv5 and EfficientNMS outputs.
- :mod:`operators.postprocess`: decode → filter → NMS → map back → ``Detections``.
- :mod:`operators.reference`: small NumPy reference implementations the tests compare to.
- :mod:`engines.inplace`: runs an engine directly on DALI's GPU output buffers.
"""
