"""The example configs parse, and examples/demo.yaml runs the demo's job on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import av

from pipelines.runner import run_job
from streams.config import load_config
from streams.synthetic import SceneSpec, write_clip

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_every_example_parses() -> None:
    for path in EXAMPLES.glob("*.yaml"):
        load_config(path)


def test_demo_config_runs_like_fovea_demo(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "sample.mp4", SceneSpec(width=640, height=360, num_frames=24, seed=424_242))
    cfg = load_config(EXAMPLES / "demo.yaml", {"sources": [str(clip)], "out": str(tmp_path / "run"),
                                              "device": "cpu"})
    summary = run_job(cfg, show_progress=False)
    assert summary.ok and summary.frames == 24
    records = [json.loads(x) for x in (tmp_path / "run" / "detections.jsonl").read_text().splitlines()]
    assert len(records) == 24 and sum(len(r["detections"]) for r in records) > 24
    with av.open(str(tmp_path / "run" / "annotated.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 24
