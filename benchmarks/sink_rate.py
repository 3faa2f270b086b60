"""What each sink sustains, and what it costs a job against the JSONL sink.

Usage (from a source checkout: ``--start-brokers`` runs the test suite's brokers, from
``tests/servers``, on loopback)::

    python -m benchmarks.sink_rate rate --start-brokers                    # every sink
    python -m benchmarks.sink_rate rate --sinks kafka,redis --kafka 127.0.0.1:9092 --redis redis://127.0.0.1:6379/0
    python -m benchmarks.sink_rate e2e --source bench-clips/looped --device cuda --start-brokers --sinks kafka,redis

``rate``: ``--frames`` synthetic frames (``--detections`` each, a line-crossing event every
tenth frame, ``--sources`` sources) go through each sink in batches of ``--batch``, as a job
hands them over. Printed per sink: records per second from the first ``write`` to the end
of the ``with`` block (every record delivered: acknowledged by the broker, or written and
flushed by a file sink) and the seconds the writing thread spent inside ``write`` (what a
job pays on its own thread). ``--writer inline`` runs the sinks in the writing thread instead
of a process of their own. A network sink that could not deliver everything is reported as
failed, not given a rate.

``e2e``: ``run_job`` over ``--source`` files (the bench's workload: ``fovea bench`` leaves
it in its clips folder, ``looped/``), alternating a job whose only sink is JSONL with jobs
whose only sink is each of ``--sinks``, ``--reps`` times each; prints every job's frames per
second and each sink's median against JSONL's (the issue's bound: no sink slows the job by
more than 5 %). The model and engine are the bench's (``--model yolov8n``, FP16, CUDA
graphs, ``--batch 64`` frames, ``--sessions`` decode sessions, ``--streams`` inference threads).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from streams.detections import Detections
from streams.errors import FoveaError
from streams.events import Event
from streams.frames import FrameMeta, FrameResult

log = logging.getLogger(__name__)

SINKS_ALL = ("jsonl", "sqlite", "kafka", "redis", "postgres", "mqtt")
NETWORK = ("kafka", "redis", "postgres", "mqtt")


@dataclass
class Endpoints:
    """Where the network sinks' brokers are."""

    kafka: str = "127.0.0.1:9092"
    redis: str = "redis://127.0.0.1:6379/0"
    postgres: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    mqtt: str = "127.0.0.1:1883"


def sink_config(name: str, where: Endpoints, folder: Path, flush_timeout_s: float = 60.0) -> dict[str, Any]:
    """The ``sinks:`` entry of sink ``name`` writing into ``folder`` (files, spools)."""
    spool = str(folder / f"{name}-spool")
    flush = flush_timeout_s
    if name == "jsonl":
        return {"type": "jsonl", "path": str(folder / "detections.jsonl")}
    if name == "sqlite":
        return {"type": "sqlite", "path": str(folder / "detections.sqlite")}
    if name == "kafka":
        return {"type": "kafka", "bootstrap_servers": where.kafka, "path": spool, "flush_timeout_s": flush}
    if name == "redis":
        return {"type": "redis", "url": where.redis, "path": spool, "flush_timeout_s": flush}
    if name == "postgres":
        return {"type": "postgres", "dsn": where.postgres, "path": spool, "flush_timeout_s": flush,
                "table_prefix": f"bench{int(time.time() * 1000) % 10**9}_"}
    if name == "mqtt":
        host, _, port = where.mqtt.rpartition(":")
        return {"type": "mqtt", "host": host or "127.0.0.1", "port": int(port), "path": spool, "qos": 1,
                "flush_timeout_s": flush}
    raise ValueError(f"unknown sink {name!r}; one of {SINKS_ALL}")


def synthetic_results(frames: int, detections: int, sources: int, seed: int = 0) -> list[FrameResult]:
    """``frames`` frames round-robin over ``sources`` 1080p sources, ``detections`` tracked boxes each,
    a line-crossing event every tenth frame."""
    rng = np.random.default_rng(seed)
    names = ("person", "car", "bicycle", "truck")
    out = []
    for i in range(frames):
        src = f"cam{i % sources}"
        index = i // sources
        xy = rng.uniform(0, 1800, (detections, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.uniform(20, 120, (detections, 2)).astype(np.float32)], axis=1)
        dets = Detections(boxes, rng.uniform(0.25, 1.0, detections).astype(np.float32),
                          rng.integers(0, len(names), detections), names, np.arange(detections, dtype=np.int64))
        events = (Event("line_cross", src, index, index * 512, (1, 12800), 3, "car",
                        {"line": "gate", "direction": "in"}),) if i % 10 == 0 else ()
        out.append(FrameResult(FrameMeta(src, f"/v/{src}.mp4", index, index * 512, (1, 12800), 1920, 1080),
                               dets, events))
    return out


