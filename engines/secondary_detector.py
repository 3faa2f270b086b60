"""Secondary detectors: a detector run on letterboxed crops of the primary detections.

:func:`open_secondary_detector` loads what a ``secondary:`` entry of ``kind: detector`` names
(an ONNX file, TorchScript or a ``torch.export`` program) and returns a
:class:`SecondaryDetector`: a context manager whose hot-path method
:meth:`~SecondaryDetector.detect` takes letterboxed crops
(:func:`operators.crops.crop_letterbox`) and their geometries and returns each crop's boxes
in crop pixels.

Nothing here decodes: the model's outputs go through the primary model's path. Its layout
is told from its outputs and its file's metadata by
:func:`operators.output_decoding.detect_layout` (YOLOv8/11, YOLOv5, end-to-end heads of
YOLOv10/YOLO26 or exports with NMS, RT-DETR and DETR-style heads), its outputs are picked by
:func:`~operators.output_decoding.select_outputs`, and
:func:`operators.postprocess.postprocess` applies the score threshold, NMS where the family
needs it, the ``max_det`` best, and maps the boxes back through each crop's letterbox
geometry (model-input pixels to crop pixels, clipped to the crop).

Refused at load, with the entry's key (:class:`~streams.errors.ConfigError`): outputs that
fit no detector layout, a segmentation or pose model, labels that do not match the model's
class count, an input size the model does not take, a file whose metadata says it is no
detector. Where it runs is :mod:`engines.secondary`'s rule: ONNX through ONNX Runtime on the
CPU (:class:`engines.onnxruntime_engine.OnnxRuntimeEngine`), through ``onnx2torch`` on a GPU;
torch files on the job's device.

Usage::

    with open_secondary_detector(cfg.secondary[1], "cpu", "secondary[1]") as det:
        per_crop = det.detect(lb.crops, geometries)   # list[Detections], crop pixels
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import torch

from engines.model_info import SUPPORTED_TASKS
from engines.secondary import (
    SecondaryInfo,
    load_torch_module,
    model_path,
    norm_tensors,
    normalise,
    onnx_facts,
    probe_blank_crop,
    secondary_info,
)
from operators.boxes import LetterboxGeometry
from operators.output_decoding import LayoutHints, OutputLayout, detect_layout, select_outputs
from operators.postprocess import postprocess
from streams.cascade_config import BUILTIN_PREFIX, SecondaryConfig
from streams.config import PostprocessConfig
from streams.detections import Detections
from streams.errors import ConfigError, ShapeError

log = logging.getLogger(__name__)

__all__ = ["DETECT_LAYOUTS", "CropDetector", "SecondaryDetector", "open_secondary_detector"]

#: The output layouts a secondary detector may have: the primary model's detect layouts.
DETECT_LAYOUTS = ("yolov8", "yolov5", "efficient_nms", "end2end", "rtdetr", "detr")

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@runtime_checkable
class SecondaryDetector(Protocol):
    """A loaded secondary detector (module docstring)."""

    info: SecondaryInfo
    layout: str
    device: str

    def __enter__(self) -> SecondaryDetector: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def detect(self, crops: torch.Tensor, geometries: Sequence[LetterboxGeometry]) -> list[Detections]:
        """``float32[K, 3, h, w]`` letterboxed crops (RGB, 0..1) and each one's geometry (the
        crop's region as the source) → per crop, its boxes in crop pixels, best first."""
        ...


class CropDetector:
    """A detector behind a forward function (a torch module, or an entered ONNX Runtime
    engine) as a :class:`SecondaryDetector`."""

    def __init__(self, forward: Forward, info: SecondaryInfo, layout: str, device: str, max_batch: int,
                 params: PostprocessConfig, closer: Any = None) -> None:
        self.forward = forward
        self.info = info
        self.layout = layout
        self.device = device
        self.max_batch = max_batch
        self.params = params
        self._closer = closer  # the entered engine to exit, if any
        self._mean, self._std = norm_tensors(info, device)

    def __enter__(self) -> CropDetector:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._closer is not None:
            self._closer.__exit__(exc_type, exc, tb)
            self._closer = None

    def detect(self, crops: torch.Tensor, geometries: Sequence[LetterboxGeometry]) -> list[Detections]:
        if len(geometries) != crops.shape[0]:
            raise ShapeError(f"detect: {crops.shape[0]} crops and {len(geometries)} geometries")
        x = normalise(crops.to(self.device), self.info, self._mean, self._std)
        out: list[Detections] = []
        on_cuda = self.device.startswith("cuda")
        layout: OutputLayout = self.layout  # type: ignore[assignment]
        for i in range(0, x.shape[0], self.max_batch):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=on_cuda):
                outs = self.forward(x[i:i + self.max_batch])
            dets = postprocess(select_outputs(outs, layout), layout, geometries[i:i + self.max_batch],
                               self.params, self.info.labels)
            out.extend(d for d in dets if d is not None)
        return out


