"""Per-source frame order: results that arrive out of order leave in frame-index order.

Inference runs batches of one source concurrently: a file is cut into keyframe segments
decoded by parallel sessions, and several inference threads finish their batches in any
order; live batches of one camera can also finish out of order on two inference threads.
A per-source stage (a tracker, analytics on tracks) must see each source's frames in
order, without a gap it was not told about. :class:`ReorderBuffer` restores that order.

The contract with the source: per source, every frame index from its first (0, or what
``first_index`` says: a live camera restarted on another Ray worker numbers from its epoch,
:mod:`pipelines.ray_live`) up is either delivered (:meth:`ReorderBuffer.add`) or declared
missing (:meth:`ReorderBuffer.skip`: a segment that ended early, frames a live queue
dropped, a batch that failed to decode), and :meth:`ReorderBuffer.end` says that nothing
more will come. Frames are released as soon as every smaller index of their source has been
released or skipped, so the buffer only holds frames that are ahead of a gap that is still
being filled.

What the buffer holds is bounded by how far the sources run ahead of their earliest
unfinished frame: for a live camera that is the frames of the batches in flight; for a
file decoded in parallel segments it is what the later segments decoded while an earlier
one was still running. ``peak`` reports the most frames held at once (the job summary
shows it), and ``capacity`` logs a warning once when it is exceeded.

Usage::

    buf = ReorderBuffer()
    buf.add(results)                       # any order, any mix of sources
    buf.skip("cam1", range(40, 48))        # frames 40..47 of cam1 will never come
    for source_id, run in buf.release():   # in-order runs, per source: FrameResults, and
        ...                                # ranges where frames were declared skipped
    buf.end("clip.mp4"); buf.release()     # flush what is left, gaps and all
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from streams.frames import FrameResult

log = logging.getLogger(__name__)


@dataclass
class _Source:
    next_index: int = 0
    heap: list[tuple[int, int, FrameResult]] = field(default_factory=list)  # (frame index, tie, result)
    skipped: list[tuple[int, int]] = field(default_factory=list)  # heap of [start, end) ranges
    ended: bool = False


class ReorderBuffer:
    """Releases each source's results in frame-index order; see the module docstring.

    ``first_index``: a source's first frame index, asked when the buffer first hears of the
    source (``None``: every source starts at 0)."""

    def __init__(self, capacity: int = 1 << 18, first_index: Callable[[str], int] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"ReorderBuffer: capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._first_index = first_index
        self.held = 0
        self.peak = 0
        self._sources: dict[str, _Source] = {}
        self._ready: dict[str, None] = {}  # sources that may have something to release, in arrival order
        self._tie = 0
        self._warned = False

    def add(self, results: Iterable[FrameResult]) -> None:
        """Take results of any sources, in any order."""
        for r in results:
            sid = r.frame.source_id
            src = self._sources.get(sid)
            if src is None:
                src = self._source(sid)
            if r.frame.frame_index < src.next_index:
                raise ValueError(f"{sid}: frame {r.frame.frame_index} arrived after frame {src.next_index - 1} "
                                 "was released (delivered twice, or after it was declared skipped)")
            self._tie += 1
            heapq.heappush(src.heap, (r.frame.frame_index, self._tie, r))
            self.held += 1
            self._ready[sid] = None
        if self.held > self.peak:
            self.peak = self.held
            if self.peak > self.capacity and not self._warned:
                self._warned = True
                log.warning("the per-source reorder buffer holds %d frames (more than %d): sources run far ahead "
                            "of their earliest unfinished frames", self.peak, self.capacity)

    def skip(self, source_id: str, indices: Sequence[int] | range) -> None:
        """Frames of ``source_id`` that will never come (dropped, or past the end of a short segment)."""
        if not len(indices):
            return
        src = self._source(source_id)
        if isinstance(indices, range) and indices.step == 1:
            heapq.heappush(src.skipped, (indices.start, indices.stop))
        else:
            for i in indices:
                heapq.heappush(src.skipped, (i, i + 1))
        self._ready[source_id] = None

    def end(self, source_id: str) -> None:
        """Nothing more comes from ``source_id``: what it holds is released, gaps and all."""
        self._source(source_id).ended = True
        self._ready[source_id] = None

    def _source(self, source_id: str) -> _Source:
        src = self._sources.get(source_id)
        if src is None:
            first = 0 if self._first_index is None else self._first_index(source_id)
            src = self._sources[source_id] = _Source(next_index=first)
        return src

    def pending(self, source_id: str) -> int:
        """Frames of ``source_id`` held back."""
        src = self._sources.get(source_id)
        return len(src.heap) if src is not None else 0

    def release(self) -> list[tuple[str, list[FrameResult | range]]]:
        """In-order runs that can leave now, one per source (sources in the order they became ready).

        A run holds the source's results in frame order, with a ``range`` where frames were
        declared skipped, at the place they would have been. A source that has ended and
        released everything is forgotten.
        """
        out: list[tuple[str, list[FrameResult | range]]] = []
        ready, self._ready = self._ready, {}
        for sid in ready:
            src = self._sources[sid]
            run = self._drain(src)
            if run:
                out.append((sid, run))
            if src.ended:
                if src.heap:  # a gap nobody declared: release the rest in order anyway
                    log.warning("%s ended with frames missing before frame %d; %d later frames released",
                                sid, src.heap[0][0], len(src.heap))
                    rest: list[FrameResult | range] = [heapq.heappop(src.heap)[2] for _ in range(len(src.heap))]
                    self.held -= len(rest)
                    if run:
                        run.extend(rest)
                    else:
                        out.append((sid, rest))
                del self._sources[sid]
        return out

    def _drain(self, src: _Source) -> list[FrameResult | range]:
        run: list[FrameResult | range] = []
        heap, skipped = src.heap, src.skipped
        frames = 0
        while True:
            while skipped and skipped[0][0] <= src.next_index:
                _, stop = heapq.heappop(skipped)
                if stop > src.next_index:
                    run.append(range(src.next_index, stop))
                    src.next_index = stop
            if heap and heap[0][0] <= src.next_index:
                index, _, r = heapq.heappop(heap)
                if index < src.next_index:  # inside a range declared skipped: the frame came after all
                    raise ValueError(f"{r.frame.source_id}: frame {index} arrived but was declared skipped")
                run.append(r)
                frames += 1
                src.next_index = index + 1
                continue
            break
        self.held -= frames
        return run
