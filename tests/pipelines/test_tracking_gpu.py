"""Tracking on the GPU path (DALI/NVDEC decode, the engine on the device): the same tracks as the
CPU path, and, given the same detections, exactly the same ids.

The tracker itself runs on the host in both paths; what differs is where the detections come
from (FP16 on the device vs FP32 on the CPU, DALI's resize vs the host's). So the test checks
two things: replaying the GPU job's own detections through a fresh tracker stage gives its
ids back exactly, and the GPU and CPU jobs' tracks agree on a real tracking scene.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pipelines.runner as runner
from pipelines.graph import PerSourceStages
from pipelines.tracking import TrackerStage
from streams.config import load_config
from streams.detections import Detections
from streams.frames import FrameResult
from streams.synthetic import write_clip
from streams.synthetic.tracking_scene import tracking_scene
from streams.tracker_config import TrackerConfig

pytestmark = pytest.mark.gpu

TRACKER = TrackerConfig()


def _job(clip: Path, out: Path, device: str, monkeypatch: pytest.MonkeyPatch) -> list[FrameResult]:
    plan_for = runner.decode_plan

    def plan(*args: Any, **kwargs: Any) -> runner.DecodePlan:  # small segments over 3 sessions, out of order
        return replace(plan_for(*args, **kwargs), min_segment=30, batch=8)

    monkeypatch.setattr(runner, "decode_plan", plan)
    cfg = load_config(None, {"sources": [str(clip)], "device": device, "out": str(out)})
    cfg = replace(cfg, decode=replace(cfg.decode, sessions=3), tracker=TRACKER)
    job = runner.FileJob(cfg, show_progress=False)
    results = [r for batch in job.batches() for r in batch]
    assert job.summary.ok, job.summary.to_text()
    if device == "cuda":
        assert job.summary.decoders == {"dali-gpu": 1}, job.summary.decoders
    return sorted(results, key=lambda r: r.frame.frame_index)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = tracking_scene(5, num_frames=150)
    return write_clip(tmp_path_factory.mktemp("track_gpu") / "scene.mp4", replace(spec, gop=30))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def test_the_gpu_jobs_detections_replayed_give_the_same_track_ids(
        scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = _job(scene, tmp_path / "gpu", "cuda", monkeypatch)
    stripped = [FrameResult(r.frame, Detections(r.detections.xyxy, r.detections.confidence, r.detections.class_id,
                                                r.detections.class_names)) for r in gpu]
    with TrackerStage(TRACKER) as stage:
        graph = PerSourceStages([stage], [])
        replayed = graph.add(stripped) + graph.end(gpu[0].frame.source_id, "done")
    assert [r.frame.frame_index for r in replayed] == [r.frame.frame_index for r in gpu] == list(range(150))
    ids_gpu = [r.detections.track_id.tolist() for r in gpu]  # type: ignore[union-attr]
    ids_replayed = [r.detections.track_id.tolist() for r in replayed]  # type: ignore[union-attr]
    assert ids_replayed == ids_gpu
    assert sum(t >= 0 for ids in ids_gpu for t in ids) > 200  # tracks were made (the scene has several objects)


def test_gpu_and_cpu_jobs_give_the_same_tracks(scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Detections matched across the two jobs (same frame, same class, IoU >= 0.9): the GPU
    track of each CPU track is one and the same for >= 98 % of its matched detections, and
    boxes are within 2 px (median)."""
    gpu = _job(scene, tmp_path / "gpu", "cuda", monkeypatch)
    cpu = _job(scene, tmp_path / "cpu", "cpu", monkeypatch)
    pairs: list[tuple[int, int]] = []
    offsets: list[float] = []
    unmatched = 0
    for g, c in zip(gpu, cpu, strict=True):
        assert g.frame.frame_index == c.frame.frame_index
        dg, dc = g.detections, c.detections
        tg, tc = dg.track_id, dc.track_id
        assert tg is not None and tc is not None
        if len(dc) == 0 or len(dg) == 0:
            unmatched += len(dc) + len(dg)
            continue
        iou = _iou(dc.xyxy, dg.xyxy)
        iou[dc.class_id[:, None] != dg.class_id[None, :]] = 0
        for i in range(len(dc)):
            j = int(iou[i].argmax())
            if iou[i, j] < 0.9:
                unmatched += 1
                continue
            if tc[i] >= 0 or tg[j] >= 0:
                pairs.append((int(tc[i]), int(tg[j])))
            offsets.append(float(np.abs(dc.xyxy[i] - dg.xyxy[j]).max()))
    assert len(pairs) > 200
    by_cpu: dict[int, Counter[int]] = {}
    for a, b in pairs:
        by_cpu.setdefault(a, Counter())[b] += 1
    consistent = sum(c.most_common(1)[0][1] for c in by_cpu.values())
    assert consistent / len(pairs) >= 0.98, by_cpu
    gpu_of = {a: c.most_common(1)[0][0] for a, c in by_cpu.items() if a >= 0}
    assert len(set(gpu_of.values())) == len(gpu_of), f"two CPU tracks became one GPU track: {gpu_of}"
    assert float(np.median(offsets)) <= 2.0
    assert unmatched <= 0.02 * len(offsets), unmatched
