"""The preprocessing graph, shared by every decode path: DALI ops on the decode device.

Frames (``FHWC`` uint8 sequences, RGB) are resized to the letterbox geometry computed by
:func:`operators.boxes.letterbox_geometry`, padded to the model input with an exact
integer offset (``fn.slice`` with a negative start), normalised, cast and laid out in one
``crop_mirror_normalize``. The mapping back to source pixels uses the same geometry, so
boxes round-trip exactly.

The canvas: the model input's ``(h, w)``, or, for a dynamic-shape export
(:func:`engines.model_info.rect_canvas_stride`), the smallest stride-aligned rectangle within
it around the letterboxed frame (:func:`canvas_geometry`), as Ultralytics runs such a model.
A geometry carries its canvas, so the graphs below need nothing else; frames of one size get
one canvas, so one file's batches keep one shape.

The resize filter (``preprocess.resize_filter``): DALI's bilinear ``fn.resize`` (``dali``),
or OpenCV's ``cv2.resize(INTER_LINEAR)`` reproduced bit for bit
(:func:`operators.resize.resize_bilinear_opencv`, ``opencv``), which the frameworks that
letterbox with OpenCV (Ultralytics) trained and exported their models with: a float bilinear
differs from it by one grey level in about one pixel in ten, and a network can turn that
into boxes a few pixels apart. With ``opencv`` the DALI graph hands out the decoded frames
(:func:`preprocess` returns them as they are) and :func:`finish_preprocess` letterboxes them
in torch on the batch's device and CUDA stream (:func:`letterbox_frames`). ``auto`` becomes
one or the other for the model (:func:`resolve_resize_filter`); unresolved, it is ``dali``.

Usage (inside a ``pipeline_def``)::

    geom = letterbox_geometry(1920, 1080, 640, 640)
    x = preprocess(frames, geom, PreprocessSpec(dtype="float16", layout="NCHW"))
    # after pipe.outputs(stream): the model input (unchanged with the dali filter)
    images = finish_preprocess(outs[0], geom, spec, stream)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from engines.model_info import ModelInfo
from operators.boxes import LetterboxGeometry, ResizeMode, letterbox_geometry
from operators.letterbox import canvas_hw
from operators.resize import resize_bilinear_opencv
from streams.config import PreprocessConfig
from streams.errors import ShapeError

log = logging.getLogger(__name__)
_noted: set[str] = set()


@dataclass(frozen=True)
class PreprocessSpec:
    """What the engine wants: dtype, memory layout and the user's preprocessing options."""

    dtype: Literal["float16", "float32"] = "float32"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    options: PreprocessConfig = field(default_factory=PreprocessConfig)
    # also return the decoded full-size frames (``DecodedBatch.source_frames``), for the
    # stages that need source pixels (the crops of :mod:`pipelines.cascade`)
    keep_source: bool = False


def preprocess(frames: Any, geom: LetterboxGeometry, spec: PreprocessSpec) -> Any:
    """DALI graph: ``FHWC uint8`` frames → model input sequence (``FCHW`` or ``FHWC``).

    Must be called inside a DALI pipeline definition; ``frames`` is a DataNode on the
    CPU or GPU and the ops run on the same device.
    """
    from nvidia.dali import fn, types

    opts = spec.options
    if opts.resize_filter == "opencv":
        return frames  # letterboxed by finish_preprocess, in torch
    x = frames
    if (geom.resized_w, geom.resized_h) != (geom.src_w, geom.src_h):
        x = fn.resize(
            x,
            resize_x=float(geom.resized_w),
            resize_y=float(geom.resized_h),
            interp_type=types.INTERP_LINEAR,
            antialias=False,
        )
    if (geom.resized_w, geom.resized_h) != (geom.dst_w, geom.dst_h):
        x = fn.slice(
            x,
            start=[-geom.pad_y, -geom.pad_x],
            shape=[geom.dst_h, geom.dst_w],
            axis_names="HW",
            out_of_bounds_policy="pad",
            fill_values=float(opts.pad_value),
        )
    return _normalize(x, spec, sequence=True)


