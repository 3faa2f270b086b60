"""Live cascades on the NVDEC path (``live.decode: gpu``): NVDEC decodes full-size frames, the
model input is scaled from them in torch, and the crops come from the full-size frames.

* the model input made from full-size frames (``operators.color.nv12_resize``) gives the
  detector the boxes NVDEC's own scaling gives;
* the bundled pattern classifier (``builtin:pattern``) on live paced cameras reaches the
  attribute accuracy of the CPU decode path, streams read in the job's process or by two
  ingest processes (full-size frames through the CUDA IPC rings);
* a camera larger than ``live.max_source_size`` is refused with its reason; the others run.
"""

from __future__ import annotations

import contextlib
import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.live import LiveSummary, run_live
from streams.config import parse_config
from streams.synthetic import SceneSpec, load_ground_truth, render_scene, write_clip
from streams.synthetic.truth import frame_record, write_ground_truth

pytestmark = pytest.mark.gpu

ATTR_FRAMES = 420  # 14 s at 30 fps: a live run of 11 s never loops it (a record's frame index is the clip's)


@pytest.fixture(scope="module")
def attr_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Patterned objects at the demo's size (960x540, where the bundled classifier scores 0.99
    through the file pipeline), a held-out seed; no B-frames, a keyframe a second, as cameras."""
    import av

    spec = SceneSpec(width=960, height=540, num_frames=ATTR_FRAMES, seed=424_243, attributes=True)
    path = tmp_path_factory.mktemp("live_cascade") / "attr.mp4"
    frames: list[dict[str, Any]] = []
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = spec.width, spec.height, "yuv420p"
        s.options = {"crf": "20", "bf": "0", "g": "30"}
        for i, (rgb, boxes) in enumerate(render_scene(spec)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            for p in s.encode(frame):
                c.mux(p)
            frames.append(frame_record(i, boxes, attributes=True))
        for p in s.encode():
            c.mux(p)
    write_ground_truth(path, spec, frames)
    return path


def _live(clip: Path, out: Path, decode: str, processes: int = 0, streams: int = 2,
          duration_s: float = 11.0) -> tuple[LiveSummary, dict[str, list[dict[str, Any]]]]:
    out.mkdir(parents=True, exist_ok=True)
    cfg = parse_config({
        "sources": [{"uri": f"file://{clip}", "id": f"s{i}"} for i in range(streams)],
        "model": {"path": "default"},
        "engine": {"device": "cuda", "batch_size": 16},
        "live": {"decode": decode, "http": {"enabled": False}, "log_interval_s": 0, "loop_files": False,
                 "batch": {"policy": "block"}, "ingest": {"processes": processes}},
        "secondary": [{"name": "pattern", "model": "builtin:pattern"}],
        "sinks": [{"type": "jsonl", "path": str(out / "d.jsonl")}],
    })
    summary = run_live(cfg, duration_s=duration_s)
    from pipelines.evaluation import load_predictions_jsonl

    return summary, load_predictions_jsonl(out / "d.jsonl")


def _accuracy(clip: Path, preds: dict[str, list[dict[str, Any]]]) -> Any:
    from pipelines.cascade_eval import attribute_accuracy

    assert all(r["frame_index"] < ATTR_FRAMES for rs in preds.values() for r in rs), "the clip looped"
    gt = load_ground_truth(clip)
    return attribute_accuracy(preds, {sid: gt for sid in preds}, "pattern")


@pytest.fixture(scope="module")
def cpu_decode_score(attr_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The same live job with PyAV decoding on the CPU (crops from its RGB frames): the baseline."""
    summary, preds = _live(attr_clip, tmp_path_factory.mktemp("cpu_decode"), "cpu")
    assert summary.mode == "frames" and summary.batch_errors == 0
    return _accuracy(attr_clip, preds)


@pytest.mark.parametrize("processes", [0, 2])
def test_live_cascade_on_nvdec_frames_scores_as_the_cpu_decode_path(attr_clip: Path, cpu_decode_score: Any,
                                                                    tmp_path: Path, processes: int) -> None:
    """Tolerance: 0.02 of accuracy. Both paths crop the same decoded pixels (H.264 decoding is
    exact) through different colour conversions (ours repeats the chroma, FFmpeg's rgb24
    interpolates it: a few levels at edges) and slightly different detector inputs (torch's
    scaling of NV12 planes vs DALI's of RGB), so only borderline crops can flip; with 2,000+
    matched detections a run's accuracy has a standard error of about 0.002, and 0.02 leaves
    room for the systematic part without hiding a wrong frame or wrong place (which costs
    far more: a crop of the wrong frame is right by chance, 1 in 3)."""
    summary, preds = _live(attr_clip, tmp_path, "gpu", processes=processes)
    assert summary.mode == "packets" and summary.batch_errors == 0, summary.to_text()
    assert set(preds) == {"s0", "s1"} and all(len(r) >= 150 for r in preds.values()), \
        {k: len(v) for k, v in preds.items()}
    score = _accuracy(attr_clip, preds)
    base = cpu_decode_score
    assert score.matched > 1000 and base.matched > 1000, (score.to_dict(), base.to_dict())
    assert score.accuracy >= 0.95, score.to_dict()  # the target through the pipeline
    assert score.accuracy >= base.accuracy - 0.02, (score.to_dict(), base.to_dict())
    report = summary.stages["CascadeStage"]["models"]["pattern"]
    assert report["device"].startswith("cuda") and report["classified"] >= score.matched


