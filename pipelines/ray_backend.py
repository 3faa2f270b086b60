"""``fovea run --ray``: a file job over the GPUs of a Ray cluster, one Fovea pipeline per GPU.

Ray is an optional extra (``pip install -e ".[ray]"``): this module is imported only for
``--ray`` and imports ``ray`` only when a job starts. ``docs/scale.md`` says how to run it on
one node and on many, and why Ray.

- **Workers**: Ray actors (:class:`FoveaWorker`), each holding one pipeline: the engine opened,
  its CUDA graphs captured and warmed up once (:class:`pipelines.runner.InferenceSetup`),
  then unit after unit of files through it. An actor asks for ``num_gpus=1`` when the
  cluster has GPUs (and the job's device is not ``cpu``), else for one CPU. Default: one
  worker per GPU of the cluster (one without GPUs); ``--ray-workers N`` to choose.
- **Work stealing by file, longest first**: the files wait in one queue, largest first; a
  worker that is free takes the next unit from the queue's head, the remaining bytes over the
  number of workers (guided self-scheduling). One worker takes the whole job as one unit;
  with several, the units shrink to single files towards the end and the workers finish
  together.
- **Outputs**: each unit runs as a resumable file job writing into a part of its own
  (:mod:`pipelines.parts`, ``r0-u0003-w1``: the driver's run, the unit, the worker); when every
  file is finished, the parts are merged into the job's
  JSON Lines and CSV outputs (each file's records whole and in frame order, files one after
  another). Only those two sink types run on Ray. The outputs must be on storage every node
  sees (the parts are written by the workers, merged by the driver).
- **The manifest is the single source of truth**: only this driver writes it; it records each
  file's status and the part that holds its records.
- **A worker that dies** (killed, out of memory, its node lost): Ray restarts it (up to
  :data:`WORKER_RESTARTS` times); of its unit, the files its part finished (its manifest and
  commit journals say which) are kept, the others go back to the head of the queue. A file
  whose worker died :data:`FILE_ATTEMPTS` times while processing it fails, with that reason.
  An error inside a unit (a model or a sink that fails) stops the job, as in ``fovea run``.
- **--resume**: the files the manifest marks finished are skipped; those of units that were
  in flight when the driver stopped are recovered from their parts like a dead worker's.

Usage::

    job = run_ray(load_config("job.yaml"), address=None, workers=None)   # a local Ray instance
    print(job.summary.to_text())
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipelines.parts import finished_in, merge_parts, part_config, part_outputs, remove_parts
from pipelines.progress import FileFailure, JobSummary, Progress
from streams.config import JobConfig
from streams.errors import ConfigError, EngineError, FoveaError, SinkError
from streams.manifest import FileRecord, Manifest, config_diff, fingerprint, manifest_path
from streams.sources.files import VideoFile, expand_sources

log = logging.getLogger(__name__)

WORKER_RESTARTS = 3  # times Ray restarts a worker that died
FILE_ATTEMPTS = 3  # units a file may be in whose worker died before it fails
RESTART_WAIT_S = 600.0  # how long a worker that died may take to be back
NAMESPACE = "fovea"


@dataclass
class RayJob:
    """What ``fovea run --ray`` did: the summary, and what a resumed job found."""

    summary: JobSummary
    note: str | None = None
    nothing_to_do: bool = False


class WorkerError(Exception):
    """A Fovea error inside a worker, carried to the driver by kind and message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def local(self) -> FoveaError:
        """The error as the driver raises it (``fovea run`` maps it to its exit code)."""
        if self.kind == "ConfigError":
            return ConfigError("", self.message)
        if self.kind == "SinkError":
            return SinkError(self.message)
        if self.kind in ("EngineError", "MissingDependencyError", "ShapeError"):
            return EngineError(self.message)
        return FoveaError(self.message)


@dataclass
class _Unit:
    name: str
    files: list[VideoFile]
    worker: int


class FoveaWorker:
    """One pipeline (one GPU), as a Ray actor: runs units of the job one after another."""

    def __init__(self, cfg: JobConfig, log_level: int) -> None:
        from pipelines.runner import InferenceSetup

        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s [worker] %(message)s")
        self.cfg = cfg
        self.error: WorkerError | None = None
        try:
            self.setup = InferenceSetup(cfg).__enter__()  # released when the actor ends
        except FoveaError as e:  # the model cannot be loaded, ...: told by ready(), the actor stays up
            self.error = WorkerError(type(e).__name__, str(e))

    def ready(self) -> str:
        """The device the worker's pipeline runs on (the call returns once it is set up);
        raises what kept it from being set up."""
        if self.error is not None:
            raise self.error
        return self.setup.device

    def run(self, part: str, files: list[tuple[str, str]]) -> tuple[JobSummary, dict[str, FileRecord]]:
        """One unit: ``files`` (path, source id) into the part folder ``part``; the unit's
        summary and, per file, its record (status, frames, the frame after its last record)."""
        from pipelines.runner import FileJob

        job = FileJob(part_config(self.cfg, Path(part), files), show_progress=False, manifest=True,
                      setup=self.setup)
        try:
            for _ in job.batches():
                pass
        except FoveaError as e:  # Fovea's errors do not all pickle: carried by kind and message
            raise WorkerError(type(e).__name__, str(e)) from None
        records = {} if job.state is None else dict(job.state.manifest.files)
        return job.summary, records


