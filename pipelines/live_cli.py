"""``fovea live``: multi-stream live analytics (RTSP cameras, or clips paced in real time).

Usage::

    fovea live live.yaml                     # until Ctrl-C / SIGTERM
    fovea live live.yaml --duration 60       # a timed run, then a summary
    fovea live --source rtsp://cam1/main --source rtsp://user:pw@cam2/h264 --out live-out/
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("live", help="live multi-stream analytics (RTSP)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="job YAML with rtsp:// sources and a live: section")
    p.add_argument("--source", "-s", action="append", metavar="URI",
                   help="stream URI (rtsp://..., or file:///clip.mp4 paced at its frame rate); repeatable")
    p.add_argument("--model", "-m", help="model file or 'default'")
    p.add_argument("--out", "-o", help="output folder for the config's file sinks")
    p.add_argument("--device", "-d", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(func=_cmd_live)


def _cmd_live(args: argparse.Namespace) -> int:
    from pipelines.live import run_live
    from streams.config import load_config
    from streams.errors import ConfigError

    if args.config is None and not args.source:
        raise ConfigError("sources", "give a CONFIG file or at least one --source URI")
    overrides = {"sources": args.source, "model": args.model, "device": args.device,
                 "out": args.out or (None if args.config else "fovea-live")}
    cfg = load_config(args.config, overrides)
    summary = run_live(cfg, duration_s=args.duration)
    sys.stdout.write(summary.to_text() + "\n")
    return 0
