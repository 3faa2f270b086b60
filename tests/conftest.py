"""Shared fixtures: generated clips and a hand-built detector, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.media import write_clip
from tests.models import save_bright_model


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run with pytest -m gpu on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder mixing H.264 MP4 (two sizes, one portrait, in a subfolder), VP9 WebM,
    a corrupt file, a zero-length file and a text file with a video extension."""
    d = tmp_path_factory.mktemp("clips")
    write_clip(d / "landscape.mp4", "libx264", frames=40, width=320, height=240)
    write_clip(d / "vp9.webm", "libvpx-vp9", frames=30, width=256, height=144)
    (d / "nested").mkdir()
    write_clip(d / "nested" / "portrait.mp4", "libx264", frames=21, width=180, height=320,
               options={"bf": "2", "g": "8"})
    (d / "corrupt.mp4").write_bytes(os.urandom(4096))
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mkv").write_text("this is not a video\n")
    return d


@pytest.fixture(scope="session")
def bright_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bright_model(tmp_path_factory.mktemp("models") / "bright.pt")
