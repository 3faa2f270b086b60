"""The file job on a CUDA GPU: NVDEC decode, GPU preprocessing, the in-place operator.

Compares against the CPU path on the same clips (frame records identical, detections
within tolerance) and proves the zero copy: the engine reads DALI's output pointer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engines.inplace import InPlaceInference
from engines.torch_engine import TorchEngine
from operators.boxes import letterbox_geometry
from pipelines.preprocess import PreprocessSpec
from pipelines.runner import run_job
from pipelines.segments import Segment
from pipelines.video_decoding import SegmentBatch, SegmentDecoder
from streams.config import load_config
from streams.sources.files import VideoFile
from streams.sources.probe import probe_video
from tests.media import pyav_frames, write_clip
from tests.models import BrightSpotDetector

pytestmark = pytest.mark.gpu


def _records(path: Path) -> dict[tuple[str, int], dict]:
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        key = (r["source"], r["frame_index"])
        assert key not in out, f"duplicate record {key}"
        out[key] = r
    return out


@pytest.fixture(scope="module")
def gpu_clips(clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gpu_clips")
    for p in clip_dir.rglob("*"):
        if p.is_file():
            target = d / p.relative_to(clip_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(p.read_bytes())
    write_clip(d / "hevc.mp4", "libx265", frames=33, width=352, height=288,
               options={"x265-params": "log-level=error:keyint=12:bframes=2"})
    return d


def _union(dets: list[dict]) -> tuple[float, ...] | None:
    boxes = [d["box"] for d in dets if d["confidence"] >= 0.5]
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


def _run(src: Path, model: Path, out: Path, device: str, **extra: object) -> object:
    cfg = load_config(None, {"sources": [str(src)], "model": str(model), "out": str(out),
                             "device": device})
    return run_job(cfg, show_progress=False)


def test_gpu_matches_cpu(gpu_clips: Path, bright_model: Path, tmp_path: Path) -> None:
    cpu = _run(gpu_clips, bright_model, tmp_path / "cpu", "cpu")
    gpu = _run(gpu_clips, bright_model, tmp_path / "gpu", "cuda")
    assert gpu.decoders.get("dali-gpu", 0) == 4, gpu.decoders  # every good file through NVDEC
    assert {Path(f.name).name for f in gpu.failures} == {Path(f.name).name for f in cpu.failures}
    a = _records(tmp_path / "cpu" / "detections.jsonl")
    b = _records(tmp_path / "gpu" / "detections.jsonl")
    assert a.keys() == b.keys()
    for rel in ("hevc.mp4", "nested/portrait.mp4"):  # a file's source id is its path under the folder
        frames = pyav_frames(gpu_clips / rel)
        assert sorted((k[1], b[k]["pts"]) for k in b if k[0] == rel) == frames
    mismatched = []
    for key, ra in a.items():
        rb = b[key]
        assert ra["pts"] == rb["pts"]
        # the bright-spot model gives many tied cells: compare the union of the boxes
        ua, ub = _union(ra["detections"]), _union(rb["detections"])
        if (ua is None) != (ub is None) or (
            ua is not None and ub is not None and max(abs(p - q) for p, q in zip(ua, ub, strict=False)) > 4.0
        ):
            mismatched.append((key, ua, ub))
    # FFmpeg vs NVDEC decoding and FP32 vs FP16: allow rare one-cell shifts
    assert len(mismatched) <= len(a) * 0.05, f"{len(mismatched)} of {len(a)} differ: {mismatched[:5]}"


class _RecordingEngine(TorchEngine):
    """The real torch engine, recording the address of every input it is given."""

    seen: list[int]

    def infer(self, inputs, stream=None):  # type: ignore[no-untyped-def]
        self.seen.append(next(iter(inputs.values())).data_ptr())
        return super().infer(inputs, stream)


@pytest.mark.parametrize("layout,dtype,graphs", [("NCHW", "float32", False), ("NHWC", "float16", True)])
def test_engine_reads_dalis_buffer_in_place(gpu_clips: Path, layout: str, dtype: str, graphs: bool) -> None:
    path = gpu_clips / "landscape.mp4"
    info = probe_video(path)
    geom = letterbox_geometry(info.width, info.height, 320, 320)
    spec = PreprocessSpec(dtype=dtype, layout=layout)  # type: ignore[arg-type]
    stream = torch.cuda.Stream()
    engine = _RecordingEngine(BrightSpotDetector(), device="cuda:0",
                              precision="fp16" if dtype == "float16" else "fp32",
                              input_size=(320, 320), cuda_graphs=graphs)
    engine.seen = []
    eager = BrightSpotDetector().cuda()
    segment = Segment(VideoFile(path, "a"), info, geom, 0, info.num_frames)
    with engine, SegmentDecoder([segment], spec, 8, "dali-gpu", device_id=0, stream=stream.cuda_stream) as dec:
        op = InPlaceInference(engine)
        n = 0
        for ev in dec:
            if not isinstance(ev, SegmentBatch):
                continue
            batch = ev.batch
            dali_ptr = batch.images.as_tensor().data_ptr()
            out = op(batch.images, batch.layout, batch.stream)
            assert engine.seen[-1] == dali_ptr, "the engine must read DALI's own buffer"
            with torch.cuda.stream(torch.cuda.ExternalStream(batch.stream)):
                from engines.inplace import dali_to_torch

                x = dali_to_torch(batch.images, batch.layout, batch.stream)
                ref = eager(x.float())
            torch.cuda.synchronize()
            got = next(iter(out.values())).float()
            assert torch.allclose(got, ref, atol=2e-2), "graph replay must match eager"
            n += batch.num_valid
        assert n == info.num_frames


def test_inference_waits_for_the_gpu_once_per_batch(gpu_clips: Path) -> None:
    """The runner's inference stage (in-place operator, graph replay, fused postprocess) on
    NVDEC batches, under torch's sync debug mode: every operation that makes the host wait
    for the GPU warns. The steady state must have exactly one per batch: the detections
    copy."""
    import warnings

    from engines.factory import ModelInfo
    from pipelines.stages import InferenceStage
    from streams.config import PostprocessConfig

    path = gpu_clips / "landscape.mp4"
    info = probe_video(path)
    geom = letterbox_geometry(info.width, info.height, 320, 320)
    spec = PreprocessSpec(dtype="float16", layout="NHWC")
    stream = torch.cuda.Stream()
    engine = TorchEngine(BrightSpotDetector(), device="cuda:0", precision="fp16", input_size=(320, 320),
                         cuda_graphs=True)
    segment = Segment(VideoFile(path, "a"), info, geom, 0, info.num_frames)
    waits: list[int] = []
    frames = 0
    with engine, SegmentDecoder([segment], spec, 8, "dali-gpu", device_id=0, stream=stream.cuda_stream) as dec:
        stage = InferenceStage(engine, ModelInfo(("bright", "dark"), (320, 320), "yolov8"), "yolov8",
                               PostprocessConfig(conf_threshold=0.05, frame_capacity=2048))
        for ev in dec:
            if not isinstance(ev, SegmentBatch):
                continue
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    results = stage.process(ev.batch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            waits.append(sum("synchronizing" in str(w.message) for w in caught))
            frames += len(results)
    assert frames == info.num_frames
    assert sum(len(r.detections) for r in results) > 0  # the postprocess found something
    assert len(waits) >= 4 and waits[1:] == [1] * (len(waits) - 1), waits  # the first batch captures a graph


def test_onnx_without_gpu_engines_runs_on_the_cpu(gpu_clips: Path, tmp_path: Path) -> None:
    """This H200 has neither tensorrt nor onnxruntime-gpu: an ONNX model with device cuda
    falls back to ONNX Runtime on the CPU (decode too) and still processes every frame."""
    from engines.onnxruntime_engine import cuda_provider_available

    if cuda_provider_available():
        pytest.skip("onnxruntime-gpu is installed here")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    path = tmp_path / "bright.onnx"
    torch.onnx.export(BrightSpotDetector(), (torch.zeros(1, 3, 320, 320),), str(path), input_names=["images"],
                      output_names=["output0"], dynamic_axes={"images": {0: "b"}, "output0": {0: "b"}},
                      opset_version=17, dynamo=False)
    summary = _run(gpu_clips / "landscape.mp4", path, tmp_path / "o", "cuda")
    assert summary.device == "cpu" and summary.ok
    assert summary.frames == len(pyav_frames(gpu_clips / "landscape.mp4"))


def test_truncated_file_on_nvdec_is_incomplete_with_its_frames_kept(tmp_path: Path, bright_model: Path) -> None:
    """The CPU path's rule on the GPU path: the decoded frames are written, the file is
    reported incomplete with both counts, the job is not ok."""
    good = write_clip(tmp_path / "whole.mkv", "libx264", frames=60, width=320, height=240, options={"g": "10"})
    data = good.read_bytes()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "cut.mkv").write_bytes(data[: len(data) * 2 // 3])
    decodable = pyav_frames(tmp_path / "src" / "cut.mkv")
    summary = _run(tmp_path / "src", bright_model, tmp_path / "o", "cuda")
    assert summary.decoders == {"dali-gpu": 1}, summary.decoders
    records = _records(tmp_path / "o" / "detections.jsonl")
    assert sorted(k[1] for k in records) == [i for i, _ in decodable]
    [failure] = summary.failures
    assert failure.kind == "incomplete" and failure.frames == len(decodable) and failure.expected == 60
    assert not summary.ok


def test_segments_reach_a_per_source_stage_in_order_on_nvdec(tmp_path: Path, bright_model: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A 300-frame clip cut into 30-frame segments over 4 NVDEC sessions and 2 inference threads:
    the per-source stage still sees frames 0..299 in order, with no gap."""
    from dataclasses import replace

    import pipelines.runner as runner
    from tests.pipelines.test_ordering import StrictOrder

    clip = write_clip(tmp_path / "long.mp4", "libx264", frames=300, width=320, height=240, options={"g": "15"})
    plan_for = runner.decode_plan
    monkeypatch.setattr(runner, "decode_plan",
                        lambda *a, **k: replace(plan_for(*a, **k), min_segment=30, batch=8))
    cfg = load_config(None, {"sources": [str(clip)], "model": str(bright_model), "out": str(tmp_path / "o"),
                             "device": "cuda"})
    cfg = replace(cfg, decode=replace(cfg.decode, sessions=4))
    stage = StrictOrder()
    job = runner.FileJob(cfg, show_progress=False, stages=[stage])
    n = sum(len(b) for b in job.batches())
    assert job.summary.ok and n == 300
    assert stage.seen["long.mp4"] == list(range(300)) and stage.ended == {"long.mp4": "done"}
    assert job.summary.reorder_peak > 0
