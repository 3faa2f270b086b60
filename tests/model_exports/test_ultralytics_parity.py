"""Real Ultralytics exports of every family, through Fovea, against Ultralytics' own predict.

For each family (detection, end-to-end detection of YOLOv10 and YOLO26, segmentation and
pose, plain and end-to-end, RT-DETR), the model is built from its YAML (no download),
exported to ONNX as ``yolo export`` writes it (static and dynamic shapes), and:

- Fovea reads what the file says (task, image size, class names, end-to-end head) and
  picks the family's layout with no config beyond the path;
- on the same frames, Fovea's engine and postprocess give Ultralytics' boxes: >= 99 % of
  them matched at IoU >= 0.9 with the same class; pose keypoints within a pixel of theirs,
  masks with a median IoU >= 0.85; both on the frames letterboxed as Ultralytics does
  (:func:`operators.letterbox.letterbox_reference`, a dynamic export at the smallest
  stride-aligned rectangle) and through Fovea's own preprocessing
  (:class:`pipelines.preprocess.HostPreprocessor` with the resize filter ``auto`` picks for
  the export: OpenCV's, :mod:`operators.resize`); on a GPU (``-m gpu``) through the same
  preprocessing in torch on the device (:func:`pipelines.preprocess.letterbox_frames`, what
  the GPU decode path runs) and the engine Fovea picks there, in FP32 as Ultralytics predicts;
- Fovea's CPU preprocessing builds the same canvas as Ultralytics and, with the OpenCV
  filter, the same image (DALI's filter: within one grey level).

Each case prints its figures (``-s``): boxes matched on Ultralytics' input, through Fovea's
preprocessing, and through it with DALI's filter instead (not asserted: what the exact filter
is for).

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
from operators.letterbox import canvas_hw, letterbox_reference
from operators.output_decoding import select_outputs
from operators.postprocess import postprocess
from operators.reference import box_iou_np
from pipelines.preprocess import HostPreprocessor, PreprocessSpec, letterbox_frames, resolve_resize_filter
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


def _fovea(path: Path, rgb: list[np.ndarray], pre: str = "reference", device: str = "cpu"
           ) -> tuple[Any, str, list[Detections]]:
    """Fovea's detections (engine + postprocess as a job runs them) on ``rgb`` letterboxed by
    ``pre``: ``reference``: Ultralytics' letterbox (cv2); ``fovea``: Fovea's preprocessing with
    the filter ``resize_filter: auto`` picks for the export (HostPreprocessor on the CPU,
    letterbox_frames on a GPU); ``dali``: the same with DALI's filter."""
    engine_cfg = EngineConfig(kind="onnxruntime") if device == "cpu" else \
        EngineConfig(kind="torch", device=device, precision="fp32", compile="off", cuda_graphs=False)
    engine, info = open_engine(ModelConfig(path=str(path)), engine_cfg, device)
    options = PreprocessConfig(resize=info.resize, resize_filter="dali" if pre == "dali" else "auto")
    options = resolve_resize_filter(options, info)
    assert options.resize_filter == ("dali" if pre == "dali" else "opencv")  # an Ultralytics export: OpenCV's
    host = HostPreprocessor(info.input_size, options, stride=info.stride if info.dynamic else None)
    out: list[Detections] = []
    with engine:
        layout = output_layout(engine, info)
        for frame in rgb:
            geom = host.geometry(frame.shape[1], frame.shape[0])
            assert (geom.dst_h, geom.dst_w) == canvas_hw(frame.shape[1], frame.shape[0], info.input_size,
                                                         info.stride, rect=info.dynamic)
            if pre == "reference":
                if info.resize == "stretch":  # RT-DETR: LetterBox(scale_fill=True)
                    import cv2

                    img = cv2.resize(frame, (geom.dst_w, geom.dst_h), interpolation=cv2.INTER_LINEAR)
                else:
                    img = letterbox_reference(frame, (geom.dst_h, geom.dst_w))
                x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32) / 255)
            elif device == "cpu" or pre == "dali":
                x = torch.from_numpy(host([frame]))
            else:
                spec = PreprocessSpec(dtype="float32", layout="NCHW", options=options)
                x = letterbox_frames(torch.from_numpy(frame)[None].to(device), geom, spec)
            outs = engine.infer({engine.inputs[0].name: x.to(device)})
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
        theirs = np.clip(r.boxes.xyxy.cpu().numpy(), 0, [w, h, w, h])  # Fovea clips to the frame (RT-DETR's are not)
        cls = r.boxes.cls.cpu().numpy().astype(np.int64)
        total += len(theirs)
        if not len(theirs) or not len(d):
            continue
        iou = box_iou_np(_ordered(theirs), _ordered(d.xyxy))
        iou[np.abs(theirs[:, None, :] - d.xyxy[None, :, :]).max(axis=2) <= 0.5] = 1.0
        iou[cls[:, None] != d.class_id[None, :]] = 0
        used: set[int] = set()
        for i in np.argsort(-r.boxes.conf.cpu().numpy(), kind="stable"):
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


