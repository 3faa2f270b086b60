"""``fovea live --ray``: a live job's cameras sharded over Ray actors, one live pipeline per GPU.

Ray is an optional extra (``pip install -e ".[ray]"``): this module is imported only for
``--ray`` and imports ``ray`` only when the job starts. ``docs/scale.md`` ("Live on Ray")
says how to run it and what a worker's death costs.

- **Workers**: Ray actors (:class:`LiveWorker`), each running an ordinary live job
  (:class:`pipelines.live.LiveRunner`: its stream manager, batcher, inference threads and
  sinks) on its share of the cameras. An actor asks for ``num_gpus=1`` when the cluster has
  GPUs (and ``engine.device`` is not ``cpu``), else for one CPU. Default: one worker per GPU
  (one without GPUs); ``--ray-workers N`` to choose.
- **The front** (this process, :class:`RayLive`) owns the HTTP control API: the same server
  (:class:`streams.live.http.LiveHttpServer`, same routes, token, allow-list and body
  limits) in front of a :class:`~streams.live.http.StreamControl` that spreads the cameras:
  the config's cameras by count (each to the worker with the fewest), ``POST /streams`` to
  the worker with the fewest streams, ``DELETE`` to the worker that has the stream;
  ``GET /streams``, ``/health`` and ``/metrics`` gather every worker's (each stream still
  reports its own state; ``/health`` adds the workers, ``/metrics`` a ``ray_worker`` label).
  Stream ids are the job's: an id in use or removed earlier anywhere in the job is refused,
  as the single-process API refuses it.
- **Outputs**: each worker writes its own: every sink's ``path`` gets the worker's tag
  (``out/detections.jsonl`` -> ``out/detections.w0.jsonl``; a network sink's spool folder
  ``fovea-out/spool`` -> ``fovea-out/spool.w0``), while network sinks deliver to the same
  broker or database (one record per frame, named by its camera).
- **A worker that dies** (killed, out of memory, its node lost) is reported (``/health``,
  ``fovea_ray_worker_up``, an error logged) and its cameras are restarted on the surviving
  workers, each to the one with the fewest streams, as new sources there (tracks start
  again; frame indices go on in a new epoch, below). A replacement worker (a new index,
  so new outputs) is started, at most :data:`REPLACEMENTS` in :data:`REPLACEMENT_WINDOW_S`;
  cameras with no surviving worker wait for it. A camera whose worker died more than
  :data:`CAMERA_MOVES` times is given up, logged. An error inside a worker's job (a sink
  that fails, ...) stops the whole job, as it stops ``fovea live``.
- **Frame indices are the job's**: a camera's ``(source, frame_index)`` never repeats in the
  job, which every network sink's idempotency key (``source|frame_index|kind|index``) and a
  keyed consumer (a SQL upsert, Kafka de-duplication) rely on. Each time the front adds a
  camera to a worker it gives that add the camera's next epoch ``e`` (0 for the first add,
  then 1, 2, ...: a restart elsewhere, a retry after a worker that died or did not answer
  during the add), and the worker numbers the camera's frames from ``e * EPOCH``
  (:meth:`StreamManager.add_stream <streams.live.manager.StreamManager.add_stream>`'s
  ``first_frame_index``). This holds whatever the front knows: it never learns how many
  frames a dead worker read after its last answer, and need not. :data:`EPOCH` (2**40
  frames: over 1100 years at 30 fps) bounds one add's frames; indices stay below 2**53,
  exact in JSON (a worker refuses a first index past it). A consumer sees a restart as a
  jump of ``frame_index`` into the next epoch; the frames between the death and the restart
  were never read (live). The new tracker's ids start at ``e * TRACK_ID_EPOCH`` (2**32,
  :mod:`pipelines.tracking`), so ``(source, track_id)`` is unique in the job too. A camera's summary record (key
  ``source|-1|summary|0``) comes from the worker that ran it at the end (a dead worker
  sends none).

Usage::

    summary = run_live_ray(load_config("live.yaml"), address=None, workers=2, duration_s=60)
    print(summary.to_text())
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from pipelines.live import LiveRunner, LiveSummary, _signals
from pipelines.ray_backend import ray_init_args
from streams.config import JobConfig, SourceEntry
from streams.errors import ConfigError, EngineError, FoveaError, SinkError, SourceError
from streams.frames import FRAME_INDEX_EPOCH
from streams.live.config import HttpConfig, LiveConfig, parse_live_config
from streams.live.health import health_report
from streams.live.http import LiveHttpServer
from streams.live.manager import StreamManager
from streams.live.types import StreamSpec, StreamStats

log = logging.getLogger(__name__)

CAMERA_MOVES = 3  # times a camera is restarted after its worker died before it is given up
EPOCH = FRAME_INDEX_EPOCH  # frame indices of one add of a camera to a worker (module docstring)
REPLACEMENTS = 3  # dead workers replaced within REPLACEMENT_WINDOW_S
REPLACEMENT_WINDOW_S = 600.0
READY_WAIT_S = 900.0  # a worker's set-up (model load, engine build, CUDA graphs)
CALL_WAIT_S = 30.0  # an API call to a worker
POLL_S = 0.5  # how often the front asks every worker whether it is alive
PING_WAIT_S = 10.0  # a worker that does not answer within this is reported unresponsive


# ----------------------------------------------------------------------------- the worker
@dataclass(frozen=True)
class Failure:
    """A Fovea error inside a worker, carried to the front by kind, key and message (Fovea's
    errors do not all pickle)."""

    kind: str
    message: str
    key: str = ""

    @classmethod
    def of(cls, e: FoveaError) -> Failure:
        if isinstance(e, ConfigError):
            return cls("ConfigError", e.reason, e.key)
        if isinstance(e, SourceError):
            return cls("SourceError", e.reason, e.source)
        return cls(type(e).__name__, str(e))

    def local(self) -> FoveaError:
        """The error as the front raises it (``fovea live`` maps it to its exit code)."""
        if self.kind == "ConfigError":
            return ConfigError(self.key, self.message)
        if self.kind in ("SourceError", "DecodeError"):
            return SourceError(self.key, self.message)
        if self.kind == "SinkError":
            return SinkError(self.message)
        if self.kind in ("EngineError", "MissingDependencyError", "ShapeError"):
            return EngineError(self.message)
        return FoveaError(self.message)


@dataclass(frozen=True)
class WorkerInfo:
    """Where a worker runs and what its live job runs on."""

    pid: int
    node: str
    mode: str
    device: str


class LiveWorker:
    """One live pipeline (one GPU), as a Ray actor: a live job in a thread of its own, and
    the stream operations the front calls (each returns at once)."""

    def __init__(self, cfg: JobConfig, live: LiveConfig, log_level: int) -> None:
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s [live worker] %(message)s")
        self.summary: LiveSummary | None = None
        self.failure: Failure | None = None
        self.runner: LiveRunner | None = None
        try:
            self.runner = LiveRunner(cfg, live, cameras_later=True)
        except FoveaError as e:  # told by ready(); the actor stays up
            self.failure = Failure.of(e)
        self.thread = threading.Thread(target=self._run, name="live-job", daemon=True)
        if self.runner is not None:
            self.thread.start()

    @property
    def _manager(self) -> StreamManager | None:
        return None if self.runner is None else self.runner.manager

    def _run(self) -> None:
        assert self.runner is not None
        try:
            self.summary = self.runner.run()
        except FoveaError as e:
            self.failure = Failure.of(e)
            log.error("the live job failed: %s", e)
        except Exception as e:  # a bug: carried to the front as such, not lost in a thread
            self.failure = Failure("Error", f"{type(e).__name__}: {e}")
            log.exception("the live job failed")

    def ready(self, timeout: float) -> WorkerInfo | Failure:
        """Returns once the job's stream manager runs (or its set-up failed)."""
        import ray

        deadline = time.monotonic() + timeout
        while self._manager is None and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.failure is not None:
            return self.failure
        if self.runner is None or self.runner.manager is None:
            return Failure("FoveaError", f"the live job was not set up within {timeout:g} s")
        return WorkerInfo(os.getpid(), ray.util.get_node_ip_address(), self.runner.summary.mode,
                          self.runner.summary.device)

    def ping(self) -> Failure | None:
        """``None`` while the job runs; what ended it otherwise."""
        if self.failure is not None:
            return self.failure
        return None if self.thread.is_alive() else Failure("FoveaError", "the live job ended")

    def add_stream(self, spec: StreamSpec, first_frame_index: int = 0) -> StreamStats | Failure:
        mgr = self._manager
        if mgr is None:
            return Failure("SourceError", "the worker's live job is not running", spec.id)
        try:
            return mgr.add_stream(spec, first_frame_index)
        except FoveaError as e:
            return Failure.of(e)

    def remove_stream(self, stream_id: str) -> bool:
        mgr = self._manager
        return mgr is not None and mgr.remove_stream(stream_id)

    def stats(self, stream_id: str) -> StreamStats | None:
        mgr = self._manager
        return None if mgr is None else mgr.stats(stream_id)

    def streams(self) -> list[StreamStats]:
        mgr = self._manager
        return [] if mgr is None else mgr.streams()

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        mgr = self._manager
        return b"" if mgr is None else generate_latest(mgr.registry)

    def stop(self, timeout: float) -> LiveSummary | Failure:
        """Stop the job gracefully (cameras closed, batches in hand finished, sinks flushed)."""
        if self.runner is not None:
            self.runner.stop_event.set()
            self.thread.join(timeout)
        if self.failure is not None:
            return self.failure
        if self.summary is None:
            return Failure("FoveaError", f"the live job did not stop within {timeout:g} s")
        return self.summary


