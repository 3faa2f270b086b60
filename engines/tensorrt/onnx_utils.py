"""What the TensorRT path reads from an ONNX file with the ``onnx`` package alone.

- :func:`model_input`: the single image input (name, static or dynamic dims, dtype).
- :func:`resolve_input_shape`: ``(C, H, W)`` from the model, the configuration, or both
  (they must agree); a dynamic H/W needs the configuration.
- :func:`has_qdq_nodes`: whether the model is explicitly quantized (Q/DQ nodes).
- :func:`has_fp16_tensors`: whether the model already carries FP16 types (mixed precision).
- :func:`model_digest`: SHA-256 of the model file and its external-data files.

Usage::

    model = load_header("yolov8n.onnx")        # no external weights loaded
    inp = model_input(model, "yolov8n.onnx")   # ModelInput(name="images", dims=(None, 3, 640, 640))
    chw = resolve_input_shape(inp, None, "yolov8n.onnx")   # (3, 640, 640)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx

from engines._messages import reason
from streams.errors import EngineError, ShapeError

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class ModelInput:
    """The image input of an ONNX model; ``None`` marks a dynamic dimension."""

    name: str
    dims: tuple[int | None, ...]
    dtype: str

    @property
    def static_batch(self) -> int | None:
        """The batch size fixed in the model, or ``None`` when the batch is dynamic."""
        return self.dims[0] if self.dims else None


def load_header(path: str | Path) -> onnx.ModelProto:
    """Load the graph of ``path`` without its external weights (cheap for big models)."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except FileNotFoundError as e:
        raise EngineError(f"{path}: no such ONNX file") from e
    except Exception as e:  # onnx raises DecodeError and friends for non-ONNX files
        raise EngineError(f"{path}: not a readable ONNX model ({reason(e)})") from e


def model_input(model: onnx.ModelProto, source: str | Path = "model") -> ModelInput:
    """The single non-initializer input of ``model``; more or fewer raise EngineError."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise EngineError(
            f"{source}: expected one image input, the model has {len(inputs)}: {names}"
        )
    inp = inputs[0]
    tensor_type = inp.type.tensor_type
    dims = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor_type.shape.dim
    )
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    return ModelInput(name=inp.name, dims=dims, dtype=dtype)


def resolve_input_shape(
    inp: ModelInput,
    requested: tuple[int, int, int] | None,
    source: str | Path = "model",
) -> tuple[int, int, int]:
    """``(C, H, W)`` of the engine input: the model's static dims, ``requested`` for dynamic ones.

    Raises ShapeError when the input is not 4-D NCHW, when ``requested`` contradicts a
    static model dimension, or when a dimension is dynamic and nothing gives it.
    """
    if len(inp.dims) != 4:
        raise ShapeError(
            f"{source}: input {inp.name!r} has shape {_fmt(inp.dims)}; expected 4-D [N, C, H, W]"
        )
    model_chw = inp.dims[1:]
    out: list[int] = []
    for axis, have, want in zip("CHW", model_chw, requested or (None, None, None), strict=True):
        if have is not None and want is not None and have != want:
            raise ShapeError(
                f"{source}: input {inp.name!r} is fixed at {axis}={have} "
                f"(shape {_fmt(inp.dims)}), but {want} was requested"
            )
        value = have if have is not None else want
        if value is None:
            raise ShapeError(
                f"{source}: input {inp.name!r} has a dynamic {axis} (shape {_fmt(inp.dims)}); "
                "give the size (model.input_size / --input-size HxW)"
            )
        out.append(value)
    return out[0], out[1], out[2]


def has_qdq_nodes(model: onnx.ModelProto) -> bool:
    """True when the graph, a subgraph or a local function has QuantizeLinear/DequantizeLinear."""
    if any(n.op_type in QDQ_OPS for f in model.functions for n in f.node):
        return True
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            if node.op_type in QDQ_OPS:
                return True
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    graphs.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    graphs.extend(a.graphs)
    return False


def has_fp16_tensors(model: onnx.ModelProto) -> bool:
    """True when the main graph has FP16 weights or FP16-typed values (a mixed-precision model)."""
    fp16 = onnx.TensorProto.FLOAT16
    g = model.graph
    if any(t.data_type == fp16 for t in g.initializer):
        return True
    values = [*g.input, *g.output, *g.value_info]
    return any(v.type.tensor_type.elem_type == fp16 for v in values)


def model_digest(path: str | Path, model: onnx.ModelProto | None = None) -> str:
    """SHA-256 (hex) over the model file and every external-data file it references."""
    path = Path(path)
    model = model if model is not None else load_header(path)
    h = hashlib.sha256()
    _hash_file(h, path)
    for location in sorted(_external_locations(model)):
        h.update(b"\0" + location.encode())
        ext = path.parent / location
        if ext.is_file():
            _hash_file(h, ext)
    return h.hexdigest()


def _external_locations(model: onnx.ModelProto) -> set[str]:
    locations: set[str] = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(e.value for e in t.external_data if e.key == "location")
    return locations


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def _fmt(dims: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
