"""The ``live:`` section of a job config: batching, watchdog, backoff, HTTP, decode.

Validated with :func:`streams.schema.from_dict`, so unknown keys and bad values raise
:class:`streams.errors.ConfigError` naming the key path (``live.batch.policy: ...``).

YAML (every key optional; the defaults are shown)::

    live:
      decode: auto              # auto | cpu (PyAV, RGB frames) | gpu (an NVDEC session per stream)
                                # | gop (GOP buffers decoded by DALI: kept for comparison, slow)
      log_interval_s: 30        # periodic one-line summary of all streams; 0 = off
      decode_threads: 1         # FFmpeg threads per stream (CPU decode)
      max_gop_frames: 300       # GOP buffers longer than this are cut (gop decode)
      max_source_size: [1920, 1080]   # GPU decode with a cascade: the largest camera frame (width,
                                # height; either orientation); sizes its buffers, larger streams are refused
      inference_threads: 2      # threads running batches through the engine (GPU: each its own
                                # CUDA stream); formerly ``workers`` (still read, with a warning)
      gil_switch_interval_ms: 0.1   # Python thread switch interval during GPU runs
      malloc_arenas: 2          # glibc malloc arenas of the job's processes (0 = glibc's default,
                                # 8 per core: RSS creeps up while streams come and go)
      ffmpeg_options: {}        # extra FFmpeg demuxer options, e.g. {buffer_size: "1048576"}
      http: {enabled: true, host: 127.0.0.1, port: 9108}   # port 0 = any free port
        # token_env: NAME | token_file: /abs/path  bearer token (required off loopback)
        # max_body_bytes: 65536                     larger request bodies get 413
        # allow: {schemes: [rtsp, rtsps], hosts: ["*"], file_dirs: []}   what POST /streams may open
      batch: {max_wait_ms: 40, queue_size: 8, policy: drop_oldest}   # or policy: block
      watchdog: {stall_s: 5, open_timeout_s: 10, undecodable_s: 20}
      backoff: {initial_s: 0.5, max_s: 30, multiplier: 2, jitter: 0.2}
      quarantine: {faults: 3, window_s: 120, pause_s: 300}   # cameras sending garbage, changing format
      ingest: {processes: auto, ring_frames: 0}   # stream readers in worker processes
                                # (auto: one per 24 streams with GPU decode and > 32 streams;
                                # 0: in the job's process); ring_frames 0 = sized automatically

Usage::

    live = parse_live_config(job_config.extra.get("live"))
    live.batch.policy          # "drop_oldest"
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.errors import ConfigError
from streams.live.access import host_pattern_error, is_loopback, read_token
from streams.schema import from_dict

log = logging.getLogger(__name__)

DecodeMode = Literal["auto", "cpu", "gpu", "gop"]
OutputMode = Literal["frames", "gop", "packets"]
QueuePolicy = Literal["drop_oldest", "block"]
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


@dataclass(frozen=True)
class AllowConfig:
    """``live.http.allow``: the URIs ``POST /streams`` may open (:class:`~streams.live.access.UriPolicy`).

    ``schemes``: URI schemes (default RTSP only); ``hosts``: ``*``, addresses or networks
    (``10.0.0.0/8``) and host-name globs (``cam-*.site.example``); ``file_dirs``: absolute
    folders whose files ``file://`` URIs may read (none by default: no ``file://``).
    Streams of the config's ``sources:`` are not checked: the operator wrote them.
    """

    schemes: tuple[str, ...] = ("rtsp", "rtsps")
    hosts: tuple[str, ...] = ("*",)
    file_dirs: tuple[str, ...] = ()

    def validate(self, key: str) -> None:
        for i, scheme in enumerate(self.schemes):
            if not _SCHEME.fullmatch(scheme):
                raise ConfigError(f"{key}.schemes[{i}]", f"expected a URI scheme such as rtsp, got {scheme!r}")
            if scheme.lower() == "file" and not self.file_dirs:
                raise ConfigError(f"{key}.schemes[{i}]", f"file:// needs {key}.file_dirs, the folders it may read")
        for i, pattern in enumerate(self.hosts):
            reason = host_pattern_error(pattern)
            if reason is not None:
                raise ConfigError(f"{key}.hosts[{i}]", reason)
        for i, folder in enumerate(self.file_dirs):
            if not os.path.isabs(folder):
                raise ConfigError(f"{key}.file_dirs[{i}]", f"expected an absolute folder, got {folder!r}")


@dataclass(frozen=True)
class HttpConfig:
    """``live.http``: the metrics/health/control HTTP server and its access control.

    ``token_env`` (the name of an environment variable) or ``token_file`` (an absolute path)
    holds a bearer token every request must carry (``Authorization: Bearer <token>``); it is
    required when ``host`` is not a loopback address. ``max_body_bytes`` bounds a request's
    body (413 above it); ``allow`` is the allow-list of ``POST /streams``.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108
    token_env: str | None = None
    token_file: str | None = None
    max_body_bytes: int = 64 * 1024
    allow: AllowConfig = field(default_factory=AllowConfig)

    def validate(self, key: str) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{key}.port", f"expected 0..65535, got {self.port}")
        if not self.host:
            raise ConfigError(f"{key}.host", "must not be empty")
        if not 1024 <= self.max_body_bytes <= 16 * 1024 * 1024:
            raise ConfigError(f"{key}.max_body_bytes", f"expected 1024..16777216, got {self.max_body_bytes}")
        if self.token_env is not None and self.token_file is not None:
            raise ConfigError(f"{key}.token_file", f"give {key}.token_env or {key}.token_file, not both")
        if self.token_file is not None and not os.path.isabs(self.token_file):
            raise ConfigError(f"{key}.token_file", f"expected an absolute path, got {self.token_file!r}")
        if not self.enabled:
            return
        if self.token_env is None and self.token_file is None and not is_loopback(self.host):
            raise ConfigError(f"{key}.host", f"{self.host} is not a loopback address: the API could be reached "
                                             f"from other machines, so set {key}.token_env or {key}.token_file "
                                             "(bearer-token auth), or bind 127.0.0.1")
        read_token(self, key)  # refused now, before any work, if it cannot be read