# ------------------------------------------------------------------------ configuration
def worker_path(path: str, index: int) -> str:
    """A sink's ``path`` for worker ``index``: ``out/detections.jsonl`` -> ``out/detections.w0.jsonl``,
    a folder ``fovea-out/spool`` -> ``fovea-out/spool.w0``."""
    p = Path(path)
    tag = f"w{index}"
    return str(p.with_name(f"{p.stem}.{tag}{p.suffix}") if p.suffix else p.with_name(f"{p.name}.{tag}"))


def _path_field(config: Any) -> str | None:
    """The sink config's ``path`` field (``None``: it has none, e.g. a plugin's)."""
    if not dataclasses.is_dataclass(config):
        return None
    for f in dataclasses.fields(config):
        if f.name == "path":
            value = getattr(config, f.name)
            return value if isinstance(value, str) else None
    return None


def worker_config(cfg: JobConfig, index: int, cameras: Sequence[StreamSpec]) -> JobConfig:
    """``cfg`` for worker ``index``: its cameras as sources, its sinks' paths tagged (:func:`worker_path`)."""
    sinks = []
    for s in cfg.sinks:
        path = _path_field(s.config)
        sinks.append(s if path is None else replace(s, config=replace(s.config, path=worker_path(path, index))))
    sources = [SourceEntry(uri=c.uri, id=c.id, transport=c.transport, username=c.username, password=c.password)
               for c in cameras]
    return replace(cfg, sources=sources, sinks=sinks)


