"""Choosing and opening the engine for a model: ``engine.kind`` and ``engine.device``.

=================  ==========================  ====================================
model file         engine: auto picks           also runs on
=================  ==========================  ====================================
``default``        torch (bundled detector)    ``tensorrt`` (exported to ONNX first)
``*.onnx``         tensorrt if importable on    ``onnxruntime`` (CPU; CUDA with
                   a GPU, else onnxruntime      onnxruntime-gpu)
``*.pt``/``.pth``  torch (TorchScript)          —
``*.pt2``          torch (ExportedProgram)      —
=================  ==========================  ====================================

``auto`` logs its choice and the reason once.

Usage::

    device = resolve_device("auto")                   # "cuda:0" or "cpu"
    engine, info = open_engine(cfg.model, cfg.engine, device)
    with engine: ...
"""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.base import Engine
from streams.config import EngineConfig, ModelConfig, PostprocessConfig, PreprocessConfig
from streams.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = (640, 640)


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about the model besides the engine itself."""

    class_names: tuple[str, ...]
    input_size: tuple[int, int]  # (height, width)
    layout: str  # "auto" until resolved from the engine's outputs


def resolve_device(requested: str) -> str:
    """``auto`` → ``cuda:0`` when torch sees a GPU, else ``cpu``; ``cuda`` → ``cuda:0``."""
    import torch

    if requested == "auto":
        dev = "cuda:0" if torch.cuda.is_available() else "cpu"
        log.info("device auto → %s%s", dev, "" if dev != "cpu" else " (torch sees no CUDA GPU)")
        return dev
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("engine.device", f"{requested!r} requested but torch sees no CUDA GPU")
        return "cuda:0" if requested == "cuda" else requested
    return requested


def load_class_names(spec: list[str] | str | None) -> tuple[str, ...] | None:
    """Class names from a list, or a file (one name per line, or a YAML/JSON list/dict)."""
    if spec is None:
        return None
    if isinstance(spec, list):
        return tuple(spec)
    p = Path(spec).expanduser()
    if not p.is_file():
        raise ConfigError("model.class_names", f"file {spec!r} does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        data = yaml.safe_load(text)
        if isinstance(data, dict) and "names" in data:
            data = data["names"]
        if isinstance(data, dict):
            return tuple(str(data[k]) for k in sorted(data, key=int))
        if isinstance(data, list):
            return tuple(str(x) for x in data)
        raise ConfigError("model.class_names", f"{spec}: expected a list or an index→name mapping")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _onnx_metadata(path: Path) -> tuple[tuple[str, ...] | None, tuple[int, int] | None]:
    """Class names (Ultralytics' ``names`` metadata) and static input size of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names: tuple[str, ...] | None = None
    for prop in model.metadata_props:
        if prop.key == "names":
            try:
                parsed = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                try:
                    parsed = json.loads(prop.value)
                except ValueError:
                    parsed = None
            if isinstance(parsed, dict):
                names = tuple(str(parsed[k]) for k in sorted(parsed, key=int))
            elif isinstance(parsed, list):
                names = tuple(str(x) for x in parsed)
    size: tuple[int, int] | None = None
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if inputs:
        dims = inputs[0].type.tensor_type.shape.dim
        if len(dims) == 4 and dims[2].dim_value > 0 and dims[3].dim_value > 0:
            size = (dims[2].dim_value, dims[3].dim_value)
    return names, size


def _tensorrt_importable() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the 'tensorrt' package is not installed"
    return True, "tensorrt is importable"


def open_engine(
    model: ModelConfig,
    engine: EngineConfig,
    device: str,
    postprocess: PostprocessConfig | None = None,
    preprocess: PreprocessConfig | None = None,
) -> tuple[Engine, ModelInfo]:
    """Build (but do not enter) the engine for ``model`` on ``device``, with model info.

    ``postprocess`` and ``preprocess`` matter to TensorRT only: in-engine NMS thresholds
    and the INT8 calibration frames' letterboxing follow the job's settings.
    """
    extras = {"postprocess": postprocess, "preprocess": preprocess}
    names = load_class_names(model.class_names)
    path = model.path
    kind = engine.kind
    if path == "default":
        return _open_default(model, engine, device, names, extras)
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("model.path", f"model file {path!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        meta_names, meta_size = _onnx_metadata(p)
        size = model.input_size or meta_size
        if size is None:
            raise ConfigError("model.input_size", f"{p.name} has a dynamic input size; set model.input_size")
        info = ModelInfo(names or meta_names or (), size, model.layout)
        if kind == "auto":
            ok, why = _tensorrt_importable()
            if device.startswith("cuda") and ok:
                kind = "tensorrt"
                log.info("engine auto → tensorrt (%s)", why)
            else:
                kind = "onnxruntime"
                reason = why if device.startswith("cuda") else "device is the CPU"
                log.warning("engine auto → onnxruntime for %s (%s)", p.name, reason)
        if kind == "torch":
            raise ConfigError("engine.kind", "the torch engine runs torch models (.pt/.pt2); for "
                              "ONNX use onnxruntime or tensorrt")
        if kind == "tensorrt":
            return _open_tensorrt(p, engine, device, info, extras), info
        from engines.onnxruntime_engine import OnnxRuntimeEngine, cuda_provider_available

        if engine.kind == "auto" and device.startswith("cuda") and not cuda_provider_available():
            log.warning(
                "%s: no GPU engine can run this ONNX model here (tensorrt is not installed and "
                "ONNX Runtime has no CUDA provider: pip install onnxruntime-gpu, or tensorrt); "
                "running it with ONNX Runtime on the CPU, and decoding on the CPU too", p.name,
            )
            device = "cpu"
        return OnnxRuntimeEngine(p, device=device), info
    if suffix in (".pt", ".pth", ".torchscript", ".pt2"):
        if kind not in ("auto", "torch"):
            raise ConfigError("engine.kind", f"{kind} runs ONNX models; export {p.name} to ONNX first")
        module = _load_torch_model(p)
        size = model.input_size or DEFAULT_INPUT_SIZE
        if model.input_size is None:
            log.warning("model.input_size not set for %s: using %dx%d", p.name, *size)
        info = ModelInfo(names or (), size, model.layout)
        return _torch_engine(module, engine, device, size), info
    raise ConfigError("model.path",
                      f"unsupported model file {p.name!r}: expected .onnx, .pt, .pth, .torchscript or .pt2")


def _torch_engine(module: Any, engine: EngineConfig, device: str, size: tuple[int, int]) -> Engine:
    from engines.torch_engine import TorchEngine

    return TorchEngine(module, device=device, precision=engine.precision, input_size=size,
                       cuda_graphs=engine.cuda_graphs, compile_mode=compile_mode(module, engine, device))


def compile_mode(module: Any, engine: EngineConfig, device: str) -> str | None:
    """The ``torch.compile`` mode for the torch engine, or ``None`` for none.

    ``engine.compile: auto`` compiles on CUDA where it can and logs why where it cannot;
    an explicit mode that cannot be honoured is a :class:`ConfigError`.
    """
    import importlib.util

    import torch

    requested = engine.compile
    if requested == "off" or not device.startswith("cuda"):
        if requested not in ("off", "auto"):
            log.warning("engine.compile: %s applies to CUDA devices; the model runs uncompiled on %s",
                        requested, device)
        return None
    why = None
    if isinstance(module, torch.jit.ScriptModule):
        why = "TorchScript modules cannot be compiled; save the model with torch.export (.pt2) instead"
    elif importlib.util.find_spec("triton") is None:
        why = "triton is not installed (it comes with CUDA builds of torch)"
    if why is not None:
        if requested != "auto":
            raise ConfigError("engine.compile", f"cannot compile the model: {why}; or set compile: off")
        log.warning("engine.compile auto: the model runs uncompiled (CUDA graphs still on): %s", why)
        return None
    return "max-autotune-no-cudagraphs" if requested == "max-autotune" else "default"


def _load_torch_model(p: Path) -> Any:
    import torch

    try:
        if p.suffix.lower() == ".pt2":
            return torch.export.load(str(p)).module()
        return torch.jit.load(str(p), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError/ValueError/pickle errors
        raise EngineError(
            f"cannot load {p} as TorchScript/ExportedProgram ({type(e).__name__}: {str(e)[:200]}); "
            "export the model with torch.jit.script/trace, torch.export, or to ONNX"
        ) from e


def _open_default(
    model: ModelConfig, engine: EngineConfig, device: str, names: tuple[str, ...] | None,
    extras: dict[str, Any],
) -> tuple[Engine, ModelInfo]:
    from engines.detector.model import load_default_detector

    net, det_info = load_default_detector("cpu")
    size = model.input_size or tuple(det_info.input_size)
    info = ModelInfo(names or tuple(det_info.class_names), (int(size[0]), int(size[1])), "yolov8")
    kind = engine.kind
    if kind == "auto":
        kind = "torch"
        log.info("engine auto → torch for the bundled detector")
    if kind == "torch":
        return _torch_engine(net, engine, device, info.input_size), info
    if kind == "onnxruntime" or kind == "tensorrt":
        from engines.detector.export import export_onnx

        cache = Path(engine.tensorrt.cache_dir).expanduser()
        cache.mkdir(parents=True, exist_ok=True)
        onnx_path = cache / f"fovea_det_{info.input_size[0]}x{info.input_size[1]}.onnx"
        if not onnx_path.exists():
            export_onnx(net, onnx_path, info.input_size)
        if kind == "tensorrt":
            return _open_tensorrt(onnx_path, engine, device, info, extras), info
        from engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(onnx_path, device=device), info
    raise ConfigError("engine.kind", f"unknown engine {kind!r}")


def _open_tensorrt(
    onnx_path: Path, engine: EngineConfig, device: str, info: ModelInfo, extras: dict[str, Any]
) -> Engine:
    if not device.startswith("cuda"):
        raise ConfigError("engine.device", "engine: tensorrt needs a CUDA device")
    from engines.tensorrt import open_tensorrt_engine

    return open_tensorrt_engine(onnx_path, engine, device, info.input_size, **extras)
