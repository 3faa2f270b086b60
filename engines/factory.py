"""Choosing and opening the engine for a model: ``engine.kind`` and ``engine.device``.

=================  ==========================  ====================================
model file         engine: auto picks           also runs on
=================  ==========================  ====================================
``default``        torch (bundled detector)    ``tensorrt`` (exported to ONNX first)
``*.onnx``         on a GPU: tensorrt if        ``onnxruntime`` (CPU; CUDA with
                   importable, else torch       onnxruntime-gpu); ``torch``
                   (onnx2torch), else           (converted by onnx2torch, CPU too)
                   onnxruntime-gpu; on the
                   CPU: onnxruntime
``*.pt``/``.pth``  torch (TorchScript)          —
``*.pt2``          torch (ExportedProgram)      —
=================  ==========================  ====================================

``auto`` logs its choice and the reason once. An ONNX model on a CUDA device never runs on
the CPU by surprise: where no GPU runtime is installed, or the model does not convert,
opening it is an error naming the reason; it runs on the CPU only where
``engine.device`` says ``cpu`` (or ``auto`` finds no GPU).

What the model is (class names, input size, task, end-to-end head, stride) comes from the
config where it says, else from the file: :mod:`engines.model_info` (precedence) and
:mod:`engines.onnx_model` (an ONNX file's metadata). A dynamic-shape ONNX export needs no
``model.input_size`` when its metadata has ``imgsz`` (Ultralytics' does).

A model file that cannot be used is an :class:`~streams.errors.EngineError` whose one-line
message names the file and what is wrong, found as early as possible: a missing file, a
directory, an unknown type, an empty or unreadable file, a file that is not what its name
says (a text file called ``.onnx``, a truncated or damaged archive, a ``torch.save``
checkpoint instead of TorchScript), an input that is not an image batch ``[N, 3, H, W]``
(ONNX: from the file; torch: when the engine's first run on a blank batch fails) and
outputs that fit no layout Fovea decodes (:func:`output_layout`).

Usage::

    device = resolve_device("auto")                   # "cuda:0" or "cpu"
    engine, info = open_engine(cfg.model, cfg.engine, device)
    with engine:
        layout = output_layout(engine, info)          # "yolov8", "end2end", "yolov8_seg", ...
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines._messages import describe, reason
from engines.base import Engine
from engines.model_info import ModelInfo, layout_hints, onnx_model_info
from engines.onnx_model import OnnxFacts, read_onnx
from streams.config import EngineConfig, ModelConfig, PostprocessConfig, PreprocessConfig
from streams.errors import ConfigError, EngineError, MissingDependencyError, ShapeError

if TYPE_CHECKING:
    from engines.tensorrt.calibrator import FramePreprocessor

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = (640, 640)
ONNX_SUFFIXES = (".onnx",)
TORCH_SUFFIXES = (".pt", ".pth", ".torchscript", ".pt2")
_EXPORT_HINT = "export the model with torch.jit.script/trace (.pt), torch.export (.pt2) or to ONNX"


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


def model_file(path: str) -> Path:
    """``path`` as a model file Fovea can open, or an EngineError saying why it is not one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise EngineError(f"model file {path}: no such file")
    if p.is_dir():
        raise EngineError(f"model file {path}: a directory, not a model file")
    if not p.is_file():
        raise EngineError(f"model file {path}: not a regular file")
    suffix = p.suffix.lower()
    if suffix not in ONNX_SUFFIXES + TORCH_SUFFIXES:
        raise EngineError(f"model file {path}: unsupported type {suffix or '(no extension)'!r}; expected .onnx, "
                          ".pt, .pth, .torchscript (TorchScript) or .pt2 (torch.export)")
    try:
        with open(p, "rb") as f:
            empty = not f.read(1)
    except OSError as e:
        raise EngineError(f"model file {path}: cannot be read ({e.strerror or e})") from e
    if empty:
        raise EngineError(f"model file {path}: empty (0 bytes)")
    return p


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
    frame_preprocessor: FramePreprocessor | None = None,
) -> tuple[Engine, ModelInfo]:
    """Build (but do not enter) the engine for ``model`` on ``device``, with model info.

    ``postprocess``, ``preprocess`` and ``frame_preprocessor`` matter to TensorRT only:
    in-engine NMS thresholds follow the job's settings, and INT8 calibration frames go
    through ``frame_preprocessor`` (the pipeline's preprocessing, configured by
    ``preprocess``; see :data:`engines.tensorrt.calibrator.FramePreprocessor`). A model
    that cannot be used raises EngineError (see the module docstring).
    """
    extras = {"postprocess": postprocess, "preprocess": preprocess, "frame_preprocessor": frame_preprocessor}
    names = load_class_names(model.class_names)
    path = model.path
    kind = engine.kind
    if path == "default":
        return _open_default(model, engine, device, names, extras)
    p = model_file(path)
    suffix = p.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        facts = read_onnx(p)
        info = onnx_model_info(model, facts, names)
        return _open_onnx(p, facts, info, engine, device, extras), info
    if kind not in ("auto", "torch"):
        raise ConfigError("engine.kind", f"{kind} runs ONNX models; export {p.name} to ONNX first")
    module = _load_torch_model(p)
    size = model.input_size or DEFAULT_INPUT_SIZE
    if model.input_size is None:
        log.warning("model.input_size not set for %s: using %dx%d", p.name, *size)
    info = ModelInfo(names or (), size, model.layout, str(p), task=model.task)
    return _torch_engine(module, engine, device, size, str(p)), info


