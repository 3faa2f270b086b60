"""Model files Fovea must refuse in one line (issue #22): one maker per kind of problem.

Each maker writes its file under a folder and returns ``(path, what)``: ``what`` is a
fragment the one-line EngineError must contain to say what is wrong. Shared by the unit
tests of :func:`engines.factory.open_engine` and the ``fovea run`` tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tests.models import BrightSpotDetector, save_bright_model


class Classifier(nn.Module):
    """Takes images, returns class scores ``[N, 10]``: outputs no detector layout fits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 4)[:, :10]


class VectorModel(nn.Module):
    """Takes ``[N, 16]`` feature vectors, not images."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    return path


def text_as_onnx(d: Path) -> tuple[Path, str]:
    path = d / "model.onnx"
    path.write_text("this is a text file, not a model\n")
    return path, "not an ONNX model"


def truncated_onnx(d: Path) -> tuple[Path, str]:
    good = _export_onnx(BrightSpotDetector(), torch.zeros(1, 3, 64, 64), d / "good.onnx")
    path = d / "truncated.onnx"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    return path, "not an ONNX model"


def empty_onnx(d: Path) -> tuple[Path, str]:
    path = d / "empty.onnx"
    path.write_bytes(b"")
    return path, "empty (0 bytes)"


def truncated_pt(d: Path) -> tuple[Path, str]:
    good = save_bright_model(d / "good.pt")
    path = d / "corrupt.pt"
    path.write_bytes(good.read_bytes()[:500])
    good.unlink()
    return path, "not a saved torch model"


def random_pt2(d: Path) -> tuple[Path, str]:
    path = d / "corrupt.pt2"
    path.write_bytes(os.urandom(4096))
    return path, "not a saved torch model"


def text_as_torchscript(d: Path) -> tuple[Path, str]:
    path = d / "model.torchscript"
    path.write_text("def forward(x): return x\n")
    return path, "not a saved torch model"


def checkpoint_pt(d: Path) -> tuple[Path, str]:
    path = d / "weights.pt"
    torch.save(VectorModel().state_dict(), path)
    return path, "torch.save checkpoint"


def missing_file(d: Path) -> tuple[Path, str]:
    return d / "nope.onnx", "no such file"


def directory(d: Path) -> tuple[Path, str]:
    path = d / "models.onnx"
    path.mkdir()
    return path, "a directory"


def unknown_extension(d: Path) -> tuple[Path, str]:
    path = d / "model.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    return path, "unsupported type '.h5'"


def classifier_pt(d: Path) -> tuple[Path, str]:
    path = d / "classifier.pt"
    torch.jit.script(Classifier()).save(str(path))
    return path, "not a detector Fovea can decode"


def classifier_onnx(d: Path) -> tuple[Path, str]:
    return _export_onnx(Classifier(), torch.zeros(1, 3, 64, 64), d / "classifier.onnx"), \
        "not a detector Fovea can decode"


def vector_input_pt(d: Path) -> tuple[Path, str]:
    path = d / "vectors.pt"
    torch.jit.script(VectorModel()).save(str(path))
    return path, "the model fails on an image batch"


def vector_input_onnx(d: Path) -> tuple[Path, str]:
    return _export_onnx(VectorModel(), torch.zeros(1, 16), d / "vectors.onnx"), "not an image batch"


def with_metadata(path: Path, **props: str) -> Path:
    """``path`` with ``props`` written into its ONNX metadata, as an exporter would."""
    import onnx

    model = onnx.load(str(path))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def html_as_onnx(d: Path) -> tuple[Path, str]:
    """What a failed download often leaves: the server's error page, saved under the model's name."""
    path = d / "yolov8n.onnx"
    path.write_text("<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n")
    return path, "not an ONNX model"


def classify_task_onnx(d: Path) -> tuple[Path, str]:
    """A classification export (Ultralytics metadata task=classify): no boxes to decode."""
    path = _export_onnx(Classifier(), torch.zeros(1, 3, 64, 64), d / "yolov8n-cls.onnx")
    return with_metadata(path, task="classify", imgsz="[64, 64]"), "a 'classify' model"


def segment_without_protos_onnx(d: Path) -> tuple[Path, str]:
    """The file says segmentation but has no mask prototypes: its outputs match no family."""
    path = _export_onnx(BrightSpotDetector(), torch.zeros(1, 3, 64, 64), d / "seg.onnx")
    return with_metadata(path, task="segment"), "not a segment model Fovea can decode"


def grey_input_onnx(d: Path) -> tuple[Path, str]:
    """A one-channel (grey) image input: not what Fovea feeds."""
    return _export_onnx(nn.Conv2d(1, 6, 3), torch.zeros(1, 1, 64, 64), d / "grey.onnx"), "not an image batch"


BAD_MODELS: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "text file as .onnx": text_as_onnx,
    "truncated .onnx": truncated_onnx,
    "empty .onnx": empty_onnx,
    "truncated .pt": truncated_pt,
    "random bytes as .pt2": random_pt2,
    "text file as .torchscript": text_as_torchscript,
    "state_dict checkpoint as .pt": checkpoint_pt,
    "missing file": missing_file,
    "directory": directory,
    "unknown extension": unknown_extension,
    "classifier outputs (.pt)": classifier_pt,
    "classifier outputs (.onnx)": classifier_onnx,
    "vector input (.pt)": vector_input_pt,
    "vector input (.onnx)": vector_input_onnx,
    "an HTML error page as .onnx (a failed download)": html_as_onnx,
    "a classification export (.onnx)": classify_task_onnx,
    "a segmentation export without prototypes (.onnx)": segment_without_protos_onnx,
    "a one-channel input (.onnx)": grey_input_onnx,
}
