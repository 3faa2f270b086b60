"""``fovea bench --quick --device cpu`` end to end on the CPU, the YOLOv8n model, clips and report math."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from benchmarks.cli import config_from_args
from benchmarks.clips import ClipSpec, default_specs, describe_clip, ensure_clips, loop_clip
from benchmarks.report import summarize_codec, targets_met, to_json, to_markdown
from benchmarks.results import BenchResults, Measurement
from benchmarks.yolov8n import NUM_PARAMS, Detect, build_yolov8n, calibrate, export_torchscript, fuse
from pipelines.cli import build_parser, main
from streams.errors import ConfigError

GPU_ONLY = {"decode", "source", "pyav_fp16", "dali_legacy"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, float]:
    out = tmp_path_factory.mktemp("bench-out")
    clips = tmp_path_factory.mktemp("bench-clips")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: threads only contend on a shared machine
    t0 = time.monotonic()
    try:
        code = main(["--log-level", "WARNING", "bench", "--quick", "--device", "cpu", "--out", str(out),
                     "--clips", str(clips)])
    finally:
        torch.set_num_threads(threads)
    return code, out, time.monotonic() - t0


def test_quick_bench_writes_the_report(quick_run: tuple[int, Path, float]) -> None:
    code, out, secs = quick_run
    assert code == 0
    assert secs < 60, f"the quick benchmark took {secs:.0f} s"
    assert (out / "bench.json").is_file() and (out / "bench.md").is_file()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "bench.md").read_text()
    assert "## H.264" in md and "## HEVC" in md and "Fovea end to end" in md
    doc = json.loads((out / "bench.json").read_text())
    assert {"environment", "config", "clips", "workload", "measurements", "summary", "targets"} <= set(doc)
    assert doc["environment"]["torch"] == torch.__version__
    assert doc["config"]["quick"] is True and doc["config"]["device"] == "cpu"


def test_quick_bench_accounts_for_every_frame(quick_run: tuple[int, Path, float]) -> None:
    _, out, _ = quick_run
    results = BenchResults.from_dict(json.loads((out / "bench.json").read_text()))
    assert set(results.codecs) == {"h264", "hevc"}
    for codec in ("h264", "hevc"):
        clip_frames = sum(int(c["frames"]) for c in results.clips[codec])
        assert clip_frames == sum(describe_clip(c["path"]).frames for c in results.clips[codec])
        e2e = results.get("e2e", codec)
        assert e2e is not None and e2e.ok, e2e
        assert e2e.frames == clip_frames == results.workload[codec]["frames"]
        assert e2e.extra["jsonl_records"] == clip_frames and e2e.extra["frames_ok"] is True
        assert e2e.fps is not None and e2e.fps > 0
        first, finished = e2e.extra["session_first_batch_s"], e2e.extra["session_finished_s"]
        assert 0 <= first[0] <= first[1] <= finished[1] and 0 < e2e.extra["session_frames"][1] <= clip_frames
        base = results.get("pyav_fp32", codec)
        assert base is not None and base.ok and base.frames > 0
        for name in GPU_ONLY:
            m = results.get(name, codec)
            assert m is not None and not m.ok and m.skipped and "CUDA GPU" in m.skipped, (name, m)
    engine = results.get("engine", None)
    assert engine is not None and engine.ok and engine.frames > 0
    assert engine.extra["with_postprocess_fps"] > 0
    assert not results.errors


def test_yolov8n_architecture(tmp_path: Path) -> None:
    model = build_yolov8n()
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMS  # 3.16 M, as Ultralytics' yolov8n
    assert model.detect.no == 144 and model.detect.anchors.shape == (2, 8400)
    with torch.inference_mode():
        y = model(torch.rand(1, 3, 640, 640))
    assert y.shape == (1, 84, 8400)
    assert bool(((y[:, 4:] >= 0) & (y[:, 4:] <= 1)).all()) and bool((y[:, 2:4] > 0).all())
    # anchors: cell centres in pixels, level by level (80x80 at stride 8 first)
    assert torch.allclose(model.detect.anchors[:, :2].T * 8, torch.tensor([[4.0, 4.0], [12.0, 4.0]]))


def _ultralytics_head(d: Detect, feats: list[torch.Tensor]) -> torch.Tensor:
    """Ultralytics' ``Detect`` eval path, written as it is there (flatten, cat, DFL conv)."""
    xs = [torch.cat((d.cv2[i](f), d.cv3[i](f)), 1) for i, f in enumerate(feats)]
    b = xs[0].shape[0]
    y = torch.cat([xi.flatten(2) for xi in xs], 2)
    box, cls = y.split((4 * d.reg_max, d.nc), 1)
    lt, rb = d.dfl(box.contiguous()).chunk(2, 1)
    x1y1, x2y2 = d.anchors.unsqueeze(0) - lt, d.anchors.unsqueeze(0) + rb
    dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * d.stride_t
    return torch.cat((dbox.view(b, 4, -1), cls.sigmoid()), 1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_yolov8n_head_matches_ultralytics_layout(channels_last: bool) -> None:
    model = build_yolov8n(input_size=(128, 128))
    frames = torch.rand(2, 3, 128, 128)
    calibrate(model, frames)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    feats: list[torch.Tensor] = []
    hook = model.detect.register_forward_pre_hook(lambda _m, inp: feats.append(inp[0]))
    with torch.inference_mode():
        got = model(frames.contiguous(memory_format=fmt))
        expected = _ultralytics_head(model.detect, feats[0])
    hook.remove()
    assert got.shape == expected.shape == (2, 84, 16 * 16 + 8 * 8 + 4 * 4)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-4)
    assert int((got[:, 4:] > 0.25).sum()) > 10  # calibrated: the comparison covers real candidates


