"""Cascades on the GPU path: crops cut from DALI's full-size NVDEC frames on the device give the
same attributes as the CPU path, with and without a tracker's reinfer interval; a secondary
detector's children come back at their source pixels on the device and match the CPU path's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pipelines.runner as runner
from streams.config import parse_config
from streams.frames import FrameResult
from streams.synthetic import SceneSpec, write_clip
from tests.pipelines.test_cascade import COLOURS, _Colour
from tests.secondary_models import FAMILIES, LABELS, export_blob_onnx, save_blob_detector

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cascade_gpu")
    model = d / "colour.ts"
    torch.jit.save(torch.jit.script(_Colour()), str(model))
    clip = write_clip(d / "scene.mp4", SceneSpec(width=1280, height=720, num_frames=60, seed=11, background="plain",
                                                 noise=2.0))
    return clip, model


def _run(clip: Path, model: Path, device: str, out: Path, **kw: Any) -> tuple[list[FrameResult], runner.FileJob]:
    raw: dict[str, Any] = {"sources": [str(clip)], "engine": {"device": device},
                           "secondary": [{"name": "colour", "model": str(model), "labels": list(COLOURS),
                                          "input_size": [24, 24], **kw}],
                           "sinks": [{"type": "jsonl", "path": str(out / "d.jsonl")}]}
    if kw.get("reinfer_interval"):
        raw["tracker"] = {"type": "bytetrack"}
    job = runner.FileJob(parse_config(raw), show_progress=False)
    results = sorted((r for b in job.batches() for r in b), key=lambda r: r.frame.frame_index)
    assert job.summary.ok, job.summary.to_text()
    return results, job


@pytest.mark.parametrize("interval", [0, 10])
def test_gpu_crops_give_the_cpu_paths_attributes(files: tuple[Path, Path], tmp_path: Path, interval: int) -> None:
    clip, model = files
    gpu, job = _run(clip, model, "cuda", tmp_path / "g", reinfer_interval=interval)
    cpu, _ = _run(clip, model, "cpu", tmp_path / "c", reinfer_interval=interval)
    assert job.summary.decoders == {"dali-gpu": 1}, job.summary.decoders
    report = job.summary.stages["CascadeStage"]
    assert report["models"]["colour"]["device"].startswith("cuda") and report["peak_crop_bytes"] > 0
    right = total = agree = compared = 0
    for g, c in zip(gpu, cpu, strict=True):
        dg = g.detections
        assert dg.attributes is not None or len(dg) == 0
        for cid, a in zip(dg.class_id.tolist(), dg.attributes or (), strict=True):
            total += 1
            right += a["colour"][0] == COLOURS[cid]
        # the same detection on both paths (same class, boxes within 2 px) has the same label
        for j in range(len(dg)):
            near = np.flatnonzero((np.abs(c.detections.xyxy - dg.xyxy[j]).max(1) <= 2)
                                  & (c.detections.class_id == dg.class_id[j]))
            if near.size and c.detections.attributes is not None and dg.attributes is not None:
                compared += 1
                agree += c.detections.attributes[near[0]]["colour"][0] == dg.attributes[j]["colour"][0]
    assert total > 100 and right / total >= 0.97, (right, total)
    assert compared > 0.9 * total and agree / compared >= 0.99, (agree, compared)


@pytest.mark.parametrize("family", [*FAMILIES, "onnx"])
def test_gpu_detector_children_come_back_at_their_source_pixels(tmp_path: Path, family: str) -> None:
    """The CPU test's frame and parents, cropped and run on the GPU (fp16 autocast, the fused
    postprocess for YOLOv8 where Triton is there; the ONNX export through onnx2torch): the same
    children, within a pixel."""
    from pipelines.cascade import CascadeStage
    from streams.cascade_config import SecondaryConfig
    from streams.synthetic import CLASS_NAMES
    from tests.optional import require_module
    from tests.pipelines.test_cascade_detector import EXPECTED, PARENTS, _frame, _result

    if family == "onnx":
        require_module("onnx2torch", "the onnx-gpu extra")
        cfg = SecondaryConfig(name="parts", kind="detector", model=str(export_blob_onnx(tmp_path / "b.onnx")))
    else:
        cfg = SecondaryConfig(name="parts", kind="detector", model=str(save_blob_detector(tmp_path / "b.ts", family)),
                              labels=list(LABELS), input_size=[128, 128])
    stage = CascadeStage([cfg])
    stage.load("cuda:0", CLASS_NAMES)
    result = _result()
    stage.cut(torch.from_numpy(_frame()[None]).cuda(), [0], [result])
    (done,) = stage.process("cam", [result])
    assert done.detections.attributes is not None
    by_name = dict(zip(PARENTS, done.detections.attributes, strict=True))
    assert by_name["tiny"] == {}
    for name, want in EXPECTED.items():
        got = by_name[name]["parts"]
        assert [c["label"] for c in got] == [lab for lab, _, _ in want], name
        for child, (_, score, box) in zip(got, want, strict=True):
            assert child["score"] == pytest.approx(score, abs=2e-3)
            np.testing.assert_allclose(child["box"], box, atol=1.0, err_msg=name)
    assert stage.report()["models"]["parts"]["device"].startswith("cuda")


def test_gpu_detector_job_gives_the_cpu_paths_children(files: tuple[Path, Path], tmp_path: Path) -> None:
    """A whole job with a classifier and a detector secondary on NVDEC frames: per matched
    detection (same class, boxes within 2 px) the same children, boxes within 2 px."""
    clip, colour = files
    det = save_blob_detector(tmp_path / "blob.ts")
    secondary = [{"name": "colour", "model": str(colour), "labels": list(COLOURS), "input_size": [24, 24]},
                 {"name": "parts", "kind": "detector", "model": str(det), "labels": list(LABELS),
                  "input_size": [64, 64]}]

    def run(device: str, out: Path) -> tuple[list[FrameResult], runner.FileJob]:
        raw: dict[str, Any] = {"sources": [str(clip)], "engine": {"device": device}, "secondary": secondary,
                               "sinks": [{"type": "jsonl", "path": str(out / "d.jsonl")}]}
        job = runner.FileJob(parse_config(raw), show_progress=False)
        results = sorted((r for b in job.batches() for r in b), key=lambda r: r.frame.frame_index)
        assert job.summary.ok, job.summary.to_text()
        return results, job

    gpu, job = run("cuda", tmp_path / "g")
    cpu, _ = run("cpu", tmp_path / "c")
    assert job.summary.decoders == {"dali-gpu": 1}, job.summary.decoders
    report = job.summary.stages["CascadeStage"]["models"]["parts"]
    assert report["device"].startswith("cuda") and report["found"] > 0
    compared = agree = 0
    for g, c in zip(gpu, cpu, strict=True):
        dg, dc = g.detections, c.detections
        for j in range(len(dg)):
            near = np.flatnonzero((np.abs(dc.xyxy - dg.xyxy[j]).max(1) <= 2) & (dc.class_id == dg.class_id[j]))
            if not near.size or dg.attributes is None or dc.attributes is None:
                continue
            compared += 1
            a, b = dg.attributes[j]["parts"], dc.attributes[near[0]]["parts"]
            agree += [x["label"] for x in a] == [x["label"] for x in b] and all(
                np.abs(np.array(x["box"]) - np.array(y["box"])).max() <= 2 for x, y in zip(a, b, strict=True))
    assert compared > 100 and agree / compared >= 0.95, (agree, compared)
