"""Parity of the batched ByteTrack (:mod:`operators.batched_tracking`) with roboflow
``trackers``' ``ByteTrackTracker``, one reference object per source, on the same seeded
scenes: every frame, every detection gets the same track id, and after every frame each
source has the same tracks (same order, same ids) with boxes within 1e-4 px.

Ids are compared as they are: both number each source's tracks from 0 (one
``ByteTrackTracker`` per source), so no renumbering is needed.

A scene (several sources at different frame rates, stepped together, a source sometimes
missing a step): objects moving with noise that are born and die, cross each other, are
occluded (no detection for a few frames) or detected with low confidence; spurious
detections; frames dropped (a time gap) and jittered timestamps, so that both the nominal
and the gap-scaled process noise are exercised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from operators.batched_tracking import (
    BatchedByteTrack,
    ByteTrackParams,
    SourceFrame,
    box_iou_pairs,
    kalman_predict,
)

pytest.importorskip("trackers")
sv = pytest.importorskip("supervision")
import trackers  # noqa: E402

Frame = tuple[float, npt.NDArray[np.float32], npt.NDArray[np.float32]]  # time, xyxy (N, 4), confidence (N,)


@dataclass
class _Object:
    x: float
    y: float
    w: float
    h: float
    vx: float
    vy: float
    death: int
    occluded_until: int = -1
    low_conf: float = field(default=0.0)  # probability of a low-confidence detection


def make_scene(rng: np.random.Generator, frames: int, fps: float) -> list[Frame | None]:
    """One source's frames: ``None`` for a frame not delivered (a gap in time)."""
    objects: list[_Object] = []
    out: list[Frame | None] = []
    for i in range(frames):
        if rng.random() < 0.08 or (not objects and rng.random() < 0.5):  # births
            w, h = rng.uniform(20, 120), rng.uniform(20, 160)
            if rng.random() < 0.3:  # a pair that crosses
                y = rng.uniform(100, 500)
                speed = rng.uniform(3, 9)
                objects.append(_Object(50, y, w, h, speed, rng.normal(0, 0.5), i + int(rng.integers(40, 150))))
                objects.append(_Object(1100, y + rng.normal(0, 10), w, h, -speed, rng.normal(0, 0.5),
                                       i + int(rng.integers(40, 150))))
            else:
                objects.append(_Object(rng.uniform(0, 1100), rng.uniform(0, 600), w, h, rng.normal(0, 4),
                                       rng.normal(0, 3), i + int(rng.integers(10, 300)), low_conf=rng.uniform(0, 0.3)))
        objects = [o for o in objects if o.death > i]
        for o in objects:
            o.x += o.vx + rng.normal(0, 0.5)
            o.y += o.vy + rng.normal(0, 0.5)
            o.w = max(8.0, o.w + rng.normal(0, 0.3))
            o.h = max(8.0, o.h + rng.normal(0, 0.3))
            if rng.random() < 0.03:
                o.occluded_until = i + int(rng.integers(1, 25))
        if rng.random() < 0.03:  # dropped frames: the next frame's time jumps
            out.append(None)
            continue
        boxes, confs = [], []
        for o in objects:
            if o.occluded_until >= i or rng.random() < 0.05:
                continue
            noise = rng.normal(0, 1.0, 4)
            boxes.append([o.x + noise[0], o.y + noise[1], o.x + o.w + noise[2], o.y + o.h + noise[3]])
            confs.append(rng.uniform(0.1, 0.6) if rng.random() < o.low_conf else rng.uniform(0.55, 0.99))
        for _ in range(int(rng.poisson(0.7))):  # spurious detections
            x, y = rng.uniform(0, 1200), rng.uniform(0, 700)
            boxes.append([x, y, x + rng.uniform(10, 80), y + rng.uniform(10, 80)])
            confs.append(rng.uniform(0.1, 0.9))
        if rng.random() < 0.02 and boxes:  # an exact duplicate box: ties in the assignment
            boxes.append(list(boxes[0]))
            confs.append(confs[0])
        t = i / fps + (rng.normal(0, 0.003) if rng.random() < 0.2 else 0.0)
        out.append((t, np.array(boxes, np.float32).reshape(-1, 4), np.array(confs, np.float32)))
    return out


