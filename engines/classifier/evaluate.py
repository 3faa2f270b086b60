"""Accuracy of a crop classifier against the synthetic scenes' attribute truth.

The held-out set is what a cascade sees with a perfect detector: clips written with
libx264 (:func:`streams.synthetic.write_clip`, CRF 23 with B-frames, seeds at or above
:data:`~engines.classifier.data.HELD_OUT_SEED`), decoded with PyAV, every ground-truth box
moved by a jitter of a few pixels (as a detector's boxes are) and cropped with
:func:`operators.crops.crop_resize`. The score is plain accuracy over the crops, with the
recall of each label, the confusion matrix and accuracy by box size.

::

    python -m engines.classifier.evaluate                  # the shipped weights on the held-out clips
    python -m engines.classifier.evaluate --crf 35         # the same clips at a lower bitrate

Usage::

    model, info = load_default_classifier()
    report = evaluate_specs(model, info, heldout_specs())  # writes, decodes, crops, classifies
    report.accuracy, report.per_label, report.confusion
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engines.classifier.data import HELD_OUT_SEED, crops_of_frames, jitter_boxes
from engines.classifier.model import ClassifierInfo
from streams.synthetic import SceneSpec, load_ground_truth, write_clip

log = logging.getLogger(__name__)

# box sides (the shorter one, px) that split the accuracy by size: [8, 24), [24, 48), [48, 96), [96, ...)
SIZE_BUCKETS: tuple[int, ...] = (24, 48, 96)
EVAL_JITTER: tuple[float, float] = (2.0, 0.04)  # each box edge moves by up to 2 px + 4 % of the side


@dataclass(frozen=True)
class AttributeAccuracy:
    """Accuracy of predicted attribute values against the truth.

    ``per_label``: recall of each true value; ``confusion[i][j]``: crops of true value
    ``i`` predicted as ``j``; ``by_size``: accuracy and count per bucket of the box's
    shorter side (``"8-24"``, ..., ``"96+"``).
    """

    accuracy: float
    count: int
    labels: tuple[str, ...]
    per_label: dict[str, float]
    confusion: list[list[int]]
    by_size: dict[str, tuple[float, int]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attribute_accuracy(predicted: npt.ArrayLike, truth: npt.ArrayLike, labels: Sequence[str],
                       box_sides: npt.ArrayLike | None = None) -> AttributeAccuracy:
    """Score predicted value ids against true ones (both index ``labels``).

    Raises:
        ValueError: the arrays differ in length, or there is nothing to score.
    """
    pred, true = np.asarray(predicted, np.int64).ravel(), np.asarray(truth, np.int64).ravel()
    if len(pred) != len(true) or len(true) == 0:
        raise ValueError(f"attribute_accuracy: expected equal, non-empty arrays, got {len(pred)} and {len(true)}")
    n = len(labels)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (true, pred), 1)
    per_label = {labels[i]: round(float(confusion[i, i] / confusion[i].sum()), 4)
                 for i in range(n) if confusion[i].sum()}
    by_size: dict[str, tuple[float, int]] = {}
    if box_sides is not None:
        sides = np.asarray(box_sides, np.float64).ravel()
        for lo, hi in itertools.pairwise((0, *SIZE_BUCKETS, np.inf)):
            m = (sides >= lo) & (sides < hi)
            if m.any():
                name = f"{max(lo, 8)}-{hi}" if np.isfinite(hi) else f"{lo}+"
                by_size[name] = (round(float((pred[m] == true[m]).mean()), 4), int(m.sum()))
    return AttributeAccuracy(round(float((pred == true).mean()), 4), len(true), tuple(labels), per_label,
                             confusion.tolist(), by_size)


@torch.no_grad()
def classify(model: nn.Module, crops: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(label ids int64[K], confidences float32[K])`` of crops ``float32[K, 3, h, w]`` (softmax)."""
    model.eval()
    ids, conf = [], []
    for s in range(0, len(crops), batch):
        p = model(crops[s : s + batch].float()).softmax(1)
        c, i = p.max(1)
        ids.append(i)
        conf.append(c)
    if not ids:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    return torch.cat(ids), torch.cat(conf)


