"""Cascades on the CPU path: secondary models on crops of the bundled detector's detections.

The secondary model here is a hand-built TorchScript "colour" classifier (the mean colour of
a crop's centre, scored against the synthetic classes' colours): every class of the
synthetic scenes has its own colour, so its answer is known for every true detection, and
it proves the crops come from the right frame, place and scale. The bundled classifier has
its own tests (tests/engines/test_classifier.py) and its figures through this stage in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pipelines.runner as runner
from pipelines.cascade import CascadeStage
from streams.cascade_config import SecondaryConfig
from streams.config import load_config, parse_config
from streams.errors import ConfigError
from streams.frames import FrameResult
from streams.synthetic import CLASS_COLORS, CLASS_NAMES, SceneSpec, write_clip

COLOURS = ("red", "green", "blue", "yellow", "magenta")  # CLASS_COLORS in class order


class _Colour(torch.nn.Module):
    """Scores each colour by minus the distance of the crop centre's mean colour to it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("ref", torch.tensor(CLASS_COLORS, dtype=torch.float32) / 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        centre = x[:, :, h // 3: h - h // 3, w // 3: w - w // 3].mean(dim=(2, 3))  # [K, 3]
        return -torch.cdist(centre, self.ref) * 20.0


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secondary") / "colour.ts"
    torch.jit.save(torch.jit.script(_Colour()), str(path))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SceneSpec(width=640, height=360, num_frames=40, seed=11, background="plain", noise=2.0)
    return write_clip(tmp_path_factory.mktemp("cascade") / "scene.mp4", spec)


def _entry(model: Path, **kw: Any) -> dict[str, Any]:
    return {"name": "colour", "model": str(model), "labels": list(COLOURS), "input_size": [24, 24], **kw}


def _run(clip: Path, out: Path, secondary: list[dict[str, Any]], tracker: bool = False
         ) -> tuple[list[FrameResult], runner.FileJob]:
    raw: dict[str, Any] = {"sources": [str(clip)], "engine": {"device": "cpu"}, "secondary": secondary,
                           "sinks": [{"type": "jsonl", "path": str(out / "d.jsonl")}]}
    if tracker:
        raw["tracker"] = {"type": "bytetrack"}
    job = runner.FileJob(parse_config(raw), show_progress=False)
    results = [r for b in job.batches() for r in b]
    assert job.summary.ok, job.summary.to_text()
    return sorted(results, key=lambda r: r.frame.frame_index), job


def test_every_detection_gets_the_colour_of_its_class(scene: Path, colour_model: Path, tmp_path: Path) -> None:
    results, job = _run(scene, tmp_path, [_entry(colour_model)])
    got = [(int(c), a["colour"]) for r in results for c, a in zip(r.detections.class_id, r.detections.attributes or (),
                                                                      strict=True)]
    n_dets = sum(len(r.detections) for r in results)
    assert n_dets > 60 and len(got) == n_dets  # every detection of every frame was classified
    right = sum(COLOURS[cid] == label for cid, (label, _score) in got)
    assert right / len(got) >= 0.97, f"{right}/{len(got)}"
    assert all(0.0 < score <= 1.0 for _, (_, score) in got)
    report = job.summary.stages["CascadeStage"]
    assert report["models"]["colour"]["classified"] == n_dets
    assert report["peak_crop_bytes"] > 0
    # and the JSONL records carry it
    import json

    lines = [json.loads(s) for s in (tmp_path / "d.jsonl").read_text().splitlines() if s.startswith('{"source"')]
    attrs = [d["attributes"]["colour"] for rec in lines for d in rec["detections"]]
    assert len(attrs) == n_dets and {a[0] for a in attrs} <= set(COLOURS)


