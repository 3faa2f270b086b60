"""Benchmark inputs: realistic 1080p H.264/HEVC clips made fast with PyAV, cached by parameters.

Each clip is rendered directly in YUV 4:2:0 (no colour conversion): a textured background,
static (a fixed camera) or panning, textured objects moving over it and per-frame sensor
noise, so neither intra nor inter prediction is trivial. It is encoded with libx264
(``veryfast``) or libx265 (``ultrafast``) with B-frames and a fixed keyframe interval
(``gop``: 240 = one keyframe per 8 s at 30 fps, or 30), closed GOPs, CRF rate control.
The default set mixes lengths, GOPs and motion.

Files are named after a hash of their :class:`ClipSpec` in a cache folder and reused when
present. Several are encoded in parallel (processes), each with a share of the cores.

Measurements need more frames than it is worth encoding, so :func:`loop_clip` writes a
clip repeated ``times`` times by remuxing its packets with shifted timestamps (no
re-encoding; seconds for gigabytes): decoding cost is that of the real stream.

Usage::

    specs = default_specs("h264", files=6)
    paths = ensure_clips(specs, Path("~/.cache/fovea/bench-clips").expanduser())
    files = build_workload(paths, times=4, work_dir=cache / "looped", count=28)
    describe_clip(paths[0])                          # ClipInfo: frames, gop, bitrate, ...
    by_codec = user_clips(["my_videos/"])            # {"h264": [...], "hevc": [...]}
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when rendering or encoding changes: new cache keys
Codec = Literal["h264", "hevc"]
CODECS: tuple[Codec, ...] = ("h264", "hevc")
_ENCODERS: dict[str, tuple[str, str, int]] = {  # codec -> (encoder, preset, crf)
    "h264": ("libx264", "veryfast", 23),
    "hevc": ("libx265", "ultrafast", 26),
}
# the default set: (frames, gop, motion) cycled over; mixed lengths, long and short GOPs
_FULL_SET: tuple[tuple[int, int, str], ...] = (
    (600, 240, "static"), (300, 30, "pan"), (450, 240, "pan"), (150, 30, "static"),
    (540, 240, "static"), (240, 30, "pan"), (360, 240, "pan"), (120, 30, "static"),
)
_QUICK_SET: tuple[tuple[int, int, str], ...] = ((40, 30, "static"), (25, 12, "pan"))


@dataclass(frozen=True)
class ClipSpec:
    """One generated clip. ``crf``/``preset`` ``None``: the codec's default (see module docstring)."""

    codec: Codec
    frames: int
    gop: int
    width: int = 1920
    height: int = 1080
    fps: int = 30
    bframes: int = 3
    motion: Literal["static", "pan"] = "static"
    crf: int | None = None
    preset: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.codec not in _ENCODERS:
            raise ValueError(f"ClipSpec.codec: expected one of {list(_ENCODERS)}, got {self.codec!r}")
        if self.width % 2 or self.height % 2 or self.width < 64 or self.height < 64:
            raise ValueError(f"ClipSpec: width and height must be even and >= 64, got {self.width}x{self.height}")
        if self.frames < 1 or self.gop < 1 or self.bframes < 0:
            raise ValueError("ClipSpec: frames and gop must be >= 1, bframes >= 0")

    @property
    def filename(self) -> str:
        """Cache file name: readable parameters plus a hash of all of them."""
        doc = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        digest = hashlib.sha1(doc.encode()).hexdigest()[:10]
        return f"{self.codec}_{self.width}x{self.height}_{self.frames}f_g{self.gop}_{self.motion}_{digest}.mp4"


def default_specs(codec: Codec, files: int = 6, quick: bool = False) -> list[ClipSpec]:
    """The benchmark set for ``codec``: ``files`` clips of mixed length, GOP and motion.

    ``quick``: tiny 256x144 clips (tests and smoke runs).
    """
    base = _QUICK_SET if quick else _FULL_SET
    out = []
    for i in range(files):
        frames, gop, motion = base[i % len(base)]
        kw = {"width": 256, "height": 144, "bframes": 2} if quick else {}
        out.append(ClipSpec(codec, frames, gop, motion=motion, seed=i, **kw))  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------------------------------
# rendering


