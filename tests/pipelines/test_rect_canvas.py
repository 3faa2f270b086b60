"""Rectangle canvases: a dynamic-shape export runs each file at its own stride-aligned
rectangle, as Ultralytics runs it (issue #30, item 4), through real file jobs on the CPU.

The model is :class:`tests.models.BrightSpotDetector` exported to ONNX with dynamic height
and width and Ultralytics' metadata (``imgsz`` 320, ``stride`` 32), so boxes must land on the
clips' white square. Clips: 768x432 H.264 (PyAV's decode), 768x432 VP9 (DALI's CPU reader)
and 480x640 H.264 (a portrait file: another canvas in the same job). The engine's input
shapes are read off the inference stage's batches, per file.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engines.inplace import dali_to_torch
from engines.model_info import ModelInfo, rect_canvas_stride
from operators.boxes import letterbox_geometry
from operators.letterbox import canvas_hw, letterbox_reference, min_canvas_hw
from pipelines.file_source import DecodePlan, canvases
from pipelines.preprocess import PreprocessSpec, canvas_geometry
from pipelines.runner import FileJob
from pipelines.stages import InferenceStage
from streams.config import JobConfig, PreprocessConfig, parse_config
from streams.errors import ConfigError
from streams.frames import FrameResult
from streams.sources.probe import VideoInfo
from tests.engines.bad_models import with_metadata
from tests.media import square_position, write_clip
from tests.models import BrightSpotDetector

IMGSZ = 320
META = {"author": "Ultralytics", "stride": "32", "task": "detect", "imgsz": f"[{IMGSZ}, {IMGSZ}]",
        "names": "{0: 'bright', 1: 'dark'}"}
CLIPS = {"wide.mp4": ("libx264", 768, 432), "wide.webm": ("libvpx-vp9", 768, 432),
         "tall.mp4": ("libx264", 480, 640)}
RECT = {"wide.mp4": (192, 320), "wide.webm": (192, 320), "tall.mp4": (320, 256)}  # (h, w)
FRAMES = 10


def _export(path: Path, dynamic: bool) -> Path:
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}} if dynamic \
        else {"images": {0: "batch"}, "output0": {0: "batch"}}
    torch.onnx.export(BrightSpotDetector(), (torch.zeros(1, 3, IMGSZ, IMGSZ),), str(path), input_names=["images"],
                      output_names=["output0"], opset_version=17, dynamo=False, dynamic_axes=axes)
    return with_metadata(path, **META)


def make_models(d: Path) -> dict[str, Path]:
    """The dynamic- and static-shape exports, in ``d``."""
    return {"dynamic": _export(d / "dynamic.onnx", True), "static": _export(d / "static.onnx", False)}


def make_clips(d: Path) -> Path:
    """The :data:`CLIPS`, in ``d``."""
    for name, (codec, w, h) in CLIPS.items():
        write_clip(d / name, codec, frames=FRAMES, width=w, height=h)
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clips(tmp_path_factory.mktemp("rect-clips"))


def _config(clips: Path, model: Path, out: Path, **preprocess: Any) -> JobConfig:
    raw: dict[str, Any] = {"sources": [str(clips)], "model": {"path": str(model)},
                           "engine": {"device": "cpu", "batch_size": 4},
                           "sinks": [{"type": "jsonl", "path": str(out / "detections.jsonl")}]}
    if preprocess:
        raw["preprocess"] = preprocess
    return parse_config(raw)


def _run(cfg: JobConfig, monkeypatch: pytest.MonkeyPatch) -> tuple[FileJob, dict[str, set[tuple[int, ...]]],
                                                                   list[FrameResult]]:
    """The job's results and, per file, the input shapes its batches reached the engine with."""
    shapes: dict[str, set[tuple[int, ...]]] = defaultdict(set)
    process = InferenceStage.process

    def spy(self: InferenceStage, batch: Any) -> list[FrameResult]:
        shapes[batch.source.source_id].add(tuple(dali_to_torch(batch.images, batch.layout, batch.stream).shape))
        return process(self, batch)

    monkeypatch.setattr(InferenceStage, "process", spy)
    job = FileJob(cfg, show_progress=False)
    results = [r for batch in job.batches() for r in batch]
    assert job.summary.ok and job.summary.frames == FRAMES * len(CLIPS), job.summary.to_text()
    return job, dict(shapes), results


