"""Subprocess wrappers of the test servers: the GStreamer RTSP server and mosquitto.

Both bind 127.0.0.1 on a free port, can be killed and restarted on the same port (fault
tests), and paused with SIGSTOP (stall tests). :func:`rtsp_unavailable` /
:func:`mosquitto_unavailable` say why a server cannot run here (tests skip with it).

Usage::

    srv = RtspServerProcess(["cam0:pattern=red", "cam1:pattern=ball"]).start()
    srv.url("cam0")            # "rtsp://127.0.0.1:40111/cam0"
    srv.kill(); srv.start()    # same port
    srv.stop()
    bad = HostileRtspProcess(["cam:phases=h264@320x240+garbage"]).start()
    bad.next_phase()           # every client now receives garbage
"""

from __future__ import annotations

import functools
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

SYSTEM_PYTHON = os.environ.get("FOVEA_GST_PYTHON", "/usr/bin/python3")
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")
APT_HINT = (
    "apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly "
    "gstreamer1.0-libav mosquitto (see .ci/apt-packages-live.txt)"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def rtsp_unavailable() -> str | None:
    """``None`` when the GStreamer RTSP server can run, else the reason."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found; {APT_HINT}"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [e for e in ('videotestsrc', 'x264enc', 'rtph264pay')"
        " if Gst.ElementFactory.find(e) is None];"
        "print('missing GStreamer elements: ' + ', '.join(missing) if missing else 'ok')"
    )
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run {SYSTEM_PYTHON}: {e}"
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0 or text.splitlines()[-1:] != ["ok"]:
        return f"GStreamer RTSP server unavailable ({text[-300:]}); {APT_HINT}"
    return None


@functools.lru_cache(maxsize=1)
def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).exists()), None
    )


def mosquitto_unavailable() -> str | None:
    """``None`` when mosquitto can run, else the reason."""
    return None if mosquitto_binary() else f"mosquitto not installed; {APT_HINT}"


class _Process:
    """A restartable subprocess on a fixed port."""

    name = "server"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.paused = False
        # stderr goes to a file: an unread pipe could fill up and block the server
        self.log_path = Path(tempfile.mkstemp(prefix=f"fovea-{type(self).__name__}-",
                                              suffix=".log")[1])

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _wait_ready(self, proc: subprocess.Popen[str], deadline: float) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> _Process:
        """Start (or restart, same port); raise ``RuntimeError`` if it never gets ready."""
        if self.running:
            return self
        deadline = time.monotonic() + timeout
        last = ""
        while True:  # the port may be in TIME_WAIT for a moment after a kill
            with open(self.log_path, "a") as err:
                proc = subprocess.Popen(
                    self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=err, text=True, start_new_session=True,
                )
            if self._wait_ready(proc, deadline):
                self.proc = proc
                self.paused = False
                return self
            proc.kill()
            proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
            last = self.log_path.read_text(errors="replace")[-500:]
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name} did not start on port {self.port}: {last}")
            time.sleep(0.2)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def kill(self) -> None:
        """SIGKILL: connections drop without goodbye, like a crashed camera. A paused server
        is killed while still stopped: resuming it first would let it run for a moment and
        send what it held (a broker would acknowledge and forward messages after a test had
        checked that nothing was in flight)."""
        if self.proc is None:
            return
        self.proc.kill()  # SIGKILL ends a stopped process too
        self.paused = False
        self.proc.wait(timeout=10)
        self._close_pipes()
        self.proc = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._close_pipes()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: sockets stay open but nothing is sent (a stalled camera)."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.paused = False

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class RtspServerProcess(_Process):
    """``tests/servers/rtsp_server.py`` under the system Python.

    Args:
        mounts: ``NAME[:key=value,...]`` mount specs (see the server's docstring).
        auth: ``MOUNT:USER:PASSWORD`` entries (basic auth on that mount).
    """

    name = "RTSP server"

    def __init__(self, mounts: Sequence[str], auth: Sequence[str] = (),
                 port: int | None = None) -> None:
        super().__init__(port)
        self.mounts = list(mounts)
        self.auth = list(auth)

    def _command(self) -> list[str]:
        cmd = [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port)]
        for m in self.mounts:
            cmd += ["--mount", m]
        for a in self.auth:
            cmd += ["--auth", a]
        return cmd

    def _wait_ready(self, proc: subprocess.Popen[str], deadline: float) -> bool:
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                line = proc.stdout.readline()
                if line.startswith("READY"):
                    return True
                if not line and proc.poll() is not None:
                    return False
            elif proc.poll() is not None:
                return False
        return False

    def url(self, mount: str, user: str | None = None, password: str | None = None) -> str:
        info = ""
        if user is not None:
            info = quote(user, safe="")
            if password is not None:
                info += ":" + quote(password, safe="")
            info += "@"
        return f"rtsp://{info}127.0.0.1:{self.port}/{mount}"


HOSTILE_RTSP = Path(__file__).with_name("hostile_rtsp.py")


def hostile_unavailable() -> str | None:
    """``None`` when the hostile RTSP camera can run (PyAV with libx264 and libx265), else why."""
    import av

    missing = [c for c in ("libx264", "libx265") if c not in av.codecs_available]
    return f"PyAV lacks the encoder(s) {', '.join(missing)}" if missing else None


class HostileRtspProcess(RtspServerProcess):
    """``tests/servers/hostile_rtsp.py`` under this Python: mounts that play a script of
    phases (``NAME:phases=h264@320x240+garbage,...``, see that module); :meth:`next_phase`
    moves every mount to its next one."""

    name = "hostile RTSP server"

    def __init__(self, mounts: Sequence[str], port: int | None = None) -> None:
        super().__init__(mounts, (), port)

    def _command(self) -> list[str]:
        cmd = [sys.executable, str(HOSTILE_RTSP), "--port", str(self.port)]
        for m in self.mounts:
            cmd += ["--mount", m]
        return cmd

    def next_phase(self) -> None:
        """SIGUSR1: every mount moves to its next phase (the last one stays)."""
        if self.proc is None:
            raise RuntimeError("the hostile RTSP server is not running")
        os.kill(self.proc.pid, signal.SIGUSR1)


class MosquittoProcess(_Process):
    """A mosquitto broker on 127.0.0.1 (anonymous). With ``persistence`` its durable
    sessions (``clean_session=False`` subscribers) survive a :meth:`stop` + :meth:`start`;
    :meth:`close` stops it and deletes its files."""

    name = "mosquitto"

    def __init__(self, port: int | None = None, persistence: bool = True) -> None:
        super().__init__(port)
        self._dir = tempfile.mkdtemp(prefix="fovea-mosquitto-")
        self.conf = Path(self._dir) / "mosquitto.conf"
        persist = (f"persistence true\npersistence_location {self._dir}/\n"
                   if persistence else "persistence false\n")
        # as root, mosquitto would switch to user "mosquitto", who cannot write self._dir
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{persist}{user}"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
        )

    def _command(self) -> list[str]:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        return [binary, "-c", str(self.conf)]

    def _wait_ready(self, proc: subprocess.Popen[str], deadline: float) -> bool:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if port_open(self.port):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
