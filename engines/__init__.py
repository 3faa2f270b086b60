"""Inference engines behind one small interface (:class:`engines.base.Engine`).

- :mod:`engines.torch_engine`: torch models (TorchScript, ExportedProgram, the bundled
  detector); CUDA FP16 channels_last with CUDA graphs, or CPU FP32.
- :mod:`engines.onnxruntime_engine`: ONNX models where TensorRT is absent.
- :mod:`engines.tensorrt`: the production engine (ONNX → TensorRT plan, run in place).

Nothing here is imported at package import time beyond the interface.
"""

from engines.base import Engine, TensorSpec

__all__ = ["Engine", "TensorSpec"]
