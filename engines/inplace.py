"""The in-place inference operator: an engine reading DALI's output buffer directly.

DALI hands over one contiguous tensor per batch (``TensorList.as_tensor()``). The
operator wraps it with DLPack (``torch.from_dlpack``: same pointer, no copy), views it
as the engine's ``[N, C, H, W]`` input (for ``NHWC`` output a channels-last permuted
view), and calls the engine on the CUDA stream DALI's outputs are ordered on. The frame
batch never goes to the host; the operator verifies the pointer identity and raises
instead of ever copying it. What the engine does with the pointer is the engine's: the
TensorRT engine binds it in place; the torch engine's CUDA graphs, captured before
decoding starts, copy it once into their own input buffer (see engines.torch_engine).

Usage::

    op = InPlaceInference(engine)
    outputs = op(dali_images, layout="NCHW", stream=stream_handle)   # dict of tensors
    op.last_input_ptr == dali_images.as_tensor().data_ptr()           # True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from engines.base import Engine
from streams.errors import EngineError, ShapeError


def dali_to_torch(images: Any, layout: str, stream: int | None = None) -> torch.Tensor:
    """Zero-copy ``[N, C, H, W]`` torch view of a DALI batch of frame sequences.

    ``images`` is a DALI ``TensorList`` of ``FCHW`` (``layout="NCHW"``) or ``FHWC``
    (``layout="NHWC"``) sequences; its samples are stacked along the frame axis.
    """
    tensor = images.as_tensor() if hasattr(images, "as_tensor") else images
    ptr = tensor.data_ptr()
    with on_stream(stream):
        t = torch.from_dlpack(tensor)
    if t.data_ptr() != ptr:  # never silently copy the frame batch
        raise EngineError("DLPack produced a copy of DALI's buffer; refusing to continue")
    if t.dim() == 5:  # [samples, frames, ...] → [samples * frames, ...], a view
        t = t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])
    if t.dim() != 4:
        raise ShapeError(f"DALI batch: expected 4 or 5 dims, got shape {tuple(t.shape)}")
    if layout == "NHWC":
        t = t.permute(0, 3, 1, 2)  # logical NCHW with channels-last strides; no copy
    return t


@contextlib.contextmanager
def on_stream(stream: int | None) -> Iterator[None]:
    """Make the raw CUDA stream ``stream`` torch's current stream (no-op for ``None``/CPU)."""
    if stream is None or not torch.cuda.is_available():
        yield
        return
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        yield


class InPlaceInference:
    """Feeds DALI batches to an engine without copying them; see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.input_name = engine.inputs[0].name
        self.last_input_ptr: int | None = None

    def __call__(self, images: Any, layout: str, stream: int | None) -> dict[str, torch.Tensor]:
        """Run the engine on ``images`` (a DALI TensorList) in place; outputs by name."""
        x = dali_to_torch(images, layout, stream)
        self.last_input_ptr = x.data_ptr()
        return self.engine.infer({self.input_name: x}, stream=stream)
