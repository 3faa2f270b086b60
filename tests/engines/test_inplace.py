"""The in-place operator on the CPU: DLPack views share DALI's memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.inplace import dali_to_torch


def _dali_batch(arr: np.ndarray):  # type: ignore[no-untyped-def]
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def p():  # type: ignore[no-untyped-def]
        return fn.external_source(name="x", layout="FCHW", dtype=types.FLOAT)

    pipe = p()
    pipe.build()
    (out,) = pipe.run(x=[arr])
    return out


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_view_shares_dali_memory(layout: str) -> None:
    arr = np.random.default_rng(0).random((4, 3, 8, 10), dtype=np.float32)
    if layout == "NHWC":
        arr = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
    out = _dali_batch(arr)
    t = dali_to_torch(out, layout)
    assert t.data_ptr() == out.as_tensor().data_ptr()
    assert tuple(t.shape) == (4, 3, 8, 10)
    expected = torch.from_numpy(arr if layout == "NCHW" else arr.transpose(0, 3, 1, 2))
    assert torch.equal(t, expected)
    if layout == "NHWC":
        assert t.is_contiguous(memory_format=torch.channels_last)