def preprocess_per_sample(
    frames: Any, resize_w: Any, resize_h: Any, start: Any, dst: tuple[int, int] | Any,
    spec: PreprocessSpec, sequence: bool,
) -> Any:
    """Like :func:`preprocess`, with a geometry per sample given as DALI inputs.

    For batches mixing sources of different sizes (live streams): ``resize_w`` and
    ``resize_h`` are float scalars per sample (``LetterboxGeometry.resized_w/h``) and
    ``start`` is ``int32 [-pad_y, -pad_x]`` per sample; ``dst`` is the model input ``(h, w)``,
    or a DALI input of ``int32 [h, w]`` per sample (a canvas per frame shape).
    ``frames`` are ``HWC`` images, or ``FHWC`` sequences when ``sequence`` is true.
    """
    from nvidia.dali import fn, types

    if spec.options.resize_filter == "opencv" and "per_sample" not in _noted:
        _noted.add("per_sample")
        log.warning("preprocess.resize_filter: opencv is not available where frames of several sources share a "
                    "batch (live streams): they are resized with DALI's bilinear filter, whose pixels differ from "
                    "OpenCV's by a grey level in some places; boxes may differ slightly from the framework's")
    x = fn.resize(frames, resize_x=resize_w, resize_y=resize_h,
                  interp_type=types.INTERP_LINEAR, antialias=False)
    shape = [dst[0], dst[1]] if isinstance(dst, tuple) else dst  # a DataNode: a canvas per sample
    x = fn.slice(x, start=start, shape=shape, axis_names="HW",
                 out_of_bounds_policy="pad", fill_values=float(spec.options.pad_value))
    return _normalize(x, spec, sequence)


def canvas_geometry(src_w: int, src_h: int, size: tuple[int, int], resize: ResizeMode = "letterbox",
                    stride: int | None = None) -> LetterboxGeometry:
    """Where a ``src_w x src_h`` frame goes in the model input of ``size`` ``(h, w)``: resized
    (``resize``) onto the whole ``size`` canvas, or, with ``stride`` and ``letterbox``, onto the
    smallest ``stride``-aligned rectangle within it that holds the letterboxed frame
    (:func:`operators.letterbox.canvas_hw`, as Ultralytics runs a dynamic-shape export; a
    768x432 frame at 320x320 gets a 320x192 canvas). Frames of one size share one canvas, so
    a batch of one file's frames is one tensor."""
    h, w = size
    if stride is not None and resize == "letterbox":
        h, w = canvas_hw(src_w, src_h, size, stride, rect=True)
    return letterbox_geometry(src_w, src_h, w, h, resize)


def resolve_resize_filter(options: PreprocessConfig, info: ModelInfo) -> PreprocessConfig:
    """``options`` with ``resize_filter: auto`` made concrete for the model ``info`` describes:
    ``opencv`` for an Ultralytics export (its metadata names the model's head, which only
    Ultralytics writes: it letterboxes with ``cv2.resize``), else ``dali`` (Fovea's bundled
    models, other exports). An explicit ``opencv`` or ``dali`` is kept."""
    if options.resize_filter != "auto":
        return options
    chosen: Literal["opencv", "dali"] = "opencv" if info.head is not None else "dali"
    if chosen == "opencv":
        log.info("%s: an Ultralytics export: frames are resized with OpenCV's bilinear filter, as Ultralytics "
                 "does (preprocess.resize_filter: auto)", info.source)
    return replace(options, resize_filter=chosen)


def finish_preprocess(images: Any, geom: LetterboxGeometry, spec: PreprocessSpec, stream: int | None) -> Any:
    """The model input of a batch whose DALI graph ran :func:`preprocess`: ``images`` itself
    with the ``dali`` filter; with ``opencv``, the decoded frames ``images`` (a DALI
    TensorList of one ``FHWC`` sequence, or a ``uint8 [F, H, W, C]`` tensor) letterboxed by
    :func:`letterbox_frames` on their device, on the raw CUDA ``stream`` they are ordered on
    (a ``[F, C, h, w]`` or ``[F, h, w, C]`` tensor, as ``spec.layout`` says). Keep ``images``
    alive as long as the result is in use."""
    if spec.options.resize_filter != "opencv":
        return images
    if isinstance(images, torch.Tensor):
        device = images.device
    elif type(images).__name__.endswith("GPU"):  # DALI's TensorListGPU
        device = torch.device("cuda", images.device_id())
    else:
        device = torch.device("cpu")
    with _on_stream(stream, device):
        frames = _frames_tensor(images)
        return letterbox_frames(frames, geom, spec)


