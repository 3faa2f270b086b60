"""Live-rate simulation: how many 1080p30 streams Fovea sustains on one GPU.

Recorded 1080p30 H.264 clips (1 s GOP, no B-frames, as cameras send) are paced in real
time and looped by the same ingest path RTSP cameras use (``file://`` sources of
:class:`streams.live.rtsp.RtspSource`), batched as GOPs, decoded on NVDEC, run through
the engine and postprocess, and written to a JSONL sink. A stream is *sustained* when it
emits >= 29 fps with a p95 latency (packet arrival → detections emitted) <= 1.5 s over the
measured window and no queue drops.

Usage::

    python -m benchmarks.live_sim --streams 50,100,150 --duration 40 --out results/live
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmarks.live_sim")


def make_camera_clip(path: Path, seed: int, seconds: int = 10, fps: int = 30) -> Path:
    """A 1080p30 H.264 clip like a camera's: fixed 1 s GOP (no scene-cut keyframes), no
    B-frames, moving textured content from the synthetic scene generator."""
    if path.exists():
        return path
    import av

    from streams.synthetic import SceneSpec, render_scene

    tmp = path.with_suffix(".tmp.mp4")
    spec = SceneSpec(width=1920, height=1080, fps=fps, num_frames=seconds * fps, seed=seed)
    with av.open(str(tmp), "w") as c:
        st = c.add_stream("libx264", rate=fps, options={
            "preset": "veryfast", "crf": "23",
            "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0:bframes=0"})
        st.width, st.height, st.pix_fmt = 1920, 1080, "yuv420p"
        for img, _ in render_scene(spec):
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    tmp.rename(path)
    return path


def gop_buffers(path: Path, limit: int = 64) -> list[tuple[bytes, int]]:
    """Self-contained Annex-B GOPs (bytes, frames) of a clip, as the live ingest builds them."""
    import av

    out: list[tuple[bytes, int]] = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        bsf = av.BitStreamFilterContext("h264_mp4toannexb", s)
        data: list[bytes] = []
        for pkt in c.demux(s):
            if pkt.size == 0:
                continue
            if pkt.is_keyframe and data:
                out.append((b"".join(data), len(data)))
                data = []
                if len(out) >= limit:
                    break
            data.append(b"".join(bytes(p) for p in bsf.filter(pkt)))
    return out


def measure_gop_decode(clips: list[Path], batch: int, seconds: float = 8.0, threads: int = 4) -> dict[str, Any]:
    """NVDEC throughput of ``fn.decoders.video`` on batches of GOP buffers (decode only)."""
    import numpy as np
    import torch
    from nvidia.dali import fn, pipeline_def, types

    gops = [g for c in clips for g in gop_buffers(c, 16)]
    seq = max(n for _, n in gops)

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=0, prefetch_queue_depth=1)
    def graph() -> Any:
        data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
        return fn.decoders.video(data, device="mixed", sequence_length=seq, pad_mode="constant")

    pipe = graph()
    pipe.build()
    frames, calls, i = 0, 0, 0
    t0 = None
    deadline = time.time() + seconds + 2
    while time.time() < deadline:
        chunk = [gops[(i + k) % len(gops)] for k in range(batch)]
        i += batch
        pipe.run(data=[np.frombuffer(b, np.uint8) for b, _ in chunk])
        torch.cuda.synchronize()
        if t0 is None:  # first call: decoder creation
            t0 = time.time()
            continue
        frames += sum(n for _, n in chunk)
        calls += 1
    elapsed = time.time() - (t0 or time.time())
    fps = frames / elapsed if elapsed > 0 else 0.0
    log.info("GOP decode, batch %d: %.0f fps (%d calls)", batch, fps, calls)
    return {"batch_gops": batch, "fps": fps, "calls": calls, "gop_frames": seq}


Worker = Callable[[int, Callable[[], object], threading.Event, list[int]], None]


def _run_concurrent(streams: int, worker: Worker, seconds: float, warmup_s: float = 1.0) -> tuple[float, list[str]]:
    """Run ``worker(k, ready, stop, frames)`` in ``streams`` threads at once: each sets itself up,
    calls ``ready()``, then adds to ``frames[k]`` until ``stop``. Returns the frames per second of
    all threads together between ``warmup_s`` after the last ``ready()`` and ``seconds`` later,
    and the errors the workers raised (a probe reports them and goes on)."""
    start = threading.Barrier(streams + 1)
    stop = threading.Event()
    frames = [0] * streams
    errors: list[str] = []

    def run(k: int) -> None:
        try:
            worker(k, lambda: start.wait(timeout=300), stop, frames)
        except threading.BrokenBarrierError:
            pass
        except Exception as e:
            errors.append(f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}")
            start.abort()

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(streams)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait(timeout=300)
    time.sleep(warmup_s)  # decoders created, first outputs out
    base, t1 = sum(frames), time.perf_counter()
    time.sleep(seconds)
    total, t2 = sum(frames), time.perf_counter()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    return (total - base) / (t2 - t1), errors


def measure_stream_decode(clips: list[Path], streams: int, op: str, seconds: float = 6.0,
                          sequence_length: int = 0) -> dict[str, Any]:
    """NVDEC throughput with one DALI pipeline per stream, all decoding at once (decode only).

    Each of ``streams`` threads owns a pipeline (its own NVDEC decoder) and CUDA stream and
    feeds it GOP buffers back to back: ``op="inputs"`` uses ``fn.experimental.inputs.video``
    (one GOP per ``feed_input``, ``sequence_length`` frames per run), ``op="decoders"`` uses
    ``fn.decoders.video`` on a batch of one GOP. Reports aggregate fps and per-GOP latency.
    """
    import numpy as np
    import torch
    from nvidia.dali import fn, pipeline_def, types

    gops = [g for c in clips for g in gop_buffers(c, 8)]
    gop_len = max(n for _, n in gops)
    seq = sequence_length or gop_len
    lat: list[float] = []

    def worker(k: int, ready: Callable[[], object], stop: threading.Event, frames: list[int]) -> None:
        st = torch.cuda.Stream()

        @pipeline_def(batch_size=1, num_threads=1, device_id=0, prefetch_queue_depth=1)
        def graph() -> Any:
            if op == "inputs":
                return fn.experimental.inputs.video(name="in", sequence_length=seq, device="mixed",
                                                    last_sequence_policy="pad", blocking=True)
            data = fn.external_source(name="in", dtype=types.UINT8, ndim=1)
            return fn.decoders.video(data, device="mixed", sequence_length=gop_len, pad_mode="constant")

        pipe = graph()
        pipe.build()
        i = k
        ready()
        while not stop.is_set():
            buf, n = gops[i % len(gops)]
            i += 1
            t = time.perf_counter()
            arr = np.frombuffer(buf, np.uint8)
            if op == "inputs":
                pipe.feed_input("in", [arr])
                for _ in range(-(-n // seq)):
                    pipe.run(st.cuda_stream)
            else:
                pipe.run(st.cuda_stream, **{"in": [arr]})
            st.synchronize()
            lat.append(time.perf_counter() - t)
            frames[k] += n

    fps, errors = _run_concurrent(streams, worker, seconds)
    lat.sort()
    res = {"op": op, "streams": streams, "sequence_length": seq, "fps": round(fps, 1),
           "gop_latency_p50_s": round(lat[len(lat) // 2], 4) if lat else None,
           "gop_latency_p95_s": round(lat[int(len(lat) * 0.95)], 4) if lat else None,
           "errors": errors[:3]}
    log.info("stream decode %s x%d (seq %d): %.0f fps, GOP latency p50 %s s p95 %s s, errors %d", op, streams,
             seq, fps, res["gop_latency_p50_s"], res["gop_latency_p95_s"], len(errors))
    torch.cuda.empty_cache()
    return res


def annexb_packets(path: Path) -> tuple[str, list[tuple[bytes, int]]]:
    """(codec, [(Annex-B access unit, pts)]) of a clip, as the live ingest hands them to NVDEC."""
    import av

    out: list[tuple[bytes, int]] = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        codec = s.codec_context.name
        bsf = av.BitStreamFilterContext(f"{codec}_mp4toannexb", s)
        for pkt in c.demux(s):
            if pkt.size == 0:
                continue
            pts = int(pkt.pts if pkt.pts is not None else 0)  # read first: filtering takes the packet
            data = b"".join(bytes(p) for p in bsf.filter(pkt))
            if data:
                out.append((data, pts))
    return codec, out


def measure_nvdec(clips: list[Path], streams: int, seconds: float = 6.0, target: tuple[int, int] = (640, 360)
                  ) -> dict[str, Any]:
    """Aggregate NVDEC throughput with one persistent :class:`pipelines.nvdec.NvdecSession` per
    stream, every stream's thread feeding packets back to back (decode only, scaled to ``target``)."""
    import torch

    from pipelines.nvdec import NvdecSession

    packets = [annexb_packets(c) for c in clips]

    def worker(k: int, ready: Callable[[], object], stop: threading.Event, frames: list[int]) -> None:
        codec, pk = packets[k % len(packets)]
        with NvdecSession(codec, target, device_id=0) as dec:
            ready()
            i = 0
            while not stop.is_set():
                data, pts = pk[i % len(pk)]
                i += 1
                frames[k] += len(dec.decode(data, pts))

    fps, errors = _run_concurrent(streams, worker, seconds)
    res = {"op": "nvdec", "streams": streams, "fps": round(fps, 1), "per_stream_fps": round(fps / streams, 1),
           "target": list(target), "errors": errors[:3]}
    log.info("NVDEC sessions x%d: %.0f fps (%.1f per stream), errors %d", streams, fps, fps / streams, len(errors))
    torch.cuda.empty_cache()
    return res


