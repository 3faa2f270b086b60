"""Fovea's pipelines: DALI graphs, the stage graph, the file and live jobs, the Python API, the CLI.

Public names (imported on first use, so ``import pipelines`` stays cheap for the CLI)::

    from pipelines import Pipeline            # the Python API (pipelines.api)
    from pipelines import run_job, run_live   # the jobs behind `fovea run` / `fovea live`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.lazy import lazy_exports

if TYPE_CHECKING:
    from pipelines.api import Pipeline
    from pipelines.live import LiveRunner, LiveSummary, run_live
    from pipelines.progress import JobSummary
    from pipelines.runner import FileJob, run_job
    from pipelines.stages import BatchStage, Gap, InferenceStage, SourceEnd, SourceStage

__all__ = [
    "BatchStage",
    "FileJob",
    "Gap",
    "InferenceStage",
    "JobSummary",
    "LiveRunner",
    "LiveSummary",
    "Pipeline",
    "SourceEnd",
    "SourceStage",
    "run_job",
    "run_live",
]

_WHERE = {
    "Pipeline": "pipelines.api",
    "FileJob": "pipelines.runner",
    "run_job": "pipelines.runner",
    "JobSummary": "pipelines.progress",
    "LiveRunner": "pipelines.live",
    "LiveSummary": "pipelines.live",
    "run_live": "pipelines.live",
    "BatchStage": "pipelines.stages",
    "Gap": "pipelines.stages",
    "InferenceStage": "pipelines.stages",
    "SourceEnd": "pipelines.stages",
    "SourceStage": "pipelines.stages",
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
