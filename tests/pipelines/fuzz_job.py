"""Running ``fovea run`` over the fuzz corpus (:mod:`tests.pipelines.fuzz_corpus`) and checking it.

Besides the corpus's damaged files, a job gets hostile ones that need the job running:

* files still being written: a writer thread appends the rest of an MKV, a WebM and a
  fragmented MP4 (as a recorder writes them, front to back) and of a plain MP4 while the
  job runs, from when the probe has seen the first 2/5 (the probe hook waits for the next
  append), so each must be reported as changed (the plain MP4, whose index comes last,
  fails at the probe);
* a decoder that hangs: right after the probe, a file is replaced by a named pipe nobody
  writes to, so opening it blocks in FFmpeg's ``open()`` (native code, no timeout): the
  decode watchdog must end it, report the file, and the job go on. The pipe is opened for
  writing after the job, so the abandoned thread ends too.

:func:`check` lists every broken promise: a good file whose records differ from a clean
run, a damaged file not reported that must be, a reported file whose records and counts
disagree, a frame recorded twice, a file missing from the summary, an exit code but 1.

Usage::

    with Hostile(extras):
        run = run_fovea([good, bad, hostile], model, out, "cpu", stall_timeout_s=5)
    problems = check(run, cases, clean_records)
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from pipelines.progress import JobSummary
from streams.errors import SourceError
from streams.sources import probe as probe_module
from tests.pipelines.fuzz_corpus import BASES, Case, encode, write_base

GROWING = ("h264.mkv", "vp9.webm", "h264-frag.mp4", "h264.mp4")  # bases written while the job runs
STALLING = "h264.mkv"  # the base a named pipe replaces after the probe


@dataclass
class FuzzRun:
    """What one ``fovea run`` did: its exit code, summary, stdout and records per source id."""

    code: int
    summary: JobSummary
    text: str
    records: dict[str, list[str]]  # JSONL lines, in file order
    seconds: float


@dataclass
class Extras:
    """The hostile files of a job (see the module docstring) and their cases."""

    folder: Path
    growing: dict[Path, bytes]  # path -> the bytes still to append
    pipes: list[Path]
    cases: list[Case]


def make_extras(folder: Path, scratch: Path) -> Extras:
    """Write the start of each growing file and the files the pipes will replace into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    bases = {b.name: b for b in BASES}
    growing: dict[Path, bytes] = {}
    cases: list[Case] = []
    for name in GROWING:
        b = bases[name]
        whole = encode(scratch / b.name, b.encoder, b.width, b.height, 48, b.options, b.container_options,
                       sequential=b.suffix != ".mp4" or b.counted is False).read_bytes()
        path = folder / f"growing-{name}"
        head = len(whole) * 2 // 5
        path.write_bytes(whole[:head])
        growing[path] = whole[head:]
        cases.append(Case(-1, path.name, "growing", name, f"{head} of {len(whole)} bytes, the rest appended "
                                                          "while the job runs", True, 48))
    stall = write_base(scratch, bases[STALLING])
    pipe = folder / f"stall-{STALLING}"
    pipe.write_bytes(stall.read_bytes())
    cases.append(Case(-1, pipe.name, "stall", STALLING, "replaced by a named pipe after the probe", True,
                      bases[STALLING].frames))
    return Extras(folder, growing, [pipe], cases)


class Hostile:
    """While entered: the writer thread appends to the growing files, and the probe, once it
    has seen a growing file, waits for its next append; a pipe replaces each stalling file
    once probed. On leaving, the readers stuck on a pipe get their end of file (and the pipe
    is removed), and the writer finishes."""

    CHUNK = 512
    PERIOD_S = 0.05

    def __init__(self, extras: Extras, monkeypatch: pytest.MonkeyPatch) -> None:
        self.extras = extras
        self._mp = monkeypatch
        self._appends = collections.Counter[Path]()
        self._probed: set[Path] = set()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write, name="fuzz-writer", daemon=True)

    def __enter__(self) -> Hostile:
        real = probe_module.probe_video

        def probe(path: Path) -> Any:
            with self._cond:
                seen = self._appends[path]
            try:
                return real(path)
            finally:
                if path in self.extras.growing:
                    with self._cond:  # it grows after the probe, whatever the timing
                        self._probed.add(path)
                        self._cond.wait_for(lambda: self._appends[path] > seen or self._stop.is_set(), timeout=30)
                if path in self.extras.pipes:
                    path.unlink()
                    os.mkfifo(path)

        self._mp.setattr(probe_module, "probe_video", probe)
        self._writer.start()
        return self

    def _write(self) -> None:
        """Append a chunk to each growing file every period, from when the probe has seen it
        (so what the probe sees does not depend on timing)."""
        left = dict(self.extras.growing)
        while left and not self._stop.is_set():
            for path in list(left):
                with self._cond:
                    if path not in self._probed:
                        continue
                chunk, left[path] = left[path][:self.CHUNK], left[path][self.CHUNK:]
                with open(path, "ab") as f:
                    f.write(chunk)
                with self._cond:
                    self._appends[path] += 1
                    self._cond.notify_all()
                if not left[path]:
                    del left[path]
            time.sleep(self.PERIOD_S)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for pipe in self.extras.pipes:
            if not pipe.is_fifo():
                continue
            # holding both ends lets a reader blocked in open() through (then it waits for data);
            # once the name is gone no new reader can block, and closing gives the readers EOF
            fd = os.open(pipe, os.O_RDWR)
            pipe.unlink()
            os.close(fd)
        self._writer.join(timeout=10)


