"""Host-to-device copies of small tables that do not make the host wait for the GPU.

A plain ``tensor.to("cuda")`` from pageable memory is a synchronizing copy in torch: the
host waits until everything queued on the current stream has run (the engine's whole
batch, in the postprocess). :func:`upload` stages the table in pinned memory and queues
an asynchronous copy on the current stream instead; torch's pinned-memory cache keeps the
staging buffer until that copy has run.

Usage::

    geometry = upload(torch.tensor(rows, dtype=torch.float32), frames.device)
"""

from __future__ import annotations

import torch

__all__ = ["upload"]


def upload(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``t`` (a CPU tensor) on ``device``, copied without a host synchronization on CUDA."""
    dev = torch.device(device) if device is not None else t.device
    if dev.type != "cuda":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)