def cameras_of(cfg: JobConfig) -> list[StreamSpec]:
    """The config's cameras, with the ids ``fovea live`` gives them; :class:`ConfigError`
    (before any work) for none, a bad one or an id given twice."""
    entries = [s for s in cfg.sources if s.uri is not None]
    if not entries:
        raise ConfigError("sources", "a live job needs stream sources (rtsp://... or file:///clip.mp4)")
    specs: list[StreamSpec] = []
    for i, entry in enumerate(entries):
        spec = StreamSpec.from_source(entry, i)
        spec.validate(f"sources[{i}]")
        if any(s.id == spec.id for s in specs):
            raise ConfigError(f"sources[{i}].id", f"the stream id {spec.id!r} is given twice")
        specs.append(spec)
    return specs


def check_ray_config(cfg: JobConfig) -> None:
    """What ``--ray`` cannot run, refused before any work."""
    for i, s in enumerate(cfg.sinks):
        path = _path_field(s.config)
        if path is not None and os.path.abspath(os.path.expanduser(path)).startswith("/dev/"):
            raise ConfigError(f"sinks[{i}].path", f"{path}: with --ray each worker writes outputs of its own "
                                                  "(the path tagged with its index), which a device cannot be")
    device = cfg.engine.device
    if device.startswith("cuda:") and device != "cuda:0":
        raise ConfigError("engine.device", f"{device}: with --ray Ray gives each worker one GPU, which it sees as "
                                           "cuda:0; use auto or cuda")


