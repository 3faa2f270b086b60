"""A file job's manifest: what the job is and what it has done with each file.

``fovea run`` writes it beside its first JSON Lines or CSV output
(``out/detections.jsonl`` -> ``out/detections.manifest.json``), atomically (a temporary file
renamed over it), at the start, as files end and at the end. It holds:

- ``config``: the job's settings that shape its outputs, flattened (``model.path``,
  ``postprocess.conf_threshold``, ``sinks[0].path``, ...) with the resolved device and the
  model file's size and modification time; settings that only change speed
  (:data:`SPEED_ONLY`) are left out. A resumed job must have the same (:func:`config_diff`).
- per file (by source id): its identity (path, size, modification time, SHA-256 of its
  first MiB), its status (``pending``, ``started``, ``done``, ``incomplete``, ``failed``), the
  frames it decoded and announced, ``end`` (the frame index after the last frame whose
  record reached the outputs), ``committed`` (the frames every output had made durable when
  the manifest was written; each output's commit journal, :mod:`streams.sinks.commits`, has
  the exact figure) and the reason of a failure. A Ray job also records which of its parts
  holds the file's records (``part``).

Usage::

    path = manifest_path(cfg)                        # None: the job has no file output
    m = Manifest.load(path)                          # None when there is none
    problems = config_diff(m.config, fingerprint(cfg, "cpu"))
    m.files["a.mp4"].status = "done"; m.save(path)
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streams.config import JobConfig
from streams.errors import ConfigError
from streams.registry import PluginConfig
from streams.sinks.commits import write_atomic

VERSION = 1
HEAD_BYTES = 1 << 20  # the part of a file its identity hashes

#: Sink types whose outputs can continue from a commit (:mod:`streams.sinks.commits`).
RESUMABLE_SINKS = ("jsonl", "csv")
#: Sink types that deliver at least once with an idempotency key per record
#: (:mod:`streams.sinks.delivery`): a resumed job sends an unfinished file's records again from
#: the file's first frame, with the same keys, and the consumer drops the duplicates.
#: (``sqlite`` too, with ``append: true``: without it the sink starts a new database file.)
KEYED_SINKS = ("kafka", "redis", "postgres", "mqtt", "sqlite")

#: Config keys that change how fast a job runs, not what it writes (left out of the fingerprint).
SPEED_ONLY = (
    "decode.sessions", "decode.threads", "engine.inference_threads", "engine.gil_switch_interval_ms",
    "engine.tensorrt.cache_dir", "engine.tensorrt.timing_cache", "engine.tensorrt.workspace_mb",
)
#: The same for every sink (``sinks[N].<name>``).
SPEED_ONLY_SINK = ("writer", "commit_interval_s", "commits")

Status = Literal["pending", "started", "done", "incomplete", "failed"]
FINAL: tuple[Status, ...] = ("done", "incomplete", "failed")


@dataclass(frozen=True)
class FileIdentity:
    """What makes a file the same file on resume."""

    path: str
    size: int
    mtime_ns: int
    head_sha256: str

    def differs(self, other: FileIdentity) -> str | None:
        """Why ``other`` is not this file (None when it is)."""
        for name in ("size", "mtime_ns", "head_sha256"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                return f"its {name} is {b}, it was {a}"
        return None


def file_identity(path: str | Path) -> FileIdentity:
    """Size, modification time and the SHA-256 of the first MiB of ``path`` (OSError when
    unreadable or not a regular file: opening a named pipe for reading would block)."""
    p = Path(path)
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)  # a pipe opens at once instead of waiting for a writer
    with open(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(p))
        head = hashlib.sha256(fh.read(HEAD_BYTES)).hexdigest()
    return FileIdentity(str(p), st.st_size, st.st_mtime_ns, head)


@dataclass
class FileRecord:
    """One file of the job; see the module docstring."""

    identity: FileIdentity | None = None
    status: Status = "pending"
    frames: int = 0
    expected: int = 0
    end: int = 0
    committed: int = 0
    reason: str = ""
    part: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass
class Manifest:
    """A job's manifest; see the module docstring. ``backend``: ``local`` or ``ray``."""

    config: dict[str, Any]
    files: dict[str, FileRecord] = field(default_factory=dict)
    backend: Literal["local", "ray"] = "local"
    finished: bool = False  # every file ended and the outputs are whole (a Ray job: merged)

    def to_json(self) -> str:
        files = {sid: {**dataclasses.asdict(r), "identity": None if r.identity is None
                       else dataclasses.asdict(r.identity)} for sid, r in self.files.items()}
        return json.dumps({"version": VERSION, "backend": self.backend, "finished": self.finished,
                           "config": self.config, "files": files}, indent=1) + "\n"

    def save(self, path: Path) -> None:
        """Write atomically (a kill leaves the old or the new manifest, never a mix)."""
        write_atomic(path, self.to_json(), crash_name="manifest")

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        """The manifest at ``path``; None when there is none. Raises :class:`ConfigError`
        when it cannot be read (the message says how to start over)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ConfigError("--resume", f"cannot read the job's manifest {path}: {e}; start the job over "
                                          "without --resume") from e
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            raise ConfigError("--resume", f"{path} is not a manifest this Fovea writes (version "
                                          f"{raw.get('version') if isinstance(raw, dict) else None}); start over")
        files: dict[str, FileRecord] = {}
        for sid, r in raw["files"].items():
            ident = r.pop("identity", None)
            files[sid] = FileRecord(identity=None if ident is None else FileIdentity(**ident), **r)
        return cls(config=raw["config"], files=files, backend=raw.get("backend", "local"),
                   finished=bool(raw.get("finished")))


def file_sinks(cfg: JobConfig) -> list[tuple[int, PluginConfig]]:
    """The job's resumable file outputs (JSON Lines, CSV), with their index in ``sinks``."""
    return [(i, s) for i, s in enumerate(cfg.sinks) if s.type in RESUMABLE_SINKS]


