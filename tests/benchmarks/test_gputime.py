"""The GPU-time summary of a profiler trace (a hand-made Chrome trace with known overlaps)."""

from __future__ import annotations

from benchmarks.gputime import _union, gpu_time_breakdown


def _k(name: str, stream: int, ts: float, dur: float, cat: str = "kernel") -> dict[str, object]:
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"stream": stream}}


def test_union_merges_overlaps() -> None:
    assert _union([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25


def test_breakdown_classifies_streams_and_measures_overlap() -> None:
    # inference stream 7 (a conv kernel) busy 0-50, decode stream 3 busy 40-70, nothing 70-100
    trace = {"traceEvents": [
        {**_k("sm90_xmma_fprop_implicit_gemm", 7, 0, 30), "args": {"stream": 7, "External id": 5}},
        _k("vectorized_elementwise", 7, 30, 20),
        _k("dali::kernels::ResizeKernel", 3, 40, 30), _k("Memcpy DtoD", 3, 100, 0, "gpu_memcpy"),
        {"cat": "cpu_op", "name": "aten::conv2d", "ts": 0, "dur": 100, "args": {"External id": 5}},
    ]}
    s = gpu_time_breakdown(trace, lo=0.0, hi=1.0)
    assert s["streams"] == {"inference": 1, "decode": 1}
    assert s["busy"] == {"any": 0.7, "inference": 0.5, "decode": 0.3, "both": 0.1, "idle": 0.3}
    assert s["kernel_time"] == {"inference": 0.5, "decode": 0.3}
    assert s["top"][0] == {"class": "inference", "name": "sm90_xmma_fprop_implicit_gemm", "op": "aten::conv2d",
                           "share": 0.3}
    assert "error" in gpu_time_breakdown({"traceEvents": []})
