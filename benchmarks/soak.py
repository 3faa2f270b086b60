"""Soak test of ``fovea live``: hours of cameras that come and go, with memory watched.

Runs ``fovea live`` (a subprocess, as a user would) for ``--duration`` seconds over real RTSP
cameras (the GStreamer RTSP server of the tests, ``tests/servers``: run from a source
checkout) and, optionally, recorded 1080p30 clips paced as cameras (``--file-cameras``).
Meanwhile it abuses the job:

* churn: every ``--churn-every`` s a stream is added over the HTTP API (bearer token) and
  removed ``--churn-life`` s later (new ids each time);
* kills: every ``--kill-every`` s the server of the "flaky" cameras is killed (SIGKILL) and
  restarted ``--down-s`` s later on the same port; each of its cameras must be live again
  within its backoff bound (``backoff.max_s`` with jitter + ``open_timeout_s`` + one GOP + 1 s);
* a stall: every ``--stall-every`` s the server of the "stall" camera is frozen (SIGSTOP) at a
  random point of a GOP for ``--stall-s`` s (longer than ``watchdog.stall_s``), then resumed;
  it must be live again within the same bound.

The soak's clock starts when the job's API first answers (the job binds a free port and logs
it): a job slow to start, on a loaded machine, is not churned or sampled before it runs.
A thread of its own polls ``GET /streams`` every 0.5 s and, every ``--sample-s`` s on a fixed
schedule, records the resident memory (RSS) of every process of the job (the job and its
children: ingest and sink-writer processes) and the GPU memory they use (NVML,
``nvidia-ml-py``; ``None`` without it). A recovery is timed from the camera's return to the
job's own transition to ``live`` (``state_since``), not to the poll that saw it. At the end
it reports the memory slope after ``--warmup-s`` (least squares, MiB per 10 min), checks the
records of every stream (JSONL: frame indices strictly increasing, no duplicate, gaps no
more than the frames counted as dropped by the queue policy), that removed streams left
``/streams`` and ``/metrics``, and the reconnect times. Writes ``soak.json`` and ``soak.md``
into ``--out``; ``--check`` exits 1 when a target is missed (slope above ``--max-slope``).

Where the memory goes: ``--memwatch`` runs the job under :mod:`benchmarks.memwatch`, which
samples its heaps from inside (glibc's in-use and free bytes, its arenas; with
``--tracemalloc N`` Python's heap too, and the lines that grew after the warm-up); the report
gives their slopes. Python-heap or in-use growth is a leak; free bytes growing with the RSS
is the allocator keeping memory (``live.malloc_arenas``, :mod:`pipelines.live_memory`).
``--trim-every S`` has the job call ``malloc_trim(0)`` every S s, so its RSS counts what it
holds (the CI soak, whose 100 s of samples cannot tell the allocator's settling from a leak).

Usage::

    python -m benchmarks.soak --duration 3600 --cameras 8 --warmup-s 900 --out soak-cpu --check   # CPU, 1 h
    python -m benchmarks.soak --duration 600 --cameras 4 --file-cameras 96 --size 1920x1080 --fps 30 \\
        --gop 30 --decode gpu --device cuda --model default --batch 64 --warmup-s 180 --out soak-gpu --check
    python -m benchmarks.soak --duration 600 --cameras 4 --churn-every 5 --churn-life 3 --kill-every 60 \
        --memwatch --out soak-churn      # churn amplified, the job's heaps sampled: where memory goes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmarks.soak")

TOKEN_ENV = "FOVEA_SOAK_TOKEN"
API_LINE = re.compile(r"live HTTP server on http://[^\s/]+:(\d+)")  # streams/live/http.py logs it


@dataclass
class Sample:
    """One sample: seconds since the job started, RSS per process (MiB), GPU MiB, states."""

    t: float
    rss_mib: dict[int, float]
    gpu_mib: float | None
    states: dict[str, str]

    @property
    def rss_total(self) -> float:
        return sum(self.rss_mib.values())


NOT_YET = float("inf")  # a camera's back_at while it is still down


@dataclass
class Recovery:
    """A camera brought down on purpose and when its frames flowed again."""

    kind: str  # "kill" | "stall"
    stream: str
    down_at: float
    back_at: float  # when the camera (server) was available again
    live_at: float | None = None  # first poll after back_at: live, with more frames than at back_at
    bound_s: float = 0.0
    frames_back: int | None = None  # the stream's frame count at back_at

    @property
    def seconds(self) -> float | None:
        """From the camera's return to the stream delivering frames again."""
        return None if self.live_at is None else self.live_at - self.back_at

    @property
    def ok(self) -> bool:
        return self.seconds is not None and self.seconds <= self.bound_s