def letterbox_frames(frames: torch.Tensor, geom: LetterboxGeometry, spec: PreprocessSpec) -> torch.Tensor:
    """One source's ``uint8 [N, H, W, 3]`` RGB frames → the model input, as :func:`preprocess`
    makes it but resized with OpenCV's filter (:func:`operators.resize.resize_bilinear_opencv`):
    resized to ``geom``, padded with ``pad_value`` around it, channels reordered, normalised
    (``(x - mean) / std``), cast to ``spec.dtype`` and laid out as ``spec.layout``
    (``[N, 3, h, w]`` or ``[N, h, w, 3]``, contiguous). Runs on the frames' device and the
    current stream."""
    n, src_h, src_w, c = (int(v) for v in frames.shape)
    if (src_w, src_h) != (geom.src_w, geom.src_h):
        raise ShapeError(f"letterbox_frames: frames of {src_w}x{src_h}, but the geometry is for "
                         f"{geom.src_w}x{geom.src_h}")
    opts = spec.options
    size = (geom.resized_h, geom.resized_w)
    img = frames if size == (src_h, src_w) else resize_bilinear_opencv(frames, size)
    if size != (geom.dst_h, geom.dst_w):
        canvas = torch.full((n, geom.dst_h, geom.dst_w, c), opts.pad_value, dtype=torch.uint8, device=frames.device)
        canvas[:, geom.pad_y:geom.pad_y + size[0], geom.pad_x:geom.pad_x + size[1]] = img
        img = canvas
    if opts.channel_order == "bgr":
        img = img.flip(3)
    x = img.to(torch.float32)
    if len(set(opts.mean)) == 1 and len(set(opts.std)) == 1:  # one value for every channel (the default)
        if opts.mean[0]:
            x.sub_(opts.mean[0])
        x.div_(opts.std[0])  # divided, as Ultralytics does (x / 255)
    else:
        for k in range(c):
            x[..., k].sub_(opts.mean[k]).div_(opts.std[k])
    dtype = torch.float16 if spec.dtype == "float16" else torch.float32
    if spec.layout == "NHWC":
        return x.to(dtype)
    out = torch.empty((n, c, geom.dst_h, geom.dst_w), dtype=dtype, device=frames.device)
    out.copy_(x.permute(0, 3, 1, 2))
    return out


def _frames_tensor(images: Any) -> torch.Tensor:
    """``uint8 [F, H, W, C]`` view of a DALI TensorList holding one ``FHWC`` sequence (or of a
    tensor/array already so)."""
    if isinstance(images, torch.Tensor):
        t = images
    elif isinstance(images, np.ndarray):
        t = torch.from_numpy(images)
    else:
        dense = images.as_tensor()
        t = torch.from_dlpack(dense) if type(images).__name__.endswith("GPU") else torch.from_numpy(np.asarray(dense))
    if t.dim() == 5:  # [samples, frames, H, W, C]
        t = t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])
    if t.dim() != 4 or t.dtype != torch.uint8:
        raise ShapeError(f"expected decoded uint8 frames [F, H, W, C], got {t.dtype} {tuple(t.shape)}")
    return t


@contextlib.contextmanager
def _on_stream(stream: int | None, device: torch.device) -> Iterator[None]:
    """The raw CUDA ``stream`` of ``device`` as torch's current stream (nothing for the CPU)."""
    if stream is None or device.type != "cuda":
        yield
        return
    with torch.cuda.device(device), torch.cuda.stream(torch.cuda.ExternalStream(stream, device=device)):
        yield


def per_sample_inputs(geoms: Sequence[LetterboxGeometry]) -> dict[str, list[Any]]:
    """The ``rw``/``rh``/``start`` inputs of :func:`preprocess_per_sample` for ``geoms``."""
    return {
        "rw": [np.float32(g.resized_w) for g in geoms],
        "rh": [np.float32(g.resized_h) for g in geoms],
        "start": [np.array([-g.pad_y, -g.pad_x], np.int32) for g in geoms],
    }


