"""Export the bundled crop classifier to ONNX, offline (for engines that take ONNX, such as TensorRT).

::

    python -m engines.classifier.export --out fovea_cls_pattern.onnx

The graph has one input ``images`` (``float32[B, 3, H, W]``, RGB in [0, 1]; the mean/std
normalisation is inside) and one output ``output0`` (``float32[B, labels]``, logits), with
Ultralytics-style classification metadata (``names``, ``imgsz``, ``task: classify``) plus
``attribute``, so a reader finds the labels in the model itself. Uses the TorchScript-based
exporter (``dynamo=False``): it needs no onnxscript and no network access.
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

from engines.classifier.model import ClassifierInfo

INPUT_NAME = "images"
OUTPUT_NAME = "output0"

log = logging.getLogger(__name__)


def export_onnx(model: nn.Module, info: ClassifierInfo, path: str | Path, dynamic_batch: bool = True,
                opset: int = 17) -> Path:
    """Write ``model`` (eval mode, fp32, CPU copy) to ``path`` as ONNX with ``info``'s labels
    and input size in its metadata, and check it. Returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).float().cpu().eval()
    dummy = torch.zeros(1, 3, *info.input_size)
    kwargs: dict[str, Any] = dict(
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset, do_constant_folding=True,
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
    )
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (dummy,), str(path), dynamo=False, **kwargs)
    proto = onnx.load(str(path))
    meta = {
        "names": str(dict(enumerate(info.labels))),
        "imgsz": str(list(info.input_size)),
        "task": "classify",
        "attribute": info.attribute,
        "author": "Fovea",
        "description": "FoveaCls: images are RGB in [0, 1] (normalised inside); output0 is [B, labels] logits",
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from engines.classifier.model import load_default_classifier

    ap = argparse.ArgumentParser(prog="python -m engines.classifier.export",
                                 description="Export the bundled crop classifier to ONNX.")
    ap.add_argument("--out", default="fovea_cls_pattern.onnx")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--static-batch", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model, info = load_default_classifier()
    log.info("wrote %s", export_onnx(model, info, args.out, dynamic_batch=not args.static_batch, opset=args.opset))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