def _monotonic(frames: list[Frame | None]) -> list[Frame | None]:
    """Jittered times made strictly increasing (as the stage's clock guarantees)."""
    last = -1.0
    out: list[Frame | None] = []
    for f in frames:
        if f is not None:
            t = max(f[0], last + 1e-3)
            last = t
            f = (t, f[1], f[2])
        out.append(f)
    return out


def _reference_step(tracker: trackers.ByteTrackTracker, frame: Frame) -> npt.NDArray[np.int64]:
    t, xyxy, conf = frame
    dets = sv.Detections(xyxy=xyxy, confidence=conf, class_id=np.zeros(len(conf), np.int64),
                         data={"row": np.arange(len(conf))})
    tracked = tracker.update(dets, timestamp=t)
    ids = np.full(len(conf), -1, np.int64)
    if len(tracked):
        ids[tracked.data["row"]] = tracked.tracker_id
    return ids


def _run_parity(seed: int, sources: int, frames: int, params: ByteTrackParams) -> int:
    """Feed seeded scenes to both; assert parity at every frame. Returns how many confirmed
    track ids were handed out (so a test can check the scene is not trivial)."""
    rng = np.random.default_rng(seed)
    rates = [float(rng.choice([25.0, 30.0, 29.97, 15.0])) for _ in range(sources)]
    scenes = [_monotonic(make_scene(rng, frames, fps)) for fps in rates]
    kwargs = {"lost_track_buffer": params.lost_track_buffer,
              "track_activation_threshold": params.track_activation_threshold,
              "minimum_consecutive_frames": params.minimum_consecutive_frames,
              "minimum_iou_threshold": params.minimum_iou_threshold,
              "high_conf_det_threshold": params.high_conf_det_threshold}
    refs = [trackers.ByteTrackTracker(frame_rate=fps, **kwargs) for fps in rates]
    batched = BatchedByteTrack(params)
    slots = [batched.add_source(fps) for fps in rates]
    confirmed = 0
    for i in range(frames):
        todo = [s for s in range(sources) if scenes[s][i] is not None]
        batch: list[SourceFrame] = []
        for s in todo:
            t, xyxy, conf = scenes[s][i]  # type: ignore[misc]
            batch.append(SourceFrame(slots[s], xyxy, conf, t))
        got = batched.step(batch)
        for s, ids in zip(todo, got, strict=True):
            frame = scenes[s][i]
            assert frame is not None
            want = _reference_step(refs[s], frame)
            np.testing.assert_array_equal(ids, want, err_msg=f"seed {seed} source {s} frame {i}: ids")
            ref_ids = np.array([tr.tracker_id for tr in refs[s].tracks], np.int64)
            ref_boxes = np.array([tr.get_state_bbox() for tr in refs[s].tracks]).reshape(-1, 4)
            b_ids, b_boxes = batched.tracks(slots[s])
            np.testing.assert_array_equal(b_ids, ref_ids, err_msg=f"seed {seed} source {s} frame {i}: tracks")
            np.testing.assert_allclose(b_boxes, ref_boxes, rtol=0, atol=1e-4,
                                       err_msg=f"seed {seed} source {s} frame {i}: boxes")
    for s in range(sources):
        confirmed += refs[s]._next_track_id
    return confirmed


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_batched_tracker_gives_the_reference_tracks_with_default_parameters(seed: int) -> None:
    confirmed = _run_parity(seed, sources=5, frames=300, params=ByteTrackParams())
    assert confirmed >= 20  # the scenes have many tracks, not a trivial one


