"""Train the bundled pattern classifier on synthetic crops, reproducibly from a seed.

::

    # the shipped weights (engines/weights/fovea_cls_pattern.json records the command and its figures)
    python -m engines.classifier.train --seed 0 --out engines/weights/fovea_cls_pattern.pt

The training set is made first: ``--scenes`` random scenes with attributes
(:func:`engines.classifier.data.scene_crops`: H.264 round trip at a random CRF, jittered
ground-truth boxes, :func:`operators.crops.crop_resize` at the model's input size). The
model then trains for ``--epochs`` over it with flips and quarter turns (a pattern's label
does not depend on them), AdamW with a warm-up and a cosine schedule, label smoothing.
Finally the weights are scored on the held-out clips (:mod:`engines.classifier.evaluate`)
and the figures written into the ``.json`` beside them.

The data and the initialisation are a pure function of ``--seed`` (not of ``--workers``);
float reductions can differ in the last bits between machines, so reruns give equivalent,
not bit-identical, weights.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.classifier.data import make_crops
from engines.classifier.model import FoveaCls, conv_macs
from streams.synthetic import ATTRIBUTES, CLASS_NAMES

ATTRIBUTE = "pattern"
log = logging.getLogger(__name__)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips, quarter turns (square crops) and a small brightness and
    contrast change (decoders convert YUV to RGB slightly differently) of a batch ``[B, 3, h, w]``."""
    b = len(x)
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    turns = torch.randint(0, 4, (b,), generator=gen)
    if x.shape[2] == x.shape[3]:
        x = x.clone()
        for k in (1, 2, 3):
            sel = turns == k
            x[sel] = torch.rot90(x[sel], k, (2, 3))
    gain = 1.0 + 0.15 * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    offset = 0.05 * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * gain + mean + offset).clamp(0.0, 1.0)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of crops ``[K, 3, h, w]``, rounded to 3 decimals."""
    xf = x.float()
    return (tuple(round(float(v), 3) for v in xf.mean((0, 2, 3))),
            tuple(round(float(v), 3) for v in xf.std((0, 2, 3))))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int, batch: int = 128,
        lr: float = 3e-3, log_every: int = 50) -> dict[str, Any]:
    """Train ``model`` on crops ``x`` (``[K, 3, h, w]``) with labels ``y``; returns a summary."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, len(x) // batch)
    steps = epochs * steps_per_epoch
    warmup = max(1, min(100, steps // 10))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    model.train()
    step, running, t0 = 0, 0.0, time.time()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for s in range(steps_per_epoch):
            idx = order[s * batch : (s + 1) * batch]
            xb, yb = augment(x[idx].float(), gen), y[idx]
            t = step / steps
            scale = (step + 1) / warmup if step < warmup else 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))
            for g in opt.param_groups:
                g["lr"] = lr * scale
            loss = F.cross_entropy(model(xb), yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            running = value if step == 0 else 0.95 * running + 0.05 * value
            if step % log_every == 0 or step == steps - 1:
                log.info("step %5d/%d  loss %.4f  lr %.2e  %5.0fs", step, steps, running, lr * scale, time.time() - t0)
            step += 1
    model.eval()
    return {"steps": steps, "epochs": epochs, "batch": batch, "lr": lr, "fit_seconds": round(time.time() - t0, 1),
            "final_loss": round(running, 4)}


def train(seed: int = 0, scenes: int = 600, input_size: tuple[int, int] = (32, 32), epochs: int = 6,
          batch: int = 128, lr: float = 3e-3, workers: int = 2, threads: int = 2) -> tuple[FoveaCls, dict[str, Any]]:
    """Make the training crops, then fit a fresh :class:`FoveaCls`; returns it (eval mode) and a summary."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]  # the machine's load when training started: it explains the times
    t0 = time.time()
    x, y = make_crops(seed, scenes, input_size, workers)
    data_seconds = time.time() - t0
    counts = torch.bincount(y, minlength=len(ATTRIBUTES[ATTRIBUTE])).tolist()
    log.info("%d crops from %d scenes in %.0fs (per label %s)", len(x), scenes, data_seconds, counts)
    mean, std = channel_stats(x)
    torch.manual_seed(seed)
    model = FoveaCls(len(ATTRIBUTES[ATTRIBUTE]), mean=mean, std=std)
    summary = fit(model, x, y, seed, epochs, batch, lr)
    summary.update(scenes=scenes, crops=len(x), crops_per_label=counts, data_seconds=round(data_seconds, 1),
                   train_seconds=round(time.time() - t0, 1), mean=list(mean), std=list(std), threads=threads,
                   workers=workers, machine=f"{os.cpu_count()} CPUs, load average {load:.1f} at the start")
    return model, summary


def save_weights(model: FoveaCls, out: str | Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write the state_dict (fp32) to ``out`` and ``meta`` to the ``.json`` beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    info = out.with_suffix(".json")
    info.write_text(json.dumps(meta, indent=2) + "\n")
    return out, info


def main(argv: Sequence[str] | None = None) -> int:
    from engines.classifier.evaluate import evaluate_specs, heldout_specs
    from engines.classifier.model import info_from_meta

    ap = argparse.ArgumentParser(prog="python -m engines.classifier.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="engines/weights/fovea_cls_pattern.pt")
    ap.add_argument("--scenes", type=int, default=600, help="training scenes (about 10 crops each)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--input-size", type=int, default=32, help="crop side in pixels")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--workers", type=int, default=2, help="processes making the crops (the data do not depend on it)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--eval-frames", type=int, default=30, help="frames per held-out clip (0: skip the evaluation)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    size = (args.input_size, args.input_size)
    model, summary = train(args.seed, args.scenes, size, args.epochs, args.batch, args.lr, args.workers, args.threads)
    meta: dict[str, Any] = {
        "attribute": ATTRIBUTE,
        "labels": list(ATTRIBUTES[ATTRIBUTE]),
        "input_size": list(size),
        "input": "float32 [B, 3, H, W], RGB in [0, 1] (operators.crops.crop_resize); mean/std applied inside",
        "output": "logits [B, labels]",
        "mean": summary.pop("mean"),
        "std": summary.pop("std"),
        "classes": list(CLASS_NAMES),
        "seed": args.seed,
        **summary,
        "command": "python -m engines.classifier.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": _dt.date.today().isoformat(),
        "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": conv_macs(model, size),
    }
    out, info_path = save_weights(model, args.out, meta)
    if args.eval_frames > 0:
        t = time.time()
        report = evaluate_specs(model, info_from_meta(meta), heldout_specs(args.eval_frames))
        log.info("held-out accuracy %.4f per label %s by size %s (%d crops, %.0fs)", report.accuracy,
                 report.per_label, report.by_size, report.count, time.time() - t)
        meta["heldout"] = {**report.to_dict(), "clips": "engines.classifier.evaluate.heldout_specs"
                           f"({args.eval_frames}): seeds 10000-10004, 960x540, 640x360, 360x640, 1280x720,"
                           " 1920x1080 (crowded); libx264 CRF 23; ground-truth boxes jittered by 2 px + 4 %"}
        meta["heldout_accuracy"] = report.accuracy
        info_path.write_text(json.dumps(meta, indent=2) + "\n")
    log.info("saved %s and %s", out, info_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
