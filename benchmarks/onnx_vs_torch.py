"""The same YOLOv8n as a torch program and as ONNX, end to end on the GPU (issue #30).

Builds ``fovea bench``'s YOLOv8n (random weights calibrated on the clips' frames, BN folded),
saves it once as a ``torch.export`` program (``.pt2``) and once as ONNX (opset 17, dynamic
batch), then measures, with the same clips, batch and sessions, each way of running it:

- ``torch``: the ``.pt2`` on the torch engine (compiled, CUDA graphs): the reference;
- ``onnx2torch``: the ``.onnx`` converted by onnx2torch, on the same torch engine;
- ``onnxruntime``: the ``.onnx`` on ONNX Runtime's CUDA provider with IO binding, where
  ``onnxruntime-gpu`` is installed (skipped otherwise);
- ``tensorrt``: the ``.onnx`` on TensorRT, where ``tensorrt`` is installed.

Each row is the engine ceiling (device-resident batches) and ``run_job``'s end-to-end rate
(:func:`benchmarks.measure.measure_engine`, :func:`benchmarks.measure.measure_e2e`), and the
ONNX rows' share of the torch row's end-to-end rate. Results go to ``--out`` as JSON.

Usage::

    python -m benchmarks.onnx_vs_torch --out onnx-vs-torch.json            # H.264 clips, ~30 s a job
    python -m benchmarks.onnx_vs_torch --quick --device cpu --out /tmp/o.json   # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.clips import build_workload, default_specs, ensure_clips
from benchmarks.harness import DEFAULT_CLIPS_DIR
from benchmarks.measure import measure_e2e, measure_engine
from benchmarks.results import Measurement
from streams.config import EngineConfig, ModelConfig

log = logging.getLogger(__name__)


def export_pair(frames: torch.Tensor, size: tuple[int, int], folder: Path) -> tuple[Path, Path]:
    """One calibrated, BN-folded YOLOv8n saved as ``.pt2`` and as ``.onnx`` in ``folder``."""
    from benchmarks.yolov8n import build_yolov8n, calibrate, export_program, fuse

    net = build_yolov8n(input_size=size)
    calibrate(net, frames)
    fuse(net)
    pt2 = export_program(net, folder / f"yolov8n_{size[0]}x{size[1]}.pt2")
    onnx_path = folder / f"yolov8n_{size[0]}x{size[1]}.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(1, 3, *size),), str(onnx_path), input_names=["images"],
                      output_names=["output0"], dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return pt2, onnx_path


def _variants(pt2: Path, onnx_path: Path, size: tuple[int, int]) -> dict[str, tuple[ModelConfig, str] | str]:
    """Each way of running the model: (model, engine kind), or why it is skipped here."""
    from engines.onnx_torch import onnx2torch_problem
    from engines.onnxruntime_engine import cuda_provider_available

    model = ModelConfig(path=str(pt2), layout="yolov8", input_size=size)
    onnx = ModelConfig(path=str(onnx_path), layout="yolov8")
    out: dict[str, tuple[ModelConfig, str] | str] = {"torch": (model, "torch")}
    problem = onnx2torch_problem()
    out["onnx2torch"] = (onnx, "torch") if problem is None else problem
    out["onnxruntime"] = (onnx, "onnxruntime") if cuda_provider_available() else "onnxruntime-gpu is not installed"
    has_trt = importlib.util.find_spec("tensorrt") is not None
    out["tensorrt"] = (onnx, "tensorrt") if has_trt else "tensorrt is not installed"
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.baselines import sample_frames
    from streams.sources.probe import probe_video

    device = args.device if args.device != "auto" else ("cuda:0" if torch.cuda.is_available() else "cpu")
    size = (128, 128) if args.quick else (args.size, args.size)
    clips = ensure_clips(default_specs("h264", 2 if args.quick else 6, args.quick), args.clips)
    sessions = 1 if not device.startswith("cuda") else args.sessions
    with tempfile.TemporaryDirectory(prefix="fovea-onnx-bench-") as tmp:
        files = build_workload(clips, args.loops, Path(tmp) / "looped", max(len(clips), 2 * sessions))
        expected = sum(probe_video(f).num_frames for f in files)
        frames, src_size = sample_frames(clips[0], 8, size)
        pt2, onnx_path = export_pair(frames, size, Path(tmp))
        results: dict[str, Any] = {"device": device, "gpu": torch.cuda.get_device_name(device)
                                   if device.startswith("cuda") else None, "input_size": list(size),
                                   "batch": args.batch, "sessions": sessions, "frames": expected, "rows": {}}
        for name, variant in _variants(pt2, onnx_path, size).items():
            if isinstance(variant, str):
                results["rows"][name] = {"skipped": variant}
                log.info("%s skipped: %s", name, variant)
                continue
            model, kind = variant
            engine = EngineConfig(kind=kind, device=device, precision="fp16" if device.startswith("cuda") else "fp32",  # type: ignore[arg-type]
                                  batch_size=args.batch, inference_threads=args.streams)
            row: dict[str, Any] = {}
            for label in ("engine", "e2e"):
                try:
                    m: Measurement = (measure_engine(model, engine, device, frames, src_size, args.seconds)
                                      if label == "engine" else
                                      measure_e2e(files, expected, model, engine, device, sessions, "h264", tmp))
                    row[label] = {"fps": m.fps, "frames": m.frames, "seconds": m.seconds, "ok": m.ok,
                                  "error": m.error}
                except Exception as e:  # one failing row must not lose the others
                    log.exception("%s %s failed", name, label)
                    row[label] = {"error": f"{type(e).__name__}: {e}"}
            results["rows"][name] = row
            log.info("%s: %s", name, json.dumps(row))
        ref = results["rows"]["torch"].get("e2e", {}).get("fps")
        for row in results["rows"].values():
            fps = row.get("e2e", {}).get("fps") if isinstance(row.get("e2e"), dict) else None
            if ref and fps:
                row["e2e_share_of_torch"] = round(fps / ref, 3)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.onnx_vs_torch", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON results")
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=640, help="square input size (default 640)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sessions", type=int, default=14, help="decode sessions on the GPU (default 14)")
    p.add_argument("--streams", type=int, default=2, help="inference threads (default 2)")
    p.add_argument("--loops", type=int, default=8, help="each clip looped this many times (default 8)")
    p.add_argument("--seconds", type=float, default=5.0, help="engine-ceiling measurement (default 5 s)")
    p.add_argument("--clips", type=Path, default=DEFAULT_CLIPS_DIR)
    p.add_argument("--quick", action="store_true", help="tiny clips and input: a smoke run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = run(args)
    args.out.write_text(json.dumps(results, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__")
                                   else str(o)))
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
