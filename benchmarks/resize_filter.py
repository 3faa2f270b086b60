"""The cost of OpenCV's exact resize filter on the GPU file path: ``resize_filter`` dali vs opencv.

``preprocess.resize_filter: opencv`` resizes decoded frames with OpenCV's fixed-point
bilinear filter in torch (:func:`operators.resize.resize_bilinear_opencv`, on the batch's
CUDA stream) instead of DALI's ``fn.resize``; Ultralytics exports get it by default
(``auto``). On the same clips, sessions, batch and model, this measures each filter:

- ``source``: the pipeline's own source drained without inference (NVDEC decode +
  preprocessing, :class:`pipelines.file_source.FileDecodeSource`): where the filter's cost is;
- ``e2e``: :func:`pipelines.runner.run_job` end to end (the bench's YOLOv8n on the torch
  engine, a JSONL sink), every frame accounted for.

The filters alternate (dali, opencv, dali, opencv, ...) for ``--rounds`` rounds, so a drift
of the machine shows as a spread rather than as a difference. Results go to ``--out`` as
JSON, with each e2e/source rate of opencv as a share of dali's.

Usage::

    python -m benchmarks.resize_filter --out resize-filter.json                 # H.264 1080p, 640x640
    python -m benchmarks.resize_filter --skip-e2e --rounds 3 --out rf.json       # the source only
    python -m benchmarks.resize_filter --quick --device cpu --out /tmp/rf.json  # smoke run (CPU decode)
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch

from benchmarks.clips import build_workload, default_specs, ensure_clips
from benchmarks.harness import DEFAULT_CLIPS_DIR

log = logging.getLogger(__name__)

FILTERS = ("dali", "opencv")


def measure_source(files: list[Path], resize_filter: str, sessions: int, batch: int, size: tuple[int, int],
                   device: str) -> dict[str, Any]:
    """Decode + preprocess of ``files`` with ``resize_filter``, no inference: frames per second."""
    from pipelines.file_source import DecodePlan, FileDecodeSource, FileEvent
    from pipelines.preprocess import PreprocessSpec
    from streams.config import PreprocessConfig
    from streams.sources.files import VideoFile

    on_cuda = device.startswith("cuda")
    options = PreprocessConfig(resize_filter=resize_filter)  # type: ignore[arg-type]
    plan = DecodePlan(spec=PreprocessSpec(dtype="float16" if on_cuda else "float32", layout="NCHW", options=options),
                      input_size=size, batch=batch, decode_device="gpu" if on_cuda else "cpu",
                      device_id=int(device.split(":")[1]) if on_cuda else None, sessions=sessions)
    videos = [VideoFile(f, f"{i:03d}_{f.stem}") for i, f in enumerate(files)]
    frames, failures = 0, []
    t0 = time.perf_counter()
    with FileDecodeSource(videos, plan) as source:
        while (item := source.read()) is not None:
            if isinstance(item, FileEvent):
                if item.kind == "failed":
                    failures.append(str(item.error))
                continue
            frames += item.num_valid
        if on_cuda:
            torch.cuda.synchronize(device)
        secs = time.perf_counter() - t0
    return {"fps": round(frames / secs, 1), "frames": frames, "seconds": round(secs, 2), "failures": failures}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.baselines import sample_frames
    from benchmarks.measure import preprocess_job_rate
    from benchmarks.onnx_vs_torch import export_pair
    from streams.config import EngineConfig, ModelConfig
    from streams.sources.probe import probe_video

    device = args.device if args.device != "auto" else ("cuda:0" if torch.cuda.is_available() else "cpu")
    on_cuda = device.startswith("cuda")
    size = (128, 128) if args.quick else (args.size, args.size)
    sessions = args.sessions if on_cuda else 1
    clips = ensure_clips(default_specs(args.codec, 2 if args.quick else 6, args.quick), args.clips)
    results: dict[str, Any] = {"device": device, "gpu": torch.cuda.get_device_name(device) if on_cuda else None,
                               "codec": args.codec, "input_size": list(size), "batch": args.batch,
                               "sessions": sessions, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="fovea-resize-filter-") as tmp:
        files = build_workload(clips, args.loops, Path(tmp) / "looped", max(len(clips), 2 * sessions))
        expected = sum(probe_video(f).num_frames for f in files)
        results["frames"] = expected
        model = engine = None
        if not args.skip_e2e:
            frames, _ = sample_frames(clips[0], 8, size)
            pt2, _ = export_pair(frames, size, Path(tmp))
            model = ModelConfig(path=str(pt2), layout="yolov8", input_size=size)
            engine = EngineConfig(kind="torch", device=device, precision="fp16" if on_cuda else "fp32",
                                  batch_size=args.batch)
        for r in range(args.rounds):
            row: dict[str, Any] = {}
            for f in FILTERS:
                row[f] = {"source": measure_source(files, f, sessions, args.batch, size, device)}
                if model is not None and engine is not None:  # (set together, unless --skip-e2e)
                    row[f]["e2e"] = preprocess_job_rate(files, expected, model, engine, sessions,
                                                        Path(tmp) / f"e2e-{f}.jsonl", resize_filter=f)
                log.info("round %d, %s: %s", r, f, json.dumps(row[f]))
            results["rounds"].append(row)
    for what in ("source", "e2e"):
        rates = {f: [row[f][what]["fps"] for row in results["rounds"] if what in row[f]] for f in FILTERS}
        if all(rates.values()):
            results[f"{what}_median_fps"] = {f: median(v) for f, v in rates.items()}
            results[f"{what}_opencv_share_of_dali"] = round(median(rates["opencv"]) / median(rates["dali"]), 3)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.resize_filter", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON results")
    p.add_argument("--device", default="auto")
    p.add_argument("--codec", choices=["h264", "hevc"], default="h264")
    p.add_argument("--size", type=int, default=640, help="square input size (default 640)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sessions", type=int, default=14, help="decode sessions on the GPU (default 14)")
    p.add_argument("--loops", type=int, default=4, help="each clip looped this many times (default 4)")
    p.add_argument("--rounds", type=int, default=2, help="alternating dali/opencv rounds (default 2)")
    p.add_argument("--skip-e2e", action="store_true", help="the source (decode + preprocess) only")
    p.add_argument("--clips", type=Path, default=DEFAULT_CLIPS_DIR)
    p.add_argument("--quick", action="store_true", help="tiny clips and input: a smoke run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = run(args)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
