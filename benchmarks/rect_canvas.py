"""A dynamic-shape export at its rectangle canvases vs the square input, end to end (issue #30).

A dynamic-shape ONNX export (symbolic height and width, Ultralytics' metadata: ``imgsz``,
``stride``) runs each file at the smallest stride-aligned rectangle around its letterboxed
frames (``preprocess.canvas: auto``): a 1920x1080 clip at 640 runs at 640x384, 40 % fewer
pixels than ``canvas: square``'s 640x640. This builds ``fovea bench``'s YOLOv8n (random
weights calibrated on the clips' frames, BN folded), exports it that way (its head computes
its anchors from the feature maps' shapes, as Ultralytics' does when exported dynamic; checked
against the torch model at a rectangle before anything is measured), and runs
:func:`pipelines.runner.run_job` over the same clips with ``canvas: square`` and ``canvas:
auto``, alternating, for each engine that can run it here:

- ``torch``: the export converted by onnx2torch, on the torch engine (compiled, CUDA graphs:
  one per canvas and inference stream, captured before decoding);
- ``tensorrt``: TensorRT, one optimization profile from the smallest canvas up to imgsz,
  tuned at imgsz;
- ``onnxruntime``: ONNX Runtime's CUDA provider (``onnxruntime-gpu``), or the CPU.

Each row: per canvas the median e2e rate over ``--rounds``, every frame's record checked,
and ``auto``'s share of ``square``'s. Results go to ``--out`` as JSON.

Usage::

    python -m benchmarks.rect_canvas --out rect.json                       # H.264 1080p, imgsz 640
    python -m benchmarks.rect_canvas --codec hevc --engines tensorrt --out rect-hevc.json
    python -m benchmarks.rect_canvas --quick --device cpu --out /tmp/rect.json   # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import tempfile
import types
from pathlib import Path
from statistics import median
from typing import Any, Literal

import torch

from benchmarks.clips import build_workload, default_specs, ensure_clips
from benchmarks.harness import DEFAULT_CLIPS_DIR

log = logging.getLogger(__name__)

CANVASES: tuple[Literal["square", "auto"], ...] = ("square", "auto")
ENGINES = ("torch", "tensorrt", "onnxruntime")


def _anchors(feats: list[torch.Tensor], strides: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points ``[A, 2]`` and strides ``[A, 1]`` from the feature maps' own shapes, so a
    traced export computes them for whatever input size it is given."""
    points, strides_out = [], []
    for f, s in zip(feats, strides, strict=True):
        h, w = f.shape[2], f.shape[3]
        sx = torch.arange(w, dtype=f.dtype, device=f.device) + 0.5
        sy = torch.arange(h, dtype=f.dtype, device=f.device) + 0.5
        gy, gx = torch.meshgrid(sy, sx, indexing="ij")
        pts = torch.stack((gx, gy), -1).reshape(-1, 2)
        points.append(pts)
        strides_out.append(torch.full_like(pts[:, :1], float(s)))
    return torch.cat(points), torch.cat(strides_out)


def _traceable_detect(self: Any, feats: list[torch.Tensor]) -> torch.Tensor:
    """``benchmarks.yolov8n.Detect.forward`` in eval mode, with anchors from :func:`_anchors`."""
    b = feats[0].shape[0]
    pts_all, s_all = _anchors(feats, self.strides)
    proj = self.dfl.conv.weight.view(self.reg_max)
    outs, start = [], 0
    for i, f in enumerate(feats):
        box = self.cv2[i](f).permute(0, 2, 3, 1).reshape(b, -1, 4, self.reg_max)
        cls = self.cv3[i](f).permute(0, 2, 3, 1).reshape(b, -1, self.nc)
        n = box.shape[1]
        lt, rb = (box.softmax(-1) @ proj).split(2, -1)
        pts, s = pts_all[start:start + n], s_all[start:start + n]
        x1y1, x2y2 = pts - lt, pts + rb
        outs.append(torch.cat((torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), -1) * s, cls.sigmoid()), -1))
        start = start + n
    return torch.cat(outs, 1).transpose(1, 2)


def build_model(frames: torch.Tensor, size: tuple[int, int]) -> Any:
    """The bench's YOLOv8n for imgsz ``size``, calibrated on ``frames``, BN folded, eval mode."""
    from benchmarks.yolov8n import build_yolov8n, calibrate, fuse

    net = build_yolov8n(input_size=size)
    calibrate(net, frames)
    return fuse(net).eval()