@pytest.mark.parametrize("seed, params", [
    (10, ByteTrackParams(lost_track_buffer=8, minimum_consecutive_frames=1)),
    (11, ByteTrackParams(lost_track_buffer=60, minimum_consecutive_frames=3, high_conf_det_threshold=0.5,
                         track_activation_threshold=0.5, minimum_iou_threshold=0.3)),
    (12, ByteTrackParams(lost_track_buffer=1)),  # the least the stage passes
])
def test_the_batched_tracker_gives_the_reference_tracks_with_other_parameters(seed: int,
                                                                             params: ByteTrackParams) -> None:
    assert _run_parity(seed, sources=3, frames=200, params=params) > 0


def test_a_reset_source_starts_as_a_new_reference_tracker() -> None:
    rng = np.random.default_rng(7)
    scene = [f for f in _monotonic(make_scene(rng, 120, 30.0)) if f is not None]
    ref = trackers.ByteTrackTracker(frame_rate=30.0)
    bt = BatchedByteTrack(ByteTrackParams())
    slot = bt.add_source(30.0)
    other = bt.add_source(30.0)
    for k, (t, xyxy, conf) in enumerate(scene):
        if k == 60:
            ref = trackers.ByteTrackTracker(frame_rate=30.0)
            bt.reset_source(slot, 30.0)
            assert bt.track_count(slot) == 0
        (ids, _) = bt.step([SourceFrame(slot, xyxy, conf, t), SourceFrame(other, xyxy[:1], conf[:1], t)])
        np.testing.assert_array_equal(ids, _reference_step(ref, (t, xyxy, conf)))
        np.testing.assert_array_equal(bt.confirmed_ids(slot),
                                      [tr.tracker_id for tr in ref.tracks if tr.tracker_id >= 0])
    bt.remove_source(slot)
    assert bt.track_count(slot) == 0 and bt.track_count(other) > 0


def test_a_frame_earlier_than_the_last_is_skipped_and_a_repeated_time_does_not_predict() -> None:
    bt = BatchedByteTrack(ByteTrackParams(minimum_consecutive_frames=1))
    slot = bt.add_source(10.0)
    box = np.array([[0.0, 0.0, 10.0, 10.0]], np.float32)
    conf = np.array([0.9], np.float32)
    bt.step([SourceFrame(slot, box, conf, 1.0)])
    (ids,) = bt.step([SourceFrame(slot, box, conf, 0.5)])
    assert ids.tolist() == [-1] and bt.track_count(slot) == 1 and bt.hits[0] == 1  # nothing happened
    (ids,) = bt.step([SourceFrame(slot, box, conf, 1.0)])
    assert ids.tolist() == [0] and bt.age[0] == 0  # matched without a predict
    with pytest.raises(ValueError):
        bt.step([SourceFrame(slot, box, conf, 2.0), SourceFrame(slot, box, conf, 2.1)])


def test_the_iou_is_supervisions() -> None:
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 100, (50, 2))
    a = np.concatenate([a, a + rng.uniform(0, 50, (50, 2))], axis=1)
    b = (a + rng.normal(0, 10, a.shape)).astype(np.float32)
    b[3] = b[3, [2, 3, 0, 1]]  # a malformed box
    want = sv.box_iou_batch(a, b)
    got = box_iou_pairs(np.repeat(a, len(b), axis=0), np.tile(b, (len(a), 1))).reshape(len(a), len(b))
    np.testing.assert_array_equal(got, want)


def test_a_nominal_step_keeps_the_one_frame_noise_and_a_gap_scales_it() -> None:
    mean = np.zeros((3, 8, 1))
    mean[:, 4:, 0] = 1.0
    cov = np.broadcast_to(np.eye(8), (3, 8, 8)).copy()
    new_mean, new_cov = kalman_predict(mean, cov, np.array([1.0, 1.003 * 30 / 30, 3.0]), np.full(3, 30.0))
    assert new_mean[2, 0, 0] == 3.0 and new_mean[0, 0, 0] == 1.0
    assert new_cov[0, 4, 4] == pytest.approx(1.01) and new_cov[1, 4, 4] == pytest.approx(1.01)
    assert new_cov[2, 4, 4] == pytest.approx(1.0 + 0.01 * 9)  # DWNA: sigma² dt²
