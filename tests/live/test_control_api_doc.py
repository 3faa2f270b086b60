"""The curl examples of docs/control-api.md run as written against a stream manager's API
(the port replaced by a free one), with the token the example generates."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from streams.live.config import parse_live_config
from streams.live.manager import StreamManager
from tests.optional import skip_unless_present

DOC = Path(__file__).resolve().parents[2] / "docs" / "control-api.md"


def _example_lines() -> list[str]:
    text = DOC.read_text()
    section = text[text.index("## Examples"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "no sh block under ## Examples"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_control_api_examples_run_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    skip_unless_present(None if shutil.which("curl") else "curl is not installed (apt-get install curl)")
    lines = _example_lines()
    assert lines[0].startswith("export FOVEA_API_TOKEN=") and len(lines) == 5
    token = subprocess.run(["bash", "-c", f"{lines[0]}; echo $FOVEA_API_TOKEN"], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert len(token) >= 16
    monkeypatch.setenv("FOVEA_API_TOKEN", token)
    cfg = parse_live_config({"http": {"port": 0, "token_env": "FOVEA_API_TOKEN"}, "log_interval_s": 0,
                             "watchdog": {"open_timeout_s": 1, "stall_s": 1}})
    mgr = StreamManager(cfg, mode="frames").start()
    assert mgr.http is not None
    env = {**os.environ, "FOVEA_API_TOKEN": token}
    outputs = []
    try:
        for line in lines[1:]:
            assert "127.0.0.1:9108" in line
            cmd = line.replace("127.0.0.1:9108", f"127.0.0.1:{mgr.http.port}")
            proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=30)
            assert proc.returncode == 0, (line, proc.stdout, proc.stderr)
            outputs.append(proc.stdout)
            if "-d '" in line:
                assert mgr.stream_ids() == ["door"]
        assert mgr.stream_ids() == []  # the last line removed it
    finally:
        mgr.stop(3)
    assert '"status"' in outputs[0] and '"id": "door"' in outputs[1] and '"removed": "door"' in outputs[3]
    assert "secret" not in "".join(outputs)  # the example's password is not echoed