def _canvases(shapes: dict[str, set[tuple[int, ...]]]) -> dict[str, set[tuple[int, int]]]:
    for sid, seen in shapes.items():
        assert {s[1] for s in seen} == {3} and all(1 <= s[0] <= 4 for s in seen), (sid, seen)
    return {sid: {(s[2], s[3]) for s in seen} for sid, seen in shapes.items()}


def _on_the_square(results: list[FrameResult]) -> None:
    """Every frame's best box is centred on the square (boxes mapped back through the right canvas)."""
    assert len(results) == FRAMES * len(CLIPS)
    for r in results:
        f = r.frame
        x1, y1, x2, y2 = square_position(f.frame_index, f.width, f.height)
        assert len(r.detections), f"{f.source_id} frame {f.frame_index}: no detection"
        bx1, by1, bx2, by2 = r.detections.xyxy[int(np.argmax(r.detections.confidence))]
        cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
        tol = 8 * max(f.width, f.height) / IMGSZ  # a stride-8 cell of the model input, in frame pixels
        assert x1 - tol <= cx <= x2 + tol and y1 - tol <= cy <= y2 + tol, (f.source_id, f.frame_index, cx, cy)


@pytest.mark.parametrize("resize_filter", ["dali", "opencv"])
def test_a_dynamic_export_runs_each_file_at_its_rectangle(models: dict[str, Path], clips: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture, resize_filter: str) -> None:
    """768x432 at imgsz 320 runs at 320x192 (PyAV's and DALI's decode alike), the portrait file
    of the same job at 256x320; a batch never mixes them, boxes map back through each file's
    canvas, and the job says once which canvas each frame size got."""
    cfg = _config(clips, models["dynamic"], tmp_path, resize_filter=resize_filter)
    with caplog.at_level(logging.INFO):
        job, shapes, results = _run(cfg, monkeypatch)
    assert _canvases(shapes) == {sid: {hw} for sid, hw in RECT.items()}
    assert job.summary.decoders == {"pyav": 2, "dali-cpu": 1}  # the VP9 file went through DALI's reader
    _on_the_square(results)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model input canvases")]
    assert len(said) == 1, said
    assert "768x432 -> 320x192 (2 files)" in said[0] and "480x640 -> 256x320 (1 file)" in said[0]
    assert "the smallest 32-aligned rectangle within 320x320" in said[0]