@dataclass
class StreamCheck:
    """The records of one stream."""

    frames: int = 0
    ordered: bool = True
    duplicates: int = 0
    gaps: int = 0  # indices missing between the first and the last record
    dropped: int = 0  # frames the job counted as dropped (queue policy)

    @property
    def ok(self) -> bool:
        return self.frames > 0 and self.ordered and self.duplicates == 0 and self.gaps <= self.dropped


# ------------------------------------------------------------------------------ memory
def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def gpu_mib(pids: list[int]) -> float | None:
    """GPU memory of ``pids`` (MiB, all devices; NVML), ``None`` without NVML. Where NVML
    sees none of them (a container's own process ids), the memory in use on the devices."""
    from benchmarks.sampler import nvml_init

    if not nvml_init():
        return None
    import pynvml

    total, device_used, seen = 0, 0, False
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        device_used += pynvml.nvmlDeviceGetMemoryInfo(handle).used
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid in pids and p.usedGpuMemory is not None:
                total += p.usedGpuMemory
                seen = True
    return (total if seen else device_used) / 2**20


def slope_per_10min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(seconds, MiB)`` points, in MiB per 10 minutes."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return 600.0 * sum((t - mt) * (v - mv) for t, v in points) / var


# ------------------------------------------------------------------------------ records
def check_records(path: Path, dropped: dict[str, int]) -> dict[str, StreamCheck]:
    """Per stream: order, duplicates and gaps of its records' frame indices."""
    last: dict[str, int] = {}
    seen: dict[str, set[int]] = {}
    checks: dict[str, StreamCheck] = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            sid, idx = rec["source"], int(rec["frame_index"])
            c = checks.setdefault(sid, StreamCheck(dropped=dropped.get(sid, 0)))
            s = seen.setdefault(sid, set())
            c.frames += 1
            if idx in s:
                c.duplicates += 1
            s.add(idx)
            if sid in last and idx <= last[sid]:
                c.ordered = False
            last[sid] = max(idx, last.get(sid, idx))
    for sid, c in checks.items():
        s = seen[sid]
        c.gaps = (max(s) - min(s) + 1) - len(s)
    return checks


