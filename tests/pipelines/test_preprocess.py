"""The DALI preprocessing graph places the frame exactly where the geometry says."""

from __future__ import annotations

import numpy as np
import pytest

from operators.boxes import letterbox_geometry
from pipelines.preprocess import PreprocessSpec, preprocess
from streams.config import PreprocessConfig


def _run(frames: np.ndarray, dst: tuple[int, int], spec: PreprocessSpec, mode: str = "letterbox"):
    from nvidia.dali import fn, pipeline_def, types

    h, w = frames.shape[1:3]
    geom = letterbox_geometry(w, h, dst[1], dst[0], mode)  # type: ignore[arg-type]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def p():  # type: ignore[no-untyped-def]
        x = fn.external_source(name="frames", layout="FHWC", dtype=types.UINT8)
        return preprocess(x, geom, spec)

    pipe = p()
    pipe.build()
    (out,) = pipe.run(frames=[frames])
    return np.array(out.as_tensor())[0], geom


@pytest.mark.parametrize("src,dst", [((1080, 1920), (640, 640)), ((480, 640), (640, 640)),
                                     ((1920, 1080), (640, 640)), ((360, 640), (384, 640))])
def test_letterbox_offsets_and_pad(src: tuple[int, int], dst: tuple[int, int]) -> None:
    h, w = src
    frames = np.zeros((2, h, w, 3), np.uint8)
    frames[:, h // 4: h // 2, w // 4: w // 2] = 255
    out, g = _run(frames, dst, PreprocessSpec(dtype="float32", layout="NCHW"))
    assert out.shape == (2, 3, dst[0], dst[1])
    # the white rectangle maps through scale and pad
    ys, xs = np.nonzero(out[0, 0] > 0.9)
    assert abs(xs.min() - (g.pad_x + (w // 4) * g.scale_x)) <= 1.5
    assert abs(ys.min() - (g.pad_y + (h // 4) * g.scale_y)) <= 1.5
    assert abs(xs.max() + 1 - (g.pad_x + (w // 2) * g.scale_x)) <= 1.5
    # padding has the configured value, the image area is black
    pad = 114 / 255
    if g.pad_x:
        assert np.allclose(out[:, :, :, : g.pad_x], pad, atol=1e-3)
        assert np.allclose(out[:, :, :, g.pad_x + g.resized_w:], pad, atol=1e-3)
    if g.pad_y:
        assert np.allclose(out[:, :, : g.pad_y, :], pad, atol=1e-3)
    assert out[0, 0, g.pad_y + 1, g.pad_x + 1] < 0.01


def test_nhwc_fp16_bgr_and_normalisation() -> None:
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    frames[..., 0] = 200  # red
    opts = PreprocessConfig(mean=(100.0, 0.0, 0.0), std=(50.0, 1.0, 1.0), channel_order="bgr")
    out, _ = _run(frames, (64, 64), PreprocessSpec(dtype="float16", layout="NHWC", options=opts))
    assert out.dtype == np.float16 and out.shape == (1, 64, 64, 3)
    # bgr: red lands in the last channel; mean/std apply per output channel
    assert np.allclose(out[0, 10, 10], [-2.0, 0.0, 200.0], atol=0.2)


def test_stretch_fills_the_input() -> None:
    frames = np.full((1, 90, 160, 3), 255, np.uint8)
    out, g = _run(frames, (64, 64), PreprocessSpec(), mode="stretch")
    assert (g.pad_x, g.pad_y) == (0, 0)
    assert np.allclose(out, 1.0, atol=1e-3)


def test_preload_dali_imports_dali_in_a_thread() -> None:
    """``fovea run`` imports DALI while the model loads (a fresh interpreter: nothing else
    has imported it): the thread ends with DALI imported, and importing our decode module
    alone does not import it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pipelines.video_decoding import preload_dali\n"
        "assert 'nvidia.dali' not in sys.modules, 'imported too early'\n"
        "t = preload_dali()\n"
        "t.join(60)\n"
        "assert not t.is_alive() and 'nvidia.dali.fn' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
