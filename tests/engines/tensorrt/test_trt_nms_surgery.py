"""EfficientNMS graph surgery on a YOLOv8-layout model exported from torch.

Only TensorRT can run the ``EfficientNMS_TRT`` plugin, and it cannot be installed here,
so these tests check everything around the plugin node: the exported model itself
(``onnx.checker``, ONNX Runtime against torch), the node's inputs (by running ONNX
Runtime on a copy of the graph truncated to output them), its attributes, and the new
graph outputs' names, dtypes and shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from engines.tensorrt.nms_surgery import NMS_OUTPUTS, PLUGIN_OP, append_efficient_nms
from streams.errors import EngineError, ShapeError

NUM_CLASSES = 3
SIZE = 64
ANCHORS = (SIZE // 8) ** 2


class TinyYolo(torch.nn.Module):
    """YOLOv8's output layout: ``[B, 4 + nc, N]`` with boxes (cx, cy, w, h) then scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Conv2d(3, 4 + NUM_CLASSES, kernel_size=8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(x).flatten(2)
        boxes = torch.relu(y[:, :4]) * 16.0
        scores = torch.sigmoid(y[:, 4:])
        return torch.cat([boxes, scores], dim=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyYolo, onnx.ModelProto]:
    model = TinyYolo().eval()
    path = tmp_path_factory.mktemp("nms") / "tiny_yolo.onnx"
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter works offline
        torch.onnx.export(
            model,
            (torch.rand(2, 3, SIZE, SIZE),),
            str(path),
            opset_version=17,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
            dynamo=False,
        )
    return model, onnx.load(str(path))


@pytest.fixture(scope="module")
def surgered(exported: tuple[TinyYolo, onnx.ModelProto]) -> onnx.ModelProto:
    return append_efficient_nms(
        exported[1], score_threshold=0.25, iou_threshold=0.45, max_output_boxes=100
    )


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(n).random((n, 3, SIZE, SIZE), dtype=np.float32)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})


def _shape(v: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in v.type.tensor_type.shape.dim
    ]


def _plugin(model: onnx.ModelProto) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.op_type == PLUGIN_OP]
    return node


