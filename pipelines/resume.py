"""Resuming a file job: which files an earlier run finished, where the others continue, and
the manifest kept up to date as the job goes.

A job with a manifest (:mod:`streams.manifest`, ``fovea run``) writes it beside its first
JSON Lines or CSV output, and its file outputs keep commit journals
(:mod:`streams.sinks.commits`). ``fovea run --resume``:

1. refuses, before any work, a job whose outputs cannot continue (a ``video`` or ``mqtt``
   sink), a config that differs from the manifest's (naming each key with both values), a
   manifest of a Ray job, and a file whose identity changed since it was started;
2. waits for any process still writing the outputs (the sink process of a killed job
   finishes what it had received), then reads each output's last commit;
3. counts a file as finished when the manifest says it ended (done, incomplete, failed) and
   every output holds its frames up to the manifest's ``end``; such files are skipped;
4. continues every other file from the frames every output holds (``committed``): the
   outputs are cut back to their last commit and drop the records of frames they already
   hold, so each file's records come out once, in frame order, as in an uninterrupted run.

Without a manifest, ``--resume`` starts the job from the beginning (so a restart script can
always pass it). Without ``--resume`` a job starts afresh and replaces an earlier manifest.

Usage::

    state = prepare_job(cfg, files, device, resume=True)     # ConfigError: refused, with the reason
    todo = [f for f in files if f.source_id not in state.finished]
    book = ManifestBook(state, cfg)
    book.started(file, expected_frames); book.ended(sid, "done", ...); book.save(force=True)
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from streams.config import JobConfig
from streams.errors import ConfigError
from streams.manifest import (
    FileIdentity,
    FileRecord,
    Manifest,
    Status,
    config_diff,
    file_identity,
    file_sinks,
    fingerprint,
    manifest_path,
    not_resumable,
)
from streams.sinks.commits import JournalTail, locked, read_commits
from streams.sources.files import VideoFile

log = logging.getLogger(__name__)


@dataclass
class JobState:
    """What a job starts from: its manifest and, when resumed, what an earlier run did."""

    path: Path
    manifest: Manifest
    resumed: bool
    finished: dict[str, FileRecord]  # files an earlier run finished: skipped
    committed: dict[str, int]  # per file still to do: frames every output holds already


def output_paths(cfg: JobConfig) -> list[Path]:
    """The main file of each resumable output (the one its journal and lock belong to)."""
    return [Path(s.config.path).expanduser() for _, s in file_sinks(cfg)]


def with_commits(cfg: JobConfig, mode: str) -> JobConfig:
    """``cfg`` with every resumable output keeping a commit journal (``mode``: start, resume)."""
    sinks = [replace(s, config=replace(s.config, commits=mode)) if s.type in ("jsonl", "csv") else s
             for s in cfg.sinks]
    return replace(cfg, sinks=sinks)


def prepare_job(cfg: JobConfig, files: list[VideoFile], device: str, resume: bool) -> JobState:
    """The job's manifest, new or resumed; see the module docstring. Raises :class:`ConfigError`."""
    path = manifest_path(cfg)
    if path is None:
        raise ConfigError("sinks", "a job with a manifest needs a jsonl or csv sink")
    config = fingerprint(cfg, device)
    old = Manifest.load(path) if resume else None
    if not resume or old is None:
        if resume:
            log.warning("--resume: no manifest at %s: the job starts from the beginning", path)
        else:
            _replacing(path)
        manifest = Manifest(config, {f.source_id: FileRecord() for f in files})
        return JobState(path, manifest, False, {}, {})
    problem = not_resumable(cfg)
    if problem is not None:
        raise problem
    if old.backend != "local":
        raise ConfigError("--ray", f"the job in {path} ran on Ray: resume it with --ray (and --resume)")
    diff = config_diff(old.config, config)
    if diff:
        raise ConfigError("--resume", f"the config differs from the job being resumed ({path}): "
                                      + "; ".join(diff) + ". Resume with the job's config, or start over without "
                                      "--resume (the outputs are then rewritten)")
    held = outputs_hold(output_paths(cfg))
    finished: dict[str, FileRecord] = {}
    committed: dict[str, int] = {}
    for f in files:
        rec = old.files.setdefault(f.source_id, FileRecord())
        _check_identity(f, rec)
        n = held.get(f.source_id, 0)
        if rec.final and n >= rec.end:
            finished[f.source_id] = rec
        else:
            committed[f.source_id] = n
            rec.committed = n
    gone = sorted(set(old.files) - {f.source_id for f in files})
    for sid in gone:
        rec = old.files[sid]
        if not rec.final:
            log.error("%s: no longer among the job's sources; the records written for it so far stay in the "
                      "outputs", sid)
    return JobState(path, old, True, finished, committed)


