"""``fovea live --source`` with a password in the URI warns that the process list shows
it (without repeating it), and an error of the job does not repeat it either."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipelines.cli import main


def test_a_password_on_the_command_line_is_warned_about(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING)
    code = main(["live", "--source", "rtsp://u:Hunter2pw@127.0.0.1:9/x", "--model", str(tmp_path / "none.pt"),
                 "--device", "cpu", "--duration", "1"])
    assert code != 0  # the model does not exist: the job stops before any camera
    warned = [r.getMessage() for r in caplog.records if "process list" in r.getMessage()]
    assert len(warned) == 1
    out = capsys.readouterr()
    for text in (*warned, out.out, out.err):
        assert "Hunter2pw" not in text
    caplog.clear()
    main(["live", "--source", "rtsp://u@127.0.0.1:9/x", "--model", str(tmp_path / "none.pt"), "--device", "cpu"])
    assert not [r for r in caplog.records if "process list" in r.getMessage()]
