"""engines.detector: output layout, the shipped weights, ONNX export, the training pieces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.detector.model import FoveaDet, build_model, load_default_detector
from engines.detector.train import (
    DetectionLoss,
    box_iou,
    collate,
    letterbox,
    map50,
    postprocess,
    unletterbox_boxes,
)
from streams.synthetic import CLASS_NAMES, SceneSpec, boxes_to_arrays, render_scene


@pytest.fixture(scope="module")
def default() -> tuple[FoveaDet, object]:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_default_detector()


@pytest.mark.parametrize("hw", [(320, 320), (256, 416), (384, 224)])
def test_output_layout(hw) -> None:
    torch.manual_seed(0)
    model = build_model(5).eval()
    h, w = hw
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        y = model(x)
        y_cl = model(x.contiguous(memory_format=torch.channels_last))
    n = sum((h // s) * (w // s) for s in (8, 16, 32))
    assert y.shape == (2, 4 + 5, n)
    torch.testing.assert_close(y, y_cl, atol=1e-4, rtol=1e-4)
    assert (y[:, 2:4] >= 0).all() and (y[:, 4:] >= 0).all() and (y[:, 4:] <= 1).all()
    # the first point is the stride-8 cell at (4, 4): its box is centred near it
    assert y[:, 0, 0].sub(4).abs().max() < 64
    model.train()
    ltrb, logits, points = model(x)
    assert ltrb.shape == (2, n, 4) and logits.shape == (2, n, 5) and points.shape == (n, 2)
    assert points[0].tolist() == [4.0, 4.0]


def test_shipped_weights_detect(default) -> None:
    model, info = default
    assert info.class_names == CLASS_NAMES
    assert info.input_size[0] % 32 == 0 and info.input_size[1] % 32 == 0
    assert info.training.get("heldout_map50", 0) >= 0.9
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    hits = total = 0
    for seed, (w, h) in [(30_000, (640, 360)), (30_001, (360, 640)), (30_002, (480, 360))]:
        frames = list(render_scene(SceneSpec(width=w, height=h, num_frames=20, seed=seed)))
        for img, boxes in frames[::6]:
            x, r, off = letterbox(img, info.input_size, antialias=False)
            with torch.no_grad():
                ((xyxy, _score, cid),) = postprocess(model(x[None]), conf=0.25, iou=0.45)
            det = unletterbox_boxes(xyxy, r, off, (w, h))
            gt, gc = boxes_to_arrays(boxes)
            total += len(gt)
            if len(gt) and len(det):
                iou = box_iou(torch.from_numpy(gt), det)
                same = torch.from_numpy(gc)[:, None] == cid[None, :]
                hits += int(((iou > 0.7) & same).any(1).sum())
    assert total >= 10
    assert hits >= 0.85 * total, (hits, total)


def test_no_detections_on_empty_background(default) -> None:
    model, info = default
    spec = SceneSpec(width=640, height=360, num_frames=6, seed=30_010, empty_first_frames=6)
    batch = torch.stack([letterbox(img, info.input_size)[0] for img, _ in render_scene(spec)])
    with torch.no_grad():
        dets = postprocess(model(batch), conf=0.25)
    assert sum(len(d[0]) for d in dets) == 0


def test_onnx_export_matches_torch(default, tmp_path) -> None:
    import onnxruntime as ort  # a dependency of the project: never a reason to skip

    from engines.detector.export import export_onnx

    model, info = default
    path = export_onnx(model, tmp_path / "det.onnx", info.input_size, class_names=info.class_names)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    (out,) = sess.get_outputs()
    n = sum((info.input_size[0] // s) * (info.input_size[1] // s) for s in (8, 16, 32))
    assert inp.name == "images" and out.name == "output0" and out.shape[1:] == [9, n]
    img, _ = next(iter(render_scene(SceneSpec(width=320, height=320, num_frames=1, seed=30_020))))
    x = torch.stack([letterbox(img, info.input_size)[0], torch.rand(3, *info.input_size)])  # batch 2: dynamic
    with torch.no_grad():
        want = model(x).numpy()
    got = sess.run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got[:, :4], want[:, :4], atol=2e-2, rtol=1e-3)
    np.testing.assert_allclose(got[:, 4:], want[:, 4:], atol=1e-3)
    meta = {p.key: p.value for p in __import__("onnx").load(str(path)).metadata_props}
    assert "circle" in meta["names"]


def test_torchscript(default) -> None:
    model, info = default
    x = torch.rand(1, 3, *info.input_size)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), want)
        torch.testing.assert_close(torch.jit.trace(model, x)(x), want)


def test_letterbox_geometry() -> None:
    img = np.zeros((360, 640, 3), np.uint8)
    x, r, (left, top) = letterbox(img, (320, 320))
    assert x.shape == (3, 320, 320) and r == 0.5 and (left, top) == (0, 70)
    assert float(x[0, 0, 0]) == pytest.approx(114 / 255) and float(x[0, 160, 160]) == 0.0
    b = unletterbox_boxes(torch.tensor([[10.0, 80.0, 30.0, 100.0]]), r, (left, top), (640, 360))
    assert b.tolist() == [[20.0, 20.0, 60.0, 60.0]]


def test_map50_and_loss_smoke() -> None:
    gt = [(np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), np.array([0, 1]))]
    perfect = [(gt[0][0], np.array([0.9, 0.8], np.float32), np.array([0, 1]))]
    assert map50(perfect, gt, 2)[0] == pytest.approx(1.0)
    wrong = [(gt[0][0], np.array([0.9, 0.8], np.float32), np.array([1, 0]))]
    assert map50(wrong, gt, 2)[0] == 0.0
    torch.manual_seed(0)
    model = build_model(5).train()
    imgs, targets = collate([(torch.rand(2, 3, 128, 128), [torch.tensor([[1, 10, 10, 40, 50.0]]), torch.zeros(0, 5)])])
    ltrb, logits, points = model(imgs)
    loss, parts = DetectionLoss(5, model.strides)(ltrb, logits, points, targets, (128, 128))
    loss.backward()
    assert torch.isfinite(loss) and parts["pos"] > 0
