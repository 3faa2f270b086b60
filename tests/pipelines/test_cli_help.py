"""What ``fovea --help`` and ``fovea run --help`` tell, and how the subcommands are found
(the ``fovea.commands`` entry points declared in pyproject.toml)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from pipelines import cli

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["run", "demo", "eval", "live", "build-engine", "bench"]
EXIT_LINES = ["  0    success", "  1    some inputs failed", "  2    bad configuration or arguments",
              "  3    a package needed inside the job is missing", "  4    engine error", "  130  interrupted"]
SECTIONS = ["sources", "model", "engine", "decode", "preprocess", "postprocess", "tracker", "analytics", "sinks",
            "live"]


def _help(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def _command_lines(text: str) -> list[str]:
    """The lines of the subcommand list: between the ``COMMAND`` line and ``options:``."""
    lines = text.splitlines()
    start = lines.index("  COMMAND") + 1
    end = lines.index("options:")
    return [line for line in lines[start:end] if line.strip()]


def test_fovea_help_lists_every_command_on_one_line_and_the_exit_codes(capsys, monkeypatch) -> None:
    text = _help(["--help"], capsys, monkeypatch)
    lines = _command_lines(text)
    assert [line.split()[0] for line in lines] == COMMANDS  # one line each: no wrapped continuation lines
    assert all(len(line.split()) > 2 for line in lines)  # each with its help
    for line in EXIT_LINES:
        assert line in text


def test_python_m_pipelines_cli_help_lists_the_same_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "COLUMNS": "80"}, timeout=120, check=True).stdout
    assert [line.split()[0] for line in _command_lines(out)] == COMMANDS


def test_run_help_points_to_the_example_lists_the_sections_and_exit_codes(capsys, monkeypatch) -> None:
    text = _help(["run", "--help"], capsys, monkeypatch)
    assert "examples/job.yaml" in text
    epilog = text[text.index("config sections"):]
    listed = [line.split()[0] for line in epilog.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert listed[:len(SECTIONS)] == SECTIONS
    for line in EXIT_LINES:
        assert line in text


def test_subcommands_come_from_entry_points_not_imports_of_higher_layers() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["fovea.commands"]
    assert sorted(declared) == sorted(COMMANDS[1:])
    installed = {ep.name: ep.value for ep in entry_points(group=cli.COMMAND_GROUP)}
    assert installed == declared, "re-run `pip install -e .` so the entry points register"
    assert [name for name, _ in cli.command_hooks()] == COMMANDS[1:]
    # lint-imports sees import statements only: no dynamic import may reach a higher layer either
    tree = ast.parse((ROOT / "pipelines" / "cli.py").read_text())
    dynamic = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and (
        (isinstance(n.func, ast.Name) and n.func.id == "__import__")
        or (isinstance(n.func, ast.Attribute) and n.func.attr == "import_module"))]
    assert dynamic == []


def test_pyproject_license_is_an_spdx_string_with_a_setuptools_that_reads_it() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in pyproject["build-system"]["requires"][0]


def test_gitignore_ignores_what_the_demo_and_examples_write() -> None:
    lines = (ROOT / ".gitignore").read_text().splitlines()
    for folder in ("fovea-demo/", "fovea-demo-run/", "fovea-live/", "fovea-tracking/"):
        assert folder in lines or "/" + folder in lines
