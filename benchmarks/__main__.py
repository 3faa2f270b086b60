"""``python -m benchmarks [bench options]``: the same as ``fovea bench`` (see :mod:`benchmarks.cli`).

Usage::

    python -m benchmarks --quick --device cpu --out /tmp/b
    python -m benchmarks --log-level DEBUG --codec h264 --out bench-out
"""

from __future__ import annotations

import sys

from benchmarks.cli import add_parser
from pipelines.cli import main


def run(argv: list[str]) -> int:
    """``fovea [--log-level L] bench ARGS``: the log level may come first, as in ``fovea``."""
    head: list[str] = []
    rest = list(argv)
    if rest and rest[0] == "--log-level" and len(rest) > 1:
        head, rest = rest[:2], rest[2:]
    elif rest and rest[0].startswith("--log-level="):
        head, rest = rest[:1], rest[1:]
    # the bench command passed in, not looked up in the installed entry points: this runs
    # from a source tree that was never pip-installed too
    return main([*head, "bench", *rest], commands=[("bench", add_parser)])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
