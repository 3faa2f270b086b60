"""The ONNX Runtime engine: runs users' ONNX models where TensorRT is absent.

On the CPU it reads the input tensor's memory directly (``tensor.numpy()`` shares it).
On CUDA (needs the ``onnxruntime-gpu`` package) it binds the input's device pointer
through IO binding, so the frame batch is read in place, and writes outputs into torch
tensors; ORT runs on its own stream, so the caller's stream is synchronised first and
that is logged once.

Usage::

    with OnnxRuntimeEngine("yolov8n.onnx", device="cpu") as e:
        out = e.infer({e.inputs[0].name: batch})
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from engines._messages import reason
from engines.base import Layout, NoGraphs, TensorSpec
from streams.errors import EngineError, MissingDependencyError, ShapeError

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def cuda_provider_available() -> bool:
    """Whether the installed ONNX Runtime has the CUDA execution provider (onnxruntime-gpu)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _dims(shape: list[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


class OnnxRuntimeEngine(NoGraphs):
    """Runs an ONNX model with ONNX Runtime; see the module docstring."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        self.path = Path(path)
        self._device = torch.device(device)
        self._threads = threads
        self._session: Any = None
        self._inputs: tuple[TensorSpec, ...] = ()
        self._outputs: tuple[TensorSpec, ...] = ()
        self._synced_warned = False

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def input_layout(self) -> Layout:
        return "NCHW"

    @property
    def input_dtype(self) -> str:
        return self._inputs[0].dtype if self._inputs else "float32"

    @property
    def max_batch_size(self) -> int | None:
        b = self._inputs[0].shape[0] if self._inputs else None
        return b

    def __enter__(self) -> OnnxRuntimeEngine:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MissingDependencyError("onnxruntime", "running ONNX models",
                                         "pip install onnxruntime (or onnxruntime-gpu)") from e
        if not self.path.is_file():
            raise EngineError(f"model file {self.path} does not exist")
        providers: list[Any] = ["CPUExecutionProvider"]
        if self._device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise MissingDependencyError(
                    "onnxruntime-gpu", f"running {self.path.name} on {self._device} with ONNX Runtime",
                    "pip install onnxruntime-gpu, or use engine: tensorrt / device: cpu",
                )
            providers = [("CUDAExecutionProvider", {"device_id": self._device.index or 0}),
                         "CPUExecutionProvider"]
        opts = ort.SessionOptions()
        if self._threads:
            opts.intra_op_num_threads = self._threads
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise EngineError(f"{self.path}: ONNX Runtime cannot load it ({reason(e)})") from e
        self._inputs = tuple(TensorSpec(i.name, _dims(i.shape), _ORT_TYPES.get(i.type, i.type))
                             for i in self._session.get_inputs())
        self._outputs = tuple(TensorSpec(o.name, _dims(o.shape), _ORT_TYPES.get(o.type, o.type))
                              for o in self._session.get_outputs())
        if len(self._inputs) != 1 or len(self._inputs[0].shape) != 4:
            raise EngineError(f"{self.path}: expected one 4-D image input [N, 3, H, W], got "
                              f"{[(i.name, i.shape) for i in self._inputs]}")
        log.info("onnxruntime engine on %s: %s -> %s", self._device,
                 [(i.name, i.shape, i.dtype) for i in self._inputs],
                 [(o.name, o.shape) for o in self._outputs])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._session = None

    def infer(
        self, inputs: Mapping[str, torch.Tensor], stream: int | None = None
    ) -> dict[str, torch.Tensor]:
        if self._session is None:
            raise EngineError("OnnxRuntimeEngine.infer called outside 'with'")
        spec = self._inputs[0]
        x = inputs.get(spec.name)
        if x is None:
            raise EngineError(f"missing input {spec.name!r}; got {sorted(inputs)}")
        expected = tuple(d if d is not None else x.shape[i] for i, d in enumerate(spec.shape))
        if tuple(x.shape) != expected:
            raise ShapeError(f"{spec.name}: expected shape {spec.shape}, got {tuple(x.shape)}")
        if not x.is_contiguous():
            raise ShapeError(f"{spec.name}: expected a contiguous NCHW tensor, got strides {x.stride()}")
        if str(x.dtype).removeprefix("torch.") != spec.dtype:
            raise ShapeError(f"{spec.name}: expected dtype {spec.dtype}, got {x.dtype}")
        if self._device.type != "cuda":
            arr = x.detach().numpy()  # shares memory
            outs = self._session.run(None, {spec.name: arr})
            return {o.name: torch.from_numpy(np.asarray(v)) for o, v in zip(self._outputs, outs, strict=True)}
        return self._infer_cuda(x, stream)

    def _infer_cuda(self, x: torch.Tensor, stream: int | None) -> dict[str, torch.Tensor]:
        if not self._synced_warned:
            log.warning("onnxruntime CUDA runs on its own stream: the caller's stream is "
                        "synchronised before each batch (use engine: tensorrt for full overlap)")
            self._synced_warned = True
        s = torch.cuda.ExternalStream(stream) if stream else torch.cuda.current_stream()
        s.synchronize()
        binding = self._session.io_binding()
        spec = self._inputs[0]
        binding.bind_input(spec.name, "cuda", x.device.index or 0, np.dtype(spec.dtype),
                           list(x.shape), x.data_ptr())
        for o in self._outputs:
            binding.bind_output(o.name, "cuda", x.device.index or 0)
        self._session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return {o.name: torch.from_dlpack(v.to_dlpack()) if hasattr(v, "to_dlpack")
                else torch.as_tensor(v.numpy(), device=x.device)
                for o, v in zip(self._outputs, outs, strict=True)}
