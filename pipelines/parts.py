"""A distributed job's parts: each unit of work writes outputs of its own, merged at the end.

A Ray job (:mod:`pipelines.ray_backend`) hands its files to workers in units; each unit runs
as an ordinary resumable file job (:class:`pipelines.runner.FileJob` with a manifest) whose
JSON Lines and CSV outputs go to a folder of its own, a *part*, beside the job's manifest
(``out/detections.parts/w0-u0003/``). The job's manifest records which part holds each
finished file's records. A unit whose worker died leaves a part with some files finished
(its own manifest and commit journals say which: :func:`finished_in`) and others cut off;
those are run again in another unit, and only the part the manifest names for a file
contributes that file's records.

:func:`merge_parts` writes the job's outputs from the parts: for each output, the parts in
the order they were made, each read up to its last commit, keeping the lines of the files
the part holds for the job (a part that holds all of its files is copied as bytes). Each
output is written beside its final name and renamed over it, so a merge cut short is
simply done again. A file's records are therefore those of one uninterrupted run of that
file, in frame order; files follow each other part by part.

Usage::

    cfg_part = part_config(cfg, part_dir, [(path, source_id), ...])
    done = finished_in(cfg, part_dir)                 # after the unit's worker died
    merge_parts(cfg, [(part_dir, {"a.mp4", ...}), ...])
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from pipelines.resume import finished_files
from streams.config import JobConfig, SourceEntry
from streams.errors import SinkError
from streams.manifest import FileRecord, Manifest, file_sinks, manifest_path
from streams.sinks.commits import fsync_dir, read_commits
from streams.sinks.records import CSV_COLUMNS, EVENT_CSV_COLUMNS, events_path

log = logging.getLogger(__name__)


def part_outputs(cfg: JobConfig, part: Path) -> list[Path]:
    """The main file of each of the job's resumable outputs inside ``part`` (``0.detections.jsonl``, ...)."""
    return [part / f"{i}.{Path(s.config.path).name}" for i, s in file_sinks(cfg)]


def part_config(cfg: JobConfig, part: Path, files: Sequence[tuple[str, str]]) -> JobConfig:
    """``cfg`` for one unit: its ``files`` (path, source id) as sources, its outputs in ``part``."""
    sinks = list(cfg.sinks)
    for (i, s), path in zip(file_sinks(cfg), part_outputs(cfg, part), strict=True):
        sinks[i] = replace(s, config=replace(s.config, path=str(path), append=False))
    sources = [SourceEntry(path=p, id=sid) for p, sid in files]
    return replace(cfg, sources=sources, sinks=sinks)


def finished_in(cfg: JobConfig, part: Path) -> dict[str, FileRecord]:
    """The files a unit finished in ``part`` (its manifest says they ended; its outputs hold them)."""
    path = manifest_path(replace(cfg, sinks=[replace(s, config=replace(s.config, path=str(p)))
                                             for (_, s), p in zip(file_sinks(cfg), part_outputs(cfg, part),
                                                                  strict=True)]))
    assert path is not None
    manifest = Manifest.load(path)
    if manifest is None:
        return {}
    return finished_files(manifest, part_outputs(cfg, part))


def merge_parts(cfg: JobConfig, parts: Sequence[tuple[Path, set[str]]]) -> list[Path]:
    """Write the job's outputs from ``parts`` (each with the source ids it holds for the job);
    returns the outputs written (a CSV's events file only when there are events)."""
    written: list[Path] = []
    for i, s in file_sinks(cfg):
        final = Path(s.config.path).expanduser()
        inside = [(part / f"{i}.{final.name}", owned) for part, owned in parts]
        if s.type == "jsonl":
            _merge(final, inside, _jsonl_source, b"")
        else:
            _merge(final, inside, _csv_source(0), _csv_line(CSV_COLUMNS))
            ev = events_path(final)
            if _merge(ev, [(events_path(p), owned) for p, owned in inside], _csv_source(1),
                      _csv_line(EVENT_CSV_COLUMNS), events=True):
                written.append(ev)
        written.append(final)
    return written


def _csv_line(columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerow(columns)
    return buf.getvalue().encode("utf-8")


def _jsonl_source(line: bytes) -> str:
    return str(json.loads(line)["source"])


def _csv_source(column: int) -> Callable[[bytes], str]:
    def source(line: bytes) -> str:
        return next(csv.reader(io.StringIO(line.decode("utf-8"), newline="")))[column]
    return source


def _merge(final: Path, parts: Sequence[tuple[Path, set[str]]], source_of: Callable[[bytes], str], header: bytes,
           events: bool = False) -> bool:
    """Concatenate each part's file up to its last commit, keeping the lines of the sources the
    part holds (a CSV's header once, at the top). An events file is written only when some
    part has events; returns whether the file was written."""
    tmp = final.with_name(f".{final.name}.merging")
    sep = b"\r\n" if header else b"\n"
    rows = 0
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            out.write(header)
            for path, owned in parts:
                commit = read_commits(path.with_name(_main_name(path)) if events else path)
                if commit is None or not path.exists():
                    continue
                with open(path, "rb") as fh:
                    data = fh.read(commit.offsets[1 if events else 0])
                if header:
                    data = data.partition(sep)[2]  # the part's own header
                if not set(commit.frames) <= owned:  # lines of files another part holds: left out
                    data = b"".join(line + sep for line in data.split(sep)[:-1] if source_of(line) in owned)
                out.write(data)
                rows += data.count(sep)
            out.flush()
            os.fsync(out.fileno())
        if events and rows == 0:
            tmp.unlink()
            return False
        os.replace(tmp, final)
    except OSError as e:
        raise SinkError(f"cannot write {final} from the job's parts: {e.strerror or e}") from e
    fsync_dir(final)
    return True


def _main_name(events: Path) -> str:
    """The detections CSV an events CSV belongs to (``0.d.events.csv`` -> ``0.d.csv``): its
    journal holds the events file's commits too."""
    return f"{events.stem.removesuffix('.events')}{events.suffix}"


def remove_parts(root: Path) -> None:
    """Delete the parts once the merged outputs are in place."""
    shutil.rmtree(root, ignore_errors=True)