def make_clips(folder: Path, n: int, seconds: int = 10) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"cam_{i:02d}.mp4" for i in range(n)]
    todo = [p for p in paths if not p.exists()]
    if todo:
        log.info("encoding %d camera clips (1080p30, %d s) ...", len(todo), seconds)
        with ProcessPoolExecutor() as pool:
            list(pool.map(make_camera_clip, todo, [1000 + i for i in range(len(todo))], [seconds] * len(todo)))
    return paths


def model_section(model: str, input_size: int) -> dict[str, Any]:
    if model == "yolov8n":
        from benchmarks.yolov8n import build_yolov8n, export_torchscript, fuse

        path = Path(f"/tmp/fovea-bench-yolov8n-{input_size}.pt")
        if not path.exists():
            export_torchscript(fuse(build_yolov8n(input_size=(input_size, input_size))), path)
        return {"path": str(path), "input_size": [input_size, input_size], "layout": "yolov8"}
    return {"path": model}


def run_point(n: int, clips: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.measure import CASCADE_SECONDARIES, TRACKING_ANALYTICS
    from pipelines.live import run_live
    from streams.config import parse_config

    out = Path(args.out)
    cfg = parse_config({
        "sources": [{"uri": f"file://{clips[i % len(clips)].resolve()}", "id": f"s{i:03d}"} for i in range(n)],
        "model": model_section(args.model, args.input_size),
        "engine": {"device": "cuda", "batch_size": args.batch, "precision": "fp16"},
        "live": {"decode": args.decode, "inference_threads": args.inference_threads, "log_interval_s": 10,
                 "gil_switch_interval_ms": args.gil_switch_ms,
                 "http": {"enabled": False},
                 "ingest": {"processes": args.ingest_processes if args.ingest_processes == "auto"
                            else int(args.ingest_processes)},
                 "batch": {"max_wait_ms": args.max_wait_ms,
                           "queue_size": args.queue_size or (2 if args.decode == "gop" else 16)}},
        "sinks": [{"type": "jsonl", "path": str(out / f"live_{n}.jsonl")}],
        **({"tracker": {"type": "bytetrack"}, "analytics": TRACKING_ANALYTICS} if args.tracking else {}),
        **({"tracker": {"type": "bytetrack"}, "secondary": CASCADE_SECONDARIES} if args.cascade else {}),
    })
    t0 = time.time()
    summary = run_live(cfg, duration_s=args.duration, warmup_s=args.warmup)
    streams: list[dict[str, Any]] = []
    for sid in sorted(summary.states):
        s = summary.streams.get(sid)
        window = max(1e-9, args.duration - args.warmup)
        fps = (s.frames / window) if s else 0.0
        p95 = s.latency_quantile(0.95) if s else None
        p50 = s.latency_quantile(0.5) if s else None
        drops = summary.dropped.get(sid, 0)
        ok = fps >= 29.0 and p95 is not None and p95 <= 1.5 and drops == 0
        streams.append({"id": sid, "fps": fps, "p50": p50, "p95": p95, "drops": drops, "ok": ok})
    sustained = sum(s["ok"] for s in streams)
    fps_all = sorted(s["fps"] for s in streams)
    p95_all = sorted(s["p95"] for s in streams if s["p95"] is not None)
    point = {
        "streams": n, "ingest_processes": args.ingest_processes, "sustained": sustained,
        "all_sustained": sustained == n,
        "min_fps": fps_all[0] if fps_all else 0.0, "median_fps": fps_all[len(fps_all) // 2] if fps_all else 0.0,
        "max_p95_s": p95_all[-1] if p95_all else None, "median_p95_s": p95_all[len(p95_all) // 2] if p95_all else None,
        "total_fps": sum(fps_all), "drops": sum(s["drops"] for s in streams), "batch_errors": summary.batch_errors,
        "wall_s": time.time() - t0, "per_stream": streams,
    }
    log.info("%d streams: %d sustained, min fps %.1f, max p95 %s s, drops %d", n, sustained, point["min_fps"],
             point["max_p95_s"], point["drops"])
    (out / f"live_{n}.jsonl").unlink(missing_ok=True)  # large; the figures are kept
    return point


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.live_sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="50,100,150", help="stream counts to try")
    p.add_argument("--duration", type=float, default=40.0, help="seconds per point")
    p.add_argument("--warmup", type=float, default=12.0, help="seconds left out of the figures")
    p.add_argument("--clips", default="/tmp/fovea-live-clips", help="camera clip cache")
    p.add_argument("--num-clips", type=int, default=8)
    p.add_argument("--model", default="yolov8n", help="yolov8n | default | a model file")
    p.add_argument("--input-size", type=int, default=640)
    p.add_argument("--batch", type=int, default=128, help="engine frames per call (GOPs per call = batch // 32)")
    p.add_argument("--inference-threads", "--workers", dest="inference_threads", type=int, default=4,
                   help="live.inference_threads (--workers: the old name)")
    p.add_argument("--tracking", action="store_true",
                   help="ByteTrack, one line and one zone on every camera (the cost issue 24 bounds)")
    p.add_argument("--cascade", action="store_true",
                   help="ByteTrack and two secondary classifiers on every camera (DeepStream's workload): NVDEC "
                        "decodes full-size frames for the crops (--decode gpu only)")
    p.add_argument("--ingest-processes", default="auto",
                   help="live.ingest.processes: reader processes (auto: one per 24 streams above 32; 0: none)")
    p.add_argument("--gil-switch-ms", type=float, default=0.1, help="live.gil_switch_interval_ms")
    p.add_argument("--decode", choices=["gpu", "gop"], default="gpu",
                   help="gpu: an NVDEC session per stream (default); gop: GOP buffers through DALI")
    p.add_argument("--queue-size", type=int, default=0,
                   help="per-stream queue (items; default 16 frames, or 2 GOPs with --decode gop)")
    p.add_argument("--max-wait-ms", type=float, default=100.0)
    p.add_argument("--decode-batches", default="8,32", help="GOP batch sizes for the decode-only measurement")
    p.add_argument("--stream-decode", default="", help="stream counts for the per-stream decoder probe "
                   "(one pipeline per stream; e.g. 8,32,100); with --only-probe nothing else runs")
    p.add_argument("--stream-decode-ops", default="nvdec,inputs,decoders",
                   help="per-stream decoders to probe: nvdec (pipelines.nvdec), inputs / decoders (DALI)")
    p.add_argument("--only-probe", action="store_true")
    p.add_argument("--out", default="benchmarks/out")
    args = p.parse_args(argv)
    if args.cascade and args.decode == "gop":  # refused by the job too, after the clips and the engine
        p.error("--cascade needs --decode gpu: the gop path does not return the source frames the crops need")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    clips = make_clips(Path(args.clips), args.num_clips)
    probes = [measure_nvdec(clips, int(n)) if op == "nvdec" else measure_stream_decode(clips, int(n), op)
              for op in args.stream_decode_ops.split(",") if op for n in args.stream_decode.split(",") if n]
    if probes:
        (Path(args.out) / "stream_decode.json").write_text(json.dumps(probes, indent=2))
    if args.only_probe:
        return 0
    decode = [measure_gop_decode(clips, b) for b in (int(x) for x in args.decode_batches.split(",") if x)]
    points = [run_point(int(n), clips, args) for n in args.streams.split(",") if n]
    best = max((pt["streams"] for pt in points if pt["all_sustained"]), default=0)
    result = {"date": time.strftime("%Y-%m-%d"), "args": vars(args), "gop_decode": decode, "points": points,
              "max_sustained": best}
    (Path(args.out) / "live_sim.json").write_text(json.dumps(result, indent=2))
    lines = ["| streams | sustained | min fps | median fps | max p95 (s) | median p95 (s) | drops | batch errors |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for pt in points:
        lines.append(f"| {pt['streams']} | {pt['sustained']} | {pt['min_fps']:.1f} | {pt['median_fps']:.1f} | "
                     f"{pt['max_p95_s'] if pt['max_p95_s'] is None else round(pt['max_p95_s'], 3)} | "
                     f"{pt['median_p95_s'] if pt['median_p95_s'] is None else round(pt['median_p95_s'], 3)} | "
                     f"{pt['drops']} | {pt['batch_errors']} |")
    table = "\n".join(lines) + f"\n\nmax streams all sustained: {best}\n"
    table += "".join(f"\nGOP decode (NVDEC, fn.decoders.video), batch {d['batch_gops']} GOPs: {d['fps']:.0f} fps"
                     for d in decode) + "\n"
    (Path(args.out) / "live_sim.md").write_text(table)
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