def _open_onnx(p: Path, facts: OnnxFacts, info: ModelInfo, engine: EngineConfig, device: str,
               extras: dict[str, Any]) -> Engine:
    """The engine for an ONNX model (the module docstring's table)."""
    kind: str = engine.kind
    if kind == "auto":
        kind, why = _onnx_auto_kind(device)
        log.info("engine auto → %s for %s (%s)", kind, p.name, why)
    if kind == "tensorrt":
        return _open_tensorrt(p, engine, device, info, extras)
    if kind == "torch":
        from engines.onnx_torch import convert_onnx

        module = convert_onnx(p)
        return _torch_engine(module, engine, device, info.input_size, str(p), facts)
    from engines.onnxruntime_engine import OnnxRuntimeEngine

    return OnnxRuntimeEngine(p, device=device)


def _onnx_auto_kind(device: str) -> tuple[str, str]:
    """``engine: auto`` for an ONNX model on ``device``: the kind and why; on a GPU with no GPU
    runtime installed, a MissingDependencyError naming what to install (never the CPU)."""
    if not device.startswith("cuda"):
        return "onnxruntime", "device is the CPU"
    ok, why = _tensorrt_importable()
    if ok:
        return "tensorrt", why
    from engines.onnx_torch import onnx2torch_problem

    problem = onnx2torch_problem()
    if problem is None:
        return "torch", f"{why}; onnx2torch converts it to torch (compiled, CUDA graphs)"
    from engines.onnxruntime_engine import cuda_provider_available

    if cuda_provider_available():
        return "onnxruntime", f"{why}; {problem}; ONNX Runtime has the CUDA provider"
    raise MissingDependencyError(
        "onnx2torch", f"running an ONNX model on {device} ({why}; {problem}; ONNX Runtime has no CUDA provider)",
        'pip install -e ".[onnx-gpu]" (onnx2torch), or tensorrt, or onnxruntime-gpu; or set engine.device: cpu '
        "to run it on the CPU",
    )


def output_layout(engine: Engine, info: ModelInfo) -> str:
    """The model's output layout: ``info.layout`` when the config sets one, else detected
    from the entered ``engine``'s outputs (with one blank inference where the model's
    output shapes are symbolic) and what the file says (task, end-to-end head; see
    :func:`operators.output_decoding.detect_layout`). Outputs that fit no layout, or a
    layout that contradicts the task, are an EngineError naming the model and its outputs."""
    from operators.output_decoding import detect_layout

    hints = layout_hints(info)
    if info.layout != "auto":
        if hints.task is not None and info.layout not in _TASK_LAYOUTS[hints.task]:
            log.warning("%s: model.layout %s does not fit the task %s; decoding it as %s", info.source,
                        info.layout, hints.task, info.layout)
        return info.layout
    shapes = [o.shape for o in engine.outputs]
    if any(d is None for shape in shapes for d in shape[1:]):
        shapes = _probe_output_shapes(engine, info)
    try:
        layout = detect_layout(shapes, [o.name for o in engine.outputs], hints)
    except ShapeError as e:
        task = f" a {hints.task} model" if hints.task else ""
        raise EngineError(f"{info.source}: not{task or ' a detector'} Fovea can decode: {e}") from e
    log.info("model output layout: %s", layout)
    return layout


_TASK_LAYOUTS = {
    "detect": ("yolov8", "yolov5", "efficient_nms", "end2end", "rtdetr", "detr"),
    "segment": ("yolov8_seg", "end2end_seg"),
    "pose": ("yolov8_pose", "end2end_pose"),
}


