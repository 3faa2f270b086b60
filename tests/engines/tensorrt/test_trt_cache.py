"""The engine cache, building through a recording stand-in for TensorRT.

TensorRT cannot be installed here; :class:`trt_standin.FakeTensorRT` stands in for it
and counts builds, so these tests check when Fovea rebuilds, reuses and locks, not what
TensorRT builds.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from engines.tensorrt import load_or_build
from engines.tensorrt.builder import BuildSpec, EfficientNMSOptions
from engines.tensorrt.cache import (
    CACHE_FORMAT_VERSION,
    EngineCache,
    build_cached_plan,
    cache_key,
)
from engines.tensorrt.runtime import TensorRTEngine
from streams.errors import EngineError
from tests.engines.tensorrt.trt_standin import (
    PLAN_MAGIC,
    CpuCuda,
    FakeTensorRT,
    gpu,
    write_detector_onnx,
)

SPEC = BuildSpec(precision="fp16", batch=(1, 4, 8))
H200 = gpu("NVIDIA H200", (9, 0))


def _build(model: Path, cache_dir: Path, spec: BuildSpec = SPEC, gpu_query: Any = H200) -> Any:
    return build_cached_plan(model, spec, cache_dir, gpu_query=gpu_query)


def test_plan_name_and_sidecar(fake_trt: FakeTensorRT, detector: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cached = _build(detector, cache_dir)
    assert cached.built
    key = cached.key
    assert cached.path == cache_dir / f"det-{key.digest[:16]}.plan"
    assert cached.path.read_bytes().startswith(PLAN_MAGIC)
    sidecar = json.loads(cached.path.with_suffix(".json").read_text())
    assert sidecar["key"] == key.digest
    fields = sidecar["fields"]
    assert fields == key.fields()
    assert fields["input_name"] == "images"
    assert fields["input_shape"] == [3, 64, 64]
    assert fields["batch"] == [1, 4, 8]
    assert fields["precision"] == "fp16"
    assert fields["gpu_name"] == "NVIDIA H200"
    assert fields["compute_capability"] == "9.0"
    assert fields["tensorrt_version"] == "10.8.0.43"
    assert fields["efficient_nms"] is None
    assert fields["format_version"] == CACHE_FORMAT_VERSION
    assert len(fields["model_sha256"]) == 64
    # the timing cache lives in the cache dir, named by GPU and TensorRT version
    assert (cache_dir / "timing-nvidia-h200-sm90-trt10.8.0.43.cache").is_file()
    assert not list(cache_dir.glob(".*.tmp"))


def test_unchanged_key_reuses_the_plan_without_building(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    first = _build(detector, tmp_path)
    again = _build(detector, tmp_path)
    assert fake_trt.build_count == 1
    assert not again.built
    assert again.path == first.path
    assert fake_trt.rec.parses[1:] == []  # not even parsed again


def _change_model(model: Path, spec: BuildSpec, query: Any) -> tuple[BuildSpec, Any]:
    write_detector_onnx(model, hw=("H", "W"), seed=1)  # same graph, other weights
    return spec, query


CHANGES: dict[str, Any] = {
    "model bytes": _change_model,
    "precision": lambda m, s, g: (replace(s, precision="fp32"), g),
    "batch profile": lambda m, s, g: (replace(s, batch=(1, 8, 8)), g),
    "input size": lambda m, s, g: (replace(s, input_shape=(3, 64, 64)), g),
    "rect profile": lambda m, s, g: (replace(s, min_hw=(8, 16)), g),
    "gpu name": lambda m, s, g: (s, gpu("NVIDIA H100", (9, 0))),
    "compute capability": lambda m, s, g: (s, gpu("NVIDIA H200", (9, 1))),
    "nms options": lambda m, s, g: (replace(s, efficient_nms=EfficientNMSOptions()), g),
    "nms thresholds": lambda m, s, g: (
        replace(s, efficient_nms=EfficientNMSOptions(score_threshold=0.5)),
        g,
    ),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_key_change_rebuilds(fake_trt: FakeTensorRT, tmp_path: Path, change: str) -> None:
    model = write_detector_onnx(tmp_path / "m.onnx", hw=("H", "W"))
    base = replace(SPEC, input_shape=(3, 32, 32))
    if change == "nms thresholds":
        base = replace(base, efficient_nms=EfficientNMSOptions())
    first = _build(model, tmp_path / "c", base)
    spec, query = CHANGES[change](model, base, H200)
    second = _build(model, tmp_path / "c", spec, query)
    assert fake_trt.build_count == 2
    assert second.built and second.key.digest != first.key.digest
    assert second.path != first.path
    if change != "model bytes":  # going back reuses the first plan
        assert not _build(model, tmp_path / "c", base).built
        assert fake_trt.build_count == 2


def test_a_fixed_size_profile_keeps_its_key(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    """``min_hw`` enters the key only where set: plans built before it existed keep their names."""
    model = write_detector_onnx(tmp_path / "m.onnx", hw=("H", "W"))
    fixed = cache_key(model, replace(SPEC, input_shape=(3, 32, 32)), gpu=H200(0), trt_version="10.8.0.43")
    assert "min_hw" not in fixed.fields()
    rect = cache_key(model, replace(SPEC, input_shape=(3, 32, 32), min_hw=(8, 16)), gpu=H200(0),
                     trt_version="10.8.0.43")
    assert rect.fields()["min_hw"] == [8, 16] and rect.digest != fixed.digest


def test_tensorrt_version_change_rebuilds(
    monkeypatch: pytest.MonkeyPatch, detector: Path, tmp_path: Path
) -> None:
    old, new = FakeTensorRT("10.7.0.23"), FakeTensorRT("10.8.0.43")
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    first = _build(detector, tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", new)
    second = _build(detector, tmp_path)
    assert old.build_count == 1 and new.build_count == 1
    assert first.key.tensorrt_version == "10.7.0.23" and second.key.tensorrt_version == "10.8.0.43"
    assert first.path != second.path
    assert len(list(tmp_path.glob("timing-*.cache"))) == 2  # timing caches are per version too


def test_int8_key_distinguishes_qdq_and_calibration(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    qdq = write_detector_onnx(tmp_path / "q.onnx", qdq=True)
    plain = write_detector_onnx(tmp_path / "p.onnx")
    spec = replace(SPEC, precision="int8", calibration_id="videos-abc")
    assert cache_key(qdq, spec, gpu=H200(0), trt_version="10.8").int8 == "qdq"
    assert cache_key(qdq, spec, gpu=H200(0), trt_version="10.8").calibration_id is None
    k1 = cache_key(plain, spec, gpu=H200(0), trt_version="10.8")
    k2 = cache_key(
        plain, replace(spec, calibration_id="videos-def"), gpu=H200(0), trt_version="10.8"
    )
    assert k1.int8 == "calibrated" and k1.digest != k2.digest


def test_calibration_cache_is_kept_next_to_the_plan(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    import numpy as np

    from tests.engines.tensorrt.trt_standin import CpuStaging

    spec = replace(SPEC, precision="int8", calibration=[np.zeros((4, 3, 64, 64), np.float32)])
    cached = build_cached_plan(detector, spec, tmp_path, gpu_query=H200, staging=CpuStaging())
    assert cached.path.with_suffix(".calib").read_bytes().startswith(b"TRT-8600")


def test_mismatched_sidecar_rebuilds(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    first = _build(detector, tmp_path)
    sidecar = first.path.with_suffix(".json")
    doc = json.loads(sidecar.read_text())
    doc["fields"]["gpu_name"] = "something else"
    sidecar.write_text(json.dumps(doc))
    again = _build(detector, tmp_path)
    assert again.built and fake_trt.build_count == 2
    assert json.loads(sidecar.read_text())["fields"]["gpu_name"] == "NVIDIA H200"


@pytest.mark.parametrize("damage", ["no sidecar", "bad json", "empty plan", "no plan"])
def test_incomplete_entries_rebuild(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path, damage: str
) -> None:
    first = _build(detector, tmp_path)
    sidecar = first.path.with_suffix(".json")
    if damage == "no sidecar":
        sidecar.unlink()
    elif damage == "bad json":
        sidecar.write_text("{not json")
    elif damage == "empty plan":
        first.path.write_bytes(b"")
    else:
        first.path.unlink()
    again = _build(detector, tmp_path)
    assert again.built and fake_trt.build_count == 2
    assert EngineCache(tmp_path).is_valid(again.path, again.key)


def test_concurrent_threads_build_once(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    fake_trt.build_delay = 0.3
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(_build(detector, tmp_path))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fake_trt.build_count == 1
    assert sorted(r.built for r in results) == [False, False, True]
    assert len({r.path for r in results}) == 1
    assert EngineCache(tmp_path).is_valid(results[0].path, results[0].key)


def _build_in_process(model: str, cache_dir: str, log_path: str) -> None:
    """Runs in a forked child: its own stand-in, appending one line per real build."""
    trt = FakeTensorRT()
    sys.modules["tensorrt"] = trt
    trt.build_delay = 0.4

    def log_build() -> None:
        with open(log_path, "a") as f:
            f.write(f"build {time.monotonic()}\n")

    trt.on_build = log_build
    _build(Path(model), Path(cache_dir))


def test_concurrent_processes_build_once(detector: Path, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    log_path = tmp_path / "builds.log"
    cache_dir = tmp_path / "cache"
    procs = [
        ctx.Process(target=_build_in_process, args=(str(detector), str(cache_dir), str(log_path)))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log_path.read_text().splitlines()) == 1
    plans = list(cache_dir.glob("*.plan"))
    assert len(plans) == 1 and plans[0].read_bytes().startswith(PLAN_MAGIC)
    assert json.loads(plans[0].with_suffix(".json").read_text())["key"]
    assert not list(cache_dir.glob(".*.tmp"))


def test_load_or_build_deserializes_once_and_reuses(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    engine = load_or_build(detector, SPEC, tmp_path, gpu_query=H200, cuda=CpuCuda())
    assert isinstance(engine, TensorRTEngine)
    assert engine.max_batch_size == 8
    load_or_build(detector, SPEC, tmp_path, gpu_query=H200, cuda=CpuCuda())
    assert fake_trt.build_count == 1
    assert len(fake_trt.rec.deserialized) == 2  # one per engine object


def test_load_or_build_rebuilds_a_cached_plan_that_does_not_load(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    cached = _build(detector, tmp_path)
    cached.path.write_bytes(b"garbage from an older driver")
    engine = load_or_build(detector, SPEC, tmp_path, gpu_query=H200, cuda=CpuCuda())
    assert fake_trt.build_count == 2
    assert engine.inputs[0].name == "images"
    assert cached.path.read_bytes().startswith(PLAN_MAGIC)


def test_load_or_build_reports_a_fresh_plan_that_does_not_load(
    fake_trt: FakeTensorRT, detector: Path, tmp_path: Path
) -> None:
    fake_trt.reject_plans = True
    with pytest.raises(
        EngineError, match=r"another GPU or another TensorRT version.*delete the plan"
    ):
        load_or_build(detector, SPEC, tmp_path, gpu_query=H200, cuda=CpuCuda())
    assert fake_trt.build_count == 1  # no rebuild loop