def write_job(path: Path, sources: list[Path], model: Path, out: Path, device: str, stall_timeout_s: float,
              sessions: int = 2) -> Path:
    """A job config: small model input (the corpus's clips are small), JSONL records."""
    path.write_text(json.dumps({
        "sources": [str(s) for s in sources],
        "model": {"path": str(model), "input_size": [64, 96]},
        "engine": {"device": device},
        "decode": {"sessions": sessions, "stall_timeout_s": stall_timeout_s},
        "sinks": [{"type": "jsonl", "path": str(out / "detections.jsonl")}],
    }))
    return path


def run_fovea(config: Path, out: Path, monkeypatch: pytest.MonkeyPatch, hang_after_s: float) -> FuzzRun:
    """``fovea run CONFIG`` in this process, in a thread: a job still running after
    ``hang_after_s`` is a hang (every thread's stack is printed, the test fails)."""
    from pipelines import cli, runner

    summaries: list[JobSummary] = []
    real_text, real_plan = JobSummary.to_text, runner.decode_plan

    def to_text(self: JobSummary) -> str:  # the summary fovea prints: the one to check
        summaries.append(self)
        return real_text(self)

    def decode_plan(cfg: Any, *args: Any) -> Any:
        # the runner hands decode.stall_timeout_s to the plan (idempotent once it does so itself)
        return replace(real_plan(cfg, *args), stall_timeout_s=cfg.decode.stall_timeout_s)

    monkeypatch.setattr(JobSummary, "to_text", to_text)
    monkeypatch.setattr(runner, "decode_plan", decode_plan)
    result: dict[str, Any] = {}
    stdout = _Tee()

    def main() -> None:
        try:
            with contextlib.redirect_stdout(stdout):
                result["code"] = cli.main(["--log-level", "ERROR", "run", str(config), "--no-progress"])
        except BaseException as e:  # reported by the test
            result["error"] = e

    t0 = time.monotonic()
    thread = threading.Thread(target=main, name="fuzz-job", daemon=True)
    thread.start()
    thread.join(hang_after_s)
    seconds = time.monotonic() - t0
    if thread.is_alive():
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        pytest.fail(f"the job hung: still running after {hang_after_s:.0f} s (stacks above)")
    if "error" in result:
        raise result["error"]
    assert summaries, f"fovea run exited {result['code']} without printing a summary (its error is on stderr)"
    records: dict[str, list[str]] = collections.defaultdict(list)
    jsonl = out / "detections.jsonl"
    for line in jsonl.read_text().splitlines() if jsonl.exists() else []:
        records[json.loads(line)["source"]].append(line)
    return FuzzRun(result["code"], summaries[-1], stdout.getvalue(), dict(records), seconds)


