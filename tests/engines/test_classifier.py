"""engines.classifier: the shipped pattern classifier's accuracy on H.264 crops, scoring, training, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.classifier.data import HELD_OUT_SEED, jitter_boxes, make_crops, scene_crops
from engines.classifier.evaluate import attribute_accuracy, classify, clip_crops, evaluate_clips
from engines.classifier.model import FoveaCls, build_model, conv_macs, load_default_classifier
from engines.classifier.train import augment, fit
from streams.synthetic import PATTERNS, SceneSpec, write_clip


@pytest.fixture(scope="module")
def shipped() -> tuple[FoveaCls, object]:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_default_classifier()


def test_shipped_weights_describe_themselves(shipped) -> None:
    model, info = shipped
    assert info.attribute == "pattern" and info.labels == PATTERNS
    assert info.training["heldout_accuracy"] >= 0.97
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # far below ResNet18's 11.7 M
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(info.mean))  # the json is the weights' own
    out = model(torch.rand(5, 3, *info.input_size))
    assert out.shape == (5, len(info.labels))


def test_shipped_weights_on_a_held_out_h264_clip(shipped, tmp_path) -> None:
    """Ground-truth boxes jittered by a few px, cropped from the decoded clip: >= 0.97 (the
    cascade's target through the whole pipeline is 0.95)."""
    model, info = shipped
    clip = write_clip(tmp_path / "held.mp4", SceneSpec(width=640, height=360, num_frames=16, seed=HELD_OUT_SEED + 77,
                                                       num_objects=(4, 7), attributes=True))
    report = evaluate_clips(model, info, [clip])
    assert report.count >= 50
    assert set(report.per_label) == set(PATTERNS)  # every label was scored
    assert report.accuracy >= 0.97, report


def test_clip_crops_refuses_a_clip_without_attributes(tmp_path) -> None:
    clip = write_clip(tmp_path / "plain.mp4", SceneSpec(width=96, height=64, num_frames=2, seed=1))
    with pytest.raises(ValueError, match="no 'pattern' attribute"):
        clip_crops(clip, "pattern", (32, 32))


def test_attribute_accuracy_counts_and_confuses() -> None:
    r = attribute_accuracy([0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2], PATTERNS, box_sides=[10, 30, 60, 200, 200, 20])
    assert r.accuracy == pytest.approx(4 / 6, abs=1e-4) and r.count == 6
    assert r.confusion == [[1, 0, 0], [0, 2, 1], [1, 0, 1]]
    assert r.per_label == {"solid": 1.0, "striped": pytest.approx(2 / 3, abs=1e-4), "dotted": 0.5}
    assert r.by_size == {"8-24": (0.5, 2), "24-48": (1.0, 1), "48-96": (1.0, 1), "96+": (0.5, 2)}
    with pytest.raises(ValueError):
        attribute_accuracy([0, 1], [0], PATTERNS)
    with pytest.raises(ValueError):
        attribute_accuracy([], [], PATTERNS)


def test_jitter_stays_within_its_bound() -> None:
    boxes = np.array([[10, 10, 50, 30], [100, 0, 300, 200]], np.float32)
    out = jitter_boxes(np.repeat(boxes, 200, 0), np.random.default_rng(0), pixels=2.0, fraction=0.04)
    bound = 2.0 + 0.04 * np.repeat(np.array([[40, 20, 40, 20], [200, 200, 200, 200]]), 200, 0)
    moved = np.abs(out - np.repeat(boxes, 200, 0))
    assert (moved <= bound + 1e-4).all() and (moved > 0.5 * bound).any()


def test_training_crops_are_a_function_of_the_seed_and_a_few_steps_learn() -> None:
    torch.manual_seed(0)
    a, b, c = scene_crops(0, 3, (32, 32)), scene_crops(0, 3, (32, 32)), scene_crops(1, 3, (32, 32))
    assert len(a[1]) > 0 and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (len(a[1]) == len(c[1]) and torch.equal(a[0], c[0]))
    assert a[0].shape[1:] == (3, 32, 32) and float(a[0].min()) >= 0 and float(a[0].max()) <= 1
    x, y = make_crops(0, 4, (32, 32))
    assert len(x) == len(y) > 10 and set(y.tolist()) <= {0, 1, 2}
    model = build_model(3)
    before = [p.detach().clone() for p in model.parameters()]
    summary = fit(model, x, y, seed=0, epochs=2, batch=16)
    assert summary["steps"] == 2 * (len(x) // 16) and np.isfinite(summary["final_loss"])
    assert any(not torch.equal(p0, p) for p0, p in zip(before, model.parameters(), strict=True))
    ids, conf = classify(model, x[:5].float())
    assert ids.shape == (5,) and bool(((conf > 0) & (conf <= 1)).all())


def test_augment_keeps_shape_and_range() -> None:
    x = torch.rand(8, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, x)


def test_macs_count_convolutions() -> None:
    model = build_model(3)
    macs = conv_macs(model, (32, 32))
    assert 1_000_000 < macs < 100_000_000
    assert conv_macs(model, (64, 64)) > 3 * macs  # convolutions scale with the pixels


def test_onnx_export_matches_torch_and_names_its_labels(shipped, tmp_path) -> None:
    import onnx
    import onnxruntime as ort

    from engines.classifier.export import export_onnx

    model, info = shipped
    path = export_onnx(model, info, tmp_path / "cls.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["task"] == "classify" and meta["names"] == str(dict(enumerate(PATTERNS)))
    x = torch.rand(3, 3, *info.input_size)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_the_documented_commands_run(tmp_path) -> None:
    """``python -m engines.classifier.evaluate`` and ``... .export`` as their docstrings show them."""
    from engines.classifier import evaluate, export

    assert evaluate.main(["--frames", "3"]) == 0
    assert export.main(["--out", str(tmp_path / "c.onnx")]) == 0
    assert (tmp_path / "c.onnx").stat().st_size > 100_000
