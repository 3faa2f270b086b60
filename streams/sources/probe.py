"""Probing video files with PyAV before decoding: codec, size, frame count and pts.

DALI cannot skip one bad sample inside a batch and a decode error invalidates its
pipeline, so every file is opened and demuxed here first. A missing, empty, non-video
or unreadable file fails here with a :class:`SourceError` naming the reason; so does a
file that trips PyAV in a way nobody foresaw (a damaged file must never stop the job: the
traceback is logged for a bug report). Metadata that is not UTF-8 is read with
replacement characters: a Latin-1 title does not make a video unreadable.

The file's size and modification time at the probe are kept, so that the job can tell a
file that changed while it was read (one still being written) from a complete one.

The demux pass (packets only, no decoding: fast) also yields the presentation-order
pts of every frame, which DALI does not report in stream units (its timestamps are in
seconds and relative to the first frame).

Usage::

    info = probe_video(Path("a.mp4"))
    info.codec, info.width, info.height, info.num_frames, info.pts[:3]
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from streams.errors import SourceError
from streams.sources.frame_size import SizeWatch

log = logging.getLogger(__name__)

#: Codecs DALI decodes on the CPU; the GPU (NVDEC) also handles h264, hevc, av1, mpeg4.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = frozenset({"h264", "hevc", "av1", "mpeg4", "vp8", "vp9", "mjpeg"})


@dataclass(frozen=True)
class VideoInfo:
    """What the probe learnt about a file's first video stream."""

    path: Path
    codec: str
    width: int
    height: int
    time_base: tuple[int, int]
    fps: float
    pts: tuple[int, ...]  # presentation order, one per frame
    start_pts: int
    keyframes: tuple[int, ...] = ()  # frame indices (presentation order) of keyframes
    # what the container's header announces: its frame count, or its duration x fps
    # (rounded); None when it says neither
    declared_frames: int | None = None
    declared_exact: bool = False  # declared_frames is the header's own frame count
    size: int = -1  # bytes, when probed (-1: unknown)
    mtime_ns: int = -1  # modification time when probed (-1: unknown)
    # (frame index, width, height) of the first keyframe announcing another frame size than
    # the stream's (streams.sources.frame_size); frames from there on are not decoded
    resized: tuple[int, int, int] | None = None

    @property
    def num_frames(self) -> int:
        """Frames the file holds (one per packet with a pts, demuxed to the end)."""
        return len(self.pts)

    @property
    def expected_frames(self) -> int:
        """Frames the file should decode: its header's count when the file holds fewer
        (it ends early: truncated, or damaged), else :attr:`num_frames`.

        A count read from the header must be met exactly; one estimated from the
        header's duration is allowed two frames of rounding.
        """
        declared = self.declared_frames
        if declared is None:
            return self.num_frames
        slack = 0 if self.declared_exact else 2
        return declared if declared > self.num_frames + slack else self.num_frames

    @property
    def duration_s(self) -> float:
        if not self.pts:
            return 0.0
        return float((self.pts[-1] - self.pts[0]) * Fraction(*self.time_base))


