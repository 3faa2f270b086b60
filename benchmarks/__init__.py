"""Fovea's throughput benchmark: decode and engine ceilings, end to end, and user baselines.

``fovea bench`` (or ``python -m benchmarks``) generates 1080p H.264/HEVC clips (cached),
then measures on the same files:

* the NVDEC decode ceiling (DALI's reader alone, a sweep of concurrent sessions),
* the pipeline's own source (decode + preprocess, :class:`pipelines.file_source.FileDecodeSource`),
* the engine ceiling (the engine on device-resident batches, with and without postprocess),
* Fovea end to end (:func:`pipelines.runner.run_job`, every frame checked in the JSONL sink),
* what users would otherwise write (PyAV + torch FP32/FP16, DALI's legacy reader + torch),

with GPU/NVDEC/CPU utilisation sampled during each, and writes ``bench.json``,
``bench.md`` and ``bench.png``.

Modules: :mod:`benchmarks.yolov8n` (the detector), :mod:`benchmarks.clips` (inputs),
:mod:`benchmarks.sampler` (NVML/CPU sampling), :mod:`benchmarks.results` (data model),
:mod:`benchmarks.measure` (ceilings and end to end), :mod:`benchmarks.baselines`,
:mod:`benchmarks.report`, :mod:`benchmarks.harness` (orchestration), :mod:`benchmarks.cli`.

Usage::

    fovea bench --codec both --seconds 6 --out bench-out/
    fovea bench --quick --device cpu --out /tmp/b      # a smoke test on any machine

Importing this package imports nothing heavy (torch, DALI, PyAV, NVML and matplotlib are
imported where they are used).
"""

from __future__ import annotations
