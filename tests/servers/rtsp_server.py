"""A small RTSP server for tests, built on GStreamer's gst-rtsp-server.

Run it with the SYSTEM Python (Debian's ``python3-gi``; the project's virtualenv cannot
import ``gi``)::

    /usr/bin/python3 tests/servers/rtsp_server.py --port 8554 \\
        --mount cam0:pattern=red,width=320,height=240,fps=15,gop=15 \\
        --mount cam1:pattern=ball \\
        --auth cam1:alice:secret

Each mount serves a live ``videotestsrc ! x264enc ! rtph264pay`` pipeline (H.264
baseline, ``tune=zerolatency``, one keyframe every ``gop`` frames). Mounts are shared:
every client of a mount sees the same live pipeline, which starts with the first client.
SPS/PPS travel in the SDP only (``config-interval=0``, like many cameras) unless the
mount sets ``inband=1``. ``--auth MOUNT:USER:PASSWORD`` protects one mount with HTTP
basic authentication (401 without or with wrong credentials); an unknown mount gives 404.

The server prints ``READY <port>`` on stdout once it listens on ``--host:--port`` and
runs until SIGTERM/SIGINT. Apt packages: python3-gi gir1.2-gst-rtsp-server-1.0
gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
(x264enc) gstreamer1.0-plugins-bad gstreamer1.0-libav.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PATTERNS = {
    "smpte": 0, "snow": 1, "black": 2, "white": 3, "red": 4, "green": 5, "blue": 6,
    "checkers-1": 7, "circular": 12, "ball": 18, "bar": 21, "pinwheel": 22,
}


@dataclass
class Mount:
    """One mount point: a live test pattern encoded to H.264."""

    name: str
    pattern: str = "ball"
    width: int = 320
    height: int = 240
    fps: int = 15
    gop: int = 15
    bitrate: int = 256  # kbit/s
    inband: int = 0  # 1: SPS/PPS with every keyframe in band too

    def launch(self) -> str:
        pattern = PATTERNS.get(self.pattern, self.pattern)
        config_interval = -1 if self.inband else 0
        return (
            f"( videotestsrc is-live=true pattern={pattern} "
            f"! video/x-raw,format=I420,width={self.width},height={self.height},"
            f"framerate={self.fps}/1 "
            f"! x264enc tune=zerolatency speed-preset=ultrafast threads=1 "
            f"key-int-max={self.gop} bitrate={self.bitrate} "
            f"! video/x-h264,profile=constrained-baseline "
            f"! rtph264pay name=pay0 pt=96 config-interval={config_interval} )"
        )


def parse_mount(text: str) -> Mount:
    """``NAME[:key=value,...]`` -> :class:`Mount`."""
    name, _, opts = text.partition(":")
    mount = Mount(name.strip("/"))
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        if key not in Mount.__dataclass_fields__ or key == "name":
            raise SystemExit(f"unknown mount option {key!r} in {text!r}")
        setattr(mount, key, value if key == "pattern" else int(value))
    return mount


def _role(name: str, construct: bool = True) -> Gst.Structure:
    # gst-rtsp-server answers 404 when a role may not *access* a factory and 401 when it
    # may access but not *construct* it: a protected mount lets anonymous clients access
    # (so they get a 401 challenge) but only its user construct.
    role = Gst.Structure.new_empty(name)
    role.set_value(GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
    role.set_value(GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, construct)
    return role


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", action="append", default=[], help="NAME[:key=value,...]")
    parser.add_argument("--auth", action="append", default=[], help="MOUNT:USER:PASSWORD")
    args = parser.parse_args(argv)

    Gst.init(None)
    mounts = [parse_mount(m) for m in (args.mount or ["cam0"])]
    protected: dict[str, tuple[str, str]] = {}
    for spec in args.auth:
        mount_name, user, password = spec.split(":", 2)
        protected[mount_name.strip("/")] = (user, password)

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))

    auth = GstRtspServer.RTSPAuth()
    anonymous = GstRtspServer.RTSPToken()
    anonymous.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "anonymous")
    auth.set_default_token(anonymous)
    for user, password in protected.values():
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, f"user-{user}")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)

    table = server.get_mount_points()
    for mount in mounts:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(mount.launch())
        factory.set_shared(True)
        factory.set_latency(0)
        perms = GstRtspServer.RTSPPermissions()
        if mount.name in protected:
            perms.add_role_from_structure(_role(f"user-{protected[mount.name][0]}"))
            perms.add_role_from_structure(_role("anonymous", construct=False))
        else:  # open mounts: anonymous and every authenticated user
            for role in ["anonymous"] + [f"user-{user}" for user, _ in protected.values()]:
                perms.add_role_from_structure(_role(role))
        factory.set_permissions(perms)
        table.add_factory(f"/{mount.name}", factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 1

    def _quit(*_: object) -> None:
        loop.quit()

    signal.signal(signal.SIGTERM, _quit)
    signal.signal(signal.SIGINT, _quit)
    # let Python handle signals while the GLib loop runs
    GLib.timeout_add(200, lambda: True)
    print(f"READY {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