def _named(out: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """A module's outputs by name: a tensor, a tuple/list (named ``names`` in order, else
    ``output0``, ``output1``...) or a dict."""
    if isinstance(out, Mapping):
        return {str(k): v for k, v in out.items() if isinstance(v, torch.Tensor)}
    seq = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
    labels = list(names) if len(names) == len(seq) else [f"output{i}" for i in range(len(seq))]
    return dict(zip(labels, seq, strict=True))


def _module_forward(module: Any, names: Sequence[str]) -> Forward:
    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return _named(module(x), names)

    return forward


def open_secondary_detector(cfg: SecondaryConfig, device: str, key: str = "secondary") -> SecondaryDetector:
    """Load ``cfg``'s detector for ``device`` (``cfg.device: cpu`` overrides it) and resolve its
    output layout; a model that does not fit the entry is a ConfigError at its key."""
    if cfg.kind != "detector":
        raise ConfigError(f"{key}.kind", f"open_secondary_detector loads detectors, not a {cfg.kind}")
    if cfg.model.startswith(BUILTIN_PREFIX):
        raise ConfigError(f"{key}.model", "the bundled models are classifiers; a detector needs a model file")
    device = "cpu" if cfg.device == "cpu" else device
    path = model_path(cfg, key)
    if path.suffix.lower() == ".onnx":
        forward, info, hints, names, batch, closer = _onnx(cfg, path, device, key)
    else:
        forward = _module_forward(load_torch_module(path, device), ())
        info = secondary_info(cfg, key, None, None, f"torch {path.name}")
        hints = LayoutHints(num_classes=len(info.labels))
        names, batch, closer = (), cfg.max_batch, None
    layout = _layout(cfg, key, info, forward, hints, device)
    params = PostprocessConfig(conf_threshold=cfg.conf_threshold, iou_threshold=cfg.iou_threshold,
                               max_detections=cfg.max_detections)
    log.debug("secondary detector %s: layout %s, outputs %s", path.name, layout, list(names))
    return CropDetector(forward, info, layout, device, batch, params, closer)


def _onnx(cfg: SecondaryConfig, path: Path, device: str, key: str
          ) -> tuple[Forward, SecondaryInfo, LayoutHints, tuple[str, ...], int, Any]:
    """An ONNX detector's forward, info, layout hints (from its metadata), output names, batch
    limit (a static-batch export takes only its batch) and the engine to exit (or None)."""
    facts = onnx_facts(cfg, path, key)
    info = secondary_info(cfg, key, facts.names, facts.input_hw or facts.imgsz, f"onnx {path.name}")
    names = tuple(n for n, _ in facts.outputs)
    hints = LayoutHints(task=facts.task if facts.task in SUPPORTED_TASKS else None, end2end=facts.end2end,
                        head=facts.head, num_classes=len(info.labels))
    batch = min(cfg.max_batch, facts.static_batch or cfg.max_batch)
    if device.startswith("cuda"):
        from engines.onnx_torch import convert_onnx

        # a model onnx2torch cannot convert, or onnx2torch missing, stops the job with the
        # reason (device: cpu runs it on the CPU instead)
        module = convert_onnx(path).to(device).eval()
        return _module_forward(module, names), info, hints, names, batch, None
    from engines.onnxruntime_engine import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(path, device="cpu").__enter__()
    spec = engine.inputs[0]
    dtype = torch.float16 if engine.input_dtype == "float16" else torch.float32

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return engine.infer({spec.name: x.to(dtype).contiguous()})

    return forward, info, hints, names, batch, engine


def _layout(cfg: SecondaryConfig, key: str, info: SecondaryInfo, forward: Forward, hints: LayoutHints,
            device: str) -> str:
    """The model's output layout, from one blank crop's outputs; checked against the labels."""
    outs = probe_blank_crop(cfg, key, info, forward, device)
    shapes = [tuple(t.shape) for t in outs.values()]
    try:
        layout = detect_layout(shapes, list(outs), hints)
    except ShapeError as e:
        hint = " (a classifier's output? set kind: classifier)" if [len(s) for s in shapes] == [2] else ""
        raise ConfigError(f"{key}.model", f"kind: detector, but the outputs of {cfg.model} fit no detector "
                                          f"layout{hint}: {e}") from e
    if layout not in DETECT_LAYOUTS:
        raise ConfigError(f"{key}.model", f"{cfg.model} is a {layout} model; a secondary detector gives boxes "
                                          f"(layouts {', '.join(DETECT_LAYOUTS)}): export its detect variant")
    classes = _class_count(layout, select_outputs(outs, layout))
    if classes is not None and classes != len(info.labels):
        raise ConfigError(f"{key}.labels", f"{len(info.labels)} labels for a model that scores {classes} classes "
                                           f"({cfg.model}, layout {layout})")
    return layout


def _class_count(layout: str, outs: Sequence[torch.Tensor]) -> int | None:
    """The classes a layout's outputs score, where their shape says (``None`` elsewhere)."""
    if layout == "yolov8":
        return int(outs[0].shape[1]) - 4
    if layout == "yolov5":
        return int(outs[0].shape[2]) - 5
    if layout == "detr":
        if len(outs) == 1:
            return int(outs[0].shape[2]) - 4
        logits = [t for t in outs if t.shape[-1] != 4]
        return int(logits[0].shape[-1]) if len(logits) == 1 else None
    return None