def _check_case(case: Case, path: Path, rgb: list[np.ndarray], device: str = "cpu") -> None:
    h, w = canvas_hw(rgb[0].shape[1], rgb[0].shape[0], (IMGSZ, IMGSZ), 32, rect=case.dynamic)
    if not case.yaml.startswith("rtdetr") and device == "cpu":
        img = letterbox_reference(rgb[0], (h, w))
        _check_onnx2torch(path, torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32) / 255))
    results = _ultralytics(path, case, rgb)
    runs = {}
    for pre in ("reference", "fovea", "dali"):
        info, layout, dets = _fovea(path, rgb, pre, device)
        assert layout == case.layout and info.task == case.task and info.dynamic == case.dynamic
        assert info.input_size == (IMGSZ, IMGSZ) and len(info.class_names) >= 1
        runs[pre] = (dets, *_match(results, dets))
    figures = ", ".join(f"{pre} {m}/{t} ({100 * m / t:.1f} %)" for pre, (_, m, t, _) in runs.items())
    print(f"{case.yaml} dynamic={case.dynamic} on {device}: boxes matched: {figures}")
    for pre in ("reference", "fovea"):  # DALI's filter: the figure only, what the exact filter is for
        dets, matched, total, pairs = runs[pre]
        assert total >= 20 * len(rgb) // 4, f"too few boxes to compare ({total})"
        assert matched >= 0.99 * total, f"{pre} preprocessing on {device}: {matched} of {total} boxes matched"
        _check_extras(case, results, dets, pairs)


def _check_extras(case: Case, results: list[Any], dets: list[Detections], pairs: list[tuple[int, int, int]]
                  ) -> None:
    """Pose keypoints within a pixel of Ultralytics'; masks with a median IoU >= 0.85."""
    if case.task == "pose":
        diffs = [np.abs(results[f].keypoints.data.cpu().numpy()[i, :, :2] - dets[f].keypoints[j, :, :2]).max()  # type: ignore[index]
                 for f, i, j in pairs]
        assert np.median(diffs) < 1.0, f"keypoints differ by {np.median(diffs)} px (median)"
    if case.task == "segment":
        from ultralytics.utils import ops

        ious = []
        scaled = [(ops.scale_masks(r.masks.data[None].float(), r.orig_shape)[0] > 0.5).cpu().numpy() for r in results]
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


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_fovea_gpu_preprocessing_gives_ultralytics_boxes(name: str, sample: list[np.ndarray], tmp_path: Path) -> None:
    """On a GPU: the frames letterboxed in torch on the device (OpenCV's filter, as the GPU
    decode path does it), the export on the torch engine (onnx2torch, as Fovea runs an ONNX
    model on a GPU without TensorRT), in FP32 as Ultralytics predicts; Ultralytics' own
    letterbox into the same engine is checked too, which tells preprocessing apart from the
    engine's numerics should a figure fall short."""
    case = CASES[name]
    model = build(case.yaml, sample, class_bias=case.class_bias)
    path = export(model, tmp_path / f"{case.yaml[:-5]}.onnx", case.dynamic, **dict(case.options))
    _check_case(case, path, sample, device="cuda:0")


@pytest.mark.parametrize("dynamic", [False, True])
def test_fovea_cpu_preprocessing_builds_ultralytics_canvas(dynamic: bool, sample: list[np.ndarray]) -> None:
    """HostPreprocessor places frames as Ultralytics' LetterBox does: with OpenCV's filter the
    very same image, with DALI's (its CPU operators) within a grey level."""
    from ultralytics.data.augment import LetterBox

    for size in ((768, 432), (640, 480), (300, 500), (1280, 720)):
        frame = np.ascontiguousarray(np.resize(sample[0], (size[1], size[0], 3)))
        theirs = LetterBox((IMGSZ, IMGSZ), auto=dynamic, stride=32)(image=frame)
        np.testing.assert_array_equal(letterbox_reference(frame, theirs.shape[:2]), theirs)
        for resize_filter in ("opencv", "dali"):
            options = PreprocessConfig(resize_filter=resize_filter)  # type: ignore[arg-type]
            pre = HostPreprocessor((IMGSZ, IMGSZ), options, stride=32 if dynamic else None)
            ours = pre([frame])[0].transpose(1, 2, 0) * 255
            assert ours.shape == theirs.shape
            g = pre.geometry(*size)
            assert (g.src_w, g.src_h, g.dst_w, g.dst_h) == (*size, theirs.shape[1], theirs.shape[0])
            if resize_filter == "opencv":
                np.testing.assert_array_equal(np.rint(ours).astype(np.uint8), theirs)
            else:
                assert np.abs(ours - theirs).max() <= 1.0 + 1e-3
                assert (np.abs(ours - theirs) > 0.5).mean() > 0.01  # the one grey level the exact filter removes


