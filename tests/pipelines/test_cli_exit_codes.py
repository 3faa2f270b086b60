"""``fovea``'s exit codes: one per kind of failure, and a missing optional extra named in
one line (exit 2) instead of a ModuleNotFoundError traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli
from streams.errors import ConfigError, EngineError, MissingDependencyError, SourceError

ROOT = Path(__file__).resolve().parents[2]
LIVE_EXTRA_LINE = ("fovea: fovea live needs the 'live' extra (prometheus_client not installed): "
                   'pip install -e ".[live]"')


def test_fovea_live_without_the_live_extra_says_which_extra_in_one_line() -> None:
    """In a fresh interpreter where prometheus_client cannot be imported (as after a plain
    ``pip install -e .``)."""
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "from pipelines.cli import main\n"
            "sys.exit(main(['live', 'examples/live.yaml', '--duration', '1']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [LIVE_EXTRA_LINE]


def test_the_extra_check_uses_find_spec(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "prometheus_client" else real(name, *a))
    assert cli.main(["live", "--source", "rtsp://cam/1"]) == cli.EXIT_CONFIG
    assert capsys.readouterr().err.splitlines() == [LIVE_EXTRA_LINE]
    with pytest.raises(cli.MissingExtraError, match=r"'tools' extra \(no_such_module, x.y not installed\)"):
        cli.require_extra("thing", "tools", ["json", "no_such_module", "x.y"])
    cli.require_extra("thing", "tools", ["json", "argparse"])  # all there: no error


@pytest.mark.parametrize("error,code", [
    (SourceError("a.mp4", "broken"), 1),
    (ConfigError("engine.device", "bad"), 2),
    (cli.MissingExtraError("live", "live", ["prometheus_client"]), 2),
    (MissingDependencyError("tensorrt", "engine: tensorrt", "pip install tensorrt"), 3),
    (EngineError("cannot load the model"), 4),
    (KeyboardInterrupt(), 130),
])
def test_each_failure_has_its_exit_code(error: BaseException, code: int, monkeypatch: pytest.MonkeyPatch,
                                        capsys) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(cli, "_cmd_run", fail)
    assert cli.main(["run", "job.yaml"]) == code
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("fovea: ")
    assert f"\n  {code} " in cli.EXIT_CODES  # and it is documented in --help