def test_classes_and_min_size_choose_what_is_classified(scene: Path, colour_model: Path, tmp_path: Path) -> None:
    results, job = _run(scene, tmp_path, [_entry(colour_model, classes=["cross"], min_size=40)])
    counts = job.summary.stages["CascadeStage"]["models"]["colour"]
    chosen = skipped_small = 0
    for r in results:
        d = r.detections
        side = np.minimum(d.xyxy[:, 2] - d.xyxy[:, 0], d.xyxy[:, 3] - d.xyxy[:, 1])
        for j in range(len(d)):
            has = bool(d.attributes and d.attributes[j])
            wanted = CLASS_NAMES[int(d.class_id[j])] == "cross"
            assert has == (wanted and side[j] >= 40), (r.frame.frame_index, j)
            chosen += has
            skipped_small += wanted and side[j] < 40
    assert chosen > 10 and skipped_small > 0
    assert counts["classified"] == chosen and counts["too_small"] == skipped_small


def test_with_a_tracker_a_track_is_classified_every_reinfer_interval(scene: Path, colour_model: Path,
                                                                     tmp_path: Path) -> None:
    results, job = _run(scene, tmp_path, [_entry(colour_model, reinfer_interval=10)], tracker=True)
    counts = job.summary.stages["CascadeStage"]["models"]["colour"]
    n_dets = sum(len(r.detections) for r in results)
    assert counts["classified"] + counts["reused"] == n_dets
    # expected: every untracked detection, and each track at its first frame and then at the
    # first frame at least 10 after its last classification
    expected = 0
    last: dict[int, int] = {}
    for r in results:
        d = r.detections
        assert d.track_id is not None and d.attributes is not None
        for j, tid in enumerate(d.track_id.tolist()):
            assert "colour" in d.attributes[j]
            if tid < 0:
                expected += 1
            elif tid not in last or r.frame.frame_index - last[tid] >= 10:
                expected += 1
                last[tid] = r.frame.frame_index
    assert len(last) >= 2 and counts["reused"] > 20
    assert counts["classified"] == expected


def test_a_class_the_primary_model_lacks_is_refused_before_any_work(scene: Path, colour_model: Path,
                                                                    tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"secondary\[0\]\.classes.*no class 'bus'"):
        _run(scene, tmp_path, [_entry(colour_model, classes=["bus"])])
    assert not (tmp_path / "d.jsonl").exists()


def test_labels_that_do_not_fit_the_model_are_refused(scene: Path, colour_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"secondary\[0\]\.labels.*3 labels.*\[1, 5\]"):
        _run(scene, tmp_path, [_entry(colour_model, labels=["a", "b", "c"])])


@pytest.mark.parametrize(("entry", "key"), [
    ({"name": "bad name", "model": "x.onnx"}, "secondary[0].name"),
    ({"name": "c", "model": "x.onnx", "reinfer_interval": 5}, "secondary[0].reinfer_interval"),
    ({"name": "c", "model": "x.onnx", "min_size": -1}, "secondary[0].min_size"),
    ({"name": "c", "model": "x.onnx", "input_size": [32]}, "secondary[0].input_size"),
    ({"name": "c", "model": "x.onnx", "std": [1, 0, 1]}, "secondary[0].std"),
    ({"name": "c", "model": "builtin:"}, "secondary[0].model"),
    ({"name": "c", "model": "x.onnx", "colour": 1}, "secondary[0].colour"),
])
def test_a_bad_secondary_entry_names_its_key(entry: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"sources": ["a.mp4"], "secondary": [entry]})
    assert e.value.key == key


def test_two_entries_with_one_name_are_refused() -> None:
    e = {"name": "c", "model": "x.onnx"}
    with pytest.raises(ConfigError) as err:
        parse_config({"sources": ["a.mp4"], "secondary": [e, e]})
    assert err.value.key == "secondary[1].name"


def test_model_paths_resolve_against_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("sources: [a.mp4]\nsecondary:\n  - {name: c, model: m/c.onnx, "
                                       "labels: m/labels.txt}\n")
    cfg = load_config(tmp_path / "job.yaml")
    assert cfg.secondary[0].model == str(tmp_path / "m" / "c.onnx")
    assert cfg.secondary[0].labels == str(tmp_path / "m" / "labels.txt")