def test_exported_model_is_valid_and_matches_torch(
    exported: tuple[TinyYolo, onnx.ModelProto],
) -> None:
    model, proto = exported
    onnx.checker.check_model(proto)
    # torch declares every output dim symbolic; the surgery infers 4 + nc = 7 itself
    assert _shape(proto.graph.output[0])[0] == "batch"
    for n in (1, 3):  # dynamic batch
        x = _images(n)
        (got,) = _run(proto, x)
        want = model(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_plugin_node_and_attributes(surgered: onnx.ModelProto) -> None:
    node = _plugin(surgered)
    assert node.domain == ""  # TensorRT's ONNX parser looks plugins up in the default domain
    assert node is surgered.graph.node[-1]
    assert list(node.output) == ["num_dets", "det_boxes", "det_scores", "det_classes"]
    attrs = {a.name: a for a in node.attribute}
    expected = {
        "plugin_version": (onnx.AttributeProto.STRING, b"1"),
        "background_class": (onnx.AttributeProto.INT, -1),
        "max_output_boxes": (onnx.AttributeProto.INT, 100),
        "score_threshold": (onnx.AttributeProto.FLOAT, pytest.approx(0.25)),
        "iou_threshold": (onnx.AttributeProto.FLOAT, pytest.approx(0.45)),
        "score_activation": (onnx.AttributeProto.INT, 0),
        "class_agnostic": (onnx.AttributeProto.INT, 0),
        "box_coding": (onnx.AttributeProto.INT, 1),
    }
    assert set(attrs) == set(expected)
    for name, (kind, value) in expected.items():
        assert attrs[name].type == kind, name
        assert helper.get_attribute_value(attrs[name]) == value, name


def test_options_reach_the_attributes(exported: tuple[TinyYolo, onnx.ModelProto]) -> None:
    model = append_efficient_nms(
        exported[1], 0.1, 0.7, 20, background_class=0, box_coding=0, class_agnostic=True
    )
    attrs = {a.name: helper.get_attribute_value(a) for a in _plugin(model).attribute}
    assert attrs["background_class"] == 0 and attrs["box_coding"] == 0
    assert attrs["class_agnostic"] == 1 and attrs["max_output_boxes"] == 20
    assert attrs["score_threshold"] == pytest.approx(0.1)
    assert attrs["iou_threshold"] == pytest.approx(0.7)


def test_new_outputs_names_dtypes_and_shapes(
    exported: tuple[TinyYolo, onnx.ModelProto], surgered: onnx.ModelProto
) -> None:
    outputs = {o.name: o for o in surgered.graph.output}
    assert tuple(outputs) == NMS_OUTPUTS == ("num_dets", "det_boxes", "det_scores", "det_classes")
    types = {name: o.type.tensor_type.elem_type for name, o in outputs.items()}
    assert types == {
        "num_dets": TensorProto.INT32,
        "det_boxes": TensorProto.FLOAT,
        "det_scores": TensorProto.FLOAT,
        "det_classes": TensorProto.INT32,
    }
    batch = _shape(exported[1].graph.input[0])[0]
    assert batch == "batch"
    assert _shape(outputs["num_dets"]) == [batch, 1]
    assert _shape(outputs["det_boxes"]) == [batch, 100, 4]
    assert _shape(outputs["det_scores"]) == [batch, 100]
    assert _shape(outputs["det_classes"]) == [batch, 100]


def test_plugin_inputs_are_boxes_and_scores(
    exported: tuple[TinyYolo, onnx.ModelProto], surgered: onnx.ModelProto
) -> None:
    model, _ = exported
    node = _plugin(surgered)
    boxes_name, scores_name = node.input
    infos = {v.name: v for v in surgered.graph.value_info}
    anchors = _shape(exported[1].graph.output[0])[2]  # symbolic, as the exporter declared it
    assert _shape(infos[boxes_name]) == ["batch", anchors, 4]
    assert _shape(infos[scores_name]) == ["batch", anchors, NUM_CLASSES]

    # Everything before the plugin, with the plugin's inputs as the graph's outputs.
    truncated = onnx.ModelProto()
    truncated.CopyFrom(surgered)
    graph = truncated.graph
    kept = [n for n in graph.node if n.op_type != PLUGIN_OP]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[:]
    graph.output.extend([infos[boxes_name], infos[scores_name]])
    onnx.checker.check_model(truncated)

    for n in (1, 4):
        x = _images(n)
        boxes, scores = _run(truncated, x)
        pred = model(torch.from_numpy(x)).detach().transpose(1, 2).numpy()  # [B, N, 4 + nc]
        assert boxes.shape == (n, ANCHORS, 4) and scores.shape == (n, ANCHORS, NUM_CLASSES)
        np.testing.assert_allclose(boxes, pred[..., :4], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scores, pred[..., 4:], rtol=1e-5, atol=1e-5)


def test_input_model_is_not_modified(exported: tuple[TinyYolo, onnx.ModelProto]) -> None:
    before = exported[1].SerializeToString()
    append_efficient_nms(exported[1], 0.25, 0.45, 10)
    assert exported[1].SerializeToString() == before


def _model_with_outputs(*outputs: onnx.ValueInfoProto) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["x"], [o.name]) for o in outputs]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], list(outputs)
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        (
            [
                helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 7, 8]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 7, 8]),
            ],
            "has 2 outputs",
        ),
        ([helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 8, 7, 2])], r"\[1, 8, 7, 2\]"),
        ([helper.make_tensor_value_info("a", TensorProto.FLOAT, ["B", 4, 100])], "4\\+nc > 4"),
        (
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["B", "C", 100])],
            r"\[B, C, 100\]",
        ),
        ([helper.make_tensor_value_info("a", TensorProto.FLOAT16, ["B", 7, 100])], "float32"),
    ],
)
def test_other_layouts_are_rejected(outputs: list[onnx.ValueInfoProto], match: str) -> None:
    with pytest.raises(ShapeError, match=match):
        append_efficient_nms(_model_with_outputs(*outputs), 0.25, 0.45, 100)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1.5, 0.45, 100), "score_threshold"),
        ((0.25, -0.1, 100), "iou_threshold"),
        ((0.25, 0.45, 0), "max_output_boxes"),
    ],
)
def test_bad_parameters(surgered: onnx.ModelProto, args: tuple, match: str) -> None:
    model = _model_with_outputs(helper.make_tensor_value_info("a", TensorProto.FLOAT, ["B", 7, 9]))
    with pytest.raises(EngineError, match=match):
        append_efficient_nms(model, *args)
    with pytest.raises(EngineError, match="box_coding"):
        append_efficient_nms(model, 0.25, 0.45, 10, box_coding=2)
    with pytest.raises(EngineError, match="already has an EfficientNMS_TRT"):
        append_efficient_nms(surgered, 0.25, 0.45, 10)


def test_saved_surgered_model_round_trips(surgered: onnx.ModelProto, tmp_path: Path) -> None:
    path = tmp_path / "with_nms.onnx"
    onnx.save(surgered, str(path))
    again = onnx.load(str(path))
    assert [o.name for o in again.graph.output] == list(NMS_OUTPUTS)