def _probe_output_shapes(engine: Engine, info: ModelInfo) -> list[tuple[int | None, ...]]:
    """Output shapes from one inference on a blank batch of one (for models with symbolic dims)."""
    import torch

    dtype = torch.float16 if engine.input_dtype == "float16" else torch.float32
    x = torch.zeros((1, 3, *info.input_size), dtype=dtype, device=engine.device)
    if engine.input_layout == "NHWC":
        x = x.contiguous(memory_format=torch.channels_last)
    try:
        with engine.running():
            outs = engine.infer({engine.inputs[0].name: x})
    except EngineError:
        raise
    except Exception as e:  # the model's own failure on a well-formed image batch
        raise EngineError(f"{info.source}: the model fails on a blank image batch {list(x.shape)} "
                          f"({describe(e)})") from e
    return [tuple(outs[o.name].shape) for o in engine.outputs]


def _torch_engine(module: Any, engine: EngineConfig, device: str, size: tuple[int, int], source: str,
                  onnx: OnnxFacts | None = None) -> Engine:
    """The torch engine for ``module``; ``onnx``: the facts of the ONNX file it was converted
    from (input and output names, a static batch, other input sizes for a dynamic export)."""
    from engines.torch_engine import TorchEngine

    names: dict[str, Any] = {}
    if onnx is not None:
        names = {"input_name": onnx.input_name, "output_names": tuple(n for n, _ in onnx.outputs),
                 "max_batch_size": onnx.static_batch, "other_sizes": onnx.input_hw is None}
    return TorchEngine(module, device=device, precision=engine.precision, input_size=size,
                       cuda_graphs=engine.cuda_graphs, compile_mode=compile_mode(module, engine, device),
                       source=source, **names)


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
    """The module saved in ``p``: TorchScript (``.pt``, ``.pth``, ``.torchscript``) or an
    ExportedProgram (``.pt2``); an EngineError naming the file and the problem otherwise."""
    import torch

    pt2 = p.suffix.lower() == ".pt2"
    problem = _torch_archive_problem(p, pt2)
    if problem is not None:
        raise EngineError(f"{p}: {problem}")
    what = "an ExportedProgram (torch.export)" if pt2 else "TorchScript"
    try:
        with _quiet_logger("torch.export"):
            if pt2:
                return torch.export.load(str(p)).module()
            return torch.jit.load(str(p), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError, ValueError, pickle and zip errors
        raise EngineError(f"{p}: torch cannot load it as {what} ({describe(e)}); "
                          f"{_EXPORT_HINT}") from e


def _torch_archive_problem(p: Path, pt2: bool) -> str | None:
    """Why ``p`` certainly does not load as TorchScript / an ExportedProgram, judged from its
    zip directory alone (torch saves both as zip archives), with what to do; or ``None``."""
    if not zipfile.is_zipfile(p):
        return ("not a saved torch model: torch saves models as zip archives and this file is none (truncated, "
                f"damaged, or another format); {_EXPORT_HINT}")
    try:
        with zipfile.ZipFile(p) as z:
            entries = {name.split("/", 1)[-1] for name in z.namelist()}  # "<archive>/<entry>"
    except (zipfile.BadZipFile, OSError) as e:
        return f"a damaged zip archive ({reason(e)}); {_EXPORT_HINT}"
    script = "constants.pkl" in entries
    exported = "archive_format" in entries
    if pt2:
        return "TorchScript, not an ExportedProgram: name it .pt" if script and not exported else None
    if exported and not script:
        return "an ExportedProgram (torch.export), not TorchScript: name it .pt2"
    if not script and "data.pkl" in entries:
        return ("a torch.save checkpoint (weights or a pickled module), not TorchScript: build the model in "
                f"Python, load the checkpoint into it and {_EXPORT_HINT}")
    return None


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence logger ``name`` (and its children) for a block: ``torch.export.load`` logs the
    traceback of a failed load as a warning before it raises, and Fovea reports the raise."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _open_default(
    model: ModelConfig, engine: EngineConfig, device: str, names: tuple[str, ...] | None,
    extras: dict[str, Any],
) -> tuple[Engine, ModelInfo]:
    from engines.detector.model import load_default_detector

    net, det_info = load_default_detector("cpu")
    size = model.input_size or tuple(det_info.input_size)
    info = ModelInfo(names or tuple(det_info.class_names), (int(size[0]), int(size[1])), "yolov8",
                     "the bundled detector")
    kind = engine.kind
    if kind == "auto":
        kind = "torch"
        log.info("engine auto → torch for the bundled detector")
    if kind == "torch":
        return _torch_engine(net, engine, device, info.input_size, info.source), info
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
