"""The engine interface: named tensors in, named tensors out, on an explicit CUDA stream.

An engine is a context manager (load/allocate on ``__enter__``, release on ``__exit__``)
with one hot-path method, :meth:`Engine.infer`. Inputs are torch tensors that may be
zero-copy views of another library's buffer (``torch.from_dlpack(dali_tensor)``): an
engine must read them in place and never copy them to the host. Outputs are torch
tensors on the engine's device, ordered on ``stream``.

``stream`` is a raw ``cudaStream_t`` handle (an ``int``), the currency shared by DALI
(``pipe.run(cuda_stream=...)``), TensorRT (``execute_async_v3(stream_handle)``) and torch
(``torch.cuda.ExternalStream(handle)``). ``None`` means the CPU, or the current torch
stream on CUDA.

Besides ``infer``, the caller (the job's set-up and its inference threads) uses three
hooks, which every engine implements; engines without CUDA graphs inherit the no-op ones
of :class:`NoGraphs`:

- :meth:`Engine.capture_graphs` once, before any decoder runs: a CUDA-graph capture must
  not overlap other threads' CUDA work (DALI's decoders);
- :meth:`Engine.close_captures` when decoding may start: no capture after it;
- :meth:`Engine.running` held around each batch's inference and postprocess, so that a
  capture (the torch engine's, during warm-up) never overlaps them.

Usage::

    with TorchEngine(model, device="cuda:0", precision="fp16") as engine:
        engine.capture_graphs(16, streams)          # before decoding starts
        engine.close_captures("decoders run from here on")
        with engine.running():
            out = engine.infer({engine.inputs[0].name: batch}, stream=handle)
            preds = out[engine.outputs[0].name]     # torch.Tensor on cuda:0
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

Layout = Literal["NCHW", "NHWC"]
Precision = Literal["fp32", "fp16", "int8"]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of an engine input or output.

    ``shape`` uses ``None`` for dynamic dimensions (usually the batch); ``dtype`` is a
    NumPy dtype name such as ``"float16"``, ``"float32"``, ``"int32"``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@runtime_checkable
class Engine(Protocol):
    """An inference engine. See the module docstring for the contract."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Input tensors; Fovea feeds the first with the image batch ``[N, C, H, W]``."""
        ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Output tensors, in the order the model declares them."""
        ...

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda:<index>"``."""
        ...

    @property
    def input_layout(self) -> Layout:
        """Memory layout the engine reads fastest; preprocessing produces it.

        ``"NHWC"`` means the engine takes a logically NCHW tensor with channels-last
        strides (``nhwc.permute(0, 3, 1, 2)``, no copy); ``"NCHW"`` means contiguous NCHW.
        """
        ...

    @property
    def input_dtype(self) -> str:
        """``"float16"`` or ``"float32"``: the dtype preprocessing must produce."""
        ...

    @property
    def max_batch_size(self) -> int | None:
        """Largest batch the engine accepts, or ``None`` for no limit."""
        ...

    def __enter__(self) -> Engine: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def infer(
        self, inputs: Mapping[str, torch.Tensor], stream: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the model on ``inputs`` (read in place) and return its outputs by name."""
        ...

    def capture_graphs(self, batch: int, streams: Sequence[torch.cuda.Stream],
                       sizes: Sequence[tuple[int, int]] | None = None) -> int:
        """Capture one CUDA graph per stream for batches of ``batch`` frames of each input
        size ``(h, w)`` in ``sizes`` (default: the model's input size; other sizes are a
        dynamic-shape model's rectangle canvases); call it before decoding starts (inside
        ``with``). Returns how many were captured: 0 for engines without graphs, or where
        graphs are off (the CPU, ``cuda_graphs: false``)."""
        ...

    def close_captures(self, reason: str) -> None:
        """No CUDA-graph capture after this; a batch that would need one runs without a graph
        and ``reason`` (why captures are closed) is logged."""
        ...

    def running(self) -> contextlib.AbstractContextManager[None]:
        """The section a caller holds around one batch's inference and postprocess (its own
        GPU work on the engine's outputs): no capture overlaps it. Re-entrant per thread."""
        ...


class NoGraphs:
    """The :class:`Engine` hooks of an engine without CUDA graphs: no captures, no section.

    TensorRT binds the caller's buffer in place and ONNX Runtime runs on its own stream,
    so neither replays graphs; they inherit these no-ops.
    """

    def capture_graphs(self, batch: int, streams: Sequence[torch.cuda.Stream],
                       sizes: Sequence[tuple[int, int]] | None = None) -> int:
        """Nothing to capture: 0."""
        return 0

    def close_captures(self, reason: str) -> None:
        """Nothing is ever captured, so there is nothing to close."""

    def running(self) -> contextlib.AbstractContextManager[None]:
        """No capture can overlap the caller's work: an empty section."""
        return contextlib.nullcontext()
