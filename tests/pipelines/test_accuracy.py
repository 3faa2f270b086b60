"""The whole path puts the right boxes on the right frames: the bundled detector through
the full CPU pipeline on held-out synthetic clips (16:9, 4:3, portrait, empty first frames),
scored against exact ground truth, and an evaluation that catches shifted, scaled, flipped
or misattributed boxes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pipelines.evaluation import evaluate, load_ground_truth_dir, load_predictions_jsonl
from pipelines.runner import run_job
from streams.config import parse_config
from streams.synthetic import make_clips

SIZES = ((640, 360), (480, 360), (360, 640))  # 16:9, 4:3, portrait


def run_pipeline(clips: Path, out: Path, device: str) -> dict[str, list[dict[str, Any]]]:
    cfg = parse_config({
        "sources": [str(clips)],
        "model": {"path": "default"},
        "engine": {"device": device},
        "sinks": [{"type": "jsonl", "path": str(out / "detections.jsonl")}],
    })
    summary = run_job(cfg, show_progress=False)
    assert summary.ok, summary.to_text()
    return load_predictions_jsonl(out / "detections.jsonl")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("heldout")
    make_clips(d, 3, base_seed=10_500, sizes=SIZES, num_frames=40, empty_first_frames=(0, 0, 10))
    return d


@pytest.fixture(scope="module")
def cpu_predictions(heldout: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return run_pipeline(heldout, tmp_path_factory.mktemp("cpu"), "cpu")


def test_map_on_heldout_clips_through_the_cpu_pipeline(heldout: Path, cpu_predictions) -> None:
    report = evaluate(cpu_predictions, load_ground_truth_dir(heldout))
    assert report.map50 >= 0.90, report.to_markdown()
    assert report.map50_95 >= 0.6, report.to_markdown()
    assert report.recall >= 0.85 and report.precision >= 0.85, report.to_markdown()


def test_empty_first_frames_have_no_confident_detections(heldout: Path, cpu_predictions) -> None:
    gt = load_ground_truth_dir(heldout)
    sid = next(s for s, g in gt.items() if not g["frames"][0]["boxes"])
    early = [r for r in cpu_predictions[sid] if r["frame_index"] < 10]
    assert len(early) == 10
    assert sum(1 for r in early for d in r["detections"] if d["confidence"] >= 0.5) <= 1


def _perturb(preds: dict[str, list[dict[str, Any]]], gt: dict[str, Any], kind: str) -> dict[str, list[dict[str, Any]]]:
    out = copy.deepcopy(preds)
    for sid, records in out.items():
        w, h = gt[sid]["width"], gt[sid]["height"]
        if kind == "wrong_frame":  # every frame gets the detections of 4 frames later
            dets = [r["detections"] for r in records]
            for i, r in enumerate(records):
                r["detections"] = dets[min(i + 4, len(dets) - 1)]
            continue
        for r in records:
            for d in r["detections"]:
                x1, y1, x2, y2 = d["box"]
                if kind == "shift":
                    x1, x2, y1, y2 = x1 + 0.08 * w, x2 + 0.08 * w, y1 + 0.05 * h, y2 + 0.05 * h
                elif kind == "scale":
                    cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * 1.6, (y2 - y1) * 1.6
                    x1, x2, y1, y2 = cx - bw / 2, cx + bw / 2, cy - bh / 2, cy + bh / 2
                elif kind == "flip":
                    x1, x2 = w - x2, w - x1
                d["box"] = [x1, y1, x2, y2]
    return out


@pytest.mark.parametrize("kind", ["shift", "scale", "flip", "wrong_frame"])
def test_evaluation_catches_misplaced_boxes(heldout: Path, cpu_predictions, kind: str) -> None:
    gt = load_ground_truth_dir(heldout)
    good = evaluate(cpu_predictions, gt).map50
    bad = evaluate(_perturb(cpu_predictions, gt, kind), gt).map50
    assert bad < 0.6 * good, f"{kind}: mAP@0.5 {bad:.3f} vs {good:.3f}"


@pytest.mark.gpu
def test_gpu_pipeline_matches_cpu_and_ground_truth(heldout: Path, cpu_predictions, tmp_path: Path) -> None:
    gpu = run_pipeline(heldout, tmp_path, "cuda")
    report = evaluate(gpu, load_ground_truth_dir(heldout))
    assert report.map50 >= 0.90, report.to_markdown()
    pairs = close = 0
    for sid, records in cpu_predictions.items():
        by_frame = {r["frame_index"]: r for r in gpu[sid]}
        assert len(by_frame) == len(records)
        for r in records:
            a = [d for d in r["detections"] if d["confidence"] >= 0.5]
            b = [d for d in by_frame[r["frame_index"]]["detections"] if d["confidence"] >= 0.5]
            for da in a:  # nearest GPU box of the same class
                same = [db for db in b if db["class_id"] == da["class_id"]]
                pairs += 1
                if not same:
                    continue  # a class the GPU did not find there: counts against agreement
                err = min(max(abs(p - q) for p, q in zip(da["box"], db["box"], strict=True)) for db in same)
                close += err <= 2.0
    assert pairs > 50
    assert close >= 0.95 * pairs, f"{close}/{pairs} CPU boxes have a GPU box of the same class within 2 px"
