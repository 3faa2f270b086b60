"""Fovea's data layer: frame metadata, detections, sources and sinks.

This package holds the plain data model (no DALI, TensorRT or CUDA imports) and the
sink/source plugins. Everything else in Fovea depends on it; it depends on nothing of Fovea.
"""

from streams.detections import Detections
from streams.errors import (
    ConfigError,
    EngineError,
    FoveaError,
    SinkError,
    SourceError,
)
from streams.frames import FrameMeta, FrameResult

__all__ = [
    "ConfigError",
    "Detections",
    "EngineError",
    "FoveaError",
    "FrameMeta",
    "FrameResult",
    "SinkError",
    "SourceError",
]