def measure_rate(name: str, raw: dict[str, Any], results: Sequence[FrameResult], batch: int,
                 writer: str = "process") -> dict[str, Any]:
    """Push ``results`` through sink ``raw`` in batches; records/s to the end of its ``with`` block."""
    from streams.sinks import SINKS
    from streams.sinks.delivery import ReliableSink

    sink = SINKS.create(SINKS.parse({**raw, "writer": writer}, "sinks[0]"))
    records = len(results) + sum(len(r.events) for r in results)
    in_write = 0.0
    start = time.perf_counter()
    try:
        with sink:
            for i in range(0, len(results), batch):
                t = time.perf_counter()
                sink.write(results[i:i + batch])
                in_write += time.perf_counter() - t
    except FoveaError as e:
        return {"sink": name, "error": str(e)}
    seconds = time.perf_counter() - start
    if isinstance(sink, ReliableSink):
        h = sink.health()
        if h.delivered < records:
            return {"sink": name, "error": f"{h.delivered} of {records} records delivered"}
    return {"sink": name, "records": records, "frames": len(results), "seconds": round(seconds, 3),
            "records_per_s": round(records / seconds), "frames_per_s": round(len(results) / seconds),
            "write_seconds": round(in_write, 3)}


@contextlib.contextmanager
def brokers(names: Sequence[str], where: Endpoints) -> Iterator[Endpoints]:
    """Start the test suite's brokers (tests/servers/brokers.py: a source checkout) for ``names``."""
    try:
        from tests.servers.brokers import PostgresProcess, RedisProcess, TansuProcess
        from tests.servers.helpers import MosquittoProcess
    except ImportError as e:
        raise SystemExit(f"--start-brokers needs a source checkout (tests/servers): {e}") from None
    started: list[Any] = []
    try:
        if "kafka" in names:
            k = TansuProcess()
            started.append(k)
            k.start()
            where = replace(where, kafka=k.bootstrap)
        if "redis" in names:
            r = RedisProcess()
            started.append(r)
            r.start()
            where = replace(where, redis=f"redis://127.0.0.1:{r.port}/0")
        if "postgres" in names:
            p = PostgresProcess()
            started.append(p)
            p.start()
            where = replace(where, postgres=p.dsn())
        if "mqtt" in names:
            m = MosquittoProcess()
            started.append(m)
            m.start()
            where = replace(where, mqtt=f"127.0.0.1:{m.port}")
        yield where
    finally:
        for server in started:
            server.close()


def run_rate(args: argparse.Namespace, where: Endpoints) -> list[dict[str, Any]]:
    results = synthetic_results(args.frames, args.detections, args.sources)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fovea-sink-rate-") as tmp:
        for name in args.sinks:
            folder = Path(tmp) / name
            folder.mkdir()
            row = measure_rate(name, sink_config(name, where, folder, args.flush_timeout_s), results, args.batch,
                               args.writer)
            log.info("%s", json.dumps(row))
            rows.append(row)
    print(f"\nsink rate: {args.frames} frames x {args.detections} detections, batches of {args.batch}, "
          f"{args.sources} sources, writer {args.writer}, broker on loopback")
    print("| sink | records/s | frames/s | seconds | in write() s |\n|---|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['sink']} | failed: {r['error']} | | | |")
        else:
            print(f"| {r['sink']} | {r['records_per_s']:,} | {r['frames_per_s']:,} | {r['seconds']} | "
                  f"{r['write_seconds']} |")
    return rows


