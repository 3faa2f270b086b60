"""``fovea demo``: a real result from one command, with nothing downloaded.

Makes a sample clip with ground truth (the synthetic scene generator, a seed never used
in training), runs the full pipeline with the bundled detector on the best available
path (NVDEC + GPU when present, else the CPU), writes detections (JSONL) and an annotated
MP4, and scores the detections against the clip's ground truth.

The objects carry a pattern (solid, striped or dotted) that the detector's classes do not
tell; a cascade classifies it on each detection's crop from the full-resolution frame with the
bundled classifier (``secondary: builtin:pattern``; with a tracker, once per track every 10
frames) and the demo prints its accuracy against the clip's truth.

With the ``tracking`` extra installed, the job also tracks the objects (ByteTrack) and
counts them across one line through the middle of the frame (drawn left to right: ``in``
is downwards), and the demo prints the counts next to the exact ones of the ground truth,
with MOTA, IDF1 and HOTA. The clip is the same either way (the line is not drawn; its
ground truth also lists each box's object id and the line's true counts).

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
from typing import Any

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
    p.add_argument("--no-tracking", action="store_true", help="detections only, even with the tracking extra")
    p.add_argument("--no-cascade", action="store_true", help="no secondary classifier (the pattern cascade)")
    p.set_defaults(func=run_demo)


def tracking_available() -> bool:
    """Whether the tracker stage can run (the ``tracking`` extra: roboflow's ``trackers``)."""
    from pipelines.cli import MissingExtraError, require_extra

    try:
        require_extra("demo", "tracking", ["trackers", "supervision"])
    except MissingExtraError as e:
        log.info("no tracking in the demo: %s", e)
        return False
    return True


def _line_counts_text(got: dict[str, Any], truth: dict[str, Any]) -> str:
    """The demo line's counts per direction, got vs. truth, in total and per class."""
    out = []
    for direction, way in (("in", "down"), ("out", "up")):
        g, t = got.get(direction, {}), truth.get(direction, {})
        per_cls = ", ".join(f"{c} {g.get(c, 0)}/{t.get(c, 0)}" for c in sorted(set(g) | set(t)))
        out.append(f"  {f'{direction} ({way}):':<11} {sum(g.values())} counted, {sum(t.values())} true"
                   + (f"   [{per_cls}]" if per_cls else ""))
    return "\n".join(out) + "\n"


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
    from streams.synthetic import CountingLine, SceneSpec, gt_path_for, write_clip

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = _size(args.size)
    clip = out / "sample.mp4"
    log.info("rendering a %dx%d sample clip of %d frames (seed %d) ...", w, h, args.frames, args.seed)
    # the line and the identities change only the ground truth: the pixels are the plain scene's
    line = CountingLine("line", (0.0, h / 2), (float(w), h / 2))
    write_clip(clip, SceneSpec(width=w, height=h, num_frames=args.frames, seed=args.seed, codec="h264",
                               empty_first_frames=5, identities=True, lines=(line,),
                               attributes=not args.no_cascade))
    gt = load_ground_truth(gt_path_for(clip))
    tracking = not args.no_tracking and tracking_available()
    raw: dict[str, Any] = {
        "sources": [str(clip)],
        "model": {"path": "default"},
        "engine": {"device": args.device},
        "sinks": [
            {"type": "jsonl", "path": str(out / "detections.jsonl")},
            {"type": "video", "path": str(out / "annotated.mp4")},
        ],
    }
    if tracking:
        from pipelines.count_eval import analytics_section

        # the clip is a single file source, so its source id is its file name (streams.sources.files)
        raw.update(tracker={"type": "bytetrack"}, analytics=analytics_section({clip.name: gt}))
    if not args.no_cascade:
        raw["secondary"] = [{"name": "pattern", "model": "builtin:pattern", "reinfer_interval": 10 if tracking else 0}]
    cfg = parse_config(raw)
    summary = run_job(cfg, show_progress=not args.no_progress)
    predictions = load_predictions_jsonl(out / "detections.jsonl")
    report = evaluate(predictions, {clip.name: gt}, conf_threshold=cfg.postprocess.conf_threshold)
    sys.stdout.write(summary.to_text() + "\n")
    sys.stdout.write(
        f"accuracy vs ground truth: mAP@0.5 {report.map50:.3f}  mAP@0.5:0.95 {report.map50_95:.3f}  "
        f"precision {report.precision:.3f}  recall {report.recall:.3f}\n")
    if not args.no_cascade:
        from pipelines.cascade_eval import attribute_accuracy
        from streams.synthetic import load_ground_truth as load_truth

        a = attribute_accuracy(predictions, {clip.name: load_truth(clip)}, "pattern")
        cascade = summary.stages.get("CascadeStage", {}).get("models", {}).get("pattern", {})
        sys.stdout.write(
            f"cascade 'pattern' (bundled classifier on source-resolution crops) vs ground truth: accuracy "
            f"{a.accuracy:.3f} ({a.correct}/{a.matched} matched detections; {cascade.get('classified', 0)} "
            f"crops classified, {cascade.get('reused', 0)} took their track's result)\n")
    if tracking:
        from pipelines.track_eval import tracking_metrics

        m = tracking_metrics(predictions, {clip.name: gt})
        got = summary.stages.get("AnalyticsStage", {}).get("sources", {}).get(clip.name, {}).get("lines", {})
        sys.stdout.write(
            f"tracking vs ground truth: MOTA {m.mota:.3f}  IDF1 {m.idf1:.3f}  HOTA {m.hota:.3f}  "
            f"({m.num_tracks} tracks, {m.num_gt_objects} objects, {m.id_switches} ID switches)\n"
            f"line 'line' (y = {h / 2:g} px, left to right), counted vs ground truth:\n"
            + _line_counts_text(got.get("line", {}), gt["tracking"]["line_counts"]["line"]))
    sys.stdout.write(
        f"sample clip:    {clip}\n"
        f"detections:     {out / 'detections.jsonl'}\n"
        f"annotated video: {out / 'annotated.mp4'}\n"
    )
    return 0 if summary.ok else 1


__all__ = ["add_parser", "run_demo"]
