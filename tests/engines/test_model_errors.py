"""A model Fovea cannot use is one EngineError line naming the file and the problem (#22).

:func:`engines.factory.open_engine` checks what it can before building the engine;
entering the engine and :func:`engines.factory.output_layout` check the rest (the model's
first run on a blank image batch, its outputs). ``tests/pipelines/test_model_errors.py``
checks the same models through ``fovea run``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engines._messages import reason
from engines.factory import open_engine, output_layout
from streams.config import EngineConfig, ModelConfig
from streams.errors import ConfigError, EngineError
from tests.engines.bad_models import BAD_MODELS, truncated_pt
from tests.models import save_bright_model

MINIZ = (
    "PytorchStreamReader failed reading zip archive: failed finding central directory. This is an "
    "internal miniz error. If you are seeing this error, there is a high likelihood that your checkpoint "
    "file is corrupted. This can happen if the checkpoint was not saved properly, was transferred "
    "incorrectly, or the file was modified after saving."
)


def _open_and_resolve(path: Path) -> str:
    """What a job does with a model before decoding: open, enter, resolve the output layout."""
    engine, info = open_engine(ModelConfig(path=str(path), input_size=(64, 64)), EngineConfig(), "cpu")
    with engine:
        return output_layout(engine, info)


@pytest.mark.parametrize("kind", list(BAD_MODELS))
def test_a_bad_model_is_one_engine_error_line_naming_the_file(kind: str, tmp_path: Path) -> None:
    path, what = BAD_MODELS[kind](tmp_path)
    with pytest.raises(EngineError) as info:
        _open_and_resolve(path)
    msg = str(info.value)
    assert not isinstance(info.value, ConfigError)
    assert "\n" not in msg
    assert str(path) in msg, msg
    assert what in msg, msg


def test_a_good_model_still_opens(tmp_path: Path) -> None:
    assert _open_and_resolve(save_bright_model(tmp_path / "bright.pt")) == "yolov8"


def test_a_torch_error_is_cut_after_a_whole_sentence_and_says_so(tmp_path: Path) -> None:
    """The corrupt .pt of issue #22 printed torch's advice cut mid-sentence ("...your
    checkpoint file is)"). Fovea now recognises the archive itself; where torch's own error
    is quoted, it is cut at a sentence end, marked with [...]."""
    path, _ = truncated_pt(tmp_path)
    with pytest.raises(EngineError) as info:
        _open_and_resolve(path)
    assert "checkpoint file is)" not in str(info.value)
    assert str(info.value).endswith("or to ONNX")
    short = reason(RuntimeError(MINIZ), limit=120)
    assert short == ("PytorchStreamReader failed reading zip archive: failed finding central directory. "
                     "This is an internal miniz error. [...]")


def test_reason_keeps_one_line_and_whole_sentences() -> None:
    assert reason(RuntimeError("short.")) == "short."
    assert reason(ValueError("")) == "ValueError"
    assert reason(RuntimeError("first line\n  second line\n")) == "first line [...]"
    long_sentence = "x" * 300 + ". Next."
    assert reason(RuntimeError(long_sentence), limit=100) == "x" * 300 + ". [...]"  # never mid-sentence
    no_end = "y" * 300
    assert reason(RuntimeError(no_end), limit=100) == no_end
    torchscript = ("The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript "
                   "(most recent call last):\n  File x.py, line 3\nRuntimeError: mat1 and mat2 shapes cannot be "
                   "multiplied (192x64 and 16x6)\n")
    assert reason(RuntimeError(torchscript)) == ("RuntimeError: mat1 and mat2 shapes cannot be multiplied "
                                                 "(192x64 and 16x6) [...]")
