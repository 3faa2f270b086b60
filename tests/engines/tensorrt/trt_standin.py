"""A recording stand-in for the ``tensorrt`` module, plus small ONNX and CUDA helpers.

TensorRT cannot be installed on the machines these tests run on (it comes only from
NVIDIA's package index and needs an NVIDIA GPU), so :class:`FakeTensorRT` stands in for
it: a module object, injected into ``sys.modules["tensorrt"]``, that implements the
slice of TensorRT 10's Python API Fovea uses and *records* every call (profile shapes,
flags, memory-pool limits, timing caches, calibrators, contexts, tensor addresses,
enqueues). It parses ONNX files with the ``onnx`` package to learn the network's inputs
and outputs, "builds" a plan that is JSON describing the network and the build config,
and "runs" nothing. It checks Fovea's use of the API, not TensorRT itself.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from engines.tensorrt._cuda import GpuInfo

PLAN_MAGIC = b"FAKEPLAN"


class Severity(enum.Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass


class BuilderFlag(enum.Enum):
    FP16 = 0
    BF16 = 1
    INT8 = 2
    TF32 = 3


class StrongBuilderFlag(enum.Enum):  # TensorRT 11: strong typing only, no FP16/INT8 flags
    TF32 = 3
    REFIT = 4


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0
    TACTIC_SHARED_MEMORY = 1


class PreviewFeature(enum.Enum):
    PROFILE_SHARING_0806 = 0


class ErrorCode(enum.Enum):
    SUCCESS = 0
    INTERNAL_ERROR = 1
    INVALID_GRAPH = 5
    INVALID_NODE = 6
    UNSUPPORTED_GRAPH = 7
    UNSUPPORTED_NODE = 8


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 9
    BF16 = 7


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


_ONNX_TO_TRT: dict[int, str] = {
    TensorProto.FLOAT: "FLOAT",
    TensorProto.FLOAT16: "HALF",
    TensorProto.INT32: "INT32",
}


class CalibratorBase:
    """Stands in for ``trt.IInt8EntropyCalibrator2`` (a pybind11 base class)."""

    def __init__(self) -> None:
        pass


@dataclass
class Recorder:
    """Everything the stand-in saw, for the tests to assert on."""

    plugin_inits: list[str] = field(default_factory=list)
    network_flags: list[int] = field(default_factory=list)
    parses: list[dict[str, Any]] = field(default_factory=list)
    configs: list[FakeConfig] = field(default_factory=list)
    builds: list[dict[str, Any]] = field(default_factory=list)
    timing_caches_created: list[bytes] = field(default_factory=list)
    set_timing_cache_calls: list[tuple[bytes, bool]] = field(default_factory=list)
    calibration_batches: list[int] = field(default_factory=list)
    deserialized: list[bytes] = field(default_factory=list)
    contexts: list[FakeContext] = field(default_factory=list)


class FakeTensorRT(types.ModuleType):
    """The stand-in module; its attributes mirror ``tensorrt``'s. Knobs:

    - ``unsupported_ops``: op types the parser rejects (UNSUPPORTED_NODE errors);
    - ``fail_build``: ``build_serialized_network`` returns ``None``;
    - ``build_delay``: seconds a build takes (to overlap concurrent builders);
    - ``on_build``: called at the start of every build (to act meanwhile);
    - ``reject_timing_cache``: ``set_timing_cache`` refuses non-empty caches;
    - ``reject_plans``: ``deserialize_cuda_engine`` returns ``None``;
    - ``fail_execute``: ``execute_async_v3`` returns ``False``.
    """

    def __init__(self, version: str = "10.8.0.43", *, implicit_int8: bool | None = None) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.rec = Recorder()
        self.lock = threading.Lock()
        self.unsupported_ops: set[str] = set()
        self.fail_build = False
        self.build_delay = 0.0
        self.on_build: Callable[[], None] | None = None
        self.reject_timing_cache = False
        self.reject_plans = False
        self.fail_execute = False
        self.ILogger = ILogger
        weak_typing = int(version.split(".")[0]) < 11  # TensorRT 11 removed it
        self.BuilderFlag = BuilderFlag if weak_typing else StrongBuilderFlag
        self.MemoryPoolType = MemoryPoolType
        self.PreviewFeature = PreviewFeature
        self.ErrorCode = ErrorCode
        self.DataType = DataType
        self.TensorIOMode = TensorIOMode
        self.Builder = functools.partial(FakeBuilder, self)
        self.OnnxParser = functools.partial(FakeParser, self)
        self.Runtime = functools.partial(FakeRuntime, self)
        if implicit_int8 if implicit_int8 is not None else weak_typing:
            self.IInt8EntropyCalibrator2 = CalibratorBase

    def init_libnvinfer_plugins(self, logger: Any, namespace: str) -> bool:
        self.rec.plugin_inits.append(namespace)
        return True

    @property
    def build_count(self) -> int:
        return len(self.rec.builds)

    @property
    def last_config(self) -> FakeConfig:
        return self.rec.configs[-1]


# -- builder side ------------------------------------------------------------------------


@dataclass
class FakeITensor:
    name: str
    shape: tuple[int, ...]
    dtype: DataType


class FakeNetwork:
    def __init__(self) -> None:
        self.inputs: list[FakeITensor] = []
        self.outputs: list[FakeITensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> FakeITensor:
        return self.inputs[i]

    def get_output(self, i: int) -> FakeITensor:
        return self.outputs[i]


@dataclass
class FakeParserError:
    _node: int
    _name: str
    _op: str
    _code: ErrorCode
    _desc: str

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op

    def code(self) -> ErrorCode:
        return self._code

    def desc(self) -> str:
        return self._desc


class FakeParser:
    def __init__(self, trt: FakeTensorRT, network: FakeNetwork, logger: Any) -> None:
        self.trt, self.network = trt, network
        self.errors: list[FakeParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> FakeParserError:
        return self.errors[i]

    def parse_from_file(self, path: str) -> bool:
        return self._parse("parse_from_file", onnx.load(path), path)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        return self._parse("parse", onnx.load_from_string(model), path)

    def _parse(self, method: str, model: onnx.ModelProto, path: str | None) -> bool:
        g = model.graph
        self.trt.rec.parses.append(
            {"method": method, "path": path, "model": model, "ops": [n.op_type for n in g.node]}
        )
        for i, node in enumerate(g.node):
            if node.op_type in self.trt.unsupported_ops:
                self.errors.append(
                    FakeParserError(
                        i,
                        node.name,
                        node.op_type,
                        ErrorCode.UNSUPPORTED_NODE,
                        f"No importer registered for op: {node.op_type}",
                    )
                )
        if self.errors:
            return False
        inits = {t.name for t in g.initializer}
        self.network.inputs = [_itensor(v) for v in g.input if v.name not in inits]
        self.network.outputs = [_itensor(v) for v in g.output]
        return True


def _itensor(v: onnx.ValueInfoProto) -> FakeITensor:
    tt = v.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    return FakeITensor(v.name, dims, DataType[_ONNX_TO_TRT.get(tt.elem_type, "FLOAT")])


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class FakeTimingCache:
    """Serialized as ``TC1`` plus one line per entry; ``combine`` merges entries."""

    def __init__(self, data: bytes) -> None:
        lines = data.decode().splitlines() if data else []
        self.entries = [ln for ln in lines[1:]] if lines[:1] == ["TC1"] else []

    def serialize(self) -> bytes:
        return ("\n".join(["TC1", *self.entries]) + "\n").encode()

    def combine(self, other: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.entries += [e for e in other.entries if e not in self.entries]
        return True


class FakeConfig:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.flags: set[Any] = set()
        self.pool_limits: dict[Any, int] = {}
        self.profiles: list[FakeProfile] = []
        self.calibration_profile: FakeProfile | None = None
        self.int8_calibrator: Any = None
        self.preview: dict[Any, bool] = {}
        self.timing_cache: FakeTimingCache | None = None

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)

    def get_flag(self, flag: Any) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pool_limits[pool] = size

    def set_preview_feature(self, feature: Any, enable: bool) -> None:
        self.preview[feature] = enable

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        for lo, opt, hi in profile.shapes.values():
            if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
                return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: FakeProfile) -> bool:
        self.calibration_profile = profile
        return True

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        self.trt.rec.timing_caches_created.append(bytes(data))
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        data = cache.serialize() if cache.entries else b""
        self.trt.rec.set_timing_cache_calls.append((data, ignore_mismatch))
        if self.trt.reject_timing_cache and cache.entries:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache:
        assert self.timing_cache is not None
        return self.timing_cache


class FakeBuilder:
    platform_has_fast_fp16 = True
    platform_has_fast_int8 = True

    def __init__(self, trt: FakeTensorRT, logger: Any) -> None:
        self.trt, self.logger = trt, logger

    def create_network(self, flags: int = 0) -> FakeNetwork:
        self.trt.rec.network_flags.append(flags)
        return FakeNetwork()

    def create_builder_config(self) -> FakeConfig:
        config = FakeConfig(self.trt)
        self.trt.rec.configs.append(config)
        return config

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes | None:
        trt = self.trt
        if trt.on_build is not None:
            trt.on_build()
        if trt.build_delay:
            time.sleep(trt.build_delay)
        if trt.fail_build:
            return None
        calibrated = self._calibrate(network, config)
        with trt.lock:
            build_id = len(trt.rec.builds) + 1
            trt.rec.builds.append({"config": config, "calibrated": calibrated})
        if config.timing_cache is not None:
            config.timing_cache.entries.append(f"tactics-of-build-{build_id}")
        inp = network.inputs[0]
        lo, opt, hi = config.profiles[0].shapes[inp.name]
        plan = {
            "build_id": build_id,
            "input": {"name": inp.name, "dtype": inp.dtype.name, "min": lo, "opt": opt, "max": hi},
            "outputs": [
                {"name": o.name, "shape": o.shape, "dtype": o.dtype.name} for o in network.outputs
            ],
            "flags": sorted(f.name for f in config.flags),
        }
        return PLAN_MAGIC + json.dumps(plan).encode()

    def _calibrate(self, network: FakeNetwork, config: FakeConfig) -> int | None:
        calib = config.int8_calibrator
        if calib is None:
            return None
        if calib.read_calibration_cache() is not None:
            return 0
        fed = 0
        while (ptrs := calib.get_batch([network.inputs[0].name])) is not None:
            assert len(ptrs) == 1 and isinstance(ptrs[0], int)
            self.trt.rec.calibration_batches.append(ptrs[0])
            fed += 1
        calib.write_calibration_cache(b"TRT-8600-EntropyCalibration2\nimages: 3c010a14\n")
        return fed


# -- runtime side ------------------------------------------------------------------------


def make_plan(
    *,
    input_name: str = "images",
    input_dtype: str = "HALF",
    chw: tuple[int, int, int] = (3, 64, 64),
    batch: tuple[int, int, int] = (1, 4, 8),
    outputs: list[dict[str, Any]] | None = None,
) -> bytes:
    """Plan bytes the stand-in runtime deserializes, without a build."""
    outputs = outputs or [{"name": "output0", "shape": [-1, 7, 64], "dtype": "FLOAT"}]
    plan = {
        "build_id": 0,
        "input": {
            "name": input_name,
            "dtype": input_dtype,
            "min": [batch[0], *chw],
            "opt": [batch[1], *chw],
            "max": [batch[2], *chw],
        },
        "outputs": outputs,
        "flags": [],
    }
    return PLAN_MAGIC + json.dumps(plan).encode()


class FakeRuntime:
    def __init__(self, trt: FakeTensorRT, logger: Any) -> None:
        self.trt, self.logger = trt, logger

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        self.trt.rec.deserialized.append(bytes(data))
        if self.trt.reject_plans or not bytes(data).startswith(PLAN_MAGIC):
            return None
        return FakeEngine(self.trt, json.loads(bytes(data)[len(PLAN_MAGIC) :]))


class FakeEngine:
    num_optimization_profiles = 1

    def __init__(self, trt: FakeTensorRT, plan: dict[str, Any]) -> None:
        self.trt, self.plan = trt, plan
        inp = plan["input"]
        self.input_name = inp["name"]
        self.profile = (tuple(inp["min"]), tuple(inp["opt"]), tuple(inp["max"]))
        self.tensors: dict[str, tuple[TensorIOMode, tuple[int, ...], DataType]] = {
            inp["name"]: (TensorIOMode.INPUT, (-1, *[a if a == b else -1 for a, b in zip(  # dynamic: -1
                inp["min"][1:], inp["max"][1:], strict=True)]), DataType[inp["dtype"]])
        }
        for o in plan["outputs"]:
            self.tensors[o["name"]] = (TensorIOMode.OUTPUT, tuple(o["shape"]), DataType[o["dtype"]])

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, i: int) -> str:
        return list(self.tensors)[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.tensors[name][0]

    def get_tensor_shape(self, name: str) -> list[int]:
        return list(self.tensors[name][1])

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[list[int]]:
        assert name == self.input_name and profile_index == 0
        return [list(s) for s in self.profile]

    def create_execution_context(self) -> FakeContext:
        ctx = FakeContext(self)
        self.trt.rec.contexts.append(ctx)
        return ctx


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.set_shape_calls: list[tuple[str, tuple[int, ...]]] = []
        self.addresses: dict[str, int] = {}
        self.address_calls: list[tuple[str, int]] = []
        self.enqueues: list[tuple[int, dict[str, int]]] = []

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(shape)
        self.set_shape_calls.append((name, shape))
        lo, _, hi = self.engine.profile
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            return False
        self.input_shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> list[int]:
        mode, dims, _ = self.engine.tensors[name]
        if mode == TensorIOMode.INPUT:
            return list(self.input_shapes[name])
        batch = self.input_shapes[self.engine.input_name][0]
        return [batch if d == -1 else d for d in dims]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        self.address_calls.append((name, ptr))
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.enqueues.append((stream_handle, dict(self.addresses)))
        return not self.engine.trt.fail_execute


# -- CUDA helpers ------------------------------------------------------------------------


class CpuCuda:
    """``CudaOps`` on the CPU, counting allocations (the engine calls its device cuda:0)."""

    device = "cuda:0"

    def __init__(self, stream: int = 0x51) -> None:
        self.stream = stream
        self.allocations: list[tuple[tuple[int, ...], torch.dtype]] = []
        self.syncs = 0

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        self.allocations.append((shape, dtype))
        return torch.empty(shape, dtype=dtype)

    def current_stream(self) -> int:
        return self.stream

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def on_device(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == "cpu"

    def synchronize(self) -> None:
        self.syncs += 1


class CpuStaging:
    """Calibration staging into host memory, recording what was uploaded."""

    def __init__(self) -> None:
        self.uploads: list[tuple[int, ...]] = []
        self.buffers: list[torch.Tensor] = []
        self.closed = False

    def upload(self, batch: np.ndarray) -> int:
        t = torch.from_numpy(np.ascontiguousarray(batch)).clone()
        self.buffers.append(t)
        self.uploads.append(tuple(batch.shape))
        return int(t.data_ptr())

    def close(self) -> None:
        self.closed = True


def gpu(name: str = "NVIDIA H200", cc: tuple[int, int] = (9, 0)) -> Any:
    """A ``gpu_query`` naming a fixed GPU."""
    return lambda index: GpuInfo(name=name, compute_capability=cc)


# -- ONNX helpers ------------------------------------------------------------------------


def write_detector_onnx(
    path: Path,
    *,
    batch: int | str = "N",
    hw: tuple[int | str, int | str] = (64, 64),
    num_classes: int = 3,
    qdq: bool = False,
    fp16: bool = False,
    op_name: str = "head",
    seed: int = 0,
) -> Path:
    """A tiny YOLOv8-layout detector: images [B, 3, H, W] → output0 [B, 4 + nc, H/8 * W/8].

    ``qdq`` quantizes the input explicitly; ``fp16`` computes in FP16 between FP32 I/O.
    """
    rng = np.random.default_rng(seed)
    ch = 4 + num_classes
    nodes = []
    x = "images"
    wtype = np.float16 if fp16 else np.float32
    inits = [
        numpy_helper.from_array((rng.standard_normal((ch, 3, 8, 8)) * 0.1).astype(wtype), "w"),
        numpy_helper.from_array(np.array([0, ch, -1], np.int64), "flat"),
    ]
    if qdq:
        inits += [
            numpy_helper.from_array(np.array(0.02, np.float32), "scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", [x, "scale", "zero"], ["xq"], name="q0"),
            helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xdq"], name="dq0"),
        ]
        x = "xdq"
    if fp16:
        nodes.append(helper.make_node("Cast", [x], ["x16"], name="to_fp16", to=TensorProto.FLOAT16))
        x = "x16"
    nodes += [
        helper.make_node("Conv", [x, "w"], ["feat"], name=op_name, strides=[8, 8]),
        helper.make_node("Reshape", ["feat", "flat"], ["raw"], name="flatten"),
        helper.make_node("Sigmoid", ["raw"], ["act_out" if fp16 else "output0"], name="act"),
    ]
    if fp16:
        nodes.append(
            helper.make_node("Cast", ["act_out"], ["output0"], name="to_fp32", to=TensorProto.FLOAT)
        )
    h, w = hw
    anchors: int | str = h * w // 64 if isinstance(h, int) and isinstance(w, int) else "A"
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, ch, anchors])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
