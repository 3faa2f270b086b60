"""``fovea demo``: a real result from one command, with nothing downloaded.

Makes a sample clip with ground truth (the synthetic scene generator, a seed never used
in training), runs the full pipeline with the bundled detector on the best available
path (NVDEC + GPU when present, else the CPU), writes detections (JSONL) and an annotated
MP4, and scores the detections against the clip's ground truth.

Everything it writes goes into one folder, ``--out`` (default ``./fovea-demo``, which
.gitignore lists): ``sample.mp4`` and ``sample.gt.json`` (the clip and its ground truth,
which ``examples/*.yaml`` read), ``detections.jsonl`` and ``annotated.mp4``.

Usage::

    fovea demo                      # writes into ./fovea-demo/
    fovea demo --out /tmp/d --device cpu --frames 300
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_SEED = 424_242  # held out: the detector trains on seeds below 10 000


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the bundled detector on a generated clip",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", "-o", default="fovea-demo", metavar="DIR",
                   help="folder for everything the demo writes (default ./fovea-demo)")
    p.add_argument("--device", "-d", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    p.add_argument("--frames", type=int, default=150, help="length of the sample clip (default 150)")
    p.add_argument("--size", default="960x540", help="sample clip size WxH (default 960x540)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="scene seed (default: a held-out seed)")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=run_demo)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        from streams.errors import ConfigError

        raise ConfigError("--size", f"expected WIDTHxHEIGHT such as 960x540, got {text!r}") from None
    return w, h


def run_demo(args: argparse.Namespace) -> int:
    from pipelines.evaluation import evaluate, load_ground_truth, load_predictions_jsonl
    from pipelines.runner import run_job  # torch, DALI: only when the demo runs, not for fovea --help
    from streams.config import parse_config
    from streams.synthetic import SceneSpec, gt_path_for, write_clip

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = _size(args.size)
    clip = out / "sample.mp4"
    log.info("rendering a %dx%d sample clip of %d frames (seed %d) ...", w, h, args.frames, args.seed)
    write_clip(clip, SceneSpec(width=w, height=h, num_frames=args.frames, seed=args.seed, codec="h264",
                               empty_first_frames=5))
    raw = {
        "sources": [str(clip)],
        "model": {"path": "default"},
        "engine": {"device": args.device},
        "sinks": [
            {"type": "jsonl", "path": str(out / "detections.jsonl")},
            {"type": "video", "path": str(out / "annotated.mp4")},
        ],
    }
    cfg = parse_config(raw)
    summary = run_job(cfg, show_progress=not args.no_progress)
    gt = load_ground_truth(gt_path_for(clip))
    # the clip is a single file source, so its source id is its file name (streams.sources.files)
    report = evaluate(load_predictions_jsonl(out / "detections.jsonl"), {clip.name: gt},
                      conf_threshold=cfg.postprocess.conf_threshold)
    sys.stdout.write(summary.to_text() + "\n")
    sys.stdout.write(
        f"accuracy vs ground truth: mAP@0.5 {report.map50:.3f}  mAP@0.5:0.95 {report.map50_95:.3f}  "
        f"precision {report.precision:.3f}  recall {report.recall:.3f}\n"
        f"sample clip:    {clip}\n"
        f"detections:     {out / 'detections.jsonl'}\n"
        f"annotated video: {out / 'annotated.mp4'}\n"
    )
    return 0 if summary.ok else 1


__all__ = ["add_parser", "run_demo"]
