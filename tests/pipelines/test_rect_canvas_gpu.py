"""Rectangle canvases on a GPU: NVDEC decode, preprocessing on the device, a CUDA graph per
canvas (torch engine) or a TensorRT profile over the rectangles (issue #30, item 4).

The same clips and dynamic-shape export as :mod:`tests.pipelines.test_rect_canvas` (the CPU
side); run with ``pytest -m gpu tests/pipelines/test_rect_canvas_gpu.py``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from streams.config import JobConfig
from tests.optional import require_module
from tests.pipelines.test_rect_canvas import (
    CLIPS,
    IMGSZ,
    RECT,
    _canvases,
    _config,
    _on_the_square,
    _run,
    make_clips,
    make_models,
)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clips(tmp_path_factory.mktemp("rect-clips"))


def _on_gpu(cfg: JobConfig, kind: str, **engine: object) -> JobConfig:
    return replace(cfg, engine=replace(cfg.engine, device="cuda:0", kind=kind, **engine),  # type: ignore[arg-type]
                   decode=replace(cfg.decode, backend="gpu"))


@pytest.mark.parametrize("resize_filter", ["dali", "opencv"])
def test_a_graph_per_canvas_on_the_torch_engine(models: dict[str, Path], clips: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                resize_filter: str) -> None:
    """Each file at its rectangle on NVDEC; the torch engine (onnx2torch) captured a graph for
    each canvas on every inference stream before decoding, so no batch runs eagerly."""
    require_module("onnx2torch", 'the onnx-gpu extra: pip install -e ".[onnx-gpu]"')
    cfg = _on_gpu(_config(clips, models["dynamic"], tmp_path, resize_filter=resize_filter), "torch",
                  precision="fp16", compile="off", cuda_graphs=True, inference_threads=2)
    with caplog.at_level(logging.INFO):
        job, shapes, results = _run(cfg, monkeypatch)
    assert _canvases(shapes) == {sid: {hw} for sid, hw in RECT.items()}
    assert job.summary.decoders == {"dali-gpu": len(CLIPS)}
    _on_the_square(results)
    said = [r.getMessage() for r in caplog.records]
    assert any("captured 2 CUDA graph(s) for batches of 4 at 320x320" in m for m in said), said
    assert any("captured 4 CUDA graph(s) for batches of 4 at 320x192, 256x320" in m for m in said), said
    assert not [m for m in said if "run eagerly" in m or "CUDA graphs disabled" in m]


def test_square_on_the_gpu_when_asked(models: dict[str, Path], clips: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """``canvas: square``: one shape, one graph per stream, nothing more captured."""
    require_module("onnx2torch", 'the onnx-gpu extra: pip install -e ".[onnx-gpu]"')
    cfg = _on_gpu(_config(clips, models["dynamic"], tmp_path, canvas="square"), "torch", precision="fp16",
                  compile="off", cuda_graphs=True, inference_threads=2)
    with caplog.at_level(logging.INFO):
        _, shapes, results = _run(cfg, monkeypatch)
    assert set().union(*_canvases(shapes).values()) == {(IMGSZ, IMGSZ)}
    _on_the_square(results)
    captured = [r.getMessage() for r in caplog.records if r.getMessage().startswith("captured ")]
    assert captured == ["captured 2 CUDA graph(s) for batches of 4 at 320x320 (w x h)"], captured


def test_tensorrt_takes_the_rectangles_in_its_profile(models: dict[str, Path], clips: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT builds one profile from the smallest canvas to imgsz and reads each file's
    rectangle batches in place."""
    require_module("tensorrt", "NVIDIA's TensorRT: pip install tensorrt --extra-index-url https://pypi.nvidia.com")
    cfg = _on_gpu(_config(clips, models["dynamic"], tmp_path), "tensorrt", precision="fp16")
    cfg = replace(cfg, engine=replace(cfg.engine, tensorrt=replace(cfg.engine.tensorrt,
                                                                   cache_dir=str(tmp_path / "plans"))))
    _, shapes, results = _run(cfg, monkeypatch)
    assert _canvases(shapes) == {sid: {hw} for sid, hw in RECT.items()}
    _on_the_square(results)
    (sidecar,) = (tmp_path / "plans").glob("dynamic-*.json")
    assert json.loads(sidecar.read_text())["fields"]["min_hw"] == [32, 32]