def probe_video(path: Path) -> VideoInfo:
    """Open ``path`` with PyAV, demux every packet of its first video stream.

    Raises:
        SourceError: missing, empty, not a video, unreadable or holding no frames, or
            PyAV failed on it unexpectedly (logged with the traceback).
    """
    name = str(path)
    before = _stat(path)
    try:
        return _probe(path, name)
    except SourceError as e:
        after = _stat(path)
        if before is None or after is None or _identity(before) == _identity(after):
            raise
        raise SourceError(name, f"{e.reason}; the file changed while it was probed: still being written?") from e
    except Exception as e:  # PyAV tripped on a damaged file in a way not foreseen: isolate the file
        log.warning("%s: unexpected probe failure", name, exc_info=True)
        raise SourceError(name, f"cannot be probed ({type(e).__name__}: {str(e).strip()[:200]})") from e


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _probe(path: Path, name: str) -> VideoInfo:
    import av  # local: keeps the data layer importable without PyAV's load cost

    if not path.exists():
        raise SourceError(name, "no such file")
    if not path.is_file():
        raise SourceError(name, "not a regular file")
    st = path.stat()
    if st.st_size == 0:
        raise SourceError(name, "empty file (0 bytes)")
    try:
        container = av.open(name, metadata_errors="replace")
    except av.error.InvalidDataError as e:
        raise SourceError(name, f"not a video file or corrupt header ({e.strerror or e})") from e
    except (av.error.FFmpegError, OSError) as e:
        raise SourceError(name, f"cannot open ({getattr(e, 'strerror', None) or e})") from e
    with container:
        if not container.streams.video:
            raise SourceError(name, "not a video file (no video stream)")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None:
            raise SourceError(name, "video stream of an unknown codec (damaged header?)")
        if not ctx.width or not ctx.height:
            raise SourceError(name, "video stream has no frame size (corrupt header?)")
        tb = stream.time_base or Fraction(1, 90000)
        pts: list[int] = []
        key_pts: list[int] = []
        bad_packets = 0
        watch = SizeWatch(ctx.name, ctx.extradata, int(ctx.width), int(ctx.height))
        resized: tuple[int, int, int] | None = None  # (pts, width, height) until the pts are sorted
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    bad_packets += 1
                    continue
                pts.append(int(packet.pts))
                if packet.is_keyframe:
                    key_pts.append(int(packet.pts))
                    if resized is None and watch.watches and (size := watch.keyframe(packet)) is not None:
                        resized = (int(packet.pts), *size)
        except av.error.FFmpegError as e:
            raise SourceError(name, f"demuxing failed after {len(pts)} packets ({e.strerror or e})") from e
        if not pts:
            raise SourceError(name, "no video frames")
        if bad_packets:
            log.warning("%s: %d packets without pts", name, bad_packets)
        pts.sort()
        if resized is not None:
            at = bisect.bisect_left(pts, resized[0])
            log.warning("%s: the frame size changes mid-stream, from %dx%d to %dx%d at frame %d", name,
                        ctx.width, ctx.height, resized[1], resized[2], at)
            resized = (at, resized[1], resized[2])
        index = {p: i for i, p in enumerate(pts)}
        keyframes = tuple(sorted(index[p] for p in key_pts))
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        declared, exact = _declared_frames(stream, container, tb, fps)
        return VideoInfo(
            path=path,
            codec=ctx.name,
            width=int(ctx.width),
            height=int(ctx.height),
            time_base=(tb.numerator, tb.denominator),
            fps=fps,
            pts=tuple(pts),
            start_pts=pts[0],
            keyframes=keyframes,
            declared_frames=declared,
            declared_exact=exact,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            resized=resized,
        )