def test_auto_picks_opencvs_filter_for_an_ultralytics_export(sample: list[np.ndarray], tmp_path: Path) -> None:
    """The file's metadata is what decides: an export is read as Ultralytics', the same graph
    with its metadata removed is not."""
    import onnx

    from engines.model_info import onnx_model_info
    from engines.onnx_model import read_onnx

    path = export(build("yolov8n.yaml", sample), tmp_path / "yolov8n.onnx", False)
    info = onnx_model_info(ModelConfig(path=str(path)), read_onnx(path), None)
    assert resolve_resize_filter(PreprocessConfig(), info).resize_filter == "opencv"
    bare = onnx.load(str(path))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    info = onnx_model_info(ModelConfig(path=str(tmp_path / "bare.onnx")), read_onnx(tmp_path / "bare.onnx"), None)
    assert resolve_resize_filter(PreprocessConfig(), info).resize_filter == "dali"


# -- through a real job -------------------------------------------------------------------------
# Clips of the synthetic scene, encoded near-losslessly: 768x432 H.264 and VP9 and a 432x768
# H.264 portrait, in one job. Ultralytics predicts on the very frames the job's decoder gave
# (PyAV's for H.264 on the CPU, DALI's reader's for VP9 and on NVDEC: their YUV->RGB differs
# from FFmpeg's by tens of grey levels, so each path is compared on its own frames).
JOB_CLIPS = {"wide.mp4": ("libx264", 768, 432), "wide.webm": ("libvpx-vp9", 768, 432),
             "tall.mp4": ("libx264", 432, 768)}
JOB_FRAMES = 6


def _write(path: Path, codec: str, rgb: list[np.ndarray]) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = rgb[0].shape[1], rgb[0].shape[0], "yuv420p"
        s.options = {"crf": "10", "b": "0"} if codec == "libvpx-vp9" else {"crf": "10"}
        for f in rgb:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def job_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ultralytics-clips")
    for i, (name, (codec, w, h)) in enumerate(JOB_CLIPS.items()):
        _write(d / name, codec, frames(JOB_FRAMES, width=w, height=h, seed=11 + i))
    return d


def _decoded(path: Path, kind: str, device_id: int | None) -> list[np.ndarray]:
    """The RGB frames the job's decoder ``kind`` gives for ``path``."""
    import av

    from pipelines.segments import Segment
    from pipelines.video_decoding import SegmentBatch, SegmentDecoder
    from streams.sources.files import VideoFile
    from streams.sources.probe import probe_video

    if kind == "pyav":
        with av.open(str(path)) as c:
            return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    from operators.boxes import letterbox_geometry

    info = probe_video(path)
    geom = letterbox_geometry(info.width, info.height, IMGSZ, IMGSZ)
    seg = Segment(VideoFile(path, path.name), info, geom, 0, info.num_frames)
    spec = PreprocessSpec(options=PreprocessConfig(resize_filter="opencv"), keep_source=True)
    out: list[np.ndarray] = []
    with SegmentDecoder([seg], spec, 4, kind, device_id=device_id) as dec:  # type: ignore[arg-type]
        for ev in dec:
            if isinstance(ev, SegmentBatch):
                full = ev.batch.source_frames
                full = full.as_cpu() if hasattr(full, "as_cpu") else full
                arr = np.asarray(full.as_tensor())
                arr = arr.reshape(-1, *arr.shape[-3:])
                out += [f for f, row in zip(arr, ev.batch.rows, strict=True) if row is not None]
    return out