def test_full_size_input_gives_the_boxes_of_nvdec_scaled_input(tmp_path: Path) -> None:
    """The detector on the same clip's frames, scaled to the letterbox size by NVDEC (the
    detector-only path) and decoded at full size then scaled in torch (the cascade path).

    Tolerance: both are bilinear-class downscales of one decoded frame by exactly 2 (640x360
    -> 320x180), differing only in the scaler's filter at edges: the inputs differ by under
    3 grey levels on average, and a box moves by at most about one input pixel (2 source
    pixels); 95 % of confident boxes (score >= 0.5) must have a same-class box with IoU >= 0.8
    on the other path, both ways, with a median corner offset <= 2 source pixels."""
    from benchmarks.live_sim import annexb_packets
    from engines.factory import resolve_device
    from pipelines.graph import open_inference_stage, prepare_inference
    from pipelines.live_decode import LiveBatchPipeline
    from pipelines.nvdec import nvdec_decoder_factory
    from pipelines.preprocess import PreprocessSpec
    from streams.frames import FrameMeta
    from streams.live.types import LiveFrame

    clip = write_clip(tmp_path / "p.mp4", SceneSpec(width=640, height=360, num_frames=48, seed=424_244,
                                                    background="plain", noise=2.0))
    codec, packets = annexb_packets(clip)
    cfg = parse_config({"sources": [str(clip)], "model": {"path": "default"},
                        "engine": {"device": "cuda", "batch_size": 16}})
    got: dict[bool, tuple[torch.Tensor, list[Any]]] = {}
    with contextlib.ExitStack() as stack:
        stage = open_inference_stage(cfg, resolve_device("cuda"), stack)
        (stream,) = prepare_inference(stage, 16, 1)
        size = stage.info.input_size
        for full in (False, True):
            dec = nvdec_decoder_factory(0, size, "letterbox", max_source=(1920, 1080) if full else None)(codec)
            surfaces = []
            for data, pts in packets:
                surfaces += dec.decode(data, pts)
            surfaces += dec.flush()
            dec.close()
            assert len(surfaces) == 48
            assert tuple(surfaces[0].nv12.shape) == ((540, 640) if full else (270, 320))
            spec = PreprocessSpec(dtype=stage.engine.input_dtype, layout=stage.engine.input_layout,  # type: ignore[arg-type]
                                  options=cfg.preprocess, keep_source=full)
            pipe = LiveBatchPipeline("packets", spec, size, 16, 0, stream.cuda_stream)
            inputs, dets = [], []
            for i in range(0, 48, 16):
                items = [LiveFrame(FrameMeta("p", "p", i + j, s.pts, (1, 30), s.width, s.height), s)
                         for j, s in enumerate(surfaces[i:i + 16])]
                batch = pipe.run(items)
                assert (batch.source_frames is not None) == full
                torch.cuda.synchronize()
                inputs.append(batch.images.float().clone())
                dets += [r.detections for r in stage.process(batch)]
            got[full] = (torch.cat(inputs), dets)
    (x_nvdec, d_nvdec), (x_torch, d_torch) = got[False], got[True]
    levels = (x_nvdec - x_torch).abs().mean().item() * cfg.preprocess.std[0]
    assert levels < 3.0, f"model inputs differ by {levels:.2f} grey levels on average"
    assert len(d_nvdec) == len(d_torch) == 48

    def matched(a: list[Any], b: list[Any]) -> tuple[int, int, list[float]]:
        from operators.reference import box_iou_np

        hit = total = 0
        offsets: list[float] = []
        for da, db in zip(a, b, strict=True):
            keep = da.confidence >= 0.5
            total += int(keep.sum())
            if not keep.any() or len(db) == 0:
                continue
            iou = box_iou_np(da.xyxy[keep], db.xyxy)
            same = da.class_id[keep][:, None] == db.class_id[None, :]
            best = np.where(same, iou, 0.0).argmax(1)
            ok = np.where(same, iou, 0.0).max(1) >= 0.8
            hit += int(ok.sum())
            offsets += np.abs(da.xyxy[keep][ok] - db.xyxy[best[ok]]).max(1).tolist()
        return hit, total, offsets

    for a, b in ((d_nvdec, d_torch), (d_torch, d_nvdec)):
        hit, total, offsets = matched(a, b)
        assert total > 60 and hit >= 0.95 * total, (hit, total)
        assert float(np.median(offsets)) <= 2.0, np.percentile(offsets, [50, 90, 100])


@pytest.mark.parametrize("processes", [0, 2])
def test_a_camera_larger_than_max_source_size_is_refused_and_the_others_run(
        tmp_path: Path, processes: int, caplog: pytest.LogCaptureFixture) -> None:
    small = write_clip(tmp_path / "small.mp4", SceneSpec(width=320, height=192, num_frames=60, seed=5))
    big = write_clip(tmp_path / "big.mp4", SceneSpec(width=640, height=360, num_frames=60, seed=6))
    cfg = parse_config({
        "sources": [{"uri": f"file://{small}", "id": "small"}, {"uri": f"file://{big}", "id": "big"}],
        "model": {"path": "default"},
        "engine": {"device": "cuda", "batch_size": 16},
        "live": {"decode": "gpu", "http": {"enabled": False}, "log_interval_s": 0,
                 "max_source_size": [320, 240], "ingest": {"processes": processes}},
        "secondary": [{"name": "pattern", "model": "builtin:pattern"}],
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "d.jsonl")}],
    })
    with caplog.at_level(logging.WARNING):
        summary = run_live(cfg, duration_s=8.0)
    records = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    got = {r["source"] for r in records}
    assert got == {"small"}, got
    assert sum(r["source"] == "small" for r in records) >= 100
    assert summary.batch_errors == 0
    refused = [m for m in (r.getMessage() for r in caplog.records)
               if "stream big" in m and "640x360, larger than live.max_source_size 320x240" in m]
    assert refused, [r.getMessage() for r in caplog.records][-20:]