def run_e2e(args: argparse.Namespace, where: Endpoints) -> list[dict[str, Any]]:
    """JSONL-only jobs against each sink's jobs on the same files (the bench's model and engine)."""
    from benchmarks.baselines import sample_frames
    from benchmarks.harness import BenchConfig, prepare_model
    from benchmarks.measure import job_config
    from engines.factory import resolve_device
    from pipelines.runner import run_job
    from streams.config import EngineConfig, SourceEntry
    from streams.sinks import SINKS
    from streams.sources.files import expand_sources

    files, problems = expand_sources([SourceEntry(path=s) for s in args.source])
    if problems or not files:
        raise SystemExit(f"--source: {problems[0] if problems else 'no video files'}")
    paths = [f.path for f in files]
    device = resolve_device(args.device)
    on_cuda = device.startswith("cuda")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fovea-sink-e2e-") as tmp:
        bench = BenchConfig(out=Path(tmp), model=args.model, quick=not on_cuda, device=device).resolved()
        size = bench.input_size or (640, 640)
        sample, _ = sample_frames(paths[0], 8, size)
        model = prepare_model(bench, sample, Path(tmp))
        engine = EngineConfig(kind="auto", device=device, precision="fp16" if on_cuda else "fp32",
                              inference_threads=args.streams if on_cuda else 1, batch_size=args.batch,
                              cuda_graphs=True)
        order = [name for _ in range(args.reps) for name in ("jsonl", *args.sinks)]
        for i, name in enumerate(order):
            folder = Path(tmp) / f"{i}-{name}"
            folder.mkdir()
            sink = SINKS.parse(sink_config(name, where, folder, args.flush_timeout_s), "sinks[0]")
            cfg = job_config(paths, [sink], model.config, engine, args.sessions if on_cuda else 1)
            summary = run_job(cfg, show_progress=False)
            row = {"sink": name, "rep": i // (1 + len(args.sinks)), "frames": summary.frames,
                   "seconds": round(summary.seconds, 3), "fps": round(summary.fps, 1),
                   "detections_per_frame": round(summary.detections / max(1, summary.frames), 2)}
            log.info("%s", json.dumps(row))
            rows.append(row)
    base = statistics.median(r["fps"] for r in rows if r["sink"] == "jsonl")
    print(f"\nsink cost in a job ({device}, {len(paths)} files, batch {args.batch}): median fps of {args.reps} job(s)")
    print("| sink | fps (median) | vs JSONL | detections/frame |\n|---|---:|---:|---:|")
    for name in ("jsonl", *args.sinks):
        mine = [r for r in rows if r["sink"] == name]
        fps = statistics.median(r["fps"] for r in mine)
        print(f"| {name} | {fps:,.0f} | {fps / base:.3f} | {mine[0]['detections_per_frame']} |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sink_rate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["rate", "e2e"])
    p.add_argument("--sinks", default=None, help=f"comma-separated, of {','.join(SINKS_ALL)} (default: all; "
                                                 "e2e: the network sinks)")
    p.add_argument("--start-brokers", action="store_true", help="start the test brokers on loopback")
    p.add_argument("--kafka", default=Endpoints.kafka, help="bootstrap servers")
    p.add_argument("--redis", default=Endpoints.redis, help="redis URL")
    p.add_argument("--postgres", default=Endpoints.postgres, help="PostgreSQL DSN")
    p.add_argument("--mqtt", default=Endpoints.mqtt, help="host:port")
    p.add_argument("--frames", type=int, default=20_000, help="rate: frames")
    p.add_argument("--writer", choices=["process", "inline"], default="process",
                   help="rate: where the sinks run (process: their own, the default; inline: this thread)")
    p.add_argument("--detections", type=int, default=15, help="rate: detections per frame")
    p.add_argument("--sources", type=int, default=8, help="rate: sources")
    p.add_argument("--batch", type=int, default=None, help="frames per write (rate: 64) / engine batch (e2e: 64)")
    p.add_argument("--source", action="append", default=[], help="e2e: video files or folders")
    p.add_argument("--device", default="auto", help="e2e: auto, cpu, cuda")
    p.add_argument("--model", default="yolov8n", help="e2e: yolov8n | default | a model file")
    p.add_argument("--sessions", type=int, default=10, help="e2e: decode sessions")
    p.add_argument("--streams", type=int, default=2, help="e2e: inference threads")
    p.add_argument("--reps", type=int, default=2, help="e2e: jobs per sink")
    p.add_argument("--flush-timeout-s", type=float, default=60.0,
                   help="network sinks: how long the end waits for delivery (then: failed)")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    default = SINKS_ALL if args.mode == "rate" else NETWORK
    args.sinks = [s for s in (args.sinks.split(",") if args.sinks else default) if s]
    unknown = [s for s in args.sinks if s not in SINKS_ALL]
    if unknown:
        p.error(f"--sinks: unknown {unknown}; one of {SINKS_ALL}")
    if args.mode == "e2e":
        args.sinks = [s for s in args.sinks if s != "jsonl"]
        if not args.source:
            p.error("e2e needs --source (the bench's workload files)")
    args.batch = args.batch or 64
    where = Endpoints(args.kafka, args.redis, args.postgres, args.mqtt)
    run = run_rate if args.mode == "rate" else run_e2e
    with brokers(args.sinks, where) if args.start_brokers else contextlib.nullcontext(where) as endpoints:
        rows = run(args, endpoints)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
