"""Decode + preprocess pipelines for files, yielding device-resident frame batches.

Three decoders share the preprocessing graph of :mod:`pipelines.preprocess`:

============  =====================================================  ==============
decoder       decodes with                                           used for
============  =====================================================  ==============
``dali-gpu``  ``fn.experimental.readers.video(device="gpu")``, NVDEC  GPU, any codec NVDEC takes
``dali-cpu``  ``fn.experimental.readers.video(device="cpu")``         CPU, VP8/VP9/MJPEG
``pyav``      PyAV (FFmpeg) → ``fn.external_source``                  CPU H.264/HEVC/...; GPU for codecs NVDEC lacks
============  =====================================================  ==============

The DALI readers run in :class:`SegmentDecoder`: one pipeline (one NVDEC session) reads a
list of file segments, sequentially (no re-seek per sequence), with ``pad_mode="constant"``
so tail frames are not dropped; padded frames carry frame number ``-1`` and become padding
rows. Frame numbers map to pts through the PyAV probe (DALI reports seconds relative to the
first frame, not stream pts). :class:`FileDecoder` decodes a whole file with PyAV (a resumed
file from the keyframe before where it continues: :mod:`pipelines.pyav_frames`) and feeds
the same preprocessing graph.

Usage::

    info = probe_video(path)
    with FileDecoder(VideoFile(path, "a"), info, spec, geometry, batch=16) as dec:
        for batch in dec:            # DecodedBatch
            ...
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from operators.boxes import LetterboxGeometry
from pipelines.preprocess import PreprocessSpec, finish_preprocess, preprocess
from pipelines.pyav_frames import PyAVFrames, first_index
from pipelines.segments import Segment
from streams.errors import DecodeError, SourceError
from streams.frames import FrameMeta
from streams.sources.files import VideoFile
from streams.sources.probe import DALI_CPU_CODECS, DALI_GPU_CODECS, VideoInfo

log = logging.getLogger(__name__)

DecoderKind = Literal["dali-gpu", "dali-cpu", "pyav"]

_PREFETCH = 2  # reader iterations a SegmentDecoder keeps in flight


@dataclass
class DecodedBatch:
    """One preprocessed batch of frames from one file, still in DALI's buffer.

    Attributes:
        images: DALI ``TensorListGPU``/``TensorListCPU`` with one sample ``[F, C, H, W]``
            (layout ``FCHW``) or ``[F, H, W, C]`` (``FHWC``); with ``resize_filter: opencv``, a
            torch tensor ``[F, C, H, W]`` or ``[F, H, W, C]`` on the same device.
        layout: ``"NCHW"`` or ``"NHWC"``: how ``images`` maps onto a batch of frames.
        rows: one entry per frame of the sample: its metadata, or ``None`` for padding.
        geometry: the letterbox geometry of every valid row (one file: one geometry); its
            canvas (``dst_h x dst_w``) is the batch's input shape, a rectangle for a
            dynamic-shape export (:meth:`pipelines.file_source.DecodePlan.geometry`).
        stream: raw CUDA stream the GPU outputs are ordered on (``None`` on the CPU).
        source: the file the frames come from (``None`` for live batches).
        row_geometries: per-row geometry for batches mixing sources (live); overrides
            ``geometry`` when set.
        source_frames: the decoded full-size frames (``uint8 [F, H, W, 3]``: a DALI TensorList
            with one sample, or a host array) when the preprocess spec keeps them
            (``PreprocessSpec.keep_source``), else ``None``. Valid as long as the batch.
    """

    images: Any
    layout: Literal["NCHW", "NHWC"]
    rows: list[FrameMeta | None]
    geometry: LetterboxGeometry | None
    stream: int | None
    source: VideoFile | None
    keepalive: list[Any] = field(default_factory=list)
    row_geometries: list[LetterboxGeometry | None] | None = None
    ready: Any = None  # a CUDA event on ``stream`` after the batch's work (set by the file source)
    source_frames: Any = None

    @property
    def num_valid(self) -> int:
        return sum(r is not None for r in self.rows)

    def geometries(self) -> list[LetterboxGeometry | None]:
        """The letterbox geometry of each row (``None`` for padding rows)."""
        if self.row_geometries is not None:
            return self.row_geometries
        return [self.geometry if r is not None else None for r in self.rows]


def preload_dali() -> threading.Thread:
    """Import DALI in a daemon thread, so that a job's first pipeline build does not.

    Importing ``nvidia.dali`` takes a noticeable fraction of a second. Otherwise the first
    decode session pays it after the job's clock started, while the other sessions wait for
    it on the import lock. ``fovea run`` starts this with the probe, while it loads the
    model. A missing or broken DALI is not reported here: the pipeline that needs it
    reports it.

    Usage::

        preload_dali()          # returns the started thread
        ...                     # load the model
    """

    def run() -> None:
        t = time.monotonic()
        try:
            import nvidia.dali.fn
            import nvidia.dali.types  # noqa: F401
        except Exception as e:  # reported by the first pipeline build, with its context
            log.debug("DALI preload failed: %s", e)
            return
        log.debug("DALI imported in the background in %.2f s", time.monotonic() - t)

    thread = threading.Thread(target=run, name="fovea-dali-import", daemon=True)
    thread.start()
    return thread


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
    """Decode one file with PyAV and preprocess it with DALI, in batches of ``batch`` frames.

    For the codecs DALI's reader does not decode here (H.264/HEVC/... on the CPU, codecs
    NVDEC lacks on the GPU). Iterate for batches. A :class:`~pipelines.segments.ResumedFile`
    is decoded from the keyframe at or before its ``resume_at`` and handed on from that frame
    (:mod:`pipelines.pyav_frames`): :attr:`start` is the first frame index handed on,
    :attr:`frames_decoded` counts the frames handed on from there, and :attr:`frames_read`
    the frames PyAV decoded (those before :attr:`start` included); ``progress`` is called for
    each of those (frames dropped before :attr:`start` are work too: a watchdog sees them).
    """

    def __init__(
        self,
        file: VideoFile,
        info: VideoInfo,
        spec: PreprocessSpec,
        geometry: LetterboxGeometry,
        batch: int,
        device_id: int | None = None,
        stream: int | None = None,
        num_threads: int = 2,
        progress: Callable[[], object] | None = None,
    ) -> None:
        self.file = file
        self.info = info
        self.spec = spec
        self.geometry = geometry
        self.batch = batch
        self.device_id = device_id
        self.stream = stream
        self.num_threads = num_threads
        self.start = first_index(file)
        self.progress = progress
        self.frames_decoded = 0
        self._pipe: Any = None
        self._frames: PyAVFrames | None = None

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
        self._pipe = None  # releases DALI's buffers
        if self._frames is not None:
            self._frames.close()  # its figures stay

    @property
    def frames_read(self) -> int:
        """Frames PyAV decoded so far, those dropped before :attr:`start` included."""
        return self._frames.decoded if self._frames is not None else 0

    def _build(self) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        on_gpu = self.device_id is not None

        @pipeline_def(batch_size=1, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=1, exec_dynamic=True)
        def graph() -> Any:
            frames = fn.external_source(name="frames", layout="FHWC", dtype=types.UINT8)
            if on_gpu:
                frames = frames.gpu()
            return preprocess(frames, self.geometry, self.spec)

        pipe = graph()
        pipe.build()
        return pipe

    # -- iteration ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[DecodedBatch]:
        if self._pipe is None:
            raise RuntimeError("use FileDecoder inside 'with'")
        yield from self._iter_pyav()

    def _iter_pyav(self) -> Iterator[DecodedBatch]:
        import av

        path = str(self.file.path)
        chunk: list[np.ndarray] = []
        chunk_pts: list[int | None] = []
        error: DecodeError | None = None
        self._frames = PyAVFrames(path, self.info, self.start, self.progress)
        try:
            for index, frame in self._frames:
                if (frame.width, frame.height) != (self.info.width, self.info.height):
                    error = DecodeError(path, f"frame size changed mid-stream from {self.info.width}x"
                                              f"{self.info.height} to {frame.width}x{frame.height} at frame {index}")
                    break
                chunk.append(frame.to_ndarray(format="rgb24"))
                chunk_pts.append(frame.pts)
                if len(chunk) == self.batch:
                    yield self._run_chunk(chunk, chunk_pts)
                    chunk, chunk_pts = [], []
        except av.error.FFmpegError as e:
            error = DecodeError(path, f"decoding failed after {self.start + self.frames_decoded + len(chunk)} "
                                      f"frames: {e.strerror or e}")
            error.__cause__ = e
        if chunk:  # the frames decoded before an error are real: they go on first
            yield self._run_chunk(chunk, chunk_pts)
        if error is not None:
            raise error

    def _run_chunk(self, chunk: list[np.ndarray], chunk_pts: list[int | None]) -> DecodedBatch:
        h, w = chunk[0].shape[:2]
        if (w, h) != (self.info.width, self.info.height):
            raise DecodeError(str(self.file.path),
                              f"frame size changed mid-stream from {self.info.width}x{self.info.height} to {w}x{h}")
        seq = np.stack(chunk)
        outs = self._pipe.run(self.stream, frames=[seq]) if self.stream is not None \
            else self._pipe.run(frames=[seq])
        start = self.start + self.frames_decoded
        rows: list[FrameMeta | None] = [_frame_meta(self.file, self.info, start + i, p)
                                        for i, p in enumerate(chunk_pts)]
        self.frames_decoded += len(rows)
        images = finish_preprocess(outs[0], self.geometry, self.spec, self.stream)  # opencv filter: in torch
        return DecodedBatch(images, self.spec.layout, rows, self.geometry, self.stream, self.file, [outs[0]],
                            source_frames=seq if self.spec.keep_source else None)


@dataclass(frozen=True)
class SegmentBatch:
    """A decoded batch of ``segments[index]`` (see :class:`SegmentDecoder`)."""

    index: int
    batch: DecodedBatch


@dataclass(frozen=True)
class SegmentDone:
    """``segments[index]`` is fully decoded: ``frames`` valid frames came out."""

    index: int
    frames: int


class SegmentDecodeError(DecodeError):
    """Decoding ``segments[index]`` failed after ``frames`` of its frames; the pipeline is gone."""

    def __init__(self, source: str, reason: str, index: int, frames: int) -> None:
        super().__init__(source, reason)
        self.index = index
        self.frames = frames


class SegmentDecoder:
    """One DALI reader pipeline over several file segments sharing one letterbox geometry.

    The reader reads a ``file_list`` of ``path label start end`` frame ranges
    (``file_list_format="frames"``, end excluded) as one long-lived decode session:
    no pipeline build per file, stable output buffers, sequences never straddle two
    segments (each segment's tail is padded, ``pad_mode="constant"``), and the label
    output names the segment of every sequence.

    Exactly as many reader iterations are scheduled as the segments have sequences
    (``pipe.run()`` would schedule one more at the end, which wraps around to the first
    segment and decodes a sequence for nothing).

    Usage::

        with SegmentDecoder(segments, spec, batch=64, kind="dali-gpu", device_id=0) as dec:
            for ev in dec:                  # SegmentBatch | SegmentDone, in segment order
                ...
    """

    def __init__(
        self,
        segments: Sequence[Segment],
        spec: PreprocessSpec,
        batch: int,
        kind: DecoderKind,
        device_id: int | None = None,
        stream: int | None = None,
        num_threads: int = 2,
    ) -> None:
        if kind not in ("dali-gpu", "dali-cpu"):
            raise ValueError(f"segments are read by DALI's reader, not {kind!r}")
        if kind == "dali-gpu" and device_id is None:
            raise ValueError("the dali-gpu decoder needs a device_id")
        if not segments:
            raise ValueError("no segments")
        geom = segments[0].geometry
        if any(s.geometry != geom for s in segments):
            raise ValueError("segments of one decoder share one letterbox geometry")
        self.segments = list(segments)
        self.spec = spec
        self.batch = batch
        self.kind = kind
        self.device_id = device_id
        self.stream = stream
        self.num_threads = num_threads
        self._pipe: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.total_sequences = sum(self.sequences(s) for s in self.segments)
        self._depth = min(_PREFETCH, self.total_sequences)  # iterations the first schedule_run() starts
        self._scheduled = 0

    def __enter__(self) -> SegmentDecoder:
        self._tmp = tempfile.TemporaryDirectory(prefix="fovea-segments-")
        try:
            self._pipe = self._build(Path(self._tmp.name))
        except RuntimeError as e:
            self.__exit__(None, None, None)
            names = sorted({str(s.file.path) for s in self.segments})
            raise SourceError(",".join(names), f"DALI cannot open it: {_first_line(e)}") from e
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pipe = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _build(self, tmp: Path) -> Any:
        from nvidia.dali import fn, pipeline_def

        lines = []
        for i, seg in enumerate(self.segments):
            path = seg.file.path.resolve()
            if any(ch.isspace() for ch in str(path)):  # DALI's file list splits on whitespace
                link = tmp / f"segment{i}{path.suffix}"
                link.symlink_to(path)
                path = link
            lines.append(f"{path} {i} {seg.start} {seg.end}\n")
        file_list = tmp / "segments.txt"
        file_list.write_text("".join(lines), encoding="utf-8")
        on_gpu = self.kind == "dali-gpu"
        geom = self.segments[0].geometry

        @pipeline_def(batch_size=1, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=self._depth, exec_dynamic=True)
        def graph() -> Any:
            frames, label, fnum = fn.experimental.readers.video(
                device="gpu" if on_gpu else "cpu",
                file_list=str(file_list),
                file_list_format="frames",
                file_list_include_end=False,
                sequence_length=self.batch,
                pad_mode="constant",
                enable_frame_num="sequence",
                lazy_init=True,  # index the files in the first run, off the GIL, not in build()
                name="reader",
            )
            if not on_gpu and self.device_id is not None:
                frames = frames.gpu()  # CPU decode, GPU preprocessing
            if self.spec.keep_source:  # the full-size frames too, for stages that crop source pixels
                return preprocess(frames, geom, self.spec), label, fnum, frames
            return preprocess(frames, geom, self.spec), label, fnum

        pipe = graph()
        pipe.build()
        return pipe

    def sequences(self, seg: Segment) -> int:
        """How many reader sequences ``seg`` yields (its last one padded)."""
        return -(-seg.frames // self.batch)

    def __iter__(self) -> Iterator[SegmentBatch | SegmentDone]:
        if self._pipe is None:
            raise RuntimeError("use SegmentDecoder inside 'with'")
        pipe = self._pipe
        total = self.total_sequences
        current, done = 0, 0
        left = self.sequences(self.segments[0])
        for _ in range(total):
            seg = self.segments[current]
            try:
                if self._scheduled == 0:
                    pipe.schedule_run()  # the first call prefetches: the pipeline's queue depth
                    self._scheduled = self._depth
                elif self._scheduled < total:
                    pipe.schedule_run()
                    self._scheduled += 1
                outs = pipe.outputs(self.stream) if self.stream is not None else pipe.outputs()
                images, label, fnum = outs[:3]
                full = outs[3] if self.spec.keep_source else None
            except RuntimeError as e:
                self._pipe = None
                raise SegmentDecodeError(
                    str(seg.file.path),
                    f"decoding failed in frames {seg.start}-{seg.end - 1} after {done} of them: {_first_line(e)}",
                    current, done,
                ) from e
            if current == 0 and done == 0:  # the reader is initialised (lazily) by now
                epoch = int(pipe.epoch_size("reader"))
                if epoch != total:
                    log.warning("reader reports %d sequences for %d segments, %d expected", epoch,
                                len(self.segments), total)
            idx = int(np.asarray(_host(label)[0]).reshape(-1)[0])
            if idx != current:
                raise DecodeError(str(seg.file.path),
                                  f"reader returned segment {idx} while segment {current} was expected")
            numbers = np.asarray(_host(fnum)[0]).reshape(-1)
            rows = _rows(numbers.tolist(), seg.file, seg.info)
            n = sum(r is not None for r in rows)
            done += n
            model_input = finish_preprocess(images, seg.geometry, self.spec, self.stream)  # opencv filter: in torch
            yield SegmentBatch(current, DecodedBatch(model_input, self.spec.layout, rows, seg.geometry,
                                                     self.stream, seg.file, [label, fnum, images], source_frames=full))
            left -= 1
            if left == 0:
                if done != seg.frames:
                    log.warning("%s: DALI decoded %d of frames %d-%d (%d expected)", seg.file.path, done,
                                seg.start, seg.end - 1, seg.frames)
                yield SegmentDone(current, done)
                current, done = current + 1, 0
                if current < len(self.segments):
                    left = self.sequences(self.segments[current])


def _host(out: Any) -> Any:
    return out.as_cpu() if hasattr(out, "as_cpu") else out


def _rows(numbers: list[int], file: VideoFile, info: VideoInfo) -> list[FrameMeta | None]:
    """Frame metadata for the reader's frame numbers (``-1``: a padding row)."""
    pts = info.pts
    rows: list[FrameMeta | None] = []
    for n in numbers:
        if n < 0:
            rows.append(None)
            continue
        p: int | None = pts[n] if n < len(pts) else None
        if p is None:
            log.warning("%s: DALI decoded frame %d beyond the %d frames PyAV demuxed", file.path, n, len(pts))
        rows.append(_frame_meta(file, info, n, p))
    return rows


def _frame_meta(file: VideoFile, info: VideoInfo, index: int, pts: int | None) -> FrameMeta:
    return FrameMeta(source_id=file.source_id, uri=str(file.path), frame_index=index, pts=pts,
                     time_base=info.time_base, width=info.width, height=info.height)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # DALI prefixes errors with a stack of context lines; the most specific is usually last
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Assert" in ln:
            return ln.strip()[:300]
    return (lines[-1] if lines else repr(e))[:300]