def test_yolov8n_calibrate_fuse_export(tmp_path: Path) -> None:
    model = build_yolov8n(input_size=(128, 128))
    frames = torch.rand(4, 3, 128, 128)
    calibrate(model, frames, candidates_per_frame=30)
    with torch.inference_mode():
        before = model(frames)
    fused = fuse(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert sum(p.numel() for p in fused.parameters()) == 3_151_904  # Ultralytics' fused count
    with torch.inference_mode():
        after = fused(frames)
    assert torch.allclose(before, after, atol=1e-2, rtol=1e-3)
    scores = after[:, 4:]
    assert 30 <= int((scores > 0.25).sum()) <= 4 * 30 + 1  # about 30 candidates per frame overall
    assert int((scores[:, [0, 2, 7]] > 0.25).sum()) == int((scores > 0.25).sum())  # person/car/truck only
    path = export_torchscript(fused, tmp_path / "y.pt")
    loaded = torch.jit.load(str(path)).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        traced = loaded(frames[:2].contiguous(memory_format=torch.channels_last))
    assert torch.allclose(traced, after[:2], atol=1e-3, rtol=1e-4)
    half = loaded.half()
    assert half.detect.anchors.dtype == torch.float16  # buffers follow .half()
    with torch.inference_mode():  # and the trace holds no fp32 constant (the engine runs it in fp16)
        y16 = half(frames[:2].half().contiguous(memory_format=torch.channels_last))
    assert y16.dtype == torch.float16 and y16.shape == traced.shape


def _results(figures: dict[str, dict[str, float | None]]) -> BenchResults:
    r = BenchResults()
    for codec, named in figures.items():
        for name, fps in named.items():
            if name == "engine":
                r.add(Measurement("engine", None, fps=fps, frames=1000, seconds=1.0))
            elif fps is None:
                r.add(Measurement.skip(name, codec, "needs a CUDA GPU"))
            else:
                r.add(Measurement(name, codec, fps=fps, frames=int(fps), seconds=1.0))
    return r


def test_report_ratios_and_targets() -> None:
    r = _results({
        "h264": {"engine": 8000.0, "decode": 5000.0, "e2e": 4600.0, "pyav_fp32": 400.0, "pyav_fp16": 460.0,
                 "dali_legacy": 920.0},
        "hevc": {"decode": 7000.0, "e2e": 5600.0, "pyav_fp32": 560.0, "pyav_fp16": None, "dali_legacy": 700.0},
    })
    r.get("e2e", "h264").extra["steady_fps"] = 4800.0  # type: ignore[union-attr]
    h = summarize_codec(r, "h264")
    assert h.ceiling_fps == 5000.0 and h.ratio_ceiling == pytest.approx(0.92) and h.pass_ceiling is True
    assert h.steady_fps == 4800.0 and h.ratio_ceiling_steady == pytest.approx(0.96)
    assert h.fixed_seconds == pytest.approx(1.0 - 4600 / 4800)  # the 1 s job less its frames at 4,800 fps
    assert h.ratio_baseline == pytest.approx(11.5) and h.pass_baseline is True
    assert h.ratios["pyav_fp16"] == pytest.approx(10.0) and h.ratios["dali_legacy"] == pytest.approx(5.0)
    v = summarize_codec(r, "hevc")  # the engine ceiling (codec None) serves every codec
    assert v.ceiling_fps == 7000.0 and v.ratio_ceiling == pytest.approx(0.8) and v.pass_ceiling is False
    assert v.ratio_baseline == pytest.approx(10.0) and v.pass_baseline is True  # the target is inclusive
    assert v.ratios["pyav_fp16"] is None
    assert v.steady_fps is None and v.ratio_ceiling_steady is None  # not measured: n/a, not 0
    assert not targets_met(r)
    md = to_markdown(r)
    assert md.count("**PASS**") == 3 and md.count("**FAIL**") == 1 and "skipped: needs a CUDA GPU" in md
    assert "no start-up, no tail) / min(ceilings) | 0.960 | | |" in md
    assert "seconds beyond its frames at the steady rate (of 1.0 s) | 0.04 | | |" in md
    assert v.fixed_seconds is None  # no steady rate: n/a
    doc = json.loads(json.dumps(to_json(r)))
    assert doc["summary"]["h264"]["pass_ceiling"] is True and doc["summary"]["hevc"]["pass_ceiling"] is False
    again = BenchResults.from_dict(doc)
    assert summarize_codec(again, "h264") == h


def test_report_without_a_ceiling_is_not_a_pass() -> None:
    r = _results({"h264": {"engine": 8000.0, "decode": None, "e2e": 4600.0, "pyav_fp32": None}})
    s = summarize_codec(r, "h264")
    assert s.ceiling_fps is None and s.ratio_ceiling is None and s.pass_ceiling is None
    assert s.ratio_baseline is None and s.pass_baseline is None
    assert not targets_met(r)


def test_clips_cache_and_loop(tmp_path: Path) -> None:
    spec = ClipSpec("h264", frames=20, gop=8, width=128, height=96, bframes=2, motion="pan")
    (path,) = ensure_clips([spec], tmp_path)
    stamp = path.stat().st_mtime_ns
    assert ensure_clips([spec], tmp_path) == [path] and path.stat().st_mtime_ns == stamp  # reused
    info = describe_clip(path)
    assert (info.frames, info.gop, info.keyframes, info.reordered) == (20, 8, 3, True)
    looped = describe_clip(loop_clip(path, tmp_path / "x3.mp4", 3))
    assert (looped.frames, looped.keyframes, looped.gop) == (60, 9, 8)
    import av

    with av.open(str(tmp_path / "x3.mp4")) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert len(pts) == 60 and pts == sorted(pts) and len(set(pts)) == 60
    specs = default_specs("hevc", files=8)
    assert {s.gop for s in specs} == {30, 240} and len({s.frames for s in specs}) == 8
    assert all((s.width, s.height, s.bframes) == (1920, 1080, 3) for s in specs)


def test_bench_arguments() -> None:
    args = build_parser().parse_args(["bench", "--sessions", "1,7,10,14", "--skip", "dali-legacy,pyav_fp16",
                                      "--input-size", "320", "--codec", "hevc"])
    assert args.sessions == (1, 7, 10, 14) and args.skip == {"dali_legacy", "pyav_fp16"}
    assert args.input_size == (320, 320) and args.codec == "hevc" and args.func.__name__ == "cmd_bench"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--input-size", "300"])  # not a multiple of 32
    cfg = config_from_args(build_parser().parse_args(["bench", "--job-seconds", "90"])).resolved()
    assert (cfg.job_seconds, cfg.seconds) == (90.0, 12.0)
    default = config_from_args(build_parser().parse_args(["bench"])).resolved()
    assert (default.job_seconds, default.seconds) == (60.0, 12.0)  # a sustained end-to-end run by default
    with pytest.raises(ConfigError, match=r"--job-seconds: expected > 0, got 0\.0"):
        config_from_args(build_parser().parse_args(["bench", "--job-seconds", "0"]))


class _FakeReader:
    """Stands in for a DALI reader pipeline: 32-frame sequences, every third one padded after 20."""

    instances: ClassVar[list[_FakeReader]] = []

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.valid: list[int] = []
        _FakeReader.instances.append(self)

    def run(self, *stream: int) -> tuple[None, list[np.ndarray]]:
        nums = np.arange(32)
        if len(self.valid) % 3 == 2:
            nums[20:] = -1
        self.valid.append(int((nums >= 0).sum()))
        time.sleep(0.002)
        return None, [nums]


def test_decode_sweep_counts_frames_after_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import measure

    _FakeReader.instances = []
    monkeypatch.setattr(measure, "_reader_pipeline", lambda files, device_id, seq: _FakeReader(list(files)))
    files = [Path(f"/v/{i}.mp4") for i in range(5)]
    m = measure.measure_decode(files, [1, 3], seconds=0.2, device="cuda:0", codec="h264")
    assert m.ok and m.name == "decode" and m.extra["sessions"] in (1, 3)
    assert [s["sessions"] for s in m.extra["sweep"]] == [1, 3]
    warm = 2  # runs before the timed window
    counted = [sum(r.valid[warm:]) for r in _FakeReader.instances]
    assert [s["frames"] for s in m.extra["sweep"]] == [counted[0], sum(counted[1:])]
    built = [r.files for r in _FakeReader.instances]
    assert built[0] == [files[0]] and sorted(built[1:]) == [[files[0]], [files[1]], [files[2]]]  # one per session
    best = max(m.extra["sweep"], key=lambda s: s["fps"])
    assert m.frames == best["frames"] and m.fps == pytest.approx(best["frames"] / m.seconds)
    assert m.seconds >= 0.2  # the timed window lasts the seconds asked for (how much longer: load, not logic)


def test_decode_sweep_reports_a_failing_session(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import measure

    def build(files: list[Path], device_id: int, seq: int) -> _FakeReader:
        if files[0].name == "1.mp4":
            raise RuntimeError("cannot open 1.mp4")
        return _FakeReader(list(files))

    monkeypatch.setattr(measure, "_reader_pipeline", build)
    with pytest.raises(RuntimeError, match=r"1\.mp4"):
        measure.measure_decode([Path("/v/0.mp4"), Path("/v/1.mp4")], [2], 0.1, "cuda:0")


def test_engine_rate_runs_one_thread_per_stream() -> None:
    from benchmarks.measure import _engine_rate

    calls: dict[int, int] = {}

    def infer(k: int) -> None:
        calls[k] = calls.get(k, 0) + 1
        time.sleep(0.001)

    fps, frames, secs = _engine_rate(infer, [None, None, None], 3, 0.1, batch=4, device="cpu")
    assert set(calls) == {0, 1, 2} and calls[1] == calls[2] == calls[0] - 3  # 3 probe calls on stream 0
    assert frames == 3 * calls[1] * 4 and fps == pytest.approx(frames / secs)


def test_a_users_pt2_model_file_runs_in_the_bench(tmp_path: Path) -> None:
    """``--model file.pt2``: the bench's model loader and the eager baselines accept a
    torch.export module (which refuses ``.eval()``)."""
    from benchmarks.baselines import _eager
    from benchmarks.harness import BenchConfig, prepare_model
    from benchmarks.yolov8n import export_program

    path = export_program(fuse(build_yolov8n(input_size=(128, 128))), tmp_path / "user.pt2")
    cfg = BenchConfig(out=tmp_path / "o", model=str(path), input_size=(128, 128), device="cpu").resolved()
    bundle = prepare_model(cfg, None, tmp_path)
    assert bundle.config.path == str(path) and bundle.layout == "yolov8"
    assert bundle.eager is not None
    out = _eager(bundle.eager, "cpu", torch.float32)(torch.zeros(2, 3, 128, 128))
    assert tuple(out.shape) == (2, 84, (16 * 16) + (8 * 8) + (4 * 4))
