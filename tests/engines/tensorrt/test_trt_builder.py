"""The builder against a recording stand-in for TensorRT (which cannot be installed here).

:class:`trt_standin.FakeTensorRT` stands in for the ``tensorrt`` module and records the
calls Fovea makes: profile shapes, precision flags, memory-pool limit, timing cache,
calibrator, parser use. These tests check that Fovea drives TensorRT 10's API as
intended; they cannot check what TensorRT itself does with it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.tensorrt import builder
from engines.tensorrt.builder import BuildSpec, EfficientNMSOptions, build_engine
from streams.errors import ConfigError, EngineError, ShapeError
from tests.engines.tensorrt.trt_standin import (
    PLAN_MAGIC,
    BuilderFlag,
    CpuStaging,
    FakeTensorRT,
    MemoryPoolType,
    PreviewFeature,
    write_detector_onnx,
)


def _plan(data: bytes) -> dict:
    assert data.startswith(PLAN_MAGIC)
    return json.loads(data[len(PLAN_MAGIC) :])


def test_explicit_batch_network_and_profile_from_model_size(
    fake_trt: FakeTensorRT, detector: Path
) -> None:
    plan = build_engine(detector, BuildSpec(precision="fp16", batch=(1, 4, 8)))
    assert fake_trt.rec.network_flags == [0]
    assert fake_trt.rec.parses[0]["method"] == "parse_from_file"
    assert fake_trt.rec.parses[0]["path"] == str(detector)
    profiles = fake_trt.last_config.profiles
    assert len(profiles) == 1
    assert profiles[0].shapes == {"images": ((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))}
    assert _plan(plan)["input"]["max"] == [8, 3, 64, 64]
    assert fake_trt.last_config.preview == {PreviewFeature.PROFILE_SHARING_0806: True}


def test_input_size_from_spec_for_dynamic_hw_model(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    model = write_detector_onnx(tmp_path / "dyn.onnx", hw=("H", "W"))
    build_engine(model, BuildSpec(batch=(2, 2, 2), input_shape=(3, 320, 480)))
    lo, opt, hi = fake_trt.last_config.profiles[0].shapes["images"]
    assert lo == opt == hi == (2, 3, 320, 480)


def test_rect_profile_for_a_dynamic_shape_export(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    """Rectangle canvases up to the input size: H and W from min_hw up, tuned at the full size;
    the engine then takes a 192x320 batch and refuses one below the profile."""
    from engines.tensorrt.runtime import TensorRTEngine
    from tests.engines.tensorrt.trt_standin import CpuCuda

    model = write_detector_onnx(tmp_path / "dyn.onnx", hw=("H", "W"))
    plan = build_engine(model, BuildSpec(batch=(1, 4, 8), input_shape=(3, 320, 320), min_hw=(32, 32)))
    assert fake_trt.last_config.profiles[0].shapes["images"] == ((1, 3, 32, 32), (4, 3, 320, 320), (8, 3, 320, 320))
    engine = TensorRTEngine(plan, cuda=CpuCuda())
    assert engine.inputs[0].shape == (None, 3, None, None)
    engine.infer({"images": torch.rand(2, 3, 192, 320)})
    assert fake_trt.rec.contexts[-1].input_shapes["images"] == (2, 3, 192, 320)
    with pytest.raises(ShapeError, match=r"outside the engine's optimization profile: min \[1, 3, 32, 32\]"):
        engine.infer({"images": torch.rand(2, 3, 16, 320)})


def test_rect_profile_needs_dynamic_hw_within_the_size(fake_trt: FakeTensorRT, tmp_path: Path,
                                                       detector: Path) -> None:
    with pytest.raises(ShapeError, match=r"fixed H or W.*needs a dynamic-shape export"):
        build_engine(detector, BuildSpec(min_hw=(32, 32)))
    model = write_detector_onnx(tmp_path / "dyn.onnx", hw=("H", "W"))
    with pytest.raises(ShapeError, match=r"smallest input \[64, 32\] exceeds its size \[32, 32\]"):
        build_engine(model, BuildSpec(input_shape=(3, 32, 32), min_hw=(64, 32)))
    with pytest.raises(ConfigError, match="positive smallest"):
        BuildSpec(min_hw=(0, 32))
    assert fake_trt.build_count == 0


def test_dynamic_hw_without_size_is_a_shape_error(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    model = write_detector_onnx(tmp_path / "dyn.onnx", hw=("H", "W"))
    with pytest.raises(ShapeError, match=r"dynamic H.*input-size"):
        build_engine(model, BuildSpec())
    assert fake_trt.build_count == 0


def test_size_contradicting_a_static_model_is_a_shape_error(
    fake_trt: FakeTensorRT, detector: Path
) -> None:
    with pytest.raises(ShapeError, match=r"fixed at H=64.*640 was requested"):
        build_engine(detector, BuildSpec(input_shape=(3, 640, 640)))


def test_static_batch_model_needs_a_matching_profile(
    fake_trt: FakeTensorRT, tmp_path: Path
) -> None:
    model = write_detector_onnx(tmp_path / "b1.onnx", batch=1)
    with pytest.raises(ShapeError, match=r"fixed batch of 1.*1:1:1"):
        build_engine(model, BuildSpec(batch=(1, 4, 8)))
    build_engine(model, BuildSpec(batch=(1, 1, 1)))
    assert fake_trt.build_count == 1


@pytest.mark.parametrize("batch", [(4, 2, 8), (1, 9, 8), (0, 1, 1), (2, 1, 1)])
def test_batch_profile_must_be_ordered_and_positive(batch: tuple[int, int, int]) -> None:
    with pytest.raises(ConfigError, match=r"engine\.tensorrt\.batch"):
        BuildSpec(batch=batch)


def test_unknown_precision_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"engine.precision"):
        BuildSpec(precision="fp8")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("precision", "flags"),
    [("fp32", set()), ("fp16", {BuilderFlag.FP16}), ("int8", {BuilderFlag.FP16, BuilderFlag.INT8})],
)
def test_precision_flags(
    fake_trt: FakeTensorRT, tmp_path: Path, precision: str, flags: set
) -> None:
    model = write_detector_onnx(tmp_path / "m.onnx", qdq=precision == "int8")
    build_engine(model, BuildSpec(precision=precision))  # type: ignore[arg-type]
    assert fake_trt.last_config.flags == flags


def test_workspace_memory_pool_limit(fake_trt: FakeTensorRT, detector: Path) -> None:
    build_engine(detector, BuildSpec(workspace_bytes=123 << 20))
    assert fake_trt.last_config.pool_limits == {MemoryPoolType.WORKSPACE: 123 << 20}


def test_qdq_model_builds_int8_without_calibration(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    model = write_detector_onnx(tmp_path / "q.onnx", qdq=True)
    staging = CpuStaging()
    build_engine(
        model, BuildSpec(precision="int8", calibration=[np.zeros((1, 3, 64, 64))]), staging=staging
    )
    config = fake_trt.last_config
    assert BuilderFlag.INT8 in config.flags
    assert config.int8_calibrator is None
    assert config.calibration_profile is None
    assert staging.uploads == []


def test_implicit_int8_attaches_a_fed_calibrator_and_writes_its_cache(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "det.calib"
    # 5 + 6 + 1 samples rebatched to the opt batch of 4: three batches, nothing dropped.
    batches = [np.random.rand(n, 3, 64, 64).astype(np.float32) for n in (5, 6, 1)]
    staging = CpuStaging()
    spec = BuildSpec(precision="int8", batch=(1, 4, 8), calibration=batches)
    build_engine(detector, spec, staging=staging, calibration_cache=cache)

    config = fake_trt.last_config
    assert config.flags == {BuilderFlag.FP16, BuilderFlag.INT8}
    assert fake_trt.IInt8EntropyCalibrator2 in type(config.int8_calibrator).__mro__
    assert config.int8_calibrator.get_batch_size() == 1
    assert config.calibration_profile is not None
    assert config.calibration_profile.shapes == {"images": ((4, 3, 64, 64),) * 3}
    assert staging.uploads == [(4, 3, 64, 64)] * 3
    assert fake_trt.rec.calibration_batches == [b.data_ptr() for b in staging.buffers]
    assert staging.closed
    assert cache.read_bytes().startswith(b"TRT-8600-EntropyCalibration2")
    assert not list(tmp_path.glob(".*.tmp"))


def test_implicit_int8_reuses_the_calibration_cache(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "det.calib"
    cache.write_bytes(b"TRT-8600-EntropyCalibration2\n")
    fed = []

    def source(chw: tuple[int, int, int]) -> list[np.ndarray]:
        fed.append(chw)
        return [np.zeros((4, *chw), np.float32)]

    staging = CpuStaging()
    spec = BuildSpec(precision="int8", batch=(1, 4, 8), calibration=source)
    build_engine(detector, spec, staging=staging, calibration_cache=cache)
    assert fake_trt.rec.builds[-1]["calibrated"] == 0  # scales from the cache
    assert staging.uploads == []
    assert fed == [(3, 64, 64)]  # the callable gets the resolved input size


def test_implicit_int8_with_only_a_calibration_cache(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "det.calib"
    cache.write_bytes(b"TRT-8600-EntropyCalibration2\n")
    build_engine(detector, BuildSpec(precision="int8"), calibration_cache=cache)
    assert fake_trt.last_config.int8_calibrator is not None


def test_implicit_int8_without_data_or_cache_fails(fake_trt: FakeTensorRT, detector: Path) -> None:
    with pytest.raises(EngineError, match=r"calibration data.*Q/DQ"):
        build_engine(detector, BuildSpec(precision="int8"))
    assert fake_trt.build_count == 0


@pytest.mark.parametrize(
    ("version", "implicit"), [("11.0.0.1", None), ("11.0.0.1", True), ("10.8.0.43", False)]
)
def test_no_implicit_int8_explains_explicit_qdq(
    monkeypatch: pytest.MonkeyPatch, detector: Path, version: str, implicit: bool | None
) -> None:
    trt = FakeTensorRT(version, implicit_int8=implicit)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    spec = BuildSpec(precision="int8", calibration=[np.zeros((1, 3, 64, 64), np.float32)])
    with pytest.raises(EngineError, match=r"no implicit INT8.*QuantizeLinear/DequantizeLinear"):
        build_engine(detector, spec, staging=CpuStaging())
    assert trt.build_count == 0


def test_calibration_batches_of_the_wrong_size_are_rejected(
    fake_trt: FakeTensorRT, detector: Path
) -> None:
    spec = BuildSpec(precision="int8", calibration=[np.zeros((2, 3, 32, 32), np.float32)])
    with pytest.raises(ShapeError, match=r"expected \[N, 3, 64, 64\]"):
        build_engine(detector, spec, staging=CpuStaging())


def test_timing_cache_is_loaded_from_disk_and_written_back(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    timing = tmp_path / "timing.cache"
    build_engine(detector, BuildSpec(), timing_cache=timing)
    first = timing.read_bytes()
    assert fake_trt.rec.timing_caches_created == [b""]
    assert fake_trt.rec.set_timing_cache_calls == [(b"", False)]  # ignore_mismatch=False
    assert first == b"TC1\ntactics-of-build-1\n"

    build_engine(detector, BuildSpec(precision="fp32"), timing_cache=timing)
    assert fake_trt.rec.timing_caches_created[-1] == first  # created from the persisted bytes
    assert fake_trt.rec.set_timing_cache_calls[-1] == (first, False)
    assert timing.read_bytes() == b"TC1\ntactics-of-build-1\ntactics-of-build-2\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_timing_cache_written_meanwhile_by_another_builder_is_merged(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"TC1\nold\n")

    def another_builder_saves() -> None:  # while ours builds
        timing.write_bytes(b"TC1\nold\nfrom-elsewhere\n")

    fake_trt.on_build = another_builder_saves
    build_engine(detector, BuildSpec(), timing_cache=timing)
    assert timing.read_bytes().decode().splitlines() == [
        "TC1",
        "old",
        "tactics-of-build-1",
        "from-elsewhere",
    ]


def test_mismatched_timing_cache_starts_afresh(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"TC1\nfrom-another-gpu\n")
    fake_trt.reject_timing_cache = True
    build_engine(detector, BuildSpec(), timing_cache=timing)
    assert fake_trt.rec.timing_caches_created == [b"TC1\nfrom-another-gpu\n", b""]
    assert timing.read_bytes() == b"TC1\ntactics-of-build-1\n"


def test_no_timing_cache_when_not_asked(fake_trt: FakeTensorRT, detector: Path) -> None:
    build_engine(detector, BuildSpec())
    assert fake_trt.rec.timing_caches_created == []


def test_parser_errors_name_every_node_and_reason(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    model = write_detector_onnx(tmp_path / "m.onnx", op_name="odd_conv")
    fake_trt.unsupported_ops = {"Conv", "Sigmoid"}
    with pytest.raises(EngineError) as info:
        build_engine(model, BuildSpec())
    msg = str(info.value)
    assert f"cannot parse {model}" in msg
    assert (
        "node 0 'odd_conv' (op Conv): No importer registered for op: Conv [UNSUPPORTED_NODE]" in msg
    )
    assert (
        "node 2 'act' (op Sigmoid): No importer registered for op: Sigmoid [UNSUPPORTED_NODE]"
        in msg
    )
    assert fake_trt.build_count == 0


def test_failed_build_is_an_engine_error(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    fake_trt.fail_build = True
    timing = tmp_path / "timing.cache"
    with pytest.raises(EngineError, match=r"could not build an engine from .*fp16, batch 1:1:1"):
        build_engine(detector, BuildSpec(), timing_cache=timing)
    assert not timing.exists()


def test_efficient_nms_parses_the_surgered_graph(fake_trt: FakeTensorRT, detector: Path) -> None:
    opts = EfficientNMSOptions(score_threshold=0.3, iou_threshold=0.5, max_output_boxes=50)
    plan = _plan(build_engine(detector, BuildSpec(efficient_nms=opts)))
    parse = fake_trt.rec.parses[0]
    assert parse["method"] == "parse" and parse["path"] == str(detector)
    assert parse["ops"][-1] == "EfficientNMS_TRT"
    assert fake_trt.rec.plugin_inits == [""]
    assert [o["name"] for o in plan["outputs"]] == [
        "num_dets",
        "det_boxes",
        "det_scores",
        "det_classes",
    ]
    assert [o["shape"] for o in plan["outputs"]] == [[-1, 1], [-1, 50, 4], [-1, 50], [-1, 50]]


def test_missing_model_file(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="no such ONNX file"):
        build_engine(tmp_path / "nope.onnx", BuildSpec())


def test_the_spec_holds_what_to_build_and_nothing_of_the_job() -> None:
    """The builder's input is the spec alone: no job configuration, no cache locations (the
    cache keys plans by the spec's fields; where its files live is the cache's business)."""
    fields = {f.name for f in dataclasses.fields(BuildSpec)}
    assert fields == {"precision", "batch", "input_shape", "workspace_bytes", "efficient_nms",
                      "calibration", "calibration_id", "device_index", "min_hw"}
    assert not hasattr(BuildSpec, "from_config")
    builder_source = Path(builder.__file__).read_text()
    assert "streams.config" not in builder_source and "EngineConfig" not in builder_source


@pytest.fixture
def trt11(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    """TensorRT 11's stand-in: strongly typed networks only, no calibrators."""
    trt = FakeTensorRT("11.4.0.106")
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    return trt


def test_tensorrt_11_builds_fp32_and_mixed_precision_models_without_flags(
    trt11: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    build_engine(detector, BuildSpec(precision="fp32"))
    assert trt11.last_config.flags == set()
    mixed = write_detector_onnx(tmp_path / "fp16.onnx", fp16=True)
    build_engine(mixed, BuildSpec(precision="fp16"))
    assert trt11.last_config.flags == set()
    qdq = write_detector_onnx(tmp_path / "q.onnx", qdq=True)
    build_engine(qdq, BuildSpec(precision="int8"))
    assert trt11.last_config.flags == set() and trt11.last_config.int8_calibrator is None
    assert trt11.build_count == 3


def test_tensorrt_11_refuses_fp16_for_an_fp32_model(trt11: FakeTensorRT, detector: Path) -> None:
    with pytest.raises(
        EngineError, match=r"TensorRT 11\.4\.0\.106 builds strongly typed.*AutoCast"
    ):
        build_engine(detector, BuildSpec(precision="fp16"))
    assert trt11.build_count == 0
