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
from typing import Any, Literal, TextIO

from streams.sinks.health import DeliveryHealth

log = logging.getLogger("fovea.progress")


@dataclass
class FileFailure:
    """A file that could not be (fully) processed, with the reason.

    ``kind``: ``failed`` (not processed, or stopped by an error) or ``incomplete`` (it
    decoded fewer frames than its header announces; those frames were processed).
    ``frames``: frames decoded; ``expected``: the header's count (0 when unknown).
    """

    name: str
    reason: str
    frames: int = 0
    kind: Literal["failed", "incomplete"] = "failed"
    expected: int = 0


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
    no_input: bool = False  # no source gave a video file: nothing ran, no output was opened
    reorder_peak: int = 0  # most frames the per-source reorder buffer held at once
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-source stages' reports, by name
    sinks: list[DeliveryHealth] = field(default_factory=list)  # the network sinks' health once they closed

    @property
    def ok(self) -> bool:
        """True when every file was processed completely (and there was input at all), and
        every network sink delivered everything."""
        return not self.failures and not self.no_input and not any(h.undelivered for h in self.sinks)

    @property
    def incomplete(self) -> list[FileFailure]:
        return [f for f in self.failures if f.kind == "incomplete"]

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_text(self) -> str:
        incomplete = len(self.incomplete)
        lines = [
            f"files: {self.files_done} done, {incomplete} incomplete, {len(self.failures) - incomplete} failed, "
            f"{self.files_total} total",
            f"frames: {self.frames}  detections: {self.detections}  "
            f"time: {self.seconds:.1f} s  throughput: {self.fps:.1f} frames/s",
            f"engine: {self.engine} on {self.device}  decoders: "
            + ", ".join(f"{k}×{v}" for k, v in sorted(self.decoders.items())),
        ]
        if self.no_input:
            lines.append("no input: nothing was processed and no output was written")
        else:
            lines += [f"output: {o}" for o in self.outputs]
        lines += [f"sink {h.describe()}" for h in self.sinks]
        for f in self.failures:
            if f.kind == "incomplete":
                lines.append(f"INCOMPLETE {f.name}: {f.reason}")
            else:
                extra = (f" (after {f.frames} frames{f' of {f.expected}' if f.expected else ''})"
                         if f.frames or f.expected else "")
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

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """The last line, with the final counts (the same the summary reports), on its own line."""
        if not self.enabled:
            return
        if self._tty:
            self._stream.write("\r\033[K" + self.line() + "\n")
            self._stream.flush()
        else:
            log.info("progress: %s (final)", self.line())


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
