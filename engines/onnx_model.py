"""What an ONNX file says about itself: its input, outputs and the exporter's metadata.

Ultralytics writes its export settings into the file's ``metadata_props``: ``imgsz``,
``names``, ``stride``, ``task`` (``detect``, ``segment``, ``pose``, ...), ``batch``,
``end2end`` (the NMS-free head of YOLOv10/YOLO26 exported with ``nms=False``), ``head``
(``Detect``, ``v10Detect``, ``RTDETRDecoder``, ...), ``kpt_shape`` for pose models, and its
export arguments (``args``: ``dynamic``, ``nms``). Other exporters may write ``names`` only,
or nothing; then the graph's own input shape is all there is.

:func:`read_onnx` reads the file once, without its external weights, and refuses what is
not an ONNX detector input in one line naming the file: a file that does not parse (a text
file, a truncated download), one with no graph, more than one input, an input that is not
an image batch ``[N, 3, H, W]`` of floats.

Usage::

    facts = read_onnx(Path("yolov8n.onnx"))
    facts.input_hw           # (640, 640), or None for a dynamic-shape export
    facts.imgsz              # (640, 640) from the metadata, or None
    facts.task, facts.end2end, facts.names
"""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines._messages import reason
from streams.errors import EngineError

log = logging.getLogger(__name__)

__all__ = ["OnnxFacts", "parse_names", "read_onnx"]


@dataclass(frozen=True)
class OnnxFacts:
    """An ONNX model's input, outputs and exporter metadata (``None``: the file does not say).

    Attributes:
        path: the file.
        input_name: the image input.
        input_dims: its shape, ``None`` for a symbolic dimension (``[batch, 3, height, width]``).
        outputs: ``(name, dims)`` of every graph output, in declaration order.
        names: class names (``names`` metadata: a dict ``{0: 'person', ...}`` or a list).
        imgsz: the export's image size ``(h, w)`` (``imgsz`` metadata).
        stride: the model's largest stride (``stride``).
        task: ``detect``, ``segment``, ``pose``, ``obb``, ``classify`` (``task``).
        end2end: the graph ends in an NMS-free or NMS-included ``[N, K, 6+]`` table (``end2end``
            true, or the export argument ``nms`` true).
        head: the head's class name (``head``: ``Detect``, ``RTDETRDecoder``, ...).
        batch: the export's batch (``batch``).
        dynamic: the export's ``dynamic`` argument; the graph's dims say the same.
        keypoint_shape: ``(keypoints, values per keypoint)`` of a pose model (``kpt_shape``).
        exporter: who wrote the metadata (``author``), for messages.
    """

    path: Path
    input_name: str
    input_dims: tuple[int | None, ...]
    outputs: tuple[tuple[str, tuple[int | None, ...]], ...]
    names: tuple[str, ...] | None = None
    imgsz: tuple[int, int] | None = None
    stride: int | None = None
    task: str | None = None
    end2end: bool | None = None
    head: str | None = None
    batch: int | None = None
    dynamic: bool | None = None
    keypoint_shape: tuple[int, int] | None = None
    exporter: str | None = None

    @property
    def input_hw(self) -> tuple[int, int] | None:
        """The input's static ``(height, width)``; ``None`` when either is symbolic."""
        h, w = self.input_dims[2], self.input_dims[3]
        return (h, w) if h is not None and w is not None else None

    @property
    def static_batch(self) -> int | None:
        """The input's static batch dimension (``None``: any batch)."""
        return self.input_dims[0]


def _literal(text: str) -> Any:
    """A metadata value: a Python literal (Ultralytics writes ``str(value)``) or JSON; else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_names(value: Any) -> tuple[str, ...] | None:
    """Class names from a metadata value: ``{0: 'person', 1: 'car'}`` or ``['person', 'car']``
    (or their text); ``None`` if it is neither."""
    if isinstance(value, str):
        value = _literal(value)
    if isinstance(value, dict):
        try:
            keys = sorted(value, key=int)
        except (TypeError, ValueError):
            return None
        return tuple(str(value[k]) for k in keys)
    if isinstance(value, (list, tuple)):
        return tuple(str(x) for x in value)
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return max(value)  # stride lists: the largest
    return None


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    return None


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _metadata(props: dict[str, str]) -> dict[str, Any]:
    """The metadata fields :class:`OnnxFacts` keeps, parsed; unknown or malformed ones left out."""
    out: dict[str, Any] = {}
    if "names" in props:
        out["names"] = parse_names(props["names"])
    if "imgsz" in props:
        out["imgsz"] = _pair(_literal(props["imgsz"]))
    if "stride" in props:
        out["stride"] = _int(_literal(props["stride"]))
    if "batch" in props:
        out["batch"] = _int(_literal(props["batch"]))
    if "task" in props:
        out["task"] = props["task"].strip() or None
    if "head" in props:
        out["head"] = props["head"].strip() or None
    if "author" in props:
        out["exporter"] = props["author"].strip() or None
    if "kpt_shape" in props:
        out["keypoint_shape"] = _pair(_literal(props["kpt_shape"]))
    args = _literal(props.get("args", "")) if "args" in props else {}
    args = args if isinstance(args, dict) else {}
    end2end = _flag(_literal(props["end2end"])) if "end2end" in props else None
    nms = _flag(args.get("nms"))
    if nms:  # exported with nms=True: the graph holds NMS and ends in the same [N, K, 6] table
        end2end = True
    out["end2end"] = end2end
    dynamic = _flag(args.get("dynamic"))
    if "dynamic" in props:
        dynamic = _flag(_literal(props["dynamic"]))
    out["dynamic"] = dynamic
    return out


def _dims(value_info: Any) -> tuple[int | None, ...]:
    shape = value_info.type.tensor_type.shape
    return tuple(d.dim_value if d.dim_value > 0 else None for d in shape.dim)


def read_onnx(path: Path) -> OnnxFacts:
    """The facts of the ONNX file ``path``; an EngineError naming it when it is not an ONNX
    model Fovea can feed (see the module docstring)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError, and whatever else onnx raises
        raise EngineError(f"{path}: not an ONNX model: it does not parse as one ({reason(e)}); "
                          "the file is truncated or damaged (an interrupted download?), or in another format") from e
    graph = model.graph
    if not graph.node and not graph.input and not graph.output:
        raise EngineError(f"{path}: not an ONNX model: it holds no graph (an empty or foreign file)")
    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise EngineError(f"{path}: expected one input, an image batch [N, 3, H, W]; the model has "
                          f"{len(inputs)}: {[i.name for i in inputs]}")
    tensor = inputs[0].type.tensor_type
    dims = _dims(inputs[0]) if tensor.HasField("shape") else (None, 3, None, None)  # no shape: trust it
    shown = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
    if len(dims) != 4 or dims[1] not in (None, 3):
        raise EngineError(f"{path}: its input {inputs[0].name!r} has shape {shown}, not an image batch "
                          "[N, 3, H, W]; Fovea feeds detectors 3-channel images")
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    if tensor.elem_type not in floats:
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
        raise EngineError(f"{path}: its input {inputs[0].name!r} is {dtype}; Fovea feeds float32 or "
                          "float16 image batches [N, 3, H, W]")
    if not graph.output:
        raise EngineError(f"{path}: the model declares no outputs")
    props = {p.key: p.value for p in model.metadata_props}
    meta = _metadata(props)
    facts = OnnxFacts(path=path, input_name=inputs[0].name, input_dims=dims,
                      outputs=tuple((o.name, _dims(o)) for o in graph.output), **meta)
    log.debug("%s: %s", path.name, facts)
    return facts
