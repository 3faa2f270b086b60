"""What an ONNX file says about itself, and who wins when the config says otherwise (issue #30).

The files are exported here from small torch models, with metadata written the way
Ultralytics writes it (``str()`` of Python values); ``tests/models`` checks the same on
real Ultralytics exports.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from engines.factory import open_engine, output_layout
from engines.onnx_model import parse_names, read_onnx
from streams.config import EngineConfig, ModelConfig
from streams.errors import ConfigError, EngineError
from tests.engines.bad_models import _export_onnx, with_metadata
from tests.models import BrightSpotDetector

ULTRALYTICS = {
    "description": "Ultralytics YOLOv8n model ",
    "author": "Ultralytics",
    "stride": "32",
    "task": "detect",
    "batch": "1",
    "imgsz": "[64, 96]",
    "names": "{0: 'bright', 1: 'dark'}",
    "args": "{'batch': 1, 'nms': None, 'dynamic': True, 'simplify': True}",
    "end2end": "False",
}


def _dynamic(path: Path) -> Path:
    torch.onnx.export(BrightSpotDetector(), (torch.zeros(1, 3, 64, 96),), str(path), input_names=["images"],
                      output_names=["output0"], opset_version=17, dynamo=False,
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                    "output0": {0: "batch", 2: "anchors"}})
    return path


@pytest.fixture
def dynamic_export(tmp_path: Path) -> Path:
    return with_metadata(_dynamic(tmp_path / "dyn.onnx"), **ULTRALYTICS)


def test_read_onnx_takes_the_ultralytics_metadata(dynamic_export: Path) -> None:
    facts = read_onnx(dynamic_export)
    assert facts.input_name == "images" and facts.input_dims == (None, 3, None, None) and facts.input_hw is None
    assert facts.names == ("bright", "dark")
    assert (facts.imgsz, facts.stride, facts.task, facts.batch) == ((64, 96), 32, "detect", 1)
    assert facts.end2end is False and facts.dynamic is True and facts.exporter == "Ultralytics"
    assert [(name, len(dims)) for name, dims in facts.outputs] == [("output0", 3)]


def test_a_dynamic_export_needs_no_input_size(dynamic_export: Path) -> None:
    engine, info = open_engine(ModelConfig(path=str(dynamic_export)), EngineConfig(), "cpu")
    assert info.input_size == (64, 96) and info.dynamic and info.class_names == ("bright", "dark")
    assert info.task == "detect" and info.stride == 32 and info.resize == "letterbox"
    with engine:
        assert output_layout(engine, info) == "yolov8"
        out = engine.infer({"images": torch.rand(2, 3, 96, 64)})  # another size: the graph takes it
    assert out["output0"].shape == (2, 6, 96)


def test_the_config_wins_and_a_conflict_is_logged_once(dynamic_export: Path, caplog) -> None:
    cfg = ModelConfig(path=str(dynamic_export), input_size=(128, 128), class_names=["x", "y"], task="detect")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            _, info = open_engine(cfg, EngineConfig(), "cpu")
    assert info.input_size == (128, 128) and info.class_names == ("x", "y")
    size = [r.message for r in caplog.records if "differs from the export's imgsz" in r.message]
    names = [r.message for r in caplog.records if "model.class_names" in r.message]
    assert len(size) == 1 and "dyn.onnx" in size[0] and "[128, 128]" in size[0] and "[64, 96]" in size[0]
    assert len(names) == 1 and "using model.class_names" in names[0]


def test_a_task_set_in_the_config_wins_over_the_file(tmp_path: Path, caplog) -> None:
    path = with_metadata(_dynamic(tmp_path / "m.onnx"), **{**ULTRALYTICS, "task": "pose"})
    with caplog.at_level(logging.WARNING):
        engine, info = open_engine(ModelConfig(path=str(path), task="detect"), EngineConfig(), "cpu")
    assert info.task == "detect"
    assert any("model.task detect differs from the file's task pose" in r.message for r in caplog.records)
    with engine:
        assert output_layout(engine, info) == "yolov8"


def test_a_static_export_refuses_another_input_size(tmp_path: Path) -> None:
    path = _export_onnx(BrightSpotDetector(), torch.zeros(1, 3, 64, 64), tmp_path / "static.onnx")
    with pytest.raises(ConfigError, match=r"model.input_size: \[96, 96\], but static.onnx takes only \[64, 64\]"):
        open_engine(ModelConfig(path=str(path), input_size=(96, 96)), EngineConfig(), "cpu")
    _, info = open_engine(ModelConfig(path=str(path)), EngineConfig(), "cpu")
    assert info.input_size == (64, 64) and not info.dynamic and info.task == "auto"


def test_a_dynamic_export_without_metadata_asks_for_input_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.input_size: dyn\.onnx has a dynamic input size and no imgsz"):
        open_engine(ModelConfig(path=str(_dynamic(tmp_path / "dyn.onnx"))), EngineConfig(), "cpu")


def test_metadata_flags_end2end_nms_and_rtdetr(tmp_path: Path) -> None:
    nms = with_metadata(_dynamic(tmp_path / "nms.onnx"), args="{'nms': True, 'dynamic': False}")
    assert read_onnx(nms).end2end is True  # exported with NMS inside: the same [B, K, 6] table
    detr = with_metadata(_dynamic(tmp_path / "detr.onnx"), head="RTDETRDecoder", imgsz="640", kpt_shape="[17, 3]")
    facts = read_onnx(detr)
    assert facts.head == "RTDETRDecoder" and facts.imgsz == (640, 640) and facts.keypoint_shape == (17, 3)
    _, info = open_engine(ModelConfig(path=str(detr)), EngineConfig(), "cpu")
    assert info.resize == "stretch"  # RT-DETR stretches frames to the input (Ultralytics' scale_fill)


def test_malformed_metadata_is_ignored_not_fatal(tmp_path: Path) -> None:
    path = with_metadata(_dynamic(tmp_path / "odd.onnx"), imgsz="big", names="[unclosed", stride="x", task="detect")
    facts = read_onnx(path)
    assert facts.imgsz is None and facts.names is None and facts.stride is None and facts.task == "detect"


def test_parse_names() -> None:
    assert parse_names("{1: 'b', 0: 'a'}") == ("a", "b")
    assert parse_names('["a", "b"]') == ("a", "b")
    assert parse_names({"0": "a"}) == ("a",)
    assert parse_names("nothing") is None


def test_an_unknown_task_is_an_engine_error_naming_the_file(tmp_path: Path) -> None:
    path = with_metadata(_dynamic(tmp_path / "obb.onnx"), task="obb", imgsz="64")
    with pytest.raises(EngineError, match=r"obb.onnx: a 'obb' model .*detect, segment, pose"):
        open_engine(ModelConfig(path=str(path)), EngineConfig(), "cpu")
