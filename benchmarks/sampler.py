"""Utilisation sampling during a measurement: GPU, NVDEC, GPU memory (NVML), CPU.

A background thread samples every ``interval`` seconds: GPU and decoder utilisation and
memory in use through NVML (``nvidia-ml-py``, imported lazily), system CPU utilisation
(``psutil`` if installed, else ``/proc/stat``) and the cores this process uses. Without
NVML (no package, no driver, a CPU machine) the GPU figures are ``None``; that is logged
once per process.

Usage::

    with UtilSampler("cuda:0") as s:
        run_measurement()
    stats = s.stats()            # UtilStats: means and maxima
    stats.nvdec_util_mean        # percent, or None without NVML
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

_nvml_lock = threading.Lock()
_nvml_state: dict[str, Any] = {"init": None, "reason": None}  # init: True/False once tried


@dataclass(frozen=True)
class UtilStats:
    """Means and maxima over a measurement (percent; memory in MiB); ``None``: not measured."""

    samples: int = 0
    gpu_util_mean: float | None = None
    gpu_util_max: float | None = None
    nvdec_util_mean: float | None = None
    nvdec_util_max: float | None = None
    gpu_mem_used_mib_max: float | None = None
    cpu_util_mean: float | None = None  # whole machine, percent of all cores
    cpu_util_max: float | None = None
    proc_cores_mean: float | None = None  # cores busy in this process (1.0 = one core)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def nvml_init() -> bool:
    """Initialise NVML once; ``False`` (logged once) when it is not available."""
    with _nvml_lock:
        if _nvml_state["init"] is not None:
            return bool(_nvml_state["init"])
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml_state["init"] = True
        except Exception as e:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            _nvml_state["init"] = False
            _nvml_state["reason"] = f"{type(e).__name__}: {e}"
            log.info("NVML not available (%s): GPU/NVDEC utilisation is not recorded", _nvml_state["reason"])
        return bool(_nvml_state["init"])


def nvml_unavailable_reason() -> str | None:
    """Why NVML could not be used (after :func:`nvml_init` returned ``False``)."""
    reason = _nvml_state["reason"]
    return None if reason is None else str(reason)


def nvml_handle(device: str | None) -> Any | None:
    """NVML handle of a torch device (``cuda:N``): matched by UUID, else by index; ``None`` for CPU."""
    if device is None or not device.startswith("cuda") or not nvml_init():
        return None
    import pynvml

    index = int(device.split(":")[1]) if ":" in device else 0
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # older torch (no uuid), MIG, CUDA_VISIBLE_DEVICES remapping quirks
        try:
            return pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as e:
            log.info("NVML: no handle for %s (%s)", device, e)
            return None


def gpu_environment(device: str | None) -> dict[str, Any]:
    """GPU name, driver and CUDA driver versions from NVML (empty without it)."""
    h = nvml_handle(device)
    if h is None:
        return {}
    import pynvml

    out: dict[str, Any] = {}
    try:
        name = pynvml.nvmlDeviceGetName(h)
        out["gpu_name"] = name.decode() if isinstance(name, bytes) else str(name)
        drv = pynvml.nvmlSystemGetDriverVersion()
        out["driver"] = drv.decode() if isinstance(drv, bytes) else str(drv)
        cuda = int(pynvml.nvmlSystemGetCudaDriverVersion())
        out["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        out["gpu_memory_mib"] = round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**20)
    except Exception as e:
        log.debug("NVML environment query failed: %s", e)
    return out


class _CpuTimes:
    """System CPU utilisation between calls: psutil, else /proc/stat, else None."""

    def __init__(self) -> None:
        try:
            import psutil

            self._psutil: Any = psutil
            psutil.cpu_percent(None)
        except ImportError:
            self._psutil = None
        self._last = self._proc_stat()

    @staticmethod
    def _proc_stat() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def percent(self) -> float | None:
        if self._psutil is not None:
            return float(self._psutil.cpu_percent(None))
        now = self._proc_stat()
        last, self._last = self._last, now
        if now is None or last is None or now[0] <= last[0]:
            return None
        total, idle = now[0] - last[0], now[1] - last[1]
        return 100.0 * (total - idle) / total


class UtilSampler:
    """Samples utilisation in a thread while entered; see the module docstring."""

    def __init__(self, device: str | None = None, interval: float = 0.2) -> None:
        self.device = device
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gpu: list[float] = []
        self._dec: list[float] = []
        self._mem: list[float] = []
        self._cpu: list[float] = []
        self._proc: list[float] = []
        self._handle: Any | None = None

    def __enter__(self) -> UtilSampler:
        self._handle = nvml_handle(self.device)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fovea-bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        cpu = _CpuTimes()
        last_wall, last_proc = time.monotonic(), _proc_seconds()
        nvml: Any = importlib.import_module("pynvml") if self._handle is not None else None
        while not self._stop.wait(self.interval):
            if nvml is not None:
                try:
                    self._gpu.append(float(nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
                    self._dec.append(float(nvml.nvmlDeviceGetDecoderUtilization(self._handle)[0]))
                    self._mem.append(nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20)
                except Exception as e:  # e.g. NVMLError_NotSupported on some GPUs: stop asking
                    log.info("NVML sampling failed (%s); GPU utilisation not recorded further", e)
                    nvml = None
            c = cpu.percent()
            if c is not None:
                self._cpu.append(c)
            wall, proc = time.monotonic(), _proc_seconds()
            if wall > last_wall:
                self._proc.append((proc - last_proc) / (wall - last_wall))
            last_wall, last_proc = wall, proc

    def stats(self) -> UtilStats:
        """Means and maxima of what was sampled so far."""
        def mean(v: list[float]) -> float | None:
            return round(sum(v) / len(v), 1) if v else None

        def peak(v: list[float]) -> float | None:
            return round(max(v), 1) if v else None

        return UtilStats(
            samples=max(len(self._cpu), len(self._gpu), len(self._proc)),
            gpu_util_mean=mean(self._gpu), gpu_util_max=peak(self._gpu),
            nvdec_util_mean=mean(self._dec), nvdec_util_max=peak(self._dec),
            gpu_mem_used_mib_max=peak(self._mem),
            cpu_util_mean=mean(self._cpu), cpu_util_max=peak(self._cpu),
            proc_cores_mean=(round(sum(self._proc) / len(self._proc), 2) if self._proc else None),
        )


def _proc_seconds() -> float:
    t = os.times()
    return t.user + t.system