def export_dynamic(net: Any, size: tuple[int, int], path: Path) -> Path:
    """``net`` (a :class:`benchmarks.yolov8n.YOLOv8n` in eval mode) exported to ``path`` with
    symbolic batch, height and width and Ultralytics' metadata (``imgsz`` ``size``, stride 32);
    checked against the torch model on a rectangle (ONNX Runtime, CPU)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    rect = (size[0] * 3 // 5 // 32 * 32, size[1])  # a 16:9 frame's canvas at this size
    x = torch.rand(2, 3, *rect)
    with torch.inference_mode():
        want = net(x)
    assert isinstance(want, torch.Tensor)
    exported = types.MethodType(_traceable_detect, net.detect)
    net.detect.forward = exported
    try:
        torch.onnx.export(net, (torch.zeros(1, 3, *size),), str(path), input_names=["images"],
                          output_names=["output0"], opset_version=17, dynamo=False,
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                        "output0": {0: "batch", 2: "anchors"}})
    finally:
        del net.detect.forward
    model = onnx.load(str(path))
    meta = {"author": "Fovea benchmarks (Ultralytics' metadata keys)", "task": "detect", "stride": "32",
            "imgsz": str(list(size)), "names": str({i: f"class{i}" for i in range(80)})}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    if got.shape != tuple(want.shape) or not np.allclose(got, want.numpy(), atol=1e-2, rtol=1e-3):
        raise RuntimeError(f"the dynamic export disagrees with the model at {rect[1]}x{rect[0]}")
    return path


def _engines(device: str, wanted: list[str]) -> dict[str, str | None]:
    """Each engine kind: ``None`` when it runs here, else why not."""
    from engines.onnx_torch import onnx2torch_problem
    from engines.onnxruntime_engine import cuda_provider_available

    on_cuda = device.startswith("cuda")
    why: dict[str, str | None] = {
        "torch": onnx2torch_problem(),
        "tensorrt": None if on_cuda and importlib.util.find_spec("tensorrt") is not None
        else "tensorrt is not installed (or no GPU)",
        "onnxruntime": None if not on_cuda or cuda_provider_available() else "onnxruntime-gpu is not installed",
    }
    return {k: why[k] for k in wanted}


def measure(files: list[Path], expected: int, model: Any, engine: Any, canvas: Literal["square", "auto"],
            sessions: int, work_dir: Path) -> dict[str, Any]:
    """The job's rate over ``files`` with ``preprocess.canvas: canvas``
    (:func:`benchmarks.measure.preprocess_job_rate`)."""
    from benchmarks.measure import preprocess_job_rate

    return preprocess_job_rate(files, expected, model, engine, sessions, work_dir / f"e2e-{canvas}.jsonl",
                               canvas=canvas)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.baselines import sample_frames
    from streams.config import EngineConfig, ModelConfig
    from streams.sources.probe import probe_video

    device = args.device if args.device != "auto" else ("cuda:0" if torch.cuda.is_available() else "cpu")
    on_cuda = device.startswith("cuda")
    size = (128, 128) if args.quick else (args.size, args.size)
    sessions = args.sessions if on_cuda else 1
    clips = ensure_clips(default_specs(args.codec, 2 if args.quick else 6, args.quick), args.clips)
    results: dict[str, Any] = {"device": device, "gpu": torch.cuda.get_device_name(device) if on_cuda else None,
                               "codec": args.codec, "imgsz": list(size), "batch": args.batch, "sessions": sessions,
                               "rows": {}}
    with tempfile.TemporaryDirectory(prefix="fovea-rect-bench-") as tmp:
        files = build_workload(clips, args.loops, Path(tmp) / "looped", max(len(clips), 2 * sessions))
        expected = sum(probe_video(f).num_frames for f in files)
        info = probe_video(files[0])
        results["frames"], results["source"] = expected, f"{info.width}x{info.height}"
        frames, _ = sample_frames(clips[0], 8, size)
        onnx_path = export_dynamic(build_model(frames, size), size, Path(tmp) / "yolov8n_dynamic.onnx")
        model = ModelConfig(path=str(onnx_path))
        for kind, why in _engines(device, args.engines).items():
            if why is not None:
                results["rows"][kind] = {"skipped": why}
                log.info("%s skipped: %s", kind, why)
                continue
            engine = EngineConfig(kind=kind, device=device, precision="fp16" if on_cuda else "fp32",  # type: ignore[arg-type]
                                  batch_size=args.batch, inference_threads=args.streams)
            rounds: list[dict[Literal["square", "auto"], dict[str, Any]]] = []
            for r in range(args.rounds):
                row = {c: measure(files, expected, model, engine, c, sessions, Path(tmp)) for c in CANVASES}
                log.info("%s round %d: %s", kind, r, json.dumps(row))
                rounds.append(row)
            fps = {c: median(x[c]["fps"] for x in rounds) for c in CANVASES}
            results["rows"][kind] = {"rounds": rounds, "median_fps": fps,
                                     "frames_ok": all(x[c]["frames_ok"] for x in rounds for c in CANVASES),
                                     "auto_share_of_square": round(fps["auto"] / fps["square"], 3)}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rect_canvas", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON results")
    p.add_argument("--device", default="auto")
    p.add_argument("--codec", choices=["h264", "hevc"], default="h264")
    p.add_argument("--size", type=int, default=640, help="the export's imgsz (default 640)")
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sessions", type=int, default=14, help="decode sessions on the GPU (default 14)")
    p.add_argument("--streams", type=int, default=2, help="inference threads (default 2)")
    p.add_argument("--loops", type=int, default=4, help="each clip looped this many times (default 4)")
    p.add_argument("--rounds", type=int, default=2, help="alternating square/auto rounds (default 2)")
    p.add_argument("--clips", type=Path, default=DEFAULT_CLIPS_DIR)
    p.add_argument("--quick", action="store_true", help="tiny clips and input: a smoke run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = run(args)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "rows"} |
                     {"rows": {k: {x: y for x, y in v.items() if x != "rounds"} for k, v in results["rows"].items()}},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
