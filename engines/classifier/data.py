"""Crops of synthetic objects with their attribute, made the way a cascade makes them.

A cascade crops each detection from the decoded source frame with
:func:`operators.crops.crop_resize` and feeds the crop to the classifier as it is; the
crops here are made by the same function from frames that went through an H.264 round trip
(a random CRF, as cameras and files differ), at ground-truth boxes moved by a random
jitter (a detector's boxes are off by a few pixels, more on large objects).

Everything is a pure function of its seeds: :func:`scene_crops` of ``(seed, index)``, so
a training set does not depend on how many loader processes made it. Training scenes use
seeds below :data:`HELD_OUT_SEED` (as the detector does); the evaluation's are above it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from operators.crops import crop_resize
from streams.synthetic import SceneSpec, render_scene

HELD_OUT_SEED = 10_000  # training scenes use seeds below it
_SHORT_SIDES = (270, 360, 360, 480, 540, 720)  # frame heights (short sides), picked uniformly
_ASPECTS = (16 / 9, 16 / 9, 4 / 3, 9 / 16, 1.0)
_FRAMES_PER_SCENE = 8
_USED_FRAMES = (2, 5, 7)  # frames of a scene whose objects are cropped (apart, so they differ)


def jitter_boxes(boxes: npt.NDArray[np.floating], rng: np.random.Generator, pixels: float = 2.0,
                 fraction: float = 0.04) -> npt.NDArray[np.float32]:
    """``boxes`` (``xyxy``) with each edge moved by up to ``pixels + fraction * side``
    (uniform), kept at least 2 px wide and high."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    side = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]] * 2, 1)
    out = b + rng.uniform(-1.0, 1.0, b.shape) * (pixels + fraction * side)
    out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 2.0)
    out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 2.0)
    return out.astype(np.float32)


def crops_of_frames(frames: Sequence[np.ndarray], boxes: Sequence[npt.NDArray[np.floating]],
                    size: tuple[int, int]) -> torch.Tensor:
    """:func:`~operators.crops.crop_resize` of every frame's boxes: ``float32[K, 3, h, w]``
    in frame order, then box order."""
    index = np.concatenate([np.full(len(b), i, np.int64) for i, b in enumerate(boxes)])
    xyxy = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes])
    return crop_resize(torch.from_numpy(np.stack(frames)), torch.from_numpy(index), torch.from_numpy(xyxy), size)


def random_spec(rng: np.random.Generator, seed: int) -> SceneSpec:
    """A random training scene with attributes: size, aspect, crowding, noise, blur, motion."""
    short = int(rng.choice(_SHORT_SIDES))
    aspect = float(rng.choice(_ASPECTS))
    w, h = (short * aspect, short) if aspect >= 1 else (short, short / aspect)
    lo = int(rng.integers(1, 4))
    return SceneSpec(
        width=round(w / 2) * 2, height=round(h / 2) * 2, num_frames=_FRAMES_PER_SCENE, seed=seed,
        num_objects=(lo, lo + int(rng.integers(1, 6))), object_size=(0.07, 0.28),
        noise=float(rng.uniform(0, 6)), blur=float(rng.uniform(0, 1.4)), distractors=int(rng.integers(0, 8)),
        speed=(0.005, 0.03), attributes=True,
    )


def scene_crops(seed: int, index: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Training crops of scene ``index`` of training seed ``seed``: ``(float32[K, 3, h, w],
    pattern ids int64[K])``, from frames after an H.264 round trip (most scenes) at a random
    CRF, at jittered ground-truth boxes."""
    from engines.detector.train import h264_roundtrip

    rng = np.random.default_rng([seed, 0xC1A55, index])
    spec = random_spec(rng, int(rng.integers(0, HELD_OUT_SEED)))
    rendered = list(render_scene(spec))
    frames = [f for f, _ in rendered]
    if rng.random() < 0.9:
        frames = h264_roundtrip(frames, int(rng.integers(18, 38)))
    used_frames, used_boxes, labels = [], [], []
    for t in _USED_FRAMES:
        gt = rendered[t][1]
        if not gt:
            continue
        used_frames.append(frames[t])
        used_boxes.append(jitter_boxes(np.array([b.xyxy for b in gt]), rng))
        labels += [b.pattern for b in gt]
    if not labels:
        return torch.zeros((0, 3, *size)), torch.zeros(0, dtype=torch.int64)
    return crops_of_frames(used_frames, used_boxes, size), torch.tensor(labels, dtype=torch.int64)


class SceneCrops(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item ``i``: :func:`scene_crops` ``(seed, i)`` (a variable number of crops)."""

    def __init__(self, seed: int, scenes: int, size: tuple[int, int]) -> None:
        self.seed, self.scenes, self.size = seed, scenes, size

    def __len__(self) -> int:
        return self.scenes

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return scene_crops(self.seed, i, self.size)


def make_crops(seed: int, scenes: int, size: tuple[int, int], workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All crops of ``scenes`` training scenes: ``(float16[K, 3, h, w], int64[K])``, the
    same whatever ``workers`` (loader processes) is."""
    loader = torch.utils.data.DataLoader(SceneCrops(seed, scenes, size), batch_size=None, shuffle=False,
                                         num_workers=workers)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x.half())
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)
