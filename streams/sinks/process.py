"""A sink run in a process of its own: formatting off the job's GIL.

Formatting a frame's JSON line is pure Python, paid for every frame and every detection.
At the frame rates of a GPU job, doing it in the job's process holds the GIL for a large
share of the time, and every thread that feeds the GPU (decode sessions, inference
threads) waits for it (the figures are in benchmarks/RESULTS.md). :class:`ProcessSink`
hands each batch as one compact message (the metadata as tuples, the detections of the
batch concatenated into three arrays: far cheaper to build than the formatted lines) to a
process of its own (``python -m streams.sinks.process``), where the plugin itself, built
from the same config with ``writer: inline``, writes it. Order is kept; each batch is
still flushed as whole lines, so a crash of either process leaves a valid file.

Errors: a child that cannot open its output fails :meth:`ProcessSink.__enter__` with the
child's :class:`~streams.errors.SinkError` message; a write error in the child, or the
child's death, raises :class:`~streams.errors.SinkError` at the next :meth:`write` or at
exit. Nothing is retried: a file sink that cannot write cannot go on either. The process
ignores Ctrl-C and SIGTERM (they reach the whole process group): it ends when the job closes
the sink or its process is gone, after writing every batch it received.

Health and summaries: a network sink in the process reports its
:class:`~streams.sinks.health.DeliveryHealth` back over the reply pipe (when it changed, and
once more after it closed), so :meth:`ProcessSink.health` reads the same as the sink's own;
:meth:`ProcessSink.write_summary` passes the job's per-source summaries on, after the batches
sent before them.

Usage (what the ``jsonl`` and ``csv`` plugins do with ``writer: process``, the default)::

    parsed = SINKS.parse({"type": "jsonl", "path": "out.jsonl"}, "sinks[0]")
    with ProcessSink(parsed) as sink:
        sink.write(results)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.detections import Detections
from streams.errors import SinkError
from streams.events import Event
from streams.frames import FrameMeta, FrameResult
from streams.registry import PluginConfig
from streams.sinks.health import DeliveryHealth, HealthReporting
from streams.sinks.summaries import SourceSummary, SummaryAware

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 60.0  # interpreter start + imports
_CLOSE_TIMEOUT_S = 600.0  # the child writes what it still holds (a slow disk, a long queue)
_QUEUE_BATCHES = 64  # batches the child holds before the job waits for it
HEALTH_INTERVAL_S = 0.5  # how often the sink process looks whether its sink's health changed
_SUMMARY = b"S"  # the first byte of a summaries message (a batch's is pickle's 0x80)


def encode_results(results: Sequence[FrameResult]) -> bytes:
    """``results`` as one message: metadata tuples and the batch's detections concatenated.

    Everything a sink may write travels: boxes, scores, classes and class names; track ids
    (concatenated, ``None`` when no frame has any); attributes, masks, keypoints and events
    (only for the frames that have some). :func:`decode_results` gives equal results back.
    """
    metas = [(f.source_id, f.uri, f.frame_index, f.pts, f.time_base, f.width, f.height, f.arrival_time)
             for f in (r.frame for r in results)]
    dets = [r.detections for r in results]
    counts = np.fromiter((d.xyxy.shape[0] for d in dets), np.int64, len(dets))
    if len(dets):
        xyxy = np.concatenate([d.xyxy for d in dets])
        conf = np.concatenate([d.confidence for d in dets])
        cls = np.concatenate([d.class_id for d in dets])
    else:
        xyxy, conf, cls = np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    names = [d.class_names for d in dets]  # pickle stores a tuple shared by every frame once
    tracked = [d.track_id is not None for d in dets]
    tracks = None
    if any(tracked):  # the ids, and which frames have them (None: all)
        tids = np.concatenate([np.full(len(d), -1, np.int64) if d.track_id is None else d.track_id for d in dets])
        tracks = (tids, None if all(tracked) else tracked)
    attrs = [(i, d.attributes) for i, d in enumerate(dets) if d.attributes is not None] or None
    # a segmentation or pose model's masks and keypoints (rare: only the frames that have them)
    shapes = [(i, d.masks, d.keypoints) for i, d in enumerate(dets)
              if d.masks is not None or d.keypoints is not None] or None
    events = [(i, [(e.kind, e.source_id, e.frame_index, e.pts, e.time_base, e.track_id, e.class_name, dict(e.data))
                   for e in r.events]) for i, r in enumerate(results) if r.events] or None
    return pickle.dumps((metas, counts, xyxy, conf, cls, names, tracks, attrs, events, shapes),
                        protocol=pickle.HIGHEST_PROTOCOL)


def decode_results(data: bytes) -> list[FrameResult]:
    """The inverse of :func:`encode_results`."""
    metas, counts, xyxy, conf, cls, names, tracks, attrs, events, shapes = pickle.loads(data)
    frame_shapes = {i: (m, k) for i, m, k in shapes or ()}
    ends = np.cumsum(counts).tolist()
    tids: npt.NDArray[np.int64] | None = None
    tracked: list[bool] | None = None
    if tracks is not None:
        tids, tracked = tracks
    frame_attrs = dict(attrs or ())
    frame_events = {i: tuple(Event(*e) for e in evs) for i, evs in events or ()}
    out: list[FrameResult] = []
    start = 0
    for i, (m, end, n) in enumerate(zip(metas, ends, names, strict=True)):
        ids = None if tids is None or (tracked is not None and not tracked[i]) else tids[start:end]
        masks, keypoints = frame_shapes.get(i, (None, None))
        d = Detections(xyxy[start:end], conf[start:end], cls[start:end], n, ids, frame_attrs.get(i), masks,
                       keypoints)
        out.append(FrameResult(FrameMeta(*m), d, frame_events.get(i, ())))
        start = end
    return out


class ProcessSink:
    """Runs the sink of ``plugin`` (a config with a ``writer`` field) in a process of its own.

    The process is ``python -m streams.sinks.process``, not a ``multiprocessing`` child: it
    does not re-import the caller's main module, so a script without a ``__main__`` guard
    works too.

    A thread reads the process's replies as they come: its errors and, when the sink it runs
    reports health (a network sink), that health whenever it changed (looked at every
    :data:`HEALTH_INTERVAL_S`) and once more after the sink closed. :meth:`health` returns the
    last one (``None`` for a file sink). :meth:`write_summary` hands the job's summaries to a
    sink that takes them (:class:`~streams.sinks.summaries.SummaryAware`), in order with the
    batches; for another it does nothing.
    """

    def __init__(self, plugin: PluginConfig) -> None:
        if not any(f.name == "writer" for f in dataclasses.fields(plugin.config)):
            raise TypeError(f"sink {plugin.type!r}: its config has no 'writer' field")
        self.plugin = PluginConfig(plugin.type, dataclasses.replace(plugin.config, writer="inline"))
        self.name = f"{plugin.type} sink {getattr(plugin.config, 'path', '')}".strip()
        self._process: subprocess.Popen[bytes] | None = None
        self._send: Connection | None = None
        self._reply: Connection | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()  # the process answered "ready", or ended
        self._ended = threading.Event()  # the process answered "closed" or "error", or is gone
        self._error: str | None = None  # the process's error (or its death)
        self._raised = False  # that error was raised by a write: not logged again at exit
        self._written: int | None = None  # frames the process wrote ("closed")
        self._takes: dict[str, bool] = {}  # what the process's sink does: "health", "summary"
        self._health: DeliveryHealth | None = None
        self.frames = 0

    def health(self) -> DeliveryHealth | None:
        """The process's sink's last reported health; ``None`` when it reports none."""
        return self._health

    def __enter__(self) -> ProcessSink:
        data_r, data_w = os.pipe()
        reply_r, reply_w = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "streams.sinks.process", str(data_r), str(reply_w),
                 str(logging.getLogger().getEffectiveLevel())],
                pass_fds=(data_r, reply_w), stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})  # imports as here
        except OSError as e:
            for fd in (data_r, data_w, reply_r, reply_w):
                os.close(fd)
            raise SinkError(f"{self.name}: cannot start its process: {e}") from e
        # only the child holds these ends now: its death is EOF here, not a wait forever
        os.close(data_r)
        os.close(reply_w)
        self._send, self._reply = Connection(data_w, readable=False), Connection(reply_r, writable=False)
        self._reader = threading.Thread(target=self._read_replies, args=(self._reply,), name="sink-replies",
                                        daemon=True)
        self._reader.start()
        with contextlib.suppress(OSError):  # the process is gone: the reply thread says why
            self._send.send_bytes(pickle.dumps(self.plugin))
        if not self._ready.wait(_START_TIMEOUT_S):
            self._stop()
            raise SinkError(f"{self.name}: its process did not start within {_START_TIMEOUT_S:.0f} s")
        if self._error is not None:
            self._stop()
            raise SinkError(self._error)
        return self

    def write(self, results: Sequence[FrameResult]) -> None:
        if results or self._send is None:  # an empty batch sends nothing (outside 'with': the error)
            self._send_message(encode_results(results), "write()")
            self.frames += len(results)

    def write_summary(self, summaries: Sequence[SourceSummary]) -> None:
        """Hand ``summaries`` to the process's sink, if it takes them (class docstring)."""
        if self._send is None or self._takes.get("summary"):  # outside 'with': the error
            self._send_message(_SUMMARY + pickle.dumps(list(summaries), protocol=pickle.HIGHEST_PROTOCOL),
                               "write_summary()")

    def _send_message(self, data: bytes, what: str) -> None:
        if self._send is None:
            raise SinkError(f"{self.name}: {what} called outside 'with'")
        self._check()
        try:
            self._send.send_bytes(data)
        except OSError:
            self._ended.wait(5)  # the reply thread learns why: the process's own error, or its exit
            self._check()
            raise SinkError(f"{self.name}: its process exited (code {self._exitcode()})") from None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._send is None:
            return
        error: str | None = None
        try:
            with contextlib.suppress(OSError):  # the process is gone: the reply thread says why
                self._send.send_bytes(b"")  # end: the child writes what it holds, closes, answers
            self._send.close()
            if not self._ended.wait(_CLOSE_TIMEOUT_S):
                error = f"{self.name}: its process did not finish within {_CLOSE_TIMEOUT_S:.0f} s"
            elif self._error is not None:
                error = None if self._raised else self._error
            elif self._written != self.frames:
                error = f"{self.name}: {self.frames} frames sent, {self._written} written"
        finally:
            self._stop()
        if error is not None:
            if exc_type is None:
                raise SinkError(error)
            log.error("%s", error)  # the job already fails with its own exception

    def _check(self) -> None:
        """Raise the process's error, if it reported one (or died)."""
        if self._error is not None:
            self._raised = True
            raise SinkError(self._error)

    def _read_replies(self, reply: Connection) -> None:
        """The reply thread: the process's answers as they come, up to its last."""
        while True:
            try:
                kind, detail = pickle.loads(reply.recv_bytes())
            except (EOFError, OSError):
                kind, detail = "gone", None
            if kind == "health":
                self._health = detail
                continue
            if kind == "ready":
                self._takes = dict(detail)
                self._ready.set()
                continue
            if kind == "closed":
                self._written = int(detail)
            elif kind == "error":
                self._error = str(detail)
            else:  # gone without a last answer
                self._error = f"{self.name}: its process exited (code {self._exitcode()})"
            self._ended.set()
            self._ready.set()
            return

    def _exitcode(self) -> int | None:
        assert self._process is not None
        try:
            return self._process.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def _stop(self) -> None:
        """Close the data pipe: the child ends on its EOF (killed if it does not within 5 s),
        which ends the reply thread; then close the reply pipe."""
        if self._send is not None and not self._send.closed:
            self._send.close()
        self._send = None
        if self._process is not None:
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._reader is not None:
            self._reader.join(5)
        if self._reply is not None and not self._reply.closed:
            self._reply.close()
        self._reply = None


