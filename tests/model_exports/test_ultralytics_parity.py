"""Real Ultralytics exports of every family, through Fovea, against Ultralytics' own predict.

For each family (detection, end-to-end detection of YOLOv10 and YOLO26, segmentation and
pose, plain and end-to-end, RT-DETR), the model is built from its YAML (no download),
exported to ONNX as ``yolo export`` writes it (static and dynamic shapes), and:

- Fovea reads what the file says (task, image size, class names, end-to-end head) and
  picks the family's layout with no config beyond the path;
- on the same frames, letterboxed as Ultralytics does (:func:`operators.letterbox.letterbox_reference`,
  a dynamic export at the smallest stride-aligned rectangle), Fovea's engine and
  postprocess give Ultralytics' boxes: >= 99 % of them matched at IoU >= 0.9 with the same
  class; pose keypoints within a pixel of theirs, masks with a median IoU >= 0.9;
- Fovea's own CPU preprocessing (DALI's CPU operators, :class:`pipelines.preprocess.HostPreprocessor`)
  builds the same canvas as Ultralytics and the same image within one grey level.

Needs ``ultralytics`` (and the torchvision matching torch): the ``test-models`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engines.factory import open_engine, output_layout
from operators.boxes import letterbox_geometry
from operators.letterbox import canvas_hw, letterbox_reference
from operators.output_decoding import select_outputs
from operators.postprocess import postprocess
from operators.reference import box_iou_np
from pipelines.preprocess import HostPreprocessor
from streams.config import EngineConfig, ModelConfig, PostprocessConfig, PreprocessConfig
from streams.detections import Detections
from tests.optional import require_module, skip_for_ci_gap

skip_for_ci_gap("torchvision")  # ultralytics and onnx2torch import it
ultralytics = require_module("ultralytics", 'the test-models extra: pip install -e ".[test-models]"')

from tests.model_exports.ultralytics_exports import IMGSZ, build, export, frames  # noqa: E402

CONF, IOU = 0.25, 0.45

# eight exports (2-4 s each on 2 CPU cores), each checked against Ultralytics' predict and
# through onnx2torch: about a minute and a half in all; RT-DETR-L, slower, has its own test
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    yaml: str
    dynamic: bool
    layout: str
    task: str
    options: tuple[tuple[str, Any], ...] = ()
    class_bias: float = -4.5  # one class (pose) needs a higher bias than 80 for tens of boxes


CASES = {
    "yolov8n static": Case("yolov8n.yaml", False, "yolov8", "detect"),
    "yolov8n dynamic": Case("yolov8n.yaml", True, "yolov8", "detect"),
    "yolov10n end2end": Case("yolov10n.yaml", False, "end2end", "detect", (("nms", False),)),
    "yolo26n end2end dynamic": Case("yolo26n.yaml", True, "end2end", "detect", (("nms", False),)),
    "yolov8n-seg dynamic": Case("yolov8n-seg.yaml", True, "yolov8_seg", "segment"),
    "yolo26n-seg end2end": Case("yolo26n-seg.yaml", False, "end2end_seg", "segment", (("nms", False),)),
    "yolov8n-pose static": Case("yolov8n-pose.yaml", False, "yolov8_pose", "pose", class_bias=-1.0),
    "yolo26n-pose end2end": Case("yolo26n-pose.yaml", False, "end2end_pose", "pose", (("nms", False),)),
}
SLOW_CASES = {"rtdetr-l": Case("rtdetr-l.yaml", False, "rtdetr", "detect", class_bias=-2.5)}


@pytest.fixture(scope="module")
def sample() -> list[np.ndarray]:
    return frames(4)


def _ultralytics(path: Path, case: Case, rgb: list[np.ndarray]) -> list[Any]:
    if case.yaml.startswith("rtdetr"):
        model = ultralytics.RTDETR(str(path))
    else:
        model = ultralytics.YOLO(str(path), task=case.task)
    return list(model.predict([f[..., ::-1].copy() for f in rgb], imgsz=IMGSZ, conf=CONF, iou=IOU, max_det=300,
                               verbose=False))


def _fovea(path: Path, rgb: list[np.ndarray]) -> tuple[Any, str, list[Detections]]:
    """Fovea's detections on Ultralytics' letterboxed frames (engine + postprocess as a job runs them)."""
    engine, info = open_engine(ModelConfig(path=str(path)), EngineConfig(kind="onnxruntime"), "cpu")
    out: list[Detections] = []
    with engine:
        layout = output_layout(engine, info)
        for frame in rgb:
            h, w = canvas_hw(frame.shape[1], frame.shape[0], info.input_size, info.stride, rect=info.dynamic)
            if info.resize == "stretch":  # RT-DETR: LetterBox(scale_fill=True)
                import cv2

                img = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
            else:
                img = letterbox_reference(frame, (h, w))
            geom = letterbox_geometry(frame.shape[1], frame.shape[0], w, h, info.resize)  # type: ignore[arg-type]
            x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32) / 255)
            outs = engine.infer({engine.inputs[0].name: x})
            (d,) = postprocess(select_outputs(outs, layout), layout, [geom],  # type: ignore[arg-type]
                               PostprocessConfig(conf_threshold=CONF, iou_threshold=IOU, fused="off"),
                               info.class_names)
            assert d is not None
            out.append(d)
    return info, layout, out


def _match(results: list[Any], dets: list[Detections]) -> tuple[int, int, list[tuple[int, int, int]]]:
    """(matched, total, [(frame, theirs, ours)]) of Ultralytics' boxes, greedily by IoU (a box
    matches at IoU >= 0.9 or within 0.5 px: random weights give some inverted or empty boxes)."""
    matched = total = 0
    pairs: list[tuple[int, int, int]] = []
    for f, (r, d) in enumerate(zip(results, dets, strict=True)):
        h, w = r.orig_shape
        theirs = np.clip(r.boxes.xyxy.numpy(), 0, [w, h, w, h])  # Fovea clips to the frame (RT-DETR's are not)
        cls = r.boxes.cls.numpy().astype(np.int64)
        total += len(theirs)
        if not len(theirs) or not len(d):
            continue
        iou = box_iou_np(_ordered(theirs), _ordered(d.xyxy))
        iou[np.abs(theirs[:, None, :] - d.xyxy[None, :, :]).max(axis=2) <= 0.5] = 1.0
        iou[cls[:, None] != d.class_id[None, :]] = 0
        used: set[int] = set()
        for i in np.argsort(-r.boxes.conf.numpy(), kind="stable"):
            j = int(np.argmax(np.where([k in used for k in range(len(d))], -1, iou[i])))
            if iou[i, j] >= 0.9 and j not in used:
                used.add(j)
                matched += 1
                pairs.append((f, int(i), j))
    return matched, total, pairs


def _ordered(boxes: np.ndarray) -> np.ndarray:
    """xyxy with x1 <= x2 and y1 <= y2 (an untrained head may give inverted boxes)."""
    return np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)


def _check_onnx2torch(path: Path, x: torch.Tensor) -> None:
    """The export converted by onnx2torch (the GPU path without TensorRT) gives ONNX Runtime's
    outputs on the CPU (an end-to-end table as a set of rows: top-k may order ties differently)."""
    outs = []
    for kind in ("onnxruntime", "torch"):
        engine, _ = open_engine(ModelConfig(path=str(path)), EngineConfig(kind=kind), "cpu")  # type: ignore[arg-type]
        with engine:
            got = engine.infer({engine.inputs[0].name: x})
            outs.append([got[o.name].numpy() for o in engine.outputs])
    for a, b in zip(*outs, strict=True):
        assert a.shape == b.shape
        if a.ndim == 3 and a.shape[1] <= 300 and a.shape[2] <= 64:  # [B, K, 6+]: rows as a set
            a, b = (np.sort(t.reshape(-1, t.shape[2]), axis=0) for t in (a, b))
        np.testing.assert_allclose(b, a, atol=1e-3 * max(1.0, float(np.abs(a).max())), rtol=1e-3)


def _check_case(case: Case, path: Path, rgb: list[np.ndarray]) -> None:
    h, w = canvas_hw(rgb[0].shape[1], rgb[0].shape[0], (IMGSZ, IMGSZ), 32, rect=case.dynamic)
    if not case.yaml.startswith("rtdetr"):
        img = letterbox_reference(rgb[0], (h, w))
        _check_onnx2torch(path, torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32) / 255))
    results = _ultralytics(path, case, rgb)
    info, layout, dets = _fovea(path, rgb)
    assert layout == case.layout and info.task == case.task and info.dynamic == case.dynamic
    assert info.input_size == (IMGSZ, IMGSZ) and len(info.class_names) >= 1
    matched, total, pairs = _match(results, dets)
    assert total >= 20 * len(rgb) // 4, f"too few boxes to compare ({total})"
    print(f"{case.yaml} dynamic={case.dynamic}: {matched} of {total} boxes matched")
    assert matched >= 0.99 * total, f"{matched} of {total} boxes matched"
    if case.task == "pose":
        diffs = [np.abs(results[f].keypoints.data.numpy()[i, :, :2] - dets[f].keypoints[j, :, :2]).max()  # type: ignore[index]
                 for f, i, j in pairs]
        assert np.median(diffs) < 1.0, f"keypoints differ by {np.median(diffs)} px (median)"
    if case.task == "segment":
        from ultralytics.utils import ops

        ious = []
        scaled = [(ops.scale_masks(r.masks.data[None].float(), r.orig_shape)[0] > 0.5).numpy() for r in results]
        for f, i, j in pairs:
            theirs = scaled[f][i]
            ours = dets[f].masks[j].full()  # type: ignore[index]
            union = (theirs | ours).sum()
            ious.append((theirs & ours).sum() / union if union else 1.0)
        # Ultralytics thresholds the logits on the input grid, then resizes that binary mask to
        # the frame; Fovea thresholds the logits at each frame pixel: edges differ by a pixel, which
        # the ragged masks of random weights feel (smooth masks of a trained model much less)
        assert np.median(ious) >= 0.85, f"median mask IoU {np.median(ious)}"


@pytest.mark.parametrize("name", list(CASES))
def test_fovea_gives_ultralytics_boxes(name: str, sample: list[np.ndarray], tmp_path: Path) -> None:
    case = CASES[name]
    model = build(case.yaml, sample, class_bias=case.class_bias)
    path = export(model, tmp_path / f"{case.yaml[:-5]}.onnx", case.dynamic, **dict(case.options))
    _check_case(case, path, sample)


@pytest.mark.slow  # RT-DETR-L: a 130 MB export, ~20 s to build and export, ~10 s to run on 2 CPU cores
def test_fovea_gives_ultralytics_rtdetr_boxes(sample: list[np.ndarray], tmp_path: Path) -> None:
    case = SLOW_CASES["rtdetr-l"]
    _check_case(case, export(build(case.yaml, sample, class_bias=case.class_bias), tmp_path / "rtdetr-l.onnx"), sample)


@pytest.mark.parametrize("dynamic", [False, True])
def test_fovea_cpu_preprocessing_builds_ultralytics_canvas(dynamic: bool, sample: list[np.ndarray]) -> None:
    """HostPreprocessor (DALI CPU) places frames as Ultralytics' LetterBox does, within a grey level."""
    from ultralytics.data.augment import LetterBox

    for size in ((768, 432), (640, 480), (300, 500)):
        frame = np.ascontiguousarray(np.resize(sample[0], (size[1], size[0], 3)))
        theirs = LetterBox((IMGSZ, IMGSZ), auto=dynamic, stride=32)(image=frame)
        pre = HostPreprocessor((IMGSZ, IMGSZ), PreprocessConfig(), stride=32 if dynamic else None)
        ours = pre([frame])[0].transpose(1, 2, 0) * 255
        assert ours.shape == theirs.shape
        g = pre.geometry(*size)
        assert (g.src_w, g.src_h, g.dst_w, g.dst_h) == (*size, theirs.shape[1], theirs.shape[0])
        assert np.abs(ours - theirs).max() <= 1.0 + 1e-3
        np.testing.assert_array_equal(letterbox_reference(frame, theirs.shape[:2]), theirs)
