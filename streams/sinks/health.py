"""A network sink's delivery health, and the Protocol of the sinks that report it.

Each network sink (Kafka, Redis Streams, PostgreSQL, MQTT: :class:`~streams.sinks.delivery.ReliableSink`)
knows whether its broker is reachable, what it delivered and what waits in its spool. The
job reads it through :class:`HealthReporting` (no backend hooks by name): the end-of-job
summary (``JobSummary.sinks``) and the live ``/metrics`` (``fovea_sink_*``,
:class:`streams.live.metrics.SinkMetrics`). A sink run in a process of its own
(:class:`~streams.sinks.process.ProcessSink`, ``writer: process``) passes its child's health
back over its reply pipe, so the two read the same.

Usage::

    for h in sink_health(sinks):        # the sinks that report health, now
        print(h.describe())
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["DeliveryHealth", "HealthReporting", "sink_health"]


@dataclass(frozen=True)
class DeliveryHealth:
    """A network sink's state, for ``/metrics`` and the end-of-job summary.

    ``connected``: whether its last try reached the broker (after the sink closed: whether it
    was connected at the end).
    """

    sink: str  # its type: kafka, redis, postgres, mqtt
    where: str  # the broker (no credentials)
    spool: str  # the spool folder
    connected: bool
    delivered: int  # records the broker acknowledged
    spooled: int  # records in the spool, not delivered yet
    spool_bytes: int
    dropped: int  # records removed at the spool's size limit
    resent: int  # records sent again after an unacknowledged try: at most this many duplicates
    disconnects: int  # times the broker went away (or could not be reached) after being connected
    last_error: str | None

    @property
    def undelivered(self) -> bool:
        """True when records wait in the spool or were dropped at its limit."""
        return self.spooled > 0 or self.dropped > 0

    def describe(self) -> str:
        """One line for the end-of-job summary."""
        text = (f"{self.sink} {self.where}: {'connected' if self.connected else 'NOT connected'}, "
                f"{self.delivered} delivered, {self.spooled} in the spool {self.spool}, {self.dropped} dropped, "
                f"{self.resent} re-sent (at most as many duplicates), {self.disconnects} disconnect(s)")
        return text + (f"; last error: {self.last_error}" if self.last_error else "")


@runtime_checkable
class HealthReporting(Protocol):
    """A sink that reports its delivery health (the network sinks, and the process that runs one)."""

    def health(self) -> DeliveryHealth | None:
        """The state now (after the sink closed: what it left); ``None``: nothing to report
        (a :class:`~streams.sinks.process.ProcessSink` running a file sink)."""
        ...


def sink_health(sinks: Iterable[object]) -> list[DeliveryHealth]:
    """The health of each of ``sinks`` that reports one, in their order."""
    out = []
    for s in sinks:
        if isinstance(s, HealthReporting) and (h := s.health()) is not None:
            out.append(h)
    return out
