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


def _ids(entries: list[SourceEntry]) -> dict[str, str]:
    """Source id -> the file's path relative to the current directory."""
    files, problems = expand_sources(entries)
    assert problems == []
    ids = {f.source_id: str(f.path) for f in files}
    assert len(ids) == len(files), f"two files share an id: {files}"
    return ids


def test_source_ids_are_paths_below_the_root_with_their_extension(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for f in ("clips/cam1/clip.mp4", "clips/cam2/clip.mp4", "clips/other/unique.mp4", "clips/top.mkv"):
        _touch(tmp_path / f)
    expected = {"cam1/clip.mp4": "clips/cam1/clip.mp4", "cam2/clip.mp4": "clips/cam2/clip.mp4",
                "other/unique.mp4": "clips/other/unique.mp4", "top.mkv": "clips/top.mkv"}
    # a directory and globs (recursive, or with a wildcard folder) share the root clips/
    assert _ids([SourceEntry(path="clips")]) == expected
    assert _ids([SourceEntry(path="clips/")]) == expected
    assert _ids([SourceEntry(path=str(tmp_path / "clips"))]) == {k: str(tmp_path / v) for k, v in expected.items()}
    assert _ids([SourceEntry(path="clips/**/*.mp4")]) == {k: v for k, v in expected.items() if k != "top.mkv"}
    assert _ids([SourceEntry(path="clips/*/clip.mp4")]) == {"cam1/clip.mp4": "clips/cam1/clip.mp4",
                                                            "cam2/clip.mp4": "clips/cam2/clip.mp4"}
    # the glob's fixed prefix is the folder before its first wildcard part
    assert _ids([SourceEntry(path="cl*/cam1/*.mp4")]) == {"clips/cam1/clip.mp4": "clips/cam1/clip.mp4"}
    # a single file: its name, whatever else the job holds
    assert _ids([SourceEntry(path="clips/other/unique.mp4")]) == {"unique.mp4": "clips/other/unique.mp4"}


def test_same_stem_with_different_extensions_are_two_sources(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _touch(tmp_path / "b" / "x.mp4")
    _touch(tmp_path / "b" / "x.webm")
    assert _ids([SourceEntry(path="b")]) == {"x.mp4": "b/x.mp4", "x.webm": "b/x.webm"}
    assert _ids([SourceEntry(path="b/x.mp4"), SourceEntry(path="b/x.webm")]) == {"x.mp4": "b/x.mp4",
                                                                                "x.webm": "b/x.webm"}


def test_same_names_in_different_folders_are_told_apart_by_their_roots(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for f in ("r1/a/x.mp4", "r2/a/x.mp4", "p/clips/y.mp4", "q/clips/y.mp4", "cam1/clip.mp4", "cam2/clip.mp4"):
        _touch(tmp_path / f)
    # a/x.mp4 under two roots: each gets its root's folder name in front
    assert _ids([SourceEntry(path="r1"), SourceEntry(path="r2")]) == {"r1/a/x.mp4": "r1/a/x.mp4",
                                                                      "r2/a/x.mp4": "r2/a/x.mp4"}
    # roots named alike (clips/): as many folders as it takes
    assert _ids([SourceEntry(path="p/clips"), SourceEntry(path="q/clips")]) == {
        "p/clips/y.mp4": "p/clips/y.mp4", "q/clips/y.mp4": "q/clips/y.mp4"}
    # two single files of one name: their folders
    assert _ids([SourceEntry(path="cam1/clip.mp4"), SourceEntry(path="cam2/clip.mp4")]) == {
        "cam1/clip.mp4": "cam1/clip.mp4", "cam2/clip.mp4": "cam2/clip.mp4"}
    # the order of the entries does not change which id a file gets
    assert _ids([SourceEntry(path="cam2/clip.mp4"), SourceEntry(path="cam1/clip.mp4")]) == {
        "cam2/clip.mp4": "cam2/clip.mp4", "cam1/clip.mp4": "cam1/clip.mp4"}


def test_symlinks_to_one_file_are_one_source(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _touch(tmp_path / "b" / "x.mp4")
    (tmp_path / "link.mp4").symlink_to(tmp_path / "b" / "x.mp4")
    (tmp_path / "b" / "again.mp4").symlink_to("x.mp4")
    assert _ids([SourceEntry(path="link.mp4"), SourceEntry(path="b")]) == {"link.mp4": "link.mp4"}
    assert _ids([SourceEntry(path="b"), SourceEntry(path="link.mp4")]) == {"again.mp4": "b/again.mp4"}


def test_list_file_ids_are_relative_to_its_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _touch(tmp_path / "lists" / "day1" / "a.mp4")
    _touch(tmp_path / "lists" / "day2" / "a.mp4")
    _touch(tmp_path / "elsewhere" / "b.mp4")
    (tmp_path / "lists" / "todo.txt").write_text(f"day1/a.mp4\nday2/\n{tmp_path / 'elsewhere' / 'b.mp4'}\n")
    files, problems = expand_sources([SourceEntry(list="lists/todo.txt")])
    assert problems == []
    assert [f.source_id for f in files] == ["day1/a.mp4", "day2/a.mp4", "b.mp4"]


def test_an_explicit_id_wins(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _touch(tmp_path / "b" / "x.mp4")
    _touch(tmp_path / "b" / "y.mp4")
    _touch(tmp_path / "c" / "x.mp4")
    # over the id the directory entry gave the same file first
    assert _ids([SourceEntry(path="b"), SourceEntry(path="b/x.mp4", id="door")]) == {"door": "b/x.mp4",
                                                                                    "y.mp4": "b/y.mp4"}
    # an entry with several files: the prefix of their ids
    assert _ids([SourceEntry(path="b", id="lobby")]) == {"lobby/x.mp4": "b/x.mp4", "lobby/y.mp4": "b/y.mp4"}
    # a derived id equal to an explicit one gives way
    assert _ids([SourceEntry(path="c/x.mp4", id="x.mp4"), SourceEntry(path="b/x.mp4")]) == {
        "x.mp4": "c/x.mp4", "b/x.mp4": "b/x.mp4"}
    with pytest.raises(ConfigError, match="'door' to different files"):
        expand_sources([SourceEntry(path="b/x.mp4", id="door"), SourceEntry(path="c/x.mp4", id="door")])
    # explicit ids taking every name the folders could give: the derived one is numbered too
    parts = (tmp_path / "b").parts[1:]
    taken = ["/".join([*parts[len(parts) - k:], "x.mp4"]) for k in range(len(parts) + 1)]
    entries = []
    for i, sid in enumerate(taken):
        entries.append(SourceEntry(path=str(_touch(tmp_path / f"e{i}" / "x.mp4")), id=sid))
    ids = _ids([*entries, SourceEntry(path="b/x.mp4")])
    assert ids[taken[-1] + "~2"] == "b/x.mp4" and len(ids) == len(taken) + 1


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


def test_every_relative_path_in_a_config_follows_its_folder(tmp_path: Path, monkeypatch) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    monkeypatch.chdir(tmp_path)  # not the config's folder
    (conf / "job.yaml").write_text("""
sources:
  - clips/
  - {list: todo.txt}
  - {path: cam3.mkv, id: cam3}
  - ~/home.mp4
  - /abs/clip.mp4
model: {path: m.onnx, class_names: names.txt}
engine:
  tensorrt: {cache_dir: plans, int8_calibration: [calib/a.mp4, /abs/b.mp4]}
sinks:
  - {type: jsonl, path: out/detections.jsonl}
  - {type: csv, path: /abs/out.csv}
  - {type: video, path: out/annotated/}
""")
    cfg = load_config("conf/job.yaml")
    assert [(s.path, s.list) for s in cfg.sources] == [
        (str(conf / "clips/"), None), (None, str(conf / "todo.txt")), (str(conf / "cam3.mkv"), None),
        ("~/home.mp4", None), ("/abs/clip.mp4", None)]
    assert cfg.model.path == str(conf / "m.onnx")
    assert cfg.model.class_names == str(conf / "names.txt")
    assert cfg.engine.tensorrt.cache_dir == str(conf / "plans")
    assert cfg.engine.tensorrt.int8_calibration == [str(conf / "calib/a.mp4"), "/abs/b.mp4"]
    assert [s.config.path for s in cfg.sinks] == [str(conf / "out/detections.jsonl"), "/abs/out.csv",
                                                  str(conf / "out/annotated/")]
    assert load_config(conf / "job.yaml").engine.tensorrt.cache_dir == str(conf / "plans")  # same from anywhere
    # the default plan cache stays in the home folder
    (conf / "plain.yaml").write_text("sources: [a.mp4]\n")
    assert load_config(conf / "plain.yaml").engine.tensorrt.cache_dir == "~/.cache/fovea/engines"


def test_command_line_paths_follow_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    conf = tmp_path / "conf"
    work = tmp_path / "work"
    conf.mkdir()
    work.mkdir()
    (conf / "job.yaml").write_text("sources: [clips/]\nmodel: {path: m.onnx}\n"
                                   "sinks: [{type: jsonl, path: out/d.jsonl}]\n")
    monkeypatch.chdir(work)
    cfg = load_config(conf / "job.yaml", {"sources": ["v/a.mp4", {"list": "l.txt"}, "rtsp://cam/1"],
                                          "model": "n.onnx", "out": "res"})
    assert [(s.path, s.list, s.uri) for s in cfg.sources] == [
        (str(work / "v/a.mp4"), None, None), (None, str(work / "l.txt"), None), (None, None, "rtsp://cam/1")]
    assert cfg.model.path == str(work / "n.onnx")
    assert [s.config.path for s in cfg.sinks] == [str(work / "res" / "d.jsonl")]
    assert load_config(conf / "job.yaml", {"model": "default"}).model.path == "default"


def test_relative_file_uris_follow_the_config_and_the_command_line(tmp_path: Path, monkeypatch) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    monkeypatch.chdir(tmp_path)
    (conf / "live.yaml").write_text("""
sources:
  - {uri: "file://../clips/a.mp4", id: a}
  - file:///abs/b.mp4
  - rtsp://user:pw@cam/1
""")
    cfg = load_config(conf / "live.yaml")
    assert [s.uri for s in cfg.sources] == [f"file://{tmp_path}/clips/a.mp4", "file:///abs/b.mp4",
                                           "rtsp://user:pw@cam/1"]
    cli = load_config(conf / "live.yaml", {"sources": ["file://clips/c.mp4"]})
    assert [s.uri for s in cli.sources] == [f"file://{tmp_path}/clips/c.mp4"]


def test_engine_inference_threads_and_the_deprecated_streams_key(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_config({"sources": ["a.mp4"], "engine": {"inference_threads": 3}}).engine.inference_threads == 3
    assert parse_config({"sources": ["a.mp4"]}).engine.inference_threads == 2
    with caplog.at_level("WARNING", logger="streams.config"):
        cfg = parse_config({"sources": ["a.mp4"], "engine": {"streams": 4}})
    assert cfg.engine.inference_threads == 4
    assert [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()] == [
        "config: engine.streams is deprecated, use engine.inference_threads (same meaning)"]
    with pytest.raises(ConfigError) as e:
        parse_config({"sources": ["a.mp4"], "engine": {"streams": 4, "inference_threads": 2}})
    assert e.value.key == "engine.streams"
    with pytest.raises(ConfigError) as e:
        parse_config({"sources": ["a.mp4"], "engine": {"inference_threads": 0}})
    assert e.value.key == "engine.inference_threads"
