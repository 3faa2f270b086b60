"""``python -m benchmarks.rect_canvas``: its dynamic-shape export and a smoke run on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from benchmarks import rect_canvas
from benchmarks.yolov8n import build_yolov8n, fuse
from engines.onnx_model import read_onnx


def test_the_dynamic_export_runs_any_rectangle_like_the_model(tmp_path: Path) -> None:
    """Symbolic height and width, Ultralytics' metadata, and the model's outputs at sizes other
    than the one it was traced at (anchors from the feature maps' shapes)."""
    import onnxruntime as ort

    net = fuse(build_yolov8n(input_size=(128, 128))).eval()
    path = rect_canvas.export_dynamic(net, (128, 128), tmp_path / "dyn.onnx")
    facts = read_onnx(path)
    assert facts.input_hw is None and facts.imgsz == (128, 128) and facts.stride == 32
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch.manual_seed(0)
    for hw in ((128, 128), (96, 128), (128, 64), (160, 96)):
        x = torch.rand(2, 3, *hw)
        (got,) = session.run(None, {"images": x.numpy()})
        with torch.inference_mode():
            want = net(x)
        assert isinstance(want, torch.Tensor)
        assert got.shape == (2, 84, sum((hw[0] // s) * (hw[1] // s) for s in (8, 16, 32)))
        np.testing.assert_allclose(got, want.numpy(), atol=1e-3, rtol=1e-3)


def test_quick_run_measures_both_canvases(tmp_path: Path) -> None:
    out = tmp_path / "rect.json"
    code = rect_canvas.main(["--quick", "--device", "cpu", "--rounds", "1", "--loops", "1", "--engines",
                             "onnxruntime", "--clips", str(tmp_path / "clips"), "--out", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    row = res["rows"]["onnxruntime"]
    assert res["source"] == "256x144" and res["imgsz"] == [128, 128]
    assert row["frames_ok"] is True and set(row["median_fps"]) == {"square", "auto"}
    assert all(v > 0 for v in row["median_fps"].values())
    assert row["auto_share_of_square"] == round(row["median_fps"]["auto"] / row["median_fps"]["square"], 3)
