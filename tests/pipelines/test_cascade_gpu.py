"""Cascades on the GPU path: crops cut from DALI's full-size NVDEC frames on the device give the
same attributes as the CPU path, with and without a tracker's reinfer interval."""

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
