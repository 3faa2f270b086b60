"""Fixtures of the TensorRT tests.

``fake_trt`` puts :class:`trt_standin.FakeTensorRT`, a recording stand-in for the
``tensorrt`` module (TensorRT cannot be installed on the test machines: it comes only
from NVIDIA's index and needs a GPU), into ``sys.modules``; ``no_trt`` makes
``import tensorrt`` fail as on a machine without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.engines.tensorrt.trt_standin import FakeTensorRT, write_detector_onnx


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    """The recording TensorRT stand-in, installed as ``tensorrt``."""
    trt = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


@pytest.fixture
def no_trt(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import tensorrt`` raises ImportError (``None`` in ``sys.modules`` does that)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.fixture
def detector(tmp_path: Path) -> Path:
    """A tiny YOLOv8-layout ONNX detector with a dynamic batch and a 64x64 input."""
    return write_detector_onnx(tmp_path / "det.onnx")