def manifest_path(cfg: JobConfig) -> Path | None:
    """Where the job's manifest goes: beside its first JSON Lines or CSV output (None without one)."""
    found = file_sinks(cfg)
    if not found:
        return None
    p = Path(found[0][1].config.path).expanduser()
    return p.with_name(f"{p.stem}.manifest.json")


def not_resumable(cfg: JobConfig) -> ConfigError | None:
    """Why the job's outputs cannot continue from a commit (None when they can)."""
    if manifest_path(cfg) is None:
        return ConfigError("sinks", "resuming needs a jsonl or csv sink: the job's manifest and commits live "
                                    "beside it")
    for i, s in enumerate(cfg.sinks):
        if s.type == "sqlite" and not s.config.append:
            return ConfigError(f"sinks[{i}].append", "a resumed job adds to the sqlite database: set append: true "
                                                     "(with false the sink starts a new database file), or start "
                                                     "the job over")
        if s.type not in RESUMABLE_SINKS + KEYED_SINKS:
            why = ("an annotated video cannot continue from a commit" if s.type == "video" else
                   "it cannot tell records it already sent from new ones")
            return ConfigError(f"sinks[{i}]", f"a '{s.type}' sink cannot resume ({why}); resumable: "
                                              f"{', '.join(RESUMABLE_SINKS + KEYED_SINKS)}. Remove it, or start the "
                                              "job over")
    return None


def keyed_sinks(cfg: JobConfig) -> bool:
    """Whether the job writes to a sink that delivers with idempotency keys (:data:`KEYED_SINKS`)."""
    return any(s.type in KEYED_SINKS for s in cfg.sinks)


def fingerprint(cfg: JobConfig, device: str) -> dict[str, Any]:
    """The settings that shape the job's outputs, flattened to ``key: value``; see the module docstring."""
    flat: dict[str, Any] = {}
    for name in ("sources", "model", "engine", "preprocess", "decode", "postprocess", "tracker", "analytics"):
        _flatten(name, _plain(getattr(cfg, name)), flat)
    for i, s in enumerate(cfg.sinks):
        _flatten(f"sinks[{i}]", {"type": s.type, **dataclasses.asdict(s.config)}, flat)
    for key in SPEED_ONLY:
        flat.pop(key, None)
    for i in range(len(cfg.sinks)):
        for name in SPEED_ONLY_SINK:
            flat.pop(f"sinks[{i}].{name}", None)
    flat["engine.device (resolved)"] = device
    model = Path(cfg.model.path).expanduser()
    if cfg.model.path != "default" and model.is_file():
        st = model.stat()
        flat["model file"] = f"{st.st_size} bytes, modified {st.st_mtime_ns} ns"
    return flat


def _plain(value: Any) -> Any:
    """Dataclasses (also inside lists) as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _flatten(key: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{key}.{k}", v, out)
    elif isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
        for i, v in enumerate(value):
            _flatten(f"{key}[{i}]", v, out)
    elif key.endswith(".password") and value is not None:  # a secret: only whether it changed
        out[key] = "sha256:" + hashlib.sha256(str(value).encode()).hexdigest()[:16]
    else:
        out[key] = list(value) if isinstance(value, tuple) else value


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two fingerprints, each with both values."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '(not set)')!r} then, {new.get(k, '(not set)')!r} now"
            for k in keys if _norm(old.get(k, "(not set)")) != _norm(new.get(k, "(not set)"))]


def _norm(v: Any) -> Any:
    """JSON's view of a value (tuples are lists there), for comparing with a loaded fingerprint."""
    return json.loads(json.dumps(v))

