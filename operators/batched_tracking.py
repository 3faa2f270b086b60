"""ByteTrack for many sources at once: every source's tracks in flat NumPy arrays.

:class:`BatchedByteTrack` reproduces ``trackers.ByteTrackTracker`` (roboflow ``trackers``
2.6.1, timestamped mode, its default ``XYXYStateEstimator`` and ``IoU``) for any number of
sources, without one Python object per track or per source. One :meth:`BatchedByteTrack.step`
takes a new frame of several sources and runs, for all their tracks together:

1. the Kalman predict (one batched ``F @ P @ F.T + Q``),
2. the ghost-id prune (tracks not updated for longer than the buffer, in seconds),
3. the two-stage association: IoU of every (track, detection) pair of the same source in
   one vectorized op, then per source ``scipy.optimize.linear_sum_assignment`` (the solver
   ``trackers`` uses, so ties resolve the same), confident detections first, then the
   less confident ones against the tracks left unmatched,
4. the Kalman update of every matched track (one batched Joseph-form update),
5. id assignment, track birth and the lifecycle prune.

Why it matches the reference to the bit (or to the last ulp of a BLAS kernel): the same
matrices (``F`` with ``frame_step`` couplings, ``Q = 0.01 I`` within the 4 ms near-nominal
band else the DWNA ``Q``, ``R = 0.1 I``, ``P0 = I``), the same order of matrix products, the
IoU computed with ``supervision.box_iou_batch``'s arithmetic (float64, then float32), the
same assignment solver on the same float32 matrices, the same track order (creation order
within a source: rows of the assignment problem, hence ties) and ids allocated in the same
order (stage-one matches by row, then stage-two matches by row). Ids are per source, from 0,
exactly as one ``ByteTrackTracker`` object per source numbers them.

Usage::

    bt = BatchedByteTrack(ByteTrackParams(lost_track_buffer=30))
    a, b = bt.add_source(frame_rate=25.0), bt.add_source(frame_rate=30.0)
    ids_a, ids_b = bt.step([SourceFrame(a, xyxy_a, conf_a, t_a), SourceFrame(b, xyxy_b, conf_b, t_b)])
    bt.confirmed_ids(a)        # ids of the source's live confirmed tracks
    bt.reset_source(a, 25.0)   # as a new ByteTrackTracker object: tracks dropped, ids from 0
    bt.remove_source(b)

Only the timestamped mode is implemented (every frame carries its time in seconds), which
is how :mod:`pipelines.tracking` feeds the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

__all__ = ["BatchedByteTrack", "ByteTrackParams", "SourceFrame", "box_iou_pairs", "dwna_process_noise",
           "kalman_predict", "kalman_update"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

DIM_X = 8  # state: x1, y1, x2, y2 and their velocities
DIM_Z = 4  # measurement: x1, y1, x2, y2
PROCESS_NOISE = 0.01  # ByteTrackTracklet: Q = 0.01 * I (one nominal frame)
MEASUREMENT_NOISE = 0.1  # ByteTrackTracklet: R = 0.1 * I
NOMINAL_STEP_TOLERANCE_S = 0.004  # trackers.utils.motion_models: Q stays the one-frame Q within 4 ms
_H: F64 = np.eye(DIM_Z, DIM_X, dtype=np.float64)
_R: F64 = MEASUREMENT_NOISE * np.eye(DIM_Z, dtype=np.float64)
_Q1: F64 = PROCESS_NOISE * np.eye(DIM_X, dtype=np.float64)
_I: F64 = np.eye(DIM_X, dtype=np.float64)


@dataclass(frozen=True)
class ByteTrackParams:
    """The parameters of ``trackers.ByteTrackTracker``, by its names and defaults."""

    track_activation_threshold: float = 0.7
    minimum_consecutive_frames: int = 2
    minimum_iou_threshold: float = 0.1
    high_conf_det_threshold: float = 0.6
    lost_track_buffer: int = 30  # in 30 fps frames: a lost track is kept lost_track_buffer / 30 seconds


@dataclass(frozen=True)
class SourceFrame:
    """One new frame of one source: its detections (``xyxy`` ``(N, 4)``, ``confidence`` ``(N,)``)
    and its time in seconds."""

    source: int
    xyxy: npt.NDArray[np.floating]
    confidence: npt.NDArray[np.floating]
    timestamp: float


def dwna_process_noise(frame_step: F64) -> F64:
    """``(N,)`` frame steps → ``(N, 8, 8)`` process noise for a step that is not one nominal
    frame: discrete white-noise acceleration with ``sigma_a² = 0.01`` per axis, computed as
    ``trackers``' ``ScalableProcessNoise._dwna`` does (``dt2 = s*s``, ``dt3 = dt2*s``,
    ``dt4 = dt2*dt2``)."""
    s = frame_step
    dt2 = s * s
    dt3 = dt2 * s
    dt4 = dt2 * dt2
    q = np.zeros((len(s), DIM_X, DIM_X), np.float64)
    for p in range(DIM_Z):
        v = p + DIM_Z
        q[:, p, p] = PROCESS_NOISE * dt4 / 4.0
        q[:, p, v] = PROCESS_NOISE * dt3 / 2.0
        q[:, v, p] = PROCESS_NOISE * dt3 / 2.0
        q[:, v, v] = PROCESS_NOISE * dt2
    return q


def kalman_predict(mean: F64, cov: F64, frame_step: F64, frame_rate: F64) -> tuple[F64, F64]:
    """Constant-velocity predict of ``N`` tracks: ``mean`` ``(N, 8, 1)``, ``cov`` ``(N, 8, 8)``,
    ``frame_step`` and ``frame_rate`` ``(N,)`` → the new ``(mean, cov)``.

    ``F`` couples each corner to its velocity by ``frame_step``; ``Q`` is the one-frame
    ``0.01 I`` when the step is within ``0.004 s * frame_rate`` of one frame (a nominal
    frame, as measured from timestamps), else the DWNA ``Q`` scaled to the step."""
    n = len(frame_step)
    f = np.broadcast_to(_I, (n, DIM_X, DIM_X)).copy()
    for p in range(DIM_Z):
        f[:, p, p + DIM_Z] = frame_step
    q = np.broadcast_to(_Q1, (n, DIM_X, DIM_X)).copy()
    gap = ~(np.abs(frame_step - 1.0) <= NOMINAL_STEP_TOLERANCE_S * frame_rate)
    if gap.any():
        q[gap] = dwna_process_noise(frame_step[gap])
    new_mean = f @ mean
    new_cov = f @ cov @ f.transpose(0, 2, 1) + q
    return new_mean, new_cov


def kalman_update(mean: F64, cov: F64, z: F64) -> tuple[F64, F64]:
    """Kalman update of ``N`` tracks (``mean`` ``(N, 8, 1)``, ``cov`` ``(N, 8, 8)``) with their
    measured boxes ``z`` ``(N, 4, 1)``; the covariance in Joseph form, as ``trackers`` does."""
    innovation = z - _H @ mean
    pht = cov @ _H.T
    s = _H @ pht + _R
    k = pht @ np.linalg.inv(s)
    new_mean = mean + k @ innovation
    i_kh = _I - k @ _H
    new_cov = i_kh @ cov @ i_kh.transpose(0, 2, 1) + k @ _R @ k.transpose(0, 2, 1)
    return new_mean, new_cov


def box_iou_pairs(a: F64, b: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """IoU of box ``a[i]`` with box ``b[i]`` (both ``(P, 4)`` xyxy) → ``(P,)`` float32, with the
    arithmetic of ``supervision.box_iou_batch`` (float64, 0 where the union is not positive,
    rounded to float32 at the end) so that assignments see the very same numbers."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    np.clip(iw, 0.0, None, out=iw)
    np.clip(ih, 0.0, None, out=ih)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    out = np.zeros(len(inter), np.float32)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _group_starts(counts: I64) -> I64:
    """``(G,)`` group sizes → ``(G,)`` offset of each group in the concatenation."""
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)


