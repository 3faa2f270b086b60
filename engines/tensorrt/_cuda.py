"""The little CUDA the *build* side needs: which GPU this is, and host→device staging.

One mechanism, torch's CUDA, is used wherever torch was built with CUDA; where it was
not (a build box with a CPU-only torch), pycuda's driver API on the device's *primary*
context (``Device(i).retain_primary_context()``, never ``pycuda.autoinit``, whose own
context would clash with DALI's and torch's) takes over. The runtime side
(:mod:`engines.tensorrt.runtime`) needs torch's CUDA: its inputs are torch tensors.

Usage::

    gpu = query_gpu(0)              # GpuInfo(name="NVIDIA H200", compute_capability=(9, 0))
    staging = default_staging(0)    # device buffer for INT8 calibration batches
    ptr = staging.upload(batch)     # int device pointer, valid until the next upload
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engines.tensorrt._imports import import_pycuda_driver
from streams.errors import ConfigError, EngineError


@dataclass(frozen=True)
class GpuInfo:
    """What the engine cache records about the GPU a plan is built for."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        """Compute capability as ``"major.minor"``, e.g. ``"9.0"``."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


GpuQuery = Callable[[int], GpuInfo]


def device_index(device: str, key: str = "engine.device") -> int:
    """The GPU index of ``"cuda"`` (0), ``"cuda:N"`` or ``"N"``; anything else is a ConfigError."""
    head, _, tail = device.partition(":")
    if head == "cuda" and not tail:
        return 0
    text = tail if head == "cuda" else device
    if not text.isdigit():
        raise ConfigError(key, f"expected cuda or cuda:N, got {device!r}")
    return int(text)


def query_gpu(device_index: int = 0) -> GpuInfo:
    """Name and compute capability of GPU ``device_index`` (torch's CUDA, else pycuda)."""
    torch_cuda = _torch_cuda()
    if torch_cuda is not None:
        if device_index >= torch_cuda.device_count():
            raise EngineError(
                f"no CUDA device {device_index} (torch sees {torch_cuda.device_count()})"
            )
        props = torch_cuda.get_device_properties(device_index)
        return GpuInfo(
            name=str(props.name), compute_capability=(int(props.major), int(props.minor))
        )
    drv = import_pycuda_driver("Finding the GPU without a CUDA build of torch")
    drv.init()
    if device_index >= drv.Device.count():
        raise EngineError(f"no CUDA device {device_index} (the driver sees {drv.Device.count()})")
    dev = drv.Device(device_index)
    major, minor = dev.compute_capability()
    return GpuInfo(name=str(dev.name()), compute_capability=(int(major), int(minor)))


@contextlib.contextmanager
def primary_context(device_index: int = 0) -> Iterator[Any]:
    """Make GPU ``device_index``'s primary context current (pycuda); yields ``pycuda.driver``."""
    drv = import_pycuda_driver()
    drv.init()
    ctx = drv.Device(device_index).retain_primary_context()
    ctx.push()
    try:
        yield drv
    finally:
        ctx.pop()


@contextlib.contextmanager
def device_scope(device_index: int = 0) -> Iterator[None]:
    """Make GPU ``device_index`` current for TensorRT calls (build or deserialize) in the block.

    torch's ``cuda.device`` where torch has CUDA; else pycuda's primary context, which the
    CUDA runtime (and so TensorRT) adopts. Device 0 needs nothing without torch: the
    runtime starts on device 0's primary context.
    """
    torch_cuda = _torch_cuda()
    if torch_cuda is not None:
        with torch_cuda.device(device_index):
            yield
    elif device_index == 0:
        yield
    else:
        with primary_context(device_index):
            yield


class DeviceStaging(Protocol):
    """A reusable device buffer that host batches are copied into for TensorRT to read."""

    def upload(self, batch: np.ndarray) -> int:
        """Copy ``batch`` to the device (synchronously) and return its device address."""
        ...

    def close(self) -> None:
        """Free the device buffer."""
        ...


class TorchStaging:
    """Staging through a torch CUDA tensor (the default where torch has CUDA)."""

    def __init__(self, device_index: int = 0) -> None:
        import torch

        self._torch = torch
        self._device = torch.device("cuda", device_index)
        self._buf: Any = None

    def upload(self, batch: np.ndarray) -> int:
        host = self._torch.from_numpy(np.ascontiguousarray(batch))
        if self._buf is None or self._buf.shape != host.shape or self._buf.dtype != host.dtype:
            self._buf = self._torch.empty(host.shape, dtype=host.dtype, device=self._device)
        self._buf.copy_(host)
        self._torch.cuda.synchronize(self._device)
        return int(self._buf.data_ptr())

    def close(self) -> None:
        self._buf = None


class PycudaStaging:
    """Staging through pycuda on the primary context (where torch has no CUDA)."""

    def __init__(self, device_index: int = 0) -> None:
        self._index = device_index
        self._mem: Any = None
        self._nbytes = 0

    def upload(self, batch: np.ndarray) -> int:
        host = np.ascontiguousarray(batch)
        with primary_context(self._index) as drv:
            if self._mem is None or self._nbytes != host.nbytes:
                if self._mem is not None:
                    self._mem.free()
                self._mem = drv.mem_alloc(host.nbytes)
                self._nbytes = host.nbytes
            drv.memcpy_htod(self._mem, host)
            return int(self._mem)

    def close(self) -> None:
        if self._mem is not None:
            with primary_context(self._index):
                self._mem.free()
            self._mem = None


def default_staging(device_index: int = 0) -> DeviceStaging:
    """:class:`TorchStaging` where torch has CUDA, else :class:`PycudaStaging`."""
    if _torch_cuda() is not None:
        return TorchStaging(device_index)
    import_pycuda_driver("INT8 calibration without a CUDA build of torch")
    return PycudaStaging(device_index)


def _torch_cuda() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda if torch.cuda.is_available() else None
