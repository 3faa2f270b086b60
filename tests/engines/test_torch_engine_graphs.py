"""The torch engine's CUDA graphs: captured per stream before decoding, then replayed.

A job captures one graph per inference stream before any DALI pipeline runs and then
closes captures; batches on those streams are copied into the graph's input buffer and
replayed, anything else runs eagerly. These tests compare replays with eager runs of the
same module on fresh data (so a stale input buffer would fail them).
"""

from __future__ import annotations

import logging

import pytest
import torch

from engines.torch_engine import TorchEngine
from tests.models import BrightSpotDetector


def test_capture_graphs_is_a_no_op_on_the_cpu() -> None:
    with TorchEngine(BrightSpotDetector(), device="cpu", input_size=(64, 64)) as engine:
        assert engine.capture_graphs(4, []) == 0
        engine.close_captures("nothing decodes here")
        x = torch.rand(4, 3, 64, 64)
        out = engine.infer({"images": x})["output0"]
        assert torch.allclose(out, BrightSpotDetector()(x))


def test_capture_graphs_outside_with_is_an_error() -> None:
    from streams.errors import EngineError

    engine = TorchEngine(BrightSpotDetector(), device="cpu", input_size=(64, 64))
    with pytest.raises(EngineError, match="outside 'with'"):
        engine.capture_graphs(4, [])


@pytest.mark.gpu
def test_pre_captured_graphs_replay_new_inputs_per_stream(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    ref = BrightSpotDetector().cuda().half().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    with TorchEngine(BrightSpotDetector(), device="cuda:0", precision="fp16", input_size=(64, 64)) as engine:
        assert engine.capture_graphs(8, streams) == 2
        engine.close_captures("decoders run from here on")
        for step in range(3):
            for s in streams:
                # a fresh buffer every time, in DALI's NHWC layout: the copy must pick up its contents
                x = torch.rand(8, 64, 64, 3, device="cuda").half().permute(0, 3, 1, 2)
                s.wait_stream(torch.cuda.current_stream())
                out = engine.infer({"images": x}, stream=s.cuda_stream)["output0"]
                torch.cuda.synchronize()
                with torch.inference_mode():
                    want = ref(x)
                assert torch.allclose(out.float(), want.float(), atol=1e-2), f"replay {step} differs from eager"
        # a partial batch replays the graph on the buffer's first rows: no eager run, its rows out
        with caplog.at_level(logging.WARNING, logger="engines.torch_engine"):
            for n in (3, 1, 7):
                x = torch.rand(n, 3, 64, 64, device="cuda").half()
                streams[1].wait_stream(torch.cuda.current_stream())
                out = engine.infer({"images": x}, stream=streams[1].cuda_stream)["output0"]
                torch.cuda.synchronize()
                assert out.shape[0] == n
                with torch.inference_mode():
                    assert torch.allclose(out.float(), ref(x).float(), atol=1e-2), f"partial batch {n}"
        assert not [r for r in caplog.records if "run eagerly" in r.getMessage()]
        # a larger batch has no graph and captures are closed: eager, said once
        with caplog.at_level(logging.WARNING, logger="engines.torch_engine"):
            for _ in range(2):
                x = torch.rand(12, 3, 64, 64, device="cuda").half()
                streams[0].wait_stream(torch.cuda.current_stream())
                out = engine.infer({"images": x}, stream=streams[0].cuda_stream)["output0"]
                torch.cuda.synchronize()
                with torch.inference_mode():
                    assert torch.allclose(out.float(), ref(x).float(), atol=1e-2)
        eager_notes = [r for r in caplog.records if "run eagerly" in r.getMessage()]
        assert len(eager_notes) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.gpu
def test_compiled_graphs_match_eager() -> None:
    """torch.compile (inductor) under the pre-captured graphs gives the eager module's outputs."""
    s = torch.cuda.Stream()
    ref = BrightSpotDetector().cuda().half().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    with TorchEngine(BrightSpotDetector(), device="cuda:0", precision="fp16", input_size=(64, 64),
                     compile_mode="default") as engine:
        assert engine.capture_graphs(4, [s]) == 1
        engine.close_captures("test")
        for _ in range(2):
            x = torch.rand(4, 3, 64, 64, device="cuda").half().contiguous(memory_format=torch.channels_last)
            s.wait_stream(torch.cuda.current_stream())
            out = engine.infer({"images": x}, stream=s.cuda_stream)["output0"]
            torch.cuda.synchronize()
            with torch.inference_mode():
                assert torch.allclose(out.float(), ref(x).float(), atol=1e-2)


def test_other_sizes_need_a_model_that_takes_them() -> None:
    """A fixed-size model refuses graphs of other sizes (on the CPU too, where none is captured)."""
    from streams.errors import ShapeError

    with TorchEngine(BrightSpotDetector(), device="cpu", input_size=(64, 64)) as engine, \
            pytest.raises(ShapeError, match=r"takes \[64, 64\] images only, not \[\[32, 64\]\]"):
        engine.capture_graphs(4, [], [(64, 64), (32, 64)])
    with TorchEngine(BrightSpotDetector(), device="cpu", input_size=(64, 64), other_sizes=True) as engine:
        assert engine.capture_graphs(4, [], [(32, 64)]) == 0  # no graphs on the CPU
        x = torch.rand(2, 3, 32, 64)
        assert torch.allclose(engine.infer({"images": x})["output0"], BrightSpotDetector()(x))


@pytest.mark.gpu
def test_a_graph_per_input_size_and_stream(caplog: pytest.LogCaptureFixture) -> None:
    """A dynamic-shape model's rectangle canvases: one graph per (stream, size), each replaying
    fresh inputs of its size; no batch of a captured size runs eagerly."""
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    ref = BrightSpotDetector().cuda().half().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    sizes = [(64, 64), (40, 64), (64, 48)]
    with TorchEngine(BrightSpotDetector(), device="cuda:0", precision="fp16", input_size=(64, 64),
                     other_sizes=True) as engine:
        assert engine.capture_graphs(8, streams) == 2
        assert engine.capture_graphs(8, streams, sizes[1:]) == 4
        engine.close_captures("decoders run from here on")
        with caplog.at_level(logging.WARNING, logger="engines.torch_engine"):
            for step in range(2):
                for h, w in sizes:
                    for s in streams:
                        x = torch.rand(8, h, w, 3, device="cuda").half().permute(0, 3, 1, 2)
                        s.wait_stream(torch.cuda.current_stream())
                        out = engine.infer({"images": x}, stream=s.cuda_stream)["output0"]
                        torch.cuda.synchronize()
                        with torch.inference_mode():
                            want = ref(x)
                        assert out.shape == want.shape == (8, 6, (h // 8) * (w // 8))
                        assert torch.allclose(out.float(), want.float(), atol=1e-2), (step, h, w)
        assert not [r for r in caplog.records if "run eagerly" in r.getMessage()]
