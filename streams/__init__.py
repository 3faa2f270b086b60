"""Fovea's data layer: frame metadata, detections, errors, the job config, sources and sinks.

This package holds the plain data model (no DALI, TensorRT or CUDA imports) and the
sink/source plugins. Everything else in Fovea depends on it; it depends on nothing of Fovea.

Exported here: the data model (:class:`Detections`, :class:`FrameMeta`,
:class:`FrameResult`), the exception hierarchy (:mod:`streams.errors`), the job config
(:class:`JobConfig` and its sections, :func:`load_config`, :func:`parse_config`), the sink
plugin API (:data:`SINKS`, :class:`Sink`) and the plugin machinery (:class:`Registry`,
:class:`PluginConfig`, :func:`from_dict`). Importing the package needs NumPy and PyYAML
only; the sink plugins load on first use of :data:`SINKS`.

Subpackages, imported where used: :mod:`streams.sources` (video files and probing),
:mod:`streams.sinks` (the built-in sinks), :mod:`streams.live` (RTSP streams) and
:mod:`streams.synthetic` (synthetic scenes with exact ground truth).
"""

from streams.config import (
    DecodeConfig,
    EngineConfig,
    JobConfig,
    ModelConfig,
    PostprocessConfig,
    PreprocessConfig,
    SourceEntry,
    TensorRTConfig,
    load_config,
    parse_config,
)
from streams.detections import Detections
from streams.errors import (
    ConfigError,
    DecodeError,
    EngineError,
    FoveaError,
    MissingDependencyError,
    ShapeError,
    SinkError,
    SourceError,
)
from streams.frames import FrameMeta, FrameResult
from streams.registry import PluginConfig, Registry
from streams.schema import from_dict
from streams.sinks import SINKS, Sink

__all__ = [
    "SINKS",
    "ConfigError",
    "DecodeConfig",
    "DecodeError",
    "Detections",
    "EngineConfig",
    "EngineError",
    "FoveaError",
    "FrameMeta",
    "FrameResult",
    "JobConfig",
    "MissingDependencyError",
    "ModelConfig",
    "PluginConfig",
    "PostprocessConfig",
    "PreprocessConfig",
    "Registry",
    "ShapeError",
    "Sink",
    "SinkError",
    "SourceEntry",
    "SourceError",
    "TensorRTConfig",
    "from_dict",
    "load_config",
    "parse_config",
]
