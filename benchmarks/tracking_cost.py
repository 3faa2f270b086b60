"""CPU cost per frame of ByteTrack: the ``trackers`` reference against the batched tracker.

Usage::

    python -m benchmarks.tracking_cost --sources 100 --frames 300 --detections 10

Seeded synthetic detections (``--detections`` objects per frame per source, moving with
noise, some missed, confidences spread over both association stages) are tracked by:

- ``reference``: one ``trackers.ByteTrackTracker`` per source, ``update`` per frame (with
  the ``supervision.Detections`` it needs), as the stage's reference implementation does;
- ``batched-per-source``: :class:`~operators.batched_tracking.BatchedByteTrack`, one
  ``step`` per source frame, as the stage's batched implementation does;
- ``batched-all-sources``: one ``step`` per time instant carrying every source's frame;
- ``stage-reference`` / ``stage-batched``: the whole :class:`~pipelines.tracking.TrackerStage`
  (clock, track book, output records) fed through ``PerSourceStages``.

Each prints milliseconds per source frame (wall time on this thread / source frames) and
the source frames per second one thread sustains. The tracker ids of the reference and the
batched runs are compared, so a figure is never reported for diverging trackers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from operators.batched_tracking import BatchedByteTrack, ByteTrackParams, SourceFrame
from pipelines.graph import PerSourceStages
from pipelines.tracking import TrackerStage, import_trackers
from streams.detections import Detections
from streams.frames import FrameMeta, FrameResult
from streams.tracker_config import TrackerConfig

FPS = 30.0
TIME_BASE = (1, 90000)
Scene = list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]  # per frame: xyxy (N, 4), confidence (N,)


def make_scenes(sources: int, frames: int, detections: int, seed: int = 0) -> list[Scene]:
    """Per source, per frame: about ``detections`` boxes of objects moving with noise (5 % missed)."""
    rng = np.random.default_rng(seed)
    scenes: list[Scene] = []
    for _ in range(sources):
        pos = rng.uniform(0, 1200, (detections, 2))
        size = rng.uniform(20, 120, (detections, 2))
        vel = rng.normal(0, 3, (detections, 2))
        conf = rng.uniform(0.3, 0.95, detections).astype(np.float32)
        scene: Scene = []
        for _ in range(frames):
            pos += vel + rng.normal(0, 0.5, pos.shape)
            seen = rng.random(detections) > 0.05
            xy = pos[seen] + rng.normal(0, 1.0, (int(seen.sum()), 2))
            boxes = np.concatenate([xy, xy + size[seen]], axis=1).astype(np.float32)
            scene.append((boxes, conf[seen].copy()))
        scenes.append(scene)
    return scenes


def run_reference(scenes: list[Scene], params: ByteTrackParams) -> list[list[npt.NDArray[np.int64]]]:
    trackers, sv = import_trackers()
    refs = [trackers.ByteTrackTracker(frame_rate=FPS, **vars(params)) for _ in scenes]
    out: list[list[npt.NDArray[np.int64]]] = [[] for _ in scenes]
    for i in range(len(scenes[0])):
        for s, scene in enumerate(scenes):
            xyxy, conf = scene[i]
            dets = sv.Detections(xyxy=xyxy, confidence=conf, class_id=np.zeros(len(conf), np.int64),
                                 data={"row": np.arange(len(conf))})
            tracked = refs[s].update(dets, timestamp=i / FPS)
            ids = np.full(len(conf), -1, np.int64)
            if len(tracked):
                ids[tracked.data["row"]] = tracked.tracker_id
            out[s].append(ids)
    return out


def run_batched(scenes: list[Scene], params: ByteTrackParams, together: bool) -> list[list[npt.NDArray[np.int64]]]:
    bt = BatchedByteTrack(params)
    slots = [bt.add_source(FPS) for _ in scenes]
    out: list[list[npt.NDArray[np.int64]]] = [[] for _ in scenes]
    for i in range(len(scenes[0])):
        frames = [SourceFrame(slots[s], *scene[i], i / FPS) for s, scene in enumerate(scenes)]
        if together:
            for s, ids in enumerate(bt.step(frames)):
                out[s].append(ids)
        else:
            for s, frame in enumerate(frames):
                out[s] += bt.step([frame])
    return out


def run_stage(scenes: list[Scene], implementation: str) -> list[list[npt.NDArray[np.int64]]]:
    results = [[FrameResult(FrameMeta(f"cam{s}", f"cam{s}", i, round(i / FPS * TIME_BASE[1]), TIME_BASE, 1280, 720),
                            Detections(xyxy, conf, np.zeros(len(conf), np.int64), ("object",)))
                for i, (xyxy, conf) in enumerate(scene)] for s, scene in enumerate(scenes)]
    out: list[list[npt.NDArray[np.int64]]] = [[] for _ in scenes]
    with TrackerStage(TrackerConfig(implementation=implementation)) as stage:  # type: ignore[arg-type]
        after = PerSourceStages([stage], [])
        for i in range(len(scenes[0])):
            for r in after.add([rs[i] for rs in results]):
                assert r.detections.track_id is not None
                out[int(r.frame.source_id[3:])].append(r.detections.track_id)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=int, default=100)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--detections", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    scenes = make_scenes(args.sources, args.frames, args.detections, args.seed)
    # the stage's defaults: ByteTrack's thresholds, a 1 s buffer (30 frames of 30 fps)
    params = ByteTrackParams(lost_track_buffer=30)
    runs: dict[str, Callable[[], list[list[npt.NDArray[np.int64]]]]] = {
        "reference": lambda: run_reference(scenes, params),
        "batched-per-source": lambda: run_batched(scenes, params, together=False),
        "batched-all-sources": lambda: run_batched(scenes, params, together=True),
        "stage-reference": lambda: run_stage(scenes, "reference"),
        "stage-batched": lambda: run_stage(scenes, "batched"),
    }
    frames = args.sources * args.frames
    print(f"{args.sources} sources x {args.frames} frames, ~{args.detections} detections per frame "
          f"({frames} source frames)")
    warm = [scene[: min(20, args.frames)] for scene in scenes[: min(5, args.sources)]]
    run_reference(warm, params), run_batched(warm, params, together=True), run_stage(warm, "batched")  # warm up
    ids: dict[str, list[list[npt.NDArray[np.int64]]]] = {}
    base = None
    for name, run in runs.items():
        start = time.perf_counter()
        ids[name] = run()
        ms = (time.perf_counter() - start) * 1e3 / frames
        base = base or ms
        print(f"{name:>20}: {ms:7.4f} ms per source frame, {1e3 / ms:9.0f} source frames/s, "
              f"x{base / ms:5.1f} vs reference")
    for name in ("batched-per-source", "batched-all-sources"):
        same = all(np.array_equal(a, b) for ra, rb in zip(ids["reference"], ids[name], strict=True)
                   for a, b in zip(ra, rb, strict=True))
        print(f"{name} ids equal to the reference: {same}")
        if not same:
            return 1
    same = all(np.array_equal(a, b) for ra, rb in zip(ids["stage-reference"], ids["stage-batched"], strict=True)
               for a, b in zip(ra, rb, strict=True))
    print(f"stage-batched ids equal to stage-reference: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