def _job(clips: Path, path: Path, out: Path, device: str, monkeypatch: pytest.MonkeyPatch
         ) -> tuple[dict[str, set[tuple[int, ...]]], dict[str, list[Detections]], dict[str, int]]:
    """A file job over ``clips``: per file, the input shapes its batches reached the engine
    with and its detections in frame order; and the files per decoder."""
    from collections import defaultdict

    from engines.inplace import dali_to_torch
    from pipelines.runner import FileJob
    from pipelines.stages import InferenceStage
    from streams.config import parse_config

    shapes: dict[str, set[tuple[int, ...]]] = defaultdict(set)
    process = InferenceStage.process

    def spy(self: InferenceStage, batch: Any) -> Any:
        shapes[batch.source.source_id].add(tuple(dali_to_torch(batch.images, batch.layout, batch.stream).shape))
        return process(self, batch)

    monkeypatch.setattr(InferenceStage, "process", spy)
    engine: dict[str, Any] = {"device": device, "batch_size": 4}
    if device != "cpu":  # FP32 as Ultralytics predicts; CUDA graphs on: one per canvas
        engine.update(kind="torch", precision="fp32", compile="off", cuda_graphs=True)
    cfg = parse_config({"sources": [str(clips)], "model": {"path": str(path)}, "engine": engine,
                        "postprocess": {"conf_threshold": CONF, "iou_threshold": IOU, "fused": "off"},
                        "sinks": [{"type": "jsonl", "path": str(out / "detections.jsonl")}]})
    job = FileJob(cfg, show_progress=False)
    results = [r for batch in job.batches() for r in batch]
    assert job.summary.ok and job.summary.frames == JOB_FRAMES * len(JOB_CLIPS), job.summary.to_text()
    dets: dict[str, list[Detections]] = {}
    for sid in JOB_CLIPS:
        mine = sorted((r for r in results if r.frame.source_id == sid), key=lambda r: r.frame.frame_index)
        assert [r.frame.frame_index for r in mine] == list(range(JOB_FRAMES))
        dets[sid] = [r.detections for r in mine]
    return dict(shapes), dets, dict(job.summary.decoders)


def _check_job(dynamic: bool, sample: list[np.ndarray], clips: Path, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch, device: str = "cpu") -> None:
    case = CASES["yolov8n dynamic" if dynamic else "yolov8n static"]
    path = export(build(case.yaml, sample), tmp_path / "yolov8n.onnx", dynamic)
    shapes, dets, decoders = _job(clips, path, tmp_path / "out", device, monkeypatch)
    on_gpu = device != "cpu"
    assert decoders == ({"dali-gpu": 3} if on_gpu else {"pyav": 2, "dali-cpu": 1})
    figures = []
    for sid, (_, w, h) in JOB_CLIPS.items():
        canvas = canvas_hw(w, h, (IMGSZ, IMGSZ), 32, rect=dynamic)  # 768x432: 320x192; 432x768: 192x320
        assert {s[1:] for s in shapes[sid]} == {(3, *canvas)}, (sid, shapes[sid])
        kind = "dali-gpu" if on_gpu else ("dali-cpu" if sid.endswith(".webm") else "pyav")
        rgb = _decoded(clips / sid, kind, 0 if on_gpu else None)
        assert len(rgb) == JOB_FRAMES
        matched, total, _ = _match(_ultralytics(path, case, rgb), dets[sid])
        figures.append(f"{sid} ({kind}, {canvas[1]}x{canvas[0]}) {matched}/{total}")
        assert total >= 20 * JOB_FRAMES // 4, f"{sid}: too few boxes to compare ({total})"
        assert matched >= 0.99 * total, f"{sid}: {matched} of {total} of Ultralytics' boxes matched"
    print(f"yolov8n dynamic={dynamic} through a job on {device}: boxes matched: {', '.join(figures)}")


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_a_job_gives_ultralytics_boxes(dynamic: bool, sample: list[np.ndarray], job_clips: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A real file job on the CPU (PyAV for H.264, DALI's CPU reader for VP9, ONNX Runtime):
    a dynamic export runs each file at its own rectangle (768x432: [B, 3, 192, 320]; the
    432x768 file of the same job: [B, 3, 320, 192]), a static one at 320x320, and the boxes
    are Ultralytics' own: >= 99 % matched at IoU >= 0.9 with the same class, per file."""
    _check_job(dynamic, sample, job_clips, tmp_path, monkeypatch)


@pytest.mark.gpu
@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_a_gpu_job_gives_ultralytics_boxes(dynamic: bool, sample: list[np.ndarray], job_clips: Path,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same job on a GPU: NVDEC, preprocessing on the device, the export on the torch engine
    (onnx2torch, FP32, a CUDA graph per canvas and inference stream)."""
    _check_job(dynamic, sample, job_clips, tmp_path, monkeypatch, device="cuda:0")