class HostPreprocessor:
    """The preprocessing graph on DALI's CPU operators, for RGB frames already on the host.

    For frames that do not come out of a decode pipeline (INT8 calibration samples,
    benchmark samples, the parity tests against the exporting framework): they go through
    the very same DALI ops as the pipeline's frames, with a letterbox geometry per frame, so
    they match what the engine sees in a job.

    With ``options.resize_filter: opencv``, the frames are letterboxed in torch on the CPU
    (:func:`letterbox_frames`: OpenCV's pixels) instead of by DALI's CPU operators.

    With ``stride`` (a dynamic-shape export), each frame is letterboxed into the smallest
    canvas whose sides are multiples of ``stride`` around its resized frame, as Ultralytics
    runs such a model (:func:`operators.letterbox.canvas_hw`): frames of one shape share a
    canvas, so a batch of one source's frames stays one array.

    Usage::

        pre = HostPreprocessor((640, 640), PreprocessConfig())
        x = pre([frame_a, frame_b])        # float32 [2, 3, 640, 640]
        rect = HostPreprocessor((320, 320), PreprocessConfig(), stride=32)
        rect.geometry(768, 432)            # a 320x192 canvas
        x = rect([frame_768x432])          # float32 [1, 3, 192, 320]
    """

    def __init__(self, size: tuple[int, int], options: PreprocessConfig, max_batch: int = 8,
                 stride: int | None = None) -> None:
        self.size = size
        self.spec = PreprocessSpec(dtype="float32", layout="NCHW", options=options)
        self.max_batch = max_batch
        self.stride = stride
        self._pipe: Any = None

    def geometry(self, src_w: int, src_h: int) -> LetterboxGeometry:
        """Where a ``src_w x src_h`` frame goes: the model input, or its rectangle with ``stride``."""
        return canvas_geometry(src_w, src_h, self.size, self.spec.options.resize, self.stride)

    def _build(self) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=self.max_batch, num_threads=1, device_id=None, prefetch_queue_depth=1)
        def graph() -> Any:
            frames = fn.external_source(name="data", dtype=types.UINT8, ndim=3, layout="HWC")
            rw = fn.external_source(name="rw", dtype=types.FLOAT)
            rh = fn.external_source(name="rh", dtype=types.FLOAT)
            start = fn.external_source(name="start", dtype=types.INT32)
            shape = fn.external_source(name="shape", dtype=types.INT32)
            return preprocess_per_sample(frames, rw, rh, start, shape, self.spec, sequence=False)

        pipe = graph()
        pipe.build()
        return pipe

    def __call__(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """``uint8 [H, W, 3]`` RGB frames (any sizes; with ``stride``, of one canvas) →
        ``float32 [N, 3, h, w]``."""
        geoms = [self.geometry(f.shape[1], f.shape[0]) for f in frames]
        canvases = {(g.dst_h, g.dst_w) for g in geoms}
        if len(canvases) > 1:
            raise ShapeError(f"HostPreprocessor: frames of {len(canvases)} canvases {sorted(canvases)} in one call; "
                             "with stride, give frames of one shape (one source) at a time")
        h, w = canvases.pop() if canvases else self.size
        if self.spec.options.resize_filter == "opencv":
            return self._exact(frames, geoms, (h, w))
        if self._pipe is None:
            self._pipe = self._build()
        out: list[np.ndarray] = []
        for i in range(0, len(frames), self.max_batch):
            chunk = [np.ascontiguousarray(f) for f in frames[i:i + self.max_batch]]
            part = geoms[i:i + self.max_batch]
            shapes = [np.array([g.dst_h, g.dst_w], np.int32) for g in part]
            (res,) = self._pipe.run(data=chunk, shape=shapes, **per_sample_inputs(part))
            out.append(np.array(res.as_tensor()))
        return np.concatenate(out) if out else np.zeros((0, 3, h, w), np.float32)

    def _exact(self, frames: Sequence[np.ndarray], geoms: list[LetterboxGeometry], hw: tuple[int, int]
               ) -> np.ndarray:
        """The ``opencv`` filter: :func:`letterbox_frames` in torch on the CPU, a run of frames
        of one size at a time."""
        out: list[torch.Tensor] = []
        i = 0
        while i < len(frames):
            j = i + 1
            while j < len(frames) and j - i < self.max_batch and frames[j].shape == frames[i].shape:
                j += 1
            batch = torch.from_numpy(np.stack([np.ascontiguousarray(f) for f in frames[i:j]]))
            out.append(letterbox_frames(batch, geoms[i], self.spec))
            i = j
        return torch.cat(out).numpy() if out else np.zeros((0, 3, *hw), np.float32)


def _normalize(x: Any, spec: PreprocessSpec, sequence: bool) -> Any:
    from nvidia.dali import fn, types

    opts = spec.options
    if opts.channel_order == "bgr":
        x = fn.color_space_conversion(x, image_type=types.RGB, output_type=types.BGR)
    layout = "CHW" if spec.layout == "NCHW" else "HWC"
    return fn.crop_mirror_normalize(
        x,
        mean=list(opts.mean),
        std=list(opts.std),
        dtype=types.FLOAT16 if spec.dtype == "float16" else types.FLOAT,
        output_layout=("F" + layout) if sequence else layout,
    )