def _smooth(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Periodic smooth noise in [0, 1], ``float32[h, w]`` (bilinear upsampling of a random grid)."""
    grid = rng.random((cells_y, cells_x)).astype(np.float32)

    def axis(n: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n, dtype=np.float32) + 0.5) * cells / n - 0.5
        i0 = np.floor(pos).astype(np.int64)
        f = (pos - i0).astype(np.float32)
        return i0 % cells, (i0 + 1) % cells, f

    y0, y1, fy = axis(h, cells_y)
    x0, x1, fx = axis(w, cells_x)
    rows = grid[y0] * (1 - fy)[:, None] + grid[y1] * fy[:, None]
    return rows[:, x0] * (1 - fx)[None, :] + rows[:, x1] * fx[None, :]


def _texture(rng: np.random.Generator, h: int, w: int, detail: float) -> np.ndarray:
    """A periodic luma texture, ``uint8[h, w]``: large shapes, mid-scale structure, fine detail."""
    t = 30 + 170 * _smooth(rng, h, w, max(2, h // 360), max(2, w // 360))
    t += 60 * (_smooth(rng, h, w, max(2, h // 54), max(2, w // 54)) - 0.5)
    t += 30 * (_smooth(rng, h, w, max(2, h // 12), max(2, w // 12)) - 0.5)
    t += detail * (rng.random((h, w), dtype=np.float32) - 0.5)
    return np.clip(t, 16, 235).astype(np.uint8)


class _Sprite:
    def __init__(self, rng: np.random.Generator, w: int, h: int) -> None:
        m = min(w, h)
        self.w = int(rng.uniform(0.06, 0.3) * m) // 2 * 2 + 2
        self.h = int(rng.uniform(0.06, 0.3) * m) // 2 * 2 + 2
        self.y_patch = _texture(rng, self.h, self.w, 24.0)
        self.u = int(rng.integers(60, 196))
        self.v = int(rng.integers(60, 196))
        self.x = float(rng.uniform(0, w - self.w))
        self.y = float(rng.uniform(0, h - self.h))
        speed = rng.uniform(0.002, 0.012) * m
        ang = rng.uniform(0, 2 * math.pi)
        self.vx, self.vy = speed * math.cos(ang), speed * math.sin(ang)
        self.fw, self.fh = w, h

    def step(self) -> tuple[int, int]:
        self.x += self.vx
        self.y += self.vy
        if not 0 <= self.x <= self.fw - self.w:
            self.vx = -self.vx
            self.x = min(max(self.x, 0.0), float(self.fw - self.w))
        if not 0 <= self.y <= self.fh - self.h:
            self.vy = -self.vy
            self.y = min(max(self.y, 0.0), float(self.fh - self.h))
        return int(self.x) // 2 * 2, int(self.y) // 2 * 2


class _Renderer:
    """Frames of a :class:`ClipSpec` as ``uint8[H * 3 / 2, W]`` (yuv420p planes, one buffer)."""

    def __init__(self, spec: ClipSpec) -> None:
        h, w = spec.height, spec.width
        rng = np.random.default_rng(spec.seed + 7919 * GENERATOR_VERSION)
        self.h, self.w = h, w
        self.pan = spec.motion == "pan"
        y = _texture(rng, h, w, 20.0)
        u = (104 + 48 * _smooth(rng, h // 2, w // 2, 3, 5)).astype(np.uint8)
        v = (104 + 48 * _smooth(rng, h // 2, w // 2, 4, 3)).astype(np.uint8)
        # tiled 2x2 so that any scrolled window is one slice
        self.y, self.u, self.v = (np.tile(p, (2, 2)) if self.pan else p for p in (y, u, v))
        ang = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(1.0, 4.0) * h / 1080
        self.vel = (speed * math.sin(ang), speed * math.cos(ang))
        self.origin = (float(rng.uniform(0, h)), float(rng.uniform(0, w)))
        self.sprites = [_Sprite(rng, w, h) for _ in range(int(rng.integers(5, 11)))]
        self.noise = (rng.integers(0, 256, (h + 32, w + 32), dtype=np.uint8) & 3)  # +-3 grey levels
        self.rng = rng
        self.buf = np.empty((h * 3 // 2, w), np.uint8)
        q = h // 4
        self.Y = self.buf[:h]
        self.U = self.buf[h : h + q].reshape(h // 2, w // 2)
        self.V = self.buf[h + q :].reshape(h // 2, w // 2)

    def frame(self, t: int) -> np.ndarray:
        h, w = self.h, self.w
        if self.pan:
            oy = int(self.origin[0] + self.vel[0] * t) % h // 2 * 2
            ox = int(self.origin[1] + self.vel[1] * t) % w // 2 * 2
            self.Y[:] = self.y[oy : oy + h, ox : ox + w]
            self.U[:] = self.u[oy // 2 : oy // 2 + h // 2, ox // 2 : ox // 2 + w // 2]
            self.V[:] = self.v[oy // 2 : oy // 2 + h // 2, ox // 2 : ox // 2 + w // 2]
        else:
            self.Y[:] = self.y
            self.U[:] = self.u
            self.V[:] = self.v
        for s in self.sprites:
            x, y = s.step()
            self.Y[y : y + s.h, x : x + s.w] = s.y_patch
            self.U[y // 2 : (y + s.h) // 2, x // 2 : (x + s.w) // 2] = s.u
            self.V[y // 2 : (y + s.h) // 2, x // 2 : (x + s.w) // 2] = s.v
        ny, nx = self.rng.integers(0, 32, 2)
        np.bitwise_xor(self.Y, self.noise[ny : ny + h, nx : nx + w], out=self.Y)
        return self.buf


def write_clip(spec: ClipSpec, path: str | Path, threads: int | None = None) -> Path:
    """Render and encode ``spec`` to ``path`` (MP4), atomically. Returns ``path``."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder, preset, crf = _ENCODERS[spec.codec]
    if encoder not in av.codecs_available:
        raise RuntimeError(f"this PyAV/FFmpeg build has no {encoder} encoder")
    threads = threads or os.cpu_count() or 1
    params = f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0:bframes={spec.bframes}"
    options = {"preset": spec.preset or preset, "crf": str(spec.crf if spec.crf is not None else crf)}
    if spec.codec == "h264":
        options["x264-params"] = params
        options["threads"] = str(threads)
    else:
        options["x265-params"] = f"{params}:open-gop=0:log-level=error:pools={threads}"
    rate = Fraction(spec.fps)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    renderer = _Renderer(spec)
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream: Any = container.add_stream(encoder, rate=rate, options=options)
            stream.width, stream.height = spec.width, spec.height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.gop_size = spec.gop
            if spec.codec == "hevc":
                stream.codec_tag = "hvc1"
            for i in range(spec.frames):
                frame = av.VideoFrame.from_ndarray(renderer.frame(i), format="yuv420p")
                frame.pts = i
                frame.time_base = 1 / rate
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_job(spec: ClipSpec, path: str, threads: int) -> tuple[str, float]:
    t0 = time.monotonic()
    write_clip(spec, path, threads)
    return path, time.monotonic() - t0


def ensure_clips(specs: Sequence[ClipSpec], cache_dir: str | Path, jobs: int | None = None) -> list[Path]:
    """Paths of ``specs`` in ``cache_dir``, generating the missing ones (in parallel).

    ``jobs``: concurrent encoder processes (default: a quarter of the cores, at least 1);
    each encoder gets an equal share of the cores as threads.
    """
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / s.filename for s in specs]
    missing = [(s, p) for s, p in zip(specs, paths, strict=True) if not p.is_file()]
    if not missing:
        log.info("clips: %d cached in %s", len(paths), cache)
        return paths
    cpus = os.cpu_count() or 1
    workers = max(1, min(len(missing), jobs or max(1, cpus // 4)))
    threads = max(1, cpus // workers)
    log.info("clips: generating %d of %d (%d frames) in %s, %d at a time", len(missing), len(paths),
             sum(s.frames for s, _ in missing), cache, workers)
    t0 = time.monotonic()
    missing.sort(key=lambda sp: -sp[0].frames * sp[0].width * sp[0].height)  # longest first
    if workers == 1:
        for s, p in missing:
            _write_job(s, str(p), threads)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_write_job, s, str(p), threads) for s, p in missing]
            for fut in futures:
                name, secs = fut.result()
                log.debug("clips: %s in %.1f s", Path(name).name, secs)
    log.info("clips: generated in %.1f s", time.monotonic() - t0)
    return paths


# ---------------------------------------------------------------------------------------
# looping and describing


def loop_clip(src: str | Path, dst: str | Path, times: int) -> Path:
    """Write ``src`` repeated ``times`` times to ``dst`` (stream copy, timestamps shifted).

    Needs closed GOPs (the generated clips have them) for the joins to decode cleanly.
    """
    import av

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.tmp{dst.suffix}")
    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe, p.duration)
                   for p in inp.demux(stream) if p.size > 0 and p.pts is not None]
        if not packets:
            raise ValueError(f"{src}: no video packets")
        pts = sorted(int(p[1]) for p in packets)
        step = packets[0][4] or (pts[1] - pts[0] if len(pts) > 1 else 1)
        period = pts[-1] - pts[0] + int(step)
        try:
            with av.open(str(tmp), "w", format=dst.suffix.lstrip(".") or "mp4") as out:
                ostream = out.add_stream_from_template(stream)
                if stream.codec_tag:
                    ostream.codec_tag = stream.codec_tag  # keep hvc1/avc1 (the template does not)
                for k in range(times):
                    off = k * period
                    for data, p_pts, p_dts, key, dur in packets:
                        pkt = av.Packet(data)
                        pkt.pts = int(p_pts) + off
                        pkt.dts = (int(p_dts) if p_dts is not None else int(p_pts)) + off
                        pkt.is_keyframe = bool(key)
                        if dur:
                            pkt.duration = dur
                        if stream.time_base is not None:
                            pkt.time_base = stream.time_base
                        pkt.stream = ostream
                        out.mux(pkt)
            tmp.replace(dst)
        finally:
            tmp.unlink(missing_ok=True)
    return dst


