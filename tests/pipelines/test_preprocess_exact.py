"""preprocess.resize_filter: opencv: the decode paths give OpenCV's letterbox exactly, in torch."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from engines.model_info import ModelInfo
from operators.boxes import letterbox_geometry
from operators.letterbox import letterbox_reference
from pipelines.preprocess import (
    HostPreprocessor,
    PreprocessSpec,
    finish_preprocess,
    letterbox_frames,
    preprocess,
    resolve_resize_filter,
)
from pipelines.segments import plan_segments
from pipelines.video_decoding import FileDecoder, SegmentBatch, SegmentDecoder
from streams.config import PreprocessConfig
from streams.schema import from_dict
from streams.sources.files import VideoFile
from streams.sources.probe import probe_video
from tests.optional import require_module

require_module("cv2", 'the tracking extra: pip install -e ".[tracking]" (opencv-python-headless)')

EXACT = PreprocessConfig(resize_filter="opencv")


def _textured(i: int, w: int, h: int) -> np.ndarray:
    """Fine diagonal texture moving with ``i``: bilinear filters disagree on it (flat frames hide it)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 37 + yy * 23 + i * 11) % 256
    return np.stack([base, (base * 3) % 256, 255 - base], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("exact")
    out = {}
    for name, codec, (w, h) in (("h264", "libx264", (200, 112)), ("vp9", "libvpx-vp9", (200, 112))):
        path = d / f"{name}.{'mp4' if codec == 'libx264' else 'webm'}"
        with av.open(str(path), "w") as c:
            s = c.add_stream(codec, rate=25)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.options = {"g": "6"}
            for i in range(12):
                for p in s.encode(av.VideoFrame.from_ndarray(_textured(i, w, h), format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        out[name] = path
    return out


def _expected(frames: np.ndarray, geom_hw: tuple[int, int]) -> np.ndarray:
    """cv2's letterbox of ``frames``: ``uint8 [N, 3, h, w]``."""
    return np.stack([letterbox_reference(f, geom_hw) for f in frames]).transpose(0, 3, 1, 2)


def _pixels(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Model input in 0..1 (float32 or float16) back to the uint8 pixels it was made from."""
    v = x.float().numpy() if isinstance(x, torch.Tensor) else x.astype(np.float32)
    return np.rint(v * 255).astype(np.uint8)


def _pyav_rgb(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def test_the_option_is_validated_and_resolved_per_model() -> None:
    assert from_dict(PreprocessConfig, {}, "preprocess").resize_filter == "auto"
    with pytest.raises(Exception, match=r"preprocess\.resize_filter"):
        from_dict(PreprocessConfig, {"resize_filter": "cubic"}, "preprocess")
    ultralytics = ModelInfo((), (320, 320), "auto", head="Detect")
    other = ModelInfo((), (640, 640), "auto")
    auto = PreprocessConfig()
    assert resolve_resize_filter(auto, ultralytics).resize_filter == "opencv"
    assert resolve_resize_filter(auto, other).resize_filter == "dali"
    assert resolve_resize_filter(PreprocessConfig(resize_filter="dali"), ultralytics).resize_filter == "dali"
    assert resolve_resize_filter(EXACT, other).resize_filter == "opencv"


def test_pyav_cpu_path_gives_opencvs_letterbox(clips: dict[str, Path]) -> None:
    path = clips["h264"]
    info = probe_video(path)
    geom = letterbox_geometry(info.width, info.height, 96, 96)
    want = _expected(_pyav_rgb(path), (96, 96))
    got: list[np.ndarray] = []
    with FileDecoder(VideoFile(path, "a"), info, PreprocessSpec(options=EXACT), geom, batch=5) as dec:
        for batch in dec:
            assert isinstance(batch.images, torch.Tensor) and batch.images.shape[1:] == (3, 96, 96)
            got.append(batch.images.numpy())
    np.testing.assert_array_equal(_pixels(np.concatenate(got)), want)
    # DALI's filter, the same way, is not OpenCV's: the comparison above can fail
    with FileDecoder(VideoFile(path, "a"), info, PreprocessSpec(), geom, batch=12) as dec:
        dali = np.concatenate([np.asarray(b.images.as_tensor())[0] for b in dec])
    assert (_pixels(dali) != want).mean() > 0.01


def test_dali_cpu_reader_path_gives_opencvs_letterbox_of_its_frames(clips: dict[str, Path]) -> None:
    """The reader's own decoded frames (kept as source frames) letterboxed by cv2 = the model input."""
    path = clips["vp9"]
    info = probe_video(path)
    geom = letterbox_geometry(info.width, info.height, 128, 64)  # a 128x64 canvas: padded left and right
    segs = plan_segments([(VideoFile(path, "v"), info, geom)], sessions=1, chunk=6)[0]
    spec = PreprocessSpec(dtype="float16", layout="NHWC", options=EXACT, keep_source=True)
    batches = 0
    with SegmentDecoder(segs, spec, batch=4, kind="dali-cpu") as dec:
        for ev in dec:
            if not isinstance(ev, SegmentBatch):
                continue
            batches += 1
            x = ev.batch.images
            assert isinstance(x, torch.Tensor) and x.dtype == torch.float16 and x.shape == (4, 64, 128, 3)
            full = np.asarray(ev.batch.source_frames.as_tensor())[0]
            np.testing.assert_array_equal(_pixels(x), _expected(full, (64, 128)).transpose(0, 2, 3, 1))
    assert batches == 4  # 12 frames in segments of 6, batches of 4: two per segment


@pytest.mark.parametrize("layout,dtype,opts", [
    ("NCHW", "float32", PreprocessConfig()),
    ("NHWC", "float16", PreprocessConfig(mean=(10.0, 20.0, 30.0), std=(50.0, 60.0, 70.0), channel_order="bgr",
                                         pad_value=0)),
])
def test_pad_normalise_and_layout_as_the_dali_graph(layout: str, dtype: str, opts: PreprocessConfig) -> None:
    """Where no resize is needed the two filters give the same input: padding, channel order,
    normalisation, dtype and layout are the DALI graph's."""
    from nvidia.dali import fn, pipeline_def, types

    frames = np.stack([_textured(i, 64, 40) for i in range(3)])
    geom = letterbox_geometry(64, 40, 64, 64)
    spec = PreprocessSpec(dtype=dtype, layout=layout, options=opts)  # type: ignore[arg-type]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def graph():  # type: ignore[no-untyped-def]
        return preprocess(fn.external_source(name="f", layout="FHWC", dtype=types.UINT8), geom, spec)

    pipe = graph()
    pipe.build()
    (dali,) = pipe.run(f=[frames])
    ours = letterbox_frames(torch.from_numpy(frames), geom, spec)
    want = np.asarray(dali.as_tensor())[0]
    assert ours.shape == want.shape and str(ours.dtype) == f"torch.{dtype}" and ours.is_contiguous()
    np.testing.assert_allclose(ours.numpy().astype(np.float32), want.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_host_preprocessor_takes_either_filter() -> None:
    frame = _textured(0, 300, 170)
    exact = HostPreprocessor((128, 128), EXACT, stride=32)
    g = exact.geometry(300, 170)
    assert (g.dst_h, g.dst_w) == (96, 128)
    np.testing.assert_array_equal(_pixels(exact([frame, frame])), _expected(np.stack([frame, frame]), (96, 128)))
    dali = HostPreprocessor((128, 128), PreprocessConfig(resize_filter="dali"), stride=32)([frame])
    assert dali.shape == (1, 3, 96, 128) and (_pixels(dali) != _expected(frame[None], (96, 128))).mean() > 0.01


def test_finish_preprocess_leaves_the_dali_filters_output_alone() -> None:
    sentinel = object()
    assert finish_preprocess(sentinel, letterbox_geometry(4, 4, 4, 4), PreprocessSpec(), None) is sentinel


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["dali-gpu", "pyav"])
def test_gpu_paths_give_opencvs_letterbox_on_the_batch_stream(kind: str, clips: dict[str, Path]) -> None:
    """NVDEC (DALI's reader) or PyAV frames letterboxed in torch on the decode stream: the
    host-side cv2 letterbox of the same decoded frames."""
    path = clips["h264"]
    info = probe_video(path)
    geom = letterbox_geometry(info.width, info.height, 96, 64)
    spec = PreprocessSpec(dtype="float16", layout="NCHW", options=EXACT, keep_source=True)
    stream = torch.cuda.Stream()
    got: list[tuple[np.ndarray, np.ndarray]] = []
    if kind == "dali-gpu":
        segs = plan_segments([(VideoFile(path, "g"), info, geom)], sessions=1, chunk=6)[0]
        with SegmentDecoder(segs, spec, batch=4, kind="dali-gpu", device_id=0, stream=stream.cuda_stream) as sdec:
            for ev in sdec:
                if isinstance(ev, SegmentBatch):
                    stream.synchronize()
                    assert ev.batch.images.is_cuda
                    full = np.asarray(ev.batch.source_frames.as_cpu().as_tensor())[0]
                    got.append((ev.batch.images.cpu().numpy(), full))
    else:
        with FileDecoder(VideoFile(path, "p"), info, spec, geom, batch=5, device_id=0,
                         stream=stream.cuda_stream) as fdec:
            for batch in fdec:
                stream.synchronize()
                assert batch.images.is_cuda
                got.append((batch.images.cpu().numpy(), batch.source_frames))
    assert got
    for images, full in got:
        valid = len(full)
        np.testing.assert_array_equal(_pixels(images[:valid]), _expected(full, (64, 96)))


def test_a_cpu_job_runs_with_the_opencv_filter(clip_dir: Path, bright_model: Path, tmp_path: Path) -> None:
    """``fovea run`` with ``preprocess.resize_filter: opencv``: the PyAV path (H.264) and DALI's
    CPU reader (VP9) hand torch-letterboxed batches to the engine; every frame has its record
    and the boxes land on the square."""
    import json

    from pipelines.cli import main
    from tests.media import pyav_frames, square_position

    cfg = tmp_path / "job.yaml"
    cfg.write_text("preprocess:\n  resize_filter: opencv\n")
    out = tmp_path / "out"
    code = main(["--log-level", "WARNING", "run", str(cfg), "--source", str(clip_dir / "landscape.mp4"),
                 "--source", str(clip_dir / "vp9.webm"), "--model", str(bright_model), "--out", str(out),
                 "--device", "cpu", "--no-progress"])
    assert code == 0
    records = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    for name in ("landscape.mp4", "vp9.webm"):
        mine = [r for r in records if r["source"] == name]
        assert sorted((r["frame_index"], r["pts"]) for r in mine) == pyav_frames(clip_dir / name)
    square = [r for r in records if r["source"] == "landscape.mp4"]
    for r in square:
        x1, y1, x2, y2 = square_position(r["frame_index"], r["width"], r["height"])
        bx1, by1, bx2, by2 = max(r["detections"], key=lambda d: d["confidence"])["box"]
        assert x1 - 4 <= (bx1 + bx2) / 2 <= x2 + 4 and y1 - 4 <= (by1 + by2) / 2 <= y2 + 4, r["frame_index"]
