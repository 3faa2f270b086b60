"""Expanding ``sources:`` entries into video files.

An entry is a single file, a glob (``clips/**/*.mp4``), a directory (searched
recursively for video extensions) or a list file (one path per line, ``#`` comments,
relative paths resolved against the list file's folder). Problems with an entry (a
missing file, a glob matching nothing, an unreadable list) are returned as
:class:`streams.errors.SourceError` values, so the job reports them and goes on.

Usage::

    files, problems = expand_sources([SourceEntry(path="videos/"), SourceEntry(list="l.txt")])
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from streams.errors import SourceError

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".flv",
     ".h264", ".264", ".h265", ".265", ".hevc", ".mjpeg", ".mjpg", ".ivf", ".y4m"}
)


class _Entry(Protocol):
    """A ``sources:`` entry (read-only, so frozen dataclasses such as ``SourceEntry`` match)."""

    @property
    def path(self) -> str | None: ...

    @property
    def list(self) -> str | None: ...

    @property
    def uri(self) -> str | None: ...

    @property
    def id(self) -> str | None: ...


@dataclass(frozen=True)
class VideoFile:
    """A video file to process: its path and the id its frames are attributed to."""

    path: Path
    source_id: str


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _expand_path(text: str, origin: str) -> tuple[list[Path], list[SourceError]]:
    p = Path(text).expanduser()
    if _is_glob(text):
        matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
        files = [m for m in matches if m.is_file()]
        if not files:
            return [], [SourceError(origin, "the pattern matches no files")]
        return files, []
    if p.is_dir():
        found = sorted(
            Path(root) / name
            for root, _dirs, names in os.walk(p)
            for name in names
            if Path(name).suffix.lower() in VIDEO_EXTENSIONS
        )
        if not found:
            exts = ", ".join(sorted(VIDEO_EXTENSIONS)[:6])
            return [], [SourceError(origin, f"the directory has no video files ({exts}, ...)")]
        return found, []
    if not p.exists():
        return [], [SourceError(origin, "no such file or directory")]
    return [p], []


def _read_list(list_path: str) -> tuple[list[Path], list[SourceError]]:
    lp = Path(list_path).expanduser()
    try:
        lines = lp.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        return [], [SourceError(list_path, f"cannot read list file: {e.strerror or e}")]
    files: list[Path] = []
    problems: list[SourceError] = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        target = line if Path(line).expanduser().is_absolute() else str(lp.parent / line)
        f, errs = _expand_path(target, f"{list_path}:{n} ({line})")
        files += f
        problems += errs
    return files, problems


def _unique_ids(paths: list[Path]) -> list[str]:
    """File stems, disambiguated with parent folders where two files share a stem."""
    ids = [p.stem for p in paths]
    depth = 1
    while len(set(ids)) != len(ids) and depth < 8:
        counts: dict[str, int] = {}
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
        ids = [
            "/".join(p.with_suffix("").parts[-(depth + 1):]) if counts[i] > 1 else i
            for p, i in zip(paths, ids, strict=True)
        ]
        depth += 1
    return ids


def expand_sources(entries: Iterable[_Entry]) -> tuple[list[VideoFile], list[SourceError]]:
    """Expand file entries (``uri`` entries are skipped) into unique video files."""
    paths: list[Path] = []
    explicit_ids: dict[Path, str] = {}
    problems: list[SourceError] = []
    for e in entries:
        if e.uri is not None:
            continue
        if e.list is not None:
            f, errs = _read_list(e.list)
        else:
            assert e.path is not None
            f, errs = _expand_path(e.path, e.path)
            if e.id is not None and len(f) == 1:
                explicit_ids[f[0].resolve()] = e.id
        paths += f
        problems += errs
    seen: set[Path] = set()
    unique: list[Path] = []
    for p in paths:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(p)
    ids = _unique_ids(unique)
    files = [VideoFile(p, explicit_ids.get(p.resolve(), i)) for p, i in zip(unique, ids, strict=True)]
    return files, problems