def build_workload(clips: Sequence[Path], times: int, work_dir: str | Path, count: int | None = None) -> list[Path]:
    """Each clip looped ``times`` times in ``work_dir`` (reused when present; ``times=1``: the clip),
    cycled to ``count`` files (extra ones are hard links, distinct files to the pipeline).

    ``count`` lets every decode session have files of its own. Looped files of the same
    clips with another ``times`` are removed (they are large).
    """
    work = Path(work_dir).expanduser()
    looped: list[Path] = []
    t0 = time.monotonic()
    for c in clips:
        if times <= 1:
            looped.append(c)
            continue
        work.mkdir(parents=True, exist_ok=True)
        dst = work / f"{c.stem}_x{times}{c.suffix}"
        for old in work.glob(f"{c.stem}_x*{c.suffix}"):
            if old != dst and not old.name.startswith(f"{dst.stem}_copy"):
                old.unlink(missing_ok=True)
        if not dst.is_file():
            loop_clip(c, dst, times)
        looped.append(dst)
    out = list(looped)
    for j in range(len(looped), count or 0):
        src = looped[j % len(looped)]
        work.mkdir(parents=True, exist_ok=True)
        link = work / f"{src.stem}_copy{j // len(looped)}{src.suffix}"
        if not (link.is_file() and link.stat().st_size == src.stat().st_size):
            link.unlink(missing_ok=True)
            try:
                os.link(src, link)
            except OSError:  # another file system, or no hard links: a copy
                shutil.copyfile(src, link)
        out.append(link)
    if times > 1 or len(out) > len(looped):
        log.info("workload: %d files (%d clips looped x%d) in %s (%.1f s)", len(out), len(clips), times, work,
                 time.monotonic() - t0)
    return out


