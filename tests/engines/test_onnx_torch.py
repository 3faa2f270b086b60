"""ONNX models converted to torch by onnx2torch (issue #30): the GPU path without TensorRT.

On the CPU the converted module must give ONNX Runtime's outputs, for a graph with the
opset-18 operators Ultralytics exports (``Split``, ``Resize``, ``Pad``, ``ReduceMax``) and
``GridSample`` (RT-DETR), which :mod:`engines.onnx_torch` adds to onnx2torch; a graph with an
operator it cannot convert is one EngineError line naming the file and the operator. On the
GPU (``-m gpu``) the same model runs through the torch engine with CUDA graphs.

onnx2torch imports torchvision, which must match torch: CI cannot install one that matches
its CPU torch (``tests/optional.py`` ``CI_GAPS`` says why), so there these tests skip with that
reason; they run on the GPU machine (``-m gpu``) and wherever the pair is installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.factory import open_engine
from engines.onnx_torch import onnx2torch_problem
from streams.config import EngineConfig, ModelConfig
from streams.errors import EngineError
from tests.optional import skip_for_ci_gap, skip_unless_present

skip_for_ci_gap("torchvision")  # onnx2torch imports it
skip_unless_present(onnx2torch_problem())


class Opset18(torch.nn.Module):
    """Split, nearest Resize, constant Pad, ReduceMax and GridSample in one small graph."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        a, b = torch.split(y, [3, 5], dim=1)
        a = F.interpolate(a, scale_factor=2.0, mode="nearest")
        a = F.pad(a, (2, 2, 2, 2), value=0.5)
        a = F.max_pool2d(a, 2)[..., 1:-1, 1:-1]
        m = b.amax(dim=1, keepdim=True)
        grid = torch.tanh(b[:, :2].permute(0, 2, 3, 1))
        g = F.grid_sample(b[:, 2:], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return torch.cat([a, g, m], 1).flatten(2)


@pytest.fixture(scope="module")
def opset18_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("o2t") / "opset18.onnx"
    torch.onnx.export(Opset18().eval(), (torch.rand(1, 3, 32, 32),), str(path), opset_version=18, dynamo=False,
                      input_names=["images"], output_names=["out"],
                      dynamic_axes={"images": {0: "batch"}, "out": {0: "batch"}})
    return path


def _onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"images": x})[0])


def test_converted_model_matches_onnxruntime_on_the_cpu(opset18_onnx: Path) -> None:
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    engine, info = open_engine(ModelConfig(path=str(opset18_onnx)), EngineConfig(kind="torch"), "cpu")
    with engine:
        assert engine.inputs[0].name == "images" and [o.name for o in engine.outputs] == ["out"]
        got = engine.infer({"images": torch.from_numpy(x)})["out"].numpy()
    expected = _onnxruntime(opset18_onnx, x)
    assert got.shape == expected.shape == (2, 7, 1024)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert info.input_size == (32, 32)


def test_an_operator_onnx2torch_cannot_convert_is_one_line_naming_it(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["images"], ["out"], axis=1)], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = tmp_path / "hardmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(EngineError) as info:
        open_engine(ModelConfig(path=str(path)), EngineConfig(kind="torch"), "cpu")
    msg = str(info.value)
    assert str(path) in msg and "Hardmax" in msg and "engine.device: cpu" in msg and "\n" not in msg


@pytest.mark.gpu
def test_onnx_on_the_gpu_runs_converted_with_cuda_graphs(opset18_onnx: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run with pytest -m gpu on the GPU machine)")
    x = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    engine, _ = open_engine(ModelConfig(path=str(opset18_onnx)), EngineConfig(kind="torch", compile="off"),
                            "cuda:0")
    with engine:
        assert engine.device.startswith("cuda")
        stream = torch.cuda.Stream()
        assert engine.capture_graphs(4, [stream]) == 1
        batch = torch.from_numpy(x).to("cuda:0").half().contiguous(memory_format=torch.channels_last)
        with torch.cuda.stream(stream):
            out = engine.infer({"images": batch}, stream=stream.cuda_stream)["out"]
        stream.synchronize()
    np.testing.assert_allclose(out.float().cpu().numpy(), _onnxruntime(opset18_onnx, x), atol=2e-2)
