"""Train the bundled detector on synthetic scenes, reproducibly from a seed.

::

    # the CPU recipe (defaults: 180 steps of 32 frames, ~13 min on 2 cores, held-out mAP@0.5 ~0.96)
    python -m engines.detector.train --seed 0 --out /tmp/fovea_det.pt
    # the shipped weights (engines/weights/fovea_det.json records the command and its figures)
    python -m engines.detector.train --seed 0 --device cuda --workers 15 --steps 3200 --batch 64 \
        --eval-every 800 --out engines/weights/fovea_det.pt

Frames are rendered on the fly by :func:`streams.synthetic.render_scene` at random sizes
and aspect ratios (16:9, 4:3, portrait, square, ...), pushed through an H.264
encode/decode round trip at a random quality (so decoded video looks like what was
trained on), letterboxed exactly like Fovea's preprocessing (``r = min(W/w, H/h)``,
``round(w * r)``, centred, pad 114, ``/255``, RGB) and fed to :class:`FoveaDet`.
Sample ``i`` depends only on ``(seed, i)``, so the data do not depend on the number of
loader workers (float reductions may still differ in the last bits between runs and machines,
so reruns give equivalent, not bit-identical, weights). Training seeds are below 10 000; the
held-out evaluation uses clips of seeds >= 10 000 written with libx264 (B-frames, default settings) and decoded by PyAV,
at 16:9, 4:3 and portrait, some with empty leading frames; it reports mAP@0.5 after the
decode + NMS below.

Loss: YOLOv8's task-aligned assignment (top-10 points per object by
``score^0.5 * IoU^6`` among points inside the box, boxes smaller than a stride widened to
one), BCE on IoU-aware soft class targets, CIoU on boxes. AdamW, warm-up + cosine, EMA.

Also here (small and dependency-free, used by the tests and the evaluation):
:func:`letterbox`, :func:`postprocess` (decode + class-aware NMS) and :func:`map50`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.detector.model import INFO_FILE, FoveaDet, build_model
from streams.synthetic import CLASS_NAMES, SceneSpec, boxes_to_arrays, load_ground_truth, render_scene, write_clip

HELD_OUT_SEED = 10_000  # training seeds stay below this
PAD_VALUE = 114

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Preprocessing (Fovea's letterbox) and postprocessing


def letterbox(
    rgb: np.ndarray | torch.Tensor, size: tuple[int, int], pad: int = PAD_VALUE, antialias: bool = True
) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """Letterbox an ``uint8[h, w, 3]`` RGB frame to ``float32[3, H, W]`` in [0, 1].

    ``r = min(W / w, H / h)``; the frame is resized (bilinear) to
    ``(round(w * r), round(h * r))`` and pasted centred (``left = (W - nw) // 2``) on a
    ``pad``-filled canvas. Returns ``(tensor, r, (left, top))``; a source point ``p`` lands
    at ``p * r + (left, top)``.
    """
    H, W = size
    t = torch.as_tensor(rgb)
    h, w = int(t.shape[0]), int(t.shape[1])
    r = min(W / w, H / h)
    nw, nh = round(w * r), round(h * r)
    img = t.permute(2, 0, 1).unsqueeze(0).float()
    if (nh, nw) != (h, w):
        img = F.interpolate(img, size=(nh, nw), mode="bilinear", align_corners=False, antialias=antialias)
        img = img.round().clamp_(0, 255)
    left, top = (W - nw) // 2, (H - nh) // 2
    out = torch.full((3, H, W), float(pad))
    out[:, top : top + nh, left : left + nw] = img[0]
    return out / 255.0, r, (left, top)


def unletterbox_boxes(xyxy: torch.Tensor, r: float, offset: tuple[int, int], frame_wh: tuple[int, int]) -> torch.Tensor:
    """Map model-input ``xyxy`` back to source-frame pixels (clipped to the frame)."""
    off = torch.tensor([offset[0], offset[1], offset[0], offset[1]], dtype=xyxy.dtype)
    b = (xyxy - off) / r
    b[:, 0::2] = b[:, 0::2].clamp(0, frame_wh[0])
    b[:, 1::2] = b[:, 1::2].clamp(0, frame_wh[1])
    return b


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``[len(a), len(b)]`` of ``xyxy`` boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS; indices of kept boxes, highest score first."""
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    iou = box_iou(boxes, boxes)
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= iou[i, i + 1 :] <= iou_threshold
    return order[keep]


def postprocess(
    preds: torch.Tensor, conf: float = 0.25, iou: float = 0.6, max_det: int = 100, pre_nms: int = 1000
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """YOLOv8-layout ``[B, 4 + nc, N]`` to per-image ``(xyxy, score, class_id)`` after class-aware NMS."""
    out = []
    for p in preds.float():
        box, cls = p[:4].T, p[4:].T  # [N, 4], [N, nc]
        score, cid = cls.max(1)
        keep = score > conf
        box, score, cid = box[keep], score[keep], cid[keep]
        if len(score) > pre_nms:
            top = score.topk(pre_nms).indices
            box, score, cid = box[top], score[top], cid[top]
        xyxy = torch.cat([box[:, :2] - box[:, 2:] / 2, box[:, :2] + box[:, 2:] / 2], 1)
        k = nms(xyxy + cid[:, None].float() * 4096.0, score, iou)[:max_det]
        out.append((xyxy[k], score[k], cid[k]))
    return out


def map50(
    detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> tuple[float, dict[int, float]]:
    """mAP at one IoU threshold (all-point interpolated AP, mean over classes with GT).

    ``detections[i] = (xyxy[N, 4], score[N], class_id[N])`` and
    ``ground_truth[i] = (xyxy[M, 4], class_id[M])`` for image ``i``.
    """
    aps: dict[int, float] = {}
    for c in range(num_classes):
        n_gt = sum(int((g[1] == c).sum()) for g in ground_truth)
        if n_gt == 0:
            continue
        recs = []  # (score, is_tp)
        for (db, ds, dc), (gb, gc) in zip(detections, ground_truth, strict=True):
            d_mask, g_mask = dc == c, gc == c
            db_c, ds_c, gb_c = db[d_mask], ds[d_mask], gb[g_mask]
            order = np.argsort(-ds_c, kind="stable")
            matched = np.zeros(len(gb_c), bool)
            ious = None
            if len(gb_c):
                ious = box_iou(torch.as_tensor(db_c[order]).float(), torch.as_tensor(gb_c).float()).numpy()
            for j, k in enumerate(order):
                tp = False
                if ious is not None:
                    cand = np.where(~matched, ious[j], -1.0)
                    m = int(cand.argmax())
                    if cand[m] >= iou_threshold:
                        matched[m] = True
                        tp = True
                recs.append((float(ds_c[k]), tp))
        if not recs:
            aps[c] = 0.0
            continue
        recs.sort(key=lambda x: -x[0])
        tps = np.cumsum([r[1] for r in recs])
        fps = np.cumsum([not r[1] for r in recs])
        recall = tps / n_gt
        precision = tps / np.maximum(tps + fps, 1e-9)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[1.0], precision, [0.0]])
        mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
        idx = np.where(mrec[1:] != mrec[:-1])[0]
        aps[c] = float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))
    return (float(np.mean(list(aps.values()))) if aps else 0.0), aps