@dataclass(frozen=True)
class BatchConfig:
    """``live.batch``: cross-stream batching (see :mod:`streams.live.batcher`)."""

    max_wait_ms: float = 40.0
    queue_size: int = 8
    policy: QueuePolicy = "drop_oldest"

    def validate(self, key: str) -> None:
        if not 0.0 <= self.max_wait_ms <= 60_000.0:
            raise ConfigError(f"{key}.max_wait_ms", f"expected 0..60000, got {self.max_wait_ms}")
        if not 1 <= self.queue_size <= 10_000:
            raise ConfigError(f"{key}.queue_size", f"expected 1..10000, got {self.queue_size}")

    @property
    def max_wait_s(self) -> float:
        """``max_wait_ms`` in seconds."""
        return self.max_wait_ms / 1000.0


@dataclass(frozen=True)
class WatchdogConfig:
    """``live.watchdog``: when a stream counts as stalled, how long an open may take, and how
    long a session may receive packets that yield no frame (no keyframe, or nothing the
    decoder accepts: garbage, or a codec other than the announced one) before it ends."""

    stall_s: float = 5.0
    open_timeout_s: float = 10.0
    undecodable_s: float = 20.0

    def validate(self, key: str) -> None:
        if not 0.1 <= self.stall_s <= 3600.0:
            raise ConfigError(f"{key}.stall_s", f"expected 0.1..3600, got {self.stall_s}")
        if not 0.1 <= self.open_timeout_s <= 3600.0:
            raise ConfigError(
                f"{key}.open_timeout_s", f"expected 0.1..3600, got {self.open_timeout_s}"
            )
        if not 0.5 <= self.undecodable_s <= 3600.0:
            raise ConfigError(f"{key}.undecodable_s", f"expected 0.5..3600, got {self.undecodable_s}")


