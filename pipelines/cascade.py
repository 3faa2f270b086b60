"""Cascades: secondary models on crops of the primary detections, cut from source-resolution frames.

Where the work happens, and why (the frame is the expensive thing to keep)::

    inference thread (per batch, frame still in DALI's buffer)        job thread (per source, in order)
    InferenceStage: engine + postprocess ─► CascadeStage.cut():        CascadeStage.process_many():
        crops of the chosen detections, resized (classifiers) or         run each model on its crops that
        letterboxed (detectors) to each model's input on the device;    are due (all sources at once),
        the frame is released with its batch                              attach ``attributes`` to the detections

- **The source frame lives only as long as its batch.** DALI returns the decoded full-size
  frames beside the model input (``PreprocessSpec.keep_source``); :meth:`CascadeStage.cut`
  reads them in place while the batch is being processed and keeps only the crops
  (``K x 3 x h x w``, e.g. 3 x 32 x 32 floats = 12 KiB a detection). No host copy and no
  frame held past its batch; memory per stream is its crops waiting for their turn, and
  :meth:`report` gives the peak.
- **The models run after the tracker**, in each source's frame order, so that
  ``reinfer_interval`` can skip tracks seen recently (DeepStream's
  ``secondary-reinfer-interval``): a track goes through a model when it first gets an id and
  then every N frames; its other detections carry its last result (a detector's boxes moved
  with the track's box). Detections without a track id (too new, or no tracker) go through
  every frame. The crops of every ready source go through each model in one call.
- **What differs by kind** (crop op, model call, the attribute's value and its counts) is a
  :class:`pipelines.cascade_runners.KindRunner`; everything else here is shared.

Counted, never crashing: detections smaller than ``min_size`` (``too_small``), crops of
frames that ended without reaching the stage (a removed camera).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import torch

from operators.transfer import upload
from pipelines.cascade_runners import KindRunner, open_runner
from pipelines.stages import Gap, SourceEnd, SourceEvent
from streams.cascade_config import SecondaryConfig
from streams.detections import Detections
from streams.errors import ConfigError
from streams.frames import FrameResult

log = logging.getLogger(__name__)


@dataclass
class _Cut:
    """One frame's crops for one secondary model: which detections, their pixels, when ready."""

    rows: np.ndarray  # int64[k]: indices of the detections cropped
    crops: torch.Tensor  # float32[k, 3, h, w] on the model's device
    ready: Any  # a CUDA event after the crop kernels (None on the CPU)
    extra: np.ndarray | None = None  # [k, ...] what the runner needs besides the pixels (a detector's regions)


@dataclass(frozen=True)
class _Known:
    """A track's result from an earlier call (a reused result that is not an index into this call's)."""

    result: Any


@dataclass
class _Counts:
    inferred: int = 0  # crops run through the model
    reused: int = 0  # detections that took their track's last result (reinfer_interval)
    too_small: int = 0
    dropped: int = 0  # crops of frames that never reached the stage


@dataclass
class _Secondary:
    """One ``secondary:`` entry, loaded."""

    cfg: SecondaryConfig
    runner: KindRunner
    class_ids: np.ndarray | None  # primary class ids to crop (None: all)
    counts: _Counts = field(default_factory=_Counts)
    # (source, track id) -> (frame index, the runner's result) of the track's last inference
    last: dict[tuple[str, int], tuple[int, Any]] = field(default_factory=dict)

    def chosen(self, dets: Detections) -> tuple[np.ndarray, int]:
        """Indices of ``dets`` this model runs on, and how many were too small."""
        keep = np.ones(len(dets), bool)
        if self.class_ids is not None:
            keep &= np.isin(dets.class_id, self.class_ids)
        side = np.minimum(dets.xyxy[:, 2] - dets.xyxy[:, 0], dets.xyxy[:, 3] - dets.xyxy[:, 1])
        small = keep & (side < self.cfg.min_size)
        return np.flatnonzero(keep & ~small), int(small.sum())


class RgbFrame(Protocol):
    """A row's source frame that becomes RGB pixels only when a crop is cut from it (the live
    GPU path's full-size NV12 frame, :class:`pipelines.live_decode.Nv12SourceFrame`). Its
    buffer belongs to the decoder and may be reused once its batch is let go, so
    :meth:`CascadeStage.cut` has finished reading it when it returns."""

    @property
    def shape(self) -> tuple[int, int, int]: ...  # (H, W, 3)

    def rgb(self) -> torch.Tensor: ...  # uint8[H, W, 3] on the frame's device, made on the current stream


_STACK_ROWS = 16  # list rows stacked per crop call (bounds the RGB copies: 6 MiB a 1080p frame)


