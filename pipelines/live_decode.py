"""DALI graphs for live batches: frames or GOP buffers from many streams → model input.

Two modes, matching :class:`streams.live.manager.StreamManager`'s output:

``frames`` (CPU decode)
    PyAV decoded each stream's frames to RGB on the CPU; a batch holds frames of several
    streams (different sizes). ``fn.external_source`` feeds them with a letterbox
    geometry per sample; preprocessing runs on the GPU when there is one.

``packets`` (GPU decode, the default on a GPU)
    Each item is a frame an NVDEC session of its stream decoded (:mod:`pipelines.nvdec`),
    already scaled to its letterbox size in NV12; :func:`operators.color.nv12_letterbox`
    makes the batch's model input in torch (colour conversion, padding, normalisation).

    With a cascade (``PreprocessSpec.keep_source``) the sessions decode at full size
    instead: :func:`operators.color.nv12_resize` scales the batch's frames to their
    letterbox size on the batch's stream first, and each row's full-size frame rides along
    as an :class:`Nv12SourceFrame` (``DecodedBatch.source_frames``), converted to RGB only
    if the cascade crops from it. It lives as long as the batch: its buffer (an ingest ring
    slot, or NVDEC's copy) is let go with the batch's items.

``gop`` (GPU decode with DALI, for comparison)
    Each item is one self-contained GOP (Annex-B, SPS/PPS in band) of one stream.
    ``fn.decoders.video(device="mixed")`` decodes the samples of a batch in parallel on
    NVDEC, as sequences padded to a common length ``S`` (``pad_mode="constant"``), so the
    batch is one ``[B, S, C, H, W]`` tensor: one engine call for many cameras, read in
    place. ``S`` is the batch's longest GOP rounded up to a multiple of 8; one pipeline is
    kept per ``S`` seen. Rows past a GOP's frame count are padding rows.

Latency: a GOP is decodable once its last packet arrived, so a frame waits for the rest of
its GOP: at most one keyframe interval plus batching (``live.batch.max_wait_ms``) and
processing. docs/live.md has the measurements.

Usage::

    pipe = LiveBatchPipeline("gop", spec, (640, 640), max_batch=16, device_id=0, stream=h)
    batch = pipe.run(items)            # DecodedBatch with one geometry per row
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from operators.boxes import LetterboxGeometry, letterbox_geometry
from pipelines.preprocess import PreprocessSpec, per_sample_inputs, preprocess_per_sample
from pipelines.video_decoding import DecodedBatch
from streams.errors import DecodeError
from streams.frames import FrameMeta

log = logging.getLogger(__name__)

Mode = Literal["frames", "gop", "packets"]


class Nv12SourceFrame:
    """One row's full-size decoded frame, kept in NVDEC's NV12 and converted to RGB only when
    a crop is cut from it (:class:`pipelines.cascade.RgbFrame`): most rows of a live batch
    have nothing to crop (no chosen detection), and RGB is twice the bytes of NV12.

    ``nv12`` is ``uint8[h * 3 // 2, w]`` on any device (a view of the decoder's buffer:
    valid as long as the batch that holds it); ``standard`` is 601 or 709.
    """

    __slots__ = ("nv12", "standard")

    def __init__(self, nv12: Any, standard: int) -> None:
        self.nv12 = nv12
        self.standard = standard

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(h, w, 3)``: the shape :meth:`rgb` gives."""
        return int(self.nv12.shape[0]) * 2 // 3, int(self.nv12.shape[1]), 3

    def rgb(self) -> Any:
        """``uint8[h, w, 3]`` RGB on the frame's device (a new tensor, made on the current stream)."""
        from operators.color import nv12_to_rgb

        return nv12_to_rgb(self.nv12, self.standard)