# ------------------------------------------------------------------------------- the front
@dataclass
class _Worker:
    index: int
    actor: Any
    state: str = "starting"  # starting, alive, unresponsive, dead
    ready_ref: Any = None
    info: WorkerInfo | None = None
    reason: str | None = None  # why it died


@dataclass
class _Moves:
    """What the workers' deaths did to the cameras."""

    moved: dict[str, int] = field(default_factory=dict)  # camera id -> times restarted elsewhere
    given_up: dict[str, str] = field(default_factory=dict)  # camera id -> why
    waiting: dict[str, StreamSpec] = field(default_factory=dict)  # no worker alive to take them yet
    deaths: list[float] = field(default_factory=list)  # when workers died (monotonic)


class RayLive:
    """The front of a live job on Ray: its workers and the :class:`~streams.live.http.StreamControl`
    the HTTP API drives (module docstring). Call :meth:`poll` regularly (the job's thread)."""

    def __init__(self, ray: Any, cfg: JobConfig, live: LiveConfig, resources: dict[str, Any]) -> None:
        self.ray = ray
        self.cfg = cfg
        self.live = replace(live, http=HttpConfig(enabled=False))  # the front serves the API
        self.resources = resources
        self.workers: list[_Worker] = []
        self.wanted = 0  # workers the job runs with (a dead one's replacement counts in its place)
        self.owner: dict[str, int] = {}  # stream id -> worker index
        self.specs: dict[str, StreamSpec] = {}  # the job's cameras, in the order they were added
        self.epochs: dict[str, int] = {}  # camera id -> adds to a worker so far: its next add's epoch
        self.removed: set[str] = set()
        self.moves = _Moves()
        self.failure: FoveaError | None = None  # an error inside a worker's job: the job stops
        self.registry = CollectorRegistry()
        self.registry.register(_WorkerMetrics(self))
        self._lock = threading.RLock()
        self._token = f"{os.getpid()}-{int(time.time())}"

    # ------------------------------------------------------------------ workers
    def start(self, cameras: Sequence[StreamSpec], n: int) -> None:
        """Start ``n`` workers with the cameras spread by count; returns once every one is set up."""
        self.wanted = n
        shares: list[list[StreamSpec]] = [[] for _ in range(n)]
        for spec in cameras:
            index = min(range(n), key=lambda i: (len(shares[i]), i))
            shares[index].append(spec)
            self.owner[spec.id], self.specs[spec.id] = index, spec
            self.epochs[spec.id] = 1  # epoch 0: in the worker's config
        for share in shares:
            self._new_worker(share)
        refs = [w.ready_ref for w in self.workers]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=READY_WAIT_S)
        if len(ready) < len(refs):
            raise FoveaError(f"the Ray workers were not set up within {READY_WAIT_S:g} s (are their resources in "
                             f"the cluster? each asks for {self.resources})")
        for w in self.workers:
            try:
                answer = self.ray.get(w.ready_ref)
            except self.ray.exceptions.RayActorError as e:
                raise FoveaError(f"Ray worker {w.index} died while setting up its live job: {e}") from None
            self._set_up(w, answer, starting=True)
        info = [w.info for w in self.workers if w.info is not None]
        log.info("live on Ray: %d workers (%s each): %s", n, "one GPU" if "num_gpus" in self.resources else "one CPU",
                 "; ".join(f"w{w.index} pid {i.pid} on {i.node}, {i.device}, {len(s)} cameras"
                           for w, i, s in zip(self.workers, info, shares, strict=True)))

    def _new_worker(self, cameras: Sequence[StreamSpec]) -> _Worker:
        index = len(self.workers)
        cls = self.ray.remote(LiveWorker)
        actor = cls.options(name=f"fovea-live-w{index}-{self._token}", max_restarts=0, max_task_retries=0,
                            **self.resources).remote(worker_config(self.cfg, index, cameras), self.live,
                                                     logging.getLogger().getEffectiveLevel())
        w = _Worker(index, actor)
        w.ready_ref = actor.ready.remote(READY_WAIT_S)
        self.workers.append(w)
        return w

    def _set_up(self, w: _Worker, answer: WorkerInfo | Failure, starting: bool) -> None:
        if isinstance(answer, Failure):
            if starting:  # the job cannot run as configured: refused as fovea live refuses it
                raise answer.local()
            self._died(w, f"its set-up failed: {answer.message}")
            return
        w.state, w.info, w.ready_ref = "alive", answer, None

    def alive(self) -> list[_Worker]:
        """The workers that run (answering or not); new cameras go only to those answering."""
        return [w for w in self.workers if w.state in ("alive", "unresponsive")]

    def poll(self) -> None:
        """Check every worker: set up, alive, dead (its cameras restarted elsewhere), or its
        job failed (:attr:`failure`, the job stops)."""
        ray = self.ray
        with self._lock:
            starting = [w for w in self.workers if w.state == "starting"]
            for w in starting:
                if ray.wait([w.ready_ref], timeout=0)[0]:
                    try:
                        self._set_up(w, ray.get(w.ready_ref), starting=False)
                    except ray.exceptions.RayActorError as e:
                        self._died(w, f"it died while setting up ({type(e).__name__})")
            pings = {w.actor.ping.remote(): w for w in self.alive()}
        ready, late = ray.wait(list(pings), num_returns=len(pings), timeout=PING_WAIT_S) if pings else ([], [])
        with self._lock:
            for ref in ready:
                w = pings[ref]
                try:
                    failure = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    self._died(w, type(e).__name__)
                    continue
                if failure is not None:
                    self.failure = failure.local()
                elif w.state == "unresponsive":
                    log.warning("Ray worker %d answers again", w.index)
                    w.state = "alive"
            for ref in late:
                w = pings[ref]
                if w.state == "alive":
                    log.warning("Ray worker %d did not answer within %g s", w.index, PING_WAIT_S)
                    w.state = "unresponsive"
            if self.moves.waiting and any(w.state == "alive" for w in self.workers):
                waiting, self.moves.waiting = self.moves.waiting, {}
                for spec in waiting.values():
                    self._place(spec, moving=True)

    def _died(self, w: _Worker, reason: str) -> None:
        """Report a dead worker, restart its cameras on the others, start a replacement."""
        if w.state == "dead":
            return
        w.state, w.reason = "dead", reason
        ray, now = self.ray, time.monotonic()
        with_it = [sid for sid, i in self.owner.items() if i == w.index]
        log.error("Ray worker %d died (%s); its cameras (%s) are restarted on the other workers", w.index, reason,
                  ", ".join(with_it) or "none")
        try:
            ray.kill(w.actor)
        except Exception as e:  # already gone
            log.debug("ray.kill of worker %d: %s", w.index, e)
        self.moves.deaths = [t for t in self.moves.deaths if now - t < REPLACEMENT_WINDOW_S] + [now]
        if len(self.moves.deaths) <= REPLACEMENTS:
            log.warning("starting Ray worker %d in place of worker %d", len(self.workers), w.index)
            self._new_worker([])
        else:
            log.error("no replacement for Ray worker %d: %d workers died within %g s", w.index,
                      len(self.moves.deaths), REPLACEMENT_WINDOW_S)
        for sid in with_it:
            del self.owner[sid]
            n = self.moves.moved[sid] = self.moves.moved.get(sid, 0) + 1
            if n > CAMERA_MOVES:
                self._give_up(sid, f"its Ray worker died {n} times")
            else:
                self._place(self.specs[sid], moving=True)

    def _give_up(self, sid: str, reason: str) -> None:
        log.error("camera %s is given up: %s", sid, reason)
        self.moves.given_up[sid] = reason
        self.specs.pop(sid, None)
        self.moves.waiting.pop(sid, None)

    def _place(self, spec: StreamSpec, moving: bool = False) -> StreamStats | None:
        """Add ``spec`` on the alive worker with the fewest streams (another one if that one
        turns out dead); ``None`` when a moved camera must wait for a worker."""
        ray = self.ray
        for _ in range(len(self.workers)):
            alive = [w for w in self.workers if w.state == "alive"]
            if not alive:
                break
            w = min(alive, key=lambda x: (sum(1 for i in self.owner.values() if i == x.index), x.index))
            epoch = self.epochs.get(spec.id, 0)
            self.epochs[spec.id] = epoch + 1  # each add its own epoch, whatever comes of it
            try:
                answer = ray.get(w.actor.add_stream.remote(spec, epoch * EPOCH), timeout=CALL_WAIT_S)
            except ray.exceptions.RayActorError as e:
                self._died(w, type(e).__name__)
                continue
            except ray.exceptions.GetTimeoutError:
                w.state = "unresponsive"
                w.actor.remove_stream.remote(spec.id)  # should the add still come through
                raise SourceError(spec.id, f"Ray worker {w.index} did not answer within {CALL_WAIT_S:g} s") from None
            if isinstance(answer, Failure):
                if moving:
                    self._give_up(spec.id, f"it could not be restarted on Ray worker {w.index}: {answer.message}")
                    return None
                raise answer.local()
            self.owner[spec.id], self.specs[spec.id] = w.index, spec
            if moving:
                log.warning("camera %s restarted on Ray worker %d (frame indices from %d)", spec.id, w.index,
                            epoch * EPOCH)
            return answer
        if moving:
            self.moves.waiting[spec.id] = spec
            log.warning("camera %s waits for a Ray worker (none is running)", spec.id)
            return None
        starting = sum(1 for w in self.workers if w.state == "starting")
        raise SourceError(spec.id, f"no Ray worker is running ({starting} starting)")

    # ------------------------------------------------------- StreamControl (the API)
    def add_stream(self, spec: StreamSpec) -> StreamStats:
        spec.validate("stream")
        with self._lock:
            if spec.id in self.owner or spec.id in self.moves.waiting:
                raise SourceError(spec.id, "a stream with this id already exists")
            if spec.id in self.removed:
                raise SourceError(spec.id, "a stream with this id was removed earlier in this job; ids are not "
                                           "reused within a job (its frame indices and tracks would mix): "
                                           "add it under a new id")
            stats = self._place(spec)
            assert stats is not None
            self.moves.given_up.pop(spec.id, None)
            return stats

    def remove_stream(self, stream_id: str) -> bool:
        with self._lock:
            if self.moves.waiting.pop(stream_id, None) is not None:
                self.removed.add(stream_id)
                return True
            index = self.owner.get(stream_id)
            if index is None:
                return False
            w = self.workers[index]
            try:
                removed = bool(self.ray.get(w.actor.remove_stream.remote(stream_id), timeout=CALL_WAIT_S))
            except self.ray.exceptions.RayActorError as e:
                self._died(w, type(e).__name__)
                return self.remove_stream(stream_id)  # it moved, or waits
            except self.ray.exceptions.GetTimeoutError:
                w.state = "unresponsive"
                raise SourceError(stream_id, f"Ray worker {w.index} did not answer within {CALL_WAIT_S:g} s") from None
            del self.owner[stream_id]
            self.specs.pop(stream_id, None)
            self.removed.add(stream_id)
            return removed

    def stats(self, stream_id: str) -> StreamStats | None:
        with self._lock:
            index = self.owner.get(stream_id)
            w = None if index is None else self.workers[index]
        if w is None:
            return None
        return self._gather({w.index: w.actor.stats.remote(stream_id)}).get(w.index)

    def streams(self) -> list[StreamStats]:
        with self._lock:
            refs = {w.index: w.actor.streams.remote() for w in self.alive()}
            order = {sid: n for n, sid in enumerate(self.specs)}  # as added (a moved camera keeps its place)
        stats = [s for answer in self._gather(refs).values() for s in answer]
        return sorted(stats, key=lambda s: order.get(s.id, len(order)))

    def health(self) -> tuple[int, dict[str, Any]]:
        streams = self.streams()
        mode = next((w.info.mode for w in self.workers if w.info is not None), "")
        code, payload = health_report(streams, mode)
        with self._lock:
            workers = {str(w.index): {"state": w.state, "reason": w.reason, "streams": sorted(
                sid for sid, i in self.owner.items() if i == w.index), "pid": w.info.pid if w.info else None,
                "node": w.info.node if w.info else None} for w in self.workers}
            payload["workers"] = workers
            payload["waiting"] = sorted(self.moves.waiting)
            payload["given_up"] = dict(self.moves.given_up)
            if payload["status"] == "ok" and sum(w.state == "alive" for w in self.workers) < self.wanted:
                payload["status"] = "degraded"  # a worker short: the cameras run, on less capacity
        return code, payload

    def _gather(self, refs: dict[int, Any], timeout: float = CALL_WAIT_S) -> dict[int, Any]:
        """The answers of the workers that gave one in time (a dead one is left to :meth:`poll`)."""
        ray = self.ray
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout) if refs else ([], [])
        out: dict[int, Any] = {}
        for index, ref in refs.items():
            if ref in ready:
                try:
                    out[index] = ray.get(ref)
                except ray.exceptions.RayActorError:
                    continue
        return out

    # ------------------------------------------------------------------- stopping
    def stop(self, timeout: float = 120.0) -> list[LiveSummary]:
        """Stop every worker gracefully; their summaries (a worker's failure is raised). A
        worker still starting has no camera yet: it is only ended."""
        with self._lock:
            workers = [w for w in self.workers if w.state != "dead"]
            refs = {w.index: w.actor.stop.remote(timeout) for w in self.alive()}
        answers = self._gather(refs, timeout + CALL_WAIT_S) if refs else {}
        for w in workers:
            try:
                self.ray.kill(w.actor)
            except Exception as e:
                log.debug("ray.kill of worker %d: %s", w.index, e)
        summaries = []
        for _, answer in sorted(answers.items()):
            if isinstance(answer, Failure):
                self.failure = self.failure or answer.local()
            else:
                summaries.append(answer)
        lost = [index for index in refs if index not in answers]
        if lost:
            log.error("Ray workers %s did not stop in time: their summaries are missing", lost)
        return summaries