class _Tee:
    """A stdout that keeps what is written (redirect_stdout works per process, so only the
    job's thread writes here while it runs)."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return "".join(self._parts)


def clean_records(run: FuzzRun) -> dict[str, list[str]]:
    """The records of a clean run (its files all done), per source id."""
    assert run.code == 0 and run.summary.ok, run.text
    return run.records


def _frame(line: str) -> int:
    return int(json.loads(line)["frame_index"])


def check(run: FuzzRun, cases: list[Case], clean: dict[str, list[str]], folders: dict[str, Path],
          seed: int) -> list[str]:
    """Every broken promise of ``run`` (see the module docstring); ``folders``: each case's
    folder by file name (to probe a file reported done)."""
    from streams.sources.probe import probe_video

    problems: list[str] = []
    s = run.summary
    failures = {Path(f.name).name: f for f in s.failures}
    if run.code != 1:
        problems.append(f"exit code {run.code}, expected 1")
    if s.files_total != len(cases) + len(clean):
        problems.append(f"{s.files_total} files in the summary, {len(cases) + len(clean)} given")
    if s.files_done + len(s.failures) != s.files_total:
        problems.append(f"{s.files_done} done + {len(s.failures)} failed != {s.files_total} files")
    if sum(len(v) for v in run.records.values()) != s.frames:
        problems.append(f"{sum(len(v) for v in run.records.values())} records, the summary says {s.frames} frames")
    for sid, lines in clean.items():
        if sid in failures:
            problems.append(f"good file {sid} reported: {failures[sid].reason}")
        if run.records.get(sid) != lines:
            problems.append(f"good file {sid}: {len(run.records.get(sid, []))} records differ from the clean "
                            f"run's {len(lines)}")
    for c in cases:
        where = f"case {c.name} (seed {seed}; {c.kind}: {c.detail})"
        lines = run.records.get(c.name, [])
        frames = [_frame(x) for x in lines]
        if len(set(frames)) != len(frames):
            problems.append(f"{where}: a frame recorded twice")
        f = failures.get(c.name)
        if f is None:
            if c.must_report:
                problems.append(f"{where}: not reported ({len(lines)} records)")
                continue
            try:
                expected = probe_video(folders[c.name] / c.name).expected_frames
            except SourceError as e:
                problems.append(f"{where}: done, but it does not probe: {e.reason}")
                continue
            if sorted(frames) != list(range(len(frames))) or len(frames) < expected:
                problems.append(f"{where}: done with {len(frames)} records, {expected} frames expected")
            continue
        if f.frames != len(lines):
            problems.append(f"{where}: reported with {f.frames} frames, {len(lines)} records written")
        if frames and f.expected and max(frames) >= max(f.expected, f.frames):
            problems.append(f"{where}: frame {max(frames)} recorded, {f.expected} expected")
        if f.kind == "incomplete" and not f.frames < f.expected:
            problems.append(f"{where}: incomplete with {f.frames} of {f.expected} frames")
        if f.name not in run.text or f.reason not in run.text:
            problems.append(f"{where}: missing from the printed summary")
    return problems


def outcome_table(run: FuzzRun, cases: list[Case]) -> str:
    """Per kind: cases reported failed / incomplete / done (for the test's log)."""
    failures = {Path(f.name).name: f.kind for f in run.summary.failures}
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for c in cases:
        table[c.kind][failures.get(c.name, "done")] += 1
    rows = [f"{k:10s} " + "  ".join(f"{o} {n}" for o, n in sorted(v.items())) for k, v in sorted(table.items())]
    return "\n".join(rows)


@contextlib.contextmanager
def no_leftover_threads(grace_s: float = 10.0) -> Iterator[None]:
    """Fail when a thread started inside is still running ``grace_s`` after leaving (a
    decode thread still stuck although its pipe was released)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left:
            return
        time.sleep(0.1)
    pytest.fail(f"threads still running after the job: {[t.name for t in left]}")


@dataclass
class CorpusRun:
    """A clean run over the good clips and the job over good, damaged and hostile files."""

    run: FuzzRun
    clean: dict[str, list[str]]
    cases: list[Case]
    folders: dict[str, Path]  # each case's folder, by file name
    seed: int


def run_corpus(root: Path, model: Path, device: str, seed: int, cases: int, stall_timeout_s: float,
               hang_after_s: float) -> CorpusRun:
    """Write the corpus under ``root``, run the clean job and the fuzz job on ``device``."""
    from tests.pipelines.fuzz_corpus import make_corpus, write_bases

    bases = write_bases(root / "good")
    corpus = make_corpus(root / "bad", bases, seed, cases)
    extras = make_extras(root / "hostile", root / "scratch")
    with pytest.MonkeyPatch.context() as mp:
        config = write_job(root / "clean.json", [root / "good"], model, root / "clean", device, stall_timeout_s)
        clean = clean_records(run_fovea(config, root / "clean", mp, hang_after_s))
    with pytest.MonkeyPatch.context() as mp, no_leftover_threads():
        config = write_job(root / "fuzz.json", [root / "good", root / "bad", extras.folder], model, root / "out",
                           device, stall_timeout_s)
        with Hostile(extras, mp):
            run = run_fovea(config, root / "out", mp, hang_after_s)
    folders = {c.name: root / "bad" for c in corpus} | {c.name: extras.folder for c in extras.cases}
    return CorpusRun(run, clean, corpus + extras.cases, folders, seed)
