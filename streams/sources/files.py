"""Expanding ``sources:`` entries into video files, each with a unique, stable source id.

An entry is a single file, a glob (``clips/**/*.mp4``), a directory (searched
recursively for video extensions) or a list file (one path, glob or directory per line,
``#`` comments, relative paths resolved against the list file's folder). Problems with an
entry (a missing file, a glob matching nothing, an unreadable list) are returned as
:class:`streams.errors.SourceError` values, so the job reports them and goes on.

Source ids (the ``source`` of every output record) name the file by where it was found,
so the same job always gives a file the same id and no two files share one:

* a directory: the path relative to it (``clips/`` → ``cam1/a.mp4``, ``cam2/a.mp4``);
* a glob: the path relative to its fixed prefix, the folder before the first wildcard
  (``clips/**/*.mp4`` → ``cam1/a.mp4``; ``cam*/a.mp4`` → ``cam1/a.mp4``);
* a single file: its file name (``videos/a.mp4`` → ``a.mp4``);
* a list file: the path relative to the list file's folder for files below it; a line
  outside that folder follows the rules above (``/data/b.mp4`` → ``b.mp4``).

The extension is kept (``x.mp4`` and ``x.webm`` are two sources) and separators are
``/`` on every platform. An ``id:`` in a mapping entry wins: it is the id of the file an
entry names, and the prefix of every id a directory, glob or list entry gives, however
many files it finds (``{path: clips/, id: lobby}`` → ``lobby/cam1/a.mp4``).

A file reached twice (two entries, or symlinks to one file) is processed once, under the
first id it got (an explicit ``id:`` wins over a derived one). Two different files whose
derived ids are equal (``a/x.mp4`` under the roots ``r1/`` and ``r2/``) are told apart by
prefixing the names of their roots' folders, one folder at a time until they differ
(``r1/a/x.mp4``, ``r2/a/x.mp4``); should they still collide, ``~2``, ``~3``, ... is
appended in entry order. Two entries giving the same explicit id to different files is
a :class:`streams.errors.ConfigError`.

Usage::

    files, problems = expand_sources([SourceEntry(path="videos/"), SourceEntry(list="l.txt")])
    files[0].source_id        # "cam1/a.mp4" for videos/cam1/a.mp4
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Protocol

from streams.errors import ConfigError, SourceError

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


@dataclass(frozen=True)
class _Found:
    """A file an entry found: ``rel`` is its id relative to ``root`` (the folder it was found under)."""

    path: Path
    rel: str
    root: str


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _relative(path: Path, root: str) -> str | None:
    """``path`` relative to ``root`` with ``/`` separators, or None when it is not below ``root``."""
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(root))
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return None
    return PurePath(rel).as_posix()


def _glob_root(pattern: Path) -> str:
    """The fixed prefix of a glob: the folder before its first wildcard part."""
    fixed: list[str] = []
    for part in pattern.parts[:-1]:
        if _is_glob(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else os.curdir


def _expand_path(text: str, origin: str) -> tuple[list[_Found], list[SourceError]]:
    p = Path(text).expanduser()
    if _is_glob(text):
        root = _glob_root(p)
        matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
        files = [m for m in matches if m.is_file()]
        if not files:
            return [], [SourceError(origin, "the pattern matches no files")]
        return [_Found(m, _relative(m, root) or m.name, root) for m in files], []
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
        return [_Found(f, _relative(f, str(p)) or f.name, str(p)) for f in found], []
    if not p.exists():
        return [], [SourceError(origin, "no such file or directory")]
    return [_Found(p, p.name, str(p.parent))], []


def _read_list(list_path: str) -> tuple[list[_Found], list[SourceError]]:
    lp = Path(list_path).expanduser()
    try:
        lines = lp.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        return [], [SourceError(list_path, f"cannot read list file: {e.strerror or e}")]
    files: list[_Found] = []
    problems: list[SourceError] = []
    root = str(lp.parent)
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        target = line if Path(line).expanduser().is_absolute() else str(lp.parent / line)
        found, errs = _expand_path(target, f"{list_path}:{n} ({line})")
        for f in found:
            rel = _relative(f.path, root)
            files.append(f if rel is None else _Found(f.path, rel, root))
        problems += errs
    return files, problems


def _entry_files(e: _Entry) -> tuple[list[_Found], list[SourceError], bool]:
    """The files of one entry and whether the entry names a single file (not a glob, dir or list)."""
    if e.list is not None:
        found, errs = _read_list(e.list)
        return found, errs, False
    assert e.path is not None
    found, errs = _expand_path(e.path, e.path)
    single = not _is_glob(e.path) and not Path(e.path).expanduser().is_dir()
    return found, errs, single


def _root_folders(root: str) -> list[str]:
    """The folder names of ``root`` (absolute), outermost first: the prefixes that tell ids apart."""
    path = PurePath(os.path.abspath(root))
    return [p for p in path.parts if p != path.anchor]


def _disambiguate(ids: list[str], roots: list[str], explicit: list[bool], paths: list[Path]) -> list[str]:
    """Make ``ids`` unique: see the module docstring (explicit ids are never changed)."""
    folders = [_root_folders(r) for r in roots]
    depth = [0] * len(ids)
    suffix = [0] * len(ids)

    def current(i: int) -> str:
        prefix = folders[i][len(folders[i]) - depth[i]:] if depth[i] else []
        name = "/".join([*prefix, ids[i]])
        return f"{name}~{suffix[i]}" if suffix[i] else name

    while True:
        groups: dict[str, list[int]] = {}
        for i in range(len(ids)):
            groups.setdefault(current(i), []).append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            return [current(i) for i in range(len(ids))]
        for group in clashes:
            fixed = [i for i in group if explicit[i]]
            if len(fixed) > 1:
                names = ", ".join(str(paths[i]) for i in fixed)
                raise ConfigError("sources", f"two entries give the id {current(fixed[0])!r} to different "
                                             f"files ({names}); give them different ids")
            movable = [i for i in group if not explicit[i]]
            deeper = [i for i in movable if depth[i] < len(folders[i])]
            if deeper:
                for i in deeper:
                    depth[i] += 1
                continue
            # no folder left to tell them apart: number them in entry order (an explicit id keeps its own)
            for n, i in enumerate(movable[0 if fixed else 1:], 2):
                suffix[i] = max(suffix[i] + 1, n)


def expand_sources(entries: Iterable[_Entry]) -> tuple[list[VideoFile], list[SourceError]]:
    """Expand file entries (``uri`` entries are skipped) into unique video files with unique ids.

    Raises:
        ConfigError: two entries give the same explicit ``id:`` to different files.
    """
    order: list[Path] = []  # resolved paths, first appearance first
    chosen: dict[Path, tuple[_Found, str, bool]] = {}  # resolved path -> (found, id, explicit)
    problems: list[SourceError] = []
    for e in entries:
        if e.uri is not None:
            continue
        found, errs, single = _entry_files(e)
        problems += errs
        for f in found:
            if e.id is not None:
                sid, explicit = (e.id if single else f"{e.id}/{f.rel}"), True
            else:
                sid, explicit = f.rel, False
            r = f.path.resolve()
            if r not in chosen:
                order.append(r)
                chosen[r] = (f, sid, explicit)
            elif explicit and not chosen[r][2]:
                chosen[r] = (chosen[r][0], sid, True)
    picked = [chosen[r] for r in order]
    ids = _disambiguate([sid for _, sid, _ in picked], [f.root for f, _, _ in picked],
                        [explicit for _, _, explicit in picked], [f.path for f, _, _ in picked])
    return [VideoFile(f.path, sid) for (f, _, _), sid in zip(picked, ids, strict=True)], problems
