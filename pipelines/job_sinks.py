"""A file job's sinks, with what the job owes them at its end.

:func:`open_job_sinks` enters the configured sinks (:func:`pipelines.graph.open_sinks`) and
the caller's extra ones on the job's exit stack, and arranges the two end-of-job steps that
depend on when the sinks close:

- **Summaries.** When the job ran to its end, each sink that takes them
  (:class:`~streams.sinks.summaries.SummaryAware`: the network sinks, SQLite) gets one
  summary record per source (:func:`~streams.sinks.summaries.write_summaries` of
  ``JobSummary.stages``) just before it closes: after the per-source stages (entered after
  the sinks) closed, so their reports are final. A job that fails or is interrupted sends none.
- **Health.** Once every sink closed (also when closing one failed, e.g. records left in a
  spool), ``JobSummary.sinks`` holds the health of those that report it
  (:class:`~streams.sinks.health.HealthReporting`: what each delivered, what waits in its
  spool), which ``JobSummary.to_text`` prints.

Usage (inside the job's ``ExitStack``, where the sinks were opened)::

    sinks = open_job_sinks(cfg, stack, extra_sinks, summary)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from types import TracebackType

from pipelines.graph import open_sinks
from pipelines.progress import JobSummary
from streams.config import JobConfig
from streams.sinks import Sink
from streams.sinks.health import sink_health
from streams.sinks.summaries import write_summaries


def open_job_sinks(cfg: JobConfig, stack: contextlib.ExitStack, extra: Sequence[Sink],
                   summary: JobSummary) -> list[Sink]:
    """Enter the configured sinks, then ``extra``, on ``stack``; return them (module docstring)."""
    sinks: list[Sink] = []

    def read_health() -> None:  # runs after the sinks closed: pushed before them
        summary.sinks = sink_health(sinks)

    stack.callback(read_health)
    sinks += open_sinks(cfg, stack) + [stack.enter_context(s) for s in extra]

    def send_summaries(exc_type: type[BaseException] | None, exc: BaseException | None,
                       tb: TracebackType | None) -> None:  # runs before the sinks close: pushed after them
        if exc_type is None:
            write_summaries(sinks, summary.stages)

    stack.push(send_summaries)
    return sinks
