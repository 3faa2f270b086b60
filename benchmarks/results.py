"""The benchmark's data model: one :class:`Measurement` per figure, gathered in :class:`BenchResults`.

A measurement is either done (``fps`` set), skipped (``skipped`` says why: a GPU-only
measurement on the CPU, ``--skip``, a model the baseline cannot run) or failed
(``error``). ``codec`` is ``None`` for the engine ceiling, which does not depend on the
input files and serves every codec's section.

Usage::

    m = Measurement("e2e", "h264", fps=4800.0, frames=48000, seconds=10.0)
    results.add(m); results.get("e2e", "h264")
    BenchResults.from_dict(json.loads(text))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.sampler import UtilStats

#: measurement names, in report order, with their labels
LABELS: dict[str, str] = {
    "decode": "NVDEC decode ceiling (DALI reader alone)",
    "source": "Pipeline source (NVDEC decode + preprocess)",
    "engine": "Engine ceiling (device-resident batches)",
    "e2e": "Fovea end to end",
    "pyav_fp32": "Baseline: PyAV CPU decode + torch FP32",
    "pyav_fp16": "Baseline: PyAV CPU decode + torch FP16",
    "dali_legacy": "Baseline: DALI fn.readers.video + torch FP16",
}
NAMES: tuple[str, ...] = tuple(LABELS)
BASELINES: tuple[str, ...] = ("pyav_fp32", "pyav_fp16", "dali_legacy")


@dataclass
class Measurement:
    """One measured figure: throughput over ``frames`` in ``seconds``, plus details in ``extra``."""

    name: str
    codec: str | None
    fps: float | None = None
    frames: int = 0
    seconds: float = 0.0
    skipped: str | None = None
    error: str | None = None
    util: UtilStats | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.fps is not None and self.skipped is None and self.error is None

    @classmethod
    def skip(cls, name: str, codec: str | None, reason: str) -> Measurement:
        return cls(name, codec, skipped=reason)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["util"] = self.util.to_dict() if self.util is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        d = dict(d)
        util = d.pop("util", None)
        return cls(**d, util=UtilStats(**util) if util else None)


@dataclass
class BenchResults:
    """Everything a run produced: environment, configuration, inputs and measurements."""

    environment: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    clips: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # codec -> ClipInfo dicts
    workload: dict[str, dict[str, Any]] = field(default_factory=dict)  # codec -> files, loops, frames
    measurements: list[Measurement] = field(default_factory=list)

    def add(self, m: Measurement) -> Measurement:
        self.measurements = [x for x in self.measurements if (x.name, x.codec) != (m.name, m.codec)]
        self.measurements.append(m)
        return m

    def get(self, name: str, codec: str | None) -> Measurement | None:
        """The measurement ``name`` for ``codec``; the engine ceiling (codec ``None``) for any codec."""
        for m in self.measurements:
            if m.name == name and (m.codec == codec or m.codec is None):
                return m
        return None

    @property
    def codecs(self) -> list[str]:
        seen: list[str] = list(self.clips)
        for m in self.measurements:
            if m.codec is not None and m.codec not in seen:
                seen.append(m.codec)
        return seen

    @property
    def errors(self) -> list[Measurement]:
        return [m for m in self.measurements if m.error is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "environment": self.environment,
            "config": self.config,
            "clips": self.clips,
            "workload": self.workload,
            "measurements": [m.to_dict() for m in self.measurements],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResults:
        return cls(
            environment=dict(d.get("environment", {})),
            config=dict(d.get("config", {})),
            clips={k: list(v) for k, v in d.get("clips", {}).items()},
            workload={k: dict(v) for k, v in d.get("workload", {}).items()},
            measurements=[Measurement.from_dict(m) for m in d.get("measurements", [])],
        )