class _WorkerMetrics:
    """``GET /metrics`` of the front: every worker's metrics with a ``ray_worker`` label, and
    the workers' own (up, streams, deaths, camera restarts)."""

    def __init__(self, front: RayLive) -> None:
        self.front = front

    def describe(self) -> list[Metric]:
        return []  # collected on each scrape (the workers change)

    def collect(self) -> Iterator[Metric]:
        front = self.front
        with front._lock:
            workers = list(front.workers)
            refs = {w.index: w.actor.metrics_text.remote() for w in front.alive()}
            counts = {w.index: sum(1 for i in front.owner.values() if i == w.index) for w in workers}
            deaths = sum(1 for w in workers if w.state == "dead")
            moves = sum(front.moves.moved.values())
        families: dict[str, Metric] = {}
        texts = front._gather(refs)
        for index, text in sorted(texts.items()):
            for fam in text_string_to_metric_families(text.decode()):
                merged = families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type, fam.unit))
                for s in fam.samples:
                    merged.add_sample(s.name, {**s.labels, "ray_worker": str(index)}, s.value, s.timestamp,
                                      s.exemplar)
        yield from families.values()
        up = GaugeMetricFamily("fovea_ray_worker_up", "1 while the Ray worker answers, 0 once dead or not "
                                                      "answering", labels=["ray_worker"])
        streams = GaugeMetricFamily("fovea_ray_worker_streams", "streams on the Ray worker", labels=["ray_worker"])
        for w in workers:
            up.add_metric([str(w.index)], 1.0 if w.index in texts else 0.0)
            streams.add_metric([str(w.index)], counts[w.index])
        yield up
        yield streams
        yield CounterMetricFamily("fovea_ray_worker_deaths", "Ray workers that died", value=deaths)
        yield CounterMetricFamily("fovea_ray_camera_restarts", "cameras restarted on another Ray worker after "
                                                               "theirs died", value=moves)


