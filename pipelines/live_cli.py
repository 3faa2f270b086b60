"""``fovea live``: multi-stream live analytics (RTSP cameras, or clips paced in real time).

Needs the ``live`` extra (``pip install -e ".[live]"``: Prometheus metrics, MQTT sink);
without it the command says so in one line and exits 2.

Usage::

    fovea live examples/live.yaml              # until Ctrl-C / SIGTERM (file:// cameras)
    fovea live examples/live.yaml --duration 60   # a timed run, then a summary
    fovea live --source rtsp://cam1/main --source rtsp://user:pw@cam2/h264 --out live-out/
    fovea live examples/live.yaml --ray           # cameras over Ray workers, one per GPU (docs/scale.md)
"""

from __future__ import annotations

import argparse
import logging
import sys
from urllib.parse import urlsplit

# modules the live job imports unconditionally, from its extra (paho-mqtt, the other one,
# is imported only by an mqtt sink, which names the extra itself when it is missing)
LIVE_EXTRA_MODULES = ("prometheus_client",)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("live", help="live multi-stream analytics (RTSP, paced files)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="job YAML with stream sources and a live: section "
                                             "(see examples/live.yaml)")
    p.add_argument("--source", "-s", action="append", metavar="URI",
                   help="stream URI: rtsp://..., or a clip paced at its frame rate, file:///abs/clip.mp4 or "
                        "file://clip.mp4 (relative to the current directory); repeatable")
    p.add_argument("--model", "-m", help="model file or 'default'")
    p.add_argument("--out", "-o", help="output folder for the config's file sinks")
    p.add_argument("--device", "-d", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="spread the cameras over Ray workers, one live pipeline per GPU (needs the 'ray' extra); "
                        "ADDRESS: a running cluster (host:port, or 'auto'), default: a Ray instance on this machine")
    p.add_argument("--ray-workers", type=int, metavar="N",
                   help="with --ray: pipelines to run (default: one per GPU of the cluster, 1 without GPUs)")
    p.set_defaults(func=_cmd_live)


def _cmd_live(args: argparse.Namespace) -> int:
    from pipelines.cli import require_extra

    require_extra("live", "live", LIVE_EXTRA_MODULES)  # before importing the modules that need it

    from pipelines.live import run_live
    from streams.config import load_config
    from streams.errors import ConfigError

    if args.config is None and not args.source:
        raise ConfigError("sources", "give a CONFIG file or at least one --source URI")
    if args.ray_workers is not None and (args.ray is None or args.ray_workers < 1):
        raise ConfigError("--ray-workers", "a number >= 1, with --ray")
    if args.ray is not None:
        require_extra("live --ray", "ray", ["ray"])
    if any(_has_password(uri) for uri in args.source or ()):
        logging.getLogger("fovea").warning("a --source URI holds a password: other users of this machine can read "
                                           "it in the process list (ps); put cameras with credentials in the "
                                           "config file instead")
    overrides = {"sources": args.source, "model": args.model, "device": args.device,
                 "out": args.out or (None if args.config else "fovea-live")}
    cfg = load_config(args.config, overrides)
    if args.ray is not None:
        from pipelines.ray_live import run_live_ray

        summary = run_live_ray(cfg, address=None if args.ray == "local" else args.ray, workers=args.ray_workers,
                               duration_s=args.duration)
    else:
        summary = run_live(cfg, duration_s=args.duration)
    sys.stdout.write(summary.to_text() + "\n")
    return 0


def _has_password(uri: str) -> bool:
    try:
        return urlsplit(uri).password is not None
    except ValueError:
        return "@" in uri.split("/", 3)[2] if uri.count("/") >= 2 else False
