"""The live GPU path with a cascade, the parts that run without a GPU: model input made from
full-size NV12 frames (CPU tensors), the full-size NVDEC target and its bound
(``live.max_source_size``), the ring slots sized for it, and which decode paths a cascade
is refused on, with the reason."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from operators.boxes import even_letterbox_geometry
from operators.color import nv12_letterbox, nv12_resize_reference
from pipelines.ingest import IngestSettings, _SlotRing, ring_frames_for
from pipelines.live import LiveRunner
from pipelines.live_decode import LiveBatchPipeline, Nv12SourceFrame
from pipelines.nvdec import DecodedSurface, full_size_target
from pipelines.preprocess import PreprocessSpec
from streams.config import parse_config
from streams.errors import ConfigError, DecodeError, SourceError
from streams.frames import FrameMeta
from streams.live.config import parse_live_config
from streams.live.types import LiveFrame


def _item(sid: str, w: int, h: int, nv12: np.ndarray, matrix: int = 1) -> LiveFrame:
    meta = FrameMeta(sid, sid, 0, 0, (1, 30), w, h)
    return LiveFrame(meta, DecodedSurface(torch.from_numpy(nv12), 0, w, h, matrix))


def _nv12(seed: int, w: int, h: int) -> np.ndarray:
    """A smooth random NV12 frame (smooth: resizing it does not alias)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(20, 235, (h * 3 // 2 // 6 + 1, w // 8 + 1)).astype(np.float32)
    up = np.kron(coarse, np.ones((6, 8), np.float32))[: h * 3 // 2, :w]
    return up.astype(np.uint8)


def test_full_size_frames_give_the_letterboxed_input_and_ride_along_as_source_frames() -> None:
    size = (64, 64)
    frames = [(128, 96), (96, 160), (64, 48)]  # (w, h): down 2x, portrait down, already small (upscaled: none)
    items = [_item(f"s{i}", w, h, _nv12(i, w, h), matrix=1 if i else 2) for i, (w, h) in enumerate(frames)]
    spec = PreprocessSpec(dtype="float32", layout="NCHW", keep_source=True)
    pipe = LiveBatchPipeline("packets", spec, size, max_batch=4, device_id=0)  # CPU tensors: no GPU touched
    batch = pipe.run(items)
    geoms = [even_letterbox_geometry(w, h, 64, 64) for w, h in frames]
    assert batch.row_geometries == geoms
    ref = [torch.from_numpy(nv12_resize_reference(it.image.nv12.numpy(), (g.resized_h, g.resized_w)))  # type: ignore[union-attr]
           for it, g in zip(items, geoms, strict=True)]
    want = nv12_letterbox(ref, geoms, size, (0, 0, 0), (255, 255, 255), 114, torch.float32, channels_last=False,
                          standards=[601, 709, 709])
    diff = (batch.images - want).abs() * 255
    assert diff.max() <= 2.5 and diff.mean() < 0.05, (float(diff.max()), float(diff.mean()))
    src = batch.source_frames
    assert isinstance(src, list) and all(isinstance(f, Nv12SourceFrame) for f in src)
    assert [f.shape for f in src] == [(96, 128, 3), (160, 96, 3), (48, 64, 3)]
    assert [f.standard for f in src] == [601, 709, 709]
    assert src[0].nv12 is items[0].image.nv12  # type: ignore[union-attr]  # the decoder's buffer, not a copy
    assert tuple(src[1].rgb().shape) == (160, 96, 3)


def test_without_a_cascade_the_nvdec_scaled_frames_go_straight_to_the_letterbox() -> None:
    size = (64, 64)
    g = even_letterbox_geometry(128, 96, 64, 64)
    nv12 = _nv12(5, g.resized_w, g.resized_h)
    spec = PreprocessSpec(dtype="float32", layout="NCHW")
    batch = LiveBatchPipeline("packets", spec, size, max_batch=4, device_id=0).run([_item("s", 128, 96, nv12)])
    assert batch.source_frames is None
    want = nv12_letterbox([torch.from_numpy(nv12)], [g], size, (0, 0, 0), (255, 255, 255), 114, torch.float32,
                          channels_last=False, standards=[709])
    assert torch.equal(batch.images, want)


def test_a_frame_that_is_not_full_size_fails_its_batch_with_the_stream() -> None:
    spec = PreprocessSpec(keep_source=True)
    pipe = LiveBatchPipeline("packets", spec, (64, 64), max_batch=4, device_id=0)
    with pytest.raises(DecodeError, match=r"cam7: expected a full-size NV12 frame of 128x96.*\(72, 64\)"):
        pipe.run([_item("cam7", 128, 96, _nv12(1, 64, 48))])


@pytest.mark.parametrize("src,target", [((1920, 1080), (1920, 1080)), ((1080, 1920), (1080, 1920)),
                                        ((1280, 720), (1280, 720)), ((641, 361), (640, 360))])
def test_full_size_target_is_the_even_source_size(src: tuple[int, int], target: tuple[int, int]) -> None:
    assert full_size_target(*src, (1920, 1080)) == target


@pytest.mark.parametrize("src", [(3840, 2160), (1922, 1080), (1920, 1082), (2000, 600)])
def test_a_stream_larger_than_max_source_size_is_refused_with_its_size(src: tuple[int, int]) -> None:
    with pytest.raises(DecodeError, match=rf"{src[0]}x{src[1]}, larger than live\.max_source_size 1920x1080"):
        full_size_target(*src, (1920, 1080))


def test_ring_slots_hold_a_full_size_frame_and_no_larger() -> None:
    live = parse_live_config({})
    assert live.max_source_size == (1920, 1080)
    full = IngestSettings(live, "packets", device_id=0, input_size=(640, 640), source_size=(1920, 1080))
    assert full.slot_bytes == 1920 * 1080 * 3 // 2
    assert IngestSettings(live, "packets", device_id=0, input_size=(640, 640)).slot_bytes == 640 * 960
    ring = torch.zeros((2, full.slot_bytes), dtype=torch.uint8)
    slots = _SlotRing(ring, bytearray(2), lambda: None)
    frame, slot = slots.take(1080, 1920)  # type: ignore[misc]
    assert tuple(frame.shape) == (1620, 1920) and slot == 0
    frame, slot = slots.take(1920, 1080)  # type: ignore[misc]  # on its side
    assert tuple(frame.shape) == (2880, 1080) and slot == 1
    with pytest.raises(SourceError, match="does not fit a slot"):
        slots.take(1088, 1920)
    # the automatic ring for full-size frames: the queues once plus one batch per thread
    assert ring_frames_for(live, 24, 16, 2, full_size=True) == 8 * 24 + 2 * 16
    assert ring_frames_for(live, 24, 16, 2) == 2 * 8 * 24 + 2 * 2 * 16  # scaled frames: unchanged
    assert ring_frames_for(parse_live_config({"ingest": {"ring_frames": 100}}), 24, 16, 2, full_size=True) == 100


@pytest.mark.parametrize("value", [[1921, 1080], [1920, 8], [1920, 10000], [1920]])
def test_max_source_size_is_validated(value: Any) -> None:
    with pytest.raises(ConfigError) as e:
        parse_live_config({"max_source_size": value})
    assert e.value.key.startswith("live.max_source_size")
    assert parse_live_config({"max_source_size": [1080, 1920]}).max_source_size == (1080, 1920)


def _runner(decode: str, tmp_path: Any) -> LiveRunner:
    cfg = parse_config({"sources": [{"uri": "rtsp://127.0.0.1:1/x", "id": "x"}],
                        "live": {"decode": decode}, "engine": {"device": "cpu"},
                        "secondary": [{"name": "c", "model": str(tmp_path / "m.onnx")}]})
    return LiveRunner(cfg)


@pytest.mark.parametrize("decode", ["gpu", "auto"], ids=["decode-gpu", "decode-auto"])  # ("gpu": the GPU marker)
def test_a_cascade_runs_on_the_nvdec_path(decode: str, tmp_path: Any) -> None:
    assert _runner(decode, tmp_path)._mode("cuda:0", fell_back=False) == "packets"
    # an engine that fell back to the CPU decodes on the CPU, cascade or not
    assert _runner(decode, tmp_path)._mode("cpu", fell_back=True) == "frames"


def test_a_cascade_on_the_gop_path_is_refused_with_the_reason(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as e:
        _runner("gop", tmp_path)._mode("cuda:0", fell_back=False)
    assert e.value.key == "secondary"
    assert "gop decode path" in e.value.reason and "does not return" in e.value.reason
    assert "set live.decode: cpu or gpu" in e.value.reason
