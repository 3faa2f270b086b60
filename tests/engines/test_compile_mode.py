"""``engine.compile``: when the torch engine compiles its model, and clear errors when it cannot.

The decision only inspects the module, the device string and whether triton is importable,
so it is tested here without a GPU; the compiled graphs themselves are tested under
``pytest -m gpu`` (tests/engines/test_torch_engine_graphs.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from engines import factory
from engines.factory import compile_mode
from streams.config import EngineConfig
from streams.errors import ConfigError
from tests.models import BrightSpotDetector


@pytest.fixture
def with_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "triton" else real(name, *a))


def test_auto_compiles_modules_on_cuda(with_triton: None) -> None:
    assert compile_mode(BrightSpotDetector(), EngineConfig(), "cuda:0") == "default"
    assert compile_mode(BrightSpotDetector(), EngineConfig(compile="max-autotune"), "cuda:0") \
        == "max-autotune-no-cudagraphs"


def test_never_on_the_cpu_or_when_off(with_triton: None, caplog: pytest.LogCaptureFixture) -> None:
    assert compile_mode(BrightSpotDetector(), EngineConfig(), "cpu") is None
    assert compile_mode(BrightSpotDetector(), EngineConfig(compile="off"), "cuda:0") is None
    with caplog.at_level(logging.WARNING):
        assert compile_mode(BrightSpotDetector(), EngineConfig(compile="default"), "cpu") is None
    assert "applies to CUDA devices" in caplog.text


def test_torchscript_auto_is_logged_explicit_is_an_error(with_triton: None, caplog: pytest.LogCaptureFixture) -> None:
    scripted = torch.jit.trace(BrightSpotDetector(), torch.zeros(1, 3, 32, 32))
    with caplog.at_level(logging.WARNING):
        assert compile_mode(scripted, EngineConfig(), "cuda:0") is None
    assert "TorchScript modules cannot be compiled" in caplog.text
    with pytest.raises(ConfigError, match=r"engine\.compile.*torch\.export"):
        compile_mode(scripted, EngineConfig(compile="default"), "cuda:0")


def test_without_triton(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    with caplog.at_level(logging.WARNING):
        assert compile_mode(BrightSpotDetector(), EngineConfig(), "cuda:0") is None
    assert "triton is not installed" in caplog.text
    with pytest.raises(ConfigError, match="triton"):
        compile_mode(BrightSpotDetector(), EngineConfig(compile="max-autotune"), "cuda:0")


def test_bad_compile_value_is_rejected(tmp_path: Path) -> None:
    from streams.config import load_config

    cfg = tmp_path / "job.yaml"
    cfg.write_text("sources: [x.mp4]\nengine:\n  compile: fast\n")
    with pytest.raises(ConfigError, match="compile"):
        load_config(cfg)


def test_exported_program_loads_as_a_compilable_module(tmp_path: Path) -> None:
    from benchmarks.yolov8n import build_yolov8n, export_program, fuse

    net = fuse(build_yolov8n(input_size=(64, 64))).eval()
    path = export_program(net, tmp_path / "y.pt2")
    module = factory._load_torch_model(path)
    assert not isinstance(module, torch.jit.ScriptModule)
    x = torch.rand(3, 3, 64, 64)  # another batch size than the export's example
    with torch.no_grad():
        assert torch.allclose(module(x), net(x), atol=1e-5)
