"""Real Ultralytics exports for the tests, built from the architectures' YAML files.

``ultralytics`` is AGPL-3.0: a test-only dependency (the ``test-models`` extra), never
imported by the package. Nothing is downloaded: :func:`build` makes a model from its YAML
and gives it weights whose outputs look like a detector's (random weights, batch-norm
statistics taken from the test frames so activations keep their scale, the class heads'
bias set so a frame has tens of boxes above 0.25); :func:`export` writes it to ONNX as
``yolo export format=onnx`` does (static or dynamic shape, ``nms=False`` for the end-to-end
heads of YOLOv10/YOLO26).

Usage::

    yolo = require_module("ultralytics", ...)
    model = build("yolov8n-seg.yaml", frames)
    path = export(model, tmp / "seg.onnx", dynamic=True)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streams.synthetic import SceneSpec, render_scene

IMGSZ = 320
CLASS_BIAS = -4.5  # sigmoid 0.011 before the features move it: tens of boxes a frame above 0.25


def frames(count: int = 4, width: int = 768, height: int = 432, seed: int = 3) -> list[np.ndarray]:
    """RGB frames of a synthetic scene (coloured shapes over textured backgrounds)."""
    return [rgb for rgb, _ in render_scene(SceneSpec(width=width, height=height, num_frames=count, seed=seed))]


def _calibrate_batch_norm(net: torch.nn.Module, x: torch.Tensor) -> None:
    """Every BatchNorm's statistics from its own input on ``x``, in one eval-mode pass: each
    layer normalises what it gets, so activations keep their scale through the random network."""

    def hook(mod: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        t = inputs[0]
        mod.running_mean.copy_(t.mean(dim=(0, 2, 3)))
        mod.running_var.copy_(t.var(dim=(0, 2, 3)) + 1e-3)

    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()


def build(yaml: str, sample: Sequence[np.ndarray], seed: int = 0, class_bias: float = CLASS_BIAS) -> Any:
    """An Ultralytics model from ``yaml`` with weights that give detector-like outputs
    (``class_bias``: the class scores' logit bias; fewer classes need a higher one)."""
    from ultralytics import RTDETR, YOLO

    torch.manual_seed(seed)
    model = (RTDETR if yaml.startswith("rtdetr") else YOLO)(yaml)
    net = model.model.eval()
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).float() / 255 for f in sample])
    x = torch.nn.functional.interpolate(x, size=(IMGSZ * 3 // 5, IMGSZ), mode="bilinear")  # 16:9 at 320x192
    _calibrate_batch_norm(net, x)
    head = net.model[-1]
    nc = int(getattr(head, "nc", 80))
    with torch.no_grad():
        for mod in head.modules():  # the class scores' last layers (YOLO convs; RT-DETR linears)
            conv = isinstance(mod, torch.nn.Conv2d) and mod.out_channels == nc and mod.bias is not None
            if conv or (isinstance(mod, torch.nn.Linear) and mod.out_features == nc):
                mod.bias.fill_(class_bias)
    return model


def export(model: Any, path: Path, dynamic: bool = False, **options: Any) -> Path:
    """``model`` exported to ONNX at ``path`` (Ultralytics' defaults otherwise: opset 18, onnxslim)."""
    here = Path.cwd()
    os.chdir(path.parent)  # a model built from a YAML is exported into the current directory
    try:
        made = model.export(format="onnx", imgsz=IMGSZ, dynamic=dynamic, verbose=False, **options)
    finally:
        os.chdir(here)
    shutil.move(path.parent / made, path)
    return path