def test_an_onnx_secondary_runs_on_the_cpu(scene: Path, tmp_path: Path) -> None:
    """The same colour model exported to ONNX (labels from its metadata, size from its input)."""
    import onnx

    path = tmp_path / "colour.onnx"
    torch.onnx.export(_Colour(), (torch.zeros(1, 3, 24, 24),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    m = onnx.load(str(path))
    m.metadata_props.add(key="names", value=str(dict(enumerate(COLOURS))))
    onnx.save(m, str(path))
    results, _ = _run(scene, tmp_path, [{"name": "colour", "model": str(path)}])
    got = [(int(c), a["colour"][0]) for r in results for c, a in zip(r.detections.class_id,
                                                                      r.detections.attributes or (), strict=True)]
    assert len(got) > 60
    assert sum(COLOURS[c] == label for c, label in got) / len(got) >= 0.97


def test_cut_before_load_is_an_error() -> None:
    stage = CascadeStage([SecondaryConfig(name="c", model="x")])
    assert stage.report()["peak_crop_bytes"] == 0
    with pytest.raises(RuntimeError, match="before load"):
        stage.cut(np.zeros((1, 8, 8, 3), np.uint8), [0], [])


def test_crops_of_frames_that_never_reach_the_stage_are_dropped_and_counted(colour_model: Path) -> None:
    """A gap (frames lost) and a source's end release the crops waiting for those frames."""
    from pipelines.stages import Gap, SourceEnd
    from streams.detections import Detections
    from streams.frames import FrameMeta

    stage = CascadeStage([SecondaryConfig(**_entry(colour_model))])  # type: ignore[arg-type]
    stage.load("cpu", CLASS_NAMES)
    dets = Detections(np.array([[2, 2, 12, 12], [4, 4, 20, 20]], np.float32), np.array([0.9, 0.8], np.float32),
                      np.array([0, 1], np.int64), CLASS_NAMES)
    results = [FrameResult(FrameMeta("cam", "cam", i, i, (1, 25), 32, 32), dets) for i in range(3)]
    stage.cut(np.zeros((3, 32, 32, 3), np.uint8), [0, 1, 2], results)
    assert stage.report()["peak_crop_bytes"] == 6 * 3 * 24 * 24 * 4
    assert stage.on_event(Gap("cam", (1,))) == []
    assert stage.report()["models"]["colour"]["dropped"] == 2
    (done,) = stage.process("cam", results[:1])  # frame 0 arrives and is classified
    attrs = done.detections.attributes
    assert attrs is not None and [sorted(a) for a in attrs] == [["colour"], ["colour"]]
    stage.on_event(SourceEnd("cam", "removed"))  # frame 2 never comes
    report = stage.report()["models"]["colour"]
    assert (report["classified"], report["dropped"]) == (2, 4)
    assert stage._pending == {} and stage._pending_bytes == 0


def test_cpu_only_secondary_keeps_the_config_entry(colour_model: Path) -> None:
    cfg = parse_config({"sources": ["a.mp4"], "secondary": [_entry(colour_model, device="cpu")]})
    assert cfg.secondary[0].device == "cpu"
    assert replace(cfg.secondary[0], reinfer_interval=3).reinfer_interval == 3


def test_the_demo_scores_the_bundled_cascade_against_the_truth(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``fovea demo``: the bundled pattern classifier through the whole pipeline (with the tracker's
    reinfer interval when the tracking extra is there), scored against the generator's truth."""
    import re

    from pipelines.cli import main

    assert main(["--log-level", "WARNING", "demo", "--out", str(tmp_path / "d"), "--frames", "90",
                 "--device", "cpu", "--no-progress"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("cascade 'pattern'"))
    m = re.search(r"accuracy (\d\.\d+) \((\d+)/(\d+) matched", line)
    assert m is not None, line
    assert float(m.group(1)) >= 0.95 and int(m.group(3)) > 100, line