# ---------------------------------------------------------------------------------------
# Data


_ASPECTS = (16 / 9, 4 / 3, 9 / 16, 3 / 4, 1.0, 21 / 9, 2 / 3)


def h264_roundtrip(frames: Sequence[np.ndarray], crf: int, preset: str = "veryfast") -> list[np.ndarray]:
    """Encode RGB frames with libx264 (yuv420p, B-frames, one thread: deterministic) in memory, decode again."""
    import av

    h, w = frames[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        st = out.add_stream("libx264", rate=30, options={"crf": str(crf), "preset": preset})
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.codec_context.thread_count = 1  # multi-threaded x264 output is not deterministic
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    buf.seek(0)
    with av.open(buf, "r") as inp:
        dec = [fr.to_ndarray(format="rgb24") for fr in inp.decode(video=0)]
    if len(dec) != len(frames):  # never seen; keep the clean frames rather than misalign GT
        return list(frames)
    return dec


def random_spec(rng: np.random.Generator, input_size: tuple[int, int], seed: int, num_frames: int) -> SceneSpec:
    """A random scene for training: size, aspect, object count/size, noise, blur, motion."""
    if rng.random() < 0.75:
        aspect = float(rng.choice(_ASPECTS))
    else:
        aspect = float(np.exp(rng.uniform(np.log(0.45), np.log(2.4))))
    long_side = float(np.exp(rng.uniform(np.log(0.6), np.log(2.6)))) * max(input_size)
    if aspect >= 1:
        w, h = long_side, long_side / aspect
    else:
        w, h = long_side * aspect, long_side
    w, h = max(32, round(w / 2) * 2), max(32, round(h / 2) * 2)
    lo = int(rng.integers(0, 4))
    hi = lo + int(rng.integers(1, 9))  # up to 11 at once: crowded scenes teach occlusion
    return SceneSpec(
        width=w, height=h, num_frames=num_frames, seed=seed, num_objects=(lo, hi),
        object_size=(0.07, 0.28), noise=float(rng.uniform(0, 8)), blur=float(rng.uniform(0, 1.5)),
        distractors=int(rng.integers(0, 9)), speed=(0.01, 0.05),
        empty_first_frames=int(rng.integers(0, num_frames)) if rng.random() < 0.1 else 0,
    )


class SceneDataset(torch.utils.data.Dataset):
    """Item ``i``: ``frames_per_scene`` letterboxed frames of one random scene + their boxes.

    Deterministic in ``(seed, i)``. Boxes are model-input ``xyxy`` with class ids.
    """

    def __init__(self, seed: int, input_size: tuple[int, int], length: int, frames_per_scene: int = 4) -> None:
        self.seed, self.input_size, self.length, self.fps = seed, input_size, length, frames_per_scene

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        rng = np.random.default_rng([self.seed, i])
        scene_seed = int(rng.integers(0, HELD_OUT_SEED))
        spec = random_spec(rng, self.input_size, scene_seed, self.fps)
        rendered = list(render_scene(spec))
        frames = [f for f, _ in rendered]
        if rng.random() < 0.85:
            frames = h264_roundtrip(frames, int(rng.integers(18, 40)))
        imgs, targets = [], []
        for frame, (_, gt) in zip(frames, rendered, strict=True):
            img, r, (left, top) = letterbox(frame, self.input_size, antialias=bool(rng.random() < 0.8))
            xyxy, cls = boxes_to_arrays(gt)
            b = torch.from_numpy(xyxy) * r + torch.tensor([left, top, left, top], dtype=torch.float32)
            if rng.random() < 0.5:
                img = img.flip(2)
                W = self.input_size[1]
                b = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1)
            imgs.append(img)
            targets.append(torch.cat([torch.from_numpy(cls).float()[:, None], b], 1))  # [n, 5]
        return torch.stack(imgs), targets


