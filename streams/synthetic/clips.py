"""Encoding synthetic scenes to video files with their ground truth: :func:`write_clip`, :func:`make_clips`.

PyAV is imported when a clip is written, not at import time: rendering alone needs only
NumPy (the detector's training renders frames in memory).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from streams.synthetic.counting import TrajectoryRecorder, tracking_truth
from streams.synthetic.render import render_scene
from streams.synthetic.spec import CODECS, Codec, SceneSpec
from streams.synthetic.truth import frame_record, write_ground_truth

logger = logging.getLogger(__name__)

_DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((640, 360), (480, 360), (360, 640))


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _encoder_options(spec: SceneSpec) -> dict[str, str]:
    """Encoder settings per codec: CRF rate control; VP9 in libvpx's fast realtime mode."""
    if spec.codec == "h264":
        return {"crf": str(23 if spec.crf is None else spec.crf)}
    if spec.codec == "hevc":
        return {"crf": str(28 if spec.crf is None else spec.crf), "x265-params": "log-level=error"}
    return {
        "crf": str(32 if spec.crf is None else spec.crf), "b": "0",
        "deadline": "realtime", "cpu-used": "8", "row-mt": "1",
    }


def write_clip(path: str | Path, spec: SceneSpec) -> Path:
    """Render ``spec`` and encode it to ``path`` with PyAV; write ``<stem>.gt.json`` beside it.

    ``h264`` uses libx264 with its default settings (B-frames on) in .mp4, ``vp9``
    libvpx-vp9 in .webm, ``hevc`` libx265 in .mp4. A path without a suffix gets the
    codec's. The keyframe interval is ``spec.gop``. A spec with ``lines`` or ``zones``
    also gets their exact counts in the ground truth (``"tracking"``), one with
    ``attributes`` each box's attributes (``"attributes"``). Returns the clip's path.
    """
    import av  # local: the renderer itself needs only NumPy

    encoder, suffix = CODECS[spec.codec]
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    if encoder not in av.codecs_available:
        raise RuntimeError(f"write_clip: this PyAV/FFmpeg build has no {encoder} encoder")
    rate = _fps_fraction(spec.fps)
    frames_gt: list[dict[str, Any]] = []
    recorder = TrajectoryRecorder(spec.width, spec.height) if spec.lines or spec.zones else None
    with av.open(str(path), "w") as container:
        stream: Any = container.add_stream(encoder, rate=rate, options=_encoder_options(spec))
        stream.width, stream.height = spec.width, spec.height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = spec.gop
        if spec.codec == "hevc":
            stream.codec_tag = "hvc1"
        for i, (rgb, boxes) in enumerate(render_scene(spec, recorder)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
            frames_gt.append(frame_record(i, boxes, spec.identities, spec.attributes))
        for packet in stream.encode(None):
            container.mux(packet)
    tracking = None if recorder is None else tracking_truth(recorder.trajectories(), spec.lines, spec.zones,
                                                            spec.fps)
    write_ground_truth(path, spec, frames_gt, tracking)
    logger.debug("wrote %s (%d frames, seed %d)", path, spec.num_frames, spec.seed)
    return path


def make_clips(
    folder: str | Path,
    n: int,
    base_seed: int = 10_000,
    *,
    sizes: Sequence[tuple[int, int]] = _DEFAULT_SIZES,
    num_frames: int = 60,
    codec: Codec = "h264",
    empty_first_frames: int | Sequence[int] = 0,
    **spec_kwargs: Any,
) -> list[Path]:
    """Write ``n`` clips ``clip_000.<ext>`` ... into ``folder``, cycling through ``sizes``.

    Clip ``i`` uses seed ``base_seed + i`` (the detector trained on seeds below 10 000, so
    the default seeds are held out). ``empty_first_frames`` may be a sequence cycled like
    ``sizes``. Other keyword arguments go to :class:`SceneSpec`. Returns the clip paths.
    """
    folder = Path(folder)
    empties = [empty_first_frames] if isinstance(empty_first_frames, int) else list(empty_first_frames)
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        spec = SceneSpec(
            width=w, height=h, num_frames=num_frames, seed=base_seed + i, codec=codec,
            empty_first_frames=empties[i % len(empties)], **spec_kwargs,
        )
        paths.append(write_clip(folder / f"clip_{i:03d}{CODECS[codec][1]}", spec))
    return paths
