"""A sink that hands every batch of results to a Python function (the Python API's sink).

Usage::

    with CallbackSink(lambda results: print(len(results))) as sink:
        sink.write(results)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType

from streams.frames import FrameResult


class CallbackSink:
    """Calls ``fn(results)`` once per batch that reaches the sinks, from the job's thread.

    ``fn`` runs on the job's hot path: a slow function slows the job. An exception it
    raises stops the job, like any sink error.
    """

    def __init__(self, fn: Callable[[Sequence[FrameResult]], object]) -> None:
        self.fn = fn

    def __enter__(self) -> CallbackSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def write(self, results: Sequence[FrameResult]) -> None:
        self.fn(results)
