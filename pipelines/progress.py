"""Progress display and final summary of a batch job.

On a terminal the progress is one line rewritten in place on stderr; otherwise (CI,
files) a log line every ``interval`` seconds.

Usage::

    progress = Progress(total_files=10, total_frames=9000)
    progress.frames_done(16); progress.file_finished(); progress.render()
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

log = logging.getLogger("fovea.progress")


@dataclass
class FileFailure:
    """A file that could not be (fully) processed, with the reason."""

    name: str
    reason: str
    frames: int = 0


@dataclass
class JobSummary:
    """What a job did. ``ok`` is False when any file failed."""

    files_total: int = 0
    files_done: int = 0
    failures: list[FileFailure] = field(default_factory=list)
    frames: int = 0
    detections: int = 0
    seconds: float = 0.0
    decoders: dict[str, int] = field(default_factory=dict)
    engine: str = ""
    device: str = ""
    outputs: list[str] = field(default_factory=list)
    # per decode session: (first batch, finished) in seconds after decoding started, frames
    sessions: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_text(self) -> str:
        lines = [
            f"files: {self.files_done} done, {len(self.failures)} failed, {self.files_total} total",
            f"frames: {self.frames}  detections: {self.detections}  "
            f"time: {self.seconds:.1f} s  throughput: {self.fps:.1f} frames/s",
            f"engine: {self.engine} on {self.device}  decoders: "
            + ", ".join(f"{k}×{v}" for k, v in sorted(self.decoders.items())),
        ]
        lines += [f"output: {o}" for o in self.outputs]
        for f in self.failures:
            extra = f" (after {f.frames} frames)" if f.frames else ""
            lines.append(f"FAILED {f.name}: {f.reason}{extra}")
        return "\n".join(lines)


class Progress:
    """Frames/s, files done of total and ETA; see the module docstring."""

    def __init__(self, total_files: int, stream: TextIO | None = None, interval: float = 0.5,
                 enabled: bool = True) -> None:
        self.total_files = total_files
        self.total_frames = 0  # grows as files are probed
        self.files_finished = 0
        self.frames = 0
        self.enabled = enabled
        self._stream = stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = interval if self._tty else max(interval, 5.0)
        self._start = time.monotonic()
        self._last = 0.0

    def add_expected(self, frames: int) -> None:
        self.total_frames += frames

    def frames_done(self, n: int) -> None:
        self.frames += n
        self.render()

    def file_finished(self) -> None:
        self.files_finished += 1
        self.render()

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        fps = self.frames / elapsed if elapsed > 0 else 0.0
        text = f"{self.files_finished}/{self.total_files} files  {self.frames} frames  {fps:.1f} fps"
        remaining = self.total_frames - self.frames
        if fps > 0 and self.total_frames and remaining > 0:
            text += f"  ETA {_hms(remaining / fps)}"
        return text

    def render(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        if self._tty:
            self._stream.write("\r\033[K" + self.line())
            self._stream.flush()
        else:
            log.info("progress: %s", self.line())

    def close(self) -> None:
        if self.enabled and self._tty:
            self._stream.write("\r\033[K")
            self._stream.flush()


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
