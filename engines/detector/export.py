"""Export :class:`FoveaDet` (or any model with the same output layout) to ONNX, offline.

::

    python -m engines.detector.export --out fovea_det.onnx            # the bundled detector
    python -m engines.detector.export --out det.onnx --static-batch --opset 17

The graph has one input ``images`` (``float32[B, 3, H, W]``, RGB in [0, 1]) and one output
``output0`` (``float32[B, 4 + nc, N]``, the YOLOv8 layout), with Ultralytics-style
metadata (``names``, ``imgsz``, ``stride``, ``task``) so layout detection recognises it.
Uses the TorchScript-based exporter (``dynamo=False``): it needs no onnxscript and no
network access.
"""

from __future__ import annotations

import argparse
import copy
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

INPUT_NAME = "images"
OUTPUT_NAME = "output0"

log = logging.getLogger(__name__)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int] = (320, 320),
    dynamic_batch: bool = True,
    opset: int = 17,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``model`` (eval mode, fp32, CPU copy) to ``path`` as ONNX and check it.

    ``input_size`` is ``(H, W)``, multiples of 32. With ``dynamic_batch`` the batch
    dimension is symbolic (``batch``); the spatial size is fixed. Returns the path.
    """
    import onnx

    h, w = input_size
    if h % 32 or w % 32:
        raise ValueError(f"export_onnx: input_size must be multiples of 32, got {input_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).float().cpu().eval()
    dummy = torch.zeros(1, 3, h, w)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    kwargs: dict[str, Any] = dict(
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
        dynamic_axes=dynamic_axes, do_constant_folding=True,
    )
    with torch.no_grad():
        out_shape = tuple(m(dummy).shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(m, (dummy,), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the ``dynamo`` argument
            torch.onnx.export(m, (dummy,), str(path), **kwargs)
    proto = onnx.load(str(path))
    # the exporter leaves [4 + nc, N] symbolic (the grid is computed from the input shape)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    if len(dims) == len(out_shape):
        for i in range(1, len(out_shape)):
            dims[i].ClearField("dim_param")
            dims[i].dim_value = int(out_shape[i])
    names = list(class_names) if class_names is not None else None
    if names is None:
        nc = int(getattr(model, "num_classes", 0))
        names = [str(i) for i in range(nc)]
    meta = {
        "names": str(dict(enumerate(names))),
        "imgsz": str([h, w]),
        "stride": str(max(getattr(model, "strides", (32,)))),
        "task": "detect",
        "author": "Fovea",
        "description": "FoveaDet: output0 is [B, 4 + nc, N] (cx, cy, w, h, class scores)",
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from engines.detector.model import load_default_detector

    ap = argparse.ArgumentParser(prog="python -m engines.detector.export",
                                 description="Export the bundled detector to ONNX.")
    ap.add_argument("--out", default="fovea_det.onnx")
    ap.add_argument("--input-size", type=int, nargs="+", default=None, help="H [W]; default: the weights' own")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--static-batch", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model, info = load_default_detector()
    size = info.input_size if args.input_size is None else (args.input_size[0], args.input_size[-1])
    out = export_onnx(model, args.out, size, dynamic_batch=not args.static_batch, opset=args.opset,
                      class_names=info.class_names)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
