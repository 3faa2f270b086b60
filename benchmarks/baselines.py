"""What users would write without Fovea: the baselines its end-to-end figure is compared with.

* ``pyav_fp32`` / ``pyav_fp16``: PyAV decodes on the CPU (``thread_type="AUTO"``); each
  frame goes ``to_ndarray("rgb24")`` -> ``torch.from_numpy`` -> the device -> letterbox
  (``F.interpolate`` bilinear + ``F.pad`` with grey 114) in the model's precision; frames are
  batched (the pipeline's batch size) for an eager torch model.
* ``dali_legacy``: DALI's legacy ``fn.readers.video(device="gpu", sequence_length=16)``
  (one pipeline, which re-seeks to the previous keyframe for every sequence), handed to
  torch by DLPack, letterboxed in torch, eager FP16 model.

All three finish with Fovea's own postprocess (:func:`operators.postprocess.postprocess`,
default thresholds) so that only decode, preprocessing and inference differ, and stop
after ``seconds`` (or the end of the files): fps is over the frames fully processed.
The letterbox geometry is :func:`operators.boxes.letterbox_geometry`, as in the pipeline.

Usage::

    m = measure_pyav(files, model, "yolov8", "cuda:0", "fp32", batch=32, seconds=8,
                     input_size=(640, 640), codec="h264")
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.results import Measurement
from benchmarks.sampler import UtilSampler
from operators.boxes import LetterboxGeometry, letterbox_geometry
from operators.postprocess import postprocess
from streams.config import PostprocessConfig

log = logging.getLogger(__name__)

PAD = 114 / 255.0


def letterbox(x: torch.Tensor, geom: LetterboxGeometry) -> torch.Tensor:
    """Letterbox float ``[N, 3, h, w]`` frames in [0, 1] onto the model canvas (bilinear, grey pad)."""
    if (geom.resized_w, geom.resized_h) != (x.shape[3], x.shape[2]):
        x = F.interpolate(x, size=(geom.resized_h, geom.resized_w), mode="bilinear", align_corners=False)
    right = geom.dst_w - geom.resized_w - geom.pad_x
    bottom = geom.dst_h - geom.resized_h - geom.pad_y
    if geom.pad_x or geom.pad_y or right or bottom:
        x = F.pad(x, (geom.pad_x, right, geom.pad_y, bottom), value=PAD)
    return x


def sample_frames(path: str | Path, count: int, input_size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """``count`` frames spread over ``path``, preprocessed as the pipeline does (float32 ``[n, 3, H, W]``
    in [0, 1]), and the source size ``(width, height)``: the INT8 calibration frames' helpers.
    """

    from engines.tensorrt.calibrator import read_video_frames
    from pipelines.preprocess import HostPreprocessor
    from streams.config import PreprocessConfig

    frames = list(read_video_frames([path], count))
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    x = HostPreprocessor(input_size, PreprocessConfig())(frames)
    return torch.from_numpy(x), (int(frames[0].shape[1]), int(frames[0].shape[0]))


class _Runner:
    """Batches letterboxed frames, runs the model and the postprocess; counts what is done."""

    def __init__(self, model: nn.Module, layout: str, batch: int, params: PostprocessConfig,
                 names: Sequence[str]) -> None:
        self.model = model
        self.layout = layout
        self.batch = batch
        self.params = params
        self.names = tuple(names)
        self.pending: list[torch.Tensor] = []
        self.geoms: list[LetterboxGeometry] = []
        self.frames = 0
        self.detections = 0

    def add(self, x: torch.Tensor, geom: LetterboxGeometry) -> None:
        self.pending.append(x)
        self.geoms += [geom] * x.shape[0]
        if len(self.geoms) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        from operators.output_decoding import select_outputs

        x = torch.cat(self.pending)
        out = self.model(x)
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        ordered = select_outputs({f"output{i}": o for i, o in enumerate(outs)}, self.layout)  # type: ignore[arg-type]
        dets = postprocess(ordered, self.layout, self.geoms, self.params, self.names)  # type: ignore[arg-type]
        self.frames += len(dets)
        self.detections += sum(len(d) for d in dets if d is not None)
        self.pending, self.geoms = [], []


def _eager(model: nn.Module, device: str, dtype: torch.dtype) -> nn.Module:
    from engines.torch_engine import eval_mode

    return eval_mode(copy.deepcopy(model).to(device=device, dtype=dtype))


def _result(name: str, codec: str | None, run: _Runner, secs: float, sampler: UtilSampler,
            extra: dict[str, Any]) -> Measurement:
    extra = {**extra, "batch": run.batch,
             "detections_per_frame": round(run.detections / run.frames, 2) if run.frames else 0.0}
    return Measurement(name, codec, fps=run.frames / secs if secs > 0 else 0.0, frames=run.frames, seconds=secs,
                       util=sampler.stats(), extra=extra)


def measure_pyav(
    files: Sequence[Path],
    model: nn.Module,
    layout: str,
    device: str,
    precision: str,
    batch: int,
    seconds: float,
    input_size: tuple[int, int],
    params: PostprocessConfig | None = None,
    class_names: Sequence[str] = (),
    codec: str | None = None,
) -> Measurement:
    """PyAV CPU decode + eager torch in ``precision`` (``fp32``/``fp16``); see the module docstring."""
    import av

    dtype = torch.float16 if precision == "fp16" else torch.float32
    h, w = input_size
    run = _Runner(_eager(model, device, dtype), layout, batch, params or PostprocessConfig(), class_names)
    done = False
    with UtilSampler(device) as sampler, torch.inference_mode():
        t0 = time.perf_counter()
        for path in files:
            with av.open(str(path)) as c:
                stream = c.streams.video[0]
                stream.thread_type = "AUTO"
                geom = letterbox_geometry(stream.codec_context.width, stream.codec_context.height, w, h)
                for frame in c.decode(stream):
                    rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).to(device)
                    run.add(letterbox(rgb.permute(2, 0, 1)[None].to(dtype).div_(255), geom), geom)
                    if not run.pending and time.perf_counter() - t0 >= seconds:
                        done = True
                        break
            if done:
                break
        run.flush()
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        secs = time.perf_counter() - t0
    return _result(f"pyav_{precision}", codec, run, secs, sampler,
                   {"precision": precision, "decode": "PyAV (FFmpeg) CPU, thread_type AUTO",
                    "stopped_at_budget": done})


def measure_dali_legacy(
    files: Sequence[Path],
    model: nn.Module,
    layout: str,
    device: str,
    batch: int,
    seconds: float,
    input_size: tuple[int, int],
    params: PostprocessConfig | None = None,
    class_names: Sequence[str] = (),
    codec: str | None = None,
    sequence_length: int = 16,
) -> Measurement:
    """DALI's legacy GPU reader + eager torch FP16 (DLPack hand-over); see the module docstring."""
    from nvidia.dali import fn, pipeline_def

    device_id = int(device.split(":")[1]) if ":" in device else 0
    sequences = max(1, batch // sequence_length)

    @pipeline_def(batch_size=sequences, num_threads=2, device_id=device_id)
    def graph() -> Any:
        return fn.readers.video(device="gpu", filenames=[str(f) for f in files], sequence_length=sequence_length,
                                random_shuffle=False, skip_vfr_check=True, name="reader")

    h, w = input_size
    run = _Runner(_eager(model, device, torch.float16), layout, sequences * sequence_length,
                  params or PostprocessConfig(), class_names)
    done = False
    with UtilSampler(device) as sampler, torch.inference_mode():
        pipe = graph()
        pipe.build()
        t0 = time.perf_counter()  # after the build (it indexes the files): the baseline's best case
        iterations = math.ceil(int(pipe.epoch_size("reader")) / sequences)  # one pass: no wrapping
        stream = torch.cuda.current_stream(device)
        for _ in range(iterations):
            out = pipe.run(stream.cuda_stream)[0]  # frames (no labels without file_list/labels)
            for i in range(len(out)):
                seq = torch.from_dlpack(out[i])  # [F, H, W, 3] uint8 on the GPU
                geom = letterbox_geometry(int(seq.shape[2]), int(seq.shape[1]), w, h)
                run.add(letterbox(seq.permute(0, 3, 1, 2).half().div_(255), geom), geom)
            if time.perf_counter() - t0 >= seconds:
                done = True
                break
        run.flush()
        torch.cuda.synchronize(device)
        secs = time.perf_counter() - t0
        del pipe
    return _result("dali_legacy", codec, run, secs, sampler,
                   {"precision": "fp16", "sequence_length": sequence_length, "sequences_per_batch": sequences,
                    "stopped_at_budget": done})