@dataclass(frozen=True)
class ClipInfo:
    """What a benchmark input is: for the report."""

    path: str
    codec: str
    width: int
    height: int
    frames: int
    fps: float
    keyframes: int
    gop: int  # longest keyframe interval in frames (the whole clip when it has one keyframe)
    reordered: bool  # decode order differs from presentation order (B-frames)
    size_bytes: int

    @property
    def bitrate_kbps(self) -> float:
        secs = self.frames / self.fps if self.fps else 0.0
        return self.size_bytes * 8 / 1000 / secs if secs else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "bitrate_kbps": round(self.bitrate_kbps, 1)}


def describe_clip(path: str | Path) -> ClipInfo:
    """Probe ``path`` (frames as the pipeline counts them) and its GOP/B-frame structure."""
    import av

    from streams.sources.probe import probe_video

    path = Path(path)
    info = probe_video(path)
    key_pts: list[int] = []
    reordered, last_pts = False, None
    with av.open(str(path)) as c:
        for p in c.demux(c.streams.video[0]):
            if p.size == 0 or p.pts is None:
                continue
            if p.is_keyframe:
                key_pts.append(int(p.pts))
            if last_pts is not None and p.pts < last_pts:
                reordered = True
            last_pts = p.pts
    # keyframe positions in presentation order -> the longest interval between them
    index = {pts: i for i, pts in enumerate(info.pts)}
    marks = [*sorted(index[k] for k in key_pts if k in index), info.num_frames]
    gop = max((b - a for a, b in itertools.pairwise(marks)), default=info.num_frames)
    return ClipInfo(str(path), info.codec, info.width, info.height, info.num_frames, info.fps, len(key_pts), gop,
                    reordered, path.stat().st_size)


def user_clips(sources: Sequence[str]) -> dict[str, list[Path]]:
    """User files (files, globs, folders, ``@list.txt``) grouped by codec; unreadable ones skipped."""
    from streams.config import SourceEntry
    from streams.errors import SourceError
    from streams.sources.files import expand_sources
    from streams.sources.probe import probe_video

    entries = [SourceEntry(list=s[1:]) if s.startswith("@") else SourceEntry(path=s) for s in sources]
    files, problems = expand_sources(entries)
    for e in problems:
        log.warning("skipping %s", e)
    out: dict[str, list[Path]] = {}
    for f in files:
        try:
            info = probe_video(f.path)
        except SourceError as e:
            log.warning("skipping %s", e)
            continue
        out.setdefault(info.codec, []).append(f.path)
    return out
