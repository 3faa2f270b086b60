"""``TensorRTEngine``: a TensorRT plan behind :class:`engines.base.Engine`, run in place.

CUDA plumbing, one mechanism: **torch's CUDA**. Outputs are torch tensors allocated
with torch's caching allocator on the engine's device; streams are raw ``cudaStream_t``
handles (``int``) as DALI and TensorRT use them; ``stream=None`` means torch's current
stream on the engine's device. The engine needs a CUDA build of torch (its inputs are
torch tensors on the GPU). pycuda, on the primary context only, serves the *build* side
(GPU query, calibration buffers) where torch has no CUDA; see :mod:`._cuda`.

In place: :meth:`TensorRTEngine.infer` hands TensorRT the caller's tensor's own address
(``set_tensor_address(name, tensor.data_ptr())``), which may be a zero-copy view of
DALI's output buffer. It never copies: an input must already be contiguous NCHW, of the
engine's dtype and on its device, with a batch inside the optimization profile, or
ShapeError says what is wrong. The caller keeps the input alive until the work queued on
``stream`` has finished (as with any asynchronous CUDA call).

Concurrency: the plan is deserialized once, when the engine object is made; create one
``TensorRTEngine`` and share it. Each CUDA stream gets its own ``IExecutionContext``,
created on first use (TensorRT 10 lets contexts share the optimization profile), and its
own output tensors, allocated once per input shape and reused: the tensors ``infer``
returns are overwritten by the next ``infer`` on the same stream with the same shape, so
consume them (on that stream) first. Calls on *different* streams may come from
different threads; calls on one stream must not race each other.

Usage::

    with TensorRTEngine("yolov8n-1f0c9a2b.plan", device="cuda:0") as engine:
        x = torch.from_dlpack(dali_out.as_tensor())        # [N, 3, 640, 640] fp16, zero copy
        out = engine.infer({engine.inputs[0].name: x}, stream=handle)
        preds = out[engine.outputs[0].name]                 # torch.Tensor on cuda:0
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import torch

from engines.base import Layout, NoGraphs, TensorSpec
from engines.tensorrt._imports import import_tensorrt, tensorrt_version, trt_logger
from streams.errors import EngineError, ShapeError

log = logging.getLogger(__name__)

# TensorRT DataType member names → NumPy dtype names (TensorSpec.dtype) and torch dtypes.
_DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT32": "int32",
    "INT64": "int64",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}
_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


class CudaOps(Protocol):
    """The CUDA operations the engine needs; :class:`TorchCuda` is the real one."""

    device: str

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor on the engine's device."""
        ...

    def current_stream(self) -> int:
        """The handle of the current stream (used when ``infer`` gets ``stream=None``)."""
        ...

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Make the engine's device current for the block."""
        ...

    def on_device(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` lives on the engine's device."""
        ...

    def synchronize(self) -> None:
        """Wait for all work on the engine's device."""
        ...


class TorchCuda:
    """:class:`CudaOps` through torch's CUDA."""

    def __init__(self, device: str | int = "cuda:0") -> None:
        if not torch.cuda.is_available():
            raise EngineError(
                "the TensorRT engine runs on torch's CUDA, but this torch has no CUDA "
                f"(torch {torch.__version__}); install a CUDA build of torch"
            )
        dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if dev.type != "cuda":
            raise EngineError(f"the TensorRT engine needs a CUDA device, got {device!r}")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise EngineError(f"no CUDA device {index} (torch sees {torch.cuda.device_count()})")
        self._device = torch.device("cuda", index)
        self.device = f"cuda:{index}"

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self._device)

    def current_stream(self) -> int:
        return int(torch.cuda.current_stream(self._device).cuda_stream)

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.device(self._device)

    def on_device(self, tensor: torch.Tensor) -> bool:
        return tensor.device == self._device

    def synchronize(self) -> None:
        torch.cuda.synchronize(self._device)


class _PlanLoadError(EngineError):
    """The plan did not deserialize (another GPU or TensorRT version, or a damaged file)."""


@dataclass
class _StreamState:
    """One CUDA stream's execution context and output buffers."""

    context: Any
    shapes: tuple[tuple[int, ...], ...] | None = None  # input shapes last set on the context
    outputs: dict[tuple[tuple[int, ...], ...], dict[str, torch.Tensor]] = field(
        default_factory=dict
    )


class TensorRTEngine(NoGraphs):
    """A deserialized TensorRT plan implementing :class:`engines.base.Engine`.

    ``plan`` is the serialized plan or its file. ``device`` is ``"cuda:N"`` (or ``N``).
    ``logger`` is a ``trt.ILogger`` (default: the process-wide one forwarding to
    ``logging``); ``cuda`` replaces the torch CUDA plumbing (tests). Raises
    MissingDependencyError without TensorRT and EngineError, with a rebuild hint, when
    the plan does not load on this GPU and TensorRT.
    """

    def __init__(
        self,
        plan: bytes | str | Path,
        *,
        device: str | int = "cuda:0",
        logger: Any = None,
        cuda: CudaOps | None = None,
    ) -> None:
        trt = import_tensorrt("Running a TensorRT engine")
        self._trt = trt
        self._cuda: CudaOps = cuda if cuda is not None else TorchCuda(device)
        if isinstance(plan, (str, Path)):
            self.source = str(plan)
            try:
                data = Path(plan).read_bytes()
            except OSError as e:
                raise EngineError(f"cannot read the TensorRT plan {plan}: {e}") from e
        else:
            self.source, data = "<serialized plan>", bytes(plan)
        logger = logger if logger is not None else trt_logger(trt)
        with self._cuda.scope():
            trt.init_libnvinfer_plugins(logger, "")  # plans with plugin layers (EfficientNMS)
            self._runtime = trt.Runtime(logger)
            engine = self._runtime.deserialize_cuda_engine(data) if data else None
        if engine is None:
            raise _PlanLoadError(
                f"TensorRT {tensorrt_version(trt)} cannot load the plan {self.source}: it was "
                "probably built for another GPU or another TensorRT version, or the file is "
                "damaged. Rebuild it: delete the plan, or let the engine cache rebuild it "
                "(engines.tensorrt.load_or_build / fovea build-engine)"
            )
        self._engine: Any = engine
        self._inputs, self._outputs, self._profiles = self._describe()
        first = self._inputs[0]
        if len(first.shape) != 4 or first.dtype not in ("float16", "float32"):
            raise EngineError(
                f"{self.source}: input {first.name!r} is {first.dtype} {list(first.shape)}; "
                "Fovea feeds a float16 or float32 [N, C, H, W] image batch"
            )
        self._states: dict[int, _StreamState] = {}
        self._lock = threading.Lock()

    # -- Engine protocol ---------------------------------------------------------------

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def device(self) -> str:
        return self._cuda.device

    @property
    def input_layout(self) -> Layout:
        return "NCHW"

    @property
    def input_dtype(self) -> str:
        return self._inputs[0].dtype

    @property
    def max_batch_size(self) -> int | None:
        first = self._inputs[0]
        if first.shape[0] is not None:
            return first.shape[0]
        return self._profiles[first.name][2][0]

    @property
    def profiles(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """``{input name: (min, opt, max)}`` shapes of optimization profile 0 (dynamic inputs)."""
        return dict(self._profiles)

    def __enter__(self) -> TensorRTEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Wait for queued work, then release every execution context and output buffer.

        The deserialized engine stays: a later ``infer`` creates contexts again.
        """
        with self._lock:
            if self._states:
                self._cuda.synchronize()
            self._states.clear()

    def infer(
        self, inputs: Mapping[str, torch.Tensor], stream: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Enqueue the engine on ``stream`` reading ``inputs`` in place; return the outputs.

        The outputs are ordered on ``stream`` and reused by the next call on the same
        stream with the same input shapes.
        """
        handle = self._cuda.current_stream() if stream is None else int(stream)
        tensors = [self._checked_input(spec, inputs) for spec in self._inputs]
        if len(inputs) != len(self._inputs):
            unknown = sorted(set(inputs) - {s.name for s in self._inputs})
            raise EngineError(
                f"unknown engine inputs {unknown}; the engine takes {self._input_names()}"
            )
        state = self._state(handle)
        ctx = state.context
        shapes = tuple(tuple(t.shape) for t in tensors)
        if state.shapes != shapes:
            state.shapes = None  # unknown until every input shape is set
            for spec, shape in zip(self._inputs, shapes, strict=True):
                if not ctx.set_input_shape(spec.name, shape):
                    raise ShapeError(
                        f"TensorRT rejected the shape {list(shape)} for input {spec.name!r}"
                    )
            outputs = state.outputs.get(shapes)
            if outputs is None:
                outputs = state.outputs[shapes] = self._allocate_outputs(ctx)
            for name, out in outputs.items():
                ctx.set_tensor_address(name, out.data_ptr())
            state.shapes = shapes
        else:
            outputs = state.outputs[shapes]
        for spec, t in zip(self._inputs, tensors, strict=True):
            ctx.set_tensor_address(spec.name, t.data_ptr())  # the caller's buffer, no copy
        with self._cuda.scope():
            if not ctx.execute_async_v3(handle):
                raise EngineError(f"TensorRT failed to enqueue {self.source} on stream {handle:#x}")
        return dict(outputs)

    # -- internals ---------------------------------------------------------------------

    def _describe(
        self,
    ) -> tuple[
        tuple[TensorSpec, ...],
        tuple[TensorSpec, ...],
        dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    ]:
        engine, trt = self._engine, self._trt
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dims = tuple(int(d) for d in engine.get_tensor_shape(name))
            dtype_name = getattr(
                engine.get_tensor_dtype(name), "name", str(engine.get_tensor_dtype(name))
            )
            spec = TensorSpec(
                name=name,
                shape=tuple(None if d < 0 else d for d in dims),
                dtype=_DTYPE_NAMES.get(dtype_name, dtype_name.lower()),
            )
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append(spec)
                if any(d < 0 for d in dims):
                    lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
                    profiles[name] = (_dims(lo), _dims(opt), _dims(hi))
            else:
                outputs.append(spec)
        if not inputs:
            raise EngineError(f"{self.source}: the engine has no inputs")
        return tuple(inputs), tuple(outputs), profiles

    def _input_names(self) -> list[str]:
        return [s.name for s in self._inputs]

    def _checked_input(self, spec: TensorSpec, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        t = inputs.get(spec.name)
        if t is None:
            raise EngineError(
                f"missing engine input {spec.name!r}; the engine takes {self._input_names()}"
            )
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"input {spec.name!r} must be a torch.Tensor, got {type(t).__name__}")
        if not self._cuda.on_device(t):
            raise EngineError(
                f"input {spec.name!r} is on {t.device}; the engine runs on {self.device}"
            )
        want = _TORCH_DTYPES.get(spec.dtype)
        if t.dtype != want:
            raise ShapeError(
                f"input {spec.name!r} has dtype {t.dtype}; the engine reads {spec.dtype} in place "
                "(preprocess to that dtype)"
            )
        shape = tuple(t.shape)
        if len(shape) != len(spec.shape) or any(
            w is not None and w != s for w, s in zip(spec.shape, shape, strict=False)
        ):
            raise ShapeError(
                f"input {spec.name!r} has shape {list(shape)}; expected {_fmt(spec.shape)}"
            )
        if spec.name in self._profiles:
            lo, _, hi = self._profiles[spec.name]
            if any(not lo_d <= s <= hi_d for lo_d, s, hi_d in zip(lo, shape, hi, strict=True)):
                raise ShapeError(
                    f"input {spec.name!r} has shape {list(shape)}, outside the engine's "
                    f"optimization profile: min {list(lo)}, max {list(hi)} (batch {lo[0]}..{hi[0]})"
                )
        if not t.is_contiguous():
            raise ShapeError(
                f"input {spec.name!r} is not contiguous NCHW (strides {list(t.stride())}); the "
                "engine reads the buffer in place and never copies it"
            )
        return t

    def _state(self, handle: int) -> _StreamState:
        state = self._states.get(handle)
        if state is not None:
            return state
        with self._lock:
            state = self._states.get(handle)
            if state is None:
                with self._cuda.scope():
                    ctx = self._engine.create_execution_context()
                if ctx is None:
                    raise EngineError(
                        f"TensorRT could not create an execution context for {self.source}"
                    )
                state = self._states[handle] = _StreamState(context=ctx)
                log.debug("execution context %d for stream %#x", len(self._states), handle)
            return state

    def _allocate_outputs(self, ctx: Any) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        for spec in self._outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise EngineError(
                    f"output {spec.name!r} has a data-dependent shape {list(shape)}; "
                    "Fovea's TensorRT engine needs output shapes fixed by the input shapes"
                )
            dtype = _TORCH_DTYPES.get(spec.dtype)
            if dtype is None:
                raise EngineError(
                    f"output {spec.name!r} has dtype {spec.dtype}, which torch cannot hold"
                )
            outputs[spec.name] = self._cuda.empty(shape, dtype)
        return outputs


def _dims(shape: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
