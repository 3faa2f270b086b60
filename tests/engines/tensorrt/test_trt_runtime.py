"""``TensorRTEngine``'s binding logic against a recording stand-in for TensorRT.

TensorRT cannot be installed here (and there is no GPU): :class:`trt_standin.FakeTensorRT`
stands in for it, its engine and execution contexts recording shapes, tensor addresses
and enqueues, and :class:`trt_standin.CpuCuda` replaces torch's CUDA with CPU tensors.
So these tests check what Fovea hands TensorRT (the caller's own buffer, reused output
buffers, one context per stream), not TensorRT's results.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from engines.base import Engine, TensorSpec
from engines.tensorrt.runtime import TensorRTEngine
from streams.errors import EngineError, ShapeError
from tests.engines.tensorrt.trt_standin import CpuCuda, FakeTensorRT, make_plan

NMS_OUTPUTS = [
    {"name": "num_dets", "shape": [-1, 1], "dtype": "INT32"},
    {"name": "det_boxes", "shape": [-1, 100, 4], "dtype": "FLOAT"},
    {"name": "det_scores", "shape": [-1, 100], "dtype": "FLOAT"},
    {"name": "det_classes", "shape": [-1, 100], "dtype": "INT32"},
]


@pytest.fixture
def cuda() -> CpuCuda:
    return CpuCuda()


@pytest.fixture
def engine(fake_trt: FakeTensorRT, cuda: CpuCuda) -> TensorRTEngine:
    return TensorRTEngine(make_plan(), cuda=cuda)


def _batch(n: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64).to(dtype)


def test_engine_protocol_and_specs(fake_trt: FakeTensorRT, cuda: CpuCuda) -> None:
    engine = TensorRTEngine(make_plan(batch=(1, 8, 16), outputs=NMS_OUTPUTS), cuda=cuda)
    assert isinstance(engine, Engine)
    assert engine.inputs == (TensorSpec("images", (None, 3, 64, 64), "float16"),)
    assert engine.outputs == (
        TensorSpec("num_dets", (None, 1), "int32"),
        TensorSpec("det_boxes", (None, 100, 4), "float32"),
        TensorSpec("det_scores", (None, 100), "float32"),
        TensorSpec("det_classes", (None, 100), "int32"),
    )
    assert engine.device == "cuda:0"
    assert engine.input_layout == "NCHW"
    assert engine.input_dtype == "float16"
    assert engine.max_batch_size == 16
    assert engine.profiles == {"images": ((1, 3, 64, 64), (8, 3, 64, 64), (16, 3, 64, 64))}
    assert fake_trt.rec.plugin_inits == [""]  # plugins registered before deserializing


def test_input_dtype_follows_the_engine(fake_trt: FakeTensorRT, cuda: CpuCuda) -> None:
    assert TensorRTEngine(make_plan(input_dtype="FLOAT"), cuda=cuda).input_dtype == "float32"


def test_plan_file_is_read(fake_trt: FakeTensorRT, cuda: CpuCuda, tmp_path: Path) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(make_plan())
    assert TensorRTEngine(plan, cuda=cuda).source == str(plan)
    with pytest.raises(EngineError, match="cannot read the TensorRT plan"):
        TensorRTEngine(tmp_path / "missing.plan", cuda=cuda)


def test_deserialize_failure_has_a_rebuild_hint(fake_trt: FakeTensorRT, cuda: CpuCuda) -> None:
    with pytest.raises(EngineError) as info:
        TensorRTEngine(b"a plan from another machine", cuda=cuda)
    msg = str(info.value)
    assert "TensorRT 10.8.0.43 cannot load the plan" in msg
    assert "another GPU or another TensorRT version" in msg
    assert "delete the plan, or let the engine cache rebuild it" in msg


def test_input_is_bound_in_place(engine: TensorRTEngine, fake_trt: FakeTensorRT) -> None:
    buffer = _batch(8)  # e.g. DALI's output buffer, viewed through DLPack
    view = buffer[2:6]  # a contiguous view inside it, at an offset
    assert view.is_contiguous() and view.data_ptr() != buffer.data_ptr()
    out = engine.infer({"images": view}, stream=0x1234)
    ctx = fake_trt.rec.contexts[0]
    stream, addresses = ctx.enqueues[-1]
    assert stream == 0x1234
    assert addresses["images"] == view.data_ptr()  # the caller's bytes, no copy
    assert addresses["output0"] == out["output0"].data_ptr()
    assert ctx.set_shape_calls == [("images", (4, 3, 64, 64))]
    assert out["output0"].shape == (4, 7, 64) and out["output0"].dtype == torch.float32


def test_outputs_are_allocated_once_per_stream_and_shape(
    engine: TensorRTEngine, fake_trt: FakeTensorRT, cuda: CpuCuda
) -> None:
    a = engine.infer({"images": _batch(4)}, stream=1)["output0"]
    b = engine.infer({"images": _batch(4)}, stream=1)["output0"]
    assert a.data_ptr() == b.data_ptr()
    assert len(cuda.allocations) == 1
    ctx = fake_trt.rec.contexts[0]
    assert len(ctx.set_shape_calls) == 1  # same shape: not set again
    c = engine.infer({"images": _batch(2)}, stream=1)["output0"]
    assert c.shape[0] == 2 and len(cuda.allocations) == 2
    d = engine.infer({"images": _batch(4)}, stream=1)["output0"]
    assert d.data_ptr() == a.data_ptr()  # back to batch 4: the first buffers again
    assert len(cuda.allocations) == 2
    assert ctx.enqueues[-1][1]["output0"] == a.data_ptr()


def test_one_context_per_stream(
    engine: TensorRTEngine, fake_trt: FakeTensorRT, cuda: CpuCuda
) -> None:
    x = _batch(2)
    out1 = engine.infer({"images": x}, stream=11)
    out2 = engine.infer({"images": x}, stream=22)
    engine.infer({"images": x}, stream=11)
    assert len(fake_trt.rec.contexts) == 2
    c1, c2 = fake_trt.rec.contexts
    assert [s for s, _ in c1.enqueues] == [11, 11]
    assert [s for s, _ in c2.enqueues] == [22]
    assert out1["output0"].data_ptr() != out2["output0"].data_ptr()  # streams never share outputs


def test_default_stream_is_the_current_one(
    engine: TensorRTEngine, fake_trt: FakeTensorRT, cuda: CpuCuda
) -> None:
    engine.infer({"images": _batch(1)})
    assert fake_trt.rec.contexts[0].enqueues[0][0] == cuda.stream


def test_streams_from_threads_get_their_own_contexts(
    engine: TensorRTEngine, fake_trt: FakeTensorRT
) -> None:
    def work(stream: int) -> None:
        for _ in range(20):
            engine.infer({"images": _batch(2)}, stream=stream)

    threads = [threading.Thread(target=work, args=(s,)) for s in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_trt.rec.contexts) == 4
    assert sorted(len(c.enqueues) for c in fake_trt.rec.contexts) == [20, 20, 20, 20]


@pytest.mark.parametrize("batch", [0, 9])
def test_batch_outside_the_profile(
    engine: TensorRTEngine, fake_trt: FakeTensorRT, batch: int
) -> None:
    with pytest.raises(
        ShapeError,
        match=r"outside the engine's optimization profile: "
        r"min \[1, 3, 64, 64\], max \[8, 3, 64, 64\]",
    ):
        engine.infer({"images": _batch(batch)}, stream=1)
    assert fake_trt.rec.contexts == [] or fake_trt.rec.contexts[0].enqueues == []


def test_wrong_dtype_is_not_converted(engine: TensorRTEngine) -> None:
    with pytest.raises(ShapeError, match=r"dtype torch.float32; the engine reads float16"):
        engine.infer({"images": _batch(2, torch.float32)})


def test_channels_last_is_not_copied(engine: TensorRTEngine) -> None:
    x = _batch(2).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ShapeError, match=r"not contiguous NCHW.*never copies"):
        engine.infer({"images": x})


@pytest.mark.parametrize("shape", [(2, 3, 32, 64), (2, 1, 64, 64), (3, 64, 64), (1, 2, 3, 64, 64)])
def test_wrong_shape(engine: TensorRTEngine, shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeError, match=r"expected \[\?, 3, 64, 64\]"):
        engine.infer({"images": torch.zeros(shape, dtype=torch.float16)})


def test_missing_and_unknown_inputs(engine: TensorRTEngine) -> None:
    with pytest.raises(EngineError, match="missing engine input 'images'"):
        engine.infer({"x": _batch(1)})
    with pytest.raises(EngineError, match=r"unknown engine inputs \['extra'\]"):
        engine.infer({"images": _batch(1), "extra": _batch(1)})


def test_input_on_another_device(engine: TensorRTEngine) -> None:
    meta = torch.empty((1, 3, 64, 64), dtype=torch.float16, device="meta")
    with pytest.raises(EngineError, match="is on meta; the engine runs on cuda:0"):
        engine.infer({"images": meta})


def test_failed_enqueue(engine: TensorRTEngine, fake_trt: FakeTensorRT) -> None:
    fake_trt.fail_execute = True
    with pytest.raises(EngineError, match="failed to enqueue"):
        engine.infer({"images": _batch(1)}, stream=5)


def test_context_manager_releases_contexts(
    engine: TensorRTEngine, fake_trt: FakeTensorRT, cuda: CpuCuda
) -> None:
    with engine as e:
        assert e is engine
        e.infer({"images": _batch(1)}, stream=1)
    assert cuda.syncs == 1
    engine.infer({"images": _batch(1)}, stream=1)  # usable again: a new context
    assert len(fake_trt.rec.contexts) == 2


def test_non_image_input_is_rejected(fake_trt: FakeTensorRT, cuda: CpuCuda) -> None:
    with pytest.raises(EngineError, match="float16 or float32"):
        TensorRTEngine(make_plan(input_dtype="INT32"), cuda=cuda)
