"""Which frames of each stream will never reach the consumer.

A per-source stage (a tracker, a reorder buffer) must not wait for a frame that was dropped,
nor jump its motion model over a gap it was not told about. :class:`DropLog` records the
frame indices of what was dropped (a full queue's oldest items, frames an ingest process had
no room for, a batch the consumer could not decode) and hands them out once:
:meth:`DropLog.take` returns what was recorded since the last call, per stream, and clears it.

Usage::

    drops = DropLog()
    drops.add_item("cam0", gop_buffer)     # all frame indices of the GOP
    drops.add("cam0", [41, 42])
    drops.take()                           # {"cam0": [0, 1, ..., 29, 41, 42]}; then {}
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from streams.live.types import LiveItem


class DropLog:
    """Dropped frame indices per stream since the last :meth:`take` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dropped: dict[str, list[int]] = {}

    def add(self, stream_id: str, indices: Iterable[int]) -> None:
        indices = list(indices)
        if not indices:
            return
        with self._lock:
            self._dropped.setdefault(stream_id, []).extend(indices)

    def add_item(self, stream_id: str, item: LiveItem) -> None:
        """Every frame of ``item`` (one for a :class:`LiveFrame`, the GOP's for a :class:`GopBuffer`)."""
        self.add(stream_id, (m.frame_index for m in item.metas))

    def take(self) -> dict[str, list[int]]:
        """What was recorded since the last call, per stream, in ascending order; clears it."""
        with self._lock:
            dropped, self._dropped = self._dropped, {}
        return {sid: sorted(v) for sid, v in dropped.items()}

    def forget(self, stream_id: str) -> None:
        """Discard what a removed stream had recorded."""
        with self._lock:
            self._dropped.pop(stream_id, None)