def collate(items: list[tuple[torch.Tensor, list[torch.Tensor]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, 3, H, W]`` and padded targets ``[B, G, 5]`` (class, xyxy; class -1 = pad)."""
    imgs = torch.cat([x[0] for x in items])
    targets = [t for x in items for t in x[1]]
    g = max([len(t) for t in targets] + [1])
    pad = torch.full((len(targets), g, 5), -1.0)
    for k, t in enumerate(targets):
        pad[k, : len(t)] = t
    return imgs, pad


# ---------------------------------------------------------------------------------------
# Loss: task-aligned assignment (YOLOv8), BCE + CIoU


def ciou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of paired ``xyxy`` boxes ``[..., 4]``."""
    w1, h1 = a[..., 2] - a[..., 0], (a[..., 3] - a[..., 1]).clamp(min=eps)
    w2, h2 = b[..., 2] - b[..., 0], (b[..., 3] - b[..., 1]).clamp(min=eps)
    inter = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0) * (
        torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    c2 = cw**2 + ch**2 + eps
    dx = b[..., 0] + b[..., 2] - a[..., 0] - a[..., 2]
    dy = b[..., 1] + b[..., 3] - a[..., 1] - a[..., 3]
    rho2 = (dx**2 + dy**2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def pairwise_iou_batched(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``gt [B, G, 4]`` x ``pred [B, N, 4]`` -> ``[B, G, N]`` IoU."""
    lt = torch.maximum(gt[:, :, None, :2], pred[:, None, :, :2])
    rb = torch.minimum(gt[:, :, None, 2:], pred[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    a1 = (gt[..., 2:] - gt[..., :2]).clamp(min=0).prod(-1)[:, :, None]
    a2 = (pred[..., 2:] - pred[..., :2]).clamp(min=0).prod(-1)[:, None, :]
    return inter / (a1 + a2 - inter + 1e-9)


class DetectionLoss:
    def __init__(self, num_classes: int, strides: Sequence[int], topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 box_gain: float = 7.5, cls_gain: float = 0.5) -> None:
        self.nc, self.strides, self.topk, self.alpha, self.beta = num_classes, strides, topk, alpha, beta
        self.box_gain, self.cls_gain = box_gain, cls_gain

    def point_strides(self, input_hw: tuple[int, int], device: torch.device) -> torch.Tensor:
        parts = [torch.full(((input_hw[0] // s) * (input_hw[1] // s),), float(s), device=device) for s in self.strides]
        return torch.cat(parts)

    @torch.no_grad()
    def assign(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor, pstride: torch.Tensor,
               gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(target_boxes [B, N, 4], target_scores [B, N, nc], fg [B, N])``."""
        B, N, _ = pred_boxes.shape
        G = gt.shape[1]
        labels = gt[..., 0].long()  # [B, G]
        gboxes = gt[..., 1:]
        valid = labels >= 0  # [B, G]
        if G == 0 or not bool(valid.any()):
            fg = torch.zeros(B, N, dtype=torch.bool, device=pred_boxes.device)
            return torch.zeros_like(pred_boxes), torch.zeros_like(pred_scores), fg
        # candidates: points inside the box, the box widened to at least one stride
        cxcy = (gboxes[..., :2] + gboxes[..., 2:]) / 2  # [B, G, 2]
        half = (gboxes[..., 2:] - gboxes[..., :2]) / 2
        half = torch.maximum(half[:, :, None, :], pstride[None, None, :, None] / 2)  # [B, G, N, 2]
        d = (points[None, None] - cxcy[:, :, None, :]).abs()
        cand = (d < half).all(-1) & valid[..., None]  # [B, G, N]
        ious = pairwise_iou_batched(gboxes, pred_boxes)  # [B, G, N]
        lab = labels.clamp(min=0)
        score = pred_scores.gather(2, lab[:, None, :].expand(B, N, G)).permute(0, 2, 1)  # [B, G, N]
        metric = score.pow(self.alpha) * ious.pow(self.beta) * cand
        # tie-break with a tiny centre prior so early training picks central points
        metric = metric + cand * 1e-9 / (1 + (d / pstride[None, None, :, None]).pow(2).sum(-1))
        k = min(self.topk, N)
        top = metric.topk(k, dim=2).indices  # [B, G, k]
        sel = torch.zeros_like(cand).scatter_(2, top, True) & cand
        # one object per point: the one with the highest IoU
        multi = sel.sum(1) > 1  # [B, N]
        if bool(multi.any()):
            best = ious.masked_fill(~cand, -1).argmax(1)  # [B, N]
            one = F.one_hot(best, G).permute(0, 2, 1).bool()
            sel = torch.where(multi[:, None, :], one & sel.any(1, keepdim=True), sel)
        fg = sel.any(1)  # [B, N]
        gi = sel.float().argmax(1)  # [B, N]
        tb = gboxes.gather(1, gi[..., None].expand(B, N, 4))
        tl = lab.gather(1, gi)
        metric = metric * sel
        pos_metric = metric.amax(2, keepdim=True)
        pos_iou = (ious * sel).amax(2, keepdim=True)
        norm = (metric * pos_iou / (pos_metric + 1e-9)).amax(1)  # [B, N]
        ts = F.one_hot(tl, self.nc).float() * (norm * fg)[..., None]
        return tb, ts, fg

    def __call__(self, ltrb: torch.Tensor, logits: torch.Tensor, points: torch.Tensor, gt: torch.Tensor,
                 input_hw: tuple[int, int]) -> tuple[torch.Tensor, dict[str, float]]:
        pboxes = torch.cat([points[None] - ltrb[..., :2], points[None] + ltrb[..., 2:]], -1)  # [B, N, 4]
        pstride = self.point_strides(input_hw, ltrb.device)
        tb, ts, fg = self.assign(logits.detach().sigmoid(), pboxes.detach(), points, pstride, gt)
        tss = ts.sum().clamp(min=1.0)
        loss_cls = F.binary_cross_entropy_with_logits(logits, ts, reduction="sum") / tss
        if bool(fg.any()):
            w = ts.sum(-1)[fg]
            loss_box = ((1.0 - ciou(pboxes[fg], tb[fg])) * w).sum() / tss
        else:
            loss_box = ltrb.sum() * 0.0
        loss = self.box_gain * loss_box + self.cls_gain * loss_cls
        return loss, {"box": float(loss_box.detach()), "cls": float(loss_cls.detach()), "pos": float(fg.sum())}


class EMA:
    """Exponential moving average of a model's weights (YOLOv8-style ramped decay)."""

    def __init__(self, model: nn.Module, decay: float = 0.9995, tau: float = 300.0) -> None:
        self.ema = deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


# ---------------------------------------------------------------------------------------
# Evaluation on held-out H.264 clips


def eval_clip_specs(num_frames: int = 48) -> list[SceneSpec]:
    """The held-out set: 16:9, 4:3 and portrait clips (seeds >= 10 000), some with empty starts."""
    sizes = [(640, 360), (480, 360), (360, 640), (1280, 720), (640, 480), (720, 1280), (854, 480), (1920, 1080)]
    return [
        SceneSpec(width=w, height=h, num_frames=num_frames, seed=HELD_OUT_SEED + i,
                  empty_first_frames=(8 if i % 2 else 0), num_objects=((3, 8) if i % 3 == 2 else (2, 6)))
        for i, (w, h) in enumerate(sizes)
    ]


@torch.no_grad()
def evaluate(model: nn.Module, input_size: tuple[int, int], specs: Sequence[SceneSpec] | None = None,
             clip_dir: str | Path | None = None, device: str = "cpu", batch: int = 16,
             antialias: bool = False, conf: float = 0.001, iou: float = 0.6) -> dict[str, Any]:
    """Write the held-out clips (libx264), decode them with PyAV, detect, and score mAP@0.5.

    ``antialias=False`` resizes like Fovea's DALI letterbox (linear, no antialiasing).
    """
    import av

    specs = list(specs or eval_clip_specs())
    model.eval()
    dets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    gts: list[tuple[np.ndarray, np.ndarray]] = []
    per_clip = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(clip_dir or tmp)
        for spec in specs:
            path = folder / f"heldout_{spec.seed}_{spec.width}x{spec.height}.mp4"
            if not path.exists():
                write_clip(path, spec)
            gt = load_ground_truth(path)
            with av.open(str(path)) as c:
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            assert len(frames) == gt.num_frames, (path, len(frames), gt.num_frames)
            clip_dets = []
            for s in range(0, len(frames), batch):
                chunk = frames[s : s + batch]
                lbs = [letterbox(f, input_size, antialias=antialias) for f in chunk]
                x = torch.stack([lb[0] for lb in lbs]).to(device).contiguous(memory_format=torch.channels_last)
                results = postprocess(model(x).cpu(), conf=conf, iou=iou)
                for (xyxy, score, cid), (_, r, off) in zip(results, lbs, strict=True):
                    b = unletterbox_boxes(xyxy, r, off, (spec.width, spec.height))
                    clip_dets.append((b.numpy(), score.numpy(), cid.numpy()))
            clip_gts = list(zip(gt.boxes, gt.class_ids, strict=True))
            per_clip[path.name] = round(map50(clip_dets, clip_gts, len(CLASS_NAMES))[0], 4)
            dets += clip_dets
            gts += clip_gts
    m, aps = map50(dets, gts, len(CLASS_NAMES))
    return {
        "map50": round(m, 4),
        "ap50_per_class": {CLASS_NAMES[c]: round(v, 4) for c, v in aps.items()},
        "per_clip": per_clip,
        "frames": len(gts),
        "objects": int(sum(len(g[1]) for g in gts)),
    }


# ---------------------------------------------------------------------------------------
# Training


def train(seed: int = 0, steps: int = 180, input_size: tuple[int, int] = (320, 320), batch: int = 32,
          frames_per_scene: int = 4, lr: float = 2e-3, workers: int = 0, device: str = "cpu",
          log_every: int = 25, threads: int = 2, eval_every: int = 0,
          eval_frames: int = 24) -> tuple[FoveaDet, dict[str, Any]]:
    """Train from scratch; returns the EMA model (eval mode) and a summary."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    if device == "cpu":
        torch.set_num_threads(threads)
    else:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_model(len(CLASS_NAMES)).to(device)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    ema = EMA(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                            betas=(0.9, 0.999))
    warmup = max(1, min(300, steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    scenes_per_batch = max(1, batch // frames_per_scene)
    data = SceneDataset(seed, input_size, steps * scenes_per_batch, frames_per_scene)
    loader = torch.utils.data.DataLoader(
        data, batch_size=scenes_per_batch, shuffle=False, num_workers=workers, collate_fn=collate,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
    )
    crit = DetectionLoss(len(CLASS_NAMES), model.strides)
    eval_dir = tempfile.TemporaryDirectory() if eval_every else None
    curve: list[tuple[int, float]] = []
    t0 = time.time()
    model.train()
    running: dict[str, float] = {}
    for step, (imgs, targets) in enumerate(loader):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        imgs = imgs.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device)
        ltrb, logits, points = model(imgs)
        loss, parts = crit(ltrb, logits, points, targets, input_size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        ema.update(model)
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            running[k] = running.get(k, 0.0) * 0.9 + v * 0.1 if k in running else v
        if step % log_every == 0 or step == steps - 1:
            el = time.time() - t0
            log.info(
                f"step {step:5d}/{steps}  loss {running['loss']:.3f}  box {running['box']:.3f}"
                f"  cls {running['cls']:.3f}"
                f"  pos/img {running['pos'] / imgs.shape[0]:.1f}  lr {lr_at(step):.2e}  {el:6.0f}s"
                f"  eta {el / (step + 1) * (steps - step - 1):5.0f}s",
            )
        if eval_dir is not None and (step + 1) % eval_every == 0 and step + 1 < steps:
            ev = evaluate(ema.ema, input_size, eval_clip_specs(eval_frames), eval_dir.name, device)
            curve.append((step + 1, ev["map50"]))
            log.info("  [eval] step %d: held-out mAP@0.5 %.4f %s", step + 1, ev["map50"], ev["ap50_per_class"])
    if eval_dir is not None:
        eval_dir.cleanup()
    final = ema.ema.float().cpu().eval()
    assert isinstance(final, FoveaDet)
    summary = {"steps": steps, "batch": batch, "lr": lr, "train_seconds": round(time.time() - t0, 1),
               "device": device, "images_seen": steps * scenes_per_batch * frames_per_scene}
    if curve:
        summary["eval_curve"] = curve
    return final, summary


def save_weights(model: FoveaDet, out: str | Path, meta: dict[str, Any], half: bool = True) -> tuple[Path, Path]:
    """Write the state_dict (fp16 by default) and ``fovea_det.json`` beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if half and v.dtype == torch.float32 else v) for k, v in model.state_dict().items()}
    torch.save(sd, out)
    info = out.with_name(INFO_FILE) if out.name == "fovea_det.pt" else out.with_suffix(".json")
    info.write_text(json.dumps(meta, indent=2) + "\n")
    return out, info


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engines.detector.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="engines/weights/fovea_det.pt")
    ap.add_argument("--steps", type=int, default=180, help="default: the CPU recipe (~15 min on 2 cores)")
    ap.add_argument("--input-size", type=int, nargs="+", default=[320], help="H [W] (multiples of 32)")
    ap.add_argument("--batch", type=int, default=32, help="frames per step (4 per scene)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--workers", type=int, default=0, help="data-loader processes (the data do not depend on it)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval-frames", type=int, default=48, help="frames per held-out clip (0: skip the evaluation)")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate the EMA model every N steps")
    ap.add_argument("--fp32", action="store_true", help="save fp32 weights (default fp16)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    size = (args.input_size[0], args.input_size[-1])
    if size[0] % 32 or size[1] % 32:
        ap.error("--input-size must be multiples of 32")
    model, summary = train(args.seed, args.steps, size, args.batch, lr=args.lr, workers=args.workers,
                           device=args.device, threads=args.threads, eval_every=args.eval_every,
                           log_every=args.log_every)
    meta: dict[str, Any] = {
        "class_names": list(CLASS_NAMES),
        "input_size": list(size),
        "seed": args.seed,
        **summary,
        "command": "python -m engines.detector.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": _dt.date.today().isoformat(),
        "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "weights_dtype": "float32" if args.fp32 else "float16",
    }
    out, info = save_weights(model, args.out, meta, half=not args.fp32)
    if args.eval_frames > 0:
        # evaluate the weights exactly as shipped (fp16 round trip)
        sd = torch.load(out, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() for k, v in sd.items()})
        t = time.time()
        ev = evaluate(model.to(args.device), size, eval_clip_specs(args.eval_frames), device=args.device)
        model.cpu()
        log.info(f"held-out mAP@0.5 = {ev['map50']:.4f}  per class {ev['ap50_per_class']}  per clip {ev['per_clip']}"
                 f"  ({ev['frames']} frames, {ev['objects']} objects, {time.time() - t:.0f}s)")
        meta["heldout"] = {"map50": ev["map50"], "ap50_per_class": ev["ap50_per_class"], "per_clip": ev["per_clip"],
                           "frames": ev["frames"], "objects": ev["objects"],
                           "clips": "seeds 10000-10007: 640x360, 480x360, 360x640, 1280x720, 640x480, 720x1280,"
                                    " 854x480, 1920x1080; libx264 crf 23 (B-frames); odd clips start with 8 empty"
                                    " frames; clips 2 and 5 crowded (3-8 objects)"}
        meta["heldout_map50"] = ev["map50"]
        info.write_text(json.dumps(meta, indent=2) + "\n")
    log.info("saved %s (%.2f MB) and %s", out, os.path.getsize(out) / 1e6, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
