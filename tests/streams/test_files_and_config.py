"""Source expansion, config validation and the data model's shape checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.config import SourceEntry, load_config, parse_config
from streams.detections import Detections
from streams.errors import ConfigError, ShapeError
from streams.frames import FrameMeta
from streams.sources.files import expand_sources


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_files_globs_directories_and_lists(tmp_path: Path) -> None:
    a = _touch(tmp_path / "a.mp4")
    _touch(tmp_path / "d" / "b.mkv")
    _touch(tmp_path / "d" / "deep" / "c.webm")
    _touch(tmp_path / "d" / "notes.txt")  # not a video extension: ignored in directories
    _touch(tmp_path / "g" / "x.mp4")
    _touch(tmp_path / "g" / "y.mp4")
    lst = tmp_path / "lists" / "todo.txt"
    lst.parent.mkdir()
    lst.write_text("# comment\n\n../a.mp4\n../g/x.mp4\nmissing.mp4\n")
    files, problems = expand_sources([
        SourceEntry(path=str(a)),
        SourceEntry(path=str(tmp_path / "d")),
        SourceEntry(path=str(tmp_path / "g" / "*.mp4")),
        SourceEntry(list=str(lst)),
        SourceEntry(path=str(tmp_path / "nothing" / "*.mp4")),
        SourceEntry(uri="rtsp://cam/1"),  # streams are not files
    ])
    names = [f.path.name for f in files]
    assert names == ["a.mp4", "b.mkv", "c.webm", "x.mp4", "y.mp4"]  # duplicates from the list dropped
    reasons = {Path(p.source).name if "todo" not in p.source else p.source.split(":")[-1]: p.reason for p in problems}
    assert any("no such file" in r for r in reasons.values())
    assert any("matches no files" in r for r in reasons.values())
    assert any("missing.mp4" in p.source for p in problems)


def test_source_ids_are_unique(tmp_path: Path) -> None:
    _touch(tmp_path / "cam1" / "clip.mp4")
    _touch(tmp_path / "cam2" / "clip.mp4")
    files, _ = expand_sources([SourceEntry(path=str(tmp_path))])
    assert sorted(f.source_id for f in files) == ["cam1/clip", "cam2/clip"]


@pytest.mark.parametrize("raw,key", [
    ({"sources": []}, "sources"),
    ({"sources": ["a.mp4"], "model": {"input_size": [640]}}, "model.input_size"),
    ({"sources": ["a.mp4"], "engine": {"device": "gpu0"}}, "engine.device"),
    ({"sources": ["a.mp4"], "engine": {"tensorrt": {"workspace_mb": "big"}}}, "engine.tensorrt.workspace_mb"),
    ({"sources": ["a.mp4"], "preprocess": {"pad_value": 300}}, "preprocess.pad_value"),
    ({"sources": ["a.mp4"], "postprocess": {"conf_threshold": 1.5}}, "postprocess.conf_threshold"),
    ({"sources": ["a.mp4"], "postprocess": {"fused": "yes"}}, "postprocess.fused"),
    ({"sources": ["a.mp4"], "postprocess": {"frame_capacity": 0}}, "postprocess.frame_capacity"),
    ({"sources": ["a.mp4"], "decode": {"backend": "nvdec"}}, "decode.backend"),
    ({"sources": ["a.mp4"], "sinks": [{"type": "csv", "path": "x", "colour": 1}]}, "sinks[0].colour"),
    ({"sources": [{"path": "a", "uri": "rtsp://x"}]}, "sources[0]"),
    ({"sources": ["a.mp4"], "live": {"batch": {"policy": "newest"}}}, None),  # validated by fovea live
])
def test_bad_config_names_the_key(raw: dict, key: str | None) -> None:
    if key is None:
        parse_config(raw)
        from streams.live.config import parse_live_config

        with pytest.raises(ConfigError) as e:
            parse_live_config(raw["live"])
        assert e.value.key == "live.batch.policy"
        return
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert e.value.key == key, str(e.value)


def test_yaml_errors_and_relative_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [a.mp4\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "job.yaml"
    good.write_text("sources: [clips/]\nmodel: {path: m.onnx}\n")
    cfg = load_config(good, {"out": str(tmp_path / "o")})
    assert cfg.sources[0].path == str(tmp_path / "clips/")
    assert cfg.model.path == str(tmp_path / "m.onnx")
    assert [s.config.path for s in cfg.sinks] == [str(tmp_path / "o" / "detections.jsonl"),
                                                  str(tmp_path / "o" / "detections.csv")]


def test_detections_validate_shapes() -> None:
    with pytest.raises(ShapeError, match=r"expected shape \(N, 4\), got \(2, 5\)"):
        Detections(np.zeros((2, 5)), np.zeros(2), np.zeros(2))
    with pytest.raises(ShapeError, match=r"confidence: expected shape \(2,\), got \(3,\)"):
        Detections(np.zeros((2, 4)), np.zeros(3), np.zeros(2))
    d = Detections(np.array([[0, 0, 10, 10], [5, 5, 6, 6]]), np.array([0.9, 0.2]), np.array([1, 7]),
                   ("a", "b"))
    assert d.labels == ["b", "7"]
    assert len(d[d.confidence > 0.5]) == 1
    assert d.to_records()[0] == {"box": [0.0, 0.0, 10.0, 10.0], "confidence": 0.9, "class_id": 1, "label": "b"}


def test_frame_meta_pts_seconds_and_checks() -> None:
    m = FrameMeta("a", "/a.mp4", 3, 1536, (1, 12800), 320, 240)
    assert m.pts_seconds == pytest.approx(0.12)
    with pytest.raises(ValueError):
        FrameMeta("a", "/a.mp4", -1, 0, (1, 25), 320, 240)


def test_jsonl_lines_parse_back_to_the_frame_record_exactly() -> None:
    """One rounding rule for every sink: JSONL (``frame_json``) and MQTT/CSV (``frame_record``),
    including values at and next to rounding halves, negative zero and unlabelled classes."""
    import json

    from streams.frames import FrameResult
    from streams.sinks.records import frame_json, frame_record

    rng = np.random.default_rng(0)
    halves = np.array([0.125, 2.675, 1.005, 0.335, -0.001, 1e-9, 1919.995, 0.045])
    near = np.concatenate([halves, np.nextafter(halves, np.inf), np.nextafter(halves, -np.inf)])
    xyxy = np.concatenate([rng.uniform(-5, 1925, (200, 4)), np.resize(near, (len(near) // 4 * 4,)).reshape(-1, 4)])
    conf = np.concatenate([rng.uniform(0, 1, 200), np.resize(near, (len(xyxy) - 200,)) % 1])
    cls = rng.integers(0, 4, len(xyxy))
    det = Detections(xyxy=xyxy.astype(np.float32), confidence=conf.astype(np.float32), class_id=cls,
                     class_names=("a", "b", "c"))  # class 3 has no name
    meta = FrameMeta("cam/0", "rtsp://x/\"y\"", 7, 123457, (1, 90000), 1920, 1080)
    empty = Detections(xyxy=np.zeros((0, 4), np.float32), confidence=np.zeros(0, np.float32),
                       class_id=np.zeros(0, np.int64))
    for r in (FrameResult(meta, det), FrameResult(meta, empty)):
        assert json.loads(frame_json(r)) == frame_record(r)
