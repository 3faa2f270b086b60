"""Lazy imports, missing-dependency messages, ``fovea build-engine`` and the run path's
:func:`engines.tensorrt.open_tensorrt_engine`.

Where a test needs TensorRT it uses :class:`trt_standin.FakeTensorRT`, a recording
stand-in for the ``tensorrt`` module (TensorRT cannot be installed here); the
``no_trt`` fixture makes ``import tensorrt`` fail as on a machine without it.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from engines.tensorrt import load_or_build, open_tensorrt_engine
from engines.tensorrt._cuda import device_index
from engines.tensorrt._imports import (
    import_pycuda_driver,
    import_tensorrt,
    trt_logger,
)
from engines.tensorrt.builder import BuildSpec, EfficientNMSOptions, build_engine
from engines.tensorrt.cache import build_cached_plan
from engines.tensorrt.runtime import TensorRTEngine
from pipelines.build_engine_cli import add_parser, build_engine_command, build_spec, main
from streams.config import EngineConfig, PostprocessConfig, PreprocessConfig, TensorRTConfig
from streams.errors import ConfigError, EngineError, MissingDependencyError
from tests.engines.tensorrt.trt_standin import (
    PLAN_MAGIC,
    CpuCuda,
    FakeTensorRT,
    MemoryPoolType,
    Severity,
    gpu,
    write_detector_onnx,
)

TRT_HINT = "pip install tensorrt --extra-index-url https://pypi.nvidia.com"
REPO = Path(__file__).resolve().parents[3]


def test_importing_the_package_imports_neither_tensorrt_nor_pycuda() -> None:
    code = (
        "import sys\n"
        "import engines.tensorrt, engines.tensorrt.builder, engines.tensorrt.cache\n"
        "import engines.tensorrt.calibrator, engines.tensorrt.nms_surgery\n"
        "import engines.tensorrt.runtime, pipelines.build_engine_cli\n"
        "bad = [m for m in ('tensorrt', 'pycuda', 'pycuda.driver', 'av') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_missing_tensorrt_message(no_trt: None) -> None:
    with pytest.raises(MissingDependencyError) as info:
        import_tensorrt("Building a TensorRT engine")
    msg = str(info.value)
    assert msg == (
        "Building a TensorRT engine needs the 'tensorrt' package, which is not installed: "
        + TRT_HINT
    )
    assert "\n" not in msg and info.value.package == "tensorrt"


def test_missing_pycuda_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(MissingDependencyError, match=r"'pycuda' package.*: pip install pycuda$"):
        import_pycuda_driver()


def test_every_entry_point_reports_missing_tensorrt(
    no_trt: None, detector: Path, tmp_path: Path
) -> None:
    spec = BuildSpec()
    calls = [
        lambda: build_engine(detector, spec),
        lambda: build_cached_plan(detector, spec, tmp_path, gpu_query=gpu()),
        lambda: load_or_build(detector, spec, tmp_path, gpu_query=gpu()),
        lambda: TensorRTEngine(b"plan"),
    ]
    for call in calls:
        with pytest.raises(MissingDependencyError, match=TRT_HINT):
            call()
    assert not list(tmp_path.glob("*.plan"))


def test_cli_without_tensorrt_prints_one_line_and_exits_3(
    no_trt: None, detector: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(detector), "--precision", "fp16"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("fovea build-engine: ")
    assert TRT_HINT in err


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fovea")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_subcommand_parses_every_option(tmp_path: Path) -> None:
    args = _cli(
        [
            "build-engine", "m.onnx", "--precision", "int8", "--batch", "1:8:16",
            "--input-size", "480x640", "--workspace-mb", "2048", "--calib", "a.mp4", "b.mp4",
            "--efficient-nms", "--cache-dir", str(tmp_path), "-o", "out.plan",
        ]
    )  # fmt: skip
    assert args.func is build_engine_command
    assert args.model == "m.onnx" and args.precision == "int8"
    assert args.batch == (1, 8, 16) and args.input_size == (480, 640)
    assert args.workspace_mb == 2048 and args.calib == ["a.mp4", "b.mp4"]
    assert args.efficient_nms and args.cache_dir == str(tmp_path) and args.output == "out.plan"


@pytest.mark.parametrize(
    "argv",
    [["--batch", "4:2:8"], ["--batch", "1:2"], ["--input-size", "640"], ["--precision", "fp8"]],
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _cli(["build-engine", "m.onnx", *argv])
    assert info.value.code == 2


def test_cli_without_a_gpu_library_names_pycuda(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # This machine's torch has no CUDA, so the GPU query falls back to pycuda, absent too.
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main([str(detector), "--cache-dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install pycuda" in err


@pytest.fixture
def h200(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engines.tensorrt.cache.query_gpu", gpu("NVIDIA H200", (9, 0)))


def test_cli_builds_caches_and_copies_the_plan(
    fake_trt: FakeTensorRT,
    h200: None,
    detector: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out" / "det.plan"
    argv = [
        str(detector),
        "--batch",
        "1:2:4",
        "--efficient-nms",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    assert main([*argv, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes().startswith(PLAN_MAGIC)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["fields"]["batch"] == [1, 2, 4]
    assert sidecar["fields"]["efficient_nms"]["max_output_boxes"] == 300
    assert fake_trt.last_config.profiles[0].shapes["images"][2] == (4, 3, 64, 64)
    # the second run reuses the cached plan and prints its path
    assert main(argv) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.parent == tmp_path / "c" and printed.suffix == ".plan"
    assert fake_trt.build_count == 1


def test_cli_reports_fovea_errors_in_one_line(
    fake_trt: FakeTensorRT,
    h200: None,
    detector: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main([str(detector), "--input-size", "320x320", "--cache-dir", str(tmp_path)]) == 4
    )  # engine error
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fixed at H=64" in err
    fake_trt.unsupported_ops = {"Conv"}
    assert main([str(detector), "--cache-dir", str(tmp_path)]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'head' (op Conv)" in err


def test_cli_int8_calibration_videos_must_exist(
    fake_trt: FakeTensorRT,
    h200: None,
    detector: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [str(detector), "--precision", "int8", "--calib", str(tmp_path / "missing.mp4")]
    assert main([*argv, "--cache-dir", str(tmp_path)]) == 2  # config error
    assert "engine.tensorrt.int8_calibration: no such video file" in capsys.readouterr().err


def test_tensorrt_messages_go_to_logging(
    fake_trt: FakeTensorRT, caplog: pytest.LogCaptureFixture
) -> None:
    logger = trt_logger(fake_trt)
    assert trt_logger(fake_trt) is logger  # one per process (per tensorrt module)
    assert fake_trt.ILogger in type(logger).__mro__
    with caplog.at_level(logging.DEBUG, logger="fovea.tensorrt"):
        logger.log(Severity.ERROR, "bad thing")
        logger.log(Severity.WARNING, "odd thing")
        logger.log(Severity.VERBOSE, "detail")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels == [
        (logging.ERROR, "TensorRT: bad thing"),
        (logging.WARNING, "TensorRT: odd thing"),
        (logging.DEBUG, "TensorRT: detail"),
    ]


def test_cli_bad_device_is_a_config_error(
    fake_trt: FakeTensorRT, h200: None, detector: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(detector), "--device", "gpu0"]) == 2
    assert "--device: expected cuda or cuda:N, got 'gpu0'" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "index"), [("cuda", 0), ("cuda:0", 0), ("cuda:3", 3), ("2", 2)])
def test_device_index(text: str, index: int) -> None:
    assert device_index(text) == index


def test_open_tensorrt_engine_from_the_job_config(
    fake_trt: FakeTensorRT, h200: None, detector: Path, tmp_path: Path
) -> None:
    cfg = EngineConfig(
        precision="fp16",
        batch_size=4,
        tensorrt=TensorRTConfig(cache_dir=str(tmp_path), efficient_nms=True, workspace_mb=64),
    )
    post = PostprocessConfig(conf_threshold=0.5, max_detections=20)
    engine = open_tensorrt_engine(
        detector, cfg, "cuda:0", (64, 64), postprocess=post, cuda=CpuCuda()
    )
    assert engine.max_batch_size == 4
    assert [o.name for o in engine.outputs] == [
        "num_dets",
        "det_boxes",
        "det_scores",
        "det_classes",
    ]
    assert engine.outputs[1].shape == (None, 20, 4)
    config = fake_trt.last_config
    assert config.profiles[0].shapes["images"] == ((1, 3, 64, 64), (4, 3, 64, 64), (4, 3, 64, 64))
    assert config.pool_limits[MemoryPoolType.WORKSPACE] == 64 << 20
    assert len(list(tmp_path.glob("det-*.plan"))) == 1


def test_run_path_lowers_fp16_to_fp32_on_tensorrt_11(
    monkeypatch: pytest.MonkeyPatch, h200: None, detector: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    trt = FakeTensorRT("11.4.0.106")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cfg = EngineConfig(precision="fp16", tensorrt=TensorRTConfig(cache_dir=str(tmp_path)))
    with caplog.at_level(logging.WARNING):
        open_tensorrt_engine(detector, cfg, "cuda:0", (64, 64), cuda=CpuCuda())
    assert trt.build_count == 1
    assert "building an FP32 engine" in caplog.text
    sidecar = json.loads(next(tmp_path.glob("det-*.json")).read_text())
    assert sidecar["fields"]["precision"] == "fp32"  # the key says what was built


def _spec_of_run_path(monkeypatch: pytest.MonkeyPatch, *args: object, **kwargs: object) -> BuildSpec:
    """The BuildSpec open_tensorrt_engine hands the cache (load_or_build stubbed out)."""
    seen: list[BuildSpec] = []
    monkeypatch.setattr("engines.tensorrt.load_or_build", lambda path, spec, *a, **k: seen.append(spec))
    open_tensorrt_engine(*args, **kwargs)  # type: ignore[arg-type]
    (spec,) = seen
    return spec


def test_the_run_path_makes_the_spec_from_the_job_config(
    fake_trt: FakeTensorRT, detector: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = EngineConfig(precision="fp32", batch_size=12,
                          tensorrt=TensorRTConfig(workspace_mb=512, efficient_nms=True))
    post = PostprocessConfig(conf_threshold=0.4, iou_threshold=0.6, max_detections=100, class_agnostic=True)
    spec = _spec_of_run_path(monkeypatch, detector, engine, "cuda:1", (480, 640), postprocess=post)
    assert spec == BuildSpec(
        precision="fp32", batch=(1, 12, 12), input_shape=(3, 480, 640), workspace_bytes=512 << 20,
        efficient_nms=EfficientNMSOptions(score_threshold=0.4, iou_threshold=0.6, max_output_boxes=100,
                                          class_agnostic=True),
        device_index=1,
    )
    explicit = _spec_of_run_path(monkeypatch, detector, EngineConfig(tensorrt=TensorRTConfig(batch=(2, 4, 32))),
                                 "cuda:0")
    assert explicit.batch == (2, 4, 32)
    assert explicit.efficient_nms is None and explicit.input_shape is None


def test_the_run_path_profiles_the_rectangles_of_a_dynamic_shape_export(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dynamic-H/W export gets a profile over every rectangle canvas up to the input size
    (from the stride its metadata gives, else 32); a static model, ``canvas: square`` or a
    stretching config keep H and W fixed."""
    from tests.engines.bad_models import with_metadata

    dyn = write_detector_onnx(tmp_path / "dyn.onnx", hw=("H", "W"))
    engine = EngineConfig()
    auto = PreprocessConfig()

    def min_hw(model: Path, size: tuple[int, int], pre: PreprocessConfig | None) -> tuple[int, int] | None:
        return _spec_of_run_path(monkeypatch, model, engine, "cuda:0", size, preprocess=pre).min_hw

    assert min_hw(dyn, (320, 320), auto) == (32, 32)
    assert min_hw(dyn, (330, 300), auto) == (10, 12)  # each side congruent to the size modulo 32
    assert min_hw(dyn, (320, 320), PreprocessConfig(canvas="square")) is None
    assert min_hw(dyn, (320, 320), PreprocessConfig(resize="stretch")) is None
    assert min_hw(dyn, (320, 320), None) is None
    assert min_hw(detector, (64, 64), auto) is None
    stride64 = with_metadata(write_detector_onnx(tmp_path / "s64.onnx", hw=("H", "W")), stride="64")
    assert min_hw(stride64, (320, 320), auto) == (64, 64)
    rtdetr = with_metadata(write_detector_onnx(tmp_path / "rtdetr.onnx", hw=("H", "W")), head="RTDETRDecoder")
    assert min_hw(rtdetr, (320, 320), auto) is None  # Ultralytics stretches frames into RT-DETR