# ------------------------------------------------------------------------------ cameras
class Cameras:
    """The RTSP servers: a stable one (most cameras and the churn mount), a flaky one (killed
    and restarted) and one with the stall camera (frozen with SIGSTOP)."""

    def __init__(self, n: int, width: int, height: int, fps: int, gop: int) -> None:
        try:
            from tests.servers.helpers import RtspServerProcess, rtsp_unavailable
        except ImportError as e:
            raise SystemExit(f"the soak needs a source checkout (tests/servers): {e}") from None
        reason = rtsp_unavailable()
        if reason is not None:
            raise SystemExit(f"the GStreamer RTSP server cannot run: {reason}")
        if n < 3:
            raise SystemExit("--cameras: at least 3 (stable, flaky, stall)")
        spec = f"pattern=ball,width={width},height={height},fps={fps},gop={gop}"
        n_flaky = max(1, n // 4)
        self.stable_ids = [f"cam{i:02d}" for i in range(n - n_flaky - 1)]
        self.flaky_ids = [f"flaky{i:02d}" for i in range(n_flaky)]
        self.stall_id = "stall00"
        self.stable = RtspServerProcess([f"{c}:{spec}" for c in [*self.stable_ids, "churn"]])
        self.flaky = RtspServerProcess([f"{c}:{spec}" for c in self.flaky_ids])
        self.stall = RtspServerProcess([f"{self.stall_id}:{spec}"])
        self.servers = [self.stable, self.flaky, self.stall]

    def start(self) -> Cameras:
        for s in self.servers:
            s.start()
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def sources(self) -> list[dict[str, str]]:
        return ([{"id": c, "uri": self.stable.url(c)} for c in self.stable_ids]
                + [{"id": c, "uri": self.flaky.url(c)} for c in self.flaky_ids]
                + [{"id": self.stall_id, "uri": self.stall.url(self.stall_id)}])

    def churn_uri(self) -> str:
        return self.stable.url("churn")


# ------------------------------------------------------------------------------ the job
class Job:
    """``fovea live`` in a subprocess, and its HTTP API."""

    def __init__(self, args: argparse.Namespace, sources: list[dict[str, str]], out: Path) -> None:
        self.args = args
        self.port: int | None = None  # the job binds a free port itself (none to lose to another process)
        self.token = secrets.token_hex(24)
        self.records = out / "records.jsonl"
        self.config = out / "soak.yaml"
        model: dict[str, Any] = {"path": args.model}
        if args.input_size:
            model["input_size"] = [args.input_size, args.input_size]
        self.config.write_text(json.dumps({
            "sources": sources,
            "model": model,
            "engine": {"device": args.device, "batch_size": args.batch},
            "live": {"decode": args.decode, "log_interval_s": 30,
                     "watchdog": {"stall_s": args.stall_watchdog_s, "open_timeout_s": 3},
                     "backoff": {"initial_s": 0.5, "max_s": args.backoff_max_s},
                     "http": {"port": 0, "token_env": TOKEN_ENV},
                     **({} if args.live_malloc_arenas is None else {"malloc_arenas": args.live_malloc_arenas})},
            "sinks": [{"type": "jsonl", "path": str(self.records)}],
        }, indent=1))
        self.stderr_path = out / "job.log"
        self.stdout_path = out / "summary.txt"
        self.memwatch_path = out / "memwatch.jsonl"
        self.snapshots = out / "tracemalloc"
        self.proc: subprocess.Popen[bytes] | None = None
        self.launched = 0.0
        self.started = 0.0  # when its API first answered: the soak's clock (the job's --duration runs from then)

    @property
    def bound_s(self) -> float:
        """The longest a camera back on line may take to be live again."""
        a = self.args
        return a.backoff_max_s * 1.2 + 3.0 + a.gop / a.fps + 1.0

    def start(self) -> None:
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, TOKEN_ENV: self.token,
               "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        if self.args.malloc_arenas:
            env["MALLOC_ARENA_MAX"] = str(self.args.malloc_arenas)
        cmd = [sys.executable, "-m", "pipelines.cli"]
        if self.args.memwatch or self.args.tracemalloc:  # the job's heaps sampled from inside
            cmd = [sys.executable, "-m", "benchmarks.memwatch", "--log", str(self.memwatch_path),
                   "--every", str(self.args.sample_s), "--trim-every", str(self.args.trim_every)]
            if self.args.tracemalloc:
                cmd += ["--tracemalloc", str(self.args.tracemalloc), "--snapshots", str(self.snapshots),
                        "--snapshot-every", str(self.args.snapshot_every)]
            cmd.append("--")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*cmd, "live", str(self.config), "--duration", str(self.args.duration)],
                stdout=out, stderr=err, env=env)
        self.launched = time.monotonic()

    def wait_ready(self, timeout: float) -> str | None:
        """Wait until the job's API answers (its port from the log line ``live HTTP server on
        http://HOST:PORT``) and start the soak's clock: a job slow to start (a loaded machine,
        a cold cache) must not be churned, killed and sampled before it runs. ``None`` once
        ready, else why not."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"the job exited ({self.proc.returncode}) before its API answered"
            if self.port is None:
                found = API_LINE.search(self.stderr_path.read_text(errors="replace"))
                self.port = int(found.group(1)) if found else None
            if self.port is not None and self.call("GET", "/streams")[0] == 200:
                self.started = time.monotonic()
                log.info("the job answers on port %d, %.1f s after its start", self.port, self.started - self.launched)
                return None
            time.sleep(0.2)
        return f"the job's API did not answer within {timeout:g} s"

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                text = resp.read().decode()
                return resp.status, json.loads(text) if "json" in resp.headers.get("Content-Type", "") else text
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, str(e)

    def streams(self) -> dict[str, dict[str, Any]]:
        code, body = self.call("GET", "/streams")
        return {s["id"]: s for s in body["streams"]} if code == 200 else {}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9

    def removed_drops(self) -> dict[str, int]:
        """Final drops of each stream removed during the run (``live: removed stream X (N frames
        read, M dropped, ...)`` in the job's log)."""
        found = re.findall(r"live: removed stream (\S+) \(\d+ frames read, (\d+) dropped",
                           self.stderr_path.read_text(errors="replace"))
        return {sid: int(n) for sid, n in found}

    def summary_drops(self) -> dict[str, int]:
        """Drops per stream from the job's summary (``  cam00: ... drops N  state live``)."""
        drops: dict[str, int] = {}
        for line in self.stdout_path.read_text().splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[0].endswith(":") and "drops" in parts:
                drops[parts[0][:-1]] = int(parts[parts.index("drops") + 1])
        return drops


# ------------------------------------------------------------------------------ the soak
@dataclass
class Soak:
    """The run: samples, recoveries, churned streams; see :func:`run`."""

    samples: list[Sample] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    churned: list[str] = field(default_factory=list)
    churn_errors: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # last seen per stream
    not_ready: str | None = None  # why the job never became ready, if it did not
    ready_after_s: float = 0.0  # how long the job took to answer: its own samples' t is from its start


def track_streams(soak: Soak, states: dict[str, dict[str, Any]], now: float) -> None:
    """Drops seen, and the recoveries whose stream delivers frames again: back live at the
    job's own time of its ``live`` transition (``state_since``), so how often the soak polls
    (and a loaded machine slowing the poll) does not count against the camera."""
    for sid, s in states.items():
        soak.dropped[sid] = max(soak.dropped.get(sid, 0), int(s.get("dropped", 0)))
    for r in soak.recoveries:
        st = states.get(r.stream)
        if r.live_at is not None or now < r.back_at or st is None:
            continue
        if r.frames_back is None:
            r.frames_back = int(st["frames"])
        elif st["state"] == "live" and int(st["frames"]) > r.frames_back:
            since = float(st.get("state_since") or now)
            # a stall the job did not notice (its socket full of backlog) never left live: this poll
            r.live_at = max(since, r.back_at) if since >= r.down_at else now


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak; returns the report (also written to ``--out``)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cams = Cameras(args.cameras, args.width, args.height, args.fps, args.gop).start()
    job = Job(args, cams.sources() + _file_sources(args), out)
    soak = Soak()
    try:
        job.start()
        soak.not_ready = job.wait_ready(args.ready_timeout)
        if soak.not_ready is None:
            soak.ready_after_s = job.started - job.launched
            Abuse(args, job, cams, soak).run()
        else:
            log.error("%s", soak.not_ready)
        code = job.wait(args.duration + 180)
    finally:
        if job.proc is not None and job.proc.poll() is None:  # interrupted: stop it as a service is
            job.proc.terminate()
            job.wait(30)
        cams.stop()
    for sid, n in [*job.summary_drops().items(), *job.removed_drops().items()]:
        soak.dropped[sid] = max(soak.dropped.get(sid, 0), n)
    checks = check_records(job.records, soak.dropped) if job.records.exists() else {}
    return _report(args, out, code, soak, checks, job.stderr_path.read_text(errors="replace"))


def _file_sources(args: argparse.Namespace) -> list[dict[str, str]]:
    if not args.file_cameras:
        return []
    from benchmarks.live_sim import make_camera_clip

    Path(args.clips).mkdir(parents=True, exist_ok=True)
    clips = [make_camera_clip(Path(args.clips) / f"soak_{i}.mp4", seed=i) for i in range(min(4, args.file_cameras))]
    return [{"id": f"file{i:03d}", "uri": f"file://{clips[i % len(clips)].resolve()}"}
            for i in range(args.file_cameras)]


class Monitor:
    """A thread that polls the job's streams every ``poll_s`` (drops, recoveries) and samples
    its memory every ``sample_s`` on a fixed schedule (``t = k * sample_s``), whatever the
    abuse loop is blocked in (a server restarting, a stream being removed)."""

    def __init__(self, job: Job, soak: Soak, lock: threading.Lock, sample_s: float, poll_s: float = 0.5) -> None:
        self.job = job
        self.soak = soak
        self.lock = lock
        self.sample_s = sample_s
        self.poll_s = poll_s
        self.states: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-monitor", daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        assert self.job.proc is not None
        next_sample = 0.0
        while not self._stop.is_set():
            now = self.job.elapsed()
            if now >= next_sample:  # first: a slow answer from the job must not delay it
                pids = process_tree(self.job.proc.pid)
                rss = {p: v for p in pids if (v := rss_mib(p)) is not None}
                states = {s: v["state"] for s, v in self.states.items()}
                self.soak.samples.append(Sample(now, rss, gpu_mib(pids), states))
                next_sample = (now // self.sample_s + 1) * self.sample_s
            self.states = self.job.streams()
            with self.lock:
                track_streams(self.soak, self.states, time.time())
            self._stop.wait(max(0.0, min(self.poll_s, next_sample - self.job.elapsed())))


class Abuse:
    """The soak's main loop: churn, kills and stalls until the job's time is up, while a
    :class:`Monitor` samples and polls."""

    def __init__(self, args: argparse.Namespace, job: Job, cams: Cameras, soak: Soak) -> None:
        self.args = args
        self.job = job
        self.cams = cams
        self.soak = soak
        self.lock = threading.Lock()  # soak.recoveries: appended here, updated by the monitor
        self.rng = random.Random(args.seed)
        self.next_churn, self.next_kill, self.next_stall = args.churn_every, args.kill_every, args.stall_every
        self.churning: dict[str, float] = {}  # stream id -> when to remove it
        self.restart_at: float | None = None
        self.resume_at: float | None = None
        self.stall: Recovery | None = None

    def run(self) -> None:
        job, args = self.job, self.args
        assert job.proc is not None
        with Monitor(job, self.soak, self.lock, args.sample_s):
            while job.proc.poll() is None and job.elapsed() < args.duration - 2:
                now = job.elapsed()
                self.churn(now)
                self.kill(now)
                self.freeze(now)
                time.sleep(0.2)
        self.removed_are_gone()

    def churn(self, now: float) -> None:
        args, soak = self.args, self.soak
        if args.churn_every and now >= self.next_churn and now < args.duration - args.churn_life - 5:
            sid = f"churn{len(soak.churned) + len(soak.churn_errors):04d}"
            code, body = self.job.call("POST", "/streams", {"id": sid, "uri": self.cams.churn_uri()})
            if code == 201:
                self.churning[sid] = now + args.churn_life
                soak.churned.append(sid)
            else:
                soak.churn_errors.append(f"POST {sid}: {code} {body}")
            self.next_churn = now + args.churn_every
        for sid, until in list(self.churning.items()):
            if now >= until:
                code, body = self.job.call("DELETE", f"/streams/{sid}")
                if code != 200:
                    soak.churn_errors.append(f"DELETE {sid}: {code} {body}")
                del self.churning[sid]

    def kill(self, now: float) -> None:
        args, soak = self.args, self.soak
        if args.kill_every and self.restart_at is None and now >= self.next_kill and now < args.duration - 30:
            self.cams.flaky.kill()
            self.restart_at = now + args.down_s
            down = time.time()
            with self.lock:  # back_at: once the server is back (start() returns)
                soak.recoveries += [Recovery("kill", c, down, NOT_YET, bound_s=self.job.bound_s)
                                    for c in self.cams.flaky_ids]
            self.next_kill = now + args.kill_every
        if self.restart_at is not None and now >= self.restart_at:
            self.cams.flaky.start()
            with self.lock:
                for r in soak.recoveries:
                    if r.kind == "kill" and r.back_at == NOT_YET:
                        r.back_at = time.time()
            self.restart_at = None

    def freeze(self, now: float) -> None:
        args = self.args
        if args.stall_every and self.resume_at is None and now >= self.next_stall and now < args.duration - 30:
            time.sleep(self.rng.uniform(0.05, args.gop / args.fps))  # somewhere inside a GOP
            self.cams.stall.pause()
            self.resume_at = self.job.elapsed() + args.stall_s
            down = time.time()
            self.stall = Recovery("stall", self.cams.stall_id, down, NOT_YET, bound_s=self.job.bound_s)
            with self.lock:
                self.soak.recoveries.append(self.stall)
            self.next_stall = now + args.stall_every
        if self.resume_at is not None and self.job.elapsed() >= self.resume_at:
            self.cams.stall.resume()
            if self.stall is not None:
                with self.lock:
                    self.stall.back_at = time.time()
            self.resume_at = None

    def removed_are_gone(self) -> None:
        """Every stream removed over HTTP has left ``/streams`` and ``/metrics``."""
        listed = self.job.streams()
        code, metrics = self.job.call("GET", "/metrics")
        for sid in self.soak.churned:
            if sid in self.churning:
                continue
            if sid in listed or (code == 200 and f'stream="{sid}"' in str(metrics)):
                self.soak.churn_errors.append(f"removed stream {sid} still in /streams or /metrics")


def _report(args: argparse.Namespace, out: Path, code: int, soak: Soak, checks: dict[str, StreamCheck],
            log_text: str) -> dict[str, Any]:
    after = [s for s in soak.samples if s.t >= args.warmup_s]
    rss_slope = slope_per_10min([(s.t, s.rss_total) for s in after])
    half = [s for s in soak.samples if s.t >= args.duration / 2]  # (glibc's arenas have levelled off)
    rss_slope_half = slope_per_10min([(s.t, s.rss_total) for s in half])
    gpu_slope = slope_per_10min([(s.t, s.gpu_mib) for s in after if s.gpu_mib is not None])
    recov_ok = all(r.ok for r in soak.recoveries)
    tracebacks = log_text.count("Traceback (most recent call last)")
    records_ok = bool(checks) and all(c.ok for c in checks.values())
    slope_ok = rss_slope is not None and rss_slope <= args.max_slope and (
        gpu_slope is None or gpu_slope <= args.max_slope)
    report = {
        "args": vars(args),
        "exit_code": code,
        "samples": [asdict(s) | {"rss_total": s.rss_total} for s in soak.samples],
        "rss_mib_first": soak.samples[0].rss_total if soak.samples else None,
        "rss_mib_last": soak.samples[-1].rss_total if soak.samples else None,
        "rss_slope_mib_per_10min": rss_slope,
        "rss_slope_second_half_mib_per_10min": rss_slope_half,
        "gpu_slope_mib_per_10min": gpu_slope,
        "recoveries": [asdict(r) | {"seconds": r.seconds, "ok": r.ok} for r in soak.recoveries],
        "churned": len(soak.churned),
        "churn_errors": soak.churn_errors,
        "streams": {sid: asdict(c) | {"ok": c.ok} for sid, c in sorted(checks.items())},
        "tracebacks_in_log": tracebacks,
        "not_ready": soak.not_ready,
        "ready_after_s": soak.ready_after_s,
    }
    ok = {"ready": soak.not_ready is None, "exit": code == 0, "records": records_ok, "recoveries": recov_ok,
          "churn": not soak.churn_errors and (len(soak.churned) > 0 or not args.churn_every),
          "memory": slope_ok, "no_tracebacks": tracebacks == 0}
    report["ok"] = ok
    report["passed"] = all(ok.values())
    report["heaps"] = heap_slopes(out / "memwatch.jsonl", args.warmup_s + soak.ready_after_s)
    report["tracemalloc_diff"] = tracemalloc_diff(out / "tracemalloc", args.warmup_s + soak.ready_after_s)
    (out / "soak.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "soak.md").write_text(render(report))
    return report


def heap_slopes(path: Path, warmup_s: float) -> dict[str, Any] | None:
    """From the job's own samples (``--memwatch``): after the warm-up, the slope (MiB per 10 min)
    and first -> last of its RSS, glibc's in-use and free bytes, Python's heap; arenas and threads."""
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["t"] >= warmup_s and not r.get("final")]
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        values = {"rss": r.get("rss_mib"), "python": r.get("py_mib"), "threads": r.get("threads")}
        for k, v in (r.get("malloc") or {}).items():
            values[f"malloc_{k}"] = v
        for k, v in values.items():
            if v is not None:
                series.setdefault(k, []).append((r["t"], float(v)))
    return {k: {"slope_per_10min": slope_per_10min(pts), "first": pts[0][1], "last": pts[-1][1]}
            for k, pts in series.items() if pts}


def tracemalloc_diff(folder: Path, warmup_s: float) -> list[str] | None:
    """What grew in the job's Python heap from the first snapshot after the warm-up to the last."""
    snaps = sorted(folder.glob("snap-*.tm")) if folder.is_dir() else []
    after = [p for p in snaps if int(p.stem.split("-")[1]) >= warmup_s]
    if len(after) < 2:
        return None
    from benchmarks.memwatch import diff_snapshots

    lines = diff_snapshots(after[0], after[-1])
    (folder.parent / "tracemalloc-diff.txt").write_text("\n".join(lines) + "\n")
    return lines


def render(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    a = report["args"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.2f}"

    recs = report["recoveries"]
    worst = max((r["seconds"] for r in recs if r["seconds"] is not None), default=None)
    bad = [sid for sid, c in report["streams"].items() if not c["ok"]]
    lines = [
        f"## Soak: {a['cameras']} RTSP + {a['file_cameras']} file cameras, {a['duration']:.0f} s, "
        f"decode {a['decode']} on {a['device']}",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| RSS of the job's processes, first / last sample | {report['rss_mib_first'] or 0:.0f} / "
        f"{report['rss_mib_last'] or 0:.0f} MiB | |",
        f"| RSS slope after {a['warmup_s']:.0f} s warm-up | {fmt(report['rss_slope_mib_per_10min'])} MiB/10 min "
        f"| <= {a['max_slope']:g} |",
        f"| RSS slope over the second half | {fmt(report.get('rss_slope_second_half_mib_per_10min'))} MiB/10 min "
        "| |",
        f"| GPU memory slope | {fmt(report['gpu_slope_mib_per_10min'])} MiB/10 min | <= {a['max_slope']:g} |",
        f"| streams added and removed over HTTP | {report['churned']} ({len(report['churn_errors'])} errors) | |",
        f"| kills + stalls recovered within the bound | {sum(r['ok'] for r in recs)}/{len(recs)} "
        f"(slowest {'n/a' if worst is None else f'{worst:.1f} s'}) | all |",
        f"| streams with ordered, unique records, gaps <= drops | {len(report['streams']) - len(bad)}"
        f"/{len(report['streams'])} | all |",
        f"| job exit code | {report['exit_code']} | 0 |",
        "",
        f"**{'PASS' if report['passed'] else 'FAIL'}** " + ", ".join(k for k, v in report["ok"].items() if not v),
    ]
    if report.get("not_ready"):
        lines.append(f"the job never ran: {report['not_ready']}")
    if bad:
        lines.append(f"streams failing the record checks: {', '.join(bad)}")
    after = [x for x in report["samples"] if x["t"] >= a["warmup_s"]]
    if after:
        first, last = after[0]["rss_mib"], after[-1]["rss_mib"]
        procs = ", ".join(f"{pid}: {first[pid]:.0f} -> {last[pid]:.0f} MiB" for pid in first if pid in last)
        lines.append(f"RSS per process after the warm-up (pid: first -> last): {procs}")
    heaps = report.get("heaps")
    if heaps:
        lines += ["", "The job process's heaps after the warm-up (`--memwatch`):", "",
                  "| series | first | last | slope / 10 min |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['first']:.1f} | {v['last']:.1f} | {fmt(v['slope_per_10min'])} |"
                  for k, v in heaps.items()]
    if report.get("tracemalloc_diff"):
        lines += ["", "Python allocations that grew after the warm-up (tracemalloc):", "", "```",
                  *report["tracemalloc_diff"][:40], "```"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=3600.0, help="seconds the job runs")
    p.add_argument("--cameras", type=int, default=8, help="RTSP cameras (>= 3)")
    p.add_argument("--file-cameras", type=int, default=0, help="1080p30 clips paced as cameras")
    p.add_argument("--clips", default="/tmp/fovea-soak-clips", help="where the 1080p30 clips are cached")
    p.add_argument("--size", default="320x240", help="RTSP cameras' WxH")
    p.add_argument("--fps", type=int, default=15)
    p.add_argument("--gop", type=int, default=15, help="frames between keyframes")
    p.add_argument("--model", default="default", help="model file or 'default'")
    p.add_argument("--input-size", type=int, default=0, help="model input (square); 0: the model's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--decode", default="cpu", choices=["auto", "cpu", "gpu"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--churn-every", type=float, default=60.0, help="add a stream every N s (0: never)")
    p.add_argument("--churn-life", type=float, default=30.0, help="and remove it N s later")
    p.add_argument("--kill-every", type=float, default=300.0, help="kill the flaky cameras' server (0: never)")
    p.add_argument("--down-s", type=float, default=8.0, help="restart it N s later")
    p.add_argument("--stall-every", type=float, default=600.0, help="freeze the stall camera (0: never)")
    p.add_argument("--stall-s", type=float, default=10.0)
    p.add_argument("--stall-watchdog-s", type=float, default=3.0, help="live.watchdog.stall_s")
    p.add_argument("--backoff-max-s", type=float, default=4.0, help="live.backoff.max_s")
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--ready-timeout", type=float, default=300.0,
                   help="seconds the job may take to answer on its API; the soak's clock starts then")
    p.add_argument("--warmup-s", type=float, default=120.0, help="memory slope from here on")
    p.add_argument("--max-slope", type=float, default=1.0, help="MiB per 10 min (RSS and GPU)")
    p.add_argument("--live-malloc-arenas", type=int, default=None, metavar="N",
                   help="the job's live.malloc_arenas (default: the job's, 2; 0: glibc's, up to 8 per core, with "
                        "which the RSS creeps up while reader threads come and go)")
    p.add_argument("--malloc-arenas", type=int, default=0,
                   help="MALLOC_ARENA_MAX in the job's environment (0: not set); it overrides live.malloc_arenas")
    p.add_argument("--memwatch", action="store_true",
                   help="sample the job's heaps from inside (benchmarks.memwatch): glibc in-use / free / arenas, "
                        "into OUT/memwatch.jsonl, their slopes in the report")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                   help="also trace the job's Python allocations (slows it): snapshots in OUT/tracemalloc, "
                        "the lines that grew after the warm-up in the report")
    p.add_argument("--snapshot-every", type=float, default=120.0, help="seconds between tracemalloc snapshots")
    p.add_argument("--trim-every", type=float, default=0.0,
                   help="with --memwatch: malloc_trim(0) in the job every N s (0: never): its RSS then counts the "
                        "memory it holds, not the free pages its allocator keeps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--out", default="soak-out")
    return p


def _exit_on(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # the job and the camera servers are stopped on the way out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on)
    w, _, h = args.size.lower().partition("x")
    args.width, args.height = int(w), int(h)
    report = run(args)
    sys.stdout.write(render(report))
    return 1 if args.check and not report["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