def _surfaces_to_input(items: Sequence[Any], spec: PreprocessSpec, size: tuple[int, int],
                       stream: int | None) -> tuple[Any, list[LetterboxGeometry], list[Nv12SourceFrame] | None]:
    """NVDEC surfaces of ``items`` -> model input, in torch; with ``spec.keep_source`` the
    surfaces are full-size frames, scaled here first and also returned as source frames."""
    import torch

    from engines.inplace import on_stream
    from operators.boxes import even_letterbox_geometry
    from operators.color import nv12_letterbox, nv12_resize, standard_of

    h, w = size
    opts = spec.options
    geoms = [even_letterbox_geometry(it.meta.width, it.meta.height, w, h, opts.resize) for it in items]
    standards = [standard_of(it.image.matrix) for it in items]
    frames = [it.image.nv12 for it in items]
    full: list[Nv12SourceFrame] | None = None
    with on_stream(stream):
        if spec.keep_source:
            for it, f in zip(items, frames, strict=True):
                m = it.meta
                if tuple(f.shape) != ((m.height - m.height % 2) * 3 // 2, m.width - m.width % 2):
                    raise DecodeError(m.source_id, f"expected a full-size NV12 frame of {m.width}x{m.height} for "
                                                   f"the cascade's crops, got shape {tuple(f.shape)}")
            full = [Nv12SourceFrame(f, s) for f, s in zip(frames, standards, strict=True)]
            frames = nv12_resize(frames, [(g.resized_h, g.resized_w) for g in geoms])
        x = nv12_letterbox(frames, geoms, size, opts.mean, opts.std, opts.pad_value,
                           torch.float16 if spec.dtype == "float16" else torch.float32,
                           channels_last=spec.layout == "NHWC", standards=standards,
                           bgr=opts.channel_order == "bgr")
    return (x.permute(0, 2, 3, 1) if spec.layout == "NHWC" else x), geoms, full


def _round_up(n: int, k: int = 8) -> int:
    return max(k, (n + k - 1) // k * k)


class LiveBatchPipeline:
    """One worker's DALI graph(s) for live batches; see the module docstring."""

    def __init__(
        self,
        mode: Mode,
        spec: PreprocessSpec,
        input_size: tuple[int, int],
        max_batch: int,
        device_id: int | None,
        stream: int | None = None,
        num_threads: int = 2,
    ) -> None:
        if mode in ("gop", "packets") and device_id is None:
            raise ValueError(f"{mode} decoding needs a GPU (device_id)")
        self.mode = mode
        self.spec = spec
        self.input_size = input_size
        self.max_batch = max_batch
        self.device_id = device_id
        self.stream = stream
        self.num_threads = num_threads
        self._pipes: dict[int, Any] = {}

    def _build(self, seq_len: int) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        mode, dst, on_gpu = self.mode, self.input_size, self.device_id is not None

        @pipeline_def(batch_size=self.max_batch, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=1, exec_dynamic=True)
        def graph() -> Any:
            rw = fn.external_source(name="rw", dtype=types.FLOAT)
            rh = fn.external_source(name="rh", dtype=types.FLOAT)
            start = fn.external_source(name="start", dtype=types.INT32)
            if mode == "gop":
                data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
                frames = fn.decoders.video(data, device="mixed", sequence_length=seq_len,
                                           pad_mode="constant")
            else:
                frames = fn.external_source(name="data", dtype=types.UINT8, ndim=3, layout="HWC")
                if on_gpu:
                    frames = frames.gpu()
            return preprocess_per_sample(frames, rw, rh, start, dst, self.spec, sequence=mode == "gop")

        pipe = graph()
        pipe.build()
        log.info("live %s pipeline built (batch %d%s)", mode, self.max_batch,
                 f", sequences of {seq_len}" if mode == "gop" else "")
        return pipe

    def _pipe(self, seq_len: int) -> Any:
        pipe = self._pipes.get(seq_len)
        if pipe is None:
            pipe = self._pipes[seq_len] = self._build(seq_len)
        return pipe

    def run(self, items: Sequence[Any]) -> DecodedBatch:
        """Decode (GOP mode) and preprocess ``items`` (``LiveFrame`` or ``GopBuffer``)."""
        if not items:
            raise ValueError("empty batch")
        if len(items) > self.max_batch:
            raise ValueError(f"batch of {len(items)} exceeds max_batch {self.max_batch}")
        if self.mode == "packets":
            return self._run_surfaces(items)
        h, w = self.input_size
        geoms: list[LetterboxGeometry] = []
        data: list[np.ndarray] = []
        for it in items:
            meta: FrameMeta = it.metas[0]
            g = letterbox_geometry(meta.width, meta.height, w, h, self.spec.options.resize)
            geoms.append(g)
            data.append(np.frombuffer(it.data, np.uint8) if self.mode == "gop" else it.image)
        inputs = {"data": data, **per_sample_inputs(geoms)}
        seq_len = _round_up(max(len(it.metas) for it in items)) if self.mode == "gop" else 1
        pipe = self._pipe(seq_len)
        try:
            (out,) = pipe.run(self.stream, **inputs) if self.stream is not None else pipe.run(**inputs)
        except RuntimeError as e:
            # a broken GOP invalidates the pipeline: rebuild next time, report the streams
            self._pipes.pop(seq_len, None)
            ids = sorted({it.source_id for it in items})
            raise DecodeError(",".join(ids), f"live batch decode failed: {str(e).strip()[:300]}") from e
        rows: list[FrameMeta | None] = []
        row_geoms: list[LetterboxGeometry | None] = []
        for it, g in zip(items, geoms, strict=True):
            metas = list(it.metas)[:seq_len]
            pad = seq_len - len(metas)
            rows += metas + [None] * pad
            row_geoms += [g] * len(metas) + [None] * pad
        full = [it.image for it in items] if self.spec.keep_source and self.mode == "frames" else None
        return DecodedBatch(out, self.spec.layout, rows, None, self.stream, None, [items],
                            row_geometries=row_geoms, source_frames=full)

    def _run_surfaces(self, items: Sequence[Any]) -> DecodedBatch:
        images, geoms, full = _surfaces_to_input(items, self.spec, self.input_size, self.stream)
        rows: list[FrameMeta | None] = [it.meta for it in items]
        return DecodedBatch(images, self.spec.layout, rows, None, self.stream, None, [items],
                            row_geometries=list(geoms), source_frames=full)
