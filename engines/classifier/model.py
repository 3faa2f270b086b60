"""``FoveaCls``: the small crop classifier bundled with Fovea (the synthetic objects' ``pattern``).

A secondary model of a cascade: it sees one detected object at a time, cut from the
source-resolution frame and resized (:func:`operators.crops.crop_resize`), and names an
attribute of it that the detector's class does not tell (solid, striped or dotted;
:mod:`streams.synthetic.attributes`). A plain residual CNN, far below ResNet18 in size:
a 3x3 stem, three stages of two 3x3 conv-BN-ReLU layers with a residual shortcut (the
first of each halves the resolution), global average pooling and a linear layer.

Input ``float32[B, 3, H, W]``, RGB in [0, 1] (``crop_resize``'s output as it is): the
mean/std normalisation is inside the model, so a caller only resizes. Any ``H, W`` works
(global pooling); the weights were trained at :attr:`ClassifierInfo.input_size`. Output
``float32[B, num_labels]``: logits (apply a softmax for confidences).

Usage::

    model, info = load_default_classifier()      # eval mode, on the CPU
    info.labels, info.input_size, info.attribute # ("solid", "striped", "dotted"), (32, 32), "pattern"
    crops = crop_resize(frames, frame_index, boxes, info.input_size)
    probs = model(crops).softmax(1)              # [K, 3]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from torch import nn

WEIGHTS_PACKAGE = "engines"  # files under engines/weights/ (package data of engines)
WEIGHTS_FILE = "fovea_cls_pattern.pt"
INFO_FILE = "fovea_cls_pattern.json"
# the crops' channel statistics (RGB, 0..1) over the shipped weights' training set; training
# measures its own and stores them in the model (buffers) and the .json
MEAN: tuple[float, float, float] = (0.516, 0.418, 0.425)
STD: tuple[float, float, float] = (0.263, 0.23, 0.254)
WIDTHS: tuple[int, int, int, int] = (24, 32, 64, 128)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) + BatchNorm + ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResidualStage(nn.Module):
    """Two 3x3 conv-BN(-ReLU) layers, the first with ``stride``; a 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(c_in, c_out, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class FoveaCls(nn.Module):
    """Crop classifier; see the module docstring for inputs and outputs."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, num_labels: int = 3, widths: Sequence[int] = WIDTHS,
                 mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.num_labels = num_labels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = ConvBNReLU(3, w0)
        self.stages = nn.Sequential(ResidualStage(w0, w1), ResidualStage(w1, w2), ResidualStage(w2, w3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``float32[B, 3, H, W]`` RGB in [0, 1] -> logits ``float32[B, num_labels]``."""
        x = (x - self.mean) * self.inv_std
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def conv_macs(model: nn.Module, input_size: tuple[int, int]) -> int:
    """Multiply-accumulates of one ``[1, 3, H, W]`` forward pass (convolutions and linear
    layers; FLOPs are about twice this)."""
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += int(out.numel()) * k
        elif isinstance(mod, nn.Linear):
            total += int(out.numel()) * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *input_size))
    finally:
        for h in handles:
            h.remove()
    return total


@dataclass(frozen=True)
class ClassifierInfo:
    """What the shipped weights are: the attribute, its labels, the input, how they were trained."""

    attribute: str
    labels: tuple[str, ...]
    input_size: tuple[int, int]  # (H, W) of the crops
    mean: tuple[float, ...]  # applied inside the model (the input is RGB in [0, 1])
    std: tuple[float, ...]
    classes: tuple[str, ...]  # the detector classes it was trained on
    training: dict[str, Any] = field(default_factory=dict)  # seed, steps, held-out accuracy, ...


def build_model(num_labels: int = 3) -> FoveaCls:
    """A fresh, untrained :class:`FoveaCls` (the shipped architecture)."""
    return FoveaCls(num_labels)


def info_from_meta(meta: dict[str, Any]) -> ClassifierInfo:
    """A :class:`ClassifierInfo` from the ``.json`` written beside the weights."""
    keys = ("attribute", "labels", "input_size", "mean", "std", "classes")
    return ClassifierInfo(
        attribute=str(meta["attribute"]),
        labels=tuple(meta["labels"]),
        input_size=(int(meta["input_size"][0]), int(meta["input_size"][1])),
        mean=tuple(float(v) for v in meta["mean"]),
        std=tuple(float(v) for v in meta["std"]),
        classes=tuple(meta["classes"]),
        training={k: v for k, v in meta.items() if k not in keys},
    )


def load_default_classifier(device: str | torch.device = "cpu") -> tuple[FoveaCls, ClassifierInfo]:
    """The bundled pattern classifier (eval mode, fp32, on ``device``) and its :class:`ClassifierInfo`.

    Raises:
        streams.errors.EngineError: the weights are missing from the installed package.
    """
    from streams.errors import EngineError

    root = resources.files(WEIGHTS_PACKAGE) / "weights"
    try:
        meta = json.loads((root / INFO_FILE).read_text())
        with resources.as_file(root / WEIGHTS_FILE) as path:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise EngineError(f"the bundled classifier's weights are missing (engines/weights/{WEIGHTS_FILE}): {e}") from e
    info = info_from_meta(meta)
    model = FoveaCls(len(info.labels), mean=info.mean, std=info.std)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    return model.to(device), info
