"""Where the GPU's time goes in a run: kernel time per CUDA stream class, from a profiler trace.

``python -m benchmarks --profile`` runs the end-to-end measurement under ``torch.profiler``
(CUPTI sees every kernel of the process: DALI's, NVDEC post-processing, torch's) and
summarises the Chrome trace with :func:`gpu_time_breakdown`:

* streams running DALI's kernels (or NVDEC's NV12 conversion) are *decode* streams (colour
  conversion, resize, normalise); the others are *inference* (engine and postprocess);
* each kernel is named with the operator that launched it where the trace links them
  (``External id``), so a copy says which ``aten::`` op made it;
* for the middle of the run (20-80 % of its kernel timeline: no start-up, no tail) it
  reports the fraction of wall time each class had a kernel running, their overlap, the
  time nothing ran, and the kernels taking the most time.

Profiling slows the host side: the run's fps is not a headline figure, the shares are what
it is for.

Usage::

    summary = gpu_time_breakdown("trace.json")
    summary["busy"]["any"], summary["busy"]["inference"], summary["busy"]["decode"]
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
_DECODE_KERNEL = re.compile(r"dali|NV12", re.IGNORECASE)


def _union(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by ``intervals`` (µs)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def gpu_time_breakdown(trace: str | Path | dict[str, Any], lo: float = 0.2, hi: float = 0.8,
                       top: int = 15) -> dict[str, Any]:
    """Summarise a Chrome trace of ``torch.profiler``; see the module docstring."""
    data = trace if isinstance(trace, dict) else json.loads(Path(trace).read_text())
    events = [e for e in data.get("traceEvents", []) if e.get("cat") in _GPU_CATS and "dur" in e]
    if not events:
        return {"error": "no GPU events in the trace (CUPTI unavailable?)"}
    all_streams = {e.get("args", {}).get("stream") for e in events}
    decode_streams = {e.get("args", {}).get("stream") for e in events
                      if e.get("cat") == "kernel" and _DECODE_KERNEL.search(e.get("name", ""))}
    inference_streams = all_streams - decode_streams
    ops = {e["args"]["External id"]: e.get("name", "?") for e in data.get("traceEvents", [])
           if e.get("cat") == "cpu_op" and "External id" in e.get("args", {})}
    t0 = min(float(e["ts"]) for e in events)
    t1 = max(float(e["ts"]) + float(e["dur"]) for e in events)
    w0, w1 = t0 + lo * (t1 - t0), t0 + hi * (t1 - t0)
    spans: dict[str, list[tuple[float, float]]] = {"inference": [], "decode": []}
    by_name: dict[tuple[str, str, str], float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        a, b = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        a, b = max(a, w0), min(b, w1)
        if b <= a:
            continue
        cls = "inference" if e.get("args", {}).get("stream") in inference_streams else "decode"
        spans[cls].append((a, b))
        op = ops.get(e.get("args", {}).get("External id"), "")
        by_name[(cls, e.get("name", "?")[:90], op)] += b - a
        count[cls] += 1
    wall = w1 - w0
    busy_inf, busy_dec = _union(spans["inference"]), _union(spans["decode"])
    busy_any = _union(spans["inference"] + spans["decode"])
    return {
        "window_s": round(wall / 1e6, 3),
        "streams": {"inference": len(inference_streams),
                    "decode": len(decode_streams)},
        "kernels": dict(count),
        "busy": {  # fraction of the window with at least one kernel of the class running
            "any": round(busy_any / wall, 3),
            "inference": round(busy_inf / wall, 3),
            "decode": round(busy_dec / wall, 3),
            "both": round((busy_inf + busy_dec - busy_any) / wall, 3),
            "idle": round(1 - busy_any / wall, 3),
        },
        "kernel_time": {  # summed kernel durations / window (> busy when kernels run concurrently)
            cls: round(sum(b - a for a, b in spans[cls]) / wall, 3) for cls in spans
        },
        "top": [{"class": c, "name": n, "op": op, "share": round(t / wall, 4)}
                for (c, n, op), t in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]],
    }
