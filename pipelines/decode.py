"""Per-file decode + preprocess pipelines, yielding device-resident frame batches.

Three decoders share the preprocessing graph of :mod:`pipelines.preprocess`:

============  =====================================================  ==============
decoder       decodes with                                           used for
============  =====================================================  ==============
``dali-gpu``  ``fn.experimental.readers.video(device="gpu")``, NVDEC  GPU, any codec NVDEC takes
``dali-cpu``  ``fn.experimental.readers.video(device="cpu")``         CPU, VP8/VP9/MJPEG
``pyav``      PyAV (FFmpeg) → ``fn.external_source``                  CPU H.264/HEVC/...; GPU for codecs NVDEC lacks
============  =====================================================  ==============

Each decoder owns one DALI pipeline for one file (one sequence at a time: one NVDEC
session). The experimental reader decodes sequentially (no re-seek per sequence) and is
run with ``pad_mode="constant"`` so tail frames are not dropped; padded frames carry
frame number ``-1`` and become padding rows. Frame numbers map to pts through the PyAV
probe (DALI reports seconds relative to the first frame, not stream pts).

Usage::

    info = probe_video(path)
    with make_decoder(VideoFile(path, "a"), info, spec, geometry, batch=16, device="cpu") as dec:
        for batch in dec:            # DecodedBatch
            ...
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import numpy as np

from operators.boxes import LetterboxGeometry
from pipelines.preprocess import PreprocessSpec, preprocess
from streams.errors import DecodeError, SourceError
from streams.files import VideoFile
from streams.frames import FrameMeta
from streams.probe import DALI_CPU_CODECS, DALI_GPU_CODECS, VideoInfo

log = logging.getLogger(__name__)

DecoderKind = Literal["dali-gpu", "dali-cpu", "pyav"]


@dataclass
class DecodedBatch:
    """One preprocessed batch of frames from one file, still in DALI's buffer.

    Attributes:
        images: DALI ``TensorListGPU``/``TensorListCPU`` with one sample ``[F, C, H, W]``
            (layout ``FCHW``) or ``[F, H, W, C]`` (``FHWC``).
        layout: ``"NCHW"`` or ``"NHWC"``: how ``images`` maps onto a batch of frames.
        rows: one entry per frame of the sample: its metadata, or ``None`` for padding.
        geometry: the letterbox geometry of every valid row (one file: one geometry).
        stream: raw CUDA stream the GPU outputs are ordered on (``None`` on the CPU).
        source: the file the frames come from (``None`` for live batches).
        row_geometries: per-row geometry for batches mixing sources (live); overrides
            ``geometry`` when set.
    """

    images: Any
    layout: Literal["NCHW", "NHWC"]
    rows: list[FrameMeta | None]
    geometry: LetterboxGeometry | None
    stream: int | None
    source: VideoFile | None
    keepalive: list[Any] = field(default_factory=list)
    row_geometries: list[LetterboxGeometry | None] | None = None

    @property
    def num_valid(self) -> int:
        return sum(r is not None for r in self.rows)

    def geometries(self) -> list[LetterboxGeometry | None]:
        """The letterbox geometry of each row (``None`` for padding rows)."""
        if self.row_geometries is not None:
            return self.row_geometries
        return [self.geometry if r is not None else None for r in self.rows]


def choose_decoder(info: VideoInfo, device: Literal["cpu", "gpu"]) -> DecoderKind:
    """The decoder for a file's codec on the given device (logged when it is a fallback)."""
    if device == "gpu":
        if info.codec in DALI_GPU_CODECS:
            return "dali-gpu"
        log.warning(
            "%s: codec %r is not decoded by NVDEC through DALI; decoding it with PyAV on the "
            "CPU and preprocessing on the GPU", info.path, info.codec,
        )
        return "pyav"
    return "dali-cpu" if info.codec in DALI_CPU_CODECS else "pyav"


