"""Secondary models: classifiers that run on crops of the primary detections.

:func:`open_secondary_model` loads what a ``secondary:`` entry of ``kind: classifier`` names
(the bundled classifier, an ONNX file, TorchScript or a ``torch.export`` program) and
returns a :class:`SecondaryModel`: a context manager whose hot-path method
:meth:`~SecondaryModel.classify` takes crops ``float32[K, 3, h, w]`` (RGB, 0..1, on the
model's device) and returns each crop's best label index and its score. Detectors
(``kind: detector``) load through :mod:`engines.secondary_detector`, with the helpers here
(labels, input size, normalisation, model files).

Where it runs: on the primary engine's CUDA device when there is one (torch, FP16 autocast;
ONNX files converted by :func:`engines.onnx_torch.convert_onnx`, since ``onnxruntime``
here has no CUDA provider), on the
CPU otherwise or when the entry says ``device: cpu``. An ONNX model that cannot run on the
GPU fails at load with the reason; it never moves to the CPU on its own.

Usage::

    with open_secondary_model(cfg.secondary[0], "cuda:0") as model:
        label_idx, score = model.classify(crops)     # int64[K], float32[K], on the device
        model.info.labels[int(label_idx[0])]
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

from engines._messages import reason
from engines.onnx_model import OnnxFacts, read_onnx
from streams.cascade_config import BUILTIN_PREFIX, SecondaryConfig
from streams.errors import ConfigError, EngineError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Suffixes of the torch files a secondary model may come in (TorchScript, torch.export).
TORCH_SUFFIXES = (".pt", ".ts", ".torchscript", ".pt2", ".jit")


@dataclass(frozen=True)
class SecondaryInfo:
    """What the loaded model takes and gives: its labels, crop size and input normalisation."""

    labels: tuple[str, ...]
    input_size: tuple[int, int]  # (h, w) of the crops
    mean: tuple[float, float, float] | None  # (x - mean) / std on 0..1 RGB, before the model; None: none
    std: tuple[float, float, float] | None
    bgr: bool  # the model wants BGR channel order
    description: str  # for logs and the job summary


@runtime_checkable
class SecondaryModel(Protocol):
    """A loaded secondary classifier (module docstring)."""

    info: SecondaryInfo
    device: str

    def __enter__(self) -> SecondaryModel: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def classify(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``float32[K, 3, h, w]`` crops (RGB, 0..1) → ``(int64[K] label index, float32[K] score)``."""
        ...


class TorchSecondary:
    """A torch module (the bundled classifier, TorchScript, an exported program) as a :class:`SecondaryModel`."""

    def __init__(self, module: Any, info: SecondaryInfo, device: str, max_batch: int) -> None:
        self.module = module
        self.info = info
        self.device = device
        self.max_batch = max_batch
        self._mean, self._std = norm_tensors(info, device)

    def __enter__(self) -> TorchSecondary:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def classify(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if crops.shape[0] == 0:
            return (torch.zeros(0, dtype=torch.int64, device=crops.device),
                    torch.zeros(0, dtype=torch.float32, device=crops.device))
        x = normalise(crops, self.info, self._mean, self._std)
        outs = []
        on_cuda = self.device.startswith("cuda")
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=on_cuda):
            for i in range(0, x.shape[0], self.max_batch):
                outs.append(first_tensor(self.module(x[i:i + self.max_batch])).float())
        return _best(torch.cat(outs), len(self.info.labels))


class OnnxRuntimeSecondary:
    """An ONNX classifier through onnxruntime on the CPU (``device: cpu``, or no GPU)."""

    def __init__(self, path: Path, info: SecondaryInfo, max_batch: int) -> None:
        import onnxruntime as ort

        self.info = info
        self.device = "cpu"
        self.max_batch = max_batch
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self._mean, self._std = norm_tensors(info, "cpu")

    def __enter__(self) -> OnnxRuntimeSecondary:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def classify(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalise(crops.cpu(), self.info, self._mean, self._std).numpy().astype(np.float32)
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float32)
        outs = [self.session.run(None, {self.input_name: x[i:i + self.max_batch]})[0]
                for i in range(0, x.shape[0], self.max_batch)]
        return _best(torch.from_numpy(np.concatenate(outs)).float(), len(self.info.labels))


