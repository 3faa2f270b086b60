"""What the pipeline knows about the model besides the engine, and where each fact comes from.

Precedence, for every fact (docs/models.md): an explicit config value (``model.input_size``,
``model.class_names``, ``model.task``, ``model.layout``) wins; else what the model file
says (an ONNX export's metadata and its input shape); else Fovea's default. A config
value that contradicts the file is logged once, as a warning, naming both; a config
``input_size`` that a static-shape graph cannot take is a ConfigError (the graph would
refuse every batch).

The model input's shape (:func:`rect_canvas_stride`): a dynamic-shape letterbox export runs,
as Ultralytics runs it, at the smallest stride-aligned rectangle around each frame's
letterboxed size (``preprocess.canvas: auto``), unless the config pins ``model.input_size``
or asks for ``canvas: square``; everything else runs at ``input_size``.

Usage::

    facts = read_onnx(path)
    info = onnx_model_info(cfg.model, facts, load_class_names(cfg.model.class_names))
    info.input_size, info.task, info.dynamic
    stride = rect_canvas_stride(info, cfg.preprocess, pinned=cfg.model.input_size is not None)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engines.onnx_model import OnnxFacts
from streams.config import ModelConfig, PreprocessConfig
from streams.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from operators.output_decoding import LayoutHints

log = logging.getLogger(__name__)

__all__ = ["SUPPORTED_TASKS", "ModelInfo", "layout_hints", "model_resize", "onnx_model_info", "rect_canvas_stride"]

SUPPORTED_TASKS = ("detect", "segment", "pose")
_noted: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about the model besides the engine itself.

    Attributes:
        class_names: names indexed by class id (may be empty).
        input_size: ``(height, width)`` the model runs at (for a dynamic-shape export: its
            ``imgsz``, the size of the canvas a frame is letterboxed into).
        layout: the output layout (``"auto"`` until resolved by ``output_layout``).
        source: the model file (or "the bundled detector"), for messages.
        task: ``detect``, ``segment``, ``pose``, or ``auto`` (unknown: the outputs decide).
        end2end: the file says its head is end-to-end (``None``: it does not say).
        head: the exporter's head class (``RTDETRDecoder``, ...), if the file says.
        stride: the model's largest stride: a dynamic-shape input's sides are multiples of it.
        dynamic: the graph takes other input sizes than ``input_size`` (symbolic height and width).
        resize: how the exporting framework fits frames into the input: ``letterbox`` or
            ``stretch`` (Ultralytics' RT-DETR).
    """

    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    layout: str
    source: str = "the model"
    task: str = "auto"
    end2end: bool | None = None
    head: str | None = None
    stride: int = 32
    dynamic: bool = False
    resize: str = "letterbox"


def note_conflict(source: str, key: str, message: str, *args: object) -> None:
    """Log a config-vs-file conflict once per (model, key), as a warning."""
    if (source, key) not in _noted:
        _noted.add((source, key))
        log.warning(message, *args)


def onnx_model_info(model: ModelConfig, facts: OnnxFacts, names: tuple[str, ...] | None) -> ModelInfo:
    """:class:`ModelInfo` of an ONNX model: ``model`` (the config, with its class names
    loaded as ``names``) over ``facts`` (the file), by the module's precedence."""
    src = str(facts.path)
    file_names = facts.names
    if names is not None and file_names is not None and names != file_names:
        note_conflict(src, "class_names", "%s: model.class_names (%d names, first %r) differs from the file's "
                      "names (%d, first %r): using model.class_names", facts.path.name, len(names),
                      names[0] if names else None, len(file_names), file_names[0] if file_names else None)
    size = _input_size(model, facts)
    task = _task(model, facts)
    resize = model_resize(facts)
    return ModelInfo(
        class_names=names if names is not None else (file_names or ()),
        input_size=size,
        layout=model.layout,
        source=src,
        task=task,
        end2end=facts.end2end,
        head=facts.head,
        stride=facts.stride or 32,
        dynamic=facts.input_hw is None,
        resize=resize,
    )


def model_resize(facts: OnnxFacts) -> str:
    """How the exporting framework fits frames into the model's input: ``stretch`` for
    Ultralytics' RT-DETR (``LetterBox(scale_fill=True)``), else ``letterbox``."""
    return "stretch" if (facts.head or "").startswith("RTDETR") else "letterbox"