def _declared_frames(stream: Any, container: Any, tb: Fraction, fps: float) -> tuple[int | None, bool]:
    """The frame count a container's header announces: (count, whether it is the header's
    own count rather than an estimate from its duration)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames), True
    if fps <= 0:
        return None, False
    if stream.duration:
        return round(float(stream.duration * tb) * fps), False
    if container.duration:  # microseconds
        return round(container.duration / 1_000_000 * fps), False
    return None, False


def _probe_or_reason(path: Path) -> VideoInfo | tuple[str, str]:
    """:func:`probe_video` for a worker process: errors come back as ``(source, reason)``."""
    try:
        return probe_video(path)
    except SourceError as e:
        return (e.source, e.reason)


def probe_many(paths: list[Path], processes: int = 8, parallel_bytes: int = 512 << 20) -> list[VideoInfo | SourceError]:
    """Probe ``paths``; each result is the :class:`VideoInfo` or the :class:`SourceError`.

    Probing demuxes every packet, so its cost grows with the size of the files, and it runs
    mostly under the GIL, so threads would not share it out. When four or more files hold
    at least ``parallel_bytes`` together (default 512 MiB: below that, starting workers
    costs more than it saves; see benchmarks/RESULTS.md), the probes run in up to
    ``processes`` worker processes started as ``python -m streams.sources.probe``: they
    import PyAV and this module only, not the parent's ``__main__``, which
    ``multiprocessing``'s spawn would re-import (torch and DALI under ``fovea run`` or the
    benchmark, whose import alone would cost more than the probing it takes over). A worker
    that cannot start or fails is logged and its files are probed here.
    """
    results: list[VideoInfo | tuple[str, str]]
    n = min(processes, len(paths), os.cpu_count() or 1)
    if n >= 2 and len(paths) >= 4 and _total_bytes(paths) >= parallel_bytes:
        results = _probe_in_workers(paths, n)
    else:
        results = [_probe_or_reason(p) for p in paths]
    return [SourceError(*r) if isinstance(r, tuple) else r for r in results]


class BackgroundProbe:
    """:func:`probe_many` in a daemon thread, started early so probing overlaps other setup.

    A job knows its files before it loads its model; probing them meanwhile overlaps the
    probe with model loading, so the decode side does not wait for it at its start. A job
    that fails to set up still waits for it (:meth:`join`) before it exits: a process that
    exits while this thread is inside FFmpeg can abort instead of exiting cleanly.

    Usage::

        probe = BackgroundProbe(paths, processes=8)   # starts now
        ...                                           # load the model
        infos = probe.result()                        # waits if still running
    """

    def __init__(self, paths: list[Path], processes: int = 8) -> None:
        self.paths = list(paths)
        self.seconds = 0.0
        self._results: list[VideoInfo | SourceError] | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(processes,), name="fovea-probe", daemon=True)
        self._thread.start()

    def _run(self, processes: int) -> None:
        t = time.monotonic()
        try:
            self._results = probe_many(self.paths, processes=processes)
        except BaseException as e:  # a bug: raised again where the result is asked for
            self._error = e
        finally:
            self.seconds = time.monotonic() - t
            self._done.set()

    def join(self) -> None:
        """Wait for the probe to finish (its results, or its error, stay for :meth:`result`)."""
        self._done.wait()

    def result(self) -> list[VideoInfo | SourceError]:
        """One result per path, in order (waits for the probe to finish)."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._results is not None
        return self._results


def _probe_in_workers(paths: list[Path], n: int) -> list[VideoInfo | tuple[str, str]]:
    """``n`` ``python -m streams.sources.probe`` processes, each given every ``n``-th path."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [paths[k::n] for k in range(n)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])  # importable with or without installing
    env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH", "")) if x)

    def run(chunk: list[Path]) -> list[VideoInfo | tuple[str, str]]:
        try:
            done = subprocess.run([sys.executable, "-m", "streams.sources.probe", *map(str, chunk)], env=env,
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"exit code {done.returncode}: {done.stderr.strip()[-300:]}")
            lines = done.stdout.splitlines()
            if len(lines) != len(chunk):
                raise RuntimeError(f"{len(lines)} results for {len(chunk)} files")
            return [_from_json(json.loads(line)) for line in lines]
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
            log.warning("probing %d files in this process: a probe worker failed (%s)", len(chunk), e)
            return [_probe_or_reason(p) for p in chunk]

    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="fovea-probe") as pool:
        parts = list(pool.map(run, chunks))
    results: list[VideoInfo | tuple[str, str]] = [("", "")] * len(paths)
    for k, part in enumerate(parts):
        results[k::n] = part
    return results


def _to_json(r: VideoInfo | tuple[str, str]) -> dict[str, Any]:
    if isinstance(r, tuple):
        return {"error": list(r)}
    return {**dataclasses.asdict(r), "path": str(r.path)}


def _from_json(d: dict[str, Any]) -> VideoInfo | tuple[str, str]:
    if "error" in d:
        source, reason = d["error"]
        return (str(source), str(reason))
    resized = d.get("resized")
    return VideoInfo(**{**d, "path": Path(d["path"]), "time_base": tuple(d["time_base"]), "pts": tuple(d["pts"]),
                        "keyframes": tuple(d["keyframes"]), "resized": None if resized is None else tuple(resized)})


def main(argv: list[str] | None = None) -> int:
    """``python -m streams.sources.probe PATH...``: one JSON line per path (the probe workers' entry)."""
    for a in sys.argv[1:] if argv is None else argv:
        sys.stdout.write(json.dumps(_to_json(_probe_or_reason(Path(a)))) + "\n")
    return 0


def _total_bytes(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


if __name__ == "__main__":
    raise SystemExit(main())
