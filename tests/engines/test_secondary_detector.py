"""engines.secondary_detector: loading a secondary detector through the primary model's layouts,
and refusing, with the entry's key, a file that does not fit its entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from engines.secondary import open_secondary_model
from engines.secondary_detector import open_secondary_detector
from operators.boxes import letterbox_geometry
from operators.crops import crop_letterbox
from streams.cascade_config import SecondaryConfig
from streams.errors import ConfigError
from tests.pipelines.test_cascade import _Colour
from tests.secondary_models import FAMILIES, LABELS, export_blob_onnx, save_blob_detector


def _cfg(model: Path, **kw: Any) -> SecondaryConfig:
    base: dict[str, Any] = {"name": "parts", "kind": "detector", "model": str(model)}
    if model.suffix != ".onnx":
        base |= {"labels": list(LABELS), "input_size": [64, 64]}
    return SecondaryConfig(**(base | kw))


def _crop_with_patch() -> tuple[torch.Tensor, list[Any]]:
    """One 40 x 20 region with a white patch at (10..20, 5..15) of it, letterboxed into 64 x 64."""
    frame = np.full((1, 30, 60, 3), 40, np.uint8)
    frame[0, 10:20, 20:30] = 255
    lb = crop_letterbox(torch.from_numpy(frame), torch.tensor([0]), torch.tensor([[10, 5, 50, 25]]), (64, 64))
    return lb.crops, [letterbox_geometry(40, 20, 64, 64)]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_decoded_into_crop_pixels(tmp_path: Path, family: str) -> None:
    model = save_blob_detector(tmp_path / f"{family}.ts", family)
    with open_secondary_detector(_cfg(model), "cpu", "secondary[0]") as det:
        assert det.layout == family and det.info.labels == LABELS and det.info.input_size == (64, 64)
        crops, geoms = _crop_with_patch()
        (d,) = det.detect(crops, geoms)
    assert d.labels == ["white"] and d.confidence.tolist() == pytest.approx([0.6])
    np.testing.assert_allclose(d.xyxy[0], [10, 5, 20, 15], atol=0.6)  # in the 40 x 20 region's pixels


def test_an_onnx_export_brings_its_labels_and_size_and_a_static_batch_is_split(tmp_path: Path) -> None:
    import onnx

    path = export_blob_onnx(tmp_path / "blob.onnx", size=64)
    static = onnx.load(str(path))
    for t in (*static.graph.input, *static.graph.output):
        t.type.tensor_type.shape.dim[0].dim_value = 1  # as Ultralytics exports by default: batch 1
    onnx.save(static, str(tmp_path / "static.onnx"))
    for p in (path, tmp_path / "static.onnx"):
        with open_secondary_detector(_cfg(p), "cpu") as det:
            assert det.layout == "yolov8" and det.info.labels == LABELS and det.info.input_size == (64, 64)
            crops, geoms = _crop_with_patch()
            dets = det.detect(crops.repeat(3, 1, 1, 1), geoms * 3)
        assert [d.labels for d in dets] == [["white"]] * 3


class _Seg(nn.Module):
    """A YOLOv8-seg-shaped model: detections with 4 mask coefficients, and prototypes."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        return torch.zeros(b, 4 + 2 + 4, 16), torch.zeros(b, 4, 8, 8)


def _onnx_with(tmp_path: Path, task: str) -> Path:
    return export_blob_onnx(tmp_path / f"{task}.onnx", size=64,
                            metadata={"names": str(dict(enumerate(LABELS))), "task": task})


@pytest.mark.parametrize(("case", "key", "message"), [
    ("classifier-file", "secondary[0].model", r"fit no detector layout \(a classifier's output\? set kind: classifier"),
    ("segmentation", "secondary[0].model", "a yolov8_seg model; a secondary detector gives boxes"),
    ("labels", "secondary[0].labels", "3 labels for a model that scores 2 classes"),
    ("no-size", "secondary[0].input_size", "has no fixed input size"),
    ("classify-metadata", "secondary[0].kind", "metadata says it is a 'classify' model; set kind: classifier"),
    ("builtin", "secondary[0].model", "the bundled models are classifiers"),
])
def test_a_file_that_does_not_fit_a_detector_entry_is_refused_with_the_key(
        tmp_path: Path, case: str, key: str, message: str) -> None:
    blob = save_blob_detector(tmp_path / "blob.ts")
    if case == "classifier-file":
        path = tmp_path / "colour.ts"
        torch.jit.save(torch.jit.script(_Colour()), str(path))
        cfg = _cfg(path, labels=["a", "b", "c", "d", "e"])
    elif case == "segmentation":
        path = tmp_path / "seg.ts"
        torch.jit.save(torch.jit.script(_Seg()), str(path))
        cfg = _cfg(path)
    elif case == "labels":
        cfg = _cfg(blob, labels=["a", "b", "c"])
    elif case == "no-size":
        cfg = SecondaryConfig(name="parts", kind="detector", model=str(blob), labels=list(LABELS))
    elif case == "classify-metadata":
        cfg = _cfg(_onnx_with(tmp_path, "classify"))
    else:
        cfg = SecondaryConfig(name="parts", kind="detector", model="builtin:pattern")
    with pytest.raises(ConfigError, match=message) as e:
        open_secondary_detector(cfg, "cpu", "secondary[0]")
    assert e.value.key == key


def test_a_detector_file_in_a_classifier_entry_is_refused_with_the_key(tmp_path: Path) -> None:
    """By the file's metadata (ONNX ``task: detect``), or by its output's shape (TorchScript)."""
    onnx_path = _onnx_with(tmp_path, "detect")
    with pytest.raises(ConfigError, match="metadata says it is a 'detect' model; set kind: detector") as e:
        open_secondary_model(SecondaryConfig(name="c", model=str(onnx_path)), "cpu", "secondary[0]")
    assert e.value.key == "secondary[0].kind"
    ts = save_blob_detector(tmp_path / "blob.ts")
    with pytest.raises(ConfigError, match=r"output is \[1, 6, 8\].*set kind: detector") as e:
        open_secondary_model(SecondaryConfig(name="c", model=str(ts), labels=list(LABELS), input_size=[64, 64]),
                             "cpu", "secondary[0]")
    assert e.value.key == "secondary[0].labels"
