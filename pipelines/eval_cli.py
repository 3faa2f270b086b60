"""``fovea eval``: run the pipeline over clips with ground truth and report accuracy.

Each clip ``name.ext`` needs ``name.gt.json`` beside it (the format the synthetic scene
generator writes; see :mod:`pipelines.evaluation`). ``--generate N`` first writes N
held-out synthetic clips (seeds from 10 000 on, never used in training) at 16:9, 4:3 and
portrait sizes, some starting with empty frames.

``--tracking`` also scores tracking (it needs the ``tracking`` extra, and ground truth with
identities: ``--generate N --tracking`` writes tracking scenes,
:func:`streams.synthetic.tracking_scene`). The job then runs with a tracker (the config's
``tracker:`` section, else ``--tracker``) and with the analytics stage counting each clip's
own lines and zones (from its ground truth; a config's ``analytics:`` section is replaced),
and the report adds MOTA, IDF1 and HOTA (:mod:`pipelines.track_eval`) and every line and
zone count against the truth, with the dwell times' error (:mod:`pipelines.count_eval`).

Usage::

    fovea eval --clips heldout/ --generate 6          # make 6 clips, then evaluate
    fovea eval --clips heldout/ --device cuda --out eval/
    fovea eval --clips mine/ --config job.yaml        # any model/engine/preprocessing
    fovea eval --clips tracks/ --generate 3 --tracking --tracker ocsort
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.config import JobConfig

log = logging.getLogger(__name__)

HELD_OUT_SIZES = ((640, 360), (480, 360), (360, 640))  # 16:9, 4:3, portrait


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="accuracy (mAP, precision, recall) vs ground truth",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", required=True, help="folder of clips, each with <clip>.gt.json beside it")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="first write N held-out synthetic clips into --clips")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per generated clip (default 90; 150 with --tracking)")
    p.add_argument("--codec", default="h264", choices=["h264", "vp9", "hevc"], help="codec of generated clips")
    p.add_argument("--config", help="job YAML for model/engine/preprocess/postprocess (sources and sinks are set here)")
    p.add_argument("--model", "-m", help="model file or 'default'")
    p.add_argument("--device", "-d", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", "-o", default="fovea-eval", help="output folder (detections.jsonl, eval.json, eval.md)")
    p.add_argument("--conf", type=float, default=None, help="confidence threshold for precision/recall")
    p.add_argument("--tracking", action="store_true",
                   help="also score tracking (MOTA, IDF1, HOTA) and line/zone counts; needs ground truth with "
                        "identities (--generate N --tracking writes such clips) and the tracking extra")
    p.add_argument("--tracker", default="bytetrack", choices=["bytetrack", "ocsort"],
                   help="tracker for --tracking when the config has no tracker: section (default bytetrack)")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=run_eval)


def with_tracking(cfg: JobConfig, gt: dict[str, dict[str, Any]], tracker: str) -> JobConfig:
    """``cfg`` with a tracker (its own, else ``tracker``) and the analytics of the clips'
    lines and zones (:func:`pipelines.count_eval.analytics_section`).

    Raises ConfigError when a clip's ground truth has no identities: tracking metrics need them.
    """
    from dataclasses import replace

    from pipelines.count_eval import analytics_section
    from streams.analytics_config import AnalyticsConfig
    from streams.errors import ConfigError
    from streams.schema import from_dict
    from streams.tracker_config import TrackerConfig

    plain = sorted(sid for sid, g in gt.items() if not all("track_ids" in f for f in g.get("frames", [])))
    if plain:
        raise ConfigError("--tracking", f"the ground truth of {', '.join(plain)} has no identities (track_ids per "
                                        "frame): make tracking clips with --generate N --tracking")
    if cfg.analytics is not None:
        log.warning("--tracking: the config's analytics: section is replaced by the clips' own lines and zones")
    section = analytics_section(gt)
    return replace(
        cfg,
        tracker=cfg.tracker or from_dict(TrackerConfig, {"type": tracker}, "tracker"),
        analytics=None if section is None else from_dict(AnalyticsConfig, section, "analytics"),
    )


def run_eval(args: argparse.Namespace) -> int:
    from pipelines.evaluation import evaluate, load_ground_truth_dir, load_predictions_jsonl
    from pipelines.runner import run_job
    from streams.config import load_config
    from streams.errors import ConfigError

    if args.tracking:  # before any work: one line naming the extra instead of a traceback
        from pipelines.cli import require_extra

        require_extra("eval --tracking", "tracking", ["trackers", "supervision"])
    clips = Path(args.clips)
    out = Path(args.out)
    if args.generate:
        from streams.synthetic import make_clips, make_tracking_clips

        clips.mkdir(parents=True, exist_ok=True)
        if args.tracking:
            make_tracking_clips(clips, args.generate, sizes=HELD_OUT_SIZES, num_frames=args.frames or 150,
                                codec=args.codec)
        else:
            make_clips(clips, args.generate, sizes=HELD_OUT_SIZES, num_frames=args.frames or 90, codec=args.codec,
                       empty_first_frames=(0, 12, 0))
    gt = load_ground_truth_dir(clips)
    if not gt:
        raise ConfigError("--clips", f"no <clip>.gt.json ground truth found in {clips}")
    detections = out / "detections.jsonl"
    overrides = {"sources": [str(clips)], "model": args.model, "device": args.device}
    cfg = load_config(args.config, overrides)
    if args.tracking:
        cfg = with_tracking(cfg, gt, args.tracker)
    from dataclasses import replace

    from streams.sinks import SINKS

    cfg = replace(cfg, sinks=[SINKS.parse({"type": "jsonl", "path": str(detections)}, "sinks[0]")])
    summary = run_job(cfg, show_progress=not args.no_progress)
    conf = args.conf if args.conf is not None else cfg.postprocess.conf_threshold
    predictions = load_predictions_jsonl(detections)
    report = evaluate(predictions, gt, conf_threshold=conf)
    doc: dict[str, Any] = {"summary": summary.to_text(), "report": report.to_dict()}
    text = report.to_markdown()
    if args.tracking:
        from pipelines.count_eval import compare_counts, counts_from_report
        from pipelines.track_eval import tracking_metrics

        tracking = tracking_metrics(predictions, gt)
        counts = compare_counts(counts_from_report(summary.stages.get("AnalyticsStage", {})), gt)
        doc.update(tracking=tracking.to_dict(), counts=counts.to_dict())
        text += "\n" + tracking.to_markdown() + "\n" + counts.to_markdown()
    (out / "eval.json").write_text(json.dumps(doc, indent=2))
    (out / "eval.md").write_text(text + "\n")
    sys.stdout.write(summary.to_text() + "\n\n" + text + "\n")
    return 0 if summary.ok else 1