def test_the_rectangle_gives_the_reference_letterboxs_boxes(models: dict[str, Path], clips: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With OpenCV's filter the job's boxes for the H.264 file are those of the model run on
    :func:`~operators.letterbox.letterbox_reference` images (cv2) at the same 320x192 canvas,
    mapped back through that canvas: the rectangle and its geometry, end to end."""
    import av
    import onnxruntime as ort

    from operators.output_decoding import select_outputs
    from operators.postprocess import postprocess
    from streams.config import PostprocessConfig

    _, _, results = _run(_config(clips, models["dynamic"], tmp_path, resize_filter="opencv"), monkeypatch)
    ours = sorted((r for r in results if r.frame.source_id == "wide.mp4"), key=lambda r: r.frame.frame_index)
    with av.open(str(clips / "wide.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    h, w = canvas_hw(768, 432, (IMGSZ, IMGSZ), 32, rect=True)
    geom = letterbox_geometry(768, 432, w, h)
    session = ort.InferenceSession(str(models["dynamic"]), providers=["CPUExecutionProvider"])
    boxed = np.stack([letterbox_reference(f.astype(np.uint8), (h, w)) for f in frames])
    x = boxed.transpose(0, 3, 1, 2).astype(np.float32) / 255
    (out,) = session.run(None, {"images": x})
    assert out.shape == (len(frames), 6, (h // 8) * (w // 8))
    theirs = postprocess(select_outputs({"output0": torch.from_numpy(out)}, "yolov8"), "yolov8",
                         [geom] * len(frames), PostprocessConfig(), ("bright", "dark"))
    assert len(ours) == len(theirs) == FRAMES
    for r, t in zip(ours, theirs, strict=True):
        assert t is not None and len(t) == len(r.detections) > 0
        np.testing.assert_allclose(r.detections.xyxy, t.xyxy, atol=1e-3)
        np.testing.assert_allclose(r.detections.confidence, t.confidence, atol=1e-5)


@pytest.mark.parametrize(("model", "preprocess", "square"), [
    ("static", {}, True),                               # a static export keeps its fixed shape
    ("dynamic", {"canvas": "square"}, True),            # asked for
    ("dynamic", {"canvas": "rect"}, False),             # asked for explicitly: as auto
])
def test_square_where_the_model_or_the_config_says(models: dict[str, Path], clips: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, model: str,
                                                   preprocess: dict[str, str], square: bool) -> None:
    _, shapes, results = _run(_config(clips, models[model], tmp_path, **preprocess), monkeypatch)
    want = {sid: {(IMGSZ, IMGSZ)} if square else {hw} for sid, hw in RECT.items()}
    assert _canvases(shapes) == want
    _on_the_square(results)


def test_a_pinned_input_size_is_square_unless_rect_is_asked_for(models: dict[str, Path], clips: Path,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``model.input_size`` in the config is a fixed input shape (``canvas: auto``); with
    ``canvas: rect`` the rectangles are cut within it."""
    cfg = _config(clips, models["dynamic"], tmp_path)
    pinned = replace(cfg, model=replace(cfg.model, input_size=(384, 384)))
    _, shapes, results = _run(pinned, monkeypatch)
    assert set().union(*_canvases(shapes).values()) == {(384, 384)}
    _on_the_square(results)
    rect = replace(pinned, preprocess=replace(pinned.preprocess, canvas="rect"))
    _, shapes, results = _run(rect, monkeypatch)
    assert _canvases(shapes) == {"wide.mp4": {(224, 384)}, "wide.webm": {(224, 384)}, "tall.mp4": {(384, 288)}}
    _on_the_square(results)


def test_rect_on_a_model_that_cannot_take_it_is_refused_before_any_work(models: dict[str, Path], clips: Path,
                                                                        tmp_path: Path) -> None:
    cfg = _config(clips, models["static"], tmp_path, canvas="rect")
    job = FileJob(cfg, show_progress=False)
    with pytest.raises(ConfigError, match=r"preprocess\.canvas: rect, but .*static\.onnx takes only \[320, 320\]"):
        list(job.batches())
    assert not (tmp_path / "detections.jsonl").exists()
    with pytest.raises(ConfigError, match=r"preprocess\.canvas: expected one of \['auto', 'square', 'rect'\]"):
        _config(clips, models["dynamic"], tmp_path, canvas="round")


def _info(dynamic: bool = True, resize: str = "letterbox", stride: int = 32) -> ModelInfo:
    return ModelInfo(("a",), (640, 640), "yolov8", "m.onnx", dynamic=dynamic, resize=resize, stride=stride)


def test_which_models_get_rectangles() -> None:
    auto, square, rect = PreprocessConfig(), PreprocessConfig(canvas="square"), PreprocessConfig(canvas="rect")
    assert rect_canvas_stride(_info(), auto, pinned=False) == 32
    assert rect_canvas_stride(_info(stride=64), auto, pinned=False) == 64
    assert rect_canvas_stride(_info(), auto, pinned=True) is None
    assert rect_canvas_stride(_info(), rect, pinned=True) == 32
    assert rect_canvas_stride(_info(), square, pinned=False) is None
    assert rect_canvas_stride(_info(dynamic=False), auto, pinned=False) is None
    assert rect_canvas_stride(_info(resize="stretch"), auto, pinned=False) is None  # RT-DETR
    assert rect_canvas_stride(_info(), PreprocessConfig(resize="stretch"), pinned=False) is None
    with pytest.raises(ConfigError, match=r"preprocess\.canvas: rect, but the model stretches"):
        rect_canvas_stride(_info(resize="stretch"), rect, pinned=False)
    with pytest.raises(ConfigError, match=r"preprocess\.canvas: rect, but preprocess\.resize stretches"):
        rect_canvas_stride(_info(), PreprocessConfig(resize="stretch", canvas="rect"), pinned=False)


def test_the_plan_places_each_frame_size_on_its_canvas() -> None:
    spec = PreprocessSpec()
    rect = DecodePlan(spec, (IMGSZ, IMGSZ), batch=4, decode_device="cpu", device_id=None, stride=32)
    square = replace(rect, stride=None)
    g = rect.geometry(768, 432)
    assert (g.dst_w, g.dst_h, g.resized_w, g.resized_h, g.pad_x, g.pad_y) == (320, 192, 320, 180, 0, 6)
    assert g == canvas_geometry(768, 432, (IMGSZ, IMGSZ), "letterbox", 32) == letterbox_geometry(768, 432, 320, 192)
    assert square.geometry(768, 432) == letterbox_geometry(768, 432, 320, 320)
    stretch = replace(rect, spec=PreprocessSpec(options=PreprocessConfig(resize="stretch")))
    assert stretch.geometry(768, 432) == letterbox_geometry(768, 432, 320, 320, "stretch")

    def info(w: int, h: int, n: int) -> VideoInfo:
        return VideoInfo(path=Path("x.mp4"), codec="h264", width=w, height=h, time_base=(1, 25), fps=25.0,
                         pts=tuple(range(n)), start_pts=0, keyframes=(0,))

    from streams.errors import SourceError

    probed: list[VideoInfo | SourceError] = [info(768, 432, 10), info(1920, 1080, 5), info(480, 640, 7),
                                             SourceError("bad.mp4", "unreadable")]
    assert canvases(rect, probed) == {(192, 320): 15, (320, 256): 7}
    assert canvases(square, probed) == {(320, 320): 22}


@pytest.mark.parametrize("imgsz", [(320, 320), (640, 640), (330, 300), (384, 640)])
@pytest.mark.parametrize("stride", [32, 64])
def test_no_canvas_is_smaller_than_the_profile_minimum(imgsz: tuple[int, int], stride: int) -> None:
    """Every rectangle a frame can get lies within a TensorRT profile from
    :func:`min_canvas_hw` to ``imgsz`` (extreme aspect ratios included), and the minimum is reached."""
    rng = np.random.default_rng(0)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 4000, size=(400, 2))]
    sizes += [(4000, 1), (1, 4000), (10000, 3), (imgsz[1], imgsz[0])]
    lo = min_canvas_hw(imgsz, stride)
    seen = [canvas_hw(w, h, imgsz, stride, rect=True) for w, h in sizes]
    assert all(lo[0] <= h <= imgsz[0] and lo[1] <= w <= imgsz[1] for h, w in seen)
    assert all((imgsz[0] - h) % stride == 0 and (imgsz[1] - w) % stride == 0 for h, w in seen)
    assert min(h for h, _ in seen) == lo[0] and min(w for _, w in seen) == lo[1]


