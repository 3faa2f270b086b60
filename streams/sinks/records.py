"""File sinks: JSON Lines (one record per frame) and CSV (one row per detection).

Both flush after every batch, so a crash or Ctrl-C leaves a valid file holding every
frame written so far (each batch is written as whole lines in one call).

JSONL record::

    {"source": "a", "uri": "/v/a.mp4", "frame_index": 7, "pts": 3584, "time_base": "1/12800",
     "pts_seconds": 0.28, "width": 1920, "height": 1080,
     "detections": [{"box": [x1, y1, x2, y2], "confidence": 0.91, "class_id": 0, "label": "person"}]}
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar

from streams.errors import SinkError
from streams.frames import FrameResult
from streams.registry import PluginConfig
from streams.sinks import SINKS
from streams.sinks.process import ProcessSink

log = logging.getLogger(__name__)

_FileSinkT = TypeVar("_FileSinkT", bound="_FileSink")


def frame_record(result: FrameResult) -> dict[str, Any]:
    """The JSON-ready record of one frame; the JSONL and MQTT sinks write it as :func:`frame_json`."""
    f = result.frame
    return {
        "source": f.source_id,
        "uri": f.uri,
        "frame_index": f.frame_index,
        "pts": f.pts,
        "time_base": f"{f.time_base[0]}/{f.time_base[1]}",
        "pts_seconds": None if f.pts_seconds is None else round(f.pts_seconds, 6),
        "width": f.width,
        "height": f.height,
        "detections": result.detections.to_records(),
    }


_DETECTION = '{"box":[%.2f,%.2f,%.2f,%.2f],"confidence":%.4f,"class_id":%d,"label":%s}'


@functools.lru_cache(maxsize=64)
def _json_labels(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(json.dumps(n) for n in names)


def frame_json(result: FrameResult) -> str:
    """:func:`frame_record` as compact JSON, formatted directly: much cheaper than ``json.dumps`` of it.

    ``json.loads(frame_json(r)) == frame_record(r)``: the same keys and values (boxes to 2
    decimals, confidences to 4, both correctly rounded); numbers may be written with
    trailing zeros (``12.50``). This runs for every frame of a job (the JSONL sink and the
    MQTT payloads), so it formats each detection with one ``%`` instead of building dicts.
    """
    f = result.frame
    d = result.detections
    pts_s = "null" if f.pts_seconds is None else repr(round(f.pts_seconds, 6))
    head = (
        f'{{"source":{json.dumps(f.source_id)},"uri":{json.dumps(f.uri)},"frame_index":{int(f.frame_index)},'
        f'"pts":{"null" if f.pts is None else int(f.pts)},"time_base":"{f.time_base[0]}/{f.time_base[1]}",'
        f'"pts_seconds":{pts_s},"width":{int(f.width)},"height":{int(f.height)},"detections":['
    )
    n = len(d)
    if n == 0:
        return head + "]}"
    names = _json_labels(d.class_names)
    k = len(names)
    boxes = d.xyxy.tolist()
    dets = [
        _DETECTION % (b[0], b[1], b[2], b[3], c, i, names[i] if 0 <= i < k else f'"{i}"')
        for b, c, i in zip(boxes, d.confidence.tolist(), d.class_id.tolist(), strict=True)
    ]
    return head + ",".join(dets) + "]}"


class _FileSink:
    """Shared open/flush/close logic of the line-oriented file sinks."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.append = append
        self._fh: IO[str] | None = None

    def __enter__(self: _FileSinkT) -> _FileSinkT:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            existed = self.path.exists() and self.path.stat().st_size > 0
            self._fh = open(self.path, "a" if self.append else "w", encoding="utf-8", newline="")
        except OSError as e:
            raise SinkError(f"cannot open {self.path} for writing: {e.strerror or e}") from e
        self._start(resumed=self.append and existed)
        return self

    def _start(self, resumed: bool) -> None:
        """Hook: write a header."""

    def _emit(self, text: str) -> None:
        if self._fh is None:
            raise SinkError(f"{self.path}: write() called outside 'with'")
        try:
            self._fh.write(text)
            self._fh.flush()
        except OSError as e:
            raise SinkError(f"cannot write {self.path}: {e.strerror or e}") from e

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fh is not None:
            self._fh.flush()
            with contextlib.suppress(OSError):
                os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            log.info("wrote %s", self.path)


@dataclass(frozen=True)
class JsonlConfig:
    """``type: jsonl``: one JSON record per frame (frames without detections included).

    ``writer``: ``process`` formats and writes in a process of its own
    (:class:`streams.sinks.process.ProcessSink`: off the job's GIL); ``inline`` in the
    calling thread.
    """

    path: str
    append: bool = False
    writer: Literal["process", "inline"] = "process"


class JsonlSink(_FileSink):
    """JSON Lines: one record per frame, see the module docstring."""

    def write(self, results: Sequence[FrameResult]) -> None:
        if results:
            self._emit("".join([frame_json(r) + "\n" for r in results]))


CSV_COLUMNS = (
    "source", "uri", "frame_index", "pts", "pts_seconds",
    "x1", "y1", "x2", "y2", "confidence", "class_id", "label",
)


@dataclass(frozen=True)
class CsvConfig:
    """``type: csv``: one row per detection (frames without detections have no row);
    ``writer`` as for :class:`JsonlConfig`."""

    path: str
    append: bool = False
    writer: Literal["process", "inline"] = "process"


class CsvSink(_FileSink):
    """CSV: one row per detection with the columns of :data:`CSV_COLUMNS`."""

    def _start(self, resumed: bool) -> None:
        if not resumed:
            self._emit(",".join(CSV_COLUMNS) + "\r\n")

    def write(self, results: Sequence[FrameResult]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        for r in results:
            f = r.frame
            pts_s = "" if f.pts_seconds is None else f"{f.pts_seconds:.6f}"
            for det in r.detections.to_records():
                x1, y1, x2, y2 = det["box"]
                w.writerow([f.source_id, f.uri, f.frame_index, "" if f.pts is None else f.pts, pts_s,
                            x1, y1, x2, y2, det["confidence"], det["class_id"], det["label"]])
        if buf.tell():
            self._emit(buf.getvalue())


@SINKS.register("jsonl", JsonlConfig)
def _jsonl(config: JsonlConfig) -> JsonlSink | ProcessSink:
    if config.writer == "process":
        return ProcessSink(PluginConfig("jsonl", config))
    return JsonlSink(config.path, config.append)


@SINKS.register("csv", CsvConfig)
def _csv(config: CsvConfig) -> CsvSink | ProcessSink:
    if config.writer == "process":
        return ProcessSink(PluginConfig("csv", config))
    return CsvSink(config.path, config.append)
