"""A hostile RTSP camera for tests: a small RTSP server (RTP over the RTSP connection, TCP
interleaved, as ``live`` streams use by default) whose mounts play a script of phases and
misbehave on cue.

Run it with the project's Python (it encodes its clips with PyAV at start)::

    python3 tests/servers/hostile_rtsp.py --port 8555 \\
        --mount garbage:phases=h264@320x240+garbage+h264@320x240 \\
        --mount resize:phases=h264@320x240+h264@480x272 \\
        --mount codec:phases=h264@320x240+hevc@320x240 \\
        --mount liar:phases=hevc@320x240,announce=h264

Phases: ``h264@WxH`` / ``hevc@WxH`` (a 2 s clip of a moving white box, encoded once, played
in a loop with continuous RTP timestamps, parameter sets in band before every keyframe) and
``garbage`` (well-formed RTP packets with random payloads, at the same packet rate). Every
mount starts in its first phase; SIGUSR1 moves every mount to its next phase (the last one
stays), for every client at once and without renegotiation: a session that was told H.264
keeps its payload type and receives whatever the phase sends, like a camera reconfigured
underneath its clients. A new ``DESCRIBE`` announces the codec of the current phase (the
last real codec during ``garbage``), unless ``announce=h264|hevc`` fixes the announced codec
(with parameter sets of a clip of that codec, so the client believes it). Options: ``fps``
(15), ``gop`` (frames between keyframes, = fps).

The server prints ``READY <port>`` once it listens on 127.0.0.1 and runs until SIGTERM.
Only ``RTP/AVP/TCP`` transport is offered (461 for UDP).
"""

from __future__ import annotations

import argparse
import base64
import random
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

MTU_PAYLOAD = 1200
CLIP_SECONDS = 2


@dataclass
class Clip:
    """An encoded clip: per frame, its NAL units (no start codes)."""

    codec: str
    width: int
    height: int
    frames: list[list[bytes]]

    @property
    def params(self) -> list[bytes]:
        """The parameter sets in the first frame (H.264 SPS/PPS; HEVC VPS/SPS/PPS)."""
        kinds = (7, 8) if self.codec == "h264" else (32, 33, 34)
        return [n for n in self.frames[0] if _nal_type(self.codec, n) in kinds]


