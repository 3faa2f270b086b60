"""ONNX models on the GPU without TensorRT: converted to torch by ``onnx2torch``.

The converted module is an ordinary ``nn.Module`` (a ``torch.fx`` graph of torch ops), so
it takes the torch engine's path: FP16, channels-last, ``torch.compile`` and CUDA graphs
captured before decoding (:mod:`engines.torch_engine`), with nothing beyond torch to carry.
A model that does not convert (an operator ``onnx2torch`` does not know) is an EngineError
naming the file and the operator; it never moves to the CPU on its own.

``onnx2torch`` 1.5.15 converts opset 17 and older. Ultralytics exports opset 18 by default,
whose ``Split``, ``Pad``, ``Resize`` and ``Reduce*`` take some attributes as inputs instead;
this module registers converters for those versions (through ``onnx2torch``'s own
``add_converter``) that hand a node without the new options to the opset-13 converter, with
the constant inputs folded in, so nothing is read back from the device during a forward
(which a CUDA graph capture would refuse).

Usage::

    module = convert_onnx(Path("yolov8n.onnx"))       # nn.Module, eval mode, on the CPU
    outs = module(images)                              # a tensor or a tuple, in the graph's output order
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from engines._messages import reason
from streams.errors import EngineError, MissingDependencyError

log = logging.getLogger(__name__)

__all__ = ["convert_onnx", "onnx2torch_problem"]

_INSTALL = "pip install -e \".[onnx-gpu]\" (onnx2torch, with the torchvision that matches your torch)"
_REDUCE_OPS = ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
               "ReduceLogSumExp", "ReduceSumSquare")
_registered = False


def onnx2torch_problem() -> str | None:
    """Why ``onnx2torch`` cannot be imported here (it needs ``torchvision``), or ``None``."""
    try:
        import onnx2torch  # noqa: F401
    except ImportError as e:
        return f"onnx2torch cannot be imported ({reason(e)})"
    except RuntimeError as e:  # a torchvision built for another torch fails to load its operators
        return f"onnx2torch cannot be imported: torchvision does not match torch ({reason(e)})"
    return None


def convert_onnx(path: Path) -> Any:
    """``path`` converted to a torch module in eval mode (see the module docstring).

    Raises:
        MissingDependencyError: ``onnx2torch`` (or a matching ``torchvision``) is not installed.
        EngineError: the model does not convert, naming the file and the reason.
    """
    problem = onnx2torch_problem()
    if problem is not None:
        raise MissingDependencyError("onnx2torch", f"running the ONNX model {path.name} on the GPU without "
                                     f"TensorRT ({problem})", _INSTALL)
    import onnx
    from onnx2torch import convert

    _register_opset18()
    try:
        model = onnx.load(str(path))
    except Exception as e:  # external data missing, damaged file
        raise EngineError(f"{path}: onnx cannot load it with its weights ({reason(e)})") from e
    _name_open_clip_bounds(model)
    _initializers_for_constants(model)
    try:
        module = convert(model)
    except NotImplementedError as e:
        raise EngineError(f"{path}: onnx2torch cannot convert it for the GPU ({reason(e)}); export it with "
                          "an older opset (opset=17), or run it with engine: tensorrt, or on the CPU with "
                          "engine.device: cpu") from e
    except Exception as e:  # onnx2torch's other failures on graphs it does not understand
        raise EngineError(f"{path}: onnx2torch cannot convert it for the GPU ({type(e).__name__}: {reason(e)}); "
                          "run it with engine: tensorrt, or on the CPU with engine.device: cpu") from e
    log.info("%s converted to torch by onnx2torch", path.name)
    return module.eval()


def _name_open_clip_bounds(model: Any) -> None:
    """``Clip`` nodes that leave out a bound by an empty input name (RT-DETR's exports do) get
    an explicit infinite one: onnx2torch reads an empty name as a bound computed at run time
    and refuses it."""
    import numpy as np
    import onnx

    graph = model.graph
    names = {1: "fovea_clip_no_lower_bound", 2: "fovea_clip_no_upper_bound"}
    used: set[int] = set()
    for node in graph.node:
        if node.op_type == "Clip":
            for i in (1, 2):
                if len(node.input) > i and not node.input[i]:
                    node.input[i] = names[i]
                    used.add(i)
    for i in sorted(used):
        value = -np.inf if i == 1 else np.inf
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(value, np.float32), names[i]))


def _initializers_for_constants(model: Any) -> None:
    """Constant tensors that reach a node through an ``Identity`` of an initializer (torch's
    exporter shares equal weights that way) or a ``Constant`` node become initializers of
    their own: onnx2torch takes a convolution's weights and bias from initializers only."""
    import onnx

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        tensor = None
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(inits[node.input[0]])
        elif node.op_type == "Constant" and node.output[0] not in outputs and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
        if tensor is None:
            keep.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        inits[tensor.name] = tensor
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def _register_opset18() -> None:
    """Converters for the opset-18 versions of ops Ultralytics exports (see the module docstring)."""
    global _registered
    if _registered:
        return
    import onnx
    from onnx2torch.node_converters.registry import add_converter, get_converter
    from onnx2torch.onnx_node import OnnxNode
    from onnx2torch.utils.common import get_const_value

    def constant(graph: Any, name: str) -> Any:
        """The value of input ``name`` when it is constant (an initializer or a Constant node), else None."""
        if not name:
            return None
        try:
            value = get_const_value(name, graph)
        except KeyError:
            return None
        return value.numpy() if hasattr(value, "numpy") else value

    def delegate(node: Any, graph: Any, version: int, inputs: list[str], attrs: dict[str, Any]) -> Any:
        """The node as the opset-``version`` converter sees it: ``inputs`` kept, ``attrs`` added."""
        proto = onnx.NodeProto()
        proto.CopyFrom(node.proto)
        del proto.input[:]
        proto.input.extend(inputs)
        for key, value in attrs.items():
            proto.attribute.append(onnx.helper.make_attribute(key, value))
        return get_converter(node.operation_type, version)(OnnxNode(proto, node.unique_name), graph)

    def split18(node: Any, graph: Any) -> Any:
        ins = list(node.input_values)
        sizes = constant(graph, ins[1]) if len(ins) > 1 else None
        if len(ins) > 1 and ins[1] and sizes is not None:  # constant sizes: opset 11's attribute form
            return delegate(node, graph, 11, ins[:1], {"split": [int(v) for v in sizes]})
        if len(ins) > 1 and ins[1]:
            return delegate(node, graph, 13, ins, {})
        count = node.attributes.get("num_outputs", len(node.output_values))
        if count != len(node.output_values):
            raise NotImplementedError(f"Split-18 with num_outputs={count} but {len(node.output_values)} outputs")
        return delegate(node, graph, 13, ins[:1], {})  # equal parts

    def pad18(node: Any, graph: Any) -> Any:
        ins = list(node.input_values)
        if len(ins) > 3 and ins[3]:
            raise NotImplementedError("Pad-18 with axes")
        pads = constant(graph, ins[1])
        value = constant(graph, ins[2]) if len(ins) > 2 and ins[2] else 0.0
        if pads is not None and value is not None:  # opset 2's attribute form: no tensor read at run time
            attrs = {"pads": [int(p) for p in pads], "constant_value": float(value)}  # what onnx2torch reads
            return delegate(node, graph, 2, ins[:1], attrs)
        return delegate(node, graph, 13, ins[:3], {})

    def resize18(node: Any, graph: Any) -> Any:
        a = node.attributes
        if a.get("antialias", 0) or a.get("axes") or a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise NotImplementedError("Resize-18 with antialias, axes or keep_aspect_ratio_policy")
        proto_attrs = {k: v for k, v in a.items() if k not in ("antialias", "axes", "keep_aspect_ratio_policy")}
        proto = onnx.NodeProto()
        proto.CopyFrom(node.proto)
        del proto.attribute[:]
        proto.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in proto_attrs.items())
        return get_converter("Resize", 13)(OnnxNode(proto, node.unique_name), graph)

    def reduce18(node: Any, graph: Any) -> Any:
        ins = list(node.input_values)
        axes = constant(graph, ins[1]) if len(ins) > 1 and ins[1] else None
        if len(ins) > 1 and ins[1] and axes is None:
            raise NotImplementedError(f"{node.operation_type}-18 with axes computed at run time")
        if node.attributes.get("noop_with_empty_axes", 0):
            raise NotImplementedError(f"{node.operation_type}-18 with noop_with_empty_axes")
        attrs = {} if axes is None else {"axes": [int(v) for v in axes]}
        return delegate(node, graph, 13, ins[:1], attrs)

    def grid_sample(node: Any, graph: Any) -> Any:
        from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

        a = node.attributes
        modes = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest", "bicubic": "bicubic",
                 "cubic": "bicubic"}
        mode = modes.get(a.get("mode", "bilinear"))
        if mode is None:
            raise NotImplementedError(f"GridSample with mode {a.get('mode')!r}")
        module = _grid_sample_module(mode, a.get("padding_mode", "zeros"), bool(a.get("align_corners", 0)))
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))

    converters = {"Split": split18, "Pad": pad18, "Resize": resize18, "GridSample": grid_sample,
                  **dict.fromkeys(_REDUCE_OPS, reduce18)}
    versions = {"GridSample": (16, 20)}
    for op, fn in converters.items():
        for version in versions.get(op, (18,)):
            try:
                add_converter(operation_type=op, version=version)(fn)
            except ValueError:  # a newer onnx2torch converts it itself
                log.debug("onnx2torch already converts %s-%d", op, version)
    _registered = True


def _grid_sample_module(mode: str, padding_mode: str, align_corners: bool) -> Any:
    """ONNX ``GridSample`` as a module: ``torch.nn.functional.grid_sample``, which it mirrors."""
    import torch
    from onnx2torch.utils.common import OnnxToTorchModule

    class OnnxGridSample(torch.nn.Module, OnnxToTorchModule):
        def forward(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding_mode,
                                                   align_corners=align_corners)

    return OnnxGridSample()
