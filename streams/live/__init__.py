"""Live streams: RTSP sources, cross-stream batching, metrics, health and control.

Modules:

* :mod:`streams.live.config`  ``live:`` config section (:class:`LiveConfig`)
* :mod:`streams.live.types`   :class:`StreamSpec`, :class:`StreamState`, :class:`StreamStats`,
  output items :class:`LiveFrame` (CPU decode) and :class:`GopBuffer` (GPU decode)
* :mod:`streams.live.rtsp`    :class:`RtspSource`, one reader thread per camera, composed of:

  * :mod:`streams.live.connection`      open with timeouts, watchdog, states, reconnect loop
    with :class:`Backoff`
  * :mod:`streams.live.demux`           video track, packets (files paced), Annex-B, frame
    numbering and :class:`~streams.live.demux.PtsClock`
  * :mod:`streams.live.packet_decoding` packets -> frames: CPU (PyAV, RGB) or the injected
    packet decoder (NVDEC)
  * :mod:`streams.live.gop`             GOP assembly into self-contained buffers
  * :mod:`streams.live.stats`           counters and frame rate of a source

* :mod:`streams.live.batcher` :class:`Batcher`, nvstreammux-like round-robin batching
* :mod:`streams.live.drops`   :class:`~streams.live.drops.DropLog`, dropped frame indices
* :mod:`streams.live.metrics` :class:`LiveMetrics`, Prometheus series and latency
* :mod:`streams.live.http`    :class:`LiveHttpServer`, /metrics /health /streams (serves a
  :class:`~streams.live.http.StreamControl`), behind :mod:`streams.live.access`: bearer
  token, the URI allow-list of ``POST /streams`` (docs/control-api.md)
* :mod:`streams.live.manager` :class:`StreamManager`, owns all of the above

Usage::

    from streams.live import LiveConfig, StreamManager, StreamSpec

    with StreamManager(LiveConfig(), mode="frames") as mgr:
        mgr.add_stream(StreamSpec("cam0", "rtsp://127.0.0.1:8554/cam0"))
        batch = mgr.next_batch(max_batch=8)

Importing this package starts nothing: threads and sockets exist only after
``StreamManager.start()`` / ``RtspSource.start()``. ``StreamManager``, ``LiveMetrics`` and
``LiveHttpServer`` are imported on first use, so the config and data types import without
``prometheus-client`` (the ``live`` extra). See ``docs/live.md`` for the design.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.lazy import lazy_exports
from streams.live.batcher import Batcher, QueueStats, StreamQueue
from streams.live.config import LiveConfig, parse_live_config, resolve_output_mode
from streams.live.connection import Backoff
from streams.live.redact import Credentials, redact_uri
from streams.live.rtsp import RtspSource
from streams.live.types import GopBuffer, LiveFrame, LiveItem, StreamSpec, StreamState, StreamStats

if TYPE_CHECKING:
    from streams.live.http import LiveHttpServer
    from streams.live.manager import StreamManager
    from streams.live.metrics import LiveMetrics

_LAZY = {
    "LiveHttpServer": "streams.live.http",
    "LiveMetrics": "streams.live.metrics",
    "StreamManager": "streams.live.manager",
}



__all__ = [
    "Backoff",
    "Batcher",
    "Credentials",
    "GopBuffer",
    "LiveConfig",
    "LiveFrame",
    "LiveHttpServer",
    "LiveItem",
    "LiveMetrics",
    "QueueStats",
    "RtspSource",
    "StreamManager",
    "StreamQueue",
    "StreamSpec",
    "StreamState",
    "StreamStats",
    "parse_live_config",
    "redact_uri",
    "resolve_output_mode",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