def _replacing(path: Path) -> None:
    """Say so when a fresh start replaces an unfinished job (``--resume`` would have continued it)."""
    with contextlib.suppress(ConfigError):
        old = Manifest.load(path)
        if old is not None and not old.finished:
            log.warning("%s: an unfinished job's manifest; this run starts the job over and rewrites its outputs "
                        "('fovea run --resume' continues a job instead)", path)


def outputs_hold(outputs: list[Path]) -> dict[str, int]:
    """Per source, the frames every one of ``outputs`` holds, from their journals (read after
    any process still writing them has finished)."""
    held: dict[str, int] | None = None
    for output in outputs:
        with locked(output):
            commit = read_commits(output)
        frames = {} if commit is None else commit.frames
        held = dict(frames) if held is None else {sid: min(n, frames.get(sid, 0)) for sid, n in held.items()}
    return held or {}


def finished_files(manifest: Manifest, outputs: list[Path]) -> dict[str, FileRecord]:
    """The files of ``manifest`` that ended and whose records every one of ``outputs`` holds."""
    held = outputs_hold(outputs)
    return {sid: rec for sid, rec in manifest.files.items() if rec.final and held.get(sid, 0) >= rec.end}


def _check_identity(f: VideoFile, rec: FileRecord) -> None:
    """Refuse a file that changed since the job started it: its records are from the old content."""
    if rec.identity is None or rec.status == "pending":
        return
    try:
        now = file_identity(f.path)
    except OSError as e:
        if rec.final:
            return  # finished, its records are in the outputs: nothing to read again
        raise ConfigError("sources", f"{f.path}: cannot read it to resume it ({e.strerror or e})") from e
    why = ("it is another file now (" + now.path + ", was " + rec.identity.path + ")"
           if now.path != rec.identity.path else rec.identity.differs(now))
    if why is not None:
        raise ConfigError("sources", f"{f.path} ({f.source_id}) changed since the job started it: {why}; the "
                                     "outputs hold records of its earlier content. Start the job over without "
                                     "--resume")


class ManifestBook:
    """Keeps the manifest up to date as files start and end; writes it at most every
    ``interval`` seconds (and at least ten times as long apart as a write takes, so a
    manifest of many files does not slow the job), and when forced."""

    def __init__(self, state: JobState, cfg: JobConfig, interval: float = 1.0) -> None:
        self.state = state
        self.interval = interval
        self._tails = [JournalTail(p) for p in output_paths(cfg)]
        self._hashing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fovea-identity")
        self._identities: dict[str, Future[FileIdentity]] = {}
        self._last = 0.0
        self._cost = 0.0
        self.completed = False  # set by the job when it ran to its end

    def __enter__(self) -> ManifestBook:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """The last save: ``finished`` when the job ran to its end (:attr:`completed`), nothing
        failed on the way out (the sinks' last commits come first) and every file ended."""
        try:
            done = self.completed and exc_type is None and all(r.final for r in self.manifest.files.values())
            self.save(force=True, finished=done)
        finally:
            self._hashing.shutdown(wait=True, cancel_futures=True)

    @property
    def manifest(self) -> Manifest:
        return self.state.manifest

    def started(self, f: VideoFile, expected: int) -> None:
        rec = self.manifest.files.setdefault(f.source_id, FileRecord())
        rec.expected = expected
        rec.status = "started"
        if rec.identity is None:  # hashed off the job's thread (its first MiB: read by the decoder next anyway)
            self._identities[f.source_id] = self._hashing.submit(file_identity, f.path)
        self.save()

    def ended(self, sid: str, status: Status, frames: int, expected: int, end: int, reason: str = "") -> None:
        rec = self.manifest.files.setdefault(sid, FileRecord())
        rec.status, rec.frames, rec.expected, rec.reason = status, frames, expected, reason
        rec.end = max(end, self.state.committed.get(sid, 0))
        self.save()

    def save(self, force: bool = False, finished: bool = False) -> None:
        """Write the manifest (when it is time, or ``force``); ``finished``: the job completed."""
        now = time.monotonic()
        if not force and now - self._last < max(self.interval, 10 * self._cost):
            return
        self._collect(wait=force)
        self._committed()
        self.manifest.finished = finished
        self.manifest.save(self.state.path)
        self._last = time.monotonic()
        self._cost = self._last - now

    def _collect(self, wait: bool) -> None:
        for sid, fut in list(self._identities.items()):
            if not (wait or fut.done()):
                continue
            del self._identities[sid]
            try:
                self.manifest.files[sid].identity = fut.result()
            except OSError as e:
                log.warning("%s: cannot read it for its identity in the manifest (%s)", sid, e.strerror or e)

    def _committed(self) -> None:
        """Per file, the frames every output has made durable (from their journals)."""
        commits = [t.read() for t in self._tails]
        if any(c is None for c in commits):
            return
        for sid, rec in self.manifest.files.items():
            rec.committed = min(c.frames.get(sid, 0) for c in commits if c is not None)
