"""The Python API: build a pipeline from a config or keyword arguments, iterate its results.

Usage::

    from pipelines import Pipeline

    pipeline = Pipeline(model="default", device="cpu", conf_threshold=0.3)
    for result in pipeline.run(["videos/"]):          # FrameResult, one per decoded frame
        print(result.frame.source_id, result.frame.frame_index, len(result.detections))
    print(pipeline.summary.to_text())

    Pipeline("job.yaml").run_to_end()                  # the config's sinks, like `fovea run job.yaml`
    Pipeline("job.yaml", on_results=print).run_to_end()    # plus a callback sink

A pipeline built from keyword arguments writes no files: its results go to the iterator
(and to ``on_results``); give ``sinks=[{"type": "jsonl", "path": "out.jsonl"}]`` for files.
A config file's sinks are kept. Sources that are stream URIs (``rtsp://``, ``file://``
paced clips) run as a live job: the iterator yields results until ``duration_s`` has
passed or :meth:`Pipeline.stop` is called.

The ``fovea`` command line is a thin layer over the same jobs (:mod:`pipelines.runner`,
:mod:`pipelines.live`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.progress import JobSummary
from pipelines.runner import FileJob
from pipelines.stages import SourceStage
from streams.config import JobConfig, load_config, parse_config
from streams.errors import ConfigError, MissingDependencyError
from streams.frames import FrameResult
from streams.schema import from_dict
from streams.sinks import Sink
from streams.sinks.callback import CallbackSink

if TYPE_CHECKING:  # live jobs need the 'live' extra: imported when a live run starts
    from pipelines.live import LiveRunner, LiveSummary

# keyword arguments → (section, key) of the config
_KEYWORDS: dict[str, tuple[str, str]] = {
    "model": ("model", "path"),
    "input_size": ("model", "input_size"),
    "class_names": ("model", "class_names"),
    "engine": ("engine", "kind"),
    "device": ("engine", "device"),
    "precision": ("engine", "precision"),
    "batch_size": ("engine", "batch_size"),
    "inference_threads": ("engine", "inference_threads"),
    "decode_backend": ("decode", "backend"),
    "decode_sessions": ("decode", "sessions"),
    "conf_threshold": ("postprocess", "conf_threshold"),
    "iou_threshold": ("postprocess", "iou_threshold"),
    "max_detections": ("postprocess", "max_detections"),
    "class_agnostic": ("postprocess", "class_agnostic"),
    "resize_filter": ("preprocess", "resize_filter"),
    "canvas": ("preprocess", "canvas"),
}


class Pipeline:
    """A configured pipeline; see the module docstring.

    Args:
        config: a :class:`~streams.config.JobConfig`, a YAML file's path, or ``None``
            (defaults plus the keyword arguments).
        sinks: sink configs (as in YAML) replacing the config's; ``None`` keeps the
            config file's sinks (none when built without a file).
        on_results: called with each batch's results as they reach the sinks.
        stages: per-source stages (:class:`~pipelines.stages.SourceStage`), run in each
            source's frame order before the sinks.
        show_progress: the progress line on stderr.
        **options: config values by name: ``model``, ``input_size``, ``class_names``,
            ``engine``, ``device``, ``precision``, ``batch_size``, ``inference_threads``,
            ``decode_backend``, ``decode_sessions``, ``conf_threshold``, ``iou_threshold``,
            ``max_detections``, ``class_agnostic``, ``resize_filter``, ``canvas``
            (``preprocess.canvas``: ``"square"`` runs a dynamic-shape export at its whole
            input size). Checked like the YAML (bad values raise
            :class:`~streams.errors.ConfigError` before any work).
    """

    def __init__(self, config: JobConfig | str | Path | None = None, *, sinks: Sequence[dict[str, Any]] | None = None,
                 on_results: Callable[[Sequence[FrameResult]], object] | None = None,
                 stages: Sequence[SourceStage] = (), show_progress: bool = False, **options: Any) -> None:
        unknown = sorted(set(options) - set(_KEYWORDS))
        if unknown:
            raise ConfigError(unknown[0], f"unknown option; expected one of {sorted(_KEYWORDS)}")
        self._base = config
        self._sinks = None if sinks is None else [dict(s) for s in sinks]
        self._options = options
        self._on_results = on_results
        self._stages = list(stages)
        self.show_progress = show_progress
        self.summary: JobSummary | LiveSummary | None = None
        self._live: LiveRunner | None = None
        self.config = self._config(None)  # validated now: a bad option fails here, not mid-run

    def _config(self, sources: Iterable[str | Path] | None) -> JobConfig:
        raw: dict[str, Any] = {}
        for name, value in self._options.items():
            section, key = _KEYWORDS[name]
            raw.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
        if sources is not None:
            src = [str(s) for s in sources]
            if not src:
                raise ConfigError("sources", "at least one source is required")
            raw["sources"] = src
        if isinstance(self._base, JobConfig):
            cfg = self._base
            if raw:
                cfg = _merge(cfg, raw)
        elif self._base is not None:
            cfg = load_config(self._base, None)
            if raw:
                cfg = _merge(cfg, raw)
        else:
            raw.setdefault("sources", ["."])  # replaced by run()'s sources
            cfg = replace(parse_config(raw), sinks=[])
        if self._sinks is not None:
            cfg = replace(cfg, sinks=parse_config({"sources": ["."], "sinks": self._sinks}).sinks
                          if self._sinks else [])
        return cfg

    def run(self, sources: Iterable[str | Path] | None = None, duration_s: float | None = None
            ) -> Iterator[FrameResult]:
        """Run over ``sources`` (files, folders, globs, or stream URIs; default: the config's)
        and yield every frame's result as it leaves the last stage.

        The summary is in :attr:`summary` once the iterator is exhausted (or closed).
        """
        cfg = self._config(sources)
        extra: list[Sink] = [CallbackSink(self._on_results)] if self._on_results is not None else []
        if any(s.uri is not None for s in cfg.sources):
            yield from self._run_live(cfg, extra, duration_s)
            return
        job = FileJob(cfg, show_progress=self.show_progress, stages=self._stages, sinks=extra)
        self.summary = job.summary
        for batch in job.batches():
            yield from batch

    def run_to_end(self, sources: Iterable[str | Path] | None = None, duration_s: float | None = None
                   ) -> JobSummary | LiveSummary:
        """Run without iterating (results go to the sinks and ``on_results`` only)."""
        for _ in self.run(sources, duration_s):
            pass
        assert self.summary is not None
        return self.summary

    def stop(self) -> None:
        """Stop a live run (from another thread or a callback): the iterator ends once the
        batches in hand have reached the sinks."""
        if self._live is not None:
            self._live.stop_event.set()

    def _run_live(self, cfg: JobConfig, extra: list[Sink], duration_s: float | None) -> Iterator[FrameResult]:
        try:
            from pipelines.live import LiveRunner
        except ModuleNotFoundError as e:
            raise MissingDependencyError(e.name or "prometheus_client", "live cameras",
                                         'pip install -e ".[live]"') from e
        out: queue.Queue[Sequence[FrameResult] | None] = queue.Queue(maxsize=256)
        runner = LiveRunner(cfg, stages=self._stages, sinks=[*extra, CallbackSink(out.put)])
        self._live = runner
        self.summary = runner.summary
        error: list[BaseException] = []

        def work() -> None:
            try:
                runner.run(duration_s)
            except BaseException as e:  # raised again in the iterating thread
                error.append(e)
            finally:
                out.put(None)

        thread = threading.Thread(target=work, name="fovea-live-job", daemon=True)
        thread.start()
        try:
            while (batch := out.get()) is not None:
                yield from batch
        finally:
            runner.stop_event.set()
            with contextlib.suppress(queue.Empty):  # let the job finish its last writes
                while thread.is_alive():
                    out.get(timeout=0.1)
            thread.join()
            self._live = None
        if error:
            raise error[0]


def _merge(cfg: JobConfig, raw: dict[str, Any]) -> JobConfig:
    """``cfg`` with the sections in ``raw`` updated key by key, validated like the YAML."""
    sections: dict[str, Any] = {}
    for section, values in raw.items():
        if section == "sources":
            continue
        current = getattr(cfg, section)
        sections[section] = from_dict(type(current), {**_plain(dataclasses.asdict(current)), **values}, section)
    out = replace(cfg, **sections)
    if "sources" in raw:
        out = replace(out, sources=parse_config({"sources": raw["sources"]}).sources)
    return out


def _plain(value: Any) -> Any:
    """Tuples as lists, as YAML would give them (the schema checks lists for tuple fields)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