def ray_init_args(address: str | None) -> dict[str, Any]:
    """``ray.init`` arguments: the cluster at ``address`` (None: a local instance); the workers
    import Fovea from where this process does."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"address": address, "namespace": NAMESPACE, "runtime_env": {"env_vars": {"PYTHONPATH": path}}}


def run_ray(cfg: JobConfig, address: str | None = None, workers: int | None = None, resume: bool = False,
            show_progress: bool = True) -> RayJob:
    """Run the file job ``cfg`` on Ray (module docstring). Uses the Ray connection of this
    process when there is one, else connects to ``address`` (None: starts a local instance)
    once there is work to do."""
    import ray

    for i, s in enumerate(cfg.sinks):
        if s.type not in ("jsonl", "csv"):
            raise ConfigError(f"sinks[{i}]", f"a '{s.type}' sink cannot run with --ray: the workers' outputs are "
                                             "merged, which only jsonl and csv outputs support")
    driver = _Driver(ray, cfg, address, workers, resume, show_progress)
    try:
        return driver.run()
    finally:
        if driver.started_ray:
            ray.shutdown()


@dataclass
class _Driver:
    ray: Any
    cfg: JobConfig
    address: str | None
    workers: int | None
    resume: bool
    show_progress: bool
    summary: JobSummary = field(default_factory=JobSummary)
    attempts: dict[str, int] = field(default_factory=dict)
    t0: float = 0.0
    run_no: int = 0  # this driver's run of the job (0: the first), in its parts' names
    started_ray: bool = False  # this driver started Ray (and shuts it down)

    def run(self) -> RayJob:
        cfg, summary = self.cfg, self.summary
        files, problems = expand_sources(cfg.sources)
        summary.files_total = len(files) + len(problems)
        summary.failures += [FileFailure(e.source, e.reason) for e in problems]
        for e in problems:
            log.error("skipping %s", e)
        if not files:
            summary.no_input = True
            return RayJob(summary)
        path = manifest_path(cfg)
        assert path is not None  # jsonl/csv sinks only
        self.path, self.parts = path, path.with_name(path.name.replace(".manifest.json", ".parts"))
        self.manifest = self._manifest(files)
        # parts are named by driver run: a resumed job's units never reuse a part that holds finished files
        self.run_no = max((_part_order(p.name)[0] for p in self.parts.glob("r*-u*-w*")), default=-1) + 1
        finished = {sid for sid, r in self.manifest.files.items() if r.final}
        for sid in finished:
            self._account(sid, self.manifest.files[sid])
        todo = sorted((f for f in files if f.source_id not in finished), key=_size, reverse=True)
        if self.manifest.finished:
            return RayJob(summary, f"nothing to do: every file of the job in {self.path} was finished by an "
                                   f"earlier run ({len(finished)} files); the outputs are unchanged", True)
        note = (f"resumed the job in {self.path}: {len(finished)} of {len(files)} files finished earlier "
                f"(skipped), {len(todo)} to do") if self.resume else None
        self.t0 = time.monotonic()  # reset once the workers are set up: the time counts as fovea run's does
        if todo:
            self._schedule(deque(todo))
        self._merge()
        summary.seconds = time.monotonic() - self.t0
        summary.outputs = [str(getattr(s.config, "path", s.type)) for s in cfg.sinks]
        return RayJob(summary, note)

    def _manifest(self, files: list[VideoFile]) -> Manifest:
        """The job's manifest: new, or the resumed job's with the files of its units in flight
        recovered from their parts."""
        config = fingerprint(self.cfg, f"ray:{self.cfg.engine.device}")
        old = Manifest.load(self.path) if self.resume else None
        if old is None:
            if self.resume:
                log.warning("--resume: no manifest at %s: the job starts from the beginning", self.path)
            remove_parts(self.parts)
            m = Manifest(config, {f.source_id: FileRecord() for f in files}, backend="ray")
            m.save(self.path)
            return m
        if old.backend != "ray":
            raise ConfigError("--ray", f"the job in {self.path} ran without Ray: resume it without --ray")
        diff = config_diff(old.config, config)
        if diff:
            raise ConfigError("--resume", f"the config differs from the job being resumed ({self.path}): "
                                          + "; ".join(diff) + ". Resume with the job's config, or start over without "
                                          "--resume")
        recovered: dict[str, dict[str, FileRecord]] = {}
        for f in files:
            rec = old.files.setdefault(f.source_id, FileRecord())
            if rec.final or rec.part is None:
                continue
            if rec.part not in recovered:
                recovered[rec.part] = finished_in(self.cfg, self.parts / rec.part)
            done = recovered[rec.part].get(f.source_id)
            old.files[f.source_id] = replace(done, part=rec.part) if done is not None else FileRecord()
        return old

    def _schedule(self, queue: deque[VideoFile]) -> None:
        """Hand units to the workers until every file is finished; see the module docstring.

        A worker whose unit failed because it died is asked whether it is back (Ray restarts
        it) before it gets another unit; one that is not back within :data:`RESTART_WAIT_S`,
        or that died more often than Ray restarts it, gets none.
        """
        ray = self.ray
        n, actors = self._start_workers()
        self.t0 = time.monotonic()
        progress = Progress(total_files=len(queue), enabled=self.show_progress)
        units: dict[Any, _Unit] = {}  # unit calls in flight
        probes: dict[Any, int] = {}  # ready() calls to workers that died
        retry: dict[int, float] = {}  # worker that died: when to ask it again
        since: dict[int, float] = {}  # worker that died: when
        deaths: dict[int, int] = {}
        idle = deque(range(n))
        count = 0
        try:
            while queue or units:
                now = time.monotonic()
                for w, at in list(retry.items()):
                    if now >= at:
                        del retry[w]
                        probes[actors[w].ready.remote()] = w
                while idle and queue:
                    w = idle.popleft()
                    unit = _Unit(f"r{self.run_no}-u{count:04d}-w{w}", _take(queue, n), w)
                    count += 1
                    for f in unit.files:
                        self.manifest.files[f.source_id] = FileRecord(status="started", part=unit.name)
                    self.manifest.save(self.path)
                    units[actors[w].run.remote(str(self.parts / unit.name),
                                               [(str(f.path), f.source_id) for f in unit.files])] = unit
                if not (units or probes or retry or idle):
                    raise FoveaError("every Ray worker died more often than Ray restarts it; the job's manifest "
                                     f"({self.path}) keeps what was finished: fovea run --ray --resume")
                if not (units or probes):
                    time.sleep(0.1)
                    continue
                ready, _ = ray.wait([*units, *probes], num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in probes:
                        w = probes.pop(ref)
                        try:
                            ray.get(ref)
                            idle.append(w)
                        except ray.exceptions.RayActorError:
                            if time.monotonic() - since[w] < RESTART_WAIT_S and deaths[w] <= WORKER_RESTARTS:
                                retry[w] = time.monotonic() + 0.5
                            else:
                                log.error("Ray worker %d is gone for good (it died %d times)", w, deaths[w])
                        continue
                    unit = units.pop(ref)
                    try:
                        unit_summary, records = ray.get(ref)
                    except ray.exceptions.RayActorError as e:
                        w = unit.worker
                        deaths[w], since[w], retry[w] = deaths.get(w, 0) + 1, time.monotonic(), time.monotonic() + 0.5
                        self._worker_died(unit, queue, e)
                        continue
                    except ray.exceptions.RayTaskError as e:
                        if isinstance(e.cause, WorkerError):
                            raise e.cause.local() from None
                        raise FoveaError(f"Ray worker {unit.worker} failed: {e}") from None
                    self._unit_done(unit, unit_summary, records, progress)
                    idle.append(unit.worker)
                if ready:
                    self.manifest.save(self.path)
        finally:
            progress.close()
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)

    def _start_workers(self) -> tuple[int, list[Any]]:
        ray = self.ray
        if not ray.is_initialized():  # connected only when there is work: a finished job needs no cluster
            ray.init(**ray_init_args(self.address))
            self.started_ray = True
        gpus = int(ray.cluster_resources().get("GPU", 0))
        on_gpu = gpus > 0 and self.cfg.engine.device != "cpu"
        n = self.workers or max(1, gpus if on_gpu else 1)
        token = hashlib.sha256(str(self.path).encode()).hexdigest()[:8]
        resources: dict[str, Any] = {"num_gpus": 1} if on_gpu else {"num_cpus": 1}
        cls = ray.remote(FoveaWorker)
        actors = [cls.options(name=f"fovea-worker-{i}-{token}", max_restarts=WORKER_RESTARTS, max_task_retries=0,
                              **resources).remote(self.cfg, logging.getLogger().getEffectiveLevel())
                  for i in range(n)]
        try:
            devices = ray.get([a.ready.remote() for a in actors])
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
            for actor in actors:
                ray.kill(actor)
            if isinstance(e, ray.exceptions.RayTaskError) and isinstance(e.cause, WorkerError):
                raise e.cause.local() from None
            raise FoveaError(f"the Ray workers could not set up their pipelines: {e}") from None
        log.info("%d Ray workers (%s each; %s), %d GPUs in the cluster", n, "one GPU" if on_gpu else "one CPU",
                 ", ".join(devices), gpus)
        return n, actors

    def _unit_done(self, unit: _Unit, unit_summary: JobSummary, records: dict[str, FileRecord],
                   progress: Progress) -> None:
        s = self.summary
        s.frames += unit_summary.frames
        s.detections += unit_summary.detections
        s.engine, s.device = unit_summary.engine, unit_summary.device
        for k, v in unit_summary.decoders.items():
            s.decoders[k] = s.decoders.get(k, 0) + v
        reasons = {f.name: f.reason for f in unit_summary.failures}
        for f in unit.files:
            rec = records.get(f.source_id)
            if rec is None or not rec.final:  # the unit could not take the file (gone since): failed
                rec = FileRecord(status="failed", reason=reasons.get(str(f.path), "not processed by its worker"))
            rec.part = unit.name
            self.manifest.files[f.source_id] = rec
            self._account(f.source_id, rec)
            progress.file_finished()
        progress.frames_done(unit_summary.frames)

    def _worker_died(self, unit: _Unit, queue: deque[VideoFile], error: BaseException) -> None:
        """Keep what the dead worker's part finished; put the rest back at the head of the queue."""
        done = finished_in(self.cfg, self.parts / unit.name)
        back: list[VideoFile] = []
        for f in unit.files:
            sid = f.source_id
            if sid in done:
                self.manifest.files[sid] = replace(done[sid], part=unit.name)
                self._account(sid, self.manifest.files[sid])
                continue
            self.attempts[sid] = self.attempts.get(sid, 0) + 1
            if self.attempts[sid] >= FILE_ATTEMPTS:
                rec = FileRecord(status="failed", reason=f"its Ray worker died {FILE_ATTEMPTS} times while "
                                                         "processing it", part=unit.name)
                self.manifest.files[sid] = rec
                self._account(sid, rec)
                continue
            self.manifest.files[sid] = FileRecord()
            back.append(f)
        queue.extendleft(reversed(back))
        log.warning("Ray worker %d died during unit %s (%s): %d of its %d files were finished and are kept, %d go "
                    "back to the queue", unit.worker, unit.name, type(error).__name__, len(unit.files) - len(back),
                    len(unit.files), len(back))

    def _account(self, sid: str, rec: FileRecord) -> None:
        name = rec.identity.path if rec.identity is not None else sid
        if rec.status == "done":
            self.summary.files_done += 1
        elif rec.final:
            self.summary.failures.append(FileFailure(name, rec.reason, rec.frames, expected=rec.expected,
                                                     kind="incomplete" if rec.status == "incomplete" else "failed"))

    def _merge(self) -> None:
        """The job's outputs from the parts; then the manifest says finished and the parts go."""
        owned: dict[str, set[str]] = {}
        for sid, rec in self.manifest.files.items():
            if rec.final and rec.part is not None and rec.end > 0:  # a file without records needs no part
                owned.setdefault(rec.part, set()).add(sid)
        parts = [(self.parts / name, owned[name]) for name in sorted(owned, key=_part_order)]
        missing = [p for p, _ in parts if not any(o.exists() for o in part_outputs(self.cfg, p))]
        if missing:
            raise FoveaError(f"the job's parts {', '.join(str(p) for p in missing)} are gone; start the job over "
                             "without --resume")
        written = merge_parts(self.cfg, parts)
        self.manifest.finished = all(r.final for r in self.manifest.files.values())
        self.manifest.save(self.path)
        if self.manifest.finished:
            remove_parts(self.parts)
        log.info("merged %d parts into %s", len(parts), ", ".join(str(p) for p in written))


def _part_order(name: str) -> tuple[int, int]:
    """Parts in the order they were made: by the driver's run, then by unit (``r1-u0003-w0``)."""
    run, unit, _ = name.split("-")
    return int(run[1:]), int(unit[1:])


def _size(f: VideoFile) -> int:
    try:
        return f.path.stat().st_size
    except OSError:
        return 0


def _take(queue: deque[VideoFile], workers: int) -> list[VideoFile]:
    """The next unit: files from the queue's head up to the remaining bytes over ``workers`` (one at least)."""
    target = sum(_size(f) for f in queue) / workers
    unit = [queue.popleft()]
    taken = _size(unit[0])
    while queue and taken + _size(queue[0]) <= target:
        f = queue.popleft()
        unit.append(f)
        taken += _size(f)
    return unit