# --------------------------------------------------------------------------------- the job
def _resources(ray: Any, cfg: JobConfig, workers: int | None) -> tuple[int, dict[str, Any]]:
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 0))
    on_gpu = gpus > 0 and cfg.engine.device != "cpu"
    n = workers or max(1, gpus if on_gpu else 1)
    have, kind = (gpus, "GPUs") if on_gpu else (cpus, "CPUs")
    if n > have:
        raise ConfigError("--ray-workers", f"{n} workers need {n} {kind} (one each); the Ray cluster has {have}")
    return n, ({"num_gpus": 1} if on_gpu else {"num_cpus": 1})


def merge_summaries(summaries: Sequence[LiveSummary], seconds: float) -> LiveSummary:
    """One summary of the workers' (each camera's figures from the worker that ran it last)."""
    out = LiveSummary(seconds=seconds)
    out.mode = ", ".join(sorted({s.mode for s in summaries if s.mode}))
    out.device = ", ".join(sorted({s.device for s in summaries if s.device}))
    for i, s in enumerate(summaries):
        out.streams.update(s.streams)
        out.dropped.update(s.dropped)
        out.states.update(s.states)
        out.batch_errors += s.batch_errors
        out.stages.update({f"{name}[{i}]": report for name, report in s.stages.items()})
    return out


