"""INT8 calibration data: re-batching, frames from videos through the caller's frame
preprocessor (the run path's: the pipeline's letterboxing), calibrator object.

The calibrator's base class comes from TensorRT, which cannot be installed here;
:class:`trt_standin.FakeTensorRT` stands in for the ``tensorrt`` module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.tensorrt.calibrator import (
    calibration_id,
    calibrator_available,
    make_entropy_calibrator,
    read_video_frames,
    rebatch,
    video_calibration_source,
)
from pipelines.preprocess import HostPreprocessor
from streams.config import PreprocessConfig
from streams.errors import ShapeError
from tests.engines.tensorrt.trt_standin import CpuStaging, FakeTensorRT


def _write_video(path: Path, frames: int = 20, size: tuple[int, int] = (48, 80)) -> Path:
    import av  # a dependency of the project: never a reason to skip
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((*size, 3), i * 10, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_rebatch_regroups_and_drops_the_tail() -> None:
    parts = [np.full((n, 3, 4, 4), i, np.float64) for i, n in enumerate((3, 1, 4, 2))]
    out = list(rebatch(parts, 4, (3, 4, 4)))
    assert [b.shape for b in out] == [(4, 3, 4, 4), (4, 3, 4, 4)]
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for b in out)
    assert [b[:, 0, 0, 0].tolist() for b in out] == [[0, 0, 0, 1], [2, 2, 2, 2]]


def test_rebatch_accepts_single_images_and_checks_shapes() -> None:
    assert len(list(rebatch([np.zeros((3, 4, 4))] * 2, 2, (3, 4, 4)))) == 1
    with pytest.raises(ShapeError, match=r"expected \[N, 3, 4, 4\]"):
        list(rebatch([np.zeros((1, 3, 4, 5))], 1, (3, 4, 4)))


def letterbox(frame: np.ndarray, size: tuple[int, int], pre: PreprocessConfig) -> np.ndarray:
    """One frame through the frame preprocessor the run path and build-engine supply."""
    return HostPreprocessor(size, pre)([frame])[0]


def test_letterbox_keeps_aspect_and_pads() -> None:
    frame = np.full((40, 80, 3), 255, np.uint8)
    out = letterbox(frame, (64, 64), PreprocessConfig())
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    assert out[:, 32, 32] == pytest.approx([1.0, 1.0, 1.0])  # image: 255 / 255
    assert out[:, 0, 32] == pytest.approx([114 / 255] * 3)  # border: pad value
    assert out[:, 16:48, :].min() == pytest.approx(1.0)  # 80x40 → 64x32, centred


def test_letterbox_stretch_bgr_and_normalisation() -> None:
    frame = np.zeros((10, 20, 3), np.uint8)
    frame[..., 0] = 200  # red
    pre = PreprocessConfig(resize="stretch", channel_order="bgr", mean=(0, 0, 100), std=(1, 1, 2))
    out = letterbox(frame, (8, 8), pre)
    assert out[:, 4, 4] == pytest.approx([0.0, 0.0, 50.0])  # red lands last, (200 - 100) / 2


def test_frames_from_videos_are_spread_and_bounded(tmp_path: Path) -> None:
    a = _write_video(tmp_path / "a.mp4", frames=20)
    b = _write_video(tmp_path / "b.mp4", frames=20)
    frames = list(read_video_frames([a, b], max_frames=6))
    assert len(frames) == 6
    assert all(f.shape == (48, 80, 3) and f.dtype == np.uint8 for f in frames)
    # three per file, taken every 6th frame: brightness 0, 60, 120 in each
    assert [round(f.mean() / 10) for f in frames] == [0, 6, 12, 0, 6, 12]


def test_video_source_yields_preprocessed_batches(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "a.mp4", frames=10)
    sizes: list[tuple[int, int]] = []

    def preprocessor(size: tuple[int, int]) -> HostPreprocessor:
        sizes.append(size)
        return HostPreprocessor(size, PreprocessConfig(), max_batch=4)

    source = video_calibration_source([video], max_frames=10, preprocessor=preprocessor, batch_size=4)
    batches = list(source((3, 32, 48)))
    assert [b.shape for b in batches] == [(4, 3, 32, 48), (4, 3, 32, 48), (2, 3, 32, 48)]
    assert sizes == [(32, 48)]  # one preprocessor, for the engine's (H, W)
    with pytest.raises(ShapeError, match="3-channel"):
        list(source((1, 32, 32)))


def test_calibration_id_is_stable_and_tracks_the_files(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "a.mp4", frames=5)
    first = calibration_id([video], 100)
    assert first == calibration_id([str(video)], 100)
    assert first != calibration_id([video], 200)
    _write_video(video, frames=8)
    assert first != calibration_id([video], 100)


def test_calibrator_object(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    assert calibrator_available(fake_trt)
    staging = CpuStaging()
    batches = [np.ones((2, 3, 4, 4), np.float32)] * 3
    calib = make_entropy_calibrator(
        fake_trt,
        batches,
        batch_shape=(3, 3, 4, 4),
        cache_path=tmp_path / "c.calib",
        staging=staging,
    )
    assert fake_trt.IInt8EntropyCalibrator2 in type(calib).__mro__
    assert calib.read_calibration_cache() is None
    ptrs = [calib.get_batch(["images"]) for _ in range(3)]
    assert ptrs[2] is None  # 6 samples → two batches of 3
    assert [p[0] for p in ptrs[:2]] == [t.data_ptr() for t in staging.buffers]
    assert staging.closed
    calib.write_calibration_cache(memoryview(b"scales"))
    assert calib.read_calibration_cache() == b"scales"
