"""The ``analytics:`` section of a job config: zones and lines per source, validated at load."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AnalyticsConfig:
    """``analytics:``: polygon zones and counting lines, per source."""