class FileDecoder:
    """Decode and preprocess one file in batches of ``batch`` frames. Iterate for batches."""

    def __init__(
        self,
        file: VideoFile,
        info: VideoInfo,
        spec: PreprocessSpec,
        geometry: LetterboxGeometry,
        batch: int,
        kind: DecoderKind,
        device_id: int | None = None,
        stream: int | None = None,
        num_threads: int = 2,
    ) -> None:
        if kind == "dali-gpu" and device_id is None:
            raise ValueError("the dali-gpu decoder needs a device_id")
        self.file = file
        self.info = info
        self.spec = spec
        self.geometry = geometry
        self.batch = batch
        self.kind = kind
        self.device_id = device_id
        self.stream = stream
        self.num_threads = num_threads
        self.frames_decoded = 0
        self._pipe: Any = None
        self._container: Any = None

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> FileDecoder:
        try:
            self._pipe = self._build()
        except RuntimeError as e:  # DALI raises RuntimeError for unreadable input at build
            raise SourceError(str(self.file.path), f"DALI cannot open it: {_first_line(e)}") from e
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pipe = None  # releases DALI's buffers and decoder
        if self._container is not None:
            self._container.close()
            self._container = None

    def _build(self) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        on_gpu = self.device_id is not None
        kind = self.kind

        @pipeline_def(
            batch_size=1,
            num_threads=self.num_threads,
            device_id=self.device_id,
            prefetch_queue_depth=2 if kind != "pyav" else 1,
            exec_dynamic=True,
        )
        def graph() -> Any:
            if kind == "pyav":
                frames = fn.external_source(name="frames", layout="FHWC", dtype=types.UINT8)
                if on_gpu:
                    frames = frames.gpu()
                fnum = None
            else:
                frames, fnum = fn.experimental.readers.video(
                    device="gpu" if kind == "dali-gpu" else "cpu",
                    filenames=[str(self.file.path)],
                    sequence_length=self.batch,
                    pad_mode="constant",
                    enable_frame_num="sequence",
                    name="reader",
                )
            if on_gpu and kind != "dali-gpu" and kind != "pyav":
                frames = frames.gpu()  # CPU decode, GPU preprocessing
            out = preprocess(frames, self.geometry, self.spec)
            return (out,) if fnum is None else (out, fnum)

        pipe = graph()
        pipe.build()
        return pipe

    # -- iteration ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[DecodedBatch]:
        if self._pipe is None:
            raise RuntimeError("use FileDecoder inside 'with'")
        if self.kind == "pyav":
            yield from self._iter_pyav()
        else:
            yield from self._iter_reader()

    def _meta(self, index: int, pts: int | None) -> FrameMeta:
        return FrameMeta(
            source_id=self.file.source_id,
            uri=str(self.file.path),
            frame_index=index,
            pts=pts,
            time_base=self.info.time_base,
            width=self.info.width,
            height=self.info.height,
        )

    def _iter_reader(self) -> Iterator[DecodedBatch]:
        pipe = self._pipe
        sequences = int(pipe.epoch_size("reader"))
        pts = self.info.pts
        for _ in range(sequences):  # bounded by the epoch: the reader wraps afterwards
            try:
                images, fnum = pipe.run(self.stream) if self.stream is not None else pipe.run()
            except RuntimeError as e:
                raise DecodeError(
                    str(self.file.path),
                    f"decoding failed after {self.frames_decoded} frames: {_first_line(e)}",
                ) from e
            numbers = np.asarray(fnum.as_cpu()[0] if hasattr(fnum, "as_cpu") else fnum[0]).reshape(-1)
            rows: list[FrameMeta | None] = []
            for n in numbers.tolist():
                if n < 0:
                    rows.append(None)
                elif n >= len(pts):
                    log.warning("%s: DALI decoded frame %d beyond the %d frames PyAV demuxed",
                                self.file.path, n, len(pts))
                    rows.append(self._meta(int(n), None))
                else:
                    rows.append(self._meta(int(n), pts[int(n)]))
            self.frames_decoded += sum(r is not None for r in rows)
            yield DecodedBatch(images, self.spec.layout, rows, self.geometry, self.stream,
                               self.file, [fnum])
        if self.frames_decoded != len(pts):
            log.warning("%s: DALI decoded %d frames, PyAV demuxed %d packets",
                        self.file.path, self.frames_decoded, len(pts))

    def _iter_pyav(self) -> Iterator[DecodedBatch]:
        import av

        path = str(self.file.path)
        try:
            self._container = av.open(path)
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            chunk: list[np.ndarray] = []
            chunk_pts: list[int | None] = []
            for frame in self._container.decode(stream):
                chunk.append(frame.to_ndarray(format="rgb24"))
                chunk_pts.append(frame.pts)
                if len(chunk) == self.batch:
                    yield self._run_chunk(chunk, chunk_pts)
                    chunk, chunk_pts = [], []
            if chunk:
                yield self._run_chunk(chunk, chunk_pts)
        except av.error.FFmpegError as e:
            raise DecodeError(
                path, f"decoding failed after {self.frames_decoded} frames: {e.strerror or e}"
            ) from e

    def _run_chunk(self, chunk: list[np.ndarray], chunk_pts: list[int | None]) -> DecodedBatch:
        h, w = chunk[0].shape[:2]
        if (w, h) != (self.info.width, self.info.height):
            raise DecodeError(str(self.file.path),
                              f"frame size changed mid-stream from {self.info.width}x{self.info.height} to {w}x{h}")
        seq = np.stack(chunk)
        outs = self._pipe.run(self.stream, frames=[seq]) if self.stream is not None \
            else self._pipe.run(frames=[seq])
        start = self.frames_decoded
        rows: list[FrameMeta | None] = [self._meta(start + i, p) for i, p in enumerate(chunk_pts)]
        self.frames_decoded += len(rows)
        return DecodedBatch(outs[0], self.spec.layout, rows, self.geometry, self.stream, self.file)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # DALI prefixes errors with a stack of context lines; the most specific is usually last
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Assert" in ln:
            return ln.strip()[:300]
    return (lines[-1] if lines else repr(e))[:300]