def associate(track_boxes: F64, track_counts: I64, det_boxes: npt.NDArray[np.floating], det_counts: I64,
              min_iou: float) -> tuple[I64, I64]:
    """Match tracks to detections within each group (source), maximising total IoU.

    ``track_boxes`` ``(T, 4)`` and ``det_boxes`` ``(D, 4)`` are grouped by source, in the
    same group order, ``track_counts``/``det_counts`` ``(G,)`` giving each group's size.
    The IoU of every same-group pair is computed in one vectorized op; each group's
    ``(tracks, detections)`` block is then solved with ``linear_sum_assignment(maximize=True)``
    and a pair is kept when its IoU is at least ``min_iou`` (as ``trackers`` does).
    Returns ``(track_rows, det_rows)``: indices into the two inputs of the kept pairs,
    ordered by group and then by track row.
    """
    pairs = track_counts * det_counts
    total = int(pairs.sum())
    if total == 0:
        empty = np.empty(0, np.int64)
        return empty, empty
    t_start, d_start, p_start = _group_starts(track_counts), _group_starts(det_counts), _group_starts(pairs)
    group = np.repeat(np.arange(len(pairs)), pairs)
    k = np.arange(total) - p_start[group]
    nd = det_counts[group]
    rows = t_start[group] + k // nd
    cols = d_start[group] + k % nd
    iou = box_iou_pairs(track_boxes[rows], det_boxes[cols])
    out_t: list[I64] = []
    out_d: list[I64] = []
    for g in np.flatnonzero(pairs).tolist():
        nt, ndg, p0 = int(track_counts[g]), int(det_counts[g]), int(p_start[g])
        block = iou[p0:p0 + nt * ndg].reshape(nt, ndg)
        r, c = linear_sum_assignment(block, maximize=True)
        keep = block[r, c] >= min_iou
        out_t.append(r[keep] + t_start[g])
        out_d.append(c[keep] + d_start[g])
    if not out_t:
        empty = np.empty(0, np.int64)
        return empty, empty
    return np.concatenate(out_t).astype(np.int64), np.concatenate(out_d).astype(np.int64)


