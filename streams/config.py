"""The job configuration: one YAML file, validated into typed objects before any work.

Usage::

    cfg = load_config("job.yaml", overrides={"sources": ["clips/"], "device": "cpu"})
    cfg.postprocess.conf_threshold    # 0.25

See ``examples/job.yaml`` for an annotated example. Every problem raises
:class:`streams.errors.ConfigError` naming the key path (``sinks[0].path: ...``).

One path rule: every relative path written in a config file is relative to the config
file's folder, whatever the current directory: sources (files, globs, directories, list
files, ``file://`` URIs), ``model.path``, ``model.class_names`` (a file), every sink's
``path``, ``engine.tensorrt.cache_dir`` and ``engine.tensorrt.int8_calibration``. Paths
given on the command line (``overrides``: ``sources``, ``model``, ``out``) are relative to
the current directory. ``~`` is the user's home in both. A ``file://`` URI with a
relative path (``file://clips/cam1.mp4``, not the standard ``file:///abs/cam1.mp4``) is
read the same way: FFmpeg would otherwise take it from the filesystem's root.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from streams.analytics_config import AnalyticsConfig
from streams.cascade_config import BUILTIN_PREFIX, SecondaryConfig, validate_secondaries
from streams.errors import ConfigError
from streams.registry import PluginConfig
from streams.schema import from_dict
from streams.tracker_config import TrackerConfig

log = logging.getLogger(__name__)

ModelLayout = Literal["auto", "yolov8", "yolov5", "efficient_nms", "end2end", "rtdetr", "detr",
                      "yolov8_seg", "end2end_seg", "yolov8_pose", "end2end_pose"]
ModelTask = Literal["auto", "detect", "segment", "pose"]
EngineKind = Literal["auto", "torch", "onnxruntime", "tensorrt"]


@dataclass(frozen=True)
class SourceEntry:
    """One ``sources:`` entry in mapping form.

    Exactly one of ``path`` (file, glob or directory), ``list`` (a text file with one
    path per line) or ``uri`` (``rtsp://...``) is set. A plain string entry is a
    ``path`` (or a ``uri`` when it has a scheme).
    """

    path: str | None = None
    list: str | None = None
    uri: str | None = None
    id: str | None = None
    transport: Literal["tcp", "udp"] = "tcp"
    username: str | None = None
    password: str | None = None

    def validate(self, key: str) -> None:
        given = [n for n in ("path", "list", "uri") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError(key, f"set exactly one of path, list, uri (got {given or 'none'})")


@dataclass(frozen=True)
class ModelConfig:
    """``model:``: which network to run and how to read its outputs.

    ``path`` is an ONNX file, a TorchScript/ExportedProgram file, or ``default`` for the
    bundled detector. ``input_size`` is ``[height, width]``; ``None`` reads it from the
    model: the input's static size, or the export's ``imgsz`` metadata for a dynamic-shape
    export. ``task`` (``detect``, ``segment``, ``pose``) and ``layout`` say how to read the
    outputs; ``auto`` takes them from the file's metadata and its outputs' shapes. A value
    set here wins over the file's; a conflict is logged once (docs/models.md).
    """

    path: str = "default"
    layout: ModelLayout = "auto"
    task: ModelTask = "auto"
    input_size: tuple[int, int] | None = None
    class_names: list[str] | str | None = None

    def validate(self, key: str) -> None:
        if self.input_size is not None and any(v <= 0 or v % 2 for v in self.input_size):
            raise ConfigError(f"{key}.input_size", f"expected 2 positive even integers, got {list(self.input_size)}")


@dataclass(frozen=True)
class TensorRTConfig:
    """``engine.tensorrt:``: how TensorRT plans are built and cached."""

    cache_dir: str = "~/.cache/fovea/engines"
    workspace_mb: int = 4096
    batch: tuple[int, int, int] | None = None  # min, opt, max; default 1, batch_size, batch_size
    int8_calibration: list[str] | None = None   # videos whose frames calibrate INT8
    calibration_frames: int = 512
    efficient_nms: bool = False
    timing_cache: bool = True


@dataclass(frozen=True)
class EngineConfig:
    """``engine:``: which backend runs the model, where, and how."""

    kind: EngineKind = "auto"
    # auto | cpu | cuda | cuda:N. A model runs on the CPU only where this says cpu (or auto
    # finds no GPU): on a GPU, a model that cannot run there is an error naming the reason
    device: str = "auto"
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    batch_size: int = 16
    cuda_graphs: bool = True
    # torch engine on CUDA: torch.compile (inductor) the model before capturing its graphs.
    # auto: "default" where it can (an nn.Module or .pt2, triton installed; TorchScript
    # cannot be compiled: logged); max-autotune: slower to compile, a little faster to run
    compile: Literal["auto", "off", "default", "max-autotune"] = "auto"
    # inference threads, one CUDA stream each: one waits on results while one runs
    # (``engine.streams`` before: still read, with a deprecation warning)
    inference_threads: int = 2
    # Python's GIL switch interval during a GPU job (restored after): the inference threads
    # need the GIL for a moment between GPU calls and should not wait the default 5 ms for it
    gil_switch_interval_ms: float = 0.5
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)

    def validate(self, key: str) -> None:
        if not 0.01 <= self.gil_switch_interval_ms <= 100:
            raise ConfigError(f"{key}.gil_switch_interval_ms", f"expected 0.01..100, got {self.gil_switch_interval_ms}")
        if not 1 <= self.inference_threads <= 16:
            raise ConfigError(f"{key}.inference_threads", f"expected 1..16, got {self.inference_threads}")
        if self.device != "auto" and self.device != "cpu" and not _is_cuda_device(self.device):
            raise ConfigError(f"{key}.device", f"expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not 1 <= self.batch_size <= 1024:
            raise ConfigError(f"{key}.batch_size", f"expected 1..1024, got {self.batch_size}")


@dataclass(frozen=True)
class PreprocessConfig:
    """``preprocess:``: how frames become model input (done by DALI on the decode device)."""

    resize: Literal["letterbox", "stretch"] = "letterbox"
    pad_value: int = 114
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    # the bilinear filter of the resize: "opencv" gives cv2.resize(INTER_LINEAR)'s pixels
    # exactly (operators/resize.py, in torch), "dali" DALI's fn.resize; "auto": opencv for a
    # model exported by Ultralytics (which letterboxes with OpenCV), else dali (docs/models.md)
    resize_filter: Literal["auto", "opencv", "dali"] = "auto"
    # the model input's shape: "rect" letterboxes each file into the smallest stride-aligned
    # rectangle around its resized frame (as Ultralytics runs a dynamic-shape export), "square"
    # into the whole input size; "auto": rect for a dynamic-shape letterbox export without
    # model.input_size in the config, else square (docs/models.md)
    canvas: Literal["auto", "square", "rect"] = "auto"

    def validate(self, key: str) -> None:
        if not 0 <= self.pad_value <= 255:
            raise ConfigError(f"{key}.pad_value", f"expected 0..255, got {self.pad_value}")
        if any(s == 0 for s in self.std):
            raise ConfigError(f"{key}.std", "values must be non-zero")


@dataclass(frozen=True)
class DecodeConfig:
    """``decode:``: where video is decoded and with how many concurrent sessions."""

    backend: Literal["auto", "gpu", "cpu"] = "auto"
    sessions: int = 4  # concurrent decode pipelines (GPU: NVDEC sessions)
    threads: int = 2  # DALI CPU threads per pipeline
    # a decode session yielding no frame this long fails its file and is replaced (a stuck decoder)
    stall_timeout_s: float = 60.0

    def validate(self, key: str) -> None:
        if not 1 <= self.sessions <= 64:
            raise ConfigError(f"{key}.sessions", f"expected 1..64, got {self.sessions}")
        if not 0.1 <= self.stall_timeout_s <= 86400.0:
            raise ConfigError(f"{key}.stall_timeout_s", f"expected 0.1..86400 seconds, got {self.stall_timeout_s}")


@dataclass(frozen=True)
class PostprocessConfig:
    """``postprocess:``: thresholds of the detection decoding and NMS, as
    :func:`operators.postprocess.postprocess` takes them.

    Attributes:
        conf_threshold: candidates need a score strictly above this.
        iou_threshold: NMS suppresses a box whose IoU with a better kept one is above this.
        max_detections: at most this many detections per frame (the highest scores).
        class_agnostic: NMS across classes (boxes of different classes suppress each other).
        fused: ``"auto"``: the fused path for YOLOv8/YOLOv5 outputs on CUDA where Triton is
            importable (else the exact path, with a warning logged once on CUDA); ``"on"``:
            the fused path on any device (on the CPU its NMS is a torch loop); ``"off"``:
            always the exact path.
        frame_capacity: candidates per frame the fused path holds; frames with more are
            redone by the exact path.
    """

    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 300
    class_agnostic: bool = False
    fused: Literal["auto", "on", "off"] = "auto"
    frame_capacity: int = 1024

    def validate(self, key: str) -> None:
        for name in ("conf_threshold", "iou_threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{key}.{name}", f"expected a number in [0, 1], got {v}")
        if self.max_detections < 1:
            raise ConfigError(f"{key}.max_detections", f"expected >= 1, got {self.max_detections}")
        if not 1 <= self.frame_capacity <= 2048:  # the range the GPU tests cover (one Triton block a frame)
            raise ConfigError(f"{key}.frame_capacity", f"expected 1..2048, got {self.frame_capacity}")


@dataclass(frozen=True)
class JobConfig:
    """The whole job. Build with :func:`load_config` or :func:`parse_config`."""

    sources: list[SourceEntry]
    sinks: list[PluginConfig]
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    tracker: TrackerConfig | None = None  # no tracking unless the section is given
    analytics: AnalyticsConfig | None = None  # zones and lines (needs a tracker)
    secondary: tuple[SecondaryConfig, ...] = ()  # models on crops of the detections (cascades)
    extra: dict[str, Any] = field(default_factory=dict)  # sections owned by later stages (live:)


_TOP_KEYS = ("sources", "sinks", "model", "engine", "preprocess", "decode", "postprocess", "tracker", "analytics",
             "secondary")
_EXTRA_KEYS = ("live",)


def _is_cuda_device(text: str) -> bool:
    return text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())


def parse_source(raw: Any, key: str) -> SourceEntry:
    """A ``sources:`` entry: a string (path, glob, dir, or URI) or a mapping."""
    if isinstance(raw, str):
        if not raw.strip():
            raise ConfigError(key, "empty source")
        if "://" in raw:
            return SourceEntry(uri=raw)
        return SourceEntry(path=raw)
    return from_dict(SourceEntry, raw, key)


def parse_config(raw: Any, base_dir: Path | None = None) -> JobConfig:
    """Validate a parsed YAML document into a :class:`JobConfig`.

    ``base_dir`` (the YAML's folder) resolves every relative path of the document (see
    the module docstring); without it relative paths are kept as written, so they are
    relative to the current directory.
    """
    from streams.sinks import SINKS  # registry of sink plugins

    if not isinstance(raw, Mapping):
        raise ConfigError("", f"the config must be a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_TOP_KEYS) - set(_EXTRA_KEYS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown section; expected one of {list(_TOP_KEYS + _EXTRA_KEYS)}")
    sources_raw = raw.get("sources")
    if sources_raw is None or sources_raw == []:
        raise ConfigError("sources", "at least one source is required")
    if isinstance(sources_raw, (str, Mapping)):
        sources_raw = [sources_raw]
    if not isinstance(sources_raw, list):
        raise ConfigError("sources", f"expected a list, got {type(sources_raw).__name__}")
    sources = [parse_source(s, f"sources[{i}]") for i, s in enumerate(sources_raw)]
    if base_dir is not None:
        sources = [_resolve_source(s, base_dir) for s in sources]
    sinks_raw = raw.get("sinks", [{"type": "jsonl", "path": "fovea-out/detections.jsonl"}])
    if not isinstance(sinks_raw, list) or not sinks_raw:
        raise ConfigError("sinks", "expected a non-empty list of sinks")
    if base_dir is not None and "sinks" in raw:
        sinks_raw = [_resolve_sink(s, base_dir) for s in sinks_raw]
    sinks = [SINKS.parse(s, f"sinks[{i}]") for i, s in enumerate(sinks_raw)]
    model = from_dict(ModelConfig, raw.get("model"), "model")
    engine = from_dict(EngineConfig, _engine_section(raw.get("engine")), "engine")
    if base_dir is not None:
        model, engine = _resolve_model(model, base_dir), _resolve_engine(engine, base_dir)
    return JobConfig(
        sources=sources,
        sinks=sinks,
        model=model,
        engine=engine,
        preprocess=from_dict(PreprocessConfig, raw.get("preprocess"), "preprocess"),
        decode=from_dict(DecodeConfig, raw.get("decode"), "decode"),
        postprocess=from_dict(PostprocessConfig, raw.get("postprocess"), "postprocess"),
        tracker=None if raw.get("tracker") is None else from_dict(TrackerConfig, raw["tracker"], "tracker"),
        analytics=None if raw.get("analytics") is None else from_dict(AnalyticsConfig, raw["analytics"],
                                                                       "analytics"),
        secondary=_secondary_section(raw.get("secondary"), raw.get("tracker") is not None, base_dir),
        extra={k: raw[k] for k in _EXTRA_KEYS if k in raw},
    )


def _secondary_section(raw: Any, has_tracker: bool, base: Path | None) -> tuple[SecondaryConfig, ...]:
    """``secondary:``: a list of :class:`~streams.cascade_config.SecondaryConfig`, paths resolved."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("secondary", f"expected a list of models, got {type(raw).__name__}")
    entries = [from_dict(SecondaryConfig, r, f"secondary[{i}]") for i, r in enumerate(raw)]
    validate_secondaries(entries, has_tracker)
    if base is not None:
        entries = [e if e.model.startswith(BUILTIN_PREFIX) else replace(e, model=_resolve(e.model, base))
                   for e in entries]
        entries = [replace(e, labels=_resolve(e.labels, base)) if isinstance(e.labels, str) else e
                   for e in entries]
    return tuple(entries)


def _engine_section(raw: Any) -> Any:
    """``engine:`` with the deprecated ``streams`` key renamed to ``inference_threads``."""
    if not isinstance(raw, Mapping) or "streams" not in raw:
        return raw
    if "inference_threads" in raw:
        raise ConfigError("engine.streams", "the old name of engine.inference_threads; give only "
                                            "engine.inference_threads")
    log.warning("config: engine.streams is deprecated, use engine.inference_threads (same meaning)")
    out = {k: v for k, v in raw.items() if k != "streams"}
    out["inference_threads"] = raw["streams"]
    return out


def _resolve(path: str, base: Path) -> str:
    """``path`` against ``base`` unless it is absolute (``~`` counts as absolute), ``..`` folded."""
    return path if Path(path).expanduser().is_absolute() else os.path.normpath(base / path)


_FILE_URI = "file://"


def _resolve_file_uri(uri: str, base: Path) -> str:
    """A ``file://`` URI with a relative path (``file://clips/a.mp4``) made absolute against
    ``base``; any other URI is returned as is."""
    if not uri.lower().startswith(_FILE_URI):
        return uri
    rest = uri[len(_FILE_URI):]
    if not rest or rest.startswith("/"):
        return uri
    return _FILE_URI + str(Path(_resolve(rest, base)).expanduser())


def _resolve_source(s: SourceEntry, base: Path) -> SourceEntry:
    if s.path is not None:
        return replace(s, path=_resolve(s.path, base))
    if s.list is not None:
        return replace(s, list=_resolve(s.list, base))
    if s.uri is not None:
        return replace(s, uri=_resolve_file_uri(s.uri, base))
    return s


def _resolve_sink(raw: Any, base: Path) -> Any:
    """A ``sinks:`` entry with its ``path`` (file sinks) resolved; others unchanged."""
    if isinstance(raw, Mapping) and isinstance(raw.get("path"), str) and raw["path"]:
        return {**raw, "path": _resolve(raw["path"], base)}
    return raw


def _resolve_model(model: ModelConfig, base: Path) -> ModelConfig:
    if model.path != "default":
        model = replace(model, path=_resolve(model.path, base))
    if isinstance(model.class_names, str):
        model = replace(model, class_names=_resolve(model.class_names, base))
    return model


def _resolve_engine(engine: EngineConfig, base: Path) -> EngineConfig:
    trt = engine.tensorrt
    calibration = None if trt.int8_calibration is None else [_resolve(v, base) for v in trt.int8_calibration]
    trt = replace(trt, cache_dir=_resolve(trt.cache_dir, base), int8_calibration=calibration)
    return replace(engine, tensorrt=trt)


def _command_line_paths(overrides: Mapping[str, Any], cwd: Path) -> dict[str, Any]:
    """``overrides`` with their paths (sources, model, out) made absolute against ``cwd``."""
    out = dict(overrides)
    sources = overrides.get("sources")
    if sources:
        resolved: list[Any] = []
        for s in sources:
            if isinstance(s, str):
                resolved.append(_resolve_file_uri(s, cwd) if "://" in s else _resolve(s, cwd))
            elif isinstance(s, Mapping) and isinstance(s.get("list"), str):
                resolved.append({**s, "list": _resolve(s["list"], cwd)})
            else:
                resolved.append(s)
        out["sources"] = resolved
    model = overrides.get("model")
    if isinstance(model, str) and model and model != "default":
        out["model"] = _resolve(model, cwd)
    folder = overrides.get("out")
    if isinstance(folder, (str, Path)) and str(folder):
        out["out"] = _resolve(str(folder), cwd)
    return out


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> JobConfig:
    """Read, merge command-line ``overrides`` and validate a YAML config.

    ``overrides`` may hold ``sources`` (list), ``model`` (path), ``out`` (output folder:
    replaces the sinks' folders) and ``device`` (engine and decode device). They come from
    the command line, so their relative paths are relative to the current directory; the
    config's own are relative to its folder (module docstring).
    """
    raw: dict[str, Any] = {}
    base_dir: Path | None = None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("", f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError("", f"{p} is not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("", f"{p}: the config must be a mapping of sections")
        raw = loaded
        base_dir = p.resolve().parent
    raw = apply_overrides(raw, _command_line_paths(overrides or {}, Path.cwd()))
    return parse_config(raw, base_dir)


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with the command-line overrides applied."""
    out = dict(raw)
    if overrides.get("sources"):
        out["sources"] = list(overrides["sources"])
    if overrides.get("model"):
        model = dict(out.get("model") or {})
        model["path"] = overrides["model"]
        out["model"] = model
    if overrides.get("device"):
        dev = overrides["device"]
        engine = dict(out.get("engine") or {})
        engine["device"] = dev
        out["engine"] = engine
        decode = dict(out.get("decode") or {})
        decode["backend"] = "cpu" if dev == "cpu" else ("auto" if dev == "auto" else "gpu")
        out["decode"] = decode
    if overrides.get("out"):
        from streams.sinks import default_path  # a sink without a path (a bare sqlite) moves too

        folder = Path(overrides["out"])
        sinks = out.get("sinks") or [
            {"type": "jsonl", "path": "detections.jsonl"},
            {"type": "csv", "path": "detections.csv"},
        ]
        new_sinks = []
        for s in sinks:
            s = dict(s)
            if "path" not in s and (default := default_path(s.get("type"))) is not None:
                s["path"] = default
            if isinstance(s.get("path"), str):
                s["path"] = str(folder / Path(s["path"]).name)
            new_sinks.append(s)
        out["sinks"] = new_sinks
    return out