class _SizedEngine:
    """An engine with graphs per size, recording what it is asked to capture."""

    def __init__(self) -> None:
        self.captured: list[list[tuple[int, int]]] = []

    def capture_graphs(self, batch: int, streams: Any, sizes: Any = None) -> int:
        self.captured.append(list(sizes))
        return len(sizes) * len(streams)


def test_a_gpu_job_prepares_its_canvases_once_most_frames_first(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Before decoding, each new canvas gets a graph per stream and a warm-up per stream, the
    canvases with the most frames first, at most MAX_CANVASES besides the input size (the rest
    is logged once); canvases prepared earlier (a Ray worker's next job) are not again."""
    from collections import Counter
    from types import SimpleNamespace

    from pipelines import runner

    warmed: list[tuple[tuple[int, int], object]] = []
    monkeypatch.setattr(runner, "warm_up", lambda engine, batch, size, stream: warmed.append((size, stream)))
    engine = _SizedEngine()
    setup = runner.InferenceSetup.__new__(runner.InferenceSetup)
    setup.stage = SimpleNamespace(engine=engine)  # type: ignore[assignment]
    setup.batch, setup.streams = 8, ["s0", "s1"]  # type: ignore[list-item]
    setup._canvases = {(320, 320)}
    frames = Counter({(320, 32 * k): 100 * k for k in range(1, 10)} | {(320, 320): 5000})
    with caplog.at_level(logging.WARNING):
        setup.prepare_canvases(frames)
    want = [(320, 32 * k) for k in (9, 8, 7, 6, 5, 4, 3)]
    assert engine.captured == [want]
    assert warmed == [(hw, s) for hw in want for s in ("s0", "s1")]
    assert "batches of 64x320, 32x320 (w x h) are not warmed up" in caplog.text
    setup.prepare_canvases(Counter({(320, 288): 10, (192, 320): 3}))  # the first prepared already; no room left
    assert engine.captured == [want]
    cpu = runner.InferenceSetup.__new__(runner.InferenceSetup)
    cpu.stage, cpu.streams, cpu._canvases = setup.stage, [], {(320, 320)}
    cpu.prepare_canvases(Counter({(192, 320): 3}))  # nothing on the CPU
    assert engine.captured == [want]