def _input_size(model: ModelConfig, facts: OnnxFacts) -> tuple[int, int]:
    static = facts.input_hw
    meta = facts.imgsz
    if model.input_size is not None:
        size = (int(model.input_size[0]), int(model.input_size[1]))
        if static is not None and size != static:
            raise ConfigError("model.input_size", f"{list(size)}, but {facts.path.name} takes only {list(static)} "
                              "images (a static-shape export); remove model.input_size or export the model at "
                              "that size")
        if static is None and meta is not None and size != meta:
            note_conflict(str(facts.path), "input_size", "%s: model.input_size %s differs from the export's "
                          "imgsz %s: using model.input_size", facts.path.name, list(size), list(meta))
        return size
    if static is not None:
        if meta is not None and meta != static:
            log.info("%s: input %s, metadata imgsz %s: using the input's size", facts.path.name, list(static),
                     list(meta))
        return static
    if meta is not None:
        log.info("%s: a dynamic-shape export; its metadata says imgsz %s", facts.path.name, list(meta))
        return meta
    raise ConfigError("model.input_size", f"{facts.path.name} has a dynamic input size and no imgsz metadata; "
                      "set model.input_size")


def _task(model: ModelConfig, facts: OnnxFacts) -> str:
    meta = facts.task
    if model.task != "auto":
        if meta is not None and meta != model.task:
            note_conflict(str(facts.path), "task", "%s: model.task %s differs from the file's task %s: using "
                          "model.task", facts.path.name, model.task, meta)
        return model.task
    if meta is None:
        return "auto"
    if meta not in SUPPORTED_TASKS:
        raise EngineError(f"{facts.path}: a {meta!r} model (the file's metadata says so); Fovea runs "
                          f"{', '.join(SUPPORTED_TASKS)} models")
    return meta


def rect_canvas_stride(info: ModelInfo, options: PreprocessConfig, pinned: bool) -> int | None:
    """The stride of the rectangle canvases a job letterboxes frames into, or ``None`` for the
    square ``info.input_size`` canvas.

    ``options.canvas``: ``square``: ``None``. ``auto``: ``info.stride`` for a dynamic-shape
    export (``info.dynamic``) that letterboxes (the model's and the config's ``resize``) and
    whose size the config does not pin (``pinned``: ``model.input_size`` is set; a pinned size
    is taken as a fixed input shape); else ``None``. ``rect``: ``info.stride`` wherever the
    model can take it; a static-shape or stretching model is a ConfigError
    (``preprocess.canvas``). The choice is logged once per model.
    """
    canvas = options.canvas
    if canvas == "square":
        return None
    why = None
    if not info.dynamic:
        why = f"{info.source} takes only {list(info.input_size)} images (a static-shape model)"
    elif "stretch" in (info.resize, options.resize):
        who = "the model" if info.resize == "stretch" else "preprocess.resize"
        why = f"{who} stretches frames over the whole input (no letterbox to fit a rectangle around)"
    if canvas == "rect" and why is not None:
        raise ConfigError("preprocess.canvas", f"rect, but {why}; use auto or square")
    if why is not None:
        return None
    first = (info.source, "canvas") not in _noted
    _noted.add((info.source, "canvas"))
    if canvas == "auto" and pinned:
        if first:
            log.info("%s: a dynamic-shape export with model.input_size %s in the config: frames are letterboxed "
                     "into that whole size (preprocess.canvas: auto; rect for the smallest %d-aligned rectangle, "
                     "as Ultralytics runs it)", info.source, list(info.input_size), info.stride)
        return None
    if first:
        log.info("%s: a dynamic-shape export: each file is letterboxed into the smallest %d-aligned rectangle "
                 "around its frame within %s, as Ultralytics runs it (preprocess.canvas: %s; square for the whole "
                 "size)", info.source, info.stride, list(info.input_size), canvas)
    return info.stride


def layout_hints(info: ModelInfo) -> LayoutHints:
    """The :class:`~operators.output_decoding.LayoutHints` ``info`` gives ``detect_layout``."""
    from operators.output_decoding import LayoutHints

    return LayoutHints(task=None if info.task == "auto" else info.task, end2end=info.end2end, head=info.head,
                       num_classes=len(info.class_names) or None)