def _nal_type(codec: str, nal: bytes) -> int:
    return nal[0] & 0x1F if codec == "h264" else (nal[0] >> 1) & 0x3F


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B buffer."""
    out: list[bytes] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        j = data.find(b"\x00\x00\x01", start)
        end = len(data) if j < 0 else j
        nal = data[start:end]
        if j >= 0 and nal.endswith(b"\x00"):
            nal = nal[:-1]  # the leading zero of a 4-byte start code
        if nal:
            out.append(nal)
        i = j
    return out


def encode_clip(codec: str, width: int, height: int, fps: int, gop: int) -> Clip:
    """A ``CLIP_SECONDS`` clip of a white box moving over grey, keyframes every ``gop``."""
    ctx = av.CodecContext.create("libx264" if codec == "h264" else "libx265", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = Fraction(fps, 1)
    keys = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    if codec == "h264":
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline",
                       "x264-params": f"{keys}:bframes=0"}
    else:
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency",
                       "x265-params": f"{keys}:bframes=0:repeat-headers=1:log-level=none"}
    frames: list[list[bytes]] = []
    n = fps * CLIP_SECONDS
    box = max(8, height // 4)
    for i in range(n):
        img = np.full((height, width, 3), 60, np.uint8)
        x = (width - box) * i // max(1, n - 1)
        img[height // 2 - box // 2: height // 2 + box // 2, x:x + box] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        frames += [split_annexb(bytes(p)) for p in ctx.encode(frame)]
    frames += [split_annexb(bytes(p)) for p in ctx.encode(None)]
    return Clip(codec, width, height, [f for f in frames if f])


def packetize(codec: str, nals: list[bytes]) -> list[bytes]:
    """RTP payloads of one access unit: single NAL units, or fragmentation units (H.264
    FU-A, RFC 6184; HEVC FU, RFC 7798) for the large ones."""
    out: list[bytes] = []
    for nal in nals:
        if len(nal) <= MTU_PAYLOAD:
            out.append(nal)
            continue
        if codec == "h264":
            head, body = bytes([(nal[0] & 0xE0) | 28]), nal[1:]
            kind = nal[0] & 0x1F
        else:
            head, body = bytes([(nal[0] & 0x81) | (49 << 1), nal[1]]), nal[2:]
            kind = (nal[0] >> 1) & 0x3F
        chunks = [body[i:i + MTU_PAYLOAD] for i in range(0, len(body), MTU_PAYLOAD)]
        for k, chunk in enumerate(chunks):
            fu = kind | (0x80 if k == 0 else 0) | (0x40 if k == len(chunks) - 1 else 0)
            out.append(head + bytes([fu]) + chunk)
    return out


@dataclass
class Phase:
    """One phase of a mount: a clip, or garbage (``clip`` None)."""

    clip: Clip | None

    def payloads(self, index: int, rng: random.Random) -> list[bytes]:
        if self.clip is None:
            return [rng.randbytes(rng.randint(100, MTU_PAYLOAD)) for _ in range(3)]
        return packetize(self.clip.codec, self.clip.frames[index % len(self.clip.frames)])


@dataclass
class Mount:
    name: str
    phases: list[Phase]
    fps: int
    announce: Clip | None  # fixes the announced codec
    current: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def phase(self) -> tuple[int, Phase]:
        with self.lock:
            return self.current, self.phases[self.current]

    def advance(self) -> None:
        with self.lock:
            self.current = min(self.current + 1, len(self.phases) - 1)

    def announced(self) -> Clip:
        """The clip whose codec and parameter sets ``DESCRIBE`` announces now."""
        if self.announce is not None:
            return self.announce
        now, _ = self.phase()
        clips = [p.clip for p in self.phases[: now + 1] if p.clip is not None]
        if clips:
            return clips[-1]
        return next(p.clip for p in self.phases if p.clip is not None)

    def sdp(self) -> str:
        clip = self.announced()
        b64 = [base64.b64encode(p).decode() for p in clip.params]
        if clip.codec == "h264":
            rtpmap, fmtp = "H264/90000", f"packetization-mode=1;sprop-parameter-sets={','.join(b64)}"
        else:
            vps, sps, pps = b64
            rtpmap, fmtp = "H265/90000", f"sprop-vps={vps};sprop-sps={sps};sprop-pps={pps}"
        return ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=fovea hostile camera\r\nc=IN IP4 0.0.0.0\r\n"
                f"t=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 {rtpmap}\r\na=fmtp:96 {fmtp}\r\n"
                "a=control:track0\r\n")


class Session:
    """One client connection: answers its RTSP requests, streams RTP after PLAY."""

    def __init__(self, sock: socket.socket, mounts: dict[str, Mount], port: int) -> None:
        self.sock = sock
        self.mounts = mounts
        self.port = port
        self.mount: Mount | None = None
        self.session_id = f"{random.getrandbits(32):08x}"
        self.send_lock = threading.Lock()
        self.stop = threading.Event()
        self.rng = random.Random()

    def run(self) -> None:
        buf = self.sock.makefile("rb")
        try:
            while not self.stop.is_set():
                first = buf.read(1)
                if not first:
                    return
                if first == b"$":  # interleaved RTCP from the client: skipped
                    head = buf.read(3)
                    if len(head) < 3:
                        return
                    buf.read(struct.unpack(">H", head[1:])[0])
                    continue
                lines = [first + buf.readline()]
                while lines[-1] not in (b"\r\n", b"\n", b""):
                    lines.append(buf.readline())
                if lines[-1] == b"":
                    return
                self.answer([x.decode("latin-1").rstrip("\r\n") for x in lines[:-1]], buf)
        except OSError:
            return
        finally:
            self.stop.set()
            self.sock.close()

    def answer(self, lines: list[str], buf: object) -> None:
        method, url, _ = [*lines[0].split(" "), "", ""][:3]
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        length = int(headers.get("content-length", "0") or 0)
        if length:
            buf.read(length)  # type: ignore[attr-defined]
        cseq = headers.get("cseq", "0")
        path = url.split("://", 1)[-1].split("/", 1)[-1] if "://" in url else url.lstrip("/")
        name = path.split("/")[0].split("?")[0]
        extra: dict[str, str] = {}
        body = ""
        code, reason = 200, "OK"
        if method == "OPTIONS":
            extra["Public"] = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"
        elif method == "DESCRIBE":
            mount = self.mounts.get(name)
            if mount is None:
                code, reason = 404, "Not Found"
            else:
                self.mount = mount
                body = mount.sdp()
                extra["Content-Base"] = f"rtsp://127.0.0.1:{self.port}/{name}/"
                extra["Content-Type"] = "application/sdp"
        elif method == "SETUP":
            transport = headers.get("transport", "")
            if "TCP" not in transport.upper():
                code, reason = 461, "Unsupported Transport"
            else:
                extra["Transport"] = "RTP/AVP/TCP;unicast;interleaved=0-1"
                extra["Session"] = f"{self.session_id};timeout=60"
        elif method == "PLAY":
            extra["Session"] = self.session_id
            extra["Range"] = "npt=0.000-"
        elif method in ("GET_PARAMETER", "SET_PARAMETER"):
            extra["Session"] = self.session_id
        elif method == "TEARDOWN":
            self.stop.set()
        else:
            code, reason = 405, "Method Not Allowed"
        head = f"RTSP/1.0 {code} {reason}\r\nCSeq: {cseq}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        data = body.encode()
        head += f"Content-Length: {len(data)}\r\n\r\n" if data else "\r\n"
        with self.send_lock:
            self.sock.sendall(head.encode() + data)
        if method == "PLAY" and code == 200 and self.mount is not None:
            threading.Thread(target=self.stream, args=(self.mount,), daemon=True).start()

    def stream(self, mount: Mount) -> None:
        """RTP packets at the mount's frame rate until the client leaves."""
        seq = self.rng.getrandbits(16)
        ssrc = self.rng.getrandbits(32)
        ts0 = self.rng.getrandbits(31)
        start = time.monotonic()
        phase_no, index, n = -1, 0, 0
        while not self.stop.is_set():
            delay = start + n / mount.fps - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            now_no, phase = mount.phase()
            if now_no != phase_no:  # a new phase starts at its clip's first (key)frame
                phase_no, index = now_no, 0
            ts = (ts0 + n * 90000 // mount.fps) & 0xFFFFFFFF
            payloads = phase.payloads(index, self.rng)
            out = bytearray()
            for k, payload in enumerate(payloads):
                marker = 0x80 if k == len(payloads) - 1 else 0
                rtp = struct.pack(">BBHII", 0x80, marker | 96, seq, ts, ssrc) + payload
                seq = (seq + 1) & 0xFFFF
                out += b"$\x00" + struct.pack(">H", len(rtp)) + rtp
            try:
                with self.send_lock:
                    self.sock.sendall(out)
            except OSError:
                self.stop.set()
                return
            index += 1
            n += 1


def parse_mount(text: str) -> tuple[str, list[str], dict[str, str]]:
    """``NAME:phases=A+B+C,fps=15,announce=h264`` -> (name, phases, options)."""
    name, _, opts = text.partition(":")
    options = dict(item.partition("=")[::2] for item in filter(None, opts.split(",")))
    unknown = set(options) - {"phases", "fps", "gop", "announce"}
    if unknown:
        raise SystemExit(f"unknown mount option(s) {sorted(unknown)} in {text!r}")
    return name.strip("/"), options.get("phases", "h264@320x240").split("+"), options


def build_mount(text: str) -> Mount:
    name, phase_specs, options = parse_mount(text)
    fps = int(options.get("fps", 15))
    gop = int(options.get("gop", fps))
    clips: dict[str, Clip] = {}

    def clip(spec: str) -> Clip:
        if spec not in clips:
            codec, _, size = spec.partition("@")
            w, _, h = (size or "320x240").partition("x")
            if codec not in ("h264", "hevc"):
                raise SystemExit(f"unknown phase {spec!r} (h264@WxH, hevc@WxH, garbage)")
            clips[spec] = encode_clip(codec, int(w), int(h), fps, gop)
        return clips[spec]

    phases = [Phase(None if spec == "garbage" else clip(spec)) for spec in phase_specs]
    announce = None
    if "announce" in options:
        real = next((p.clip for p in phases if p.clip is not None), None)
        size = f"{real.width}x{real.height}" if real else "320x240"
        announce = clip(f"{options['announce']}@{size}")
    return Mount(name, phases, fps, announce)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", action="append", default=[], help="NAME:phases=A+B,...")
    args = parser.parse_args(argv)
    mounts = {m.name: m for m in (build_mount(t) for t in args.mount or ["cam"])}

    def advance(*_: object) -> None:
        for m in mounts.values():
            m.advance()

    signal.signal(signal.SIGUSR1, advance)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.create_server(("127.0.0.1", args.port), reuse_port=False)
    print(f"READY {args.port}", flush=True)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=Session(conn, mounts, args.port).run, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
