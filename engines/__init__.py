"""Inference engines behind one small interface (:class:`engines.base.Engine`).

- :mod:`engines.base`: the :class:`Engine` protocol and :class:`TensorSpec`.
- :mod:`engines.factory`: :func:`open_engine` picks and opens the engine for a model.
- :mod:`engines.torch_engine`: torch models (TorchScript, ExportedProgram, the bundled
  detector); CUDA FP16 channels_last with CUDA graphs, or CPU FP32.
- :mod:`engines.onnxruntime_engine`: ONNX models on the CPU (or ONNX Runtime's CUDA provider).
- :mod:`engines.onnx_torch`: ONNX models converted to torch by onnx2torch, for the GPU
  without TensorRT.
- :mod:`engines.onnx_model`, :mod:`engines.model_info`: what a model file says about itself
  (Ultralytics' metadata) and its precedence over the config.
- :mod:`engines.tensorrt`: the production engine (ONNX → TensorRT plan, run in place).
- :mod:`engines.inplace`: runs an engine directly on DALI's GPU output buffers.
- :mod:`engines.detector`: the bundled detector, its training and export.

Importing the package loads the interface and the factory (no torch, TensorRT or ONNX
Runtime: the factory imports them when an engine is opened). The engine classes and the
in-place operator need torch, so they are imported on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.base import Engine, Layout, Precision, TensorSpec
from engines.factory import ModelInfo, open_engine, resolve_device
from streams.lazy import lazy_exports

if TYPE_CHECKING:
    from engines.inplace import InPlaceInference, on_stream
    from engines.onnxruntime_engine import OnnxRuntimeEngine
    from engines.torch_engine import TorchEngine

_LAZY: dict[str, str] = {
    "InPlaceInference": "engines.inplace",
    "on_stream": "engines.inplace",
    "OnnxRuntimeEngine": "engines.onnxruntime_engine",
    "TorchEngine": "engines.torch_engine",
}





__all__ = [
    "Engine",
    "InPlaceInference",
    "Layout",
    "ModelInfo",
    "OnnxRuntimeEngine",
    "Precision",
    "TensorSpec",
    "TorchEngine",
    "on_stream",
    "open_engine",
    "resolve_device",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
