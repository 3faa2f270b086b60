"""``fovea eval``: run the pipeline over clips with ground truth and report accuracy.

Each clip ``name.ext`` needs ``name.gt.json`` beside it (the format the synthetic scene
generator writes; see :mod:`pipelines.evaluation`). ``--generate N`` first writes N
held-out synthetic clips (seeds from 10 000 on, never used in training) at 16:9, 4:3 and
portrait sizes, some starting with empty frames.

Usage::

    fovea eval --clips heldout/ --generate 6          # make 6 clips, then evaluate
    fovea eval --clips heldout/ --device cuda --out eval/
    fovea eval --clips mine/ --config job.yaml        # any model/engine/preprocessing
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

HELD_OUT_SIZES = ((640, 360), (480, 360), (360, 640))  # 16:9, 4:3, portrait


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="accuracy (mAP, precision, recall) vs ground truth",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", required=True, help="folder of clips, each with <clip>.gt.json beside it")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="first write N held-out synthetic clips into --clips")
    p.add_argument("--frames", type=int, default=90, help="frames per generated clip (default 90)")
    p.add_argument("--codec", default="h264", choices=["h264", "vp9", "hevc"], help="codec of generated clips")
    p.add_argument("--config", help="job YAML for model/engine/preprocess/postprocess (sources and sinks are set here)")
    p.add_argument("--model", "-m", help="model file or 'default'")
    p.add_argument("--device", "-d", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", "-o", default="fovea-eval", help="output folder (detections.jsonl, eval.json, eval.md)")
    p.add_argument("--conf", type=float, default=None, help="confidence threshold for precision/recall")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from pipelines.evaluation import evaluate, load_ground_truth_dir, load_predictions_jsonl
    from pipelines.runner import run_job
    from streams.config import load_config
    from streams.errors import ConfigError

    clips = Path(args.clips)
    out = Path(args.out)
    if args.generate:
        from streams.synthetic import make_clips

        clips.mkdir(parents=True, exist_ok=True)
        make_clips(clips, args.generate, sizes=HELD_OUT_SIZES, num_frames=args.frames, codec=args.codec,
                   empty_first_frames=(0, 12, 0))
    gt = load_ground_truth_dir(clips)
    if not gt:
        raise ConfigError("--clips", f"no <clip>.gt.json ground truth found in {clips}")
    detections = out / "detections.jsonl"
    overrides = {"sources": [str(clips)], "model": args.model, "device": args.device}
    cfg = load_config(args.config, overrides)
    from dataclasses import replace

    from streams.sinks import SINKS

    cfg = replace(cfg, sinks=[SINKS.parse({"type": "jsonl", "path": str(detections)}, "sinks[0]")])
    summary = run_job(cfg, show_progress=not args.no_progress)
    conf = args.conf if args.conf is not None else cfg.postprocess.conf_threshold
    report = evaluate(load_predictions_jsonl(detections), gt, conf_threshold=conf)
    (out / "eval.json").write_text(json.dumps({"summary": summary.to_text(), "report": report.to_dict()}, indent=2))
    (out / "eval.md").write_text(report.to_markdown() + "\n")
    sys.stdout.write(summary.to_text() + "\n\n" + report.to_markdown() + "\n")
    return 0 if summary.ok else 1