class _HealthReporter:
    """In the sink process: answers the sink's health when it changed (looked at every
    :data:`HEALTH_INTERVAL_S`), and once more, its last, at :meth:`stop` (after the sink
    closed). Nothing for a sink that reports none."""

    def __init__(self, answer: Callable[[str, Any], None]) -> None:
        self._answer = answer
        self._sink: HealthReporting | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: DeliveryHealth | None = None

    def start(self, sink: object) -> None:
        if isinstance(sink, HealthReporting):
            self._sink = sink
            self._thread = threading.Thread(target=self._run, name="sink-health", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEALTH_INTERVAL_S):
            self._report()

    def _report(self) -> None:
        assert self._sink is not None
        h = self._sink.health()
        if h != self._last:
            self._last = h
            self._answer("health", h)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._report()


def _child_main(data_fd: int, reply_fd: int) -> int:
    """The sink process: build the inline sink, write each batch (and the summaries) as they come."""
    recv, reply = Connection(data_fd, writable=False), Connection(reply_fd, readable=False)
    replying = threading.Lock()  # the main thread and the health thread both answer

    def answer(kind: str, detail: Any) -> None:
        with replying, contextlib.suppress(OSError):  # the job's process is gone
            reply.send_bytes(pickle.dumps((kind, detail)))

    from streams.sinks import SINKS

    batches: queue.Queue[bytes | None] = queue.Queue(_QUEUE_BATCHES)

    def receive() -> None:  # reads the pipe while the main thread formats: the job rarely waits
        try:
            while data := recv.recv_bytes():
                batches.put(data)
        except (EOFError, OSError):
            pass  # the job's process is gone (or died mid-message): write what arrived whole
        batches.put(None)

    try:
        plugin = pickle.loads(recv.recv_bytes())
    except (EOFError, OSError):
        return 1  # the job's process is gone before sending the config
    written = 0
    health = _HealthReporter(answer)
    try:
        with SINKS.create(plugin) as sink:
            health.start(sink)
            answer("ready", {"health": isinstance(sink, HealthReporting), "summary": isinstance(sink, SummaryAware)})
            threading.Thread(target=receive, name="sink-receive", daemon=True).start()
            while (data := batches.get()) is not None:
                if data[:1] == _SUMMARY and isinstance(sink, SummaryAware):
                    sink.write_summary(pickle.loads(data[1:]))
                    continue
                results = decode_results(data)
                sink.write(results)
                written += len(results)
    except SinkError as e:
        health.stop()
        answer("error", str(e))
        return 1
    except BaseException as e:  # a bug: say what it was (its traceback goes to stderr)
        health.stop()
        answer("error", f"sink process failed: {type(e).__name__}: {e}")
        raise
    health.stop()
    answer("closed", written)
    return 0


if __name__ == "__main__":
    # Ctrl-C and SIGTERM reach the whole process group: the job's process handles them and
    # closes this sink, which ends this process once it has written everything it was sent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=int(sys.argv[3]),
                        format="%(asctime)s %(levelname)s %(name)s [sink process] %(message)s")
    sys.exit(_child_main(int(sys.argv[1]), int(sys.argv[2])))