def _write_video(path: Path, frames: int = 6) -> Path:
    from tests.media import write_clip

    return write_clip(path, "libx264", frames=frames, width=96, height=64)


def test_the_run_path_calibrates_int8_through_the_callers_preprocessor(
    fake_trt: FakeTensorRT, h200: None, detector: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """engines does not import pipelines: the frame preprocessor comes from the caller."""
    import numpy as np

    from tests.engines.tensorrt.trt_standin import CpuStaging

    monkeypatch.setattr("engines.tensorrt.builder.default_staging", lambda index: CpuStaging())
    video = _write_video(tmp_path / "calib.mp4")
    sizes: list[tuple[int, int]] = []
    frames_seen: list[int] = []

    def preprocessor(size: tuple[int, int]):  # type: ignore[no-untyped-def]
        sizes.append(size)

        def prepare(frames):  # type: ignore[no-untyped-def]
            frames_seen.append(len(frames))
            return np.zeros((len(frames), 3, *size), np.float32)

        return prepare

    cfg = EngineConfig(precision="int8", batch_size=2,
                       tensorrt=TensorRTConfig(cache_dir=str(tmp_path / "c"), int8_calibration=[str(video)],
                                               calibration_frames=4))
    open_tensorrt_engine(detector, cfg, "cuda:0", (64, 64), preprocess=PreprocessConfig(),
                         frame_preprocessor=preprocessor, cuda=CpuCuda())
    assert sizes == [(64, 64)] and sum(frames_seen) == 4
    assert fake_trt.rec.builds[-1]["calibrated"] > 0
    sidecar = json.loads(next((tmp_path / "c").glob("det-*.json")).read_text())
    assert sidecar["fields"]["calibration_id"].startswith("videos-")
    with pytest.raises(EngineError, match="frame preprocessor"):
        open_tensorrt_engine(detector, cfg, "cuda:0", (64, 64), cuda=CpuCuda())
    missing = EngineConfig(precision="int8", tensorrt=TensorRTConfig(int8_calibration=[str(tmp_path / "nope.mp4")]))
    with pytest.raises(ConfigError, match="int8_calibration: no such video"):
        open_tensorrt_engine(detector, missing, "cuda:0", (64, 64), frame_preprocessor=preprocessor, cuda=CpuCuda())


def test_build_engine_spec_from_arguments(tmp_path: Path) -> None:
    """The command makes its BuildSpec from its arguments, calibrating with the pipeline's
    own preprocessing (pipelines.preprocess.HostPreprocessor)."""
    from pipelines.preprocess import HostPreprocessor

    video = _write_video(tmp_path / "calib.mp4", frames=3)
    args = _cli(["build-engine", "m.onnx", "--precision", "int8", "--batch", "1:8:16", "--input-size", "480x640",
                 "--workspace-mb", "64", "--calib", str(video), "--calib-frames", "3", "--efficient-nms",
                 "--conf-threshold", "0.3", "--device", "cuda:2"])
    spec = build_spec(args)
    assert (spec.precision, spec.batch, spec.input_shape) == ("int8", (1, 8, 16), (3, 480, 640))
    assert spec.workspace_bytes == 64 << 20 and spec.device_index == 2
    assert spec.efficient_nms == EfficientNMSOptions(score_threshold=0.3)
    assert spec.calibration_id is not None and spec.calibration_id.startswith("videos-")
    assert callable(spec.calibration)
    batches = list(spec.calibration((3, 32, 48)))
    expected = HostPreprocessor((32, 48), PreprocessConfig())
    from engines.tensorrt.calibrator import read_video_frames

    assert len(batches) == 1
    import numpy.testing as np_testing  # a dependency of the project: never a reason to skip
    np_testing.assert_array_equal(batches[0], expected(list(read_video_frames([video], 3))))
    fp16 = build_spec(_cli(["build-engine", "m.onnx", "--calib", str(video)]))
    assert fp16.calibration is None and fp16.calibration_id is None and fp16.batch == (1, 16, 16)
