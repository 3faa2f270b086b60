"""Torch-vs-ONNX parity: the same model through the torch and ONNX Runtime engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engines.onnxruntime_engine import OnnxRuntimeEngine
from engines.torch_engine import TorchEngine
from pipelines.runner import run_job
from streams.config import load_config
from streams.errors import EngineError, ShapeError
from tests.models import BrightSpotDetector


@pytest.fixture(scope="module")
def bright_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "bright.onnx"
    torch.onnx.export(
        BrightSpotDetector(),
        (torch.zeros(1, 3, 320, 320),),
        str(path),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def test_engine_outputs_match_torch(bright_onnx: Path) -> None:
    x = torch.rand(3, 3, 320, 320)
    with OnnxRuntimeEngine(bright_onnx) as ort, TorchEngine(BrightSpotDetector(), input_size=(320, 320)) as te:
        assert ort.inputs[0].shape == (None, 3, 320, 320)
        assert ort.input_layout == "NCHW"
        a = ort.infer({"images": x})["output0"]
        b = te.infer({"images": x})["output0"]
    assert a.shape == b.shape == (3, 6, 1600)
    assert torch.allclose(a, b, atol=1e-5)


def test_bad_inputs_are_named(bright_onnx: Path, tmp_path: Path) -> None:
    with OnnxRuntimeEngine(bright_onnx) as ort:
        with pytest.raises(ShapeError, match=r"images: expected shape \(None, 3, 320, 320\), got \(1, 3, 64, 64\)"):
            ort.infer({"images": torch.zeros(1, 3, 64, 64)})
        with pytest.raises(EngineError, match="missing input 'images'"):
            ort.infer({"x": torch.zeros(1, 3, 320, 320)})
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(EngineError, match="cannot load"), OnnxRuntimeEngine(bad):
        pass


def test_job_results_match_between_engines(
    clip_dir: Path, bright_model: Path, bright_onnx: Path, tmp_path: Path
) -> None:
    outs = {}
    for name, model in (("torch", bright_model), ("onnx", bright_onnx)):
        cfg = load_config(
            None,
            {
                "sources": [str(clip_dir / "landscape.mp4")],
                "model": str(model),
                "out": str(tmp_path / name),
                "device": "cpu",
            },
        )
        if name == "torch":
            from dataclasses import replace

            cfg = replace(cfg, model=replace(cfg.model, input_size=(320, 320)))
        summary = run_job(cfg, show_progress=False)
        assert summary.ok
        outs[name] = [json.loads(x) for x in (tmp_path / name / "detections.jsonl").read_text().splitlines()]
    assert len(outs["torch"]) == len(outs["onnx"]) == 40
    for a, b in zip(outs["torch"], outs["onnx"], strict=True):
        assert a["frame_index"] == b["frame_index"]
        boxes_a = [c for d in a["detections"] for c in d["box"]]
        boxes_b = [c for d in b["detections"] for c in d["box"]]
        assert boxes_a == pytest.approx(boxes_b, abs=0.05)


def test_auto_engine_for_onnx_without_tensorrt_is_onnxruntime(bright_onnx: Path, caplog) -> None:
    """On a machine without the tensorrt package, engine: auto runs ONNX with ONNX Runtime
    and says why, once."""
    import logging

    from engines.factory import open_engine
    from streams.config import EngineConfig, ModelConfig

    with caplog.at_level(logging.INFO):
        engine, info = open_engine(ModelConfig(path=str(bright_onnx)), EngineConfig(), "cpu")
    assert isinstance(engine, OnnxRuntimeEngine)
    assert info.input_size == (320, 320)
    assert any("engine auto → onnxruntime" in r.message for r in caplog.records)


def test_tensorrt_engine_without_tensorrt_names_what_to_install(bright_onnx: Path) -> None:
    from engines.factory import open_engine
    from streams.config import EngineConfig, ModelConfig
    from streams.errors import MissingDependencyError

    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="CUDA"):
            open_engine(ModelConfig(path=str(bright_onnx)), EngineConfig(kind="tensorrt"), "cpu")
        return
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        engine, _ = open_engine(ModelConfig(path=str(bright_onnx)), EngineConfig(kind="tensorrt"), "cuda:0")
        with engine:
            pass


def test_onnx_on_a_gpu_without_gpu_runtimes_is_an_error_not_the_cpu(bright_onnx: Path, monkeypatch) -> None:
    """A GPU machine without tensorrt, onnx2torch and onnxruntime-gpu: engine auto refuses the
    ONNX model on the GPU, naming what to install and device: cpu, instead of running it on
    the CPU behind the user's back (issue #30)."""
    import engines.onnx_torch
    import engines.onnxruntime_engine
    from engines.factory import open_engine
    from streams.config import EngineConfig, ModelConfig
    from streams.errors import MissingDependencyError

    monkeypatch.setattr(engines.onnx_torch, "onnx2torch_problem", lambda: "onnx2torch cannot be imported (test)")
    monkeypatch.setattr(engines.onnxruntime_engine, "cuda_provider_available", lambda: False)
    monkeypatch.setattr("engines.factory._tensorrt_importable", lambda: (False, "tensorrt is not installed"))
    with pytest.raises(MissingDependencyError) as info:
        open_engine(ModelConfig(path=str(bright_onnx)), EngineConfig(), "cuda:0")
    msg = str(info.value)
    assert "onnx2torch" in msg and "onnxruntime-gpu" in msg and "engine.device: cpu" in msg and "\n" not in msg
    # asked for explicitly, onnxruntime on CUDA is an error naming what to install
    explicit, _ = open_engine(ModelConfig(path=str(bright_onnx)), EngineConfig(kind="onnxruntime"), "cuda:0")
    with pytest.raises(MissingDependencyError, match="onnxruntime-gpu"), explicit:
        pass


def test_onnx_on_a_gpu_prefers_onnx2torch_where_tensorrt_is_absent(monkeypatch) -> None:
    import engines.onnx_torch
    from engines.factory import _onnx_auto_kind

    monkeypatch.setattr(engines.onnx_torch, "onnx2torch_problem", lambda: None)
    monkeypatch.setattr("engines.factory._tensorrt_importable", lambda: (False, "tensorrt is not installed"))
    kind, why = _onnx_auto_kind("cuda:0")
    assert kind == "torch" and "onnx2torch" in why
    assert _onnx_auto_kind("cpu") == ("onnxruntime", "device is the CPU")