@dataclass(frozen=True)
class QuarantineConfig:
    """``live.quarantine``: a camera whose sessions end in ``faults`` content faults (its
    packets yield no frame, its resolution changes mid-stream, the GPU decoder rejects
    them) within ``window_s`` seconds is quarantined: reconnects pause for ``pause_s``
    seconds, the state is ``quarantined`` and the reason is its last error. ``faults: 0``
    never quarantines."""

    faults: int = 3
    window_s: float = 120.0
    pause_s: float = 300.0

    def validate(self, key: str) -> None:
        if not 0 <= self.faults <= 1000:
            raise ConfigError(f"{key}.faults", f"expected 0..1000 (0 = never), got {self.faults}")
        if not 1.0 <= self.window_s <= 86400.0:
            raise ConfigError(f"{key}.window_s", f"expected 1..86400, got {self.window_s}")
        if not 0.1 <= self.pause_s <= 86400.0:
            raise ConfigError(f"{key}.pause_s", f"expected 0.1..86400, got {self.pause_s}")


@dataclass(frozen=True)
class BackoffConfig:
    """``live.backoff``: capped exponential reconnect delays with jitter."""

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def validate(self, key: str) -> None:
        if self.initial_s <= 0.0:
            raise ConfigError(f"{key}.initial_s", f"expected > 0, got {self.initial_s}")
        if self.max_s < self.initial_s:
            raise ConfigError(
                f"{key}.max_s", f"expected >= initial_s ({self.initial_s}), got {self.max_s}"
            )
        if self.multiplier < 1.0:
            raise ConfigError(f"{key}.multiplier", f"expected >= 1, got {self.multiplier}")
        if not 0.0 <= self.jitter < 1.0:
            raise ConfigError(f"{key}.jitter", f"expected a number in [0, 1), got {self.jitter}")


@dataclass(frozen=True)
class IngestConfig:
    """``live.ingest``: stream readers spread over worker processes (:mod:`pipelines.ingest`).

    One process's reader threads share one GIL, which caps the frames one process can
    read and decode (docs/live.md). ``processes: auto`` starts one ingest process per
    :data:`STREAMS_PER_PROCESS` streams when frames are decoded on the GPU and there are more
    than :data:`IN_PROCESS_MAX` streams at start; ``0`` keeps the readers in the job's process.
    ``ring_frames`` is the number of frame slots each process shares with the job (GPU decode;
    ``0``: twice its streams' queues plus two engine batches per worker).
    """

    processes: int | Literal["auto"] = "auto"
    ring_frames: int = 0

    def validate(self, key: str) -> None:
        if self.processes != "auto" and not 0 <= int(self.processes) <= 64:
            raise ConfigError(f"{key}.processes", f"expected 0..64 or auto, got {self.processes}")
        if self.ring_frames != 0 and not 16 <= self.ring_frames <= 65536:
            raise ConfigError(f"{key}.ring_frames",
                              f"expected 16..65536 (0 = automatic), got {self.ring_frames}")


STREAMS_PER_PROCESS = 24
IN_PROCESS_MAX = 32