def _pixels(frame: np.ndarray | torch.Tensor | RgbFrame) -> torch.Tensor:
    """A list row of :meth:`CascadeStage.cut` as an ``uint8[H, W, 3]`` tensor (where it is)."""
    if isinstance(frame, torch.Tensor):
        return frame
    if isinstance(frame, np.ndarray):
        return torch.from_numpy(frame)
    return frame.rgb()


def source_frames_tensor(frames: Any) -> torch.Tensor:
    """Decoded frames as a torch ``uint8[F, H, W, 3]`` tensor, zero-copy where possible.

    ``frames``: a DALI ``TensorListGPU``/``TensorListCPU`` holding one ``[F, H, W, 3]`` sample
    (a file's batch), a torch tensor, or a NumPy array.
    """
    if isinstance(frames, torch.Tensor):
        return frames
    if isinstance(frames, np.ndarray):
        return torch.from_numpy(frames)
    t = frames.as_tensor()
    x = torch.from_dlpack(t) if type(frames).__name__.endswith("GPU") else torch.from_numpy(np.asarray(t))
    return x.reshape(x.shape[-4:]) if x.ndim == 5 else x


class CascadeStage:
    """The secondary models of a job: :meth:`cut` on the device batch, then a per-source stage.

    Built from the config (not loaded yet); :meth:`load` opens the models on the job's device
    and checks them against the primary model's classes, before any decoding.
    """

    def __init__(self, entries: Sequence[SecondaryConfig]) -> None:
        if not entries:
            raise ValueError("a cascade needs at least one secondary entry")
        self.entries = list(entries)
        self.secondaries: list[_Secondary] = []
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], list[_Cut | None]] = {}  # (source, frame) → one cut per model
        self._pending_bytes = 0
        self.peak_pending_bytes = 0
        self._stream: torch.cuda.Stream | None = None

    # -- set-up ------------------------------------------------------------------------
    def load(self, device: str, class_names: Sequence[str]) -> None:
        """Open every model for ``device`` and resolve ``classes`` against the primary model's names."""
        names = list(class_names)
        for i, e in enumerate(self.entries):
            key = f"secondary[{i}]"
            ids = None
            if e.classes is not None:
                unknown = [c for c in e.classes if c not in names]
                if unknown:
                    raise ConfigError(f"{key}.classes", f"the primary model has no class {unknown[0]!r}; its "
                                                        f"classes: {names}")
                ids = np.array([names.index(c) for c in e.classes], np.int64)
            runner = open_runner(e, device, key)
            log.info("secondary %s: %s %s on %s, labels %s, input %s", e.name, e.kind, runner.info.description,
                     runner.device, list(runner.info.labels), list(runner.info.input_size))
            self.secondaries.append(_Secondary(e, runner, ids))
        if device.startswith("cuda"):
            self._stream = torch.cuda.Stream(device=device)

    def __enter__(self) -> CascadeStage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._lock:
            self._pending.clear()
            self._pending_bytes = 0

    # -- inference threads: cut crops while the frames are on the device -------------------
    def cut(self, frames: Any, rows: Sequence[int], results: Sequence[FrameResult]) -> None:
        """Crop every chosen detection of ``results`` out of ``frames`` (the batch's source
        frames: one ``[F, H, W, 3]`` batch, or a list with one frame a row: ``[H, W, 3]``
        arrays or tensors, or :class:`RgbFrame` objects; ``rows[i]`` is the frame of ``results[i]``)
        for every model; the crops wait for :meth:`process`. Runs on the batch's CUDA stream
        (the caller's current stream).

        A list's rows are read only where a detection is chosen (an :class:`RgbFrame` is
        converted to RGB then, and read before this returns); every result gets its
        bookkeeping (its pending entry, its ``too_small`` count) either way."""
        if not self.secondaries:
            raise RuntimeError("CascadeStage.cut before load()")
        picks = [[sec.chosen(r.detections) for sec in self.secondaries] for r in results]
        cuts: list[list[_Cut | None]] = [[None] * len(self.secondaries) for _ in results]
        if isinstance(frames, list):  # one frame a row (live batches mix sources and sizes)
            nbytes = self._cut_rows(frames, rows, results, picks, cuts)
        else:
            nbytes = self._crop(source_frames_tensor(frames), rows, range(len(results)), results, picks, cuts)
        with self._lock:
            for r, cs in zip(results, cuts, strict=True):
                self._pending[(r.frame.source_id, r.frame.frame_index)] = cs
            for si, sec in enumerate(self.secondaries):
                sec.counts.too_small += sum(p[si][1] for p in picks)
            self._pending_bytes += nbytes
            self.peak_pending_bytes = max(self.peak_pending_bytes, self._pending_bytes)

    def _cut_rows(self, frames: list[Any], rows: Sequence[int], results: Sequence[FrameResult],
                  picks: Sequence[Sequence[tuple[np.ndarray, int]]], cuts: list[list[_Cut | None]]) -> int:
        """:meth:`cut` of a list: the rows with a chosen detection, stacked by shape on their
        device (at most ``_STACK_ROWS`` at once); returns the crops' bytes."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, p in enumerate(picks):
            if any(idx.size for idx, _ in p):
                by_shape.setdefault(tuple(frames[rows[k]].shape), []).append(k)
        nbytes = 0
        pos = [0] * len(results)  # result k -> its frame in the stacked part
        wait: torch.Tensor | None = None  # a device tensor made from decoder-owned frames
        for ks in by_shape.values():
            for start in range(0, len(ks), _STACK_ROWS):
                part = ks[start:start + _STACK_ROWS]
                pixels = []
                for j, k in enumerate(part):
                    pos[k] = j
                    pixels.append(_pixels(frames[rows[k]]))
                x = torch.stack(pixels) if len(pixels) > 1 else pixels[0][None]
                if x.is_cuda and not all(isinstance(frames[rows[k]], (np.ndarray, torch.Tensor)) for k in part):
                    wait = x
                nbytes += self._crop(x, pos, part, results, picks, cuts)
        if wait is not None:  # the RgbFrames' buffers may be reused once the batch goes: read them now
            torch.cuda.current_stream(wait.device).synchronize()
        return nbytes

    def _crop(self, x: torch.Tensor, frame_of: Sequence[int], ks: Sequence[int], results: Sequence[FrameResult],
              picks: Sequence[Sequence[tuple[np.ndarray, int]]], cuts: list[list[_Cut | None]]) -> int:
        """Crop the chosen detections of ``results[k]`` (``k`` in ``ks``) out of frame
        ``x[frame_of[k]]`` for every model, into ``cuts[k]``; returns the crops' bytes."""
        nbytes = 0
        for si, sec in enumerate(self.secondaries):
            chosen = [(k, picks[k][si][0]) for k in ks if picks[k][si][0].size]
            if not chosen:
                continue
            boxes = np.concatenate([results[k].detections.xyxy[idx] for k, idx in chosen])
            which = np.concatenate([np.full(idx.size, frame_of[k], np.int64) for k, idx in chosen])
            crops, extra = sec.runner.crop(x, upload(torch.from_numpy(which), x.device), boxes)
            if crops.is_cuda != sec.runner.device.startswith("cuda"):  # a CPU model on a GPU job
                crops = crops.to(sec.runner.device)
            ready = None
            if crops.is_cuda:
                ready = torch.cuda.Event()
                ready.record(torch.cuda.current_stream(crops.device))
            start = 0
            for k, idx in chosen:
                part = None if extra is None else extra[start:start + idx.size]
                cuts[k][si] = _Cut(idx, crops[start:start + idx.size], ready, part)
                start += idx.size
            nbytes += crops.numel() * crops.element_size()
        return nbytes

    # -- job thread: run the models in each source's order -------------------------------
    def process(self, source_id: str, results: Sequence[FrameResult]) -> list[FrameResult]:
        return self.process_many([(source_id, results)])[0][1]

    def process_many(self, runs: Sequence[tuple[str, Sequence[FrameResult]]]
                     ) -> list[tuple[str, list[FrameResult]]]:
        items = [(sid, r) for sid, run in runs for r in run]
        with self._lock:
            cuts = [self._pending.pop((r.frame.source_id, r.frame.frame_index), None) for _, r in items]
        attrs: list[list[dict[str, Any]]] = [[{} for _ in range(len(r.detections))] for _, r in items]
        for si, sec in enumerate(self.secondaries):
            self._infer(si, sec, items, cuts, attrs)
        released = sum(c.crops.numel() * c.crops.element_size() for cs in cuts if cs for c in cs if c is not None)
        with self._lock:
            self._pending_bytes -= released
        out: dict[str, list[FrameResult]] = {sid: [] for sid, _ in runs}
        for (sid, r), a in zip(items, attrs, strict=True):
            out[sid].append(_with_attributes(r, a) if any(a) else r)
        return [(sid, out[sid]) for sid, _ in runs]

    def _infer(self, si: int, sec: _Secondary, items: Sequence[tuple[str, FrameResult]],
               cuts: Sequence[list[_Cut | None] | None], attrs: list[list[dict[str, Any]]]) -> None:
        """Run ``sec`` on the due crops of ``items`` (one call) and fill ``attrs``.

        Due: a detection without a track id, or a track not run in its last
        ``reinfer_interval`` frames, deciding frame by frame (a run holds several frames of
        a source, so a track may come due twice in one call)."""
        interval = sec.cfg.reinfer_interval
        due_crops: list[torch.Tensor] = []
        due_extra: list[np.ndarray] = []
        due_where: list[tuple[int, int]] = []  # (item, detection)
        # a reused result: (item, detection, index into due_where or the result known before)
        reuse: list[tuple[int, int, int | _Known]] = []
        sched: dict[tuple[str, int], tuple[int, int | _Known]] = {}  # key → (frame, its result)
        events: set[Any] = set()
        for n, ((sid, r), cs) in enumerate(zip(items, cuts, strict=True)):
            c = None if cs is None else cs[si]
            if c is None:
                continue
            tids = r.detections.track_id
            frame = r.frame.frame_index
            pick: list[int] = []
            for j, det in enumerate(c.rows.tolist()):
                tid = -1 if tids is None else int(tids[det])
                if interval > 0 and tid >= 0:
                    key = (sid, tid)
                    if key not in sched and key in sec.last:
                        f, res = sec.last[key]
                        sched[key] = (f, _Known(res))
                    prev = sched.get(key)
                    if prev is not None and frame - prev[0] < interval:
                        reuse.append((n, det, prev[1]))
                        continue
                    sched[key] = (frame, len(due_where))
                pick.append(j)
                due_where.append((n, det))
            if pick:
                whole = len(pick) == c.rows.size
                due_crops.append(c.crops if whole else c.crops[pick])
                if c.extra is not None:
                    due_extra.append(c.extra if whole else c.extra[pick])
                if c.ready is not None:
                    events.add(c.ready)
        found: list[Any] = []
        if due_crops:
            crops = torch.cat(due_crops) if len(due_crops) > 1 else due_crops[0]
            extra = np.concatenate(due_extra) if due_extra else None
            parents = np.stack([items[n][1].detections.xyxy[det] for n, det in due_where])
            stream = self._stream if crops.is_cuda else None
            if stream is not None:
                for ev in events:
                    stream.wait_event(ev)
                with torch.cuda.stream(stream):
                    found = sec.runner.infer(crops, extra, parents)
            else:
                found = sec.runner.infer(crops, extra, parents)
            for (n, det), res, parent in zip(due_where, found, parents, strict=True):
                attrs[n][det][sec.cfg.name] = sec.runner.attribute(res, parent)
            sec.counts.inferred += len(due_where)
        for n, det, ref in reuse:
            res = found[ref] if isinstance(ref, int) else ref.result
            attrs[n][det][sec.cfg.name] = sec.runner.attribute(res, items[n][1].detections.xyxy[det])
        sec.counts.reused += len(reuse)
        for key, (f, ref) in sched.items():  # each track's latest inference
            if isinstance(ref, int):
                sec.last[key] = (f, found[ref])

    def on_event(self, event: SourceEvent) -> list[FrameResult]:
        """A gap drops the crops of its frames; an end drops the source's crops and track memory."""
        sid = event.source_id
        with self._lock:
            if isinstance(event, Gap):
                gone = [k for k in ((sid, i) for i in event.frame_indices) if k in self._pending]
            else:
                gone = [k for k in self._pending if k[0] == sid]
            for k in gone:
                cs = self._pending.pop(k)
                for si, c in enumerate(cs):
                    if c is not None:
                        self.secondaries[si].counts.dropped += c.rows.size
                        self._pending_bytes -= c.crops.numel() * c.crops.element_size()
        if isinstance(event, SourceEnd):
            for sec in self.secondaries:
                for k in [k for k in sec.last if k[0] == sid]:
                    del sec.last[k]
        return []

    def report(self) -> dict[str, Any]:
        return {
            "models": {s.cfg.name: {"kind": s.cfg.kind, "model": s.runner.info.description,
                                    "device": s.runner.device, **s.runner.counts(s.counts.inferred),
                                    "reused": s.counts.reused, "too_small": s.counts.too_small,
                                    "dropped": s.counts.dropped}
                       for s in self.secondaries},
            "peak_crop_bytes": self.peak_pending_bytes,
        }


def _with_attributes(r: FrameResult, attrs: list[dict[str, Any]]) -> FrameResult:
    d = r.detections
    if d.attributes is not None:
        attrs = [{**old, **new} for old, new in zip(d.attributes, attrs, strict=True)]
    return replace(r, detections=replace(d, attributes=tuple(attrs)))