def clip_crops(clip: str | Path, attribute: str, size: tuple[int, int], seed: int = 0,
               jitter: tuple[float, float] = EVAL_JITTER) -> tuple[torch.Tensor, npt.NDArray[np.int64],
                                                                    npt.NDArray[np.float64], tuple[str, ...]]:
    """A written clip's ground-truth crops, decoded with PyAV: ``(crops float32[K, 3, h, w],
    true value ids int64[K], box shorter sides [K] (px), the attribute's values)``.

    Boxes are jittered (``jitter``: see :func:`~engines.classifier.data.jitter_boxes`) with a
    generator seeded by ``seed``.

    Raises:
        ValueError: the clip's ground truth has no ``attribute``, or the decoded frames are
            not the ground truth's.
    """
    import av

    gt = load_ground_truth(clip)
    if gt.attributes is None or gt.attribute_values is None or attribute not in gt.attributes:
        raise ValueError(f"{clip}: its ground truth has no {attribute!r} attribute (write it with attributes=True)")
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    if len(frames) != gt.num_frames:
        raise ValueError(f"{clip}: decoded {len(frames)} frames, its ground truth has {gt.num_frames}")
    rng = np.random.default_rng(seed)
    used = [i for i in range(gt.num_frames) if len(gt.boxes[i])]
    if not used:
        return (torch.zeros((0, 3, *size)), np.zeros(0, np.int64), np.zeros(0), gt.attribute_values[attribute])
    boxes = [jitter_boxes(gt.boxes[i], rng, *jitter) for i in used]
    crops = crops_of_frames([frames[i] for i in used], boxes, size)
    truth = np.concatenate([gt.attributes[attribute][i] for i in used])
    sides = np.concatenate([np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) for b in (gt.boxes[i] for i in used)])
    return crops, truth, sides.astype(np.float64), gt.attribute_values[attribute]


def evaluate_clips(model: nn.Module, info: ClassifierInfo, clips: Sequence[str | Path], seed: int = 0,
                   jitter: tuple[float, float] = EVAL_JITTER) -> AttributeAccuracy:
    """Classify every ground-truth crop of ``clips`` (written with ``attributes=True``) and score it.

    Raises:
        ValueError: a clip's attribute values are not the model's labels, or no clip has a box.
    """
    preds, truths, sides = [], [], []
    for k, clip in enumerate(clips):
        crops, truth, side, values = clip_crops(clip, info.attribute, info.input_size, seed + k, jitter)
        if tuple(values) != tuple(info.labels):
            raise ValueError(f"{clip}: {info.attribute!r} values {values} are not the model's labels {info.labels}")
        preds.append(classify(model, crops)[0].numpy())
        truths.append(truth)
        sides.append(side)
    return attribute_accuracy(np.concatenate(preds), np.concatenate(truths), info.labels, np.concatenate(sides))


def heldout_specs(num_frames: int = 30, crf: int | None = None) -> list[SceneSpec]:
    """The held-out clips (seeds from :data:`HELD_OUT_SEED`, attributes on): the demo's
    960x540, 640x360, portrait 360x640, 1280x720 and a crowded 1920x1080, libx264."""
    sizes = [(960, 540), (640, 360), (360, 640), (1280, 720), (1920, 1080)]
    return [SceneSpec(width=w, height=h, num_frames=num_frames, seed=HELD_OUT_SEED + i, attributes=True, crf=crf,
                      num_objects=(4, 9) if i == 4 else (2, 6))
            for i, (w, h) in enumerate(sizes)]


def evaluate_specs(model: nn.Module, info: ClassifierInfo, specs: Sequence[SceneSpec],
                   clip_dir: str | Path | None = None, seed: int = 0) -> AttributeAccuracy:
    """Write ``specs`` as clips (into ``clip_dir``, default a temporary folder; clips already
    there are reused) and :func:`evaluate_clips` them."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(clip_dir or tmp)
        clips = []
        for spec in specs:
            path = folder / f"attr_{spec.seed}_{spec.width}x{spec.height}_crf{spec.crf or 23}.mp4"
            if not path.exists():
                write_clip(path, spec)
            clips.append(path)
        return evaluate_clips(model, info, clips, seed)


def main(argv: Sequence[str] | None = None) -> int:
    from engines.classifier.model import load_default_classifier

    ap = argparse.ArgumentParser(prog="python -m engines.classifier.evaluate",
                                 description="Score the bundled classifier on held-out H.264 clips.")
    ap.add_argument("--frames", type=int, default=30, help="frames per held-out clip")
    ap.add_argument("--crf", type=int, default=None, help="libx264 CRF of the clips (default 23)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    model, info = load_default_classifier()
    report = evaluate_specs(model, info, heldout_specs(args.frames, args.crf))
    log.info("held-out %s accuracy: %s", info.attribute, json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
