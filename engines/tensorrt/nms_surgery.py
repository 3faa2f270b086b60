"""Append TensorRT's ``EfficientNMS_TRT`` plugin to a YOLOv8-layout ONNX graph.

A YOLOv8/YOLO11 detector has one output ``[B, 4 + nc, N]``: per anchor, a box
``(cx, cy, w, h)`` in input pixels followed by ``nc`` class scores (already sigmoided).
:func:`append_efficient_nms` rewrites the graph with the ``onnx`` package so that
TensorRT runs NMS inside the engine::

    output0 [B, 4+nc, N] ─Transpose(0,2,1)→ [B, N, 4+nc] ─┬─ Slice[..., 0:4]  → boxes  [B, N, 4]
                                                          └─ Slice[..., 4:]   → scores [B, N, nc]
    EfficientNMS_TRT(boxes, scores) → num_dets    int32   [B, 1]
                                      det_boxes   float32 [B, max, 4]   (x1, y1, x2, y2)
                                      det_scores  float32 [B, max]
                                      det_classes int32   [B, max]

The four outputs replace the graph's output and carry the names
``operators.output_decoding.detect_layout`` recognises as the EfficientNMS layout. The plugin
node uses the default domain (``""``): TensorRT's ONNX parser hands any operator it does
not know to the plugin registry by ``op_type``, ``plugin_version`` and the node's
attributes (register the plugins with ``trt.init_libnvinfer_plugins(logger, "")``).
Only TensorRT can run the result; ONNX Runtime and ``onnx.checker`` reject the plugin.

Usage::

    model = onnx.load("yolov8n.onnx")
    nms = append_efficient_nms(model, score_threshold=0.25, iou_threshold=0.45,
                               max_output_boxes=300)
    onnx.save(nms, "yolov8n-nms.onnx")
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from streams.errors import EngineError, ShapeError

PLUGIN_OP = "EfficientNMS_TRT"
NMS_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
BOX_CORNERS = 0  # (x1, y1, x2, y2)
BOX_CENTER_SIZE = 1  # (cx, cy, w, h), what YOLO emits
_PREFIX = "fovea_nms"


def append_efficient_nms(
    model: onnx.ModelProto,
    score_threshold: float,
    iou_threshold: float,
    max_output_boxes: int,
    background_class: int = -1,
    box_coding: int = BOX_CENTER_SIZE,
    class_agnostic: bool = False,
) -> onnx.ModelProto:
    """Return a copy of ``model`` whose outputs come from an ``EfficientNMS_TRT`` node.

    ``model`` must have exactly one output of shape ``[B, 4 + nc, N]`` with a static
    ``4 + nc``. Raises ShapeError for another layout, EngineError for bad parameters or
    a model that already ends in the plugin. ``model`` itself is not modified.
    """
    _check_params(score_threshold, iou_threshold, max_output_boxes, box_coding)
    graph = model.graph
    if any(n.op_type == PLUGIN_OP for n in graph.node):
        raise EngineError(f"the model already has an {PLUGIN_OP} node")
    if len(graph.output) != 1:
        names = [o.name for o in graph.output]
        raise ShapeError(
            f"EfficientNMS needs a YOLOv8-layout model with one output [B, 4+nc, N]; "
            f"this one has {len(graph.output)} outputs: {names}"
        )
    pred = graph.output[0]
    dims = _output_dims(model)
    if len(dims) != 3 or not dims[1].HasField("dim_value") or dims[1].dim_value <= 4:
        raise ShapeError(
            f"EfficientNMS needs the output {pred.name!r} as [B, 4+nc, N] with a static "
            f"4+nc > 4; it is {_describe_dims(dims)}"
        )
    if pred.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ShapeError(f"EfficientNMS needs a float32 output; {pred.name!r} is not float32")
    taken = _names_in_use(graph)
    clash = sorted(taken & set(NMS_OUTPUTS))
    if clash:
        raise EngineError(f"the model already uses the output names {clash}")

    num_classes = dims[1].dim_value - 4
    batch = _copy_dim(dims[0], "batch")
    anchors = _copy_dim(dims[2], "anchors")

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    name = f"{_PREFIX}/%s"
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), name % "box_start"),
            numpy_helper.from_array(np.array([4], np.int64), name % "box_end"),
            numpy_helper.from_array(np.array([4], np.int64), name % "score_start"),
            numpy_helper.from_array(np.array([4 + num_classes], np.int64), name % "score_end"),
            numpy_helper.from_array(np.array([2], np.int64), name % "last_axis"),
        ]
    )
    transposed, boxes, scores = name % "anchors_last", name % "boxes", name % "scores"
    g.node.extend(
        [
            helper.make_node(
                "Transpose", [pred.name], [transposed], name=name % "transpose", perm=[0, 2, 1]
            ),
            helper.make_node(
                "Slice",
                [transposed, name % "box_start", name % "box_end", name % "last_axis"],
                [boxes],
                name=name % "slice_boxes",
            ),
            helper.make_node(
                "Slice",
                [transposed, name % "score_start", name % "score_end", name % "last_axis"],
                [scores],
                name=name % "slice_scores",
            ),
            helper.make_node(
                PLUGIN_OP,
                [boxes, scores],
                list(NMS_OUTPUTS),
                name=name % "efficient_nms",
                domain="",
                plugin_version="1",
                background_class=int(background_class),
                max_output_boxes=int(max_output_boxes),
                score_threshold=float(score_threshold),
                iou_threshold=float(iou_threshold),
                score_activation=0,
                class_agnostic=int(bool(class_agnostic)),
                box_coding=int(box_coding),
            ),
        ]
    )
    g.value_info.extend(
        [
            _tensor(transposed, TensorProto.FLOAT, [batch, anchors, 4 + num_classes]),
            _tensor(boxes, TensorProto.FLOAT, [batch, anchors, 4]),
            _tensor(scores, TensorProto.FLOAT, [batch, anchors, num_classes]),
        ]
    )
    del g.output[:]
    g.output.extend(
        [
            _tensor("num_dets", TensorProto.INT32, [batch, 1]),
            _tensor("det_boxes", TensorProto.FLOAT, [batch, max_output_boxes, 4]),
            _tensor("det_scores", TensorProto.FLOAT, [batch, max_output_boxes]),
            _tensor("det_classes", TensorProto.INT32, [batch, max_output_boxes]),
        ]
    )
    return out


def _output_dims(model: onnx.ModelProto) -> list[onnx.TensorShapeProto.Dimension]:
    """The single output's dims; ONNX shape inference fills in a channel count the exporter
    declared symbolic (torch's exporter does with ``dynamic_axes``)."""
    declared = list(model.graph.output[0].type.tensor_type.shape.dim)
    if len(declared) == 3 and declared[1].HasField("dim_value"):
        return declared
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # onnx raises several kinds (InferenceError, protobuf size limits)
        return declared
    dims = list(inferred.graph.output[0].type.tensor_type.shape.dim)
    return dims if len(dims) == len(declared) else declared


def _check_params(score: float, iou: float, max_boxes: int, box_coding: int) -> None:
    if not 0.0 <= score <= 1.0:
        raise EngineError(f"EfficientNMS score_threshold must be in [0, 1], got {score}")
    if not 0.0 <= iou <= 1.0:
        raise EngineError(f"EfficientNMS iou_threshold must be in [0, 1], got {iou}")
    if max_boxes < 1:
        raise EngineError(f"EfficientNMS max_output_boxes must be >= 1, got {max_boxes}")
    if box_coding not in (BOX_CORNERS, BOX_CENTER_SIZE):
        raise EngineError(
            f"EfficientNMS box_coding must be 0 (corners) or 1 (center-size), got {box_coding}"
        )


def _copy_dim(dim: onnx.TensorShapeProto.Dimension, fallback: str) -> int | str:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or f"{_PREFIX}_{fallback}"


def _tensor(name: str, elem_type: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _names_in_use(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.output)
    return names


def _describe_dims(dims: Iterable[onnx.TensorShapeProto.Dimension]) -> str:
    parts = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    return "[" + ", ".join(parts) + "]"
