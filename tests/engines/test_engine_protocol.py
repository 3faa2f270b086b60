"""Every engine implements the whole :class:`engines.base.Engine` protocol, hooks included.

The job calls ``capture_graphs``, ``close_captures`` and ``running`` on whatever engine
the factory opened (no ``getattr`` probing), so each engine class must have them; the
torch engine's ``running`` is the section a CUDA-graph capture waits for.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch

from engines.base import Engine, NoGraphs
from engines.onnxruntime_engine import OnnxRuntimeEngine
from engines.tensorrt.runtime import TensorRTEngine
from engines.torch_engine import TorchEngine
from tests.engines.tensorrt.trt_standin import CpuCuda, FakeTensorRT, make_plan
from tests.models import BrightSpotDetector

HOOKS = ("capture_graphs", "close_captures", "running")


def test_the_protocol_declares_the_hooks_the_job_calls() -> None:
    members = Engine.__protocol_attrs__ if hasattr(Engine, "__protocol_attrs__") else set(dir(Engine))
    for name in HOOKS:
        assert name in members, name


@pytest.fixture
def onnx_model(tmp_path: Path) -> Path:
    path = tmp_path / "bright.onnx"
    torch.onnx.export(BrightSpotDetector(), (torch.zeros(1, 3, 64, 64),), str(path), input_names=["images"],
                      output_names=["output0"], dynamic_axes={"images": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    return path


def _exercise(engine: Engine) -> None:
    """The job's calls, in its order: capture before decoding, close, then batches in ``running``."""
    assert isinstance(engine, Engine)
    assert engine.capture_graphs(2, []) == 0  # CPU / no graphs: nothing captured
    engine.close_captures("decoders run from here on")
    x = torch.zeros(2, 3, 64, 64, dtype=torch.float16 if engine.input_dtype == "float16" else torch.float32)
    with engine.running(), engine.running():  # re-entrant
        out = engine.infer({engine.inputs[0].name: x})
    assert set(out) == {o.name for o in engine.outputs}


def test_torch_engine() -> None:
    with TorchEngine(BrightSpotDetector(), device="cpu", input_size=(64, 64)) as engine:
        _exercise(engine)


def test_onnxruntime_engine(onnx_model: Path) -> None:
    with OnnxRuntimeEngine(onnx_model, device="cpu") as engine:
        assert isinstance(engine, NoGraphs)
        _exercise(engine)


def test_tensorrt_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())  # TensorRT cannot be installed here
    with TensorRTEngine(make_plan(), cuda=CpuCuda()) as engine:
        assert isinstance(engine, NoGraphs)
        _exercise(engine)


def test_torch_engine_running_holds_back_a_capture() -> None:
    """A capture (the gate's exclusive section) waits while a caller is inside ``running``."""
    with TorchEngine(BrightSpotDetector(), device="cpu", input_size=(64, 64)) as engine:
        inside, captured = threading.Event(), threading.Event()

        def capture() -> None:
            inside.wait(5)
            with engine.gate.exclusive():
                captured.set()

        t = threading.Thread(target=capture)
        t.start()
        with engine.running():
            inside.set()
            assert not captured.wait(0.3), "a capture ran while a caller was inside running()"
        assert captured.wait(5), "the capture never ran after running() was left"
        t.join(5)