@dataclass(frozen=True)
class LiveConfig:
    """The ``live:`` section. See the module docstring for the YAML form."""

    decode: DecodeMode = "auto"
    log_interval_s: float = 30.0
    decode_threads: int = 1
    max_gop_frames: int = 300
    # GPU decode with a cascade keeps source-size frames: its buffers (ingest ring slots) hold
    # frames up to this (width, height), in either orientation; a larger stream is refused
    max_source_size: tuple[int, int] = (1920, 1080)
    inference_threads: int = 2  # threads running engine batches (each its own DALI pipeline, CUDA stream)
    # Python's GIL switch interval during a GPU live run (restored after): a thread per
    # stream each holds the GIL briefly per packet, so a short interval hands it over sooner
    gil_switch_interval_ms: float = 0.1
    # glibc malloc arenas of the job's processes (pipelines/live_memory.py): bounded, so the
    # reader threads of cameras that come and go cannot keep adding to the RSS; 0: glibc's default
    malloc_arenas: int = 2
    pace_files: bool = True  # file URIs are read at their frame rate (live-rate simulation)
    loop_files: bool = True  # and looped at the end, like a camera
    ffmpeg_options: dict[str, str] = field(default_factory=dict)
    http: HttpConfig = field(default_factory=HttpConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)

    def validate(self, key: str) -> None:
        if self.log_interval_s < 0.0:
            raise ConfigError(f"{key}.log_interval_s", f"expected >= 0, got {self.log_interval_s}")
        if not 0 <= self.decode_threads <= 64:
            raise ConfigError(
                f"{key}.decode_threads", f"expected 0..64 (0 = auto), got {self.decode_threads}"
            )
        if not 0.01 <= self.gil_switch_interval_ms <= 100:
            raise ConfigError(f"{key}.gil_switch_interval_ms",
                              f"expected 0.01..100, got {self.gil_switch_interval_ms}")
        if self.decode == "gop" and self.ingest.processes not in ("auto", 0):
            raise ConfigError(f"{key}.ingest.processes", "ingest processes read streams decoded with "
                              "decode: gpu or cpu, not gop; set it to 0 (or auto)")
        if not 0 <= self.malloc_arenas <= 1024:
            raise ConfigError(f"{key}.malloc_arenas",
                              f"expected 0..1024 (0 = glibc's default), got {self.malloc_arenas}")
        if not 1 <= self.inference_threads <= 32:
            raise ConfigError(f"{key}.inference_threads", f"expected 1..32, got {self.inference_threads}")
        if not 1 <= self.max_gop_frames <= 100_000:
            raise ConfigError(
                f"{key}.max_gop_frames", f"expected 1..100000, got {self.max_gop_frames}"
            )
        if not all(16 <= v <= 8192 and v % 2 == 0 for v in self.max_source_size):
            raise ConfigError(f"{key}.max_source_size", f"expected [width, height], even numbers in 16..8192, "
                                                        f"got {list(self.max_source_size)}")

    @property
    def workers(self) -> int:
        """Deprecated name of :attr:`inference_threads` (read-only)."""
        return self.inference_threads


_RENAMED = {"workers": "inference_threads"}  # old key -> new key of the live: section


def parse_live_config(raw: Any, key: str = "live") -> LiveConfig:
    """Validate the raw ``live:`` mapping (``None`` gives the defaults).

    Renamed keys (``workers`` -> ``inference_threads``) are still read, with a warning
    naming the new key; giving both is a :class:`ConfigError`.
    """
    if isinstance(raw, Mapping) and any(old in raw for old in _RENAMED):
        raw = dict(raw)
        for old, new in _RENAMED.items():
            if old not in raw:
                continue
            if new in raw:
                raise ConfigError(f"{key}.{old}", f"renamed to {key}.{new}; give only {key}.{new}")
            log.warning("%s.%s is deprecated: it is now %s.%s", key, old, key, new)
            raw[new] = raw.pop(old)
    return from_dict(LiveConfig, raw, key)


def resolve_output_mode(decode: DecodeMode) -> OutputMode:
    """``cpu`` -> ``"frames"``, ``gpu`` -> ``"packets"`` (an NVDEC session per stream),
    ``gop`` -> ``"gop"``; ``auto`` picks ``"packets"`` when torch sees a CUDA device,
    ``"frames"`` otherwise."""
    if decode == "cpu":
        return "frames"
    if decode == "gpu":
        return "packets"
    if decode == "gop":
        return "gop"
    if importlib.util.find_spec("torch") is None:
        return "frames"
    try:
        import torch

        return "packets" if torch.cuda.is_available() else "frames"
    except Exception:  # a broken CUDA/torch install means: decode on the CPU
        return "frames"


def ingest_processes(config: LiveConfig, mode: OutputMode, streams: int, cpus: int) -> int:
    """How many ingest processes a job starts (see :class:`IngestConfig`); ``0``: none."""
    n = config.ingest.processes
    if n != "auto":
        return int(n)
    if mode != "packets" or streams <= IN_PROCESS_MAX:
        return 0
    return max(1, min(-(-streams // STREAMS_PER_PROCESS), cpus // 2))