def norm_tensors(info: SecondaryInfo, device: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``info``'s mean and std as ``[1, 3, 1, 1]`` tensors on ``device`` (``None``: none)."""
    mean = None if info.mean is None else torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
    std = None if info.std is None else torch.tensor(info.std, device=device).view(1, 3, 1, 1)
    return mean, std


def normalise(crops: torch.Tensor, info: SecondaryInfo, mean: torch.Tensor | None,
              std: torch.Tensor | None) -> torch.Tensor:
    """Crops (RGB, 0..1) as the model takes them: channel order, then ``(x - mean) / std``."""
    x = crops.flip(1) if info.bgr else crops
    if mean is not None:
        x = x - mean
    if std is not None:
        x = x / std
    return x


def first_tensor(out: Any) -> torch.Tensor:
    """A model's classification output: the tensor itself, or the first of a tuple/list/dict."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and out:
        return first_tensor(next(iter(out.values())))
    raise EngineError(f"a secondary model returned {type(out).__name__}; expected a tensor [N, classes]")


def _best(scores: torch.Tensor, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best label and its probability per row; rows that are not probabilities get a softmax."""
    if scores.ndim != 2 or scores.shape[1] != num_labels:
        raise EngineError(f"a secondary model's output has shape {tuple(scores.shape)}; expected "
                          f"[N, {num_labels}] (one score per label)")
    is_prob = bool(((scores >= 0) & (scores <= 1)).all()) and bool(
        (scores.sum(1) - 1).abs().max() < 1e-3)
    probs = scores if is_prob else torch.softmax(scores, dim=1)
    score, idx = probs.max(dim=1)
    return idx.to(torch.int64), score.to(torch.float32)


def _labels(cfg: SecondaryConfig, key: str, own: tuple[str, ...] | None) -> tuple[str, ...]:
    if isinstance(cfg.labels, list):
        return tuple(str(v) for v in cfg.labels)
    if isinstance(cfg.labels, str):
        try:
            lines = Path(cfg.labels).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ConfigError(f"{key}.labels", f"cannot read the labels file {cfg.labels}: {e.strerror or e}") from e
        labels = tuple(s.strip() for s in lines if s.strip())
        if not labels:
            raise ConfigError(f"{key}.labels", f"the labels file {cfg.labels} has no labels")
        return labels
    if own:
        return own
    raise ConfigError(f"{key}.labels", f"the model {cfg.model} names no labels; give labels: [...] or a file")


def secondary_info(cfg: SecondaryConfig, key: str, own_labels: tuple[str, ...] | None,
                   own_size: tuple[int, int] | None, description: str) -> SecondaryInfo:
    """What ``cfg``'s model takes and gives, from the config where it says, else the model's
    own (``own_*``); a ConfigError with the key where neither says or they disagree."""
    if cfg.input_size is not None:
        size = (int(cfg.input_size[0]), int(cfg.input_size[1]))
        if own_size is not None and own_size != size:
            raise ConfigError(f"{key}.input_size", f"{list(size)} does not fit the model {cfg.model}, whose input "
                                                   f"is {list(own_size)}")
    elif own_size is not None:
        size = own_size
    else:
        raise ConfigError(f"{key}.input_size", f"the model {cfg.model} has no fixed input size; give "
                                               "input_size: [height, width]")
    mean = None if cfg.mean is None else (float(cfg.mean[0]), float(cfg.mean[1]), float(cfg.mean[2]))
    std = None if cfg.std is None else (float(cfg.std[0]), float(cfg.std[1]), float(cfg.std[2]))
    return SecondaryInfo(_labels(cfg, key, own_labels), size, mean, std, cfg.channels == "bgr", description)


def open_secondary_model(cfg: SecondaryConfig, device: str, key: str = "secondary") -> SecondaryModel:
    """Load ``cfg``'s classifier for ``device`` (``cfg.device: cpu`` overrides it) and check that
    its labels and input fit the config (:class:`~streams.errors.ConfigError` with the key if not)."""
    if cfg.kind != "classifier":
        raise ConfigError(f"{key}.kind", f"open_secondary_model loads classifiers; a {cfg.kind} loads through "
                                         "engines.secondary_detector")
    device = "cpu" if cfg.device == "cpu" else device
    if cfg.model.startswith(BUILTIN_PREFIX):
        return _builtin(cfg, device, key)
    path = model_path(cfg, key)
    if path.suffix.lower() == ".onnx":
        return _onnx(cfg, path, device, key)
    return _torch_file(cfg, path, device, key)


def model_path(cfg: SecondaryConfig, key: str) -> Path:
    """``cfg.model`` as a file of a format secondary models come in, or a ConfigError."""
    path = Path(cfg.model)
    if not path.is_file():
        raise ConfigError(f"{key}.model", f"no such model file: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".onnx", *TORCH_SUFFIXES):
        raise ConfigError(f"{key}.model", f"unknown model format '{suffix}' ({path}); expected .onnx, TorchScript "
                                          "(.pt/.ts) or an exported program (.pt2)")
    return path


def _builtin(cfg: SecondaryConfig, device: str, key: str) -> SecondaryModel:
    from engines.classifier.model import load_default_classifier

    name = cfg.model[len(BUILTIN_PREFIX):]
    model, card = load_default_classifier(device)
    if name != card.attribute:
        raise ConfigError(f"{key}.model", f"no bundled model '{name}'; bundled: builtin:{card.attribute}")
    info = secondary_info(cfg, key, card.labels, card.input_size, f"bundled {card.attribute} classifier")
    if len(info.labels) != len(card.labels):
        raise ConfigError(f"{key}.labels", f"{len(info.labels)} labels given; the bundled model has "
                                           f"{len(card.labels)}: {list(card.labels)}")
    return TorchSecondary(model, info, device, cfg.max_batch)


def load_torch_module(path: Path, device: str) -> Any:
    """The TorchScript module or exported program in ``path``, in eval mode on ``device``."""
    try:
        if path.suffix.lower() == ".pt2":
            module = torch.export.load(str(path)).module()
        else:
            module = torch.jit.load(str(path), map_location=device)
    except Exception as e:  # torch raises RuntimeError, ValueError, zipfile errors... for a bad file
        raise EngineError(f"{path}: not a TorchScript or exported torch model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from e
    return module.to(device).eval() if hasattr(module, "eval") else module.to(device)


def _torch_file(cfg: SecondaryConfig, path: Path, device: str, key: str) -> SecondaryModel:
    module = load_torch_module(path, device)
    info = secondary_info(cfg, key, None, None, f"torch {path.name}")
    _check_output(cfg, key, info, lambda x: first_tensor(module(x)), device)
    return TorchSecondary(module, info, device, cfg.max_batch)


def onnx_facts(cfg: SecondaryConfig, path: Path, key: str) -> OnnxFacts:
    """What the ONNX file says about itself (:func:`engines.onnx_model.read_onnx`), with its
    metadata's ``task`` checked against ``cfg.kind`` (a ConfigError at ``kind`` if they differ)."""
    facts = read_onnx(path)
    kind = {"classify": "classifier", "detect": "detector"}.get(facts.task or "")
    if facts.task is not None and kind != cfg.kind:
        fix = f"set kind: {kind}" if kind else "secondary models are classifiers or detectors"
        raise ConfigError(f"{key}.kind", f"{cfg.kind}, but {path.name}'s metadata says it is a {facts.task!r} "
                                         f"model; {fix}")
    return facts


def _onnx(cfg: SecondaryConfig, path: Path, device: str, key: str) -> SecondaryModel:
    facts = onnx_facts(cfg, path, key)
    info = secondary_info(cfg, key, facts.names, facts.input_hw or facts.imgsz, f"onnx {path.name}")
    out_dims = facts.outputs[0][1]
    classes = out_dims[-1] if len(out_dims) == 2 else None
    if classes is not None and classes != len(info.labels):
        raise ConfigError(f"{key}.labels", f"{len(info.labels)} labels for a model with {classes} outputs ({path})")
    batch = min(cfg.max_batch, facts.static_batch or cfg.max_batch)
    if not device.startswith("cuda"):
        return OnnxRuntimeSecondary(path, info, batch)
    from engines.onnx_torch import convert_onnx

    # onnx2torch with the converters Ultralytics-style exports need; a model it cannot convert,
    # or onnx2torch missing, stops the job with the reason (device: cpu runs it on the CPU instead)
    module = convert_onnx(path).to(device).eval()
    _check_output(cfg, key, info, lambda x: first_tensor(module(x)), device)
    return TorchSecondary(module, info, device, batch)


def probe_blank_crop(cfg: SecondaryConfig, key: str, info: SecondaryInfo, run: Callable[[torch.Tensor], T],
                     device: str) -> T:
    """``run`` on one blank crop of the model's input size, at load: a model that rejects its
    configured input is a :class:`ConfigError` at ``<key>.input_size`` (classifiers and
    detectors, :mod:`engines.secondary_detector`, check their outputs on what this returns)."""
    h, w = info.input_size
    with torch.inference_mode():
        try:
            return run(torch.zeros((1, 3, h, w), device=device))
        except Exception as e:  # a model that rejects its configured input
            raise ConfigError(f"{key}.input_size", f"the model {cfg.model} does not take a [1, 3, {h}, {w}] "
                                                   f"input: {type(e).__name__}: {reason(e)}") from e


def _check_output(cfg: SecondaryConfig, key: str, info: SecondaryInfo, run: Callable[[torch.Tensor], torch.Tensor],
                  device: str) -> None:
    """One blank crop through the model: its output must be ``[1, len(labels)]``."""
    out = probe_blank_crop(cfg, key, info, run, device)
    if out.ndim != 2 or out.shape[1] != len(info.labels):
        hint = "; a detector's output? set kind: detector" if out.ndim == 3 else ""
        raise ConfigError(f"{key}.labels", f"{len(info.labels)} labels for a model whose output is "
                                           f"{list(out.shape)} ({cfg.model}){hint}")