def run_live_ray(cfg: JobConfig, address: str | None = None, workers: int | None = None,
                 duration_s: float | None = None) -> LiveSummary:
    """Run the live job ``cfg`` on Ray (module docstring) until SIGINT/SIGTERM or ``duration_s``.
    Uses the Ray connection of this process when there is one, else connects to ``address``
    (None: starts a local instance)."""
    import ray

    live = parse_live_config(cfg.extra.get("live"))
    cameras = cameras_of(cfg)
    check_ray_config(cfg)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(**ray_init_args(address))
    stop = threading.Event()
    front: RayLive | None = None
    server: LiveHttpServer | None = None
    t0 = time.monotonic()
    try:
        n, resources = _resources(ray, cfg, workers)
        front = RayLive(ray, cfg, live, resources)
        front.start(cameras, n)
        if live.http.enabled:
            server = LiveHttpServer.from_config(front, live.http).start()
        t0 = time.monotonic()
        with _signals(stop):
            while not stop.wait(POLL_S):
                if duration_s is not None and time.monotonic() - t0 >= duration_s:
                    break
                front.poll()
                if front.failure is not None:
                    break
    finally:
        if server is not None:
            server.stop()
        summaries = front.stop() if front is not None else []
        if started_ray:
            ray.shutdown()
    assert front is not None
    if front.failure is not None:
        raise front.failure
    summary = merge_summaries(summaries, time.monotonic() - t0)
    for sid, reason in front.moves.given_up.items():
        summary.states.setdefault(sid, f"given up ({reason})")
    for sid in front.moves.waiting:
        summary.states.setdefault(sid, "waiting for a Ray worker")
    dead = [w for w in front.workers if w.state == "dead"]
    if dead:
        log.warning("Ray workers that died during the job: %s; cameras restarted elsewhere: %s",
                    ", ".join(f"{w.index} ({w.reason})" for w in dead),
                    ", ".join(f"{sid} ×{n}" for sid, n in front.moves.moved.items()) or "none")
    return summary
