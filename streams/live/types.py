"""Plain data types of the live package: stream specs, states, statistics, output items.

No threads, no FFmpeg: safe to import anywhere, and to pickle or log (a
:class:`StreamSpec`'s repr hides its credentials).

Frame indices (``FrameMeta.frame_index`` of the items' ``metas``): per stream, the source
numbers the frames it outputs 0, 1, 2, ... with no gap, over the stream's whole life in the
manager: reconnects continue the count, and so does a restarted ingest process (its stream's
indices, sessions and pts are shifted to continue, :mod:`pipelines.ingest`). A number is
taken only for a frame that is output: packets that never became a frame (before the first
keyframe, rejected by the decoder, still inside the decoder when a session ends, an NVDEC
picture with no free ring slot) take none. A GOP buffer's frames have consecutive indices in
presentation order. So the consumer's guarantee is: per stream, every index from 0 up is
either handed out by :meth:`StreamManager.next_batch
<streams.live.manager.StreamManager.next_batch>` (in increasing order) or reported once by
:meth:`StreamManager.take_dropped <streams.live.manager.StreamManager.take_dropped>` (a full
queue's drops, an ingest process's drops, frames the consumer gave up with
``record_skipped``). Outside it: a stream removed and added again under the same id is a new
source (indices and sessions restart at 0; its queued items are discarded, not reported),
and the items still queued or being read when the manager stops.

A stream added with ``first_frame_index=N`` (:meth:`StreamManager.add_stream
<streams.live.manager.StreamManager.add_stream>`) counts from ``N`` instead of 0, with the
same guarantee from ``N`` up: its source still numbers from 0 and the manager adds ``N``
(:func:`renumbered`) to what it hands out and reports, so every kind of source (an
in-process reader, an ingest process and its restarts) takes it alike. A camera restarted
on another Ray worker is added so, in an index range of its own (:mod:`pipelines.ray_live`).
Indices stay below :data:`FRAME_INDEX_LIMIT`.

Usage::

    spec = StreamSpec(id="gate", uri="rtsp://10.0.0.5/main", username="admin", password="pw")
    spec                          # StreamSpec(id='gate', uri='rtsp://***@10.0.0.5/main', ...)
    item: LiveItem                # LiveFrame (CPU decode) or GopBuffer (GPU decode)
    item.source_id, item.metas    # same on both kinds
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from streams.errors import ConfigError
from streams.frames import FrameMeta
from streams.live.redact import Credentials

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_URI_CHARS = 4096
# frame indices stay below 2**53: exact as JSON numbers in every reader (JavaScript's, those that parse doubles)
FRAME_INDEX_LIMIT = 2**53


class StreamState(str, enum.Enum):
    """Where a stream's reader thread is in its life cycle.

    ``connecting`` (first open) -> ``live`` (packets flowing) -> ``stalled`` (no packet for
    ``watchdog.stall_s``) or a drop -> ``reconnecting`` (backoff wait and re-open) -> ``live``
    ... ; ``quarantined`` (reconnects paused for ``quarantine.pause_s`` after repeated content
    faults: garbage, a resolution change, a codec other than announced) -> ``reconnecting``;
    ``stopped`` after :meth:`RtspSource.stop`; ``failed`` on an error that retrying cannot
    fix (401, 403, 404, no video stream, unsupported codec).
    """

    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    QUARANTINED = "quarantined"
    STOPPED = "stopped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StreamSpec:
    """One live stream to read: a stable id, its URI and transport, optional credentials.

    Credentials in the URI's userinfo and in ``username``/``password`` are merged (the
    fields win). ``repr`` shows the URI redacted and never the password.
    """

    id: str
    uri: str
    transport: Literal["tcp", "udp"] = "tcp"
    username: str | None = None
    password: str | None = None

    def validate(self, key: str) -> None:
        if not _ID.match(self.id):
            raise ConfigError(
                f"{key}.id",
                f"expected 1-64 characters of A-Z a-z 0-9 _ . - (got {self.id!r})",
            )
        if "://" not in self.uri:
            raise ConfigError(f"{key}.uri", "expected a stream URI such as rtsp://host/path "
                              "(or file:///clip.mp4 for a recorded clip paced at its frame rate)")
        if len(self.uri) > MAX_URI_CHARS:
            raise ConfigError(f"{key}.uri", f"expected at most {MAX_URI_CHARS} characters, got {len(self.uri)}")
        try:
            self.credentials()
        except ValueError as e:  # urlsplit's message may quote the userinfo: not echoed
            what = "unbalanced [ ] around an IPv6 host" if "IPv6" in str(e) else "invalid characters in its host part"
            raise ConfigError(f"{key}.uri", f"not a valid URI ({what})") from None

    def __repr__(self) -> str:
        return (
            f"StreamSpec(id={self.id!r}, uri={self.credentials().display_uri!r}, "
            f"transport={self.transport!r}, username={'***' if self.username else None})"
        )

    def credentials(self) -> Credentials:
        """The URI to open and the redacted one to show."""
        return Credentials.resolve(self.uri, self.username, self.password)

    @classmethod
    def from_source(cls, entry: Any, index: int) -> StreamSpec:
        """Build from a ``sources:`` entry (:class:`streams.config.SourceEntry` or alike).

        The id is ``entry.id`` or ``cam<index>``.
        """
        uri = getattr(entry, "uri", None)
        if not uri:
            raise ConfigError(f"sources[{index}].uri", "a live stream needs a uri")
        return cls(
            id=getattr(entry, "id", None) or f"cam{index}",
            uri=uri,
            transport=getattr(entry, "transport", "tcp") or "tcp",
            username=getattr(entry, "username", None),
            password=getattr(entry, "password", None),
        )


@dataclass(frozen=True)
class StreamStats:
    """A point-in-time snapshot of one stream (JSON-ready through :meth:`to_dict`).

    ``uri`` is redacted; ``last_error`` is redacted. ``fps`` is the frame rate over the
    last few seconds (0 when nothing arrived lately). Queue fields are filled by the
    :class:`~streams.live.manager.StreamManager` from its batcher.
    """

    id: str
    uri: str
    transport: str
    mode: str
    state: StreamState
    state_since: float
    packets: int = 0
    frames: int = 0
    bytes: int = 0
    reconnects: int = 0
    sessions: int = 0
    stalls: int = 0
    decode_errors: int = 0
    skipped_packets: int = 0
    faults: int = 0  # sessions ended by a content fault (no decodable frame, format change)
    quarantines: int = 0
    fps: float = 0.0
    last_packet_age_s: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    queued: int = 0
    dropped: int = 0  # queue drops (drop-oldest) plus ingest_dropped
    ingest_dropped: int = 0  # frames an ingest process had no room for (pipelines.ingest)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``state`` as its string value)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["state"] = self.state.value
        d["fps"] = round(self.fps, 2)
        if self.last_packet_age_s is not None:
            d["last_packet_age_s"] = round(self.last_packet_age_s, 3)
        return d


class DecodedImage(Protocol):
    """A frame out of a :class:`PacketDecoder` (e.g. an NV12 surface on the GPU)."""

    @property
    def pts(self) -> int | None: ...

    @property
    def width(self) -> int: ...  # the source frame's size

    @property
    def height(self) -> int: ...


class PacketDecoder(Protocol):
    """Decodes one stream's packets in order, keeping its state between them (GPU path).

    ``decode`` takes one Annex-B access unit and returns the frames it completed, in
    display order; ``close`` frees the decoder. Made per session by a :data:`DecoderFactory`
    (codec name, e.g. ``"h264"``), so this package never imports CUDA.
    """

    def decode(self, data: bytes, pts: int | None) -> Sequence[DecodedImage]: ...

    def close(self) -> None: ...


DecoderFactory = Callable[[str], PacketDecoder]


class LiveSource(Protocol):
    """What the :class:`~streams.live.manager.StreamManager` needs of one stream's reader:
    an :class:`~streams.live.rtsp.RtspSource` thread here, or a proxy of one running in an
    ingest process (:class:`pipelines.ingest.RemoteSource`)."""

    id: str
    display_uri: str

    def start(self) -> LiveSource: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> bool: ...

    @property
    def alive(self) -> bool: ...

    @property
    def state(self) -> StreamState: ...

    def stats(self) -> StreamStats: ...

    def history(self) -> list[tuple[float, StreamState]]: ...

    def wait_for_state(self, *states: StreamState, timeout: float | None = None) -> bool: ...

    def take_dropped(self) -> list[int]:
        """Frame indices the source numbered but could not deliver to its ``emit`` since
        the last call (e.g. an ingest process's full outbox); cleared on read."""
        ...


# makes a stream's source: (spec, emit) -> a source not started yet
SourceFactory = Callable[[StreamSpec, Callable[["LiveItem"], bool]], LiveSource]


@dataclass(frozen=True, slots=True)
class LiveFrame:
    """One decoded frame (CPU decode path).

    Attributes:
        meta: identity and timing; ``meta.arrival_time`` is when its packet arrived.
        image: ``uint8[H, W, 3]`` RGB (CPU decode), or the :class:`DecodedImage` of a
            :class:`PacketDecoder` (GPU decode: an NV12 surface at the letterbox size).
        session: 0 for the first connection, +1 after each reconnect.
    """

    meta: FrameMeta
    image: npt.NDArray[np.uint8] | DecodedImage
    session: int = 0

    @property
    def source_id(self) -> str:
        return self.meta.source_id

    @property
    def metas(self) -> tuple[FrameMeta, ...]:
        """The frame's metadata as a 1-tuple (same shape as :attr:`GopBuffer.metas`)."""
        return (self.meta,)


@dataclass(frozen=True, slots=True)
class GopBuffer:
    """A self-contained encoded buffer for GPU decoding (one GOP, or a prefix of one).

    ``data`` is an elementary stream in ``fmt`` (``"h264"``/``"hevc"``: Annex-B) that starts
    at a keyframe and carries the parameter sets (SPS/PPS/VPS) in band, so a fresh decoder
    (``fn.experimental.inputs.video``/``fn.decoders.video`` or ``av.open(BytesIO(data),
    format=fmt)``) decodes it with no other state. ``metas`` lists its frames in
    presentation order: the order a decoder outputs them.
    """

    source_id: str
    data: bytes
    fmt: str
    codec: str
    metas: tuple[FrameMeta, ...]
    session: int = 0

    @property
    def first_arrival(self) -> float | None:
        """Arrival time of the keyframe that starts the buffer."""
        times = [m.arrival_time for m in self.metas if m.arrival_time is not None]
        return min(times) if times else None

    def __len__(self) -> int:
        return len(self.metas)


LiveItem = LiveFrame | GopBuffer


def renumbered(item: LiveItem, offset: int) -> LiveItem:
    """``item`` with ``offset`` added to its frames' indices (a stream added with a
    ``first_frame_index``; the module docstring)."""
    if isinstance(item, LiveFrame):
        return replace(item, meta=replace(item.meta, frame_index=item.meta.frame_index + offset))
    return replace(item, metas=tuple(replace(m, frame_index=m.frame_index + offset) for m in item.metas))