class BatchedByteTrack:
    """ByteTrack over many sources, all tracks in flat arrays (module docstring).

    Track arrays (``N`` tracks of all sources, each source's in creation order): ``mean``
    ``(N, 8, 1)``, ``cov`` ``(N, 8, 8)``, ``source``, ``track_id`` (``-1`` until confirmed),
    ``hits`` (consecutive frames with a detection), ``misses`` (frames since the last
    detection), ``miss_s`` (seconds since the last detection) and ``age``.
    """

    def __init__(self, params: ByteTrackParams) -> None:
        if params.lost_track_buffer < 0:
            raise ValueError("lost_track_buffer must be >= 0")
        self.params = params
        self.max_miss_s = params.lost_track_buffer / 30.0
        self.mean: F64 = np.empty((0, DIM_X, 1), np.float64)
        self.cov: F64 = np.empty((0, DIM_X, DIM_X), np.float64)
        self.source: I64 = np.empty(0, np.int64)
        self.track_id: I64 = np.empty(0, np.int64)
        self.hits: I64 = np.empty(0, np.int64)
        self.misses: I64 = np.empty(0, np.int64)
        self.miss_s: F64 = np.empty(0, np.float64)
        self.age: I64 = np.empty(0, np.int64)
        self._fps: dict[int, float] = {}
        self._last_t: dict[int, float | None] = {}
        self._next_id: I64 = np.empty(0, np.int64)  # by source slot

    # sources ----------------------------------------------------------------------------

    def add_source(self, frame_rate: float) -> int:
        """A new source (as a new ``ByteTrackTracker(frame_rate=...)``); returns its slot."""
        slot = len(self._next_id)
        self._next_id = np.append(self._next_id, 0)
        self.reset_source(slot, frame_rate)
        return slot

    def reset_source(self, slot: int, frame_rate: float) -> None:
        """Start the source afresh, as a new tracker object: its tracks dropped, its ids from 0,
        its time line forgotten, at this frame rate."""
        if not (math.isfinite(frame_rate) and frame_rate > 0):
            raise ValueError("frame_rate must be a finite positive value")
        self._keep(self.source != slot)
        self._fps[slot] = frame_rate
        self._last_t[slot] = None
        self._next_id[slot] = 0

    def remove_source(self, slot: int) -> None:
        """Drop the source's tracks and state (its slot is not reused)."""
        self._keep(self.source != slot)
        self._fps.pop(slot, None)
        self._last_t.pop(slot, None)

    def track_count(self, slot: int) -> int:
        """How many tracks (confirmed or not) the source has."""
        return int(np.count_nonzero(self.source == slot))

    def confirmed_ids(self, slot: int) -> I64:
        """Ids of the source's live confirmed tracks, in creation order."""
        ids = self.track_id[self.source == slot]
        return ids[ids >= 0]

    def tracks(self, slot: int) -> tuple[I64, F64]:
        """The source's tracks in creation order: ``(track_id (K,), box (K, 4))``, the box being
        the filter's current xyxy estimate (``ByteTrackTracklet.get_state_bbox``)."""
        sel = self.source == slot
        return self.track_id[sel].copy(), self.mean[sel, :DIM_Z, 0].copy()

    # the step ---------------------------------------------------------------------------

    def step(self, frames: Sequence[SourceFrame]) -> list[I64]:
        """One new frame for each of several distinct sources; returns, per frame, the track id
        of each of its detections (``-1``: no confirmed track took it)."""
        p = self.params
        out = [np.full(len(f.confidence), -1, np.int64) for f in frames]
        slots = [f.source for f in frames]
        if len(set(slots)) != len(slots):
            raise ValueError("step takes at most one frame per source")
        n_slots = len(self._next_id)
        step_of = np.full(n_slots, np.nan)  # frame step of each stepped source (NaN: not stepped)
        elapsed_of = np.zeros(n_slots)
        fps_of = np.ones(n_slots)
        live: list[int] = []  # indices into frames that run (not skipped)
        for i, f in enumerate(frames):
            timing = self._timing(f.source, float(f.timestamp))
            if timing is None:
                continue  # a time before the previous one: no update (trackers warns and skips)
            step_of[f.source], elapsed_of[f.source] = timing
            fps_of[f.source] = self._fps[f.source]
            live.append(i)
        if not live:
            return out

        # 1. predict and advance the miss clocks of the stepped sources' tracks
        fs = step_of[self.source]
        stepped = ~np.isnan(fs)
        moving = np.flatnonzero(stepped & (fs > 0.0))
        if len(moving):
            self.mean[moving], self.cov[moving] = kalman_predict(self.mean[moving], self.cov[moving], fs[moving],
                                                                 fps_of[self.source[moving]])
            self.hits[moving] = np.where(self.misses[moving] > 0, 0, self.hits[moving])
            self.misses[moving] += 1
            self.miss_s[moving] += elapsed_of[self.source[moving]]
            self.age[moving] += 1

        # 2. ghost-id prune: tracks lost for longer than the buffer go before association
        self._keep(~(stepped & ~(self.miss_s <= self.max_miss_s)))

        # the stepped sources' tracks grouped by source (frame order), creation order within
        fs = step_of[self.source]
        stepped = ~np.isnan(fs)
        live_slots = np.array([slots[i] for i in live], np.int64)
        rank = np.full(n_slots, -1, np.int64)
        rank[live_slots] = np.arange(len(live))
        cand = np.flatnonzero(stepped)
        tracks = cand[np.argsort(rank[self.source[cand]], kind="stable")]
        track_counts = np.bincount(rank[self.source[tracks]], minlength=len(live)).astype(np.int64)
        predicted = self.mean[tracks, :DIM_Z, 0]

        # detections, split by confidence, grouped by source in frame order
        xyxy = [np.asarray(frames[i].xyxy).reshape(-1, 4) for i in live]
        conf = [np.asarray(frames[i].confidence) for i in live]
        high = [np.flatnonzero(c >= p.high_conf_det_threshold) for c in conf]
        low = [np.flatnonzero(~(c >= p.high_conf_det_threshold)) for c in conf]
        det_frame = np.repeat(np.arange(len(live)), [len(c) for c in conf])
        det_start = _group_starts(np.array([len(c) for c in conf], np.int64))
        all_boxes = np.concatenate(xyxy) if xyxy else np.empty((0, 4))
        all_conf = np.concatenate(conf) if conf else np.empty(0)
        high_idx = np.concatenate([h + det_start[j] for j, h in enumerate(high)]).astype(np.int64)
        low_idx = np.concatenate([lo + det_start[j] for j, lo in enumerate(low)]).astype(np.int64)
        high_counts = np.array([len(h) for h in high], np.int64)
        low_counts = np.array([len(lo) for lo in low], np.int64)

        # 3a. confident detections against all tracks
        t1, d1 = associate(predicted, track_counts, all_boxes[high_idx], high_counts, p.minimum_iou_threshold)
        matched_track = np.zeros(len(tracks), bool)
        matched_track[t1] = True
        high_taken = np.zeros(len(high_idx), bool)
        high_taken[d1] = True
        # 3b. the others against the tracks left (their predicted boxes)
        rest = np.flatnonzero(~matched_track)
        rest_counts = np.bincount(rank[self.source[tracks[rest]]], minlength=len(live)).astype(np.int64)
        t2, d2 = associate(predicted[rest], rest_counts, all_boxes[low_idx], low_counts, p.minimum_iou_threshold)

        # matches in the order trackers handles them: by source, stage one by row, then stage two
        m_track = np.concatenate([tracks[t1], tracks[rest[t2]]]).astype(np.int64)
        m_det = np.concatenate([high_idx[d1], low_idx[d2]]).astype(np.int64)
        order = np.argsort(rank[self.source[m_track]], kind="stable")
        m_track, m_det = m_track[order], m_det[order]

        # 4. Kalman update of every matched track
        if len(m_track):
            z = all_boxes[m_det].astype(np.float64).reshape(-1, DIM_Z, 1)
            self.mean[m_track], self.cov[m_track] = kalman_update(self.mean[m_track], self.cov[m_track], z)
            self.misses[m_track] = 0
            self.miss_s[m_track] = 0.0
            self.hits[m_track] += 1
            # ids for tracks reaching minimum_consecutive_frames, numbered per source in match order
            new = m_track[(self.hits[m_track] >= p.minimum_consecutive_frames) & (self.track_id[m_track] == -1)]
            if len(new):
                src = self.source[new]
                idx = np.arange(len(new))
                first = np.concatenate(([True], src[1:] != src[:-1]))
                within = idx - np.maximum.accumulate(np.where(first, idx, 0))
                self.track_id[new] = self._next_id[src] + within
                np.add.at(self._next_id, src, 1)
            flat = np.full(len(all_conf), -1, np.int64)
            flat[m_det] = self.track_id[m_track]
            for j, i in enumerate(live):
                out[i] = flat[det_start[j]:det_start[j] + len(conf[j])]

        # 5. births from unmatched confident detections, then the lifecycle prune
        born = high_idx[~high_taken]
        born = born[all_conf[born].astype(np.float64) >= p.track_activation_threshold]  # trackers: float(conf)
        if len(born):
            self._append(all_boxes[born], live_slots[det_frame[born]])
        fs = step_of[self.source]
        stepped = ~np.isnan(fs)
        mature = (self.track_id != -1) | (self.hits >= p.minimum_consecutive_frames)
        alive = (self.miss_s <= self.max_miss_s) & (mature | (self.misses == 0))
        self._keep(~stepped | alive)
        return out

    # internals --------------------------------------------------------------------------

    def _timing(self, slot: int, t: float) -> tuple[float, float] | None:
        """``(frame_step, elapsed_seconds)`` of the source's new frame, as
        ``BaseTracker._predict_timing``; ``None`` for a time earlier than the last one (or not
        finite), whose update ``trackers`` skips. A repeated time gives step 0 (no predict)."""
        fps = self._fps[slot]
        last = self._last_t[slot]
        if not math.isfinite(t):
            return None
        if last is None:
            self._last_t[slot] = t
            elapsed = 1.0 / fps
            return elapsed * fps, elapsed
        if t < last:
            return None
        if t == last:
            return 0.0, 0.0
        elapsed = t - last
        self._last_t[slot] = t
        return elapsed * fps, elapsed

    def _keep(self, mask: npt.NDArray[np.bool_]) -> None:
        """Keep only the tracks where ``mask`` is true (order preserved)."""
        if mask.all():
            return
        self.mean, self.cov = self.mean[mask], self.cov[mask]
        self.source, self.track_id = self.source[mask], self.track_id[mask]
        self.hits, self.misses = self.hits[mask], self.misses[mask]
        self.miss_s, self.age = self.miss_s[mask], self.age[mask]

    def _append(self, boxes: npt.NDArray[np.floating], sources: I64) -> None:
        """New tracks at these boxes (``(K, 4)``), one detection seen, not yet confirmed."""
        k = len(boxes)
        mean = np.zeros((k, DIM_X, 1), np.float64)
        mean[:, :DIM_Z, 0] = np.asarray(boxes, np.float64)
        self.mean = np.concatenate([self.mean, mean])
        self.cov = np.concatenate([self.cov, np.broadcast_to(_I, (k, DIM_X, DIM_X))])
        self.source = np.concatenate([self.source, sources.astype(np.int64)])
        self.track_id = np.concatenate([self.track_id, np.full(k, -1, np.int64)])
        self.hits = np.concatenate([self.hits, np.ones(k, np.int64)])
        self.misses = np.concatenate([self.misses, np.zeros(k, np.int64)])
        self.miss_s = np.concatenate([self.miss_s, np.zeros(k, np.float64)])
        self.age = np.concatenate([self.age, np.zeros(k, np.int64)])
